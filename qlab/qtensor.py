"""`QuantizedTensor`: integer codes plus per-group scales and zero-points — the one layout every
quantizer in qlab (RTN, GPTQ, AWQ) produces and every consumer (evaluation, kernels, exporters) reads.

A weight W of shape [N, K] (out_features × in_features, as in `nn.Linear`) is stored as

    codes  uint8   [N, K]        unsigned integers in [0, 2^bits − 1]
    scales float32 [N, G]        one step size per output row and group
    zeros  float32 [N, G]        zero-point in code units (an integer for the usual integer zero-point)
    g_idx  int32   [K]           group of each input column (act-order may scatter columns)

and dequantizes as  Ŵ[n, k] = (codes[n, k] − zeros[n, g_idx[k]]) · scales[n, g_idx[k]].

Packed bit layouts (int32 words for checkpoints and kernels) live in `qlab.packing`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .errors import BadArgumentError


@dataclass
class QuantizedTensor:
    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int
    symmetric: bool
    g_idx: torch.Tensor = field(default=None)  # type: ignore[assignment]
    granularity: str = "group"  # "tensor", "channel" or "group": how many scales are really stored
    scale_bits: int = 16  # storage of one scale (fp16)
    zero_bits: int | None = None  # storage of one zero-point; None: `bits` (integer zero) — 0 when symmetric

    def __post_init__(self) -> None:
        N, K = self.codes.shape
        if self.g_idx is None:
            self.g_idx = torch.arange(K, dtype=torch.int32) // self.group_size
        if self.scales.shape != self.zeros.shape or self.scales.shape[0] != N:
            raise BadArgumentError(
                f"scales {tuple(self.scales.shape)} and zeros {tuple(self.zeros.shape)} must both be [{N}, groups]"
            )
        if self.g_idx.shape != (K,):
            raise BadArgumentError(f"g_idx must have one entry per input column ({K}), got {tuple(self.g_idx.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)  # type: ignore[return-value]

    @property
    def n_groups(self) -> int:
        return self.scales.shape[1]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Ŵ = (codes − zeros[:, g_idx]) · scales[:, g_idx]."""
        N, K = self.shape
        if self.n_groups * self.group_size == K and self.has_default_g_idx():  # contiguous groups: no gather
            c = self.codes.to(torch.float32).reshape(N, self.n_groups, self.group_size)
            W = (c - self.zeros.float()[..., None]) * self.scales.float()[..., None]
            return W.reshape(N, K).to(dtype)
        g = self.g_idx.long()
        s = self.scales[:, g].to(torch.float32)
        z = self.zeros[:, g].to(torch.float32)
        return ((self.codes.to(torch.float32) - z) * s).to(dtype)

    def has_default_g_idx(self) -> bool:
        """True when column k belongs to group k // group_size (no act-order scattering)."""
        K = self.codes.shape[1]
        return torch.equal(self.g_idx.to(torch.int32), torch.arange(K, dtype=torch.int32) // self.group_size)

    def storage_bits(self) -> int:
        """Bits needed to store codes, scales and zero-points, b bits per code without padding to words (g_idx
        excluded: it is derivable unless act-order scattered the columns, in which case it is counted as int32
        per column). Counted by `storage_breakdown(self, padded=False)`, qlab's one accountant."""
        return storage_breakdown(self, padded=False).total_bits

    def bits_per_weight(self) -> float:
        N, K = self.shape
        return self.storage_bits() / (N * K)


# ----------------------------------------------------------------------------------------------------------
# qlab's one accountant of storage: `storage_breakdown` counts each stored buffer — the codes (and integer zeros)
# as `qlab.packing.pack_rows` packs them into int32 words (padded to whole words by default, as a checkpoint
# stores them; `padded=False` gives the information content without that padding), scales and float zeros at
# their storage width (fp16), and g_idx as int32 per input column when act-order scattered the columns
# (otherwise it is derivable and costs nothing).


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


WORD_BITS = 32  # qlab.packing packs codes into int32 words


def _packed_bits(count: int, bits: int, padded: bool = True) -> int:
    """Bits of `count` b-bit integers packed with `pack_rows` (padded to whole words: it packs groups of
    32/gcd(32, b) values into b/gcd(32, b) words), or count·b unpadded."""
    if not padded:
        return count * bits
    per_word = WORD_BITS // math.gcd(WORD_BITS, bits)  # values that fill whole words
    return -(-count // per_word) * per_word * bits


def storage_breakdown(qt: QuantizedTensor, padded: bool = True) -> Storage:
    """Bits of the buffers storing qt: packed codes, fp16 scales, zeros (packed b-bit if integer, else fp16 or
    `qt.zero_bits` each), g_idx (int32 per column, only when act-order scattered the columns).

    padded: integer buffers rounded up to whole int32 words as `pack_rows` stores them (the default: what a
    checkpoint holds); False: their exact information content, b bits per value (`QuantizedTensor.storage_bits`)."""
    N, K = qt.shape
    n_params = {"tensor": 1, "channel": N, "group": N * qt.n_groups}.get(qt.granularity)
    if n_params is None:
        raise BadArgumentError(f"granularity must be 'tensor', 'channel' or 'group', got {qt.granularity!r}")
    code_bits = _packed_bits(N * K, qt.bits, padded)
    scale_bits = n_params * qt.scale_bits
    if qt.symmetric:
        zero_bits = 0
    elif qt.zero_bits is None or qt.zero_bits == qt.bits:
        if padded:  # packing needs integer codes of the zero-points
            zeros = qt.zeros[:1, :1] if qt.granularity == "tensor" else qt.zeros
            if not torch.equal(zeros, zeros.round()) or int(zeros.min()) < 0 or int(zeros.max()) >= 2**qt.bits:
                raise BadArgumentError(f"zero-points are not integers in [0, {2**qt.bits - 1}]: store them as float")
        zero_bits = _packed_bits(n_params, qt.bits, padded)
    else:
        zero_bits = n_params * qt.zero_bits
    gidx_bits = 0 if qt.has_default_g_idx() else WORD_BITS * K
    return Storage(weights=N * K, code_bits=code_bits, scale_bits=scale_bits, zero_bits=zero_bits,
                   gidx_bits=gidx_bits)
