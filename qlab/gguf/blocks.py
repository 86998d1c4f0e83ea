"""The exact float32 arithmetic helpers shared by every GGUF block format (the types themselves: qlab.gguf.types).

The helpers reproduce ggml-quants.c's float arithmetic bit for bit: every operation in float32, in the
same order, sums accumulated left to right (``seqsum``), ``nearest_int`` by the same magic-number trick,
fp16 by round-to-nearest-even.
"""

from __future__ import annotations

import numpy as np

QK_K = 256
F = np.float32
GROUP_MAX_EPS = np.float32(1e-15)


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
