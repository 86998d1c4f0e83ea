"""Rounding statistics against closed forms: RTN error = nearest grid point, stochastic rounding unbiased with
variance f(1−f)s², uniform data MSE = Δ²/12 and 20·log10(L_(b+1)/L_b) dB per bit."""

import math

import pytest
import torch

from qlab.affine import quantize_affine
from qlab.errors import BadArgumentError
from qlab.lessons.rounding_stats import (
    db_per_bit,
    fake_quantize_clipped,
    ideal_db_per_bit,
    mse_law,
    rounding_bias_variance,
)


def _naive_nearest(x, s, z, bits):
    """Closest point of the grid {(q − z)·s : q = 0..2^b−1}, by exhaustive search."""
    grid = (torch.arange(2**bits, dtype=torch.float64) - z) * s
    return grid[(x[:, None] - grid[None]).abs().argmin(1)]


def test_rtn_bias_is_distance_to_nearest_grid_point():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, generator=g, dtype=torch.float64)
    st = rounding_bias_variance(x, bits=3, symmetric=True, n_draws=4)
    s = float(x.abs().max()) / 3
    torch.testing.assert_close(st.bias_nearest, _naive_nearest(x, s, 4, 3) - x, rtol=0, atol=1e-12)
    assert float(st.var_nearest.abs().max()) == 0.0
    assert torch.all(st.bias_nearest.abs() <= s / 2 + 1e-12)


def test_stochastic_rounding_unbiased_with_bernoulli_variance():
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(200, generator=g, dtype=torch.float64) * 2 - 1) * 6.5  # inside the grid: no clamping
    n = 4000
    st = rounding_bias_variance(x, bits=4, symmetric=True, n_draws=n, seed=3, scale=1.0)
    f = x - torch.floor(x)
    var_true = f * (1 - f)  # s = 1: x̂ ∈ {⌊x⌋, ⌊x⌋+1} with P(up) = f
    # each per-element mean lies within 5 standard errors of x (unbiased)
    se = torch.sqrt(var_true / n) + 1e-12
    assert torch.all(st.bias_stochastic.abs() <= 5 * se + 1e-12)
    # sample variance of a Bernoulli: relative std ≈ sqrt(2/n) for moderate f; allow 6 sigma on the mean
    summ = st.summary()
    assert summ["stochastic_mean_var"] == pytest.approx(float(var_true.mean()), rel=6 * math.sqrt(2 / n))
    assert abs(summ["stochastic_mean_bias"]) < 5 * math.sqrt(float(var_true.mean()) / (n * len(x)))
    # RTN on the same points: the bias is round(x) − x, MSE = mean of its square
    torch.testing.assert_close(st.bias_nearest, torch.round(x) - x)


def test_uniform_fractions_give_sixth_vs_twelfth():
    x = (torch.arange(10000, dtype=torch.float64) + 0.5) / 10000 * 6 - 3  # fractions uniform over [0, 1)
    st = rounding_bias_variance(x, bits=4, symmetric=True, n_draws=200, seed=0, scale=1.0).summary()
    assert st["nearest_mse"] == pytest.approx(1 / 12, rel=1e-3)
    assert st["stochastic_mse"] == pytest.approx(1 / 6, rel=0.02)


@pytest.mark.parametrize("symmetric,zero_point", [(True, "integer"), (False, "float")])
def test_uniform_data_mse_is_delta_squared_over_twelve(symmetric, zero_point):
    n = 1 << 18
    g = torch.Generator().manual_seed(4)
    x = torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1
    x[0], x[1] = -1.0, 1.0  # the range is exactly [−1, 1]: the grid covers it, no clipping
    rows = mse_law(x[None], range(2, 9), "tensor", symmetric=symmetric, zero_point=zero_point)
    for r in rows:
        steps = 2 ** (r.bits - 1) - 1 if symmetric else 2**r.bits - 1
        delta = 2 / (2 * steps) if symmetric else 2 / steps
        assert r.predicted == pytest.approx(delta**2 / 12, rel=1e-9)
        # e ~ U[−Δ/2, Δ/2]: Var(e²) = Δ⁴/180, so the mean of n squares has std Δ²/sqrt(180 n)
        assert abs(r.mse - delta**2 / 12) < 5 * delta**2 / math.sqrt(180 * n)
    for b, d in zip(range(2, 8), db_per_bit(rows)):
        assert d == pytest.approx(ideal_db_per_bit(b, symmetric), abs=0.05)


def test_ideal_db_per_bit_tends_to_six():
    assert ideal_db_per_bit(16, True) == pytest.approx(20 * math.log10(2), abs=1e-3)
    assert ideal_db_per_bit(2, True) == pytest.approx(20 * math.log10(3))  # 1 step → 3 steps


def test_clip_one_matches_quantize_affine():
    W = torch.randn(16, 64, generator=torch.Generator().manual_seed(5))
    for sym in (True, False):
        W_hat, step = fake_quantize_clipped(W, 3, 32, symmetric=sym)
        qt = quantize_affine(W, 3, 32, symmetric=sym)
        torch.testing.assert_close(W_hat.float(), qt.dequantize(), rtol=0, atol=1e-6)
        torch.testing.assert_close(step.float(), qt.scales[:, qt.g_idx.long()])


def test_clipping_breaks_the_law_but_helps_gaussian_low_bits():
    g = torch.Generator().manual_seed(6)
    u = torch.rand(1, 1 << 16, generator=g, dtype=torch.float64) * 2 - 1
    # uniform data: any clipping only adds saturation error, the measured MSE exceeds Δ²/12
    r = mse_law(u, [4], "tensor", clip=0.7)[0]
    assert r.ratio > 1.5
    # Gaussian data at 3 bits: max|x| ≈ 4.4σ wastes the outer levels; a tighter range lowers the MSE
    x = torch.randn(1, 1 << 16, generator=g, dtype=torch.float64)
    full = mse_law(x, [3], "tensor")[0].mse
    best = min(mse_law(x, [3], "tensor", clip=c)[0].mse for c in (0.4, 0.5, 0.6, 0.7))
    assert best < 0.6 * full


def test_values_on_the_grid_quantize_exactly():
    q = torch.randint(0, 16, (8, 64), generator=torch.Generator().manual_seed(7)).double()
    q[:, 0], q[:, 1] = 0, 15  # every row spans the whole 4-bit range
    W = (q - 3.0) * 0.01  # on a grid of step 0.01 with min −0.03 (float zero-point)
    rows = mse_law(W, [4, 5], "channel", symmetric=False, zero_point="float")
    assert rows[0].mse < 1e-30 and rows[1].mse > 1e-7
    assert db_per_bit(rows) == [-math.inf]


def test_bad_arguments():
    with pytest.raises(BadArgumentError):
        rounding_bias_variance(torch.randn(8), n_draws=1)
    with pytest.raises(BadArgumentError):
        rounding_bias_variance(torch.randn(8), scale=0.0)
    with pytest.raises(BadArgumentError):
        fake_quantize_clipped(torch.randn(2, 8), 4, clip=1.5)
    with pytest.raises(BadArgumentError):
        db_per_bit(mse_law(torch.randn(2, 8), [2, 4]))


def test_sample_distribution_moments():
    from qlab.lessons.rounding_stats import sample_distribution

    n = 1 << 16
    u = sample_distribution("uniform", n, 2.0, seed=1)
    assert float(u.abs().max()) <= 2.0 and float(u.var()) == pytest.approx(4 / 3, rel=0.03)
    assert float(sample_distribution("gaussian", n, 0.5).std()) == pytest.approx(0.5, rel=0.02)
    lap = sample_distribution("laplace", n, 1.0)
    assert float(lap.std()) == pytest.approx(1.0, rel=0.05)
    assert float(lap.abs().mean()) == pytest.approx(1 / math.sqrt(2), rel=0.03)  # E|x| = b = σ/√2
    out = sample_distribution("gaussian+outliers", 1000, 1.0, seed=2)
    assert int((out.abs() > 6).sum()) >= 1
    assert torch.equal(sample_distribution("laplace", 10, seed=3), sample_distribution("laplace", 10, seed=3))
    with pytest.raises(BadArgumentError):
        sample_distribution("cauchy")
