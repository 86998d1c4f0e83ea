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
        """Exact bits needed to store codes, scales and zero-points (g_idx excluded: it is derivable
        unless act-order scattered the columns, in which case it is counted as int32 per column)."""
        N, K = self.shape
        n_params = {"tensor": 1, "channel": N, "group": N * self.n_groups}[self.granularity]
        zero_bits = 0 if self.symmetric else (self.bits if self.zero_bits is None else self.zero_bits)
        total = N * K * self.bits + n_params * (self.scale_bits + zero_bits)
        if not self.has_default_g_idx():
            total += 32 * K
        return total

    def bits_per_weight(self) -> float:
        N, K = self.shape
        return self.storage_bits() / (N * K)
