"""Export to the AutoAWQ "GEMM" checkpoint layout (what transformers, vLLM and AutoAWQ load as quant_method "awq").

For a Linear with K inputs, N outputs, group size g (W here is [K, N], the transpose of nn.Linear's weight):

    qweight  int32   [K, N/8]     4-bit codes packed along the OUTPUT dimension, 8 per word
    qzeros   int32   [K/g, N/8]   integer zero-points, packed the same way
    scales   float16 [K/g, N]
    W[k, n] = (q[k, n] − z[k // g, n]) · s[k // g, n]

Inside a word the 8 nibbles do not hold columns 8j..8j+7 in order: nibble i (bits 4i..4i+3) holds column
8j + AWQ_ORDER[i], AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7) — the interleave AWQ's CUDA kernel unpacks with
one shift per pair of fp16 lanes. Unlike GPTQ, no "zero − 1" offset is stored.

    word = c7 c5 c3 c1 c6 c4 c2 c0   (nibble 7 … nibble 0; c0 in the low nibble)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import BadArgumentError
from .output import atomic_folder, check_output
from .qtensor import QuantizedTensor

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a word holds column AWQ_ORDER[i] of its 8
AWQ_REVERSE_ORDER = tuple(AWQ_ORDER.index(c) for c in range(8))  # column c sits in nibble AWQ_REVERSE_ORDER[c]


def pack_awq(intweight: torch.Tensor) -> torch.Tensor:
    """[R, C] 4-bit codes → [R, C/8] int32, 8 columns per word in AWQ's interleaved nibble order."""
    R, C = intweight.shape
    if C % 8:
        raise BadArgumentError(f"AWQ packs 8 output columns per int32 word; {C} columns is not a multiple of 8")
    c = intweight.to(torch.int64)
    if int(c.min()) < 0 or int(c.max()) > 15:
        raise BadArgumentError("AWQ GEMM codes must lie in [0, 15] (4-bit)")
    c = c.reshape(R, C // 8, 8)
    words = torch.zeros(R, C // 8, dtype=torch.int64)
    for i, col in enumerate(AWQ_ORDER):
        words |= c[:, :, col] << (4 * i)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_awq`: [R, C/8] int32 → [R, C] uint8."""
    w = packed.to(torch.int64) & 0xFFFFFFFF
    nibbles = torch.stack([(w >> (4 * i)) & 0xF for i in range(8)], dim=-1)  # [R, C/8, 8] in nibble order
    return nibbles[:, :, list(AWQ_REVERSE_ORDER)].reshape(w.shape[0], -1).to(torch.uint8)


def awq_tensors(qt: QuantizedTensor, name: str = "layer") -> dict[str, torch.Tensor]:
    """qweight, qzeros, scales of one QuantizedTensor in the AWQ GEMM layout (4-bit, integer zeros, no act-order)."""
    N, K = qt.shape
    if qt.bits != 4:
        raise BadArgumentError(f"{name}: the AWQ GEMM layout stores 4-bit codes only, this layer has {qt.bits} bits; "
                               f"export other widths with --format gguf or keep qlab's own folder")
    default = torch.arange(K, dtype=torch.int32) // qt.group_size
    if not torch.equal(qt.g_idx.to(torch.int32), default) or qt.granularity == "tensor":
        raise BadArgumentError(f"{name}: AWQ checkpoints need contiguous groups along the input (no act-order, "
                               f"no per-tensor scale)")
    z = qt.zeros
    if not torch.equal(z, z.round()) or float(z.min()) < 0 or float(z.max()) > 15:
        raise BadArgumentError(f"{name}: AWQ zero-points must be integers in [0, 15] (float zero-points cannot "
                               f"be stored)")
    return {
        "qweight": pack_awq(qt.codes.T),  # [K, N/8]
        "qzeros": pack_awq(z.round().to(torch.int64).T),  # [G, N/8]
        "scales": qt.scales.T.contiguous().to(torch.float16),  # [G, N]
    }


def dequantize_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """W [K, N] = (q − z[group]) · s[group] from the three AWQ tensors (group size = K / rows of scales)."""
    q = unpack_awq(qweight).float()
    z = unpack_awq(qzeros).float()
    K, G = q.shape[0], scales.shape[0]
    g = torch.arange(K) // (K // G)
    return (q - z[g]) * scales.float()[g]


def save_awq_checkpoint(model, tokenizer, qtensors: dict[str, QuantizedTensor], out_dir,
                        dtype: torch.dtype = torch.float16, overwrite: bool = False, protect=(),
                        settings: dict | None = None) -> Path:
    """Write a Hugging Face folder in the AutoAWQ GEMM layout: config.json with quantization_config
    {quant_method: awq, version: gemm, bits: 4, group_size, zero_point: true, modules_to_not_convert},
    model.safetensors holding each quantized Linear's qweight/qzeros/scales and every other parameter (norms,
    embeddings, the Linears left in float) in `dtype`, and the tokenizer. modules_to_not_convert names the decoder
    Linears left in float (the run's skipped layers; None when there are none).
    settings: the run's settings (qlab.json's, `qlab.checkpoint.run_settings`), checked against the tensors and
    written whole under quantization_config["meta"]["qlab"]. The folder is written to a temporary name and renamed
    (qlab.output's rules for an existing out_dir: overwrite / protect)."""
    from safetensors.torch import save_file

    from .export_gptq import check_settings
    from .version import __version__

    check_output(out_dir, "folder", overwrite, protect=protect)
    if not qtensors:
        raise BadArgumentError("no quantized layers to export: quantize the model first (qlab quantize)")
    sizes = {qt.group_size for qt in qtensors.values()}
    if len(sizes) != 1:
        raise BadArgumentError(f"AWQ checkpoints have one group size for all layers; these layers use {sorted(sizes)}")
    group_size = sizes.pop()
    grids = {qt.symmetric for qt in qtensors.values()}
    check_settings(settings, 4, int(group_size), grids.pop() if len(grids) == 1 else None, "AWQ checkpoint")
    head = {id(m) for m in (model.get_output_embeddings(),) if m is not None}
    in_float = sorted(n for n, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear) and n not in qtensors and id(m) not in head)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    tensors: dict[str, torch.Tensor] = {}
    for name, qt in qtensors.items():
        state.pop(f"{name}.weight", None)
        for key, t in awq_tensors(qt, name).items():
            tensors[f"{name}.{key}"] = t.contiguous()
    for k, v in state.items():
        tensors[k] = (v.to(dtype) if v.is_floating_point() else v).contiguous()

    out = Path(out_dir)
    with atomic_folder(out, overwrite, protect=protect, kind="AWQ checkpoint") as tmp:
        config = model.config.to_dict()
        config["torch_dtype"] = str(dtype).removeprefix("torch.")
        config["dtype"] = config["torch_dtype"]
        qc = {"quant_method": "awq", "version": "gemm", "bits": 4, "group_size": int(group_size), "zero_point": True,
              "modules_to_not_convert": in_float or None}
        if settings:
            qc["meta"] = {"quantizer": [f"qlab:{__version__}"], "qlab": settings}
        config["quantization_config"] = qc
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out
