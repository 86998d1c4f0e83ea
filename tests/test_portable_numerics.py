"""Portable numerics: library quantities whose last digits depend on float summation order (BLAS kernel, SIMD width,
so they differ between CPUs), tested for what IS portable about them, with tolerances derived from float32 rounding.

Another CPU sums in another order (MKL's AVX2 / AVX-512 / AMX kernels, oneDNN, ATen's vectorised loops). A float32
dot product of n terms is then only known to within γ_n·Σ|terms|, γ_n = n·u/(1 − n·u), u = 2⁻²⁴ (Higham, Accuracy
and Stability of Numerical Algorithms, §3.1), whatever the order. So each test computes the quantity again in
float64 (order-independent to ~1e-16 at these sizes) and checks the library's float32 value against that bound.
An argmin over a grid may legitimately flip between near-ties; the property that holds on every machine is that
the choice is optimal up to the bound. (The Hessian's symmetry is exact by construction: tests/test_gptq.py.)"""

import torch

from qlab.affine import fake_quantize
from qlab.awq import awq_scales, awq_search_scales

U = 2.0**-24  # unit roundoff of float32


def gamma(n: int) -> float:
    return n * U / (1 - n * U)


def _salient_problem(T=512, K=256, N=96, seed=0):
    """Inputs with a few large channels (what makes AWQ's α matter) and random weights; H = XᵀX/T in float32."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(T, K, generator=g)
    X[:, :6] *= 20
    W = torch.randn(N, K, generator=g) * 0.05
    return W, X.abs().mean(0), X.T @ X / T


def test_awq_alpha_search_is_optimal_up_to_summation_order():
    """The chosen α of `awq_search_scales` is a grid argmin: on a flat curve it can differ between CPUs (notebook
    04: 0.37 on one, 0.42 on another). What must hold everywhere: each error equals its float64 value within the
    float32 dot-product bound, and the chosen α's float64 error is within the two bounds of the true minimum.

    Bound: output_error = Σ (ΔW·H)∘ΔW, with ΔW·H a float32 matmul of length K (sums in float64 after it), so
    |err₃₂ − err₆₄| ≤ γ_K · Σ_nk |ΔW_nk| (|ΔW|·|H|)_nk  (the same ΔW and H values enter both, exact in float64).
    Then err₆₄[chosen] ≤ err₃₂[chosen] + tol[chosen] ≤ err₃₂[j] + tol[chosen] ≤ err₆₄[j] + tol[j] + tol[chosen]."""
    W, x_mean, H = _salient_problem()
    K = W.shape[1]
    res = awq_search_scales(W, x_mean, H, bits=3, group_size=64, alpha_grid=20)
    e64, tol = [], []
    for a in res.alphas.tolist():
        s = awq_scales(x_mean, a)
        D = (W - fake_quantize(W * s, 3, 64, False) / s).double()  # the candidate exactly as the search builds it
        e64.append(float(((D @ H.double()) * D).sum()))
        tol.append(gamma(K) * float(((D.abs() @ H.double().abs()) * D.abs()).sum()))
    e64, tol = torch.tensor(e64, dtype=torch.float64), torch.tensor(tol, dtype=torch.float64)
    assert ((res.errors - e64).abs() <= tol).all(), (res.errors - e64).abs() / tol
    chosen, true_best = int(res.errors.argmin()), int(e64.argmin())
    assert e64[chosen] <= e64[true_best] + tol[chosen] + tol[true_best]
    # not vacuous: the bound is far tighter than the gain the search is for, and the search does gain
    assert float(tol.max()) < 1e-3 * float(e64.min())
    assert float(e64.min()) < 0.8 * res.err_rtn and 0 < res.alpha < 1


def test_awq_alpha_search_agrees_when_the_statistics_are_summed_in_another_order():
    """"Another CPU" directly: H accumulated over the tokens in a different order (reversed chunks, as a different
    BLAS blocking would) differs from H in the last bits only: |ΔH_ij| ≤ γ_T·(|X|ᵀ|X|)_ij/T. The searched minimum
    error then moves by at most the dot-product bound of the test above plus γ_T·Σ|ΔW|(|X|ᵀ|X|/T)|ΔW| — checked
    here with both terms computed, and α may differ only if the two candidates are within that tolerance."""
    W, x_mean, H = _salient_problem(seed=1)
    T = 512
    g = torch.Generator().manual_seed(1)
    X = torch.randn(T, W.shape[1], generator=g)
    X[:, :6] *= 20
    assert torch.equal(X.abs().mean(0), x_mean)
    H2 = sum(c.T @ c for c in reversed(X.split(37))) / T
    absXX = (X.abs().T @ X.abs()).double() / T
    a = awq_search_scales(W, x_mean, H, bits=3, group_size=64, alpha_grid=20)
    b = awq_search_scales(W, x_mean, H2, bits=3, group_size=64, alpha_grid=20)
    K = W.shape[1]
    tol = []
    for al in a.alphas.tolist():
        s = awq_scales(x_mean, al)
        D = (W - fake_quantize(W * s, 3, 64, False) / s).double().abs()
        tol.append(2 * gamma(K) * float(((D @ H.double().abs()) * D).sum())
                   + 2 * gamma(T) * float(((D @ absXX) * D).sum()))
    tol = torch.tensor(tol, dtype=torch.float64)
    assert ((a.errors - b.errors).abs() <= tol).all()
    if a.alpha != b.alpha:  # a flip is allowed only between near-ties
        i, j = int(a.errors.argmin()), int(b.errors.argmin())
        assert abs(float(a.errors[i] - a.errors[j])) <= tol[i] + tol[j]


def test_awq_clip_search_is_optimal_per_group_up_to_summation_order():
    """`awq_search_clip` picks a range factor per (row, group) by argmin: a group near a tie may pick another factor
    on another CPU (notebook 04's "% of groups clipped"). Each candidate error e = eᵀ·H_gg·e is a float32 batched
    matmul of length gs followed by a float32 sum of gs terms, so |e₃₂ − e₆₄| ≤ γ_2gs · Σ|e|·|H_gg|·|e|. Every
    group's chosen factor must be optimal within its two bounds, and err_after (the sum of the chosen errors) must
    equal the float64 optimum within the summed bounds."""
    from qlab.awq import apply_clip, awq_search_clip

    W, _, H = _salient_problem(seed=2)
    N, K = W.shape
    gs, G = 64, K // 64
    cs = awq_search_clip(W, H, bits=3, group_size=gs)
    H64 = H.double().reshape(G, gs, G, gs)[torch.arange(G), :, torch.arange(G), :]  # [G, gs, gs]
    e64, tol = [], []
    for r in cs.shrinks.tolist():
        E = (W - fake_quantize(apply_clip(W, torch.full((N, G), r), gs), 3, gs, False)).double().reshape(N, G, gs)
        EH = torch.einsum("ngi,gij->ngj", E, H64)
        e64.append((EH * E).sum(-1))
        tol.append(gamma(2 * gs) * (torch.einsum("ngi,gij->ngj", E.abs(), H64.abs()) * E.abs()).sum(-1))
    e64, tol = torch.stack(e64), torch.stack(tol)  # [factors, N, G]
    chosen = (cs.shrinks[:, None, None] == cs.ratio[None]).double().argmax(0)  # index of each group's factor
    best = e64.argmin(0)
    pick = lambda t, i: t.gather(0, i[None])[0]  # noqa: E731
    assert (pick(e64, chosen) <= pick(e64, best) + pick(tol, chosen) + pick(tol, best)).all()
    assert abs(cs.err_after - float(pick(e64, best).sum())) <= float((pick(tol, chosen) + pick(tol, best)).sum())
    assert 0.0 < float((cs.ratio < 1).double().mean()) and cs.err_after < cs.err_before  # the search does clip
