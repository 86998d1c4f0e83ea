"""llama-quantize's mixes: which GGML type each tensor of a llama model gets for a file type such as Q4_K_M.

Same choices as llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp) for dense llama models:

    norms, biases, 1-D tensors       stay F32
    output.weight (or token_embd     Q8_0 if its rows do not split into the type's blocks, else Q6_K
      when the embeddings are tied)  (Q8_0 files keep Q8_0)
    attn_v.weight                    Q2_K: Q3_K (Q4_K if n_head/n_head_kv >= 4) · Q3_K_M: Q5_K in layers 0-1
                                     else Q4_K · Q3_K_L: Q5_K · Q4_K_M, Q5_K_M: Q6_K where use_more_bits ·
                                     Q4_K_S: Q5_K in layers 0-3
    ffn_down.weight                  Q2_K: Q3_K · Q3_K_M: Q5_K below n/16 else Q4_K · Q3_K_L: Q5_K ·
                                     Q4_K_M, Q5_K_M: Q6_K where use_more_bits · Q4_K_S: Q5_K below n/8 ·
                                     Q4_0/Q5_0 with an imatrix: Q4_1/Q5_1 below n/8
    attn_output.weight               Q2_K: Q3_K · Q3_K_M: Q4_K · Q3_K_L: Q5_K
    everything else                  the file type's default type

    use_more_bits(i, n) = i < n/8  or  i >= 7n/8  or  (i - n/8) % 3 == 2      (integer division)

Then the fallback for rows (ne[0], the input features) that do not split into 256-element super-blocks:
Q2_K, Q3_K -> Q4_0 · Q4_K -> Q5_0 · Q5_K -> Q5_1 · Q6_K -> Q8_0 (the ``fallback`` of each type in the GGUF type
registry, qlab.gguf.types); if that still does not divide, F16.
The layer counters (llama.cpp's i_attention_wv, i_ffn_down) count tensors in the order llama.cpp visits them,
which for a dense model is the layer index. Not modelled: Falcon, mixture-of-experts and the 70B attn_v rule.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, LlamaFileType

from ..errors import BadArgumentError
from .llamacpp import require_llama_cpp
from .types import TYPES

T = GGMLQuantizationType

# name -> (llama_ftype, default tensor type)
FILE_TYPES: dict[str, tuple[LlamaFileType, GGMLQuantizationType]] = {
    "F32": (LlamaFileType.ALL_F32, T.F32),
    "F16": (LlamaFileType.MOSTLY_F16, T.F16),
    "Q8_0": (LlamaFileType.MOSTLY_Q8_0, T.Q8_0),
    "Q4_0": (LlamaFileType.MOSTLY_Q4_0, T.Q4_0),
    "Q4_1": (LlamaFileType.MOSTLY_Q4_1, T.Q4_1),
    "Q5_0": (LlamaFileType.MOSTLY_Q5_0, T.Q5_0),
    "Q5_1": (LlamaFileType.MOSTLY_Q5_1, T.Q5_1),
    "Q2_K": (LlamaFileType.MOSTLY_Q2_K, T.Q2_K),
    "Q3_K_S": (LlamaFileType.MOSTLY_Q3_K_S, T.Q3_K),
    "Q3_K_M": (LlamaFileType.MOSTLY_Q3_K_M, T.Q3_K),
    "Q3_K_L": (LlamaFileType.MOSTLY_Q3_K_L, T.Q3_K),
    "Q4_K_S": (LlamaFileType.MOSTLY_Q4_K_S, T.Q4_K),
    "Q4_K_M": (LlamaFileType.MOSTLY_Q4_K_M, T.Q4_K),
    "Q5_K_S": (LlamaFileType.MOSTLY_Q5_K_S, T.Q5_K),
    "Q5_K_M": (LlamaFileType.MOSTLY_Q5_K_M, T.Q5_K),
    "Q6_K": (LlamaFileType.MOSTLY_Q6_K, T.Q6_K),
}
# llama-quantize's aliases
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}


def file_type(name: str) -> str:
    """Canonical file-type name (aliases resolved), or BadArgumentError listing the valid ones."""
    key = str(name).upper()
    key = ALIASES.get(key, key)
    if key not in FILE_TYPES:
        raise BadArgumentError(
            f"unknown GGUF type {name!r}: choose one of {', '.join(FILE_TYPES)} (or the aliases {', '.join(ALIASES)})"
        )
    return key


def block_size(t: GGMLQuantizationType) -> int:
    return TYPES[t.name].block_size


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of the layers that get more bits: the first and last eighth and every third between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def fallback(t: GGMLQuantizationType, ncols: int) -> GGMLQuantizationType:
    """The type llama.cpp uses when rows of ncols elements do not split into blocks of t (tensor_type_fallback)."""
    if ncols % block_size(t) == 0:
        return t
    if TYPES[t.name].fallback:
        t = T[TYPES[t.name].fallback]
    elif block_size(t) > 32:
        raise BadArgumentError(f"no fallback is defined for {t.name} with rows of {ncols} elements")
    return t if ncols % block_size(t) == 0 else T.F16


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for cat in ("attn_v.weight", "attn_k.weight", "attn_q.weight", "attn_output.weight", "ffn_up", "ffn_gate",
                "ffn_down"):
        if cat in name:
            return cat.removesuffix(".weight")
    return "other"


def allows_quantization(name: str, shape: tuple[int, ...]) -> bool:
    """Only 2-D (and 3-D) weights are quantized; norms and 1-D tensors stay as they are."""
    return len(shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name


def _layer(name: str) -> int:
    return int(name.split(".")[1]) if name.startswith("blk.") else -1


def _mix_type(ftype: str, t: GGMLQuantizationType, name: str, ncols: int, n_layer: int, n_gqa: int,
              tied: bool, has_imatrix: bool) -> GGMLQuantizationType:
    """llama_tensor_get_type_impl for dense llama models (the per-tensor rules of the mix)."""
    cat = _category(name)
    i = _layer(name)
    if cat == "output" or (tied and cat == "token_embd"):
        if ncols % block_size(t) != 0:
            return T.Q8_0
        return t if t == T.Q8_0 else T.Q6_K
    if cat == "attn_v":
        if ftype == "Q2_K":
            return T.Q4_K if n_gqa >= 4 else T.Q3_K
        if ftype == "Q3_K_M":
            return T.Q5_K if i < 2 else T.Q4_K
        if ftype == "Q3_K_L":
            return T.Q5_K
        if ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n_layer):
            return T.Q6_K
        if ftype == "Q4_K_S" and i < 4:
            return T.Q5_K
    elif cat == "ffn_down":
        if ftype == "Q2_K":
            return T.Q3_K
        if ftype == "Q3_K_M":
            return T.Q5_K if i < n_layer // 16 else T.Q4_K
        if ftype == "Q3_K_L":
            return T.Q5_K
        if ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n_layer):
            return T.Q6_K
        if ftype == "Q4_K_S" and i < n_layer // 8:
            return T.Q5_K
        if ftype in ("Q4_0", "Q5_0") and has_imatrix and i < n_layer // 8:
            return T.Q4_1 if ftype == "Q4_0" else T.Q5_1
    elif cat == "attn_output":
        if ftype == "Q2_K":
            return T.Q3_K
        if ftype == "Q3_K_M":
            return T.Q4_K
        if ftype == "Q3_K_L":
            return T.Q5_K
    return t


def tensor_type(ftype: str, name: str, shape: tuple[int, ...], n_layer: int, n_gqa: int = 1, tied: bool = False,
                has_imatrix: bool = False, pure: bool = False) -> GGMLQuantizationType:
    """The GGML type llama-quantize gives GGUF tensor `name` (shape in numpy order [rows, cols]) for file type ftype.

    pure=True is llama-quantize's --pure: the default type everywhere (still with the shape fallback)."""
    ftype = file_type(ftype)
    default = FILE_TYPES[ftype][1]
    if not allows_quantization(name, shape):
        return T.F32
    if default in (T.F32, T.F16):
        return default
    ncols = shape[-1]
    t = default if pure else _mix_type(ftype, default, name, ncols, n_layer, n_gqa, tied, has_imatrix)
    return fallback(t, ncols)


@dataclass
class RecipeRow:
    name: str
    shape: tuple[int, ...]
    qtype: str
    bits_per_weight: float


def recipe(ftype: str, shapes: dict[str, tuple[int, ...]], n_layer: int, n_gqa: int = 1,
           has_imatrix: bool = False, pure: bool = False) -> list[RecipeRow]:
    """Per-tensor types of a mix for GGUF tensors {name: numpy shape}; tied embeddings when no output.weight."""
    tied = "output.weight" not in shapes
    rows = []
    for name, shape in shapes.items():
        t = tensor_type(ftype, name, shape, n_layer, n_gqa, tied, has_imatrix, pure)
        rows.append(RecipeRow(name, tuple(shape), t.name, TYPES[t.name].bits_per_weight))
    return rows


def llama_cpp_quantize(src: str | os.PathLike, dst: str | os.PathLike, ftype: str,
                       imatrix: dict[str, np.ndarray] | None = None, pure: bool = False, nthread: int = 1) -> Path:
    """The oracle: llama.cpp's own quantizer (llama_model_quantize, as llama-quantize) run on a GGUF file.

    imatrix: {GGUF tensor name: importance per input column}. Needs llama-cpp-python."""
    import ctypes

    llama_cpp = require_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(FILE_TYPES[file_type(ftype)][0])
    params.nthread = nthread
    params.pure = pure
    keep = []
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for e, (name, values) in zip(entries, imatrix.items()):
            arr = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(arr)
            e.name = name.encode()
            e.data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            e.size = arr.size
        params.imatrix = entries
        keep.append(entries)
    from llama_cpp import _logger

    quiet = llama_cpp.llama_log_callback(lambda level, text, user_data: None)  # one line per fallback otherwise
    llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    if rc != 0:
        raise BadArgumentError(f"llama_model_quantize failed with code {rc} on {src}")
    return Path(dst)
