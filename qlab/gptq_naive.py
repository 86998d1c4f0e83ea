"""GPTQ the slow, readable way: one column at a time, explicit OBS updates — the oracle for `qlab.gptq`.

Optimal Brain Surgeon / Optimal Brain Quantization (Frantar et al. 2022, GPTQ §3, eq. 2–3): for one row w of a
Linear layer and the layer Hessian H = 2XXᵀ/n of its inputs, quantizing weight q to quant(w_q) is best
compensated by moving the not-yet-quantized weights F by

    δ_F = −(w_q − quant(w_q)) / [H_F⁻¹]_qq · (H_F⁻¹)_{:,q}

and the inverse Hessian of the remaining weights is H⁻¹ with row and column q eliminated (Gaussian elimination):

    H_{−q}⁻¹ = H⁻¹ − H⁻¹_{:,q} H⁻¹_{q,:} / [H⁻¹]_qq

GPTQ quantizes every row in the same column order, so one H⁻¹ serves all rows at once. This module does exactly
that, with a plain matrix inverse, no blocking and no Cholesky trick. Group scales are taken from the current
(already error-compensated) weights when the sweep reaches a group's first column, as in `qlab.gptq`.
"""

from __future__ import annotations

import torch

from .affine import round_codes
from .gptq import gptq_grid, single_thread  # the grid (affine scale/zero, fp16 scale): shared, not under test


def gptq_naive(
    W: torch.Tensor,
    H: torch.Tensor,
    bits: int = 4,
    group_size: int | None = None,
    symmetric: bool = True,
    damp: float = 0.01,
    act_order: bool = False,
    static_groups: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize W [N, K] column by column with OBS updates. Returns (Q, codes, scales, zeros, g_idx):
    Q the quantized weights in W's dtype, codes [N, K], scales/zeros [N, G], g_idx [K] (group of each column)."""
    W = W.clone()
    H = H.clone()
    N, K = W.shape
    gs = K if group_size is None else group_size
    G = K // gs

    dead = torch.diag(H) == 0  # inputs that were always zero: any weight there is free, nothing to compensate
    H[dead, dead] = 1
    order = list(range(K))
    if act_order:  # heaviest inputs (largest diag H) first, ties in index order
        order = torch.argsort(torch.diag(H), descending=True, stable=True).tolist()
    H += damp * torch.mean(torch.diag(H)) * torch.eye(K, dtype=H.dtype)
    Hinv = torch.linalg.inv(H)

    scales = torch.zeros(N, G, dtype=W.dtype)
    zeros = torch.zeros(N, G, dtype=W.dtype)
    g_idx = torch.zeros(K, dtype=torch.int32)
    if group_size is None or static_groups:  # scales from the original weights, groups in column order
        for g in range(G):
            scales[:, g], zeros[:, g] = gptq_grid(W[:, g * gs:(g + 1) * gs], bits, symmetric)
        g_idx = torch.arange(K, dtype=torch.int32) // gs

    Q = torch.zeros_like(W)
    codes = torch.zeros(N, K, dtype=torch.uint8)
    with single_thread():  # thousands of small ops: one thread is faster
        dynamic = group_size is not None and not static_groups
        _sweep(W, Hinv, Q, codes, scales, zeros, g_idx, order, bits, symmetric, gs, dynamic)
    return Q, codes, scales, zeros, g_idx


def _sweep(W, Hinv, Q, codes, scales, zeros, g_idx, order, bits, symmetric, gs, dynamic_groups):
    """The OBS loop proper (updates W, Hinv, Q, codes, scales, zeros, g_idx in place)."""
    order_t = torch.tensor(order)
    for t, q in enumerate(order):
        if dynamic_groups and t % gs == 0:
            cols = order[t:t + gs]  # the next gs columns of the sweep form one group
            g = t // gs
            scales[:, g], zeros[:, g] = gptq_grid(W[:, cols], bits, symmetric)
            g_idx[cols] = g
        g = int(g_idx[q])
        c = round_codes(W[:, q], scales[:, g], zeros[:, g], bits)
        codes[:, q] = c.to(torch.uint8)
        Q[:, q] = (c - zeros[:, g]) * scales[:, g]

        err = (W[:, q] - Q[:, q]) / Hinv[q, q]
        rest = order_t[t + 1:]
        W[:, rest] -= err[:, None] * Hinv[q, rest][None, :]  # OBS compensation of the remaining weights
        W[:, q] = Q[:, q]
        Hinv -= torch.outer(Hinv[:, q], Hinv[q, :] / Hinv[q, q])  # eliminate q from the inverse


def obs_compensate(w: torch.Tensor, H: torch.Tensor, q: int, value: float) -> tuple[torch.Tensor, float]:
    """One OBS step on a single weight vector w [K]: fix w_q to `value`, move the other weights optimally.
    Returns (the new w, the increase of the quadratic loss ½·δᵀHδ), i.e. GPTQ eq. (3):
        δ = −(w_q − value) / [H⁻¹]_qq · H⁻¹_{:,q},   ΔL = ½ (w_q − value)² / [H⁻¹]_qq."""
    Hinv = torch.linalg.inv(H.double())
    e = (float(w[q]) - value) / float(Hinv[q, q])
    new = w.double() - e * Hinv[:, q]
    new[q] = value  # exact, not up to rounding
    return new.to(w.dtype), 0.5 * e * e * float(Hinv[q, q])
