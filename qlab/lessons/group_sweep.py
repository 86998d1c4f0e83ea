"""Group-size sweep on a whole model: perplexity (and KL to the float model) against stored bits per weight.

Smaller groups follow the local range of the weights more closely (lower error) but store one scale (and zero)
per g weights: bits/weight = b + (16 + z)/g. The sweep quantizes every decoder Linear with RTN at each group
size, evaluates, and restores the float weights before the next point.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..bits import model_bits_per_weight
from ..errors import BadArgumentError
from ..eval import Evaluator
from ..pipeline import quantize_model
from ..rtn import RTNQuantizer
from ..walk import decoder_blocks, linear_layers


@dataclass
class SweepRow:
    group_size: int | str  # "float" for the unquantized reference
    bits_per_weight: float
    perplexity: float
    kl: float
    top1: float


def row_lengths(model: nn.Module) -> list[int]:
    """Distinct input widths (row lengths K) of the decoder Linears."""
    return sorted({lin.in_features for b in decoder_blocks(model) for lin in linear_layers(b).values()})


def common_group_sizes(model: nn.Module, min_size: int = 8) -> list[int]:
    """Group sizes ≥ min_size that divide every decoder Linear's row: the divisors of the gcd of the row lengths."""
    ks = row_lengths(model)
    return [g for g in range(min_size, min(ks) + 1) if all(k % g == 0 for k in ks)]


@torch.no_grad()
def group_size_sweep(
    model: nn.Module, tokens: torch.Tensor, group_sizes: Iterable[int | str], bits: int = 3, symmetric: bool = True,
    ctx: int = 512, progress: bool = True,
) -> list[SweepRow]:
    """RTN-quantize model's decoder Linears at each group size, evaluate on tokens, restore the float weights.

    group_sizes: ints dividing every row, or "channel" (one scale per row, whatever its length).
    The first row is the float model itself (bits_per_weight = 32 for float32 weights).
    """
    group_sizes = list(group_sizes)
    ks = row_lengths(model)
    bad = [g for g in group_sizes if g != "channel" and (not isinstance(g, int) or g <= 0 or any(k % g for k in ks))]
    if bad:
        raise BadArgumentError(f"group size(s) {bad} do not divide every row length {ks}; "
                               f"use one of {common_group_sizes(model)}")
    lins = [lin for b in decoder_blocks(model) for lin in linear_layers(b).values()]
    originals = {id(lin): lin.weight.detach().clone() for lin in lins}
    evaluator = Evaluator(model, tokens, ctx=ctx, progress=False)
    dtype_bits = lins[0].weight.element_size() * 8
    rows = [SweepRow("float", float(dtype_bits), evaluator.reference.perplexity, 0.0, 1.0)]
    try:
        for g in tqdm(group_sizes, desc="group sizes", disable=not progress):
            res = quantize_model(model, None, RTNQuantizer(bits, g, symmetric), progress=False)
            ev = evaluator.evaluate(model)
            rows.append(SweepRow(g, model_bits_per_weight(res.qtensors), ev.perplexity, ev.kl, ev.top1))
            for lin in lins:
                lin.weight.copy_(originals[id(lin)])
    finally:
        for lin in lins:
            lin.weight.copy_(originals[id(lin)])
    return rows


def sweet_spot(rows: list[SweepRow], tolerance: float = 0.05) -> SweepRow:
    """The cheapest (fewest bits/weight) quantized row whose perplexity is within (1 + tolerance)× the best
    quantized row's — the knee of the trade-off curve under that rule."""
    q = [r for r in rows if r.group_size != "float"]
    if not q:
        raise BadArgumentError("no quantized rows in the sweep")
    best = min(r.perplexity for r in q)
    ok = [r for r in q if r.perplexity <= (1 + tolerance) * best]
    return min(ok, key=lambda r: r.bits_per_weight)
