"""Bit packing of unsigned b-bit codes into int32 words — the one packed layout shared by the GPTQ
exporter, the Triton kernels and the loaders.

Codes are packed along axis 0 as a little-endian bit stream: element r of a column sits at bit offset
r·b of that column's stream, and word w holds stream bits [32w, 32w + 32). For b ∈ {2, 4, 8} this is
"32/b codes per word, code j in bits [j·b, j·b + b)"; for b = 3 a code may straddle two words (the
GPTQ 3-bit layout: 32 codes in 3 words).

    rows r = 0..7 (4-bit)   word 0 = c7 c6 c5 c4 c3 c2 c1 c0   (c0 in the low nibble)

GPTQ's `qweight` is `pack_rows(codes.T)`: [in/32·b, out] int32, packed along the input dimension.
"""

from __future__ import annotations

import math

import torch

from .errors import BadArgumentError


def _check(rows: int, bits: int) -> None:
    if not 2 <= bits <= 8:
        raise BadArgumentError(f"bits must be 2..8 to pack, got {bits}")
    if (rows * bits) % 32:
        raise BadArgumentError(f"{rows} rows of {bits}-bit codes do not fill whole int32 words; "
                               f"the row count must be a multiple of {32 // math.gcd(32, bits)}")


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """[R, C] codes in [0, 2^bits) → [R·bits/32, C] int32, packed along axis 0."""
    R, C = codes.shape
    _check(R, bits)
    if int(codes.min()) < 0 or int(codes.max()) >= 2**bits:
        raise BadArgumentError(f"codes must lie in [0, {2**bits - 1}] to pack as {bits}-bit")
    c = codes.to(torch.int64)
    out = torch.zeros(R * bits // 32, C, dtype=torch.int64)
    for r in range(R):  # at most a few thousand rows; each step is a vectorised column op
        bit = r * bits
        w, off = divmod(bit, 32)
        out[w] |= (c[r] << off) & 0xFFFFFFFF
        if off + bits > 32:  # straddles into the next word
            out[w + 1] |= c[r] >> (32 - off)
    return _to_int32(out)


def unpack_rows(packed: torch.Tensor, bits: int, rows: int) -> torch.Tensor:
    """Inverse of `pack_rows`: [rows·bits/32, C] int32 → [rows, C] uint8."""
    _check(rows, bits)
    p = packed.to(torch.int64) & 0xFFFFFFFF
    mask = 2**bits - 1
    out = torch.empty(rows, p.shape[1], dtype=torch.int64)
    for r in range(rows):
        w, off = divmod(r * bits, 32)
        v = p[w] >> off
        if off + bits > 32:
            v = v | (p[w + 1] << (32 - off))
        out[r] = v & mask
    return out.to(torch.uint8)


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """Reinterpret unsigned 32-bit values held in int64 as int32 (two's complement)."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
