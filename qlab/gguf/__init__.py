"""GGUF block formats from scratch: ``quantize`` / ``dequantize`` byte-exact with llama.cpp's ggml.

    raw = quantize(W, "Q4_K")                 # float32 [rows, cols] -> ggml's block bytes, rows concatenated
    raw = quantize(W, "Q4_K", imatrix=imp)    # with importance weights (one per column), as llama-quantize
    W_hat = dequantize(raw, "Q4_K", W.shape)

Types: Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 (blocks of 32) and Q2_K Q3_K Q4_K Q5_K Q6_K (super-blocks of 256),
plus Q8_K (the activation format of ggml's k-quant dot products). ``QTYPES`` / ``block_info`` give each
type's entry in the GGUF type registry (``qlab.gguf.types``: id, block geometry, functions); the layouts are
drawn there and in ``qlab.gguf.legacy`` and ``qlab.gguf.kquants``.
"""

from __future__ import annotations

import numpy as np

from qlab.errors import BadArgumentError, NonFiniteError
from qlab.gguf.types import QTYPES, TYPES, GGUFType, block_info

_CHUNK_ELEMENTS = 1 << 18

__all__ = ["quantize", "dequantize", "QTYPES", "TYPES", "GGUFType", "block_info", "row_size"]


def row_size(qtype: str, n_per_row: int) -> int:
    """Bytes of one row of n_per_row weights (n_per_row must be a multiple of the block size)."""
    bt = block_info(qtype)
    return (n_per_row // bt.block_size) * bt.type_size


def as_rows(x: np.ndarray, bt: GGUFType) -> np.ndarray:
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


def quantize(x: np.ndarray, qtype: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize float rows to ggml's raw block bytes (uint8, rows concatenated), as ggml_quantize_chunk.

    x: float32 [rows, cols] or [cols]; cols must be a multiple of the type's block size.
    imatrix: optional importance weights [cols] (llama-quantize's --imatrix); Q8_0 and Q8_K ignore them.
    """
    bt = block_info(qtype)
    rows = as_rows(x, bt)
    qw = as_imatrix(imatrix, rows.shape[1]) if bt.takes_imatrix else None
    fn = bt.quantize
    step = max(1, _CHUNK_ELEMENTS // rows.shape[1])  # whole rows per chunk, ~1 MB: the arrays stay in cache
    with np.errstate(all="ignore"):  # ggml's own inf/NaN intermediates (degenerate blocks) are reproduced, not flagged
        parts = [fn(rows[i:i + step], qw).reshape(-1) for i in range(0, rows.shape[0], step)]
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.uint8)


def dequantize(data: np.ndarray, qtype: str, shape: tuple[int, ...] | int) -> np.ndarray:
    """ggml's raw block bytes -> float32 array of ``shape`` (as the type traits' to_float)."""
    bt = block_info(qtype)
    shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
    n = int(np.prod(shape))
    if n % bt.block_size or (shape and shape[-1] % bt.block_size):
        raise BadArgumentError(f"{bt.name} holds whole blocks of {bt.block_size}; shape {shape} does not fit")
    b = np.frombuffer(np.ascontiguousarray(data), dtype=np.uint8) if not isinstance(data, bytes) \
        else np.frombuffer(data, dtype=np.uint8)
    need = n // bt.block_size * bt.type_size
    if b.size != need:
        raise BadArgumentError(f"{bt.name} data for shape {shape} must be {need} bytes, got {b.size}")
    with np.errstate(invalid="ignore", over="ignore"):  # fp16 scales that overflowed to inf, as ggml stores them
        return bt.dequantize(b.reshape(-1, bt.type_size)).reshape(shape)
