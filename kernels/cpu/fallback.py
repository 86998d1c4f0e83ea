"""The vectorised torch path used when no C compiler is available: same quantization, float matmul.

Activations take the same round trip as in the C kernels (Q8_0: d = amax/127, q = rne(x * 127/amax);
Q8_K: iscale = -127/max, q = min(127, rne(iscale * x)), d = 1/iscale); weights are dequantized by
``qlab.gguf.dequantize``; then Y = X_hat @ W_hat^T in float32. Equal to the C kernels up to float summation
order (relative error ~1e-6), not bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch

from qlab.gguf import dequantize
from qlab.gguf.activations import q8_roundtrip
from qlab.gguf.types import TYPES

__all__ = ["q8_roundtrip", "dequantize_rows", "gemm_torch", "vec_dot_torch"]


def dequantize_rows(qtype: str, W: np.ndarray | torch.Tensor, N: int) -> torch.Tensor:
    """N rows of qtype blocks -> float32 [N, K] (qlab.gguf.dequantize)."""
    w = np.asarray(W.numpy() if isinstance(W, torch.Tensor) else W).reshape(-1)
    return torch.from_numpy(np.ascontiguousarray(dequantize(w, qtype, _n_weights(qtype, w.size)))).reshape(N, -1)


def _n_weights(qtype: str, nbytes: int) -> int:
    t = TYPES[qtype.upper()]
    return nbytes // t.type_size * t.block_size


def gemm_torch(qtype: str, W: np.ndarray | torch.Tensor, X: torch.Tensor, N: int) -> torch.Tensor:
    act = TYPES[qtype.upper()].vec_dot_type
    return q8_roundtrip(X.to(torch.float32), act) @ dequantize_rows(qtype, W, N).T


def vec_dot_torch(qtype: str, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    act = TYPES[qtype.upper()].vec_dot_type
    n = _n_weights(qtype, x.numel() if isinstance(x, torch.Tensor) else x.size)
    xa = np.asarray(x.numpy() if isinstance(x, torch.Tensor) else x).reshape(-1)
    ya = np.asarray(y.numpy() if isinstance(y, torch.Tensor) else y).reshape(-1)
    return float(np.dot(dequantize(xa, qtype, n).astype(np.float64), dequantize(ya, act, n).astype(np.float64)))
