"""Statistics of the rounding step: bias and variance of round-to-nearest vs stochastic rounding, and the
quantization-noise law MSE ≈ Δ²/12 (≈ 6 dB per extra bit) measured against bits.

With t = x/s + z (the value in code units) and f = t − ⌊t⌋ its fractional part:
    round-to-nearest   q = round(t)            error (q − t)·s is deterministic: bias = that error, variance 0
    stochastic         q = ⌊t + u⌋, u ~ U[0,1)  E[q] = t (unbiased), Var[q]·s² = f(1 − f)·s²
If f is uniform over [0, 1): RTN gives MSE = s²/12, stochastic rounding s²/6 (twice as large, but unbiased).

The law MSE ≈ Δ²/12 assumes the error is uniform over one step Δ = s; it breaks when values are clipped
(error grows beyond Δ/2), when the step is so coarse that most values fall in one bin, and when the values
already sit on a grid (error 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..affine import check_bits, check_finite, resolve_group_size, round_codes, scale_zero
from ..errors import BadArgumentError


@dataclass
class RoundingStats:
    """Per-element bias and variance of the dequantized value over `n_draws` seeded draws (in units of x)."""

    x: torch.Tensor
    step: torch.Tensor  # s of each element
    bias_nearest: torch.Tensor  # E[x̂] − x
    var_nearest: torch.Tensor
    bias_stochastic: torch.Tensor
    var_stochastic: torch.Tensor
    n_draws: int

    def summary(self) -> dict[str, float]:
        """Mean bias, mean |bias|, mean variance and MSE (= bias² + variance, averaged) of each rounding."""
        out = {}
        for name in ("nearest", "stochastic"):
            b, v = getattr(self, f"bias_{name}").double(), getattr(self, f"var_{name}").double()
            out[f"{name}_mean_bias"] = float(b.mean())
            out[f"{name}_mean_abs_bias"] = float(b.abs().mean())
            out[f"{name}_mean_var"] = float(v.mean())
            out[f"{name}_mse"] = float((b**2 + v).mean())
        return out


def rounding_bias_variance(
    x: torch.Tensor, bits: int = 4, symmetric: bool = True, n_draws: int = 1000, seed: int = 0,
    scale: float | None = None,
) -> RoundingStats:
    """Quantize x (1-D, one group) n_draws times with RTN and with stochastic rounding; bias and variance of x̂.

    scale: a fixed step s (then z = 2^(b−1) for symmetric, 0 otherwise) instead of the step fitted to x's range.
    Stochastic draws are vectorised: x̂_d = (⌊x/s + z + u_d⌋ − z)·s with u_d ~ U[0,1) from a seeded generator.
    """
    check_bits(bits)
    if n_draws < 2:
        raise BadArgumentError(f"n_draws must be at least 2 to estimate a variance, got {n_draws}")
    x = x.detach().to(torch.float64).reshape(-1)
    check_finite(x, "input")
    if scale is None:
        s, z = scale_zero(x[None], bits, symmetric)
        s, z = s[0], z[0]
    else:
        if not scale > 0:
            raise BadArgumentError(f"scale must be positive, got {scale}")
        s = torch.tensor(float(scale), dtype=torch.float64)
        z = torch.tensor(float(2 ** (bits - 1) if symmetric else 0), dtype=torch.float64)
    q_rtn = round_codes(x, s, z, bits, "nearest")
    xh_rtn = (q_rtn - z) * s
    gen = torch.Generator().manual_seed(seed)
    q_sr = round_codes(x.expand(n_draws, -1), s, z, bits, "stochastic", gen)  # [n_draws, n]
    xh_sr = (q_sr - z) * s
    return RoundingStats(
        x=x, step=s.expand_as(x), bias_nearest=xh_rtn - x, var_nearest=torch.zeros_like(x),
        bias_stochastic=xh_sr.mean(0) - x, var_stochastic=xh_sr.var(0, unbiased=True), n_draws=n_draws,
    )


def fake_quantize_clipped(
    W: torch.Tensor, bits: int, group_size: int | str | None = "channel", symmetric: bool = True,
    zero_point: str = "integer", clip: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RTN with the range shrunk by `clip` (s ← clip·s, z kept): returns (Ŵ, step of each element).

    clip = 1 is `quantize_affine`; clip < 1 gives a finer step Δ but saturates the values outside the range.
    """
    check_bits(bits)
    if not 0 < clip <= 1:
        raise BadArgumentError(f"clip must be in (0, 1], got {clip}")
    W = W.detach().to(torch.float64)
    if W.dim() == 1:
        W = W[None]
    check_finite(W)
    N, K = W.shape
    gs, granularity = resolve_group_size(group_size, K)
    Wg = W.reshape(N, K // gs, gs)
    if granularity == "tensor":
        s, z = scale_zero(W.reshape(1, 1, -1), bits, symmetric, zero_point)
        s, z = s.expand(N, 1), z.expand(N, 1)
    else:
        s, z = scale_zero(Wg, bits, symmetric, zero_point)
    s = s * clip
    q = round_codes(Wg, s[..., None], z[..., None], bits)
    W_hat = ((q - z[..., None]) * s[..., None]).reshape(N, K)
    step = s[..., None].expand(N, K // gs, gs).reshape(N, K)
    return W_hat, step


@dataclass
class LawRow:
    bits: int
    mse: float  # measured mean (w − ŵ)²
    predicted: float  # mean over elements of Δ²/12, Δ the element's step
    sqnr_db: float  # 10·log10(Σw² / Σ(w − ŵ)²)

    @property
    def ratio(self) -> float:
        """measured / predicted (1 when the Δ²/12 law holds)."""
        return self.mse / self.predicted if self.predicted > 0 else math.nan


def mse_law(
    W: torch.Tensor, bits: Iterable[int] = range(2, 9), group_size: int | str | None = "channel",
    symmetric: bool = True, zero_point: str = "integer", clip: float = 1.0,
) -> list[LawRow]:
    """Measured RTN MSE against the uniform-noise prediction Δ²/12 for each bit width."""
    W = W.detach().to(torch.float64)
    signal = float((W**2).sum())
    rows = []
    for b in bits:
        W_hat, step = fake_quantize_clipped(W, b, group_size, symmetric, zero_point, clip)
        err = (W.reshape(W_hat.shape) - W_hat) ** 2
        noise = float(err.sum())
        rows.append(LawRow(
            bits=b, mse=float(err.mean()), predicted=float((step**2).mean() / 12),
            sqnr_db=math.inf if noise == 0 else 10 * math.log10(signal / noise),
        ))
    return rows


def db_per_bit(rows: list[LawRow]) -> list[float]:
    """10·log10(MSE_b / MSE_(b+1)) between consecutive rows (the ideal is 20·log10 2 ≈ 6.02 dB); inf if exact."""
    out = []
    for a, b in zip(rows, rows[1:]):
        if b.bits != a.bits + 1:
            raise BadArgumentError("db_per_bit needs rows for consecutive bit widths")
        if b.mse == 0:
            out.append(math.inf)
        elif a.mse == 0:
            out.append(-math.inf)
        else:
            out.append(10 * math.log10(a.mse / b.mse))
    return out


def ideal_db_per_bit(bits: int, symmetric: bool) -> float:
    """dB gained going from `bits` to bits+1 when the range is fixed and MSE = Δ²/12:
    20·log10(L_(b+1)/L_b) with L_b = 2^b − 1 steps (asymmetric) or 2^(b−1) − 1 (symmetric)."""
    steps = (lambda b: 2 ** (b - 1) - 1) if symmetric else (lambda b: 2**b - 1)
    return 20 * math.log10(steps(bits + 1) / steps(bits))


DISTRIBUTIONS = ("uniform", "gaussian", "laplace", "gaussian+outliers")


def sample_distribution(kind: str = "gaussian", n: int = 4096, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    """n seeded samples for demonstrations: uniform on [−scale, scale], gaussian / laplace with std `scale`,
    or gaussian with 1 % of the values multiplied by 10 (a heavy tail of outliers)."""
    if kind not in DISTRIBUTIONS:
        raise BadArgumentError(f"distribution must be one of {DISTRIBUTIONS}, got {kind!r}")
    if n < 1 or not scale > 0:
        raise BadArgumentError(f"need n ≥ 1 and scale > 0, got n={n}, scale={scale}")
    g = torch.Generator().manual_seed(seed)
    if kind == "uniform":
        return (torch.rand(n, generator=g) * 2 - 1) * scale
    if kind == "laplace":
        u = torch.rand(n, generator=g) - 0.5  # inverse CDF; std of Laplace(b) is b·sqrt(2)
        return -scale / math.sqrt(2) * torch.sign(u) * torch.log1p(-2 * u.abs()).clamp(min=-50)
    x = torch.randn(n, generator=g) * scale
    if kind == "gaussian+outliers":
        idx = torch.randperm(n, generator=g)[: max(1, n // 100)]
        x[idx] *= 10
    return x
