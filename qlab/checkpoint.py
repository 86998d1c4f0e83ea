"""qlab's own output folder: the dequantized float model (any HF loader reads it), the tokenizer, every
Linear's `QuantizedTensor` (quantized.safetensors) and what was done (qlab.json).

A folder of block-float weights (`qlab quantize --format mxfp4 | nvfp4 | nf4 | fp8-e4m3 …`, qlab.float_formats)
stores the quantized Linears only as their packed bytes, not as floats (`save_block_quantized`):

    config.json, generation_config.json, tokenizer files   as any Hugging Face folder
    float_weights.safetensors   every tensor that stays float (embeddings, norms, an untied lm_head)
    blockfloat.safetensors      one uint8 tensor per quantized Linear: qlab.float_formats.pack_weight's bytes
                                (qlab.blockfloat.pack for the block formats)
    qlab.json                   "format" (e.g. "mxfp4"), "layout" (BLOCK_LAYOUT, the version of this layout),
                                "layers" {name: {"format", "shape"}}, "aliases" {tied name: stored name}, settings

`qlab.model.load_model(folder)` (so `qlab eval --model DIR`) rebuilds the model from them: each Linear gets its
DEQUANTIZED weight (float32 `nn.Linear`s, bit for bit `BlockQuantized.dequantize()`); `load_block_quantized`
also returns the `BlockQuantized` tensors. GPTQ/AWQ exports need affine folders (`load_quantized` says so).

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
BLOCK_FILE, FLOAT_FILE = "blockfloat.safetensors", "float_weights.safetensors"
BLOCK_LAYOUT = "qlab-blockfloat-1"  # the layout save_block_quantized writes and load_block_model reads


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
    from .version import __version__

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
    """The folder, or FileFormatError when it is not one `save_quantized` wrote (a block-float folder included:
    it holds no affine QuantizedTensors)."""
    folder = Path(folder)
    if is_block_folder(folder):
        fmt = _block_format_label(folder)
        raise FileFormatError(f"{folder} holds {fmt} block-float weights (qlab quantize --format {fmt}), not the "
                              f"affine integer grids GPTQ/AWQ checkpoints store: quantize again with --format int, "
                              f"or export this folder to GGUF (qlab export --format gguf --model {folder})")
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
    """(model, tokenizer, qtensors, meta) from a folder written by `save_quantized` (a block-float folder:
    `load_block_quantized`)."""
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
    model, tokenizer = _load_float_folder(folder)
    return model, tokenizer, qtensors, meta


def _load_float_folder(folder: Path) -> tuple:
    """(model, tokenizer) of the Hugging Face float model that save_quantized writes beside the packed tensors
    (each Linear holding its dequantized weight). Loaded here rather than through qlab.model.load_model, which
    itself reads this module for block-float folders."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    except (ValueError, KeyError, OSError, RuntimeError, SafetensorError) as e:
        raise FileFormatError(f"{folder}: the float model beside quantized.safetensors cannot be loaded "
                              f"({e.__class__.__name__}): write the folder again with `qlab quantize`") from e
    described = folder / "qlab_model.json"
    try:
        model.qlab_description = json.loads(described.read_text())["description"]
    except (OSError, ValueError, KeyError, TypeError):
        model.qlab_description = str(folder)
    return model, tokenizer


# ----------------------------------------------------------------------------------------------------------
# Block-float folders (qlab.float_formats)


def save_block_quantized(model, tokenizer, block_tensors: dict, out_dir, meta: dict, overwrite: bool = False,
                         protect=()) -> Path:
    """Write a block-float folder (module docstring) atomically: the float tensors, the packed bytes of every
    `BlockQuantized` in block_tensors {Linear name: tensor}, and qlab.json (`meta` plus format, layout, layers)."""
    import numpy as np

    from .float_formats import format_name, pack_weight

    out = Path(out_dir)
    quantized = {f"{name}.weight" for name in block_tensors}
    floats, aliases, seen = {}, {}, {}
    for key, t in model.state_dict().items():
        if key in quantized:
            continue
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if ptr in seen:  # tied (lm_head = embed_tokens): stored once
            aliases[key] = seen[ptr]
            continue
        seen[ptr] = key
        floats[key] = t.detach().contiguous()
    packed = {name: torch.from_numpy(np.frombuffer(pack_weight(q), dtype=np.uint8).copy())
              for name, q in block_tensors.items()}
    layers = {name: {"format": format_name(q), "shape": list(q.shape)} for name, q in block_tensors.items()}
    names = sorted({spec["format"] for spec in layers.values()})
    with atomic_folder(out, overwrite, protect=protect, kind="quantized model") as tmp:
        model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_file(floats, tmp / FLOAT_FILE)
        save_file(packed, tmp / BLOCK_FILE)
        (tmp / "qlab.json").write_text(json.dumps({**meta, "format": names[0] if len(names) == 1 else names,
                                                   "layout": BLOCK_LAYOUT, "layers": layers, "aliases": aliases},
                                                  indent=1))
        description = meta.get("description")
        if description:
            (tmp / "qlab_model.json").write_text(json.dumps({"description": description}))
    return out


def is_block_folder(folder) -> bool:
    """Whether a folder holds block-float weights (save_block_quantized's layout, or a qlab.json whose "format"
    is not the affine "int")."""
    folder = Path(folder)
    if (folder / BLOCK_FILE).is_file():
        return True
    if not (folder / "qlab.json").is_file():
        return False
    try:
        meta = json.loads((folder / "qlab.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format", "int") != "int"


def _block_format_label(folder) -> str:
    try:
        fmt = read_meta(folder).get("format", "?")
    except FileFormatError:
        return "?"
    return fmt if isinstance(fmt, str) else "/".join(map(str, fmt))


def load_block_quantized(folder, dtype: torch.dtype = torch.float32) -> tuple:
    """(model, tokenizer, block_tensors, meta) from a folder written by `save_block_quantized`: every quantized
    Linear holds its dequantized weight (an nn.Linear in `dtype`, float32 by default: the values are exactly
    `BlockQuantized.dequantize()`); block_tensors {Linear name: BlockQuantized} are the stored tensors.
    FileFormatError when the folder was written in another layout (another qlab version) or is damaged."""
    from .float_formats import FORMATS, unpack_weight
    from .version import __version__

    folder = Path(folder)
    meta = read_meta(folder)
    layout = meta.get("layout")
    settings = meta.get(SETTINGS_KEY)
    written = settings.get("qlab_version") if isinstance(settings, dict) else None
    written = written or "an unknown version"
    if layout != BLOCK_LAYOUT:
        raise FileFormatError(f"{folder} was written by qlab {written} in block-float layout {layout!r}; this qlab "
                              f"({__version__}) reads layout {BLOCK_LAYOUT!r}: write the folder again with this "
                              f"qlab (qlab quantize --format {_block_format_label(folder)} --out DIR)")
    for f in (BLOCK_FILE, FLOAT_FILE, "config.json"):
        if not (folder / f).is_file():
            raise FileFormatError(f"{folder} lacks {f}: it is incomplete; write it again with `qlab quantize`")
    layers, aliases = meta.get("layers"), meta.get("aliases", {})
    if not isinstance(layers, dict) or not isinstance(aliases, dict):
        raise FileFormatError(f"{folder / 'qlab.json'}: 'layers' / 'aliases' are not JSON objects: write the folder "
                              f"again with `qlab quantize`")
    unknown = sorted({str(s.get("format")) for s in layers.values() if not isinstance(s, dict) or
                      s.get("format") not in FORMATS})
    if unknown:
        raise FileFormatError(f"{folder} stores weights in format(s) {', '.join(unknown)} that this qlab "
                              f"({__version__}, written by {written}) does not know; known: {', '.join(FORMATS)}")
    try:
        state = load_file(folder / FLOAT_FILE)
        packed = load_file(folder / BLOCK_FILE)
        block_tensors = {name: unpack_weight(packed[name].numpy().tobytes(), spec["format"], spec["shape"])
                         for name, spec in layers.items()}
    except (ValueError, KeyError, TypeError, OSError, RuntimeError, SafetensorError) as e:
        raise FileFormatError(f"{folder}: {BLOCK_FILE} / {FLOAT_FILE} / qlab.json are damaged "
                              f"({e.__class__.__name__}: {e}): write the folder again with `qlab quantize`") from e
    for name, q in block_tensors.items():
        state[f"{name}.weight"] = q.dequantize(torch.float32)
    for alias, key in aliases.items():
        if key not in state:
            raise FileFormatError(f"{folder}: tied tensor {alias} refers to {key}, which is not stored")
        state[alias] = state[key]
    model = _empty_model(folder)
    try:
        model.load_state_dict(state, strict=True)
        model.tie_weights()  # the config's ties (lm_head = embed_tokens), as from_pretrained makes them
    except RuntimeError as e:
        raise FileFormatError(f"{folder}: its tensors do not match its config.json ({str(e)[:300]}): write the "
                              f"folder again with `qlab quantize`") from e
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = model.to(dtype).eval()
    description = meta.get("description")
    model.qlab_description = description or str(folder)
    return model, tokenizer, block_tensors, meta


def _empty_model(folder: Path):
    """The model class of folder/config.json with uninitialised float32 parameters (every one is loaded next)."""
    import contextlib

    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialise (slower, same result once loaded)
        no_init_weights = contextlib.nullcontext
    try:
        cfg = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise FileFormatError(f"{folder / 'config.json'} cannot be read ({e}): write the folder again") from e
    with no_init_weights():
        return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)


def load_block_model(folder, dtype: torch.dtype = torch.float32) -> tuple:
    """(model, tokenizer) of a block-float folder, its Linears dequantized (`load_block_quantized`)."""
    model, tokenizer, _, _ = load_block_quantized(folder, dtype)
    return model, tokenizer
