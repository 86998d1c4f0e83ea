"""Write and read GPTQ checkpoints: the layout AutoGPTQ / GPTQModel / transformers / vLLM load.

For each quantized Linear `name` (N outputs, K inputs, G groups, b bits) the safetensors file holds

    name.qweight  int32   [K·b/32, N]   codes packed along the input dimension   = pack_rows(codesᵀ)
    name.qzeros   int32   [G, N·b/32]   zero-points packed along the output dim  = pack_rows(zerosᵀ…)ᵀ
    name.scales   float16 [G, N]
    name.g_idx    int32   [K]           group of each input column (act-order scatters them)
    name.bias     (if any)

and dequantizes as W[n, k] = scales[g_idx[k], n] · (code[k, n] − zero[g_idx[k], n]). Format "gptq" (v1, the
common one) stores zero − 1 (a historical quirk its loaders undo); a tensor with a zero-point of 0 cannot be
stored that way, so such checkpoints are written as "gptq_v2", which stores the zero-point itself.
config.json carries a `quantization_config` that `transformers.GPTQConfig` accepts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .errors import BadArgumentError, FileFormatError
from .output import atomic_folder, check_output
from .packing import pack_rows, unpack_rows
from .qtensor import QuantizedTensor

WEIGHTS = "model.safetensors"
TRANSFORMERS_BITS = (2, 3, 4, 8)


def _common(qtensors: dict[str, QuantizedTensor]) -> tuple[int, int | None, bool, bool]:
    """bits, group size (None: per channel), symmetric, desc_act shared by all tensors (GPTQ's config is global)."""
    if not qtensors:
        raise BadArgumentError("no quantized tensors to export: quantize the model first")
    first = next(iter(qtensors.values()))
    bits, sym = first.bits, first.symmetric
    per_channel = first.granularity == "channel"
    desc_act = False
    for name, qt in qtensors.items():
        if (qt.bits, qt.symmetric, qt.granularity == "channel") != (bits, sym, per_channel) or (
            not per_channel and qt.group_size != first.group_size
        ):
            raise BadArgumentError(
                f"{name} uses {qt.bits}-bit/{'sym' if qt.symmetric else 'asym'}/group {qt.group_size} but the first "
                f"tensor {first.bits}-bit/{'sym' if sym else 'asym'}/group {first.group_size}: a GPTQ checkpoint "
                f"has one setting for every layer"
            )
        if qt.granularity == "tensor":
            raise BadArgumentError(f"{name} is quantized per tensor; GPTQ checkpoints store per channel or per group")
        if bits not in TRANSFORMERS_BITS:
            raise BadArgumentError(f"transformers loads GPTQ checkpoints of {TRANSFORMERS_BITS} bits, not {bits}")
        if not torch.equal(qt.zeros, torch.round(qt.zeros)):
            raise BadArgumentError(f"{name} has fractional zero-points; GPTQ stores integer zero-points")
        default = torch.arange(qt.shape[1], dtype=torch.int32) // qt.group_size
        desc_act |= not torch.equal(qt.g_idx.to(torch.int32), default)
    return bits, (None if per_channel else first.group_size), sym, desc_act


def pack_gptq(qt: QuantizedTensor, v2: bool = False) -> dict[str, torch.Tensor]:
    """One QuantizedTensor → {qweight, qzeros, scales, g_idx} in the GPTQ layout (v1 stores zero − 1)."""
    b = qt.bits
    zeros = qt.zeros.round().to(torch.int64) - (0 if v2 else 1)  # [N, G]
    zeros = zeros & (2**b - 1)  # v1 with zero 0 would wrap: the exporter switches to v2 before that
    return {
        "qweight": pack_rows(qt.codes.T.contiguous(), b),  # [K·b/32, N]
        "qzeros": pack_rows(zeros.contiguous(), b).T.contiguous(),  # [G, N·b/32]
        "scales": qt.scales.T.to(torch.float16).contiguous(),  # [G, N]
        "g_idx": qt.g_idx.to(torch.int32).contiguous(),
    }


def unpack_gptq(tensors: dict[str, torch.Tensor], bits: int, group_size: int | None, symmetric: bool,
                v2: bool = False) -> QuantizedTensor:
    """Inverse of `pack_gptq`: {qweight, qzeros, scales, g_idx} → QuantizedTensor (scales as stored, fp16)."""
    qweight, qzeros, scales, g_idx = (tensors[k] for k in ("qweight", "qzeros", "scales", "g_idx"))
    G, N = scales.shape
    K = qweight.shape[0] * 32 // bits
    codes = unpack_rows(qweight, bits, K).T.contiguous()  # [N, K]
    zeros = unpack_rows(qzeros.T.contiguous(), bits, N).to(torch.int64)  # [N, G]
    if not v2:
        zeros = (zeros + 1) & (2**bits - 1)
    gs = K if group_size in (None, -1) else group_size
    return QuantizedTensor(
        codes=codes, scales=scales.T.float().contiguous(), zeros=zeros.float(), bits=bits, group_size=gs,
        symmetric=symmetric, g_idx=g_idx.to(torch.int32), granularity="channel" if gs == K else "group",
    )


_GPTQ_RUN_FIELDS = (("damp", "damp_percent"), ("true_sequential", "true_sequential"),
                    ("static_groups", "static_groups"))


def check_settings(settings: dict | None, bits: int, group_size: int | None, sym: bool, what: str) -> None:
    """BadArgumentError when recorded run settings contradict the tensors they are exported with."""
    if not settings:
        return
    checks = [("bits", settings.get("bits"), bits), ("symmetric", settings.get("symmetric"), sym)]
    if isinstance(settings.get("group_size"), int):  # 'channel' / None: one group per row, whatever its length
        checks.append(("group size", settings["group_size"], group_size))
    for name, recorded, actual in checks:
        if recorded is not None and recorded != actual:
            raise BadArgumentError(f"the run settings say {name} {recorded} but the tensors have {actual}: "
                                   f"a {what} written with them would describe another run")


def quantization_config(bits: int, group_size: int | None, sym: bool, desc_act: bool, fmt: str = "gptq",
                        settings: dict | None = None, **meta) -> dict:
    """The `quantization_config` entry of config.json (transformers.GPTQConfig field names).

    GPTQ's run fields — damp_percent, true_sequential, static_groups, and desc_act where act-order ran — come
    from `settings`, the run's settings as qlab.json records them (qlab.checkpoint.run_settings), when the run
    used GPTQ; keyword arguments damp / true_sequential / static_groups / act_order give them otherwise. A field
    neither gives (a checkpoint of RTN or AWQ codes) is left out rather than invented. The whole `settings` dict
    is kept under meta["qlab"]; other keyword arguments go to meta as they are."""
    from .version import __version__

    run = {}
    if settings and settings.get("method") == "gptq":
        run = dict(settings.get("quantizer") or {})
    for key in ("damp", "true_sequential", "static_groups", "act_order"):
        if key in meta:
            run[key] = meta.pop(key)
    fields = {name: run[key] for key, name in _GPTQ_RUN_FIELDS if key in run}
    return {"quant_method": "gptq", "bits": bits, "group_size": -1 if group_size is None else group_size,
            "desc_act": bool(desc_act or run.get("act_order", False)), "sym": sym, "checkpoint_format": fmt,
            "pack_dtype": "int32", **fields,
            "meta": {"quantizer": [f"qlab:{__version__}"], **({"qlab": settings} if settings else {}), **meta}}


def save_gptq_checkpoint(model, tokenizer, qtensors: dict[str, QuantizedTensor], out_dir: str | os.PathLike,
                         dtype: torch.dtype = torch.float16, overwrite: bool = False, protect=(),
                         settings: dict | None = None, **meta) -> Path:
    """Write a GPTQ checkpoint folder (config.json with quantization_config, model.safetensors, tokenizer).

    qtensors: QuantizedTensor of each quantized Linear by full module name (as `quantize_model` returns).
    The other parameters (embeddings, norms, lm_head) are stored in `dtype` (fp16, as GPTQ kernels expect).
    settings: the run's settings (qlab.json's, `qlab.checkpoint.run_settings`): quantization_config's run fields
    are written from them and the whole dict kept under its meta["qlab"] (see `quantization_config`).
    overwrite / protect: qlab.output's rules for an existing out_dir."""
    from safetensors.torch import save_file

    check_output(out_dir, "folder", overwrite, protect=protect)

    bits, group_size, sym, desc_act = _common(qtensors)
    check_settings(settings, bits, group_size, sym, "GPTQ checkpoint")
    v2 = not sym and any(bool((qt.zeros == 0).any()) for qt in qtensors.values())
    fmt = "gptq_v2" if v2 else "gptq"
    modules = dict(model.named_modules())
    missing = [n for n in qtensors if n not in modules]
    if missing:
        raise BadArgumentError(f"{missing[0]} is not a module of the model: the quantized tensors belong elsewhere")
    state = {k: v for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        owner = k.rsplit(".", 1)[0]
        if owner in qtensors and k.endswith(".weight"):
            continue
        out[k] = (v.to(dtype) if v.is_floating_point() else v).detach().clone().contiguous()
    for name, qt in qtensors.items():
        if tuple(modules[name].weight.shape) != qt.shape:
            raise BadArgumentError(f"{name}: weight {tuple(modules[name].weight.shape)} but codes {qt.shape}")
        for key, t in pack_gptq(qt, v2).items():
            out[f"{name}.{key}"] = t
    cfg = model.config.to_dict()
    cfg["quantization_config"] = quantization_config(bits, group_size, sym, desc_act, fmt, settings, **meta)
    cfg["torch_dtype"] = cfg["dtype"] = str(dtype).replace("torch.", "")

    target = Path(out_dir)
    with atomic_folder(target, overwrite, protect=protect, kind="GPTQ checkpoint") as tmp:
        save_file(out, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
        (tmp / "quantize_config.json").write_text(json.dumps(cfg["quantization_config"], indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return target


def read_gptq_tensors(folder: str | os.PathLike) -> tuple[dict[str, QuantizedTensor], dict, dict[str, torch.Tensor]]:
    """(QuantizedTensor by Linear name, quantization_config, the other tensors) of a GPTQ checkpoint folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, weights = folder / "config.json", folder / WEIGHTS
    if not cfg_path.is_file() or not weights.is_file():
        raise FileFormatError(f"{folder} is not a GPTQ checkpoint folder (needs config.json and {WEIGHTS})")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise FileFormatError(f"{cfg_path} cannot be read as JSON ({e})") from e
    qc = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    if not isinstance(qc, dict) or qc.get("quant_method") != "gptq":
        raise FileFormatError(f"{cfg_path} has no GPTQ quantization_config")
    try:
        tensors = load_file(str(weights))
        names = sorted({k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")})
        v2 = qc.get("checkpoint_format", "gptq") == "gptq_v2"
        gs = None if qc["group_size"] == -1 else qc["group_size"]
        qts = {}
        for n in names:
            parts = {k: tensors.pop(f"{n}.{k}") for k in ("qweight", "qzeros", "scales", "g_idx")}
            qts[n] = unpack_gptq(parts, qc["bits"], gs, qc["sym"], v2)
    except FileFormatError:
        raise
    except (KeyError, TypeError, ValueError, OSError, RuntimeError, SafetensorError) as e:
        raise FileFormatError(f"{folder} is a damaged GPTQ checkpoint ({e.__class__.__name__}: {e})") from e
    return qts, qc, tensors


def load_gptq_checkpoint(folder: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """(model with dequantized weights in `dtype`, tokenizer, QuantizedTensor by name) from a GPTQ checkpoint:
    the round trip of `save_gptq_checkpoint`, without any GPTQ kernel package."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    qts, _, rest = read_gptq_tensors(folder)
    cfg_dict = json.loads((folder / "config.json").read_text())
    cfg_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**cfg_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in rest.items()}
    for n, qt in qts.items():
        state[f"{n}.weight"] = qt.dequantize(dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise FileFormatError(f"checkpoint does not match its config: missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}")
    model.tie_weights()
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder) if (folder / "tokenizer_config.json").is_file() else None
    return model, tokenizer, qts
