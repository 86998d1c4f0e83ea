"""Quantization throughput: qlab's vectorised numpy GGUF block formats vs ggml's C on the same tensor.

    .venv/bin/python benchmarks/gguf_quantize_speed.py [--rows 512 --cols 4096 --types Q4_K,Q6_K,... --repeat 3]

ggml's side is ``ggml_quantize_chunk`` from llama-cpp-python's libggml-base (tests/ggml_oracle.py), one
thread, the very function llama-quantize calls per chunk. Each run also checks the bytes are identical.
Prints MB/s of float32 input for both and the ratio qlab / ggml; writes benchmarks/results/gguf_quantize_speed.json.
Goal (issue 6): ratio >= 0.2 for Q4_K and Q6_K.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import ggml_oracle  # noqa: E402

from qlab import gguf  # noqa: E402
from qlab.output import check_result_path, write_result  # noqa: E402

DEFAULT_TYPES = "Q4_K,Q6_K,Q2_K,Q3_K,Q5_K,Q4_0,Q4_1,Q5_0,Q5_1,Q8_0"


def best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--types", default=DEFAULT_TYPES)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-imatrix", action="store_true", help="skip the runs with importance weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gguf_quantize_speed.json"))
    args = ap.parse_args(argv)
    check_result_path(args.out)

    oracle = ggml_oracle.load()
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.rows, args.cols)).astype(np.float32)
    imatrix = (rng.standard_normal((64, args.cols)) ** 2).mean(0).astype(np.float32)
    mb = x.nbytes / 1e6
    results = []
    print(f"tensor {args.rows} x {args.cols} float32 ({mb:.1f} MB), best of {args.repeat}, one thread each side")
    print(f"{'type':6} {'imatrix':7} {'qlab MB/s':>10} {'ggml MB/s':>10} {'ratio':>7}  exact")
    for qtype in args.types.split(","):
        for use_imatrix in (False, True):
            if use_imatrix and (args.no_imatrix or not gguf.block_info(qtype).takes_imatrix):
                continue
            imp = imatrix if use_imatrix else None
            ours = gguf.quantize(x, qtype, imp)
            ref = oracle.quantize(x, qtype, imp)
            t_qlab = best_time(lambda: gguf.quantize(x, qtype, imp), args.repeat)  # noqa: B023
            t_ggml = best_time(lambda: oracle.quantize(x, qtype, imp), args.repeat)  # noqa: B023
            row = {"type": qtype, "imatrix": use_imatrix, "qlab_MBps": mb / t_qlab, "ggml_MBps": mb / t_ggml,
                   "ratio": t_ggml / t_qlab, "byte_exact": bool(np.array_equal(ours, ref))}
            results.append(row)
            print(f"{qtype:6} {str(use_imatrix):7} {row['qlab_MBps']:10.2f} {row['ggml_MBps']:10.2f} "
                  f"{row['ratio']:7.3f}  {row['byte_exact']}")
    report = {
        "benchmark": "gguf_quantize_speed", "rows": args.rows, "cols": args.cols, "repeat": args.repeat,
        "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "numpy": np.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": results,
    }
    out = write_result(args.out, report, "benchmarks/gguf_quantize_speed.py")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
