"""GGUF's legacy 32-weight block formats Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, byte-exact with ggml-quants.c.

Without importance weights ggml rounds naively (``quantize_row_*_ref``): symmetric types take
d = max / -2^(b-1) where max is the signed value of largest magnitude, q = trunc(x/d + 2^(b-1) + 0.5);
asymmetric types take d = (max - min) / (2^b - 1), m = min, q = trunc((x - m)/d + 0.5).
With importance weights (``quantize_row_*_impl``) each block's scale is searched instead
(make_qx_quants for Q4_0/Q5_0, make_qkx3_quants for Q4_1/Q5_1) with weights
w_j = imatrix_j * sqrt(sigma^2 + x_j^2), sigma^2 = mean of x^2 over the row. Q8_0 ignores them.

Codes j and j+16 of a block share byte j (low nibble, high nibble).
"""

from __future__ import annotations

import numpy as np

from qlab.gguf.blocks import (
    c_float_to_int8,
    f16_bits,
    f16_from_bytes,
    f32c,
    first_absmax,
    first_max,
    first_min,
    seqsum,
    u16_bytes,
)
from qlab.gguf.search import make_qkx_quants, make_qx_quants

F = np.float32
_ERR = dict(divide="ignore", invalid="ignore", over="ignore", under="ignore")


def _blocks(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, 32)


def _nibbles(L: np.ndarray, mask: bool = False) -> np.ndarray:
    """Codes [NB, 32] -> qs [NB, 16]: byte j = L[j] | L[j+16] << 4 (Q5 types mask each code to 4 bits first)."""
    lo, hi = L[:, :16], L[:, 16:]
    if mask:
        lo, hi = lo & 0xF, hi & 0xF
    return ((lo & 0xFF) | ((hi << 4) & 0xFF)).astype(np.uint8)


def _high_bits(L: np.ndarray) -> np.ndarray:
    """5th bits of codes [NB, 32] -> qh [NB, 4]: bit j of the little-endian uint32 = bit 4 of L[j]."""
    bits = ((L.astype(np.uint32) >> 4) & 1) << np.arange(32, dtype=np.uint32)
    return np.ascontiguousarray(np.bitwise_or.reduce(bits, axis=1).astype("<u4")[:, None]).view(np.uint8)


def _weights(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """ggml's legacy-type importance: qw_j * sqrt(sigma2 + x_j^2), sigma2 = sum(x^2)/n_per_row per row."""
    sigma2 = seqsum(x * x) / F(x.shape[1])
    return _blocks(qw[None, :] * np.sqrt(sigma2[:, None] + x * x))


def _sym_ref(x: np.ndarray, half: int, top: int) -> tuple[np.ndarray, np.ndarray]:
    """quantize_row_q4_0_ref / q5_0_ref: (d [NB], codes [NB, 32])."""
    xb = _blocks(x)
    with np.errstate(**_ERR):
        d = first_absmax(xb) / F(-half)
        inv = np.where(d != 0, F(1) / d, F(0))
        L = np.minimum(top, c_float_to_int8(xb * inv[:, None] + f32c(half + 0.5)))
    return d, L


def _asym_ref(x: np.ndarray, top: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """quantize_row_q4_1_ref / q5_1_ref: (d [NB], m [NB], codes [NB, 32])."""
    xb = _blocks(x)
    mn, mx = first_min(xb), first_max(xb)
    with np.errstate(**_ERR):
        d = (mx - mn) / F(top)
        inv = np.where(d != 0, F(1) / d, F(0))
        L = c_float_to_int8((xb - mn[:, None]) * inv[:, None] + F(0.5))
    if clamp:
        L = np.minimum(top, L)
    return d, mn, L & 0xFF


def quantize_q4_0(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """Q4_0 (18 bytes / 32 weights, 4.5 bpw): w = d * (q - 8).

    ::

        byte  0      2                              18
              +------+------------------------------+
              | d f16| qs[16]: lo nibble = q[j],    |
              |      |        hi nibble = q[j+16]   |
              +------+------------------------------+
    """
    if qw is None:
        d, L = _sym_ref(x, 8, 15)
    else:
        d, L = make_qx_quants(_blocks(x), 8, _weights(x, qw))
    return np.concatenate([u16_bytes(f16_bits(d)), _nibbles(L)], axis=1)


def quantize_q4_1(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """Q4_1 (20 bytes / 32 weights, 5.0 bpw): w = d * q + m (q = 0..15).

    ::

        byte  0      2      4                       20
              +------+------+-----------------------+
              | d f16| m f16| qs[16] (as Q4_0)      |
              +------+------+-----------------------+
    """
    if qw is None:
        d, m, L = _asym_ref(x, 15, clamp=True)
    else:
        d, the_min, L = _qkx3(x, qw, 15)
        m = -the_min
    return np.concatenate([u16_bytes(f16_bits(d)), u16_bytes(f16_bits(m)), _nibbles(L)], axis=1)


def quantize_q5_0(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """Q5_0 (22 bytes / 32 weights, 5.5 bpw): w = d * (q - 16), q = 5 bits.

    ::

        byte  0      2             6                     22
              +------+-------------+---------------------+
              | d f16| qh u32:     | qs[16]: low 4 bits  |
              |      | bit j = q[j]>>4                   |
              +------+-------------+---------------------+
    """
    if qw is None:
        d, L = _sym_ref(x, 16, 31)
    else:
        d, L = make_qx_quants(_blocks(x), 16, _weights(x, qw))
    return np.concatenate([u16_bytes(f16_bits(d)), _high_bits(L), _nibbles(L, mask=True)], axis=1)


def quantize_q5_1(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """Q5_1 (24 bytes / 32 weights, 6.0 bpw): w = d * q + m (q = 0..31).

    ::

        byte  0      2      4             8                24
              +------+------+-------------+----------------+
              | d f16| m f16| qh u32      | qs[16]         |
              +------+------+-------------+----------------+
    """
    if qw is None:
        d, m, L = _asym_ref(x, 31, clamp=False)
    else:
        d, the_min, L = _qkx3(x, qw, 31)
        m = -the_min
    fields = [u16_bytes(f16_bits(d)), u16_bytes(f16_bits(m)), _high_bits(L), _nibbles(L, mask=True)]
    return np.concatenate(fields, axis=1)


def quantize_q8_0(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """Q8_0 (34 bytes / 32 weights, 8.5 bpw): w = d * q, d = max|x| / 127, q = roundf(x / d).

    Importance weights are ignored (as in ggml). ::

        byte  0      2                                34
              +------+--------------------------------+
              | d f16| qs[32] int8                    |
              +------+--------------------------------+
    """
    xb = _blocks(x)
    with np.errstate(**_ERR):
        d = np.abs(xb).max(axis=1) / F(127)
        inv = np.where(d != 0, F(1) / d, F(0))
        v = (xb * inv[:, None]).astype(np.float64)  # roundf: half away from zero (exact in float64)
    q = (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int8)
    return np.concatenate([u16_bytes(f16_bits(d)), q.view(np.uint8)], axis=1)


def _qkx3(x: np.ndarray, qw: np.ndarray, nmax: int):
    return make_qkx_quants(_blocks(x), _weights(x, qw), nmax, -0.9, 0.05, 36, use_mad=False, v3=True)


# ----------------------------------------------------------------------------- dequantization


def _codes4(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.int32)


def _codes5(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    h = np.ascontiguousarray(qh).view("<u4")[:, :1]
    hi = ((h >> np.arange(32, dtype=np.uint32)) & 1).astype(np.int32) << 4
    return _codes4(qs) | hi


def dequantize_q4_0(b: np.ndarray) -> np.ndarray:
    """[NB, 18] bytes -> [NB, 32] float32 (dequantize_row_q4_0)."""
    return (_codes4(b[:, 2:]) - 8).astype(np.float32) * f16_from_bytes(b[:, 0:2])[:, None]


def dequantize_q4_1(b: np.ndarray) -> np.ndarray:
    """[NB, 20] bytes -> [NB, 32] float32."""
    d, m = f16_from_bytes(b[:, 0:2])[:, None], f16_from_bytes(b[:, 2:4])[:, None]
    return _codes4(b[:, 4:]).astype(np.float32) * d + m


def dequantize_q5_0(b: np.ndarray) -> np.ndarray:
    """[NB, 22] bytes -> [NB, 32] float32."""
    return (_codes5(b[:, 2:6], b[:, 6:]) - 16).astype(np.float32) * f16_from_bytes(b[:, 0:2])[:, None]


def dequantize_q5_1(b: np.ndarray) -> np.ndarray:
    """[NB, 24] bytes -> [NB, 32] float32."""
    d, m = f16_from_bytes(b[:, 0:2])[:, None], f16_from_bytes(b[:, 2:4])[:, None]
    return _codes5(b[:, 4:8], b[:, 8:]).astype(np.float32) * d + m


def dequantize_q8_0(b: np.ndarray) -> np.ndarray:
    """[NB, 34] bytes -> [NB, 32] float32."""
    return np.ascontiguousarray(b[:, 2:]).view(np.int8).astype(np.float32) * f16_from_bytes(b[:, 0:2])[:, None]

