"""A measured CPU roofline: read bandwidth per working-set size, SIMD compute peaks, and where GEMV kernels sit.

    attainable ops/s = min(peak, bandwidth x intensity),   intensity = ops / byte moved

A GEMV reads every weight once and does 2 ops (multiply, add) per weight, so its intensity is
2 / (bytes per weight): 0.5 op/B in float32, 1.88 in Q8_0 (34 B / 32 weights), 3.56 in Q4_0 / Q4_K, 2.44 in Q6_K.
The probes are C loops (qlab.kernels.cpu) timed here; on a shared machine take the best of several runs.
"""

from __future__ import annotations

import time

import numpy as np
import torch

import qlab.kernels.cpu as K
from qlab.errors import BadArgumentError

# name: (probe id, ops per round, path it needs)
PEAK_KINDS = {"fp32_fma": (0, 8 * 16, "avx2"), "int8_maddubs": (1, 8 * 64, "avx2"), "int8_vnni": (2, 8 * 64, "avx512")}


def bytes_per_weight(qtype: str) -> float:
    """Storage bytes per weight: 4 (F32), 2 (F16), else block bytes / block weights."""
    q = qtype.upper()
    if q in ("F32", "FP32"):
        return 4.0
    if q in ("F16", "BF16"):
        return 2.0
    if q not in K.QTYPES:
        raise BadArgumentError(f"unknown type {qtype!r}")
    return K.QTYPES[q].type_size / K.QTYPES[q].block_size


def gemv_intensity(qtype: str) -> float:
    """Ops per weight byte of a GEMV (2 ops per weight)."""
    return 2.0 / bytes_per_weight(qtype)


def _best(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def read_bandwidth(sizes: list[int], reps: int = 20) -> list[tuple[int, float]]:
    """Best read bandwidth (GB/s, one thread) of a buffer of each size in bytes, summed by a SIMD loop."""
    lib = K.library()
    out = []
    for n in sizes:
        buf = np.arange(n, dtype=np.uint8)  # written pages (np.zeros would map one shared zero page)
        if lib is None:
            t = torch.from_numpy(buf).view(torch.int8) if n % 8 else torch.from_numpy(buf).view(torch.int64)
            fn = lambda t=t: t.sum()  # noqa: E731
        else:
            fn = lambda buf=buf: lib.qlab_read_sum(buf.ctypes.data, buf.size)  # noqa: E731
        r = max(3, int(reps * min(1.0, 2**22 / n)))
        out.append((n, n / _best(fn, r) / 1e9))
    return out


def compute_peaks(rounds: int = 2_000_000, reps: int = 5) -> dict[str, float]:
    """Best single-thread SIMD throughput in G ops/s: fp32 FMA (2 flops per lane), int8 maddubs+madd, VNNI."""
    lib = K.library()
    out: dict[str, float] = {}
    if lib is None:
        return out
    for name, (kind, ops, need) in PEAK_KINDS.items():
        if need not in K.available_paths():
            continue
        t = _best(lambda kind=kind: lib.qlab_peak_probe(kind, rounds), reps)
        out[name] = rounds * ops / t / 1e9
    return out


def gemv_speed(qtype: str, k: int, n: int, n_threads: int = 1, reps: int = 20, seed: int = 0) -> dict[str, float]:
    """Best time of one GEMV y = W x (W [n, k] in qtype through qlab's C kernels; F32, F16 and BF16 through torch's
    `linear` in that dtype, activations too) -> us, GB/s, G ops/s."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, k)).astype(np.float32)
    float_dtypes = {"F32": torch.float32, "FP32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    if qtype.upper() in float_dtypes:
        dtype = float_dtypes[qtype.upper()]
        W = torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32)).to(dtype)
        xt = torch.from_numpy(x).to(dtype)
        prev = torch.get_num_threads()
        torch.set_num_threads(n_threads)
        try:
            t = _best(lambda: torch.nn.functional.linear(xt, W), reps)
        finally:
            torch.set_num_threads(prev)
        nbytes = W.numel() * W.element_size()
    else:
        base = K.quantize_weights(rng.standard_normal((64, k)).astype(np.float32), qtype)
        Wq = np.ascontiguousarray(np.tile(base, (n // 64 + 1, 1))[:n])
        t = _best(lambda: K.gemm(qtype, Wq, x, n_threads=n_threads), reps)
        nbytes = Wq.nbytes
    return {"us": t * 1e6, "GBps": nbytes / t / 1e9, "Gops": 2 * n * k / t / 1e9}
