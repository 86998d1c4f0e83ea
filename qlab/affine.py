"""Affine (uniform) quantization: round-to-nearest and stochastic rounding, per tensor / channel / group.

Asymmetric, integer zero-point (the default, as in GPTQ/AWQ checkpoints):
    the range [min, max] is widened to contain 0, s = (max − min)/(2^b − 1), z = round(−min/s),
    q = clamp(round(w/s) + z, 0, 2^b − 1),  ŵ = (q − z)·s.
Asymmetric, float zero-point (GGUF Q4_1's form ŵ = q·s + min):
    s = (max − min)/(2^b − 1) on the group's own range, z = −min/s (not rounded).
Symmetric:
    s = max|w| / (2^(b−1) − 1), z = 2^(b−1) fixed (codes stay unsigned), so ŵ ∈ s·{−(2^(b−1)−1) … 2^(b−1)−1}
    (plus one unused negative level).

Groups run along the input dimension (the last axis of an [out, in] weight).
"""

from __future__ import annotations

import math

import torch

from .errors import BadArgumentError, NonFiniteError
from .qtensor import QuantizedTensor


def check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise BadArgumentError(f"bits must be an integer from 2 to 8, got {bits!r}")


def valid_group_sizes(K: int) -> list[int]:
    """Group sizes that divide a row of K inputs (K itself is per-channel)."""
    return [g for g in range(1, K + 1) if K % g == 0]


def resolve_group_size(group_size: int | str | None, K: int) -> tuple[int, str]:
    """Turn the user's group size (int, "channel"/None/-1, "tensor") into (columns per group, granularity)."""
    if group_size in (None, -1, "channel"):
        return K, "channel"
    if group_size == "tensor":
        return K, "tensor"
    if not isinstance(group_size, int) or group_size <= 0:
        raise BadArgumentError(f"group_size must be a positive integer, 'channel' or 'tensor', got {group_size!r}")
    if K % group_size:
        useful = [g for g in valid_group_sizes(K) if g >= 8]
        raise BadArgumentError(
            f"group size {group_size} does not divide the row length {K}; sizes that do: {useful}"
        )
    return group_size, ("channel" if group_size == K else "group")


def check_finite(W: torch.Tensor, what: str = "weight") -> None:
    if not torch.isfinite(W).all():
        n = int((~torch.isfinite(W)).sum())
        raise NonFiniteError(f"{what} has {n} NaN/Inf values; quantization needs finite numbers — fix the {what} first")


def scale_zero(
    Wg: torch.Tensor, bits: int, symmetric: bool, zero_point: str = "integer"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale s and zero-point z for each row of Wg (the reduction runs over the last axis)."""
    maxq = 2**bits - 1
    if symmetric:
        absmax = Wg.abs().amax(dim=-1)
        s = absmax / (2 ** (bits - 1) - 1)
        z = torch.full_like(s, 2 ** (bits - 1))
    else:
        mn, mx = Wg.amin(dim=-1), Wg.amax(dim=-1)
        if zero_point == "integer":
            mn, mx = mn.clamp(max=0), mx.clamp(min=0)
        elif zero_point != "float":
            raise BadArgumentError(f"zero_point must be 'integer' or 'float', got {zero_point!r}")
        s = (mx - mn) / maxq
        s = torch.where(s > 0, s, torch.ones_like(s))  # a constant group: any step reproduces it
        z = -mn / s
        if zero_point == "integer":
            z = torch.round(z)
    s = torch.where(s > 0, s, torch.ones_like(s))
    return s, z


def round_codes(
    x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int, rounding: str = "nearest",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """q = clamp(round(x/s + z), 0, 2^b − 1) with s, z broadcast against x; returns float codes."""
    t = x / s + z
    if rounding == "nearest":
        q = torch.round(t)
    elif rounding == "stochastic":
        q = torch.floor(t + torch.rand(t.shape, generator=generator, dtype=t.dtype))
    else:
        raise BadArgumentError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    return q.clamp(0, 2**bits - 1)


def quantize_affine(
    W: torch.Tensor,
    bits: int = 4,
    group_size: int | str | None = None,
    symmetric: bool = False,
    rounding: str = "nearest",
    zero_point: str = "integer",
    seed: int = 0,
) -> QuantizedTensor:
    """Quantize a 2-D weight [out, in] (a 1-D tensor is one row) to a `QuantizedTensor`.

    group_size: an int dividing `in`, "channel" (or None) for one scale per row, "tensor" for one scale.
    """
    check_bits(bits)
    W = W.detach()
    if W.dim() == 1:
        W = W[None]
    if W.dim() != 2:
        raise BadArgumentError(f"expected a 2-D weight [out, in], got shape {tuple(W.shape)}")
    check_finite(W)
    W = W.to(torch.float32)
    N, K = W.shape
    gs, granularity = resolve_group_size(group_size, K)
    G = K // gs
    Wg = W.reshape(N, G, gs)  # [N, G, gs]
    if granularity == "tensor":
        s, z = scale_zero(W.reshape(1, 1, -1), bits, symmetric, zero_point)
        s, z = s.expand(N, 1).clone(), z.expand(N, 1).clone()
    else:
        s, z = scale_zero(Wg, bits, symmetric, zero_point)  # [N, G]
    gen = torch.Generator().manual_seed(seed)
    q = round_codes(Wg, s[..., None], z[..., None], bits, rounding, gen)
    zero_bits = 16 if zero_point == "float" else None
    return QuantizedTensor(
        codes=q.reshape(N, K).to(torch.uint8), scales=s, zeros=z, bits=bits, group_size=gs,
        symmetric=symmetric, granularity=granularity, zero_bits=zero_bits,
    )


def fake_quantize(
    W: torch.Tensor,
    bits: int = 4,
    group_size: int | str | None = None,
    symmetric: bool = False,
    rounding: str = "nearest",
    zero_point: str = "integer",
    seed: int = 0,
) -> torch.Tensor:
    """Quantize then dequantize (arguments as quantize_affine), in W's dtype and shape: the weights a quantized
    model computes with. Round-to-nearest per channel or group of a float32 [N, K] W, the case searches call
    thousands of times, runs in place on one buffer, bit-identical to quantize_affine(...).dequantize()."""
    gs, granularity = resolve_group_size(group_size, W.shape[-1])
    fast = W.dim() == 2 and W.dtype == torch.float32 and rounding == "nearest" and zero_point == "integer"
    if not fast or granularity == "tensor":
        return quantize_affine(W, bits, group_size, symmetric, rounding, zero_point, seed).dequantize(
            W.dtype).reshape(W.shape)
    check_bits(bits)
    N, K = W.shape
    Wg = W.detach().reshape(N, K // gs, gs)  # [N, G, gs]
    s, z = scale_zero(Wg, bits, symmetric)
    s, z = s[..., None], z[..., None]
    q = torch.div(Wg, s).add_(z).round_().clamp_(0, 2**bits - 1)  # = round_codes(Wg, s, z, bits)
    return q.sub_(z).mul_(s).reshape(N, K)


def mse(W: torch.Tensor, W_hat: torch.Tensor) -> float:
    return float(((W.double() - W_hat.double()) ** 2).mean())


def sqnr_db(W: torch.Tensor, W_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10·log10(Σw² / Σ(w − ŵ)²) in dB (inf when exact)."""
    noise = float(((W.double() - W_hat.double()) ** 2).sum())
    signal = float((W.double() ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)
