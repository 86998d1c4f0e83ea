"""The vectorised torch path used when no C compiler is available: same quantization, float matmul.

Activations take the same round trip as in the C kernels (Q8_0: d = amax/127, q = rne(x * 127/amax);
Q8_K: iscale = -127/max, q = min(127, rne(iscale * x)), d = 1/iscale); weights are dequantized by
``qlab.gguf.dequantize``; then Y = X_hat @ W_hat^T in float32. Equal to the C kernels up to float summation
order (relative error ~1e-6), not bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch


def q8_roundtrip(X: torch.Tensor, act_type: str) -> torch.Tensor:
    """X [M, K] float32 -> dequantized Q8_0 / Q8_K activations (what the integer kernels multiply)."""
    M, K = X.shape
    if act_type == "Q8_0":
        xb = X.reshape(M, K // 32, 32)
        amax = xb.abs().amax(-1, keepdim=True)
        d = (amax / 127.0).to(torch.float16).to(torch.float32)
        # tensor / tensor: correctly rounded (torch evaluates scalar / tensor as scalar * reciprocal)
        iscale = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax.clamp_min(1e-38), torch.zeros_like(amax))
        q = torch.round(xb * iscale).clamp(-128, 127)
        return (q * d).reshape(M, K)
    xb = X.reshape(M, K // 256, 256)
    idx = xb.abs().argmax(-1, keepdim=True)
    mx = torch.gather(xb, -1, idx)
    safe = torch.where(mx != 0, mx, torch.ones_like(mx))
    iscale = torch.full_like(safe, -127.0) / safe
    q = torch.round(iscale * xb).clamp(max=127)
    d = torch.where(mx != 0, torch.ones_like(iscale) / iscale, torch.zeros_like(mx))
    return (q * d).reshape(M, K)


def dequantize_rows(qtype: str, W: np.ndarray | torch.Tensor, N: int) -> torch.Tensor:
    """N rows of qtype blocks -> float32 [N, K] (qlab.gguf.dequantize)."""
    from qlab.gguf import dequantize

    w = np.asarray(W.numpy() if isinstance(W, torch.Tensor) else W).reshape(-1)
    return torch.from_numpy(np.ascontiguousarray(dequantize(w, qtype, _n_weights(qtype, w.size)))).reshape(N, -1)


def _n_weights(qtype: str, nbytes: int) -> int:
    from qlab.kernels.cpu import QTYPES

    _, bs, ts, _ = QTYPES[qtype.upper()]
    return nbytes // ts * bs


def gemm_torch(qtype: str, W: np.ndarray | torch.Tensor, X: torch.Tensor, N: int) -> torch.Tensor:
    from qlab.kernels.cpu import QTYPES

    act = QTYPES[qtype.upper()][3]
    return q8_roundtrip(X.to(torch.float32), act) @ dequantize_rows(qtype, W, N).T


def vec_dot_torch(qtype: str, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    from qlab.kernels.cpu import QTYPES

    from qlab.gguf import dequantize

    act = QTYPES[qtype.upper()][3]
    n = _n_weights(qtype, x.numel() if isinstance(x, torch.Tensor) else x.size)
    xa = np.asarray(x.numpy() if isinstance(x, torch.Tensor) else x).reshape(-1)
    ya = np.asarray(y.numpy() if isinstance(y, torch.Tensor) else y).reshape(-1)
    return float(np.dot(dequantize(xa, qtype, n).astype(np.float64), dequantize(ya, act, n).astype(np.float64)))
