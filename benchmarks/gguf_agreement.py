"""qlab against llama.cpp on the same GGUF files: what the perplexity gap is made of.

For each type, the file is made by llama.cpp's quantizer from qlab's F32 file (byte-identical to qlab's own writer,
tests/test_gguf_files.py), then `qlab.gguf.crosscheck.llama_cpp_agreement` measures on the same tokens/protocol:
  - qlab float: the dequantized weights in transformers, float32 matmuls;
  - qlab ggml: the same with every Linear's input rounded as ggml's matmul does (Q8_0/Q8_1/Q8_K), `draws` draws
    (draw 0 plain, the others with 1e-6 seeded input jitter);
  - llama.cpp under several context settings (fp32 KV; flash attention; f16 KV) - its agreement with itself.
Writes benchmarks/results/gguf_agreement.json.

    python benchmarks/gguf_agreement.py [--tokens 2048] [--types F32,Q8_0,Q4_0,Q4_K_M] [--draws 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--types", default="F32,Q8_0,Q4_0,Q4_K_M")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--settings", default="default,flash_attn,kv_f16")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gguf_agreement.json"))
    args = ap.parse_args()

    import torch

    from qlab.data import eval_tokens
    from qlab.gguf import mixes
    from qlab.gguf.crosscheck import llama_cpp_agreement
    from qlab.gguf.writer import export_gguf
    from qlab.model import load_model
    from qlab.output import check_result_path, write_result

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model, tok = load_model()
    tokens = eval_tokens(tok, "wiki", max_tokens=args.tokens)
    out = check_result_path(args.out)
    rows = []
    print(f"{'type':7} {'float':>8} {'ggml draws':>26} {'llama.cpp settings':>26} {'gap float':>9} {'gap ggml':>8} "
          f"{'llama spread':>12} {'KL f':>7} {'KL g':>7} {'KL self':>7}")
    with tempfile.TemporaryDirectory() as d:
        f32 = export_gguf(model, tok, Path(d) / "F32.gguf", "F32", progress=False)
        del model
        for qtype in args.types.split(","):
            t0 = time.perf_counter()
            path = f32 if qtype == "F32" else mixes.llama_cpp_quantize(f32, Path(d) / f"{qtype}.gguf", qtype,
                                                                        nthread=2)
            a = llama_cpp_agreement(path, tokens, ctx=args.ctx, draws=args.draws,
                                    settings=tuple(args.settings.split(",")))
            rows.append({"type": qtype, **a.to_dict(), "seconds": time.perf_counter() - t0})
            g = " ".join(f"{x:.3f}" for x in a.ppl_ggml)
            ll = " ".join(f"{x:.3f}" for x in a.ppl_llama.values())
            print(f"{qtype:7} {a.ppl_float:8.3f} {g:>26} {ll:>26} {100 * a.gap_float:+8.2f}% {100 * a.gap_ggml:+7.2f}% "
                  f"{100 * a.llama_spread:11.2f}% {a.kl_float:7.4f} {sum(a.kl_ggml) / len(a.kl_ggml):7.4f} "
                  f"{max(a.kl_llama_self.values(), default=0):7.4f}", flush=True)
            if path != f32:
                path.unlink()
            result = {"protocol": f"{len(tokens)} wiki tokens, {args.ctx}-token windows, all but first token scored",
                      "settings": args.settings.split(","), "draws": args.draws, "jitter": 1e-6,
                      "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "rows": rows}
            write_result(out, result, "benchmarks/gguf_agreement.py")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
