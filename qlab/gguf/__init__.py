"""GGUF block formats from scratch: ``quantize`` / ``dequantize`` byte-exact with llama.cpp's ggml.

    raw = quantize(W, "Q4_K")                 # float32 [rows, cols] -> ggml's block bytes, rows concatenated
    raw = quantize(W, "Q4_K", imatrix=imp)    # with importance weights (one per column), as llama-quantize
    W_hat = dequantize(raw, "Q4_K", W.shape)

Types: Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 (blocks of 32) and Q2_K Q3_K Q4_K Q5_K Q6_K (super-blocks of 256),
plus Q8_K (the activation format of ggml's k-quant dot products). ``QTYPES`` / ``block_info`` give each
type's id and block geometry; the layouts are drawn in ``qlab.gguf.legacy`` and ``qlab.gguf.kquants``.
"""

from __future__ import annotations

import numpy as np

from qlab.errors import BadArgumentError
from qlab.gguf import kquants, legacy
from qlab.gguf.blocks import QTYPES, BlockType, as_imatrix, as_rows, block_info

_QUANTIZE = {**legacy.QUANTIZE, **kquants.QUANTIZE}
_DEQUANTIZE = {**legacy.DEQUANTIZE, **kquants.DEQUANTIZE}

_CHUNK_ELEMENTS = 1 << 18

__all__ = ["quantize", "dequantize", "QTYPES", "BlockType", "block_info", "row_size"]


def row_size(qtype: str, n_per_row: int) -> int:
    """Bytes of one row of n_per_row weights (n_per_row must be a multiple of the block size)."""
    bt = block_info(qtype)
    return (n_per_row // bt.block_size) * bt.type_size


def quantize(x: np.ndarray, qtype: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize float rows to ggml's raw block bytes (uint8, rows concatenated), as ggml_quantize_chunk.

    x: float32 [rows, cols] or [cols]; cols must be a multiple of the type's block size.
    imatrix: optional importance weights [cols] (llama-quantize's --imatrix); Q8_0 and Q8_K ignore them.
    """
    bt = block_info(qtype)
    rows = as_rows(x, bt)
    qw = as_imatrix(imatrix, rows.shape[1]) if bt.takes_imatrix else None
    fn = _QUANTIZE[bt.name]
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
        return _DEQUANTIZE[bt.name](b.reshape(-1, bt.type_size)).reshape(shape)
