"""End to end on this CPU: decoding tokens/s and perplexity of the embedded model (SmolLM2-135M) with qlab's
GGUF kernels (Q8_0, Q4_0, Q4_K) vs torch float32, and llama.cpp on GGUF files of the same weights.

    python benchmarks/cpu_e2e.py [--threads 1] [--ppl-tokens 2048] [--no-llama]

- qlab: swap_gguf_linears(model, qtype, lm_head_qtype="Q8_0") on the float (dithered) reference; Q4_K rows of
  576 inputs (q/k/v/o/gate/up) fall back to Q4_0, only down_proj (1536 inputs) is Q4_K.
- torch float32: the reference model as is (transformers, torch's own GEMV).
- llama.cpp (llama-cpp-python): GGUF files written by qlab.gguf.export_gguf from the same weights (Q8_0; Q4_0
  with llama-quantize's choice for the tied embedding / output: Q8_0, as rows of 576 do not fit Q6_K) and the
  embedded original Q4_1 file; decoding tokens/s from llama.cpp's generate loop, perplexity by the same
  protocol as qlab.eval (non-overlapping windows, every token but each window's first scored).
Decoding speed: greedy, 32 new tokens after a 16-token prompt, prompt time excluded. Writes
benchmarks/results/cpu_e2e.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from qlab.cpu_quant_linear import decode_tokens_per_second, gguf_model_bytes, swap_gguf_linears  # noqa: E402
from qlab.data import eval_tokens  # noqa: E402
from qlab.eval import perplexity, protocol  # noqa: E402
from qlab.model import embedded_gguf_path, load_model  # noqa: E402
from qlab.output import check_result_path, write_result  # noqa: E402

PROMPT = "The history of the city begins in the early middle ages, when"


def llama_cpp_row(path: Path, tokens: np.ndarray, prompt_ids: list[int], threads: int, ctx: int,
                  n_new: int = 32) -> dict:
    """llama.cpp on a GGUF file: decoding tokens/s (prompt excluded) and perplexity (qlab.eval's protocol)."""
    import llama_cpp
    import llama_cpp.llama as llama_mod
    from llama_cpp import Llama

    def no_repack_params():  # weight-repacking buffer types hit an illegal instruction on this VM: turn them off
        p = default_params()
        p.use_extra_bufts = False
        return p

    default_params = llama_cpp.llama_model_default_params
    llama_mod.llama_cpp.llama_model_default_params = no_repack_params
    try:
        llm = Llama(str(path), n_ctx=ctx, n_threads=threads, n_threads_batch=threads, logits_all=True,
                    verbose=False, type_k=0, type_v=0, n_batch=ctx)
    finally:
        llama_mod.llama_cpp.llama_model_default_params = default_params
    best = float("inf")
    for _ in range(2):
        llm.reset()
        gen = llm.generate(prompt_ids, temp=0.0, reset=True)
        next(gen)  # prompt + first token
        t0 = time.perf_counter()
        for _ in range(n_new):
            next(gen)
        best = min(best, time.perf_counter() - t0)
    nll, n = 0.0, 0
    for i in range(0, len(tokens), ctx):
        w = tokens[i:i + ctx]
        if len(w) < 2:
            continue
        llm.reset()
        llm.eval(w.tolist())
        logits = np.asarray(llm.scores[:len(w) - 1], dtype=np.float64)
        lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        nll -= float((logits[np.arange(len(w) - 1), w[1:]] - lse).sum())
        n += len(w) - 1
    return {"tokens_per_s": n_new / best, "perplexity": math.exp(nll / n), "file_bytes": path.stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ppl-tokens", type=int, default=2048)
    ap.add_argument("--qtypes", default="Q8_0,Q4_0,Q4_K")
    ap.add_argument("--no-llama", action="store_true", help="skip the llama.cpp rows")
    ap.add_argument("--llama-only", action="store_true", help="redo only the llama.cpp rows of an existing --out")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_e2e.json")
    a = ap.parse_args()
    check_result_path(a.out)
    torch.set_num_threads(a.threads)
    model, tok = load_model()
    tokens = eval_tokens(tok, "wiki", max_tokens=a.ppl_tokens)
    ids = tok(PROMPT, return_tensors="pt").input_ids[:, :16]
    rows = []

    def report(name: str, m, extra: dict | None = None) -> None:
        t0 = time.perf_counter()
        tps = decode_tokens_per_second(m, ids, n_new=32, reps=2)
        ppl = perplexity(m, tokens, ctx=512, progress=False)
        r = {"engine": name, "tokens_per_s": round(tps, 2), "perplexity": round(ppl.perplexity, 3),
             "ppl_seconds": round(ppl.seconds, 1), "weight_bytes": gguf_model_bytes(m), **(extra or {})}
        rows.append(r)
        print(f"{name:28s} {tps:7.2f} tok/s  ppl {ppl.perplexity:8.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)

    if a.llama_only:
        rows = [r for r in json.loads(a.out.read_text())["results"] if not r["engine"].startswith("llama.cpp")]
    else:
        report("torch float32", model)
    for qt in ([] if a.llama_only else a.qtypes.split(",")):
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        used = swap_gguf_linears(m, qt, lm_head_qtype="Q8_0", n_threads=a.threads)
        counts = {t: sum(1 for v in used.values() if v == t) for t in sorted(set(used.values()))}
        report(f"qlab {qt}", m, {"layer_types": counts, "quantize_seconds": round(time.perf_counter() - t0, 1)})
        del m

    if not a.no_llama:
        try:
            import llama_cpp  # noqa: F401

            from qlab.gguf.writer import export_gguf

            with tempfile.TemporaryDirectory() as d:
                files = {"llama.cpp Q4_1 (embedded file)": embedded_gguf_path()}
                for qt in ("Q8_0", "Q4_0"):
                    p = Path(d) / f"smollm2-{qt}.gguf"
                    export_gguf(model, tok, p, qtype=qt, progress=False)
                    files[f"llama.cpp {qt} (qlab export)"] = p
                for name, p in files.items():
                    t0 = time.perf_counter()
                    r = llama_cpp_row(p, tokens.numpy(), ids[0].tolist(), a.threads, 512)
                    rows.append({"engine": name, "tokens_per_s": round(r["tokens_per_s"], 2),
                                 "perplexity": round(r["perplexity"], 3), "weight_bytes": r["file_bytes"]})
                    print(f"{name:28s} {r['tokens_per_s']:7.2f} tok/s  ppl {r['perplexity']:8.3f}  "
                          f"({time.perf_counter() - t0:.0f} s)", flush=True)
        except Exception as e:  # noqa: BLE001 - llama.cpp is optional here
            print(f"llama.cpp rows skipped: {e!r}", file=sys.stderr)

    out = {"threads": a.threads, "protocol": protocol(512, len(tokens)),
           "decode": "greedy, 32 new tokens after a 16-token prompt, prompt excluded, best of 2",
           "reference": "embedded SmolLM2-135M, float32 dithered reference (qlab.model.load_model())",
           "loadavg_at_end": os.getloadavg(), "results": rows}
    write_result(a.out, out, "benchmarks/cpu_e2e.py")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
