"""Roofline of weight-only quantized matmul: bytes moved vs FLOPs for Y[M, N] = X[M, K] · Ŵ[N, K]ᵀ.

    FLOPs  = 2·M·N·K
    bytes  = N·K·bits/8 + (N·K/group)·(scale_bytes + zero_bytes)   (the weight, read once)
           + M·K·act_bytes + M·N·act_bytes                          (activations in, outputs out)
    time  ≥ max(bytes / bandwidth, FLOPs / peak)                    (Williams et al., "Roofline", CACM 2009)

At M = 1 the intensity FLOPs/byte is ≈ 2·M/(bits/8) ≪ the GPU's ridge point (peak/bandwidth, ~200–300
FLOP/byte), so time is the weight's bytes over bandwidth and 4-bit weights can be up to ≈ 16/4.25 ≈ 3.8× faster
than bf16; as M grows the FLOPs catch up, and past the ridge both are compute-bound: the speed-up tends to 1×.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPUSpec:
    """Vendor spec-sheet numbers (not measurements): HBM bandwidth and dense bf16 tensor-core peak."""

    name: str
    bandwidth_GBps: float
    bf16_TFLOPS: float

    @property
    def ridge(self) -> float:
        """FLOP/byte above which a kernel is compute-bound: peak / bandwidth."""
        return self.bf16_TFLOPS * 1e12 / (self.bandwidth_GBps * 1e9)


# NVIDIA data sheets (SXM parts, dense — without 2:4 sparsity — bf16 tensor-core throughput).
SPECS = {
    "H100": GPUSpec("H100 SXM5 80 GB (NVIDIA spec sheet)", 3350.0, 989.0),
    "H200": GPUSpec("H200 SXM 141 GB (NVIDIA spec sheet)", 4800.0, 989.0),
}


def weight_bytes(N: int, K: int, bits: float, group_size: int | None = None, scale_bytes: int = 2,
                 zero_bytes: int = 2) -> float:
    """Bytes of a packed [N, K] weight: codes plus one scale and zero per group (group None: no scales, e.g. bf16)."""
    total = N * K * bits / 8
    if group_size:
        total += N * (K / group_size) * (scale_bytes + zero_bytes)
    return total


def matmul_traffic(M: int, N: int, K: int, bits: float = 16, group_size: int | None = None,
                   act_bytes: int = 2) -> tuple[float, float]:
    """(bytes, FLOPs) of one X[M, K] · Ŵᵀ with a `bits`-bit weight (16 and group None: the bf16 baseline)."""
    bytes_ = weight_bytes(N, K, bits, group_size) + (M * K + M * N) * act_bytes
    return bytes_, 2.0 * M * N * K


def intensity(M: int, N: int, K: int, bits: float = 16, group_size: int | None = None) -> float:
    """Arithmetic intensity FLOPs / byte."""
    b, f = matmul_traffic(M, N, K, bits, group_size)
    return f / b


def roofline_seconds(M: int, N: int, K: int, spec: GPUSpec, bits: float = 16,
                     group_size: int | None = None) -> float:
    """Lower bound on the time: max(bytes / bandwidth, FLOPs / peak)."""
    b, f = matmul_traffic(M, N, K, bits, group_size)
    return max(b / (spec.bandwidth_GBps * 1e9), f / (spec.bf16_TFLOPS * 1e12))


def speedup_bound(M: int, N: int, K: int, spec: GPUSpec, bits: float = 4, group_size: int | None = 128) -> float:
    """Best possible speed-up of the quantized matmul over bf16 when both run at their roofline."""
    return roofline_seconds(M, N, K, spec) / roofline_seconds(M, N, K, spec, bits, group_size)
