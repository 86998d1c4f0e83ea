"""Bits-per-weight accounting, measured from the buffers a checkpoint would actually store.

For b-bit codes and one fp16 scale (+ one zero-point of z bits) per group of g weights:
    bits/weight = b + (16 + z)/g        e.g. g = 128: fp16 scale + 4-bit zero → +0.156, fp16 + fp16 → +0.25.
`storage_breakdown` does not use that formula: it packs the codes (and integer zeros) into int32 words with
`qlab.packing.pack_rows`, casts scales (and float zeros) to fp16, and counts the bytes of those tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from .affine import quantize_affine
from .errors import BadArgumentError
from .packing import pack_rows
from .qtensor import QuantizedTensor


@dataclass
class Storage:
    weights: int  # N·K
    code_bits: int
    scale_bits: int
    zero_bits: int
    gidx_bits: int

    @property
    def total_bits(self) -> int:
        return self.code_bits + self.scale_bits + self.zero_bits + self.gidx_bits

    @property
    def bits_per_weight(self) -> float:
        return self.total_bits / self.weights

    @property
    def overhead_per_weight(self) -> float:
        """Bits per weight spent on scales, zeros and g_idx (everything but the codes)."""
        return (self.total_bits - self.code_bits) / self.weights


def _nbits(t: torch.Tensor) -> int:
    return t.numel() * t.element_size() * 8


def _packed_bits(values: torch.Tensor, bits: int) -> int:
    """Bits of `values` (integers in [0, 2^bits)) packed along axis 0 with `pack_rows`, padded to whole words."""
    flat = values.reshape(-1).to(torch.int64)
    per_word = 32 // math.gcd(32, bits)  # codes that fill whole words
    pad = (-flat.numel()) % per_word
    if pad:
        flat = torch.cat([flat, torch.zeros(pad, dtype=torch.int64)])
    # [per_word, n/per_word]: pack_rows loops over rows, so few rows keep it fast; the bit count is the same
    return _nbits(pack_rows(flat.reshape(per_word, -1), bits))


def storage_breakdown(qt: QuantizedTensor) -> Storage:
    """Bits of the buffers storing qt: packed codes, fp16 scales, zeros (packed b-bit if integer, else fp16)."""
    N, K = qt.shape
    if qt.granularity == "tensor":
        scales, zeros = qt.scales[:1, :1], qt.zeros[:1, :1]
    else:
        scales, zeros = qt.scales, qt.zeros
    code_bits = _packed_bits(qt.codes, qt.bits)
    scale_bits = _nbits(scales.to(torch.float16)) if qt.scale_bits == 16 else scales.numel() * qt.scale_bits
    if qt.symmetric:
        zero_bits = 0
    elif qt.zero_bits is None or qt.zero_bits == qt.bits:
        if not torch.equal(zeros, zeros.round()) or int(zeros.min()) < 0 or int(zeros.max()) >= 2**qt.bits:
            raise BadArgumentError(f"zero-points are not integers in [0, {2**qt.bits - 1}]: store them as float")
        zero_bits = _packed_bits(zeros.round().to(torch.int64), qt.bits)
    elif qt.zero_bits == 16:
        zero_bits = _nbits(zeros.to(torch.float16))
    else:
        zero_bits = zeros.numel() * qt.zero_bits
    default = torch.arange(K, dtype=torch.int32) // qt.group_size
    gidx_bits = 0 if torch.equal(qt.g_idx.to(torch.int32), default) else _nbits(qt.g_idx.to(torch.int32))
    return Storage(weights=N * K, code_bits=code_bits, scale_bits=scale_bits, zero_bits=zero_bits,
                   gidx_bits=gidx_bits)


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
