"""Issue 24's instruments against closed forms: GPTQ's Hessian shrinkage (γ = 1 is plain rounding on GPTQ's grid),
the generalised spectrum of two texts' Hessians (scipy's generalised eigensolver, and μ = a/(a + λ) when the two
Hessians are equal), per-text output errors (explicit inputs X), and the --shrink flag."""

import pytest
import scipy.linalg
import torch

from qlab.errors import BadArgumentError
from qlab.gptq import GPTQQuantizer, gptq_grid, gptq_quantize_layer, shrink_to_diagonal
from qlab.lessons.calibration_transfer import amplification, generalised_spectrum, transfer_errors


def correlated(K: int = 128, T: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs X [T, K] with strongly correlated channels and its Hessian 2XᵀX/T (float64)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(T, 16, generator=g, dtype=torch.float64) @ torch.randn(16, K, generator=g, dtype=torch.float64)
    X += 0.1 * torch.randn(T, K, generator=g, dtype=torch.float64)
    return X, 2 * X.T @ X / T


def test_full_shrink_is_plain_rounding_on_gptq_grid():
    """γ = 1 leaves H diagonal: no column compensates another, so every code is round(w/s) + z on the grid of the
    untouched weights (the oracle computes it group by group, no GPTQ code involved beyond gptq_grid). With
    act-order a group is 32 consecutive columns of the sweep order (descending diag H), not of W."""
    _, H = correlated()
    W = torch.randn(24, 128, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for act_order in (False, True):
        qt, _ = gptq_quantize_layer(W, H, bits=3, group_size=32, symmetric=False, act_order=act_order, shrink=1.0)
        order = torch.argsort(torch.diag(H), descending=True, stable=True) if act_order else torch.arange(128)
        for g in range(4):
            cols = order[32 * g:32 * (g + 1)]
            s, z = gptq_grid(W[:, cols], 3, False)
            codes = torch.clamp(torch.round(W[:, cols] / s[:, None]) + z[:, None], 0, 7)
            assert torch.equal(qt.codes[:, cols].to(torch.float64), codes), (act_order, g)
        plain, _ = gptq_quantize_layer(W, H, bits=3, group_size=32, symmetric=False, act_order=act_order)
        assert not torch.equal(plain.codes, qt.codes)  # without shrinkage GPTQ does compensate


def test_partial_shrink_is_the_stated_convex_combination():
    _, H = correlated(seed=2)
    W = torch.randn(16, 128, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    by_hand = 0.7 * H  # off the diagonal: (1 − γ)·H; on it: H's own entries
    by_hand.diagonal().copy_(H.diagonal())
    a, _ = gptq_quantize_layer(W, H, bits=4, group_size=64, shrink=0.3)
    b, _ = gptq_quantize_layer(W, by_hand, bits=4, group_size=64)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales)
    assert torch.equal(torch.diag(shrink_to_diagonal(H, 0.3)), torch.diag(H))
    for bad in (-0.1, 1.5):
        with pytest.raises(BadArgumentError, match=r"shrink must be in \[0, 1\]"):
            GPTQQuantizer(shrink=bad)


def test_shrink_flag_reaches_the_quantizer_and_its_settings():
    from qlab.cli import build_parser, make_quantizer

    q = make_quantizer(build_parser().parse_args(["quantize", "--method", "gptq", "--shrink", "0.25"]))
    assert q.shrink == 0.25 and q.config["shrink"] == 0.25 and "shrink 0.25" in q.describe()
    with pytest.raises(BadArgumentError, match=r"--shrink.*\[0, 1\]"):
        build_parser().parse_args(["quantize", "--method", "gptq", "--shrink", "2"])


def test_generalised_spectrum_against_scipy_and_closed_form():
    _, A = correlated(K=64, seed=4)
    _, B = correlated(K=64, seed=5)
    damp = 0.01
    mu = generalised_spectrum(A, B, damp)
    An = A / torch.diag(A).mean()
    Bn = B / torch.diag(B).mean()
    ref = scipy.linalg.eigh(Bn.numpy(), (An + damp * torch.eye(64, dtype=torch.float64)).numpy(), eigvals_only=True)
    torch.testing.assert_close(mu, torch.from_numpy(ref), rtol=1e-9, atol=1e-12)
    # the same text twice: μ_i = a_i / (a_i + λ) with a_i the eigenvalues of the normalised H
    a = torch.linalg.eigvalsh(An)
    torch.testing.assert_close(generalised_spectrum(A, 3.0 * A, damp), a / (a + damp), rtol=1e-9, atol=1e-12)
    with pytest.raises(BadArgumentError, match="square Hessians"):
        generalised_spectrum(A, B[:10, :10])


def test_transfer_errors_equal_explicit_output_errors():
    X1, H1 = correlated(K=64, seed=6)
    X2, H2 = correlated(K=64, seed=7)
    g = torch.Generator().manual_seed(8)
    W = torch.randn(8, 64, generator=g, dtype=torch.float64)
    Wq = W + 0.05 * torch.randn(8, 64, generator=g, dtype=torch.float64)
    Wr = W + 0.05 * torch.randn(8, 64, generator=g, dtype=torch.float64)
    e = transfer_errors(W, {"gptq": Wq, "rtn": Wr}, {"cal": H1, "other": H2})
    for name, What in (("gptq", Wq), ("rtn", Wr)):
        for text, X in (("cal", X1), ("other", X2)):
            explicit = float(((X @ (W - What).T) ** 2).sum() / ((X @ W.T) ** 2).sum())
            assert e[name][text] == pytest.approx(explicit, rel=1e-10)
    amp = amplification(e, "gptq", "rtn", "cal", "other")
    assert amp == pytest.approx((e["gptq"]["other"] / e["gptq"]["cal"]) / (e["rtn"]["other"] / e["rtn"]["cal"]))
