"""GEMV and small-M GEMM on the CPU: qlab's C kernels vs ggml's own vec_dot vs torch float32, in one run.

    python benchmarks/cpu_kernels.py                 # all shapes, M in {1, 8}, 1 and 2 threads
    python benchmarks/cpu_kernels.py --quick         # 4096x4096, M = 1, 1 thread

Contenders for Y[M, N] = X[M, K] @ W^T:
- qlab: qlab.kernels.cpu.gemm (activations quantized to Q8 inside, rows split over threads);
- ggml: ggml's from_float + vec_dot (libggml-cpu of the llama-cpp-python build, the functions llama.cpp's
  matmul calls per row) looped over the rows by the same C driver and threads as qlab's (so only the dot
  product differs); absent if llama-cpp-python is not installed;
- torch: torch.nn.functional.linear in float32 (torch.set_num_threads(threads)).
Timing: rounds that run qlab and ggml once each, interleaved, each on its own copy of the weights (the machine
is shared: interleaving exposes both to the same load); torch is timed before them, alone (its 4-byte weights
would flush the caches between the others' calls); "best" = the fastest round (the least disturbed), "median"
too. Effective GB/s = weight bytes / best time. The per-call cost of qlab's gemm (a 4-row matrix) is recorded
under machine.qlab_call_overhead_us. Writes benchmarks/results/cpu_kernels.json (atomically).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # ggml_cpu_oracle lives with the tests

import qlab.kernels.cpu as K  # noqa: E402

from qlab.output import check_result_path, write_result  # noqa: E402

SHAPES = [(576, 1536), (1536, 576), (4096, 4096), (4096, 11008)]  # (K = in_features, N = out_features)
QTYPES = ["Q4_0", "Q8_0", "Q4_K", "Q6_K"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_weights(qtype: str, N: int, Kd: int, seed: int = 0) -> np.ndarray:
    """N rows of qtype blocks: 64 distinct quantized random rows, tiled (quantizing 45M weights takes long)."""
    rng = np.random.default_rng(seed)
    base = K.quantize_weights(rng.standard_normal((64, Kd)).astype(np.float32), qtype)
    return np.ascontiguousarray(np.tile(base, (N // 64 + 1, 1))[:N])


def time_interleaved(fns: dict, budget_s: float, max_rounds: int, min_rounds: int = 3) -> dict:
    """Run every fn once per round, rounds until budget_s or max_rounds; {name: [seconds per round]}."""
    for f in fns.values():
        f()  # warm-up (page faults, caches, lazy builds)
    ts: dict[str, list[float]] = {k: [] for k in fns}
    t_end = time.perf_counter() + budget_s
    for r in range(max_rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t0)
        if r + 1 >= min_rounds and time.perf_counter() > t_end:
            break
    return ts


def call_overhead_us(reps: int = 2000) -> dict:
    """Per-call cost of qlab.kernels.cpu.gemm: the fastest of reps calls on a 4-row Q4_0 matrix (K = 576), whose
    kernel work is ~0.1 us, with numpy and with torch inputs (torch's output tensor costs ~1.5 us more)."""
    X = np.random.default_rng(3).standard_normal((1, 576)).astype(np.float32)
    W = K.quantize_weights(np.random.default_rng(4).standard_normal((4, 576)).astype(np.float32), "Q4_0")
    out = {}
    for name, (w, x) in {"numpy": (W, X), "torch": (torch.from_numpy(W), torch.from_numpy(X))}.items():
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            K.gemm("Q4_0", w, x)
            ts.append(time.perf_counter() - t0)
        out[name] = round(min(ts) * 1e6, 2)
    return out


def run(shapes, Ms, threads, qtypes, budget_s: float, progress: bool = True) -> dict:
    try:
        import ggml_cpu_oracle

        oracle = ggml_cpu_oracle.load()
    except Exception as e:  # noqa: BLE001 - any failure means: no ggml column
        print(f"ggml oracle unavailable ({e}); timing qlab and torch only", file=sys.stderr)
        oracle = None
    rows = []
    overhead = call_overhead_us()
    if progress:
        print(f"per-call cost of qlab's gemm (K=576, N=4, M=1): {overhead} us", flush=True)
    for (Kd, N) in shapes:
        Wf = torch.randn(N, Kd)
        for M in Ms:
            X = np.random.default_rng(1).standard_normal((M, Kd)).astype(np.float32)
            Xt = torch.from_numpy(X)
            for th in threads:
                torch.set_num_threads(th)
                # torch alone first: interleaved with the quantized kernels its 4-byte weights would flush the
                # caches (and its OpenMP threads spin after each call)
                t_torch = time_interleaved({"torch_f32": lambda: torch.nn.functional.linear(Xt, Wf)}, budget_s,
                                           max_rounds=30)["torch_f32"]
                for qt in qtypes:
                    if Kd % K.QTYPES[qt].block_size:
                        continue  # 576 does not split into 256-weight super-blocks
                    W = make_weights(qt, N, Kd)
                    W2 = W.copy()  # each contender streams its own copy: neither finds the other's data in cache
                    fns = {"qlab": lambda W=W, qt=qt: K.gemm(qt, W, X, n_threads=th)}
                    if oracle is not None:
                        vd, ff = oracle.pointers(qt)
                        fns["ggml"] = lambda W=W2, qt=qt, vd=vd, ff=ff: K.gemm_foreign(vd, ff, qt, W, X, n_threads=th)
                    big = N * Kd >= 4096 * 4096
                    ts = time_interleaved(fns, budget_s, max_rounds=100 if big else 300)
                    if oracle is not None:  # same answer, bit for bit (same summation order)
                        same = bool(np.array_equal(fns["qlab"](), fns["ggml"]()))
                    else:
                        same = None
                    ts["torch_f32"] = t_torch
                    best = {k: min(v) for k, v in ts.items()}
                    med = {k: float(np.median(v)) for k, v in ts.items()}
                    wbytes = W.nbytes
                    rec = {
                        "K": Kd, "N": N, "M": M, "threads": th, "qtype": qt,
                        "weight_bytes": int(wbytes), "rounds": len(ts["qlab"]),
                        "best_us": {k: round(v * 1e6, 1) for k, v in best.items()},
                        "median_us": {k: round(v * 1e6, 1) for k, v in med.items()},
                        "qlab_vs_ggml": round(best["ggml"] / best["qlab"], 3) if "ggml" in best else None,
                        "qlab_vs_torch": round(best["torch_f32"] / best["qlab"], 3),
                        "GBps": {"qlab": round(wbytes / best["qlab"] / 1e9, 2),
                                 "ggml": round(wbytes / best["ggml"] / 1e9, 2) if "ggml" in best else None,
                                 "torch_f32": round(4 * N * Kd / best["torch_f32"] / 1e9, 2)},
                        "equal_to_ggml": same,
                    }
                    rows.append(rec)
                    if progress:
                        g = f"{rec['best_us'].get('ggml', float('nan')):9.1f}"
                        print(f"{Kd:5d}x{N:<5d} M={M} t={th} {qt}: qlab {rec['best_us']['qlab']:9.1f} us  "
                              f"ggml {g} us  torch {rec['best_us']['torch_f32']:9.1f} us  "
                              f"x ggml {rec['qlab_vs_ggml']}  x torch {rec['qlab_vs_torch']}  "
                              f"{rec['GBps']['qlab']} GB/s  equal {same}", flush=True)
    return {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "paths": K.available_paths(),
                    "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
                    "torch": torch.__version__, "qlab_call_overhead_us": overhead},
        "protocol": "interleaved rounds; best = fastest round; GB/s = weight bytes / best",
        "results": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4096x4096, M = 1, one thread")
    ap.add_argument("--budget", type=float, default=0.4, help="seconds of timing per configuration")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_kernels.json")
    a = ap.parse_args()
    check_result_path(a.out)
    if a.quick:
        res = run([(4096, 4096)], [1], [1], QTYPES, a.budget)
    else:
        res = run(SHAPES, [1, 8], [1, 2], QTYPES, a.budget)
    write_result(a.out, res, "benchmarks/cpu_kernels.py")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
