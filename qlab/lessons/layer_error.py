"""Layer-output error: how much a quantized weight changes what a Linear computes on real activations.

    relative output error  e = ‖X Wᵀ − X Ŵᵀ‖²_F / ‖X Wᵀ‖²_F       (X: [tokens, in] calibration inputs)

This is the quantity GPTQ and AWQ minimise (GPTQ, Frantar et al. 2023, eq. 1). Unlike the weight MSE it weighs
each column's error by the energy of its input channel, so errors on outlier channels count most.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .. import stats
from ..affine import mse, quantize_affine, sqnr_db
from ..bits import storage_breakdown
from ..errors import BadArgumentError


def relative_output_error(W: torch.Tensor, W_hat: torch.Tensor, X: torch.Tensor) -> float:
    """‖X Wᵀ − X Ŵᵀ‖² / ‖X Wᵀ‖² on the inputs X [tokens, in] (qlab.stats.relative_output_error with H = XᵀX, in
    float64)."""
    if W.shape != W_hat.shape:
        raise BadArgumentError(f"W {tuple(W.shape)} and Ŵ {tuple(W_hat.shape)} must have the same shape")
    if X.dim() != 2 or X.shape[1] != W.shape[1]:
        raise BadArgumentError(f"X must be [tokens, {W.shape[1]}], got {tuple(X.shape)}")
    X = X.double()
    err = stats.relative_output_error(W.double(), W_hat.double(), X.T @ X)
    if math.isinf(err):
        raise BadArgumentError("X Wᵀ is all zeros: the relative output error is undefined")
    return err


@torch.no_grad()
def collect_inputs(model: nn.Module, ids: torch.Tensor, names: Iterable[str], max_tokens: int | None = None
                   ) -> dict[str, torch.Tensor]:
    """Inputs [tokens, in] of the named modules of model (full names as in model.named_modules()) over ids [n, T]."""
    mods = stats.modules_by_name(model, names)
    got: dict[str, list[torch.Tensor]] = {n: [] for n in mods}
    stats.forward_rows(model, ids, mods, lambda n, x: got[n].append(x.float().clone()))
    out = {n: torch.cat(v) for n, v in got.items()}
    return {n: (x[:max_tokens] if max_tokens else x) for n, x in out.items()}


@dataclass
class GranularityRow:
    granularity: str  # "tensor", "channel" or "group <g>"
    bits_per_weight: float
    weight_mse: float
    weight_sqnr_db: float
    output_error: float  # relative output error on X


def compare_granularities(
    W: torch.Tensor, X: torch.Tensor, bits: int = 4, symmetric: bool = True,
    group_sizes: Iterable[int | str] = ("tensor", "channel", 128, 64, 32), rounding: str = "nearest",
) -> list[GranularityRow]:
    """RTN of W per tensor, per channel and per group; weight error, output error on X and stored bits/weight.

    Group sizes that do not divide W's rows are skipped.
    """
    rows = []
    K = W.shape[1]
    for g in group_sizes:
        if isinstance(g, int) and K % g:
            continue
        qt = quantize_affine(W, bits, g, symmetric=symmetric, rounding=rounding)
        W_hat = qt.dequantize()
        label = g if isinstance(g, str) else ("channel" if g == K else f"group {g}")
        rows.append(GranularityRow(
            granularity=label, bits_per_weight=storage_breakdown(qt).bits_per_weight,
            weight_mse=mse(W, W_hat), weight_sqnr_db=sqnr_db(W, W_hat),
            output_error=relative_output_error(W, W_hat, X),
        ))
    return rows
