"""qlab.lessons.roofline against closed-form counts (bytes of each tensor, 2·M·N·K FLOPs)."""

import pytest

from qlab.lessons.roofline import (
    SPECS,
    GPUSpec,
    intensity,
    matmul_traffic,
    roofline_seconds,
    speedup_bound,
    weight_bytes,
)


def test_bytes_and_flops_by_hand():
    # 4096×4096 int4, group 128, fp16 scale + fp16 zero: 8 MiB of codes + 4 B for each of 131072 groups
    assert weight_bytes(4096, 4096, 4, 128) == 4096 * 4096 / 2 + 4096 * 32 * 4
    assert weight_bytes(4096, 4096, 16) == 2 * 4096 * 4096
    b, f = matmul_traffic(1, 4096, 4096)
    assert f == 2 * 4096 * 4096 and b == 2 * 4096 * 4096 + 2 * (4096 + 4096)
    assert intensity(1, 4096, 4096) == pytest.approx(1.0, rel=1e-3)  # bf16 GEMV: one FLOP per byte


def test_speedup_limits():
    h200 = SPECS["H200"]
    assert h200.ridge == pytest.approx(989 / 4.8, rel=1e-9)
    # M = 1: memory-bound both ways, the bound is the ratio of weight bytes 16 / (4 + 32/128) ≈ 3.76
    assert speedup_bound(1, 28672, 8192, h200) == pytest.approx(16 / 4.25, rel=2e-3)
    # huge M: both compute-bound, no speed-up is possible
    assert speedup_bound(8192, 28672, 8192, h200) == pytest.approx(1.0)
    # M = 64: bf16 still memory-bound (64 FLOP/B < ridge), int4 already compute-bound: ridge / 64 (+ act. bytes)
    assert speedup_bound(64, 28672, 8192, h200) == pytest.approx(h200.ridge / 64, rel=0.02)


def test_roofline_time_is_the_max_of_both_limits():
    spec = GPUSpec("toy", bandwidth_GBps=1.0, bf16_TFLOPS=1e-3)  # 1 GB/s, 1 GFLOP/s: ridge = 1 FLOP/byte
    b, f = matmul_traffic(2, 8, 8)
    assert roofline_seconds(2, 8, 8, spec) == max(b / 1e9, f / 1e9)
