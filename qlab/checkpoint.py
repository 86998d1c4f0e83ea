"""qlab's own output folder: the dequantized float model (any HF loader reads it), the tokenizer, every
Linear's `QuantizedTensor` (quantized.safetensors) and what was done (qlab.json).

qlab.json holds the run's settings under "settings" (`run_settings`: method, the quantizer's full
configuration, calibration text / samples / length / seed, skipped layers, model, qlab version); every exporter
(`qlab export`: GPTQ, AWQ, GGUF) carries that dict into the file it writes (`read_settings`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import FileFormatError
from .output import atomic_folder
from .qtensor import QuantizedTensor

_FIELDS = ("codes", "scales", "zeros", "g_idx")
SETTINGS_KEY = "settings"


def _plain(value):
    """value as JSON has it: dtypes as their name ("bfloat16"), tuples as lists, anything else unknown as str."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def quantizer_config(quantizer) -> dict:
    """Every setting a block quantizer's result depends on (its `config`, the qlab.quantizer contract),
    JSON-ready."""
    return _plain(quantizer.config)


def run_settings(quantizer, *, method: str, model: str, model_source: str | None = None,
                 calibration: dict | None = None, skip=(), **extra) -> dict:
    """The settings of one quantization run, as qlab.json records them and every exporter carries them:
    method, bits, group_size, symmetric (the quantizer's), its full configuration under "quantizer", the
    calibration ({dataset, nsamples, seqlen, seed}; None without calibration), the skipped Linear names, the
    model name and what kind of source it is, and the qlab version. `extra` adds entries."""
    from . import __version__

    config = quantizer_config(quantizer)
    return _plain({"method": method, "bits": config.get("bits"), "group_size": config.get("group_size"),
                   "symmetric": config.get("symmetric"), "quantizer": config, "calibration": calibration,
                   "skip": list(skip), "model": model, "model_source": model_source, "qlab_version": __version__,
                   **extra})


def _flatten(qtensors: dict[str, QuantizedTensor]) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, layout = {}, {}
    for name, qt in qtensors.items():
        for f in _FIELDS:
            tensors[f"{name}.{f}"] = getattr(qt, f).contiguous()
        layout[name] = {"bits": qt.bits, "group_size": qt.group_size, "symmetric": qt.symmetric,
                        "granularity": qt.granularity, "scale_bits": qt.scale_bits, "zero_bits": qt.zero_bits}
    return tensors, layout


def save_quantized(model, tokenizer, qtensors: dict[str, QuantizedTensor], out_dir, meta: dict,
                   overwrite: bool = False, protect=()) -> Path:
    """Write the folder atomically (a temporary sibling renamed into place; qlab.output's rules for an
    existing out_dir: overwrite / protect)."""
    out = Path(out_dir)
    with atomic_folder(out, overwrite, protect=protect, kind="quantized model") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tensors, layout = _flatten(qtensors)
        save_file(tensors, tmp / "quantized.safetensors")
        (tmp / "qlab.json").write_text(json.dumps({**meta, "layers": layout}, indent=1))
        description = meta.get("description")
        if description:
            (tmp / "qlab_model.json").write_text(json.dumps({"description": description}))
    return out


def check_quantized_folder(folder) -> Path:
    """The folder, or FileFormatError when it is not one `save_quantized` wrote."""
    folder = Path(folder)
    if not (folder / "qlab.json").is_file() or not (folder / "quantized.safetensors").is_file():
        raise FileFormatError(f"{folder} is not a qlab quantized folder (no qlab.json / quantized.safetensors): "
                              f"write one with `qlab quantize --out DIR`")
    return folder


def read_meta(folder) -> dict:
    """What produced a qlab quantized folder (its qlab.json)."""
    path = Path(folder) / "qlab.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FileFormatError(f"{path} cannot be read ({e}): write the folder again with `qlab quantize`") from e
    if not isinstance(meta, dict):
        raise FileFormatError(f"{path} is not a JSON object: write the folder again with `qlab quantize`")
    return meta


def read_settings(folder) -> dict | None:
    """The run settings a qlab quantized folder records (`run_settings`), or None for a folder written before
    qlab recorded them."""
    settings = read_meta(folder).get(SETTINGS_KEY)
    if settings is not None and not isinstance(settings, dict):
        raise FileFormatError(f"{Path(folder) / 'qlab.json'}: its {SETTINGS_KEY!r} is not a JSON object: write the "
                              f"folder again with `qlab quantize`")
    return settings


def load_quantized(folder) -> tuple:
    """(model, tokenizer, qtensors, meta) from a folder written by `save_quantized`."""
    from .model import load_model

    folder = check_quantized_folder(folder)
    try:
        meta = read_meta(folder)
        layers = meta.pop("layers")
        tensors = load_file(folder / "quantized.safetensors")
        qtensors = {name: QuantizedTensor(**{f: tensors[f"{name}.{f}"] for f in _FIELDS}, **spec)
                    for name, spec in layers.items()}
    except (ValueError, KeyError, TypeError, OSError, RuntimeError, SafetensorError) as e:
        raise FileFormatError(f"{folder}: qlab.json / quantized.safetensors are damaged ({e.__class__.__name__}: "
                              f"{e}): write the folder again with `qlab quantize`") from e
    model, tokenizer = load_model(folder)
    return model, tokenizer, qtensors, meta
