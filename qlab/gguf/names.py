"""GGUF names: Hugging Face llama tensor names <-> llama.cpp's, the q/k row order, and qlab's metadata keys.

    model.embed_tokens.weight                  token_embd.weight
    model.layers.3.self_attn.q_proj.weight     blk.3.attn_q.weight     (k_proj, v_proj, o_proj: attn_k/v/output)
    model.layers.3.mlp.gate_proj.weight        blk.3.ffn_gate.weight   (up_proj, down_proj: ffn_up, ffn_down)
    model.layers.3.input_layernorm.weight      blk.3.attn_norm.weight  (post_attention_layernorm: ffn_norm)
    model.norm.weight / lm_head.weight         output_norm.weight / output.weight

llama.cpp keeps each attention head's rotary pairs interleaved in the rows of attn_q / attn_k (rows ordered
[head, i, half]); Hugging Face keeps the two halves apart ([head, half, i]). ``gguf_rows_from_hf`` and
``hf_rows_from_gguf`` convert between the two.
"""

from __future__ import annotations

import re

import numpy as np

WRITER_KEY = "general.quantized_by"  # GGUF's own key for who quantized a file: "qlab" marks qlab's outputs
SETTINGS_KEY = "qlab.settings"  # the settings of the qlab run that wrote the file, a JSON object as a string

_BLOCK_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def gguf_name(hf_name: str) -> str | None:
    """llama.cpp's name of a Hugging Face llama tensor (None for tensors GGUF does not store, e.g. rotary buffers)."""
    if hf_name in _TOP_NAMES:
        return _TOP_NAMES[hf_name]
    m = _LAYER_RE.match(hf_name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"blk.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"
    return None


def hf_name(gguf_tensor_name: str) -> str | None:
    """Inverse of gguf_name."""
    for k, v in _TOP_NAMES.items():
        if v == gguf_tensor_name:
            return k
    parts = gguf_tensor_name.split(".")
    if len(parts) == 4 and parts[0] == "blk":
        for k, v in _BLOCK_NAMES.items():
            if v == parts[2]:
                return f"model.layers.{parts[1]}.{k}.{parts[3]}"
    return None


def gguf_rows_from_hf(rows: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face q/k rows [head, half, i] -> llama.cpp's [head, i, half] (rotary pairs interleaved)."""
    half = rows.shape[0] // n_head // 2
    return rows.reshape(n_head, 2, half, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def hf_rows_from_gguf(rows: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of gguf_rows_from_hf: llama.cpp's q/k rows [head, i, half] -> Hugging Face's [head, half, i]."""
    half = rows.shape[0] // n_head // 2
    return rows.reshape(n_head, half, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)
