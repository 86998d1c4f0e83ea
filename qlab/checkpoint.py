"""qlab's own output folder: the dequantized float model (any HF loader reads it), the tokenizer, every
Linear's `QuantizedTensor` (quantized.safetensors) and what was done (qlab.json)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_folder
from .errors import FileFormatError
from .qtensor import QuantizedTensor

_FIELDS = ("codes", "scales", "zeros", "g_idx")


def _flatten(qtensors: dict[str, QuantizedTensor]) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, layout = {}, {}
    for name, qt in qtensors.items():
        for f in _FIELDS:
            tensors[f"{name}.{f}"] = getattr(qt, f).contiguous()
        layout[name] = {"bits": qt.bits, "group_size": qt.group_size, "symmetric": qt.symmetric,
                        "granularity": qt.granularity, "scale_bits": qt.scale_bits, "zero_bits": qt.zero_bits}
    return tensors, layout


def save_quantized(model, tokenizer, qtensors: dict[str, QuantizedTensor], out_dir, meta: dict) -> Path:
    """Write the folder atomically (a temporary sibling renamed into place)."""
    out = Path(out_dir)
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tensors, layout = _flatten(qtensors)
        save_file(tensors, tmp / "quantized.safetensors")
        (tmp / "qlab.json").write_text(json.dumps({**meta, "layers": layout}, indent=1))
        description = meta.get("description")
        if description:
            (tmp / "qlab_model.json").write_text(json.dumps({"description": description}))
    return out


def load_quantized(folder) -> tuple:
    """(model, tokenizer, qtensors, meta) from a folder written by `save_quantized`."""
    from .model import load_model

    folder = Path(folder)
    if not (folder / "qlab.json").is_file() or not (folder / "quantized.safetensors").is_file():
        raise FileFormatError(f"{folder} is not a qlab quantized folder (no qlab.json / quantized.safetensors): "
                              f"write one with `qlab quantize --out DIR`")
    meta = json.loads((folder / "qlab.json").read_text())
    tensors = load_file(folder / "quantized.safetensors")
    qtensors = {
        name: QuantizedTensor(**{f: tensors[f"{name}.{f}"] for f in _FIELDS}, **spec)
        for name, spec in meta.pop("layers").items()
    }
    model, tokenizer = load_model(folder)
    return model, tokenizer, qtensors, meta
