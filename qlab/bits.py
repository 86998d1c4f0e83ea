"""Bits per weight of a whole model, and the overhead of each grouping: built on qlab's one accountant,
`qlab.qtensor.storage_breakdown` (which `QuantizedTensor.storage_bits`, `qlab quantize`, `qlab compare` and the
notebooks all count through).

For b-bit codes and one fp16 scale (+ one zero-point of z bits) per group of g weights:
    bits/weight = b + (16 + z)/g        e.g. g = 128: fp16 scale + 4-bit zero → +0.156, fp16 + fp16 → +0.25.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from .affine import quantize_affine
from .errors import BadArgumentError
from .qtensor import QuantizedTensor, Storage, storage_breakdown  # noqa: F401  (re-exported)


def model_bits_per_weight(qtensors: Mapping[str, QuantizedTensor]) -> float:
    """Σ storage bits / Σ weights over all quantized tensors of a model."""
    if not qtensors:
        raise BadArgumentError("no quantized tensors to account for")
    total = [storage_breakdown(q) for q in qtensors.values()]
    return sum(s.total_bits for s in total) / sum(s.weights for s in total)


@dataclass
class OverheadRow:
    group_size: int
    zero: str  # "none" (symmetric), "int" (b-bit integer zero), "fp16"
    bits_per_weight: float
    overhead: float


def overhead_table(
    W: torch.Tensor, bits: int = 4, group_sizes: Iterable[int | str] = (32, 64, 128, 256),
    zeros: Iterable[str] = ("none", "int", "fp16"),
) -> list[OverheadRow]:
    """Quantize W at each group size and zero-point storage, and measure bits/weight from the stored buffers."""
    rows = []
    for g in group_sizes:
        for zkind in zeros:
            if zkind == "none":
                qt = quantize_affine(W, bits, g, symmetric=True)
            elif zkind == "int":
                qt = quantize_affine(W, bits, g, symmetric=False, zero_point="integer")
            elif zkind == "fp16":
                qt = quantize_affine(W, bits, g, symmetric=False, zero_point="float")
            else:
                raise BadArgumentError(f"zero storage must be 'none', 'int' or 'fp16', got {zkind!r}")
            st = storage_breakdown(qt)
            rows.append(OverheadRow(group_size=qt.group_size, zero=zkind, bits_per_weight=st.bits_per_weight,
                                    overhead=st.overhead_per_weight))
    return rows
