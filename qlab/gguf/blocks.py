"""The GGUF block-type table and the exact float32 arithmetic helpers shared by every block format.

Every ggml quantized type cuts a row into blocks of ``block_size`` weights and stores each block in
``type_size`` bytes (little-endian). Bits per weight = 8 * type_size / block_size::

    name   id  block bytes  bpw    layout (bytes, in order)
    Q4_0    2    32    18   4.5    d:f16 | qs[16] (two 4-bit codes per byte)
    Q4_1    3    32    20   5.0    d:f16 m:f16 | qs[16]
    Q5_0    6    32    22   5.5    d:f16 | qh[4] (5th bits) | qs[16]
    Q5_1    7    32    24   6.0    d:f16 m:f16 | qh[4] | qs[16]
    Q8_0    8    32    34   8.5    d:f16 | qs[32] int8
    Q2_K   10   256    84   2.625  scales[16] (4-bit scale | 4-bit min) | qs[64] | d:f16 dmin:f16
    Q3_K   11   256   110   3.4375 hmask[32] | qs[64] | scales[12] (16 x 6 bits) | d:f16
    Q4_K   12   256   144   4.5    d:f16 dmin:f16 | scales[12] (8 x 6-bit scale, 8 x 6-bit min) | qs[128]
    Q5_K   13   256   176   5.5    d:f16 dmin:f16 | scales[12] | qh[32] | qs[128]
    Q6_K   14   256   210   6.5625 ql[128] | qh[64] | scales[16] int8 | d:f16
    Q8_K   15   256   292   9.125  d:f32 | qs[256] int8 | bsums[16] int16  (activations only, never in files)

The helpers reproduce ggml-quants.c's float arithmetic bit for bit: every operation in float32, in the
same order, sums accumulated left to right (``seqsum``), ``nearest_int`` by the same magic-number trick,
fp16 by round-to-nearest-even.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qlab.errors import BadArgumentError, NonFiniteError

QK_K = 256
F = np.float32
GROUP_MAX_EPS = np.float32(1e-15)


@dataclass(frozen=True)
class BlockType:
    """One ggml block format: ``type_size`` bytes hold ``block_size`` weights."""

    name: str
    type_id: int  # ggml.h enum ggml_type
    block_size: int
    type_size: int
    fallback: str | None  # what llama-quantize uses when a row is not a multiple of block_size
    takes_imatrix: bool  # whether ggml_quantize_chunk uses importance weights for this type

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size


_TABLE = [
    BlockType("Q4_0", 2, 32, 18, None, True),
    BlockType("Q4_1", 3, 32, 20, None, True),
    BlockType("Q5_0", 6, 32, 22, None, True),
    BlockType("Q5_1", 7, 32, 24, None, True),
    BlockType("Q8_0", 8, 32, 34, None, False),
    BlockType("Q2_K", 10, 256, 84, "Q4_0", True),
    BlockType("Q3_K", 11, 256, 110, "Q4_0", True),
    BlockType("Q4_K", 12, 256, 144, "Q5_0", True),
    BlockType("Q5_K", 13, 256, 176, "Q5_1", True),
    BlockType("Q6_K", 14, 256, 210, "Q8_0", True),
    BlockType("Q8_K", 15, 256, 292, None, False),
]
QTYPES: dict[str, BlockType] = {t.name: t for t in _TABLE}


def block_info(qtype: str) -> BlockType:
    """The BlockType of a name such as "Q4_K" (case-insensitive)."""
    key = str(qtype).upper()
    if key not in QTYPES:
        raise BadArgumentError(f"unknown GGUF block type {qtype!r}; choose one of {', '.join(QTYPES)}")
    return QTYPES[key]


def as_rows(x: np.ndarray, bt: BlockType) -> np.ndarray:
    """Check x (1-D or [rows, cols]) and return it as a C-contiguous float32 [rows, cols] array."""
    a = np.asarray(x)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise BadArgumentError(f"quantize takes a 1-D or 2-D array [rows, cols], got shape {a.shape}")
    if a.shape[1] == 0 or a.shape[1] % bt.block_size:
        hint = (f" llama-quantize falls back to {bt.fallback} for such rows (block size "
                f"{QTYPES[bt.fallback].block_size}), or to F16 if that does not divide the row either; use that "
                f"type (qlab's GGUF writer applies the same fallback itself, see qlab.gguf.mixes)."
                if bt.fallback else " Keep such rows in F16/F32 (llama-quantize does) or pad them.")
        raise BadArgumentError(f"{bt.name} needs rows whose length is a multiple of {bt.block_size}, "
                               f"got {a.shape[1]}.{hint}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise NonFiniteError("quantize got NaN or Inf weights; clean the tensor first")
    return a


def as_imatrix(imatrix: np.ndarray | None, cols: int) -> np.ndarray | None:
    """Check an importance vector (one non-negative weight per input column) and return it as float32."""
    if imatrix is None:
        return None
    w = np.ascontiguousarray(np.asarray(imatrix, dtype=np.float32).reshape(-1))
    if w.shape != (cols,):
        raise BadArgumentError(f"imatrix must hold one weight per column ({cols}), got shape {np.shape(imatrix)}")
    if not np.isfinite(w).all():
        raise NonFiniteError("imatrix holds NaN or Inf; recompute it")
    return w


# ----------------------------------------------------------------------------- exact float32 helpers

_MAGIC = np.float32(12582912.0)  # 1.5 * 2**23


def nearest_int(f: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: add 1.5*2^23 in float32 and read the mantissa (round half to even), int32."""
    v = (np.asarray(f, dtype=np.float32) + _MAGIC).view(np.int32)
    return (v & 0x007FFFFF) - 0x00400000


def c_float_to_int8(f: np.ndarray) -> np.ndarray:
    """C's ``(int8_t)`` cast of a float on x86: truncate toward zero (cvttss2si), keep the low byte (int32)."""
    f = np.asarray(f, dtype=np.float32)
    lo, hi = np.fmin.reduce(f, axis=None), np.fmax.reduce(f, axis=None)
    if not np.isnan(f).any() and lo > -128 and hi < 128:  # the usual case: numpy's cast truncates the same way
        return f.astype(np.int32)
    ok = np.isfinite(f) & (np.abs(f) < np.float32(2.0**31))
    t = np.where(ok, np.trunc(np.where(ok, f, 0)), 0).astype(np.int64)
    t = np.where(ok, t, -(2**31))
    return ((t & 0xFF) ^ 0x80) - 0x80


def seqsum(a: np.ndarray) -> np.ndarray:
    """``float s = 0; for i: s += a[i]`` over the last axis, exactly (cumsum is left to right; +0 fixes -0)."""
    return np.cumsum(a, axis=-1, dtype=np.float32)[..., -1] + np.float32(0.0)


def seqsum_from_first(a: np.ndarray) -> np.ndarray:
    """``float s = a[0]; for i >= 1: s += a[i]`` over the last axis, exactly."""
    return np.cumsum(a, axis=-1, dtype=np.float32)[..., -1]


def first_absmax(x: np.ndarray) -> np.ndarray:
    """The value with the largest |x| over the last axis, the first one on ties (ggml's ``if (ax > amax)``)."""
    a = np.abs(x)
    a = np.where(np.isnan(a), np.float32(0), a)  # NaN never wins a C comparison
    idx = np.argmax(a, axis=-1)[..., None]
    amax = np.take_along_axis(a, idx, axis=-1)[..., 0]
    v = np.take_along_axis(x, idx, axis=-1)[..., 0]
    return np.where(amax > 0, v, np.float32(0.0)).astype(np.float32)  # ggml starts from +0.0


def first_min(x: np.ndarray) -> np.ndarray:
    """``min = x[0]; if (x[i] < min) min = x[i]`` over the last axis (keeps the first of tied -0.0/+0.0)."""
    return np.take_along_axis(x, np.argmin(x, axis=-1)[..., None], axis=-1)[..., 0]


def first_max(x: np.ndarray) -> np.ndarray:
    """``max = x[0]; if (x[i] > max) max = x[i]`` over the last axis."""
    return np.take_along_axis(x, np.argmax(x, axis=-1)[..., None], axis=-1)[..., 0]


def pos_max(x: np.ndarray) -> np.ndarray:
    """``float m = 0; for i: if (x[i] > m) m = x[i];`` over the last axis (+0.0 when nothing is positive)."""
    m = np.max(np.where(np.isnan(x), np.float32(0), x), axis=-1)
    return np.where(m > 0, m, np.float32(0.0)).astype(np.float32)


def f16_bits(x: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16: round to nearest even, as uint16 bit patterns."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).view(np.uint16)


def f16_round(x: np.ndarray) -> np.ndarray:
    """GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(x)): the float32 value a stored fp16 field reads back as."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


def f16_from_bytes(b: np.ndarray) -> np.ndarray:
    """Two little-endian bytes (last axis) -> float32 values."""
    return np.ascontiguousarray(b).view("<f2")[..., 0].astype(np.float32)


def u16_bytes(bits: np.ndarray) -> np.ndarray:
    """uint16 values -> [..., 2] little-endian bytes."""
    return np.ascontiguousarray(np.asarray(bits, dtype="<u2")[..., None]).view(np.uint8)


def f32c(v: float) -> np.float32:
    """A C float literal such as 0.1f."""
    return np.float32(v)


# ----------------------------------------------------------------------------- shared by the k-quants

_ERR = dict(divide="ignore", invalid="ignore", over="ignore", under="ignore")


def int8_wrap(v: np.ndarray) -> np.ndarray:
    return ((np.asarray(v, dtype=np.int64) & 0xFF) ^ 0x80) - 0x80


def requantize(xb: np.ndarray, L: np.ndarray, d: np.ndarray, dm: np.ndarray | None, lo: int, hi: int,
             offset: int) -> np.ndarray:
    """ggml's final pass: lq = nearest_int((x + dm) / d) clamped, for sub-blocks whose d != 0 (others keep L)."""
    with np.errstate(**_ERR):
        num = xb if dm is None else xb + dm[..., None]
        lq = np.clip(nearest_int(num / d[..., None]), lo, hi) + offset
    nb, ns, n = xb.shape
    return np.where((d != 0)[..., None], lq, L.reshape(nb, ns, n)).reshape(nb, ns * n)


def kquant_weights(x: np.ndarray, qw: np.ndarray, sigma_mult: int, sub: int) -> np.ndarray:
    """k-quant importance [NB, 256/sub, sub]: qw_j * sqrt(sigma2 + x_j^2), sigma2 = sigma_mult*sum(x^2)/256."""
    xs = x.reshape(-1, QK_K)
    sigma2 = (F(sigma_mult) * seqsum(xs * xs)) / F(QK_K)
    qb = np.broadcast_to(qw, x.shape).reshape(-1, QK_K)
    return (qb * np.sqrt(sigma2[:, None] + xs * xs)).reshape(-1, QK_K // sub, sub)
