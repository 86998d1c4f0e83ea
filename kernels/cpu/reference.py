"""What the SIMD kernels compute, step by step, in numpy and exact arithmetic (for teaching and for tests).

Q4_0 x Q8_0 (ggml's AVX2 order, which every qlab path follows), for blocks b = 0..nb-1:

    codes      q = nibbles of the 16 bytes (low nibbles = weights 0..15, high = 16..31), w = d_w (q - 8)
    lanes      L[b, l] = sum_{t<4} (q[4l+t] - 8) * y[4l+t]              (exact int32, l = 0..7)
    scale      s[b] = fp32(d_w[b] * d_x[b])                              (one rounding)
    accumulate acc[l] = fma(s[b], L[b, l], acc[l])                      (one rounding per block and lane)
    result     ((acc0 + acc4) + (acc2 + acc6)) + ((acc1 + acc5) + (acc3 + acc7))

``fma`` is evaluated exactly (fractions) and rounded once to float32, so the result is bit-exact.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def f32_round(v: Fraction) -> np.float32:
    """The float32 nearest to an exact rational (ties to even): the single rounding of an fma."""
    c = np.float32(float(v))  # float() is correctly rounded to float64; fix a possible double rounding below
    cands = [np.nextafter(c, np.float32(-np.inf)), c, np.nextafter(c, np.float32(np.inf))]
    cands = [x for x in cands if np.isfinite(x)]
    best = min(cands, key=lambda x: (abs(Fraction(float(x)) - v), int(np.float32(x).view(np.uint32)) & 1))
    return np.float32(best)


def q4_0_codes(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 bytes [nb * 18] -> (d_w float32 [nb], codes q - 8 int8 [nb, 32])."""
    b = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(-1, 18)
    d = b[:, :2].copy().view(np.float16).astype(np.float32).ravel()
    qs = b[:, 2:]
    q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.int8) - 8
    return d, q


def q8_0_codes(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0 bytes [nb * 34] -> (d float32 [nb], codes int8 [nb, 32])."""
    b = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(-1, 34)
    return b[:, :2].copy().view(np.float16).astype(np.float32).ravel(), b[:, 2:].copy().view(np.int8)


def lanes(qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
    """The eight int32 lanes per block: sums of 4 consecutive products (what dpbusd / maddubs+madd produce)."""
    p = qx.astype(np.int32) * qy.astype(np.int32)
    return p.reshape(p.shape[0], 8, 4).sum(-1)


def hsum8(acc: list[np.float32]) -> np.float32:
    """ggml's hsum_float_8: (a0+a4, a1+a5, a2+a6, a3+a7) -> (r0+r2, r1+r3) -> sum, in float32."""
    r = [np.float32(acc[i + 4] + acc[i]) for i in range(4)]
    return np.float32(np.float32(r[0] + r[2]) + np.float32(r[1] + r[3]))


def dot_q4_0_q8_0(x_blocks: np.ndarray, y_blocks: np.ndarray) -> dict:
    """Q4_0 weights . Q8_0 activations, every intermediate exposed: lanes, block scales, accumulators, result."""
    dx, qx = q4_0_codes(x_blocks)
    dy, qy = q8_0_codes(y_blocks)
    if qx.shape != qy.shape:
        from qlab.errors import BadArgumentError

        raise BadArgumentError(f"block counts differ: {qx.shape[0]} Q4_0 vs {qy.shape[0]} Q8_0 blocks")
    L = lanes(qx, qy)
    s = (dx * dy).astype(np.float32)  # float32 product, one rounding
    acc = [np.float32(0)] * 8
    for b in range(L.shape[0]):
        acc = [f32_round(Fraction(float(s[b])) * int(L[b, j]) + Fraction(float(acc[j]))) for j in range(8)]
    return {"d_w": dx, "d_x": dy, "codes_w": qx, "codes_x": qy, "lanes": L, "scales": s,
            "acc": np.array(acc, np.float32), "result": hsum8(acc)}
