"""The Triton W4A16 kernels (run by the CPU interpreter: conftest sets TRITON_INTERPRET=1 before any import)
against the oracle "dequantize with QuantizedTensor.dequantize, then matmul in fp32".

Tolerance (derived, not fitted). The kernel computes y = round_out(Σ_k x_k · round_w(Ŵ_nk)) with fp32 sums:
- round_w: where tl.dot runs in 16 bits (the GEMM path; the decode path for M > 8) Ŵ is rounded to the
  activation dtype, |δ| ≤ u·|Ŵ| (u_w = u); elsewhere Ŵ stays fp32 (u_w = 0), see `weight_rounding`;
- fp32 summation in a different order than the reference: ≤ K·2⁻²⁴ · Σ|x_k Ŵ_nk| for each of the two;
- round_out: the fp32 result rounded to fp16/bf16, ≤ u·|y|, and this dominates.
So |y − ref| ≤ u·|ref| + (1 + u)·(u_w + 2K·2⁻²⁴)·Σ_k |x_k|·|Ŵ_nk|, with the unit roundoff u = 2⁻¹¹ for fp16
(11-bit significand, round to nearest) and 2⁻⁸ for bf16 (8-bit significand). Triton 3.9's interpreter
rounds fp32 → bf16 by truncation (error up to one ulp), so there u = 2⁻⁷ for bf16.
"""

import os

import pytest
import torch

from qlab.packing import pack_rows
from qlab.qtensor import QuantizedTensor

try:  # triton is an optional dependency (the `triton` extra, installed by the test set-up): skip only if absent
    import triton  # noqa: F401
except ModuleNotFoundError as e:
    if os.environ.get("CI"):
        raise RuntimeError(f"triton is required in CI but not installed: {e}") from e
    pytest.skip(f"triton is not installed ({e}); install qlab[triton] to run the kernel tests",
                allow_module_level=True)
# qlab's own module must import once triton is there: a broken qlab.kernels.triton fails, it is not skipped
from qlab.kernels.triton import Config, dequantize, interpreting, wq_matmul  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"
UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-7 if interpreting() else 2.0**-8,
                 torch.float32: 2.0**-24}


def random_qtensor(N: int, K: int, bits: int, group: int, act_order: bool, seed: int = 0) -> QuantizedTensor:
    """Random codes, fp16-representable positive scales, integer zeros; act-order scatters the groups."""
    g = torch.Generator().manual_seed(seed)
    G = -(-K // group)  # the last group may be partial: the kernel must not assume K % group == 0
    codes = torch.randint(0, 2**bits, (N, K), generator=g, dtype=torch.uint8)
    scales = (torch.rand(N, G, generator=g) * 0.02 + 0.002).half().float()
    zeros = torch.randint(0, 2**bits, (N, G), generator=g).float()
    g_idx = torch.arange(K, dtype=torch.int32) // group
    if act_order:
        g_idx = g_idx[torch.randperm(K, generator=g)]
    return QuantizedTensor(codes, scales, zeros, bits, group, symmetric=False, g_idx=g_idx)


def packed(qt: QuantizedTensor) -> tuple:
    """qlab's canonical kernel inputs: GPTQ qweight, scales/zeros [G, N], g_idx or None (= k // group)."""
    default = torch.equal(qt.g_idx, torch.arange(qt.shape[1], dtype=torch.int32) // qt.group_size)
    return (pack_rows(qt.codes.T.contiguous(), qt.bits).to(DEVICE), qt.scales.T.contiguous().to(DEVICE),
            qt.zeros.T.contiguous().to(DEVICE), None if default else qt.g_idx.to(DEVICE))


def weight_rounding(dtype: torch.dtype, dot: bool) -> float:
    """u_w: Ŵ is rounded to the activation dtype only where tl.dot runs in 16 bits (`dot`: the GEMM path, and
    the decode path once a tile holds 16 rows, i.e. M > 8). The GEMV path (M ≤ 8) and fp32 dots (fp32 x; bf16
    under the interpreter) multiply by the fp32 Ŵ."""
    dot16 = dot and (dtype == torch.float16 or (dtype == torch.bfloat16 and not interpreting()))
    return UNIT_ROUNDOFF[dtype] if dot16 else 0.0


def check_close(y: torch.Tensor, x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None = None,
                u_w: float | None = None) -> None:
    """Assert |y − x·Wᵀ − b| ≤ the rounding bound of the module docstring (and that the bound is not vacuous)."""
    u = UNIT_ROUNDOFF[x.dtype]
    u_w = weight_rounding(x.dtype, dot=x.shape[0] > 8) if u_w is None else u_w  # the auto config's path
    K = x.shape[-1]
    ref = x.float() @ W.T + (0 if bias is None else bias.float())
    mag = x.float().abs() @ W.abs().T + (0 if bias is None else bias.float().abs())
    bound = u * ref.abs() + (1 + u) * (u_w + 2 * K * 2.0**-24) * mag
    err = (y.float().cpu() - ref).abs()
    assert y.dtype == x.dtype and y.shape == ref.shape
    assert bool(torch.isfinite(y).all())
    worst = float((err / bound).max())
    assert worst <= 1.0, f"error exceeds the rounding bound by {worst:.2f}×"
    assert float(bound.mean()) < 0.1 * float(ref.abs().mean()), "bound too loose to mean anything"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("act_order", [False, True], ids=["no_gidx", "g_idx"])
def test_matmul_matches_dequantize_then_matmul(dtype, group, act_order):
    # K = 2·group + 40: not a multiple of the K tile (64) nor of the group; N = 72: not a multiple of the N tile.
    N, K = 72, 2 * group + 40
    qt = random_qtensor(N, K, 4, group, act_order, seed=group)
    W = qt.dequantize()
    qw, s, z, g_idx = packed(qt)
    for M in (1, 3, 16, 33):  # decode path (GEMV M = 1, 3; tl.dot M = 16; split-K) and the tiled GEMM path (33)
        x = torch.randn(M, K).to(dtype)
        y = wq_matmul(x.to(DEVICE), qw, s, z, g_idx, 4, group)
        check_close(y, x, W)


@pytest.mark.parametrize("bits", [8, 3, 2])
def test_other_bit_widths(bits):
    # 3-bit codes straddle int32 words (32 codes in 3 words): K = 96 exercises every straddle offset.
    N, K, group = 40, 96, 32
    qt = random_qtensor(N, K, bits, group, act_order=True, seed=bits)
    W = qt.dequantize()
    qw, s, z, g_idx = packed(qt)
    for M in (1, 20):
        x = torch.randn(M, K).half()
        check_close(wq_matmul(x.to(DEVICE), qw, s, z, g_idx, bits, group), x, W)


@pytest.mark.parametrize("cfg", [
    Config("gemm", 16, 32, 32, group_m=2),  # the GEMM path at decode sizes, several N tiles, grouped ordering
    Config("decode", 4, 32, 32, split_k=4),  # several M tiles, 4-way split-K, the last slice a partial tile
    Config("decode", 16, 16, 16, split_k=1),  # tl.dot decode without split, group-aligned scale rows
    Config("decode", 2, 32, 32, split_k=2, unpack="words"),  # word-at-once unpacking (3-D shift + reshape)
    Config("gemm", 16, 32, 16, group_m=1, unpack="words"),
], ids=["gemm-small", "decode-split4", "decode-dot", "decode-words", "gemm-words"])
def test_forced_configs_with_bias_and_3d_input(cfg):
    N, K, group = 50, 112, 16
    qt = random_qtensor(N, K, 4, group, act_order=False, seed=1)
    W = qt.dequantize()
    qw, s, z, g_idx = packed(qt)
    x = torch.randn(2, 9, K).half()
    bias = torch.randn(N).half()
    y = wq_matmul(x.to(DEVICE), qw, s, z, g_idx, 4, group, bias=bias.to(DEVICE), config=cfg)
    assert y.shape == (2, 9, N)
    dot = cfg.path == "gemm" or cfg.block_m >= 16
    check_close(y.reshape(18, N), x.reshape(18, K), W, bias, u_w=weight_rounding(x.dtype, dot))


def test_fp32_activations_and_fp16_scale_storage():
    # Scales/zeros stored as fp16 (QuantLinear's default) are read as fp32: exact for fp16-representable scales.
    N, K, group = 24, 64, 32
    qt = random_qtensor(N, K, 4, group, act_order=False)
    qw, s, z, g_idx = packed(qt)
    x = torch.randn(5, K)
    y = wq_matmul(x.to(DEVICE), qw, s.half(), z.half(), g_idx, 4, group)
    check_close(y, x, qt.dequantize())


@pytest.mark.parametrize("bits,act_order", [(4, False), (4, True), (3, True), (8, False)])
def test_dequantize_kernel_is_exact(bits, act_order):
    # (code − z)·s in fp32 in both: bit-identical, not just close.
    N, K, group = 40, 160, 32
    qt = random_qtensor(N, K, bits, group, act_order, seed=7)
    qw, s, z, g_idx = packed(qt)
    W = dequantize(qw, s, z, g_idx, bits, group, K, dtype=torch.float32)
    assert torch.equal(W.cpu(), qt.dequantize())
    W = dequantize(qw, s, z, g_idx, bits, group, K, dtype=torch.float32, unpack="words", block_k=32)
    assert torch.equal(W.cpu(), qt.dequantize())
    W16 = dequantize(qw, s, z, g_idx, bits, group, K, dtype=torch.float16)
    assert torch.equal(W16.cpu(), qt.dequantize().half())


def test_bad_inputs_are_refused():
    qt = random_qtensor(8, 32, 4, 32, act_order=False)
    qw, s, z, _ = packed(qt)
    with pytest.raises(ValueError, match="too few"):
        wq_matmul(torch.randn(1, 40).half().to(DEVICE), qw, s, z, None, 4, 32)
    with pytest.raises(ValueError, match="g_idx"):
        wq_matmul(torch.randn(1, 32).half().to(DEVICE), qw, s, z, torch.zeros(31, dtype=torch.int32), 4, 32)
    with pytest.raises(ValueError, match="bits"):
        wq_matmul(torch.randn(1, 32).half().to(DEVICE), qw, s, z, None, 5, 32)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the benchmark would run")
def test_benchmark_without_gpu_says_so():
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "kernels.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "needs a CUDA GPU" in r.stderr and "Traceback" not in r.stderr
