"""Block formats built on minifloats: OCP Microscaling (MXFP8/6/4, MXINT8), NVIDIA's NVFP4, and QLoRA's NF4.

Each splits a row (the last, input dimension of an [out, in] weight) into blocks of B consecutive values that share
one scale; each value keeps a few bits of its own:

    format        element              B    block scale               tensor-level         bits per weight
    mxfp8_e4m3    E4M3 (max 448)       32   E8M0 (a power of two)     —                    8 + 8/32 = 8.25
    mxfp8_e5m2    E5M2 (max 57344)     32   E8M0                      —                    8.25
    mxfp6_e3m2    E3M2 (max 28)        32   E8M0                      —                    6.25
    mxfp6_e2m3    E2M3 (max 7.5)       32   E8M0                      —                    6.25
    mxfp4         E2M1 (max 6)         32   E8M0                      —                    4.25
    mxint8        int8 · 2^-6          32   E8M0                      —                    8.25
    nvfp4         E2M1                 16   E4M3 (unsigned use)       float32 scale        4 + 8/16 + 32/numel
    nf4           16 normal quantiles  64   float32 absmax            —                    4 + 32/64 = 4.5
    nf4 (double)  16 normal quantiles  64   8-bit code of the absmax  float32 mean, one      4 + 8/64 + 32/(64·256)
                                                                      float32 per 256 blocks   + 32/numel

MX (OCP Microscaling Formats v1.0, §6.3). For a block V with absmax a = max|V|:
    shared_exp = floor(log2 a) − emax_elem          emax_elem = floor(log2(max element)): 8, 15, 4, 2, 2, int8: 0
    X = 2^shared_exp, stored as E8M0 (code shared_exp + 127)
    element_i = round_to(V_i / X, element), saturating at ±max element
  The floor puts a/X in [2^emax, 2^(emax+1)): for E4M3 that is [256, 512), so a block whose absmax lies above
  1.75·2^k (448/256) saturates its largest elements. `scale_rounding` offers the known alternatives:
    "floor"   the spec's (the default)
    "ceil"    ceil(log2 a) − emax_elem: one step larger unless a is a power of two (torchao's CEIL): never saturates,
              but loses a bit of resolution for most blocks
    "rceil"   the smallest power of two X with a/X ≤ max element, i.e. ceil(log2(a / max element)) (NVIDIA's cuBLAS
              rule, torchao's RCEIL): never saturates, and is never larger than needed
  MXINT8 elements are 8-bit two's complement with an implicit 2^-6: round_half_even(V_i/X · 64), clamped to ±127
  (the symmetric range: the spec authors' reference library, microxcaling, clamps to ±127/64 too, so code 0x80 = −2
  is never produced; it rounds ties away from zero, this module to even).
  An all-zero block gets the smallest scale 2^-127 (E8M0 code 0, what torchao stores too) and zero elements.
  A block needing a scale outside E8M0's 2^-127…2^127 raises `BadArgumentError` (it is not clamped: a clamped
  scale silently flushes that block to zero).

NVFP4 (NVIDIA Blackwell's FP4; the two-level scaling torchao and TensorRT-LLM use):
    g = absmax(W) / (6 · 448), stored as float32                       (per tensor)
    s_b = round_to((max|V_b| / 6) / g, E4M3), at least 2^-9             (per block of 16; the sign bit stays 0)
    element_i = round_to(V_i / (g · s_b), E2M1), saturating at ±6
  Dividing by 6·448 makes the block holding the tensor's absmax get s_b = 448, E4M3's top: the block scales use
  the whole E4M3 range (17.8 binades) below it, where absmax/6 alone would leave them mostly above or below it.
  A block whose scale would round to 0 (its absmax below ≈ 2^-10·absmax(W)/448) gets E4M3's smallest subnormal
  2^-9 instead, so no division is by zero and its elements still get the codes that fit (torchao uses the smallest
  normal 2^-6 there). An all-zero tensor gets g = 1 and zero codes.

NF4 (QLoRA, Dettmers et al. 2023): 16 fixed levels q_0 < … < q_15 in [−1, 1] with an exact 0 — 8 positive, 7
negative quantiles of N(0, 1) (`nf4_values`). Per block of 64: a = max|V|, element_i = the index of the level
nearest V_i / a, dequantized q[element_i] · a. An all-zero block stores a = 0 and the code of 0.
  Double quantization (QLoRA §3) stores the absmax constants in 8 bits: subtract their mean m (float32), then
  in blocks of 256 constants scale by their absmax c and round to the nearest value of the signed 8-bit dynamic
  map (`dynamic_map_values`, bitsandbytes' map of 256 values); a ≈ map[code]·c + m. The elements are coded
  with the exact a, then a itself is replaced (as bitsandbytes does).

Every `quantize` returns a `BlockQuantized` (codes, scale codes and values, `dequantize()`, `storage_bits()`,
`bits_per_weight()`); `pack` / `unpack` turn it into bytes and back; `fake_quantize(W, name)` gives the float32
weight a model computes with.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch

from . import minifloat as mf
from .errors import BadArgumentError, FileFormatError, NonFiniteError

SCALE_ROUNDINGS = ("floor", "ceil", "rceil")
E8M0_MIN_EXP, E8M0_MAX_EXP = -127, 127
NVFP4_ELEM_MAX, NVFP4_SCALE_MAX = 6.0, 448.0
NF4_BLOCK, NF4_DQ_BLOCK = 64, 256


@dataclass(frozen=True)
class BlockFormat:
    """One named block format: its element, block size, block-scale storage and per-tensor storage."""

    name: str
    family: str  # "mx", "nvfp4" or "nf4"
    element: str  # a minifloat name, "int8" (MXINT8) or "nf4"
    element_bits: int
    block_size: int
    scale: str  # "e8m0", "e4m3" or "float32"
    scale_bits: int
    tensor_bits: int = 0  # per-tensor storage (NVFP4's float32 scale)
    description: str = ""


BLOCK_FORMATS: dict[str, BlockFormat] = {f.name: f for f in (
    BlockFormat("mxfp8_e4m3", "mx", "e4m3", 8, 32, "e8m0", 8, description="OCP MXFP8, E4M3 elements"),
    BlockFormat("mxfp8_e5m2", "mx", "e5m2", 8, 32, "e8m0", 8, description="OCP MXFP8, E5M2 elements"),
    BlockFormat("mxfp6_e3m2", "mx", "e3m2", 6, 32, "e8m0", 8, description="OCP MXFP6, E3M2 elements"),
    BlockFormat("mxfp6_e2m3", "mx", "e2m3", 6, 32, "e8m0", 8, description="OCP MXFP6, E2M3 elements"),
    BlockFormat("mxfp4", "mx", "e2m1", 4, 32, "e8m0", 8, description="OCP MXFP4, E2M1 elements"),
    BlockFormat("mxint8", "mx", "int8", 8, 32, "e8m0", 8, description="OCP MXINT8, int8·2^-6 elements"),
    BlockFormat("nvfp4", "nvfp4", "e2m1", 4, 16, "e4m3", 8, tensor_bits=32,
                description="NVIDIA NVFP4: E2M1, E4M3 block scale, float32 tensor scale"),
    BlockFormat("nf4", "nf4", "nf4", 4, 64, "float32", 32, description="QLoRA NormalFloat4, absmax blocks of 64"),
)}


def get_block_format(name: str | BlockFormat) -> BlockFormat:
    """A `BlockFormat` by name (see `BLOCK_FORMATS`), or `name` itself."""
    if isinstance(name, BlockFormat):
        return name
    if isinstance(name, str) and name.lower() in BLOCK_FORMATS:
        return BLOCK_FORMATS[name.lower()]
    raise BadArgumentError(f"unknown block format {name!r}; known: {', '.join(BLOCK_FORMATS)}")


# ----------------------------------------------------------------------------------------------------------
# Code books


@functools.lru_cache(maxsize=None)
def _nf4_table() -> torch.Tensor:
    nd = NormalDist()
    delta = 0.5 * (1 / 30 + 1 / 32)  # halfway between the centres of the last of 15 and of 16 equal bins
    top = 1 - delta
    pos = [nd.inv_cdf(top + (0.5 - top) * i / 8) for i in range(8)]  # 8 quantiles from 1−δ towards ½
    neg = [-nd.inv_cdf(top + (0.5 - top) * i / 7) for i in range(7)]  # 7, mirrored
    levels = sorted(pos + neg + [0.0])
    return torch.tensor(levels, dtype=torch.float64) / nd.inv_cdf(top)  # ±1 at the ends


def nf4_values() -> torch.Tensor:
    """The 16 NF4 levels, float64 [16], increasing, q_7 = 0, q_0 = −1, q_15 = 1.

    QLoRA's NormalFloat: levels at quantiles of N(0, 1), so that each level is equally likely for normally
    distributed weights (a block divided by its absmax). With 4 bits and an exact zero the code is asymmetric:
    8 positive levels Φ⁻¹(p) at p = 1−δ … ½ in 8 equal steps (½ itself excluded), 7 negative ones −Φ⁻¹(p) at
    p = 1−δ … ½ in 7 steps, and 0; all divided by Φ⁻¹(1−δ). δ = ½(1/30 + 1/32) keeps the outermost level finite.
    """
    return _nf4_table().clone()


def _dynamic_value(byte: int) -> float:
    """The signed 8-bit dynamic-tree code (Dettmers 2015; bitsandbytes' "dynamic" map), read bit by bit:

        S | 0…0 (E zeros) | 1 (indicator) | F = 6 − E fraction bits f
        value = ±10^(−E) · (0.1 + 0.9·(f + ½)/2^F)

    A longer run of zeros buys a smaller decade and pays with fraction bits. The two codes with all 7 bits zero
    are 0 (S = 0) and 1.0 (S = 1: bitsandbytes keeps +1 exactly instead of −0)."""
    s, r = byte >> 7, byte & 0x7F
    if r == 0:
        return 1.0 if s else 0.0
    e = 7 - r.bit_length()  # leading zeros among the 7 bits
    f_bits = 6 - e
    f = r & ((1 << f_bits) - 1)
    v = 10.0 ** (-e) * (0.1 + 0.9 * (f + 0.5) / (1 << f_bits))
    return -v if s else v


@functools.lru_cache(maxsize=None)
def _dynamic_table() -> torch.Tensor:
    return torch.tensor([_dynamic_value(b) for b in range(256)], dtype=torch.float64)


def dynamic_map_values() -> torch.Tensor:
    """The 256 values of the 8-bit dynamic map, float64, indexed by code (`_dynamic_value` reads a code)."""
    return _dynamic_table().clone()


def _nearest_code(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index into `table` of the value nearest each x (float64); a tie goes to the smaller value."""
    order = torch.argsort(table)
    srt = table[order]
    mids = (srt[1:] + srt[:-1]) / 2
    return order[torch.searchsorted(mids, x.contiguous(), right=False)]  # x == mid → the lower one


# ----------------------------------------------------------------------------------------------------------
# The result


@dataclass
class NF4DoubleQuant:
    """NF4's absmax constants in 8 bits: a ≈ dynamic_map[codes]·scales[group] + offset."""

    codes: torch.Tensor  # uint8 [n_blocks]     dynamic-map codes of (a − offset)/scale
    scales: torch.Tensor  # float32 [n_groups]  absmax of (a − offset) per group of 256 constants
    offset: torch.Tensor  # float32 []          mean of the absmax constants
    block_size: int = NF4_DQ_BLOCK

    def absmax(self) -> torch.Tensor:
        """The dequantized absmax constants, float32 [n_blocks] (computed in float32, as bitsandbytes does)."""
        n = self.codes.numel()
        per = torch.repeat_interleave(self.scales, self.block_size)[:n]
        return _dynamic_table().to(torch.float32)[self.codes.long()] * per + self.offset


@dataclass
class BlockQuantized:
    """A weight in a block format. With R rows of K values and G = K / B blocks per row:

        codes        uint8 [R, K]   element codes (minifloat bit codes; MXINT8: the int8's byte; NF4: level index)
        scale_codes  [R, G]         stored block scales: uint8 E8M0 / E4M3 codes; NF4: the float32 absmax's bits
                                    (int32), or with double quantization the uint8 dynamic-map codes
        scales       float32 [R, G] block scales as dequantization uses them (E8M0 / E4M3 value; NF4 absmax)
        tensor_scale float32 []     NVFP4's per-tensor scale g (None otherwise)
        double_quant                NF4's 8-bit absmax (None otherwise)

    W ≈ element_value(codes) · scales (· tensor_scale), block by block.
    """

    fmt: BlockFormat
    shape: tuple[int, ...]
    codes: torch.Tensor
    scale_codes: torch.Tensor
    scales: torch.Tensor
    tensor_scale: torch.Tensor | None = None
    double_quant: NF4DoubleQuant | None = None
    scale_rounding: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def element_values(self) -> torch.Tensor:
        """Each element's value before scaling, float32 [R, K]."""
        f = self.fmt
        if f.element == "int8":
            return self.codes.view(torch.int8).to(torch.float32) / 64
        if f.element == "nf4":
            return _nf4_table().to(torch.float32)[self.codes.long()]
        return mf.decode(self.codes, f.element)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Ŵ in `dtype`, W's shape."""
        R, K = self.codes.shape
        B = self.fmt.block_size
        elem = self.element_values().reshape(R, K // B, B)
        if self.fmt.family == "nvfp4":  # e2m1 · s · g: ≤ 30 significant bits, exact in float64, one rounding
            s = self.scales.double() * self.tensor_scale.double()
            W = (elem.double() * s[..., None]).to(torch.float32)
        else:  # MX: a power of two, exact; NF4: float32 level · float32 absmax, as bitsandbytes
            W = elem * self.scales[..., None]
        return W.reshape(self.shape).to(dtype)

    def storage_bits(self) -> int:
        """Bits of every stored buffer: elements at their width, block scales, per-tensor values."""
        f = self.fmt
        n_blocks = self.scales.numel()
        bits = self.numel * f.element_bits + f.tensor_bits
        if self.double_quant is not None:
            dq = self.double_quant
            bits += n_blocks * 8 + dq.scales.numel() * 32 + 32  # 8-bit codes, a float32 per group, the mean
        else:
            bits += n_blocks * f.scale_bits
        return bits

    def bits_per_weight(self) -> float:
        return self.storage_bits() / self.numel


# ----------------------------------------------------------------------------------------------------------
# Checks


def _as_rows(W: torch.Tensor, fmt: BlockFormat) -> torch.Tensor:
    """W as float64 [R, K] after the checks every block format needs."""
    W = torch.as_tensor(W).detach()
    if W.dim() == 0 or not W.is_floating_point():
        raise BadArgumentError(f"{fmt.name} quantizes a floating-point tensor with at least one dimension, got "
                               f"dtype {W.dtype} and shape {tuple(W.shape)}")
    K = W.shape[-1]
    B = fmt.block_size
    if K == 0 or K % B:
        lo, hi = (K // B) * B, (K // B + 1) * B
        fits = [n for n, f in BLOCK_FORMATS.items() if K and K % f.block_size == 0]
        raise BadArgumentError(
            f"{fmt.name} needs rows (the last, input dimension) whose length is a multiple of its block size {B}; "
            f"got {K}. Valid lengths are {B}, {2 * B}, {3 * B}, … (nearest: {', '.join(str(v) for v in (lo, hi) if v)}"
            f"): pad the rows, or pick a format whose block divides {K}"
            + (f": {', '.join(fits)}" if fits else " (none of the registered ones does)"))
    if not bool(torch.isfinite(W).all()):
        n = int((~torch.isfinite(W)).sum())
        raise NonFiniteError(f"the weight has {n} NaN/Inf values; {fmt.name} quantizes finite numbers only — fix "
                             f"the weight first")
    return W.to(torch.float64).reshape(-1, K)


def _floor_log2(a: torch.Tensor) -> torch.Tensor:
    """floor(log2 a) for a > 0, exactly (from the float's exponent; log2 in floating point can be off by one)."""
    return torch.frexp(a)[1].to(torch.int64) - 1


# ----------------------------------------------------------------------------------------------------------
# MX


def _mx_element(fmt: BlockFormat) -> mf.MiniFloat:
    return dataclasses.replace(mf.get_format(fmt.element), saturate=True)  # MX elements always saturate


def mx_shared_exponent(absmax: torch.Tensor, fmt: str | BlockFormat, scale_rounding: str = "floor") -> torch.Tensor:
    """The block exponents (int64, absmax's shape) of an MX format from the blocks' absmax; −127 for a zero
    block. Not range-checked: `quantize_mx` reports exponents outside E8M0's [−127, 127]."""
    fmt = get_block_format(fmt)
    if scale_rounding not in SCALE_ROUNDINGS:
        raise BadArgumentError(f"scale_rounding must be one of {SCALE_ROUNDINGS}, got {scale_rounding!r}")
    a = absmax.to(torch.float64)
    if fmt.element == "int8":
        emax, top = 0, 127 / 64
    else:
        elem = _mx_element(fmt)
        emax, top = elem.emax, elem.max_finite
    zero = a == 0
    a1 = torch.where(zero, 1.0, a)
    e = _floor_log2(a1) - emax
    if scale_rounding == "ceil":
        e = e + (a1 != torch.ldexp(torch.ones_like(a1), e + emax)).long()  # not a power of two: one step up
    elif scale_rounding == "rceil":
        e = e + (a1 > top * torch.ldexp(torch.ones_like(a1), e)).long()  # one step is always enough
    return torch.where(zero, E8M0_MIN_EXP, e)


def quantize_mx(W: torch.Tensor, fmt: str | BlockFormat = "mxfp4", scale_rounding: str = "floor") -> BlockQuantized:
    """OCP MX quantization of W [..., K] (K a multiple of 32); see the module docstring for the rule."""
    fmt = get_block_format(fmt)
    if fmt.family != "mx":
        raise BadArgumentError(f"{fmt.name} is not an MX format; MX formats: "
                               f"{', '.join(n for n, f in BLOCK_FORMATS.items() if f.family == 'mx')}")
    X = _as_rows(W, fmt)
    R, K = X.shape
    B = fmt.block_size
    Xb = X.reshape(R, K // B, B)  # [R, G, B]
    absmax = Xb.abs().amax(-1)  # [R, G]
    e = mx_shared_exponent(absmax, fmt, scale_rounding)
    bad = (e < E8M0_MIN_EXP) | (e > E8M0_MAX_EXP)
    if bool(bad.any()):
        r, g = (int(i) for i in bad.nonzero()[0])
        raise BadArgumentError(
            f"{fmt.name}: {int(bad.sum())} block(s) need a shared scale outside E8M0's 2^-127 … 2^127, e.g. row {r}, "
            f"block {g} (absmax {float(absmax[r, g]):.3g}) needs 2^{int(e[r, g])}; rescale the weight by a power of "
            f"two first, or use nvfp4 / nf4, whose scales are not limited to E8M0")
    scale = torch.ldexp(torch.ones_like(absmax), e)  # X = 2^e, float64 exact
    V = Xb / scale[..., None]  # exact: a power-of-two division
    if fmt.element == "int8":
        q = torch.round(V * 64).clamp(-127, 127).to(torch.int64)  # round half to even
        codes = (q & 0xFF).to(torch.uint8)
    else:
        codes = mf.encode(V, _mx_element(fmt))
    return BlockQuantized(fmt=fmt, shape=tuple(torch.as_tensor(W).shape), codes=codes.reshape(R, K),
                          scale_codes=(e + 127).to(torch.uint8), scales=scale.to(torch.float32),
                          scale_rounding=scale_rounding)


# ----------------------------------------------------------------------------------------------------------
# NVFP4


def nvfp4_tensor_scale(absmax: float) -> torch.Tensor:
    """NVFP4's per-tensor scale g = absmax / (6 · 448) as float32 (1.0 for an all-zero tensor)."""
    if absmax == 0:
        return torch.tensor(1.0, dtype=torch.float32)
    g = torch.tensor(absmax / (NVFP4_ELEM_MAX * NVFP4_SCALE_MAX), dtype=torch.float32)
    if float(g) == 0:
        raise BadArgumentError(f"nvfp4: the weight's absmax {absmax:.3g} is too small for a float32 tensor scale "
                               f"(absmax/2688 underflows); rescale the weight first")
    return g


def quantize_nvfp4(W: torch.Tensor) -> BlockQuantized:
    """NVFP4 quantization of W [..., K] (K a multiple of 16); see the module docstring for the rule."""
    fmt = BLOCK_FORMATS["nvfp4"]
    X = _as_rows(W, fmt)
    R, K = X.shape
    B = fmt.block_size
    Xb = X.reshape(R, K // B, B)  # [R, G, B]
    g = nvfp4_tensor_scale(float(X.abs().max()) if X.numel() else 0.0)
    g64 = g.double()
    absmax = Xb.abs().amax(-1)  # [R, G]
    s_codes = mf.encode(absmax / NVFP4_ELEM_MAX / g64, mf.E4M3)  # saturating; ≤ 448 by construction
    s_codes = torch.where(s_codes == 0, 1, s_codes).to(torch.uint8)  # at least 2^-9: never a zero scale
    s = mf.decode(s_codes, mf.E4M3).double()
    V = Xb / (g64 * s)[..., None]  # g·s is exact in float64; one rounding, exact decisions (see docstring)
    codes = mf.encode(V, mf.E2M1)
    return BlockQuantized(fmt=fmt, shape=tuple(torch.as_tensor(W).shape), codes=codes.reshape(R, K),
                          scale_codes=s_codes, scales=s.to(torch.float32), tensor_scale=g)


# ----------------------------------------------------------------------------------------------------------
# NF4


def _double_quantize(absmax: torch.Tensor) -> NF4DoubleQuant:
    """absmax float32 [n] → 8-bit dynamic-map codes in groups of 256 around their mean."""
    n = absmax.numel()
    offset = absmax.double().mean().to(torch.float32)
    c = absmax - offset  # float32, as stored
    n_groups = -(-n // NF4_DQ_BLOCK)
    padded = torch.zeros(n_groups * NF4_DQ_BLOCK, dtype=torch.float32)
    padded[:n] = c
    scales = padded.reshape(n_groups, NF4_DQ_BLOCK).abs().amax(-1)  # [n_groups]
    per = torch.repeat_interleave(scales, NF4_DQ_BLOCK)[:n].double()
    normed = torch.where(per > 0, c.double() / torch.where(per > 0, per, 1.0), 0.0)
    codes = _nearest_code(normed, _dynamic_table()).to(torch.uint8)
    return NF4DoubleQuant(codes=codes, scales=scales, offset=offset)


def quantize_nf4(W: torch.Tensor, double_quant: bool = False) -> BlockQuantized:
    """NF4 quantization of W [..., K] (K a multiple of 64); `double_quant` stores the absmax in 8 bits."""
    fmt = BLOCK_FORMATS["nf4"]
    X = _as_rows(W, fmt)
    R, K = X.shape
    B = fmt.block_size
    Xb = X.reshape(R, K // B, B)  # [R, G, B]
    absmax = Xb.abs().amax(-1).to(torch.float32)  # [R, G]: exact for float32 weights
    a = absmax.double()[..., None]
    normed = torch.where(a > 0, Xb / torch.where(a > 0, a, 1.0), 0.0)  # in [−1, 1]; a zero block stays 0
    codes = _nearest_code(normed, _nf4_table()).to(torch.uint8)
    dq = None
    scale_codes = absmax.view(torch.int32)
    scales = absmax
    if double_quant:
        dq = _double_quantize(absmax.reshape(-1))
        scale_codes = dq.codes.reshape(absmax.shape)
        scales = dq.absmax().reshape(absmax.shape)
    return BlockQuantized(fmt=fmt, shape=tuple(torch.as_tensor(W).shape), codes=codes.reshape(R, K),
                          scale_codes=scale_codes, scales=scales, double_quant=dq)


# ----------------------------------------------------------------------------------------------------------
# One front


def quantize(W: torch.Tensor, fmt: str | BlockFormat, *, scale_rounding: str | None = None,
             double_quant: bool | None = None) -> BlockQuantized:
    """Quantize W [..., K] to a named block format (`BLOCK_FORMATS`).

    scale_rounding: MX formats only — "floor" (the OCP spec's, default), "ceil" or "rceil".
    double_quant: NF4 only — store the absmax constants in 8 bits (QLoRA's double quantization; default False).
    """
    fmt = get_block_format(fmt)
    if scale_rounding is not None and fmt.family != "mx":
        raise BadArgumentError(f"scale_rounding applies to the MX formats only (their E8M0 scale), not {fmt.name}")
    if double_quant is not None and fmt.family != "nf4":
        raise BadArgumentError(f"double_quant applies to nf4 only, not {fmt.name}")
    if fmt.family == "mx":
        return quantize_mx(W, fmt, scale_rounding or "floor")
    if fmt.family == "nvfp4":
        return quantize_nvfp4(W)
    return quantize_nf4(W, bool(double_quant))


def fake_quantize(W: torch.Tensor, fmt: str | BlockFormat, **options) -> torch.Tensor:
    """Quantize then dequantize: the float32 weight (W's shape) a model stored in `fmt` computes with.
    `options` as `quantize`; e.g. `linear.weight.data = fake_quantize(linear.weight, "mxfp4")`."""
    return quantize(W, fmt, **options).dequantize(torch.float32)


# ----------------------------------------------------------------------------------------------------------
# Bytes


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes in [0, 2^bits) → uint8 bytes [ceil(n·bits/8)]: a little-endian bit stream (code i at bits
    [i·bits, (i+1)·bits), byte j holds bits [8j, 8j+8)), the convention of `qlab.packing`.

        4-bit: byte 0 = c1 c0 (c0 in the low nibble)       6-bit: 4 codes in 3 bytes, c1 straddling bytes 0 and 1
    """
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise BadArgumentError(f"bits must be an integer from 1 to 8 to pack into bytes, got {bits!r}")
    c = torch.as_tensor(codes).reshape(-1).to(torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 1 << bits):
        raise BadArgumentError(f"codes must lie in [0, {(1 << bits) - 1}] to pack as {bits}-bit")
    n = c.numel()
    per = math.lcm(bits, 8) // bits  # codes per group of whole bytes
    nbytes_group = per * bits // 8
    groups = -(-n // per)
    c = torch.cat([c, c.new_zeros(groups * per - n)]).reshape(groups, per)
    words = (c << (torch.arange(per) * bits)).sum(-1)  # ≤ 56 bits: fits int64
    out = (words[:, None] >> (torch.arange(nbytes_group) * 8)) & 0xFF  # [groups, bytes per group]
    return out.reshape(-1)[: -(-n * bits // 8)].to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of `pack_codes`: the first `count` codes, uint8."""
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise BadArgumentError(f"bits must be an integer from 1 to 8 to unpack, got {bits!r}")
    need = -(-count * bits // 8)
    p = torch.as_tensor(packed).reshape(-1).to(torch.int64)
    if p.numel() < need:
        raise FileFormatError(f"{count} codes of {bits} bits need {need} bytes, got {p.numel()}")
    per = math.lcm(bits, 8) // bits
    nbytes_group = per * bits // 8
    groups = -(-count // per)
    p = torch.cat([p[:need], p.new_zeros(groups * nbytes_group - need)]).reshape(groups, nbytes_group)
    words = (p << (torch.arange(nbytes_group) * 8)).sum(-1)
    c = (words[:, None] >> (torch.arange(per) * bits)) & ((1 << bits) - 1)
    return c.reshape(-1)[:count].to(torch.uint8)


def _f32_bytes(t: torch.Tensor) -> bytes:
    return np.ascontiguousarray(t.detach().to(torch.float32).numpy(), dtype="<f4").tobytes()


def pack(q: BlockQuantized) -> bytes:
    """The bytes that store q, in this order:

        element codes    pack_codes(codes, element_bits)           ceil(numel·bits/8) bytes
        block scales     one byte each (E8M0 / E4M3 / NF4's double-quant codes), or float32 (NF4 absmax)
        NVFP4            the float32 tensor scale
        NF4 double quant the float32 mean, then one float32 per group of 256 blocks

    Float32 values are little-endian. 8·len(pack(q)) = q.storage_bits() whenever numel·bits is a whole number of
    bytes (always, for rows that the block size divides)."""
    parts = [pack_codes(q.codes, q.fmt.element_bits).numpy().tobytes()]
    if q.fmt.family == "nf4" and q.double_quant is None:
        parts.append(_f32_bytes(q.scales))
    else:
        parts.append(q.scale_codes.to(torch.uint8).numpy().tobytes())
    if q.tensor_scale is not None:
        parts.append(_f32_bytes(q.tensor_scale.reshape(1)))
    if q.double_quant is not None:
        parts.append(_f32_bytes(q.double_quant.offset.reshape(1)))
        parts.append(_f32_bytes(q.double_quant.scales))
    return b"".join(parts)


def unpack(data: bytes, fmt: str | BlockFormat, shape: tuple[int, ...], double_quant: bool = False) -> BlockQuantized:
    """Inverse of `pack`: the `BlockQuantized` of a weight of `shape` stored in `fmt` (double_quant: NF4's)."""
    fmt = get_block_format(fmt)
    shape = tuple(int(s) for s in shape)
    K = shape[-1]
    n = math.prod(shape)
    if K % fmt.block_size:
        raise BadArgumentError(f"{fmt.name}: row length {K} is not a multiple of the block size {fmt.block_size}")
    R, G = n // K, K // fmt.block_size
    nb = R * G
    buf = memoryview(data)
    pos = 0

    def take(count: int) -> memoryview:
        nonlocal pos
        if pos + count > len(buf):
            raise FileFormatError(f"{fmt.name} data of shape {shape} is truncated: need more than {len(buf)} bytes")
        out = buf[pos:pos + count]
        pos += count
        return out

    def f32(count: int) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(take(4 * count), dtype="<f4").astype(np.float32))

    def u8(count: int) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(take(count), dtype=np.uint8).copy())

    codes = unpack_codes(u8(-(-n * fmt.element_bits // 8)), fmt.element_bits, n).reshape(R, K)
    tensor_scale = dq = None
    if fmt.family == "mx":
        scale_codes = u8(nb).reshape(R, G)
        scales = torch.ldexp(torch.ones(R, G, dtype=torch.float64), scale_codes.long() - 127).to(torch.float32)
    elif fmt.family == "nvfp4":
        scale_codes = u8(nb).reshape(R, G)
        scales = mf.decode(scale_codes, mf.E4M3)
        tensor_scale = f32(1).reshape(())
    elif double_quant:
        dq_codes = u8(nb)
        offset = f32(1).reshape(())
        dq = NF4DoubleQuant(codes=dq_codes, scales=f32(-(-nb // NF4_DQ_BLOCK)), offset=offset)
        scale_codes = dq_codes.reshape(R, G)
        scales = dq.absmax().reshape(R, G)
    else:
        scales = f32(nb).reshape(R, G)
        scale_codes = scales.view(torch.int32)
    if pos != len(buf):
        raise FileFormatError(f"{fmt.name} data of shape {shape} has {len(buf) - pos} bytes left over; "
                              f"check the format, shape and double_quant")
    return BlockQuantized(fmt=fmt, shape=shape, codes=codes, scale_codes=scale_codes, scales=scales,
                          tensor_scale=tensor_scale, double_quant=dq)
