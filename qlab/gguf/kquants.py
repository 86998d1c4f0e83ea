"""GGUF k-quants Q2_K, Q3_K, Q6_K and the activation type Q8_K, byte-exact with ggml-quants.c.

A k-quant super-block holds 256 weights in sub-blocks of 16 (Q2_K, Q3_K, Q6_K) or 32 (Q4_K, Q5_K, in
``kquants_k45``). Each sub-block gets its own scale (and min), found by a least-squares search
(``qlab.gguf.search``); the sub-block scales are themselves quantized against one fp16 super-scale ``d``.
Without importance weights ggml uses ``quantize_row_*_ref`` (weights |x|, x^2 or sqrt-mean + |x| by type,
super-scale = max sub-scale); with them ``quantize_row_*_impl`` (weights imatrix * sqrt(sigma^2 + x^2),
super-scale by ``make_qp_quants``/``make_qx_quants``). Finally every weight is re-rounded against the
fp16-stored scales ("requantize").

Q2_K and Q3_K store code e of a super-block in 2-bit field (e mod 128) // 32 of byte (e // 128) * 32 + e mod 32.
"""

from __future__ import annotations

import numpy as np

from qlab.gguf.blocks import (
    QK_K,
    f16_bits,
    f16_from_bytes,
    f16_round,
    first_absmax,
    int8_wrap,
    kquant_weights,
    nearest_int,
    pos_max,
    requantize,
    seqsum,
    u16_bytes,
)
from qlab.gguf.search import make_q3_quants, make_qkx_quants, make_qp_quants, make_qx_quants

F = np.float32
_ERR = dict(divide="ignore", invalid="ignore", over="ignore", under="ignore")


def pack_2bit(L: np.ndarray) -> np.ndarray:
    """Codes [NB, 256] (0..3) -> qs [NB, 64]: qs[n*32 + l] = OR_k L[n*128 + k*32 + l] << 2k."""
    Lr = L.reshape(-1, 2, 4, 32).astype(np.int64)
    qs = Lr[:, :, 0] | (Lr[:, :, 1] << 2) | (Lr[:, :, 2] << 4) | (Lr[:, :, 3] << 6)
    return (qs & 0xFF).astype(np.uint8).reshape(-1, 64)


def unpack_2bit(qs: np.ndarray) -> np.ndarray:
    """qs [NB, 64] -> codes [NB, 256] (inverse of pack_2bit)."""
    shifts = (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    return ((qs.reshape(-1, 2, 1, 32) >> shifts) & 3).reshape(-1, 256).astype(np.int32)


# ----------------------------------------------------------------------------- Q2_K


def quantize_q2_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """Q2_K (84 bytes / 256 weights, 2.625 bpw): w = d*sc_j*q - dmin*m_j, q = 0..3, 16 sub-blocks of 16.

    ::

        byte 0                16                             80       82        84
             +----------------+------------------------------+--------+---------+
             | scales[16]:    | qs[64]: 4 codes per byte,    | d f16  | dmin f16|
             | lo4 = sc_j,    | field k of byte n*32+l =     |        |         |
             | hi4 = m_j      | q[n*128 + k*32 + l]          |        |         |
             +----------------+------------------------------+--------+---------+
    """
    xb = x.reshape(-1, 16, 16)
    nb = xb.shape[0]
    with np.errstate(**_ERR):
        if qw is None:
            s, m, L = make_qkx_quants(xb.reshape(-1, 16), np.abs(xb).reshape(-1, 16), 3, -0.5, 0.1, 15,
                                      use_mad=True, v3=False)
            s, m = s.reshape(nb, 16), m.reshape(nb, 16)
            max_s, max_m = pos_max(s), pos_max(m)
            ls = nearest_int(np.where(max_s > 0, F(15) / max_s, F(0))[:, None] * s)
            lm = nearest_int(np.where(max_m > 0, F(15) / max_m, F(0))[:, None] * m)
            sc = np.where((max_s > 0)[:, None], ls & 0xFF, 0) | np.where((max_m > 0)[:, None], (lm << 4) & 0xFF, 0)
            d = np.where(max_s > 0, max_s / F(15), F(0))
            dmin = np.where(max_m > 0, max_m / F(15), F(0))
        else:
            w = kquant_weights(x, qw, 1, 16)
            s, m, L = make_qkx_quants(xb.reshape(-1, 16), w.reshape(-1, 16), 3, -0.9, 0.05, 36, use_mad=False,
                                      v3=True)
            sw = seqsum(w)
            d, Ls = make_qp_quants(s.reshape(nb, 16), 15, sw)
            dmin, Lm = make_qp_quants(m.reshape(nb, 16), 15, sw)
            sc = (Ls | (Lm << 4)) & 0xFF
        dq = f16_round(d)[:, None] * (sc & 0xF).astype(np.float32)
        mq = f16_round(dmin)[:, None] * (sc >> 4).astype(np.float32)
    L = requantize(xb, L, dq, mq, 0, 3, 0)
    return np.concatenate([sc.astype(np.uint8), pack_2bit(L), u16_bytes(f16_bits(d)), u16_bytes(f16_bits(dmin))],
                          axis=1)


def dequantize_q2_k(b: np.ndarray) -> np.ndarray:
    """[NB, 84] -> [NB, 256] float32: dl*q - ml per 16-weight sub-block."""
    sc = b[:, :16]
    d, dmin = f16_from_bytes(b[:, 80:82])[:, None], f16_from_bytes(b[:, 82:84])[:, None]
    dl = d * (sc & 0xF).astype(np.float32)
    ml = dmin * (sc >> 4).astype(np.float32)
    q = unpack_2bit(b[:, 16:80]).astype(np.float32).reshape(-1, 16, 16)
    return (dl[..., None] * q - ml[..., None]).reshape(-1, 256)


# ----------------------------------------------------------------------------- Q3_K


def _pack_scales_q3(lq: np.ndarray) -> np.ndarray:
    """16 six-bit values [NB, 16] -> 12 bytes: low nibbles in bytes 0..7, top 2 bits in bytes 8..11."""
    lq = lq.astype(np.int64)
    b = np.zeros((lq.shape[0], 12), dtype=np.int64)
    b[:, :8] = (lq[:, :8] & 0xF) | ((lq[:, 8:] & 0xF) << 4)
    hi = lq >> 4
    for j in range(16):
        b[:, 8 + j % 4] |= hi[:, j] << (2 * (j // 4))
    return (b & 0xFF).astype(np.uint8)


def _unpack_scales_q3(b: np.ndarray) -> np.ndarray:
    """12 bytes -> the 16 signed 6-bit scales (sc - 32), int32 [NB, 16]."""
    b = b.astype(np.int32)
    lo = np.concatenate([b[:, :8] & 0xF, b[:, :8] >> 4], axis=1)
    j = np.arange(16)
    hi = (b[:, 8 + j % 4] >> (2 * (j // 4))) & 3
    return int8_wrap((lo | (hi << 4)) - 32)


def quantize_q3_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """Q3_K (110 bytes / 256 weights, 3.4375 bpw): w = d*(sc_j - 32)*(q - 4), q = 0..7, 16 sub-blocks of 16.

    ::

        byte 0              32                        96              108     110
             +--------------+-------------------------+---------------+-------+
             | hmask[32]:   | qs[64]: low 2 bits,     | scales[12]:   | d f16 |
             | 3rd bits     | layout as Q2_K          | 16 x 6 bits   |       |
             +--------------+-------------------------+---------------+-------+
        hmask: bit k of byte l = bit 2 of q[32k + l]
        scales: byte j (j < 8) = lo4(s[j]) | lo4(s[j+8]) << 4; byte 8 + j%4 |= hi2(s[j]) << 2*(j//4)
    """
    xb = x.reshape(-1, 16, 16)
    nb = xb.shape[0]
    with np.errstate(**_ERR):
        if qw is None:
            s, L = make_q3_quants(xb.reshape(-1, 16), 4)
            s = s.reshape(nb, 16)
            ms = first_absmax(s)
            nz = ms != 0
            iscale = F(-32) / ms
            lq = np.clip(int8_wrap(nearest_int(iscale[:, None] * s)), -32, 31) + 32
            lq = np.where(nz[:, None], lq, 0)
            scb = np.where(nz[:, None], _pack_scales_q3(lq), 0).astype(np.uint8)
            d = np.where(nz, F(1) / iscale, F(0))
        else:
            w = kquant_weights(x, qw, 2, 16)
            s, L = make_qx_quants(xb.reshape(-1, 16), 4, w.reshape(-1, 16))
            d, Ls = make_qx_quants(s.reshape(nb, 16), 32, seqsum(w))
            scb = _pack_scales_q3(Ls)
        dq = f16_round(d)[:, None] * _unpack_scales_q3(scb).astype(np.float32)
    L = requantize(xb, L, dq, None, -4, 3, 4)
    hb = (L > 3).astype(np.int64)
    L = L - 4 * hb
    hmask = np.bitwise_or.reduce(hb.reshape(nb, 8, 32) << np.arange(8).reshape(1, 8, 1), axis=1)
    return np.concatenate([hmask.astype(np.uint8), pack_2bit(L), scb, u16_bytes(f16_bits(d))], axis=1)


def dequantize_q3_k(b: np.ndarray) -> np.ndarray:
    """[NB, 110] -> [NB, 256] float32."""
    d = f16_from_bytes(b[:, 108:110])[:, None]
    dl = d * _unpack_scales_q3(b[:, 96:108]).astype(np.float32)
    hm = b[:, :32].astype(np.int32)
    hbit = ((hm[:, None, :] >> np.arange(8).reshape(1, 8, 1)) & 1).reshape(-1, 256)
    q = unpack_2bit(b[:, 32:96]) - np.where(hbit != 0, 0, 4)
    return (dl[..., None] * q.reshape(-1, 16, 16).astype(np.float32)).reshape(-1, 256)


# ----------------------------------------------------------------------------- Q6_K


def quantize_q6_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """Q6_K (210 bytes / 256 weights, 6.5625 bpw): w = d*sc_j*(q - 32), q = 0..63, 16 sub-blocks of 16.

    ::

        byte 0                     128                  192             208     210
             +---------------------+--------------------+---------------+-------+
             | ql[128]: low nibbles| qh[64]: top 2 bits | scales[16]    | d f16 |
             |                     |                    | int8          |       |
             +---------------------+--------------------+---------------+-------+
        half n = 0, 1 of the block, l = 0..31:
             ql[64n + l]      = q[128n + l]      & 15 | (q[128n + 64 + l] & 15) << 4
             ql[64n + 32 + l] = q[128n + 32 + l] & 15 | (q[128n + 96 + l] & 15) << 4
             qh[32n + l]      = OR_k (q[128n + 32k + l] >> 4) << 2k
    """
    xb = x.reshape(-1, 16, 16)
    nb = xb.shape[0]
    with np.errstate(**_ERR):
        qb = None
        if qw is not None:
            qb = np.broadcast_to(qw, x.shape).reshape(-1, 16)
        s, L = make_qx_quants(xb.reshape(-1, 16), 32, qb)
        s = s.reshape(nb, 16)
        ms = first_absmax(s)
        zero = np.abs(ms) < F(1e-15)
        iscale = F(-128) / ms
        sc = int8_wrap(np.minimum(127, nearest_int(iscale[:, None] * s)))
        d = F(1) / iscale
        dq = f16_round(d)[:, None] * sc.astype(np.float32)
    L = requantize(xb, L, dq, None, -32, 31, 32).reshape(nb, 2, 4, 32)
    lo, hi = L & 0xF, L >> 4
    ql = np.concatenate([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2)
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    out = np.concatenate([(ql.reshape(nb, 128) & 0xFF).astype(np.uint8), (qh.reshape(nb, 64) & 0xFF).astype(np.uint8),
                          (sc & 0xFF).astype(np.uint8), u16_bytes(f16_bits(d))], axis=1)
    out[zero] = 0
    return out


def dequantize_q6_k(b: np.ndarray) -> np.ndarray:
    """[NB, 210] -> [NB, 256] float32: (d*sc_j)*(q - 32)."""
    ql = b[:, :128].reshape(-1, 2, 1, 64).astype(np.int32)
    qh = b[:, 128:192].reshape(-1, 2, 1, 32).astype(np.int32)
    k = np.arange(4).reshape(1, 1, 4, 1)
    low = np.where(k % 2 == 0, ql[..., :32], ql[..., 32:])
    low = np.where(k < 2, low & 0xF, low >> 4)
    q = (low | (((qh >> (2 * k)) & 3) << 4)) - 32
    sc = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(np.float32)
    d = f16_from_bytes(b[:, 208:210])[:, None]
    return ((d * sc)[..., None] * q.reshape(-1, 16, 16).astype(np.float32)).reshape(-1, 256)


# ----------------------------------------------------------------------------- Q8_K


def quantize_q8_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """Q8_K (292 bytes / 256 values): q = min(127, nearest_int(-127/max * x)), d = 1/iscale (f32), bsums.

    The activation side of ggml's k-quant dot products (quantize_row_q8_K_ref). ::

        byte 0        4                                     260                   292
             +--------+-------------------------------------+---------------------+
             | d f32  | qs[256] int8                        | bsums[16] int16     |
             +--------+-------------------------------------+---------------------+
    """
    xb = x.reshape(-1, QK_K)
    with np.errstate(**_ERR):
        mx = first_absmax(xb)
        iscale = F(-127) / mx
        q = int8_wrap(np.minimum(127, nearest_int(iscale[:, None] * xb)))
        d = (F(1) / iscale).astype(np.float32)
    zero = mx == 0
    q[zero] = 0
    d[zero] = 0
    bsums = q.reshape(-1, 16, 16).sum(axis=2)
    return np.concatenate([np.ascontiguousarray(d.astype("<f4")[:, None]).view(np.uint8),
                           q.astype(np.int8).view(np.uint8),
                           np.ascontiguousarray(_int16(bsums).astype("<i2")).view(np.uint8)], axis=1)


def _int16(v: np.ndarray) -> np.ndarray:
    return ((v.astype(np.int64) & 0xFFFF) ^ 0x8000) - 0x8000


def dequantize_q8_k(b: np.ndarray) -> np.ndarray:
    """[NB, 292] -> [NB, 256] float32: d * q."""
    d = np.ascontiguousarray(b[:, :4]).view("<f4").astype(np.float32)
    return d * np.ascontiguousarray(b[:, 4:260]).view(np.int8).astype(np.float32)

