"""GGUF k-quants Q4_K and Q5_K (8 sub-blocks of 32, 6-bit scales and mins), byte-exact with ggml-quants.c.

Weight = d * sc_j * q - dmin * m_j with sc_j, m_j 6-bit codes of sub-block j and q = 0..15 (Q4_K) or
0..31 (Q5_K). Without importance weights (``quantize_row_q4_K_ref``) each sub-block's (scale, min) comes
from ``make_qkx2_quants`` with weights sqrt(mean x^2) + |x|, and d = max scale / 63; with them
(``quantize_row_q4_K_impl``) from ``make_qkx3_quants`` with weights imatrix * sqrt(sigma^2 + x^2) and
d, dmin from ``make_qp_quants``. The twelve scale bytes pack eight 6-bit scales and eight 6-bit mins::

    byte:   0..3            4..7            8..11
            sc0..sc3        m0..m3          lo4(sc4..sc7) | lo4(m4..m7) << 4
            | hi2(sc4..7)<<6 | hi2(m4..7)<<6
"""

from __future__ import annotations

import numpy as np

from qlab.gguf.blocks import (
    QK_K,
    f16_bits,
    f16_from_bytes,
    f16_round,
    kquant_weights,
    nearest_int,
    pos_max,
    requantize,
    seqsum,
    u16_bytes,
)
from qlab.gguf.search import make_qkx_quants, make_qp_quants

F = np.float32
_ERR = dict(divide="ignore", invalid="ignore", over="ignore", under="ignore")


def pack_scales_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Eight scales and eight mins [NB, 8] (6-bit) -> the 12 scale bytes of Q4_K/Q5_K."""
    ls, lm = ls.astype(np.int64), lm.astype(np.int64)
    b = np.zeros((ls.shape[0], 12), dtype=np.int64)
    b[:, 0:4] = ls[:, :4]
    b[:, 4:8] = lm[:, :4]
    b[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    b[:, 0:4] = (b[:, 0:4] & 0xFF) | (((ls[:, 4:] >> 4) << 6) & 0xFF)
    b[:, 4:8] = (b[:, 4:8] & 0xFF) | (((lm[:, 4:] >> 4) << 6) & 0xFF)
    return (b & 0xFF).astype(np.uint8)


def unpack_scales_k4(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 scale bytes -> (scales [NB, 8], mins [NB, 8]) as ggml's get_scale_min_k4."""
    b = b.astype(np.int32)
    sc = np.concatenate([b[:, 0:4] & 63, (b[:, 8:12] & 0xF) | ((b[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([b[:, 4:8] & 63, (b[:, 8:12] >> 4) | ((b[:, 4:8] >> 6) << 4)], axis=1)
    return sc, mn


def _quantize_k45(x: np.ndarray, qw: np.ndarray | None, nmax: int, ref_search: tuple[float, float, int],
                  clamp_impl: bool):
    """Shared Q4_K/Q5_K path: returns (d f32 [NB], dmin f32 [NB], scale bytes [NB, 12], codes [NB, 256])."""
    xb = x.reshape(-1, 8, 32)
    nb = xb.shape[0]
    with np.errstate(**_ERR):
        if qw is None:
            av_x = np.sqrt(seqsum(xb * xb) / F(32))
            w = av_x[..., None] + np.abs(xb)
            rmin, rdelta, nstep = ref_search
            s, m, L = make_qkx_quants(xb.reshape(-1, 32), w.reshape(-1, 32), nmax, rmin, rdelta, nstep,
                                      use_mad=False, v3=False)
            s, m = s.reshape(nb, 8), m.reshape(nb, 8)
            max_s, max_m = pos_max(s), pos_max(m)
            inv_s = np.where(max_s > 0, F(63) / max_s, F(0))
            inv_m = np.where(max_m > 0, F(63) / max_m, F(0))
            ls = np.minimum(63, nearest_int(inv_s[:, None] * s) & 0xFF)
            lm = np.minimum(63, nearest_int(inv_m[:, None] * m) & 0xFF)
            d, dmin = max_s / F(63), max_m / F(63)
        else:
            w = kquant_weights(x, qw, 2, 32)
            s, m, L = make_qkx_quants(xb.reshape(-1, 32), w.reshape(-1, 32), nmax, -0.9, 0.05, 36,
                                      use_mad=False, v3=True)
            sw = seqsum(w)
            d, ls = make_qp_quants(s.reshape(nb, 8), 63, sw)
            dmin, lm = make_qp_quants(m.reshape(nb, 8), 63, sw)
            if clamp_impl:
                ls, lm = np.minimum(63, ls), np.minimum(63, lm)
        scb = pack_scales_k4(ls, lm)
        sc, mn = unpack_scales_k4(scb)
        dq = f16_round(d)[:, None] * sc.astype(np.float32)
        mq = f16_round(dmin)[:, None] * mn.astype(np.float32)
    L = requantize(xb, L, dq, mq, 0, nmax, 0)
    return d, dmin, scb, L


def quantize_q4_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """Q4_K (144 bytes / 256 weights, 4.5 bpw): w = d*sc_j*q - dmin*m_j, q = 0..15.

    ::

        byte 0      2        4             16                                 144
             +------+--------+-------------+----------------------------------+
             | d f16|dmin f16| scales[12]  | qs[128]: low nibble, high nibble |
             +------+--------+-------------+----------------------------------+
        chunk c = 0..3, l = 0..31:  qs[32c + l] = q[64c + l] | q[64c + 32 + l] << 4
    """
    d, dmin, scb, L = _quantize_k45(x, qw, 15, (-1.0, 0.1, 20), clamp_impl=False)
    Lr = L.reshape(-1, 4, 2, 32)
    qs = (Lr[:, :, 0] | (Lr[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([u16_bytes(f16_bits(d)), u16_bytes(f16_bits(dmin)), scb, (qs & 0xFF).astype(np.uint8)],
                          axis=1)


def quantize_q5_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """Q5_K (176 bytes / 256 weights, 5.5 bpw): w = d*sc_j*q - dmin*m_j, q = 0..31.

    ::

        byte 0      2        4             16            48                     176
             +------+--------+-------------+-------------+----------------------+
             | d f16|dmin f16| scales[12]  | qh[32]      | qs[128]: low nibbles |
             +------+--------+-------------+-------------+----------------------+
        qh: bit j of byte l = bit 4 of q[32j + l];  qs as Q4_K with q & 15
    """
    d, dmin, scb, L = _quantize_k45(x, qw, 31, (-0.5, 0.1, 15), clamp_impl=True)
    nb = L.shape[0]
    hb = (L >> 4) & 1
    qh = np.bitwise_or.reduce(hb.reshape(nb, 8, 32) << np.arange(8).reshape(1, 8, 1), axis=1)
    Lr = (L & 0xF).reshape(-1, 4, 2, 32)
    qs = (Lr[:, :, 0] | (Lr[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([u16_bytes(f16_bits(d)), u16_bytes(f16_bits(dmin)), scb, qh.astype(np.uint8),
                           qs.astype(np.uint8)], axis=1)


def _dequant(b: np.ndarray, q: np.ndarray) -> np.ndarray:
    d, dmin = f16_from_bytes(b[:, 0:2])[:, None], f16_from_bytes(b[:, 2:4])[:, None]
    sc, mn = unpack_scales_k4(b[:, 4:16])
    d1 = d * sc.astype(np.float32)
    m1 = dmin * mn.astype(np.float32)
    return (d1[..., None] * q.reshape(-1, 8, 32).astype(np.float32) - m1[..., None]).reshape(-1, QK_K)


def _low_nibbles(qs: np.ndarray) -> np.ndarray:
    qs = qs.reshape(-1, 4, 1, 32).astype(np.int32)
    return np.concatenate([qs & 0xF, qs >> 4], axis=2).reshape(-1, QK_K)


def dequantize_q4_k(b: np.ndarray) -> np.ndarray:
    """[NB, 144] -> [NB, 256] float32."""
    return _dequant(b, _low_nibbles(b[:, 16:144]))


def dequantize_q5_k(b: np.ndarray) -> np.ndarray:
    """[NB, 176] -> [NB, 256] float32."""
    qh = b[:, 16:48].astype(np.int32)
    hb = ((qh[:, None, :] >> np.arange(8).reshape(1, 8, 1)) & 1).reshape(-1, QK_K)
    return _dequant(b, _low_nibbles(b[:, 48:176]) + 16 * hb)

