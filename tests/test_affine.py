"""qlab.affine against closed forms: the grid, the Δ/2 bound of round-to-nearest, unbiased stochastic rounding."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlab import BadArgumentError, NonFiniteError
from qlab.affine import fake_quantize, mse, quantize_affine, sqnr_db, valid_group_sizes

shapes = st.tuples(st.integers(1, 6), st.sampled_from([8, 16, 24, 48]))


def weights(shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale


@settings(max_examples=60, deadline=None)
@given(shape=shapes, bits=st.integers(2, 8), sym=st.booleans(), seed=st.integers(0, 10_000),
       scale=st.sampled_from([1e-3, 1.0, 50.0]), group=st.sampled_from([8, "channel", "tensor"]))
def test_rtn_error_at_most_half_a_step_and_codes_in_range(shape, bits, sym, seed, scale, group):
    W = weights(shape, seed, scale)
    qt = quantize_affine(W, bits, group, sym)
    assert int(qt.codes.max()) <= 2**bits - 1
    s = qt.scales[:, qt.g_idx.long()]
    err = (W - qt.dequantize()).abs()
    assert bool((err <= s / 2 * (1 + 1e-5) + 1e-12).all())  # |w − ŵ| ≤ Δ/2: w never leaves the grid's range


@settings(max_examples=40, deadline=None)
@given(shape=shapes, bits=st.integers(2, 8), seed=st.integers(0, 10_000))
def test_asymmetric_closed_form(shape, bits, seed):
    """s = (max − min)/(2^b − 1) over a range widened to contain 0, z = round(−min/s), per group of 8."""
    W = weights(shape, seed)
    qt = quantize_affine(W, bits, 8, symmetric=False)
    G = W.reshape(W.shape[0], -1, 8)
    mn, mx = G.amin(-1).clamp(max=0), G.amax(-1).clamp(min=0)
    s = (mx - mn) / (2**bits - 1)
    torch.testing.assert_close(qt.scales, s)
    torch.testing.assert_close(qt.zeros, torch.round(-mn / s))
    # a value already on the grid is reproduced exactly
    on_grid = (qt.codes.float() - qt.zeros.repeat_interleave(8, 1)) * qt.scales.repeat_interleave(8, 1)
    torch.testing.assert_close(fake_quantize(on_grid, bits=bits, group_size=8), on_grid, rtol=0, atol=1e-6)


def test_symmetric_grid_is_symmetric_with_max_abs_exact():
    W = torch.tensor([[-3.0, -1.0, 0.5, 2.0]])
    qt = quantize_affine(W, 3, "channel", symmetric=True)
    assert float(qt.scales) == pytest.approx(3.0 / 3)  # s = max|w| / (2^(b−1) − 1)
    assert float(qt.zeros) == 4
    torch.testing.assert_close(qt.dequantize(), torch.tensor([[-3.0, -1.0, 0.0, 2.0]]))  # 0.5 ties to even


def test_float_zero_point_reproduces_a_q4_1_grid_exactly():
    """ŵ = q·d + m (GGUF Q4_1's form) is lossless on values already of that form; an integer zero-point is not."""
    g = torch.Generator().manual_seed(1)
    d, m = torch.rand(4, 1, generator=g) * 0.1 + 0.01, -torch.rand(4, 1, generator=g) * 0.3
    q = torch.randint(0, 16, (4, 32), generator=g).float()
    q[:, 0], q[:, 1] = 0, 15  # the block uses its whole range
    W = q * d + m
    torch.testing.assert_close(fake_quantize(W, bits=4, group_size=32, zero_point="float"), W, rtol=0, atol=1e-6)
    assert mse(W, fake_quantize(W, bits=4, group_size=32)) > 0


def test_mse_follows_delta_squared_over_12_on_uniform_data():
    """Uniform data, many levels: the rounding error e is uniform in [−Δ/2, Δ/2), so E[e²] = Δ²/12.

    Tolerance: the mean of n = 64·4096 squared errors has relative standard deviation
    √Var(e²)/E[e²]/√n = √(Δ⁴/80 − Δ⁴/144)/(Δ²/12)/√n = (12/√180)/√n ≈ 0.0017; 5 of them: rel ≈ 0.0087.
    (A rounding that is off by 4 % of a step — round(t − 0.04) — adds 0.04²·12 ≈ 1.9 % and fails.)"""
    W = torch.rand(64, 4096, generator=torch.Generator().manual_seed(0)) * 2 - 1
    rel = 5 * (12 / math.sqrt(180)) / math.sqrt(W.numel())
    for bits in (4, 6, 8):
        qt = quantize_affine(W, bits, "tensor", symmetric=False)
        delta = float(qt.scales[0, 0])
        assert mse(W, qt.dequantize()) == pytest.approx(delta**2 / 12, rel=rel)


def test_stochastic_rounding_is_unbiased():
    """E[ŵ] = w inside the grid's range (the symmetric grid covers [−max|w|, max|w|] exactly; an integer
    zero-point can leave the largest values a fraction of a step outside, where clamping biases them):
    the mean of n draws stays within 5 standard errors (σ ≤ Δ/2 per draw)."""
    W = torch.rand(1, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    n = 2000
    draws = torch.stack([quantize_affine(W, 3, "channel", True, rounding="stochastic", seed=i).dequantize()
                         for i in range(n)])
    rtn = quantize_affine(W, 3, "channel", True)
    bound = 5 * (float(rtn.scales[0, 0]) / 2) / math.sqrt(n)
    assert float((draws.mean(0) - W).abs().max()) < bound
    assert float((rtn.dequantize() - W).abs().max()) > bound  # round-to-nearest is biased per value  # RTN is biased


def test_sqnr_gains_about_6db_per_bit():
    W = torch.rand(32, 2048, generator=torch.Generator().manual_seed(0)) * 2 - 1
    s = [sqnr_db(W, fake_quantize(W, bits=b, group_size="tensor")) for b in (4, 5, 6, 7)]
    steps = [b - a for a, b in zip(s, s[1:])]
    assert all(abs(x - 20 * math.log10(2)) < 0.3 for x in steps)


def test_bits_per_weight_counts_scales_and_zeros():
    W = torch.randn(8, 128)
    assert quantize_affine(W, 4, 128).bits_per_weight() == pytest.approx(4 + (16 + 4) / 128)
    assert quantize_affine(W, 4, 32, symmetric=True).bits_per_weight() == pytest.approx(4 + 16 / 32)
    assert quantize_affine(W, 4, 32, zero_point="float").bits_per_weight() == pytest.approx(4 + 32 / 32)
    assert quantize_affine(W, 8, "tensor").bits_per_weight() == pytest.approx(8 + 24 / (8 * 128))


@pytest.mark.parametrize("bits", [1, 9, 4.0])
def test_bits_out_of_range(bits):
    with pytest.raises(BadArgumentError, match="bits must be an integer from 2 to 8"):
        quantize_affine(torch.randn(4, 8), bits)


def test_group_size_that_does_not_divide_lists_valid_sizes():
    with pytest.raises(BadArgumentError, match=r"sizes that do: \[8, 9, 12, 16, 18, 24, 32, 36, 48, 64, 72, 96, "):
        quantize_affine(torch.randn(2, 576), 4, 128)
    assert valid_group_sizes(576)[-5:] == [96, 144, 192, 288, 576]


def test_non_finite_weights():
    W = torch.randn(4, 8)
    W[1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="1 NaN/Inf"):
        quantize_affine(W, 4)
