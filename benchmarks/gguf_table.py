"""GGUF types on the embedded model: bits per weight (from file size) × perplexity (qlab) × perplexity (llama.cpp) × KL.

For each type qlab writes the file (its own block formats and llama-quantize's mix rules), then
  - qlab: reads the file back (its own dequantization) and evaluates it in transformers (float32 matmuls);
  - llama.cpp: runs the same file through llama-cpp-python (fp32 KV cache; activations quantized to 8 bits inside
    its quantized matmuls), logits scored under the same protocol.
KL(P_ref ‖ P) is against the float reference (the dithered embedded model). Writes benchmarks/results/gguf_table.json.

    python benchmarks/gguf_table.py [--tokens 2048] [--types F32,Q8_0,...] [--imatrix-samples 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

TYPES = ["F32", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0",
         "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K"]
IMATRIX_TYPES = ["Q4_K_M", "Q3_K_M", "Q4_0", "Q2_K"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--imatrix-types", default=",".join(IMATRIX_TYPES))
    ap.add_argument("--imatrix-samples", type=int, default=16)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gguf_table.json"))
    args = ap.parse_args()

    from qlab.data import calibration_batches, eval_tokens
    from qlab.eval import Evaluator
    from qlab.gguf.imatrix import collect_imatrix
    from qlab.gguf.reader import llama_cpp_evaluate, load_gguf_model, tensor_types
    from qlab.gguf.writer import export_gguf
    from qlab.model import load_model, parameter_count
    from qlab.output import check_result_path, write_result

    model, tok = load_model()
    tokens = eval_tokens(tok, "wiki", max_tokens=args.tokens)
    ev = Evaluator(model, tokens, ctx=512, progress=False)
    n_weights = parameter_count(model)
    runs = [(t, False) for t in args.types.split(",") if t]
    im = None
    if args.imatrix_types:
        t0 = time.perf_counter()
        im = collect_imatrix(model, calibration_batches(tok, "wiki", n_samples=args.imatrix_samples, seqlen=512),
                             progress=False)
        print(f"imatrix: {args.imatrix_samples}×512 calibration tokens in {time.perf_counter() - t0:.0f} s")
        runs += [(t, True) for t in args.imatrix_types.split(",") if t]
    rows = []
    out = check_result_path(args.out)

    def save() -> None:  # after every row, atomically: a long run interrupted still leaves its table
        result = {"model": getattr(model, "qlab_description", "smollm2-135m"), "weights": n_weights,
                  "reference_perplexity": ev.reference.perplexity, "protocol": ev.protocol, "eval_text": "wiki",
                  "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                  "imatrix_samples": args.imatrix_samples, "rows": rows}
        write_result(out, result, "benchmarks/gguf_table.py")

    print(f"{'type':16} {'bpw':>6} {'ppl qlab':>9} {'ppl llama':>9} {'ratio':>6} {'KL qlab':>8} {'KL llama':>8} "
          f"{'export s':>8}")
    with tempfile.TemporaryDirectory() as d:
        for qtype, use_im in runs:
            path = Path(d) / f"{qtype}.gguf"
            t0 = time.perf_counter()
            export_gguf(model, tok, path, qtype, imatrix=im if use_im else None, progress=False)
            export_s = time.perf_counter() - t0
            ours, _ = load_gguf_model(path, tokenizer=tok)
            r_q = ev.evaluate(ours)
            del ours
            r_l = llama_cpp_evaluate(path, tokens, reference=ev)
            counts: dict[str, int] = {}
            for t in tensor_types(path).values():
                counts[t] = counts.get(t, 0) + 1
            row = {"type": qtype, "imatrix": use_im, "file_bytes": path.stat().st_size,
                   "bits_per_weight": 8 * path.stat().st_size / n_weights, "ppl_qlab": r_q.perplexity,
                   "ppl_llama_cpp": r_l.perplexity, "kl_qlab": r_q.kl, "kl_llama_cpp": r_l.kl,
                   "top1_qlab": r_q.top1, "top1_llama_cpp": r_l.top1, "export_seconds": export_s,
                   "tensor_types": counts}
            rows.append(row)
            label = qtype + (" +imatrix" if use_im else "")
            print(f"{label:16} {row['bits_per_weight']:6.2f} {r_q.perplexity:9.3f} {r_l.perplexity:9.3f} "
                  f"{r_l.perplexity / r_q.perplexity:6.3f} {r_q.kl:8.4f} {r_l.kl:8.4f} {export_s:8.1f}", flush=True)
            path.unlink()
            save()
    print(f"reference (float) perplexity {ev.reference.perplexity:.3f}; {ev.protocol}; wrote {out}")


if __name__ == "__main__":
    main()
