"""Whole-model GGUF export: a Hugging Face llama-architecture model -> a .gguf file llama.cpp loads and runs.

The container is written with the `gguf` package's GGUFWriter; qlab supplies everything in it:

    header  "GGUF", version 3, tensor count, metadata count
    kv      general.* and llama.* hyper-parameters (block_count, embedding_length, head_count, rope ...),
            the tokenizer ("gpt2": tokens, token types, BPE merges, special ids; or "llama": SentencePiece-style
            BPE with byte fallback: tokens, scores, token types incl. the byte tokens <0x00>..<0xFF>)
    infos   per tensor: GGUF name, shape (ne[0] = input features first), GGML type, data offset
    data    each tensor's raw bytes: float32/float16, or qlab's own quantized blocks (qlab.gguf.quantize)

Tensor names follow llama.cpp (model.layers.3.self_attn.q_proj.weight -> blk.3.attn_q.weight, qlab.gguf.names).
The rows of attn_q / attn_k are permuted from Hugging Face's rotary layout (two halves per head) to llama.cpp's
(pairs interleaved): rows [head, half, i] -> [head, i, half]. Per-tensor types come from `mixes.tensor_type`,
block sizes from the GGUF type registry (qlab.gguf.types). ``settings`` (the run's settings) are stored as JSON
under the metadata key "qlab.settings" (qlab.gguf.reader.read_settings reads them back).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter, TokenType
from tqdm.auto import tqdm

from ..errors import BadArgumentError, NonFiniteError, QlabError
from ..output import atomic_file
from . import mixes
from .names import SETTINGS_KEY, WRITER_KEY, gguf_name, gguf_rows_from_hf
from .reader import read_metadata
from .types import TYPES

T = GGMLQuantizationType

# sha256 of str(tokenizer.encode(CHKTXT)) -> llama.cpp pre-tokenizer name (facts published by llama.cpp's
# convert_hf_to_gguf_update.py; a few common byte-level BPE families)
CHKTXT = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ "
          "(multiple emojis concatenated) ✅ 🦙🦙 "
          "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
          "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
          "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL")
PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4": "gpt-2",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
}


def _rope_theta(cfg) -> float:
    rp = getattr(cfg, "rope_parameters", None) or {}
    if rp.get("rope_type", "default") not in ("default", None):
        raise BadArgumentError(f"rope scaling {rp.get('rope_type')!r} is not supported by qlab's GGUF writer: "
                               f"export a model with plain rotary embeddings")
    theta = rp.get("rope_theta", getattr(cfg, "rope_theta", None))
    return float(theta if theta is not None else 10000.0)


def _add_hparams(w: GGUFWriter, cfg, ftype: int, name: str) -> None:
    n_head = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_head
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    w.add_name(name)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(head_dim)
    if head_dim != cfg.hidden_size // n_head:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(ftype)
    w.add_quantization_version(2)
    w.add_string(WRITER_KEY, "qlab")


def written_by_qlab(path: Path) -> bool:
    """Whether a GGUF file says qlab wrote it (the only files export_gguf replaces)."""
    try:
        return read_metadata(path).get(WRITER_KEY) == "qlab"
    except QlabError:
        return False


def _pre_tokenizer(tokenizer) -> str:
    ids = tokenizer.encode(CHKTXT, add_special_tokens=False)
    return PRE_TOKENIZERS.get(hashlib.sha256(str(ids).encode()).hexdigest(), "default")


def _add_special_ids(w: GGUFWriter, tokenizer, add_space_prefix: bool) -> None:
    for attr, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                      ("unk_token_id", w.add_unk_token_id), ("pad_token_id", w.add_pad_token_id)):
        tid = getattr(tokenizer, attr, None)
        if tid is not None:
            add(int(tid))
    w.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    w.add_add_space_prefix(add_space_prefix)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        w.add_chat_template(template)


def _vocab_list(tokenizer, vocab_size: int) -> tuple[list[str], list[TokenType], dict]:
    vocab = tokenizer.get_vocab()
    added = {t.content: t for t in tokenizer.added_tokens_decoder.values()}
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [TokenType.UNUSED] * vocab_size
    for tok, i in vocab.items():
        if i >= vocab_size:
            raise BadArgumentError(f"token id {i} ≥ the model's vocab_size {vocab_size}")
        tokens[i] = tok
        if tok in added:
            types[i] = TokenType.CONTROL if added[tok].special else TokenType.USER_DEFINED
        else:
            types[i] = TokenType.NORMAL
    return tokens, types, vocab


_BYTE_TOKEN = re.compile(r"^<0x[0-9A-F]{2}>$")


def _space_prefix(spec: dict) -> bool:
    """Whether the HF pipeline prepends "▁" to the text (normalizer Prepend, or a Metaspace pre-tokenizer)."""
    text = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")])
    return '"Prepend"' in text or ('"Metaspace"' in text and '"prepend_scheme": "never"' not in text)


def _add_llama_spm(w: GGUFWriter, tokenizer, spec: dict, vocab_size: int) -> None:
    """tokenizer.ggml.model = "llama" (SentencePiece-style BPE with byte fallback: Llama 2, Mistral, TinyLlama).

    llama.cpp's SPM tokenizer starts from the text's characters (spaces as "▁", one prepended if add_space_prefix)
    and repeatedly merges the adjacent pair whose joined token has the highest score; characters with no token
    become byte tokens <0x00>..<0xFF> (type BYTE). score = −(rank of the BPE merge that makes the token)
    reproduces BPE's merge order (single characters: 0, they are never a merge result)."""
    model = spec["model"]
    tokens, types, vocab = _vocab_list(tokenizer, vocab_size)
    scores = [0.0] * vocab_size
    for r, m in enumerate(model["merges"]):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        i = vocab.get(a + b)
        if i is not None and scores[i] == 0.0:
            scores[i] = -float(r + 1)
    missing = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in vocab]
    if missing:
        raise BadArgumentError(f"a byte-fallback tokenizer needs the 256 byte tokens; {missing[:3]}... are missing")
    for i, t in enumerate(tokens):
        if _BYTE_TOKEN.match(t) and types[i] == TokenType.NORMAL:
            types[i] = TokenType.BYTE
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and 0 <= unk < vocab_size:
        types[unk] = TokenType.UNKNOWN
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types([int(t) for t in types])
    _add_special_ids(w, tokenizer, _space_prefix(spec))


def _add_tokenizer(w: GGUFWriter, tokenizer, vocab_size: int) -> None:
    """tokenizer.ggml.*: byte-level BPE ("gpt2": tokens, token types, BPE merges, special ids) or SentencePiece-style
    BPE with byte fallback ("llama": tokens, scores, token types, special ids), as llama.cpp reads them."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise BadArgumentError("qlab's GGUF writer needs a fast (tokenizers) tokenizer")
    spec = json.loads(backend.to_str())
    if spec["model"]["type"] == "BPE" and spec["model"].get("byte_fallback"):
        return _add_llama_spm(w, tokenizer, spec, vocab_size)
    if spec["model"]["type"] != "BPE":
        raise BadArgumentError(f"qlab's GGUF writer supports BPE tokenizers (byte-level, GPT-2 style, e.g. SmolLM2, "
                               f"Llama 3; or with byte fallback, Llama 2 style); this one is {spec['model']['type']}")
    tokens, types, _ = _vocab_list(tokenizer, vocab_size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(_pre_tokenizer(tokenizer))
    w.add_token_list(tokens)
    w.add_token_types([int(t) for t in types])
    w.add_token_merges(merges)
    _add_special_ids(w, tokenizer, False)


def _quantize_rows(x: np.ndarray, t: GGMLQuantizationType, imatrix: np.ndarray | None) -> np.ndarray:
    """Rows of float32 -> raw GGML block bytes [rows, bytes per row] with qlab's block formats."""
    from . import quantize  # qlab.gguf.quantize: qlab's own byte-exact block formats

    raw = np.asarray(quantize(x, t.name, imatrix=imatrix), dtype=np.uint8)
    return raw.reshape(x.shape[0], _nbytes(t, x.shape[1]))


def _nbytes(t: GGMLQuantizationType, n: int) -> int:
    """Bytes of n elements (whole blocks) of type t."""
    gt = TYPES[t.name]
    return n // gt.block_size * gt.type_size


def settings_json(settings: dict) -> str:
    """The JSON text export_gguf stores under SETTINGS_KEY (BadArgumentError if settings is not a JSON object)."""
    if not isinstance(settings, dict):
        raise BadArgumentError(f"settings must be a dict (the run's settings), got {type(settings).__name__}")
    try:
        return json.dumps(settings, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise BadArgumentError(f"settings must be JSON-serialisable (str, numbers, bools, None, lists, dicts with "
                               f"string keys; no NaN/Inf): {e}") from e


def model_tensors(model) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The model's float32 tensors by GGUF name (q/k rows permuted to llama.cpp's order), and GGUF -> HF names."""
    cfg = model.config
    if getattr(cfg, "model_type", None) != "llama":
        raise BadArgumentError(f"qlab's GGUF writer handles llama-architecture models; this one is "
                               f"{getattr(cfg, 'model_type', type(model).__name__)!r}")
    n_head = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_head
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    out, names = {}, {}
    for name, p in model.state_dict().items():
        g = gguf_name(name)
        if g is None or (tied and g == "output.weight"):
            continue
        a = p.detach().to(torch.float32).cpu().numpy()
        if not np.isfinite(a).all():
            raise NonFiniteError(f"{name} holds NaN/Inf: a GGUF of it would be garbage; fix the model first")
        if ".attn_q." in g:
            a = gguf_rows_from_hf(a, n_head)
        elif ".attn_k." in g:
            a = gguf_rows_from_hf(a, n_kv)
        out[g], names[g] = np.ascontiguousarray(a), name
    return out, names


def export_gguf(model, tokenizer, out_path: str | os.PathLike, qtype: str = "Q8_0",
                imatrix: dict[str, np.ndarray] | None = None, progress: bool = True, pure: bool = False,
                overwrite: bool = False, protect=(), settings: dict | None = None) -> Path:
    """Write model + tokenizer as a GGUF file of type qtype (F32, F16, Q8_0, Q4_0 ... or a mix like Q4_K_M).

    imatrix: {Hugging Face Linear name: mean x² per input channel} (collect_imatrix), used by the types that
    take importance weights. pure: every weight gets the file type's default type (llama-quantize --pure).
    The file is written to a temporary name in the same folder and renamed: never a truncated file; an existing
    out_path is replaced only with overwrite=True and only when qlab wrote it (general.quantized_by = "qlab").
    settings: the run's settings (method, bits, group size, calibration source ...; a JSON-serialisable dict),
    stored as one JSON string under the metadata key "qlab.settings" (qlab.gguf.reader.read_settings reads it)."""
    settings_text = None if settings is None else settings_json(settings)
    ftype_name = mixes.file_type(qtype)
    ftype = int(mixes.FILE_TYPES[ftype_name][0])
    out_path = Path(out_path)
    if out_path.suffix != ".gguf":
        raise BadArgumentError(f"a GGUF file name should end in .gguf, got {out_path.name}")
    cfg = model.config
    tensors, hf_names = model_tensors(model)
    n_gqa = cfg.num_attention_heads // (getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    imatrix = {k.removesuffix(".weight"): np.asarray(v, dtype=np.float32) for k, v in (imatrix or {}).items()}
    tied = "output.weight" not in tensors
    types = {g: mixes.tensor_type(ftype_name, g, a.shape, cfg.num_hidden_layers, n_gqa, tied, bool(imatrix), pure)
             for g, a in tensors.items()}

    size = sum(_nbytes(types[g], a.size) for g, a in tensors.items())
    with atomic_file(out_path, overwrite, size, protect, recognise=written_by_qlab) as tmp:
        w = GGUFWriter(tmp, "llama")
        _add_hparams(w, cfg, ftype, str(getattr(model, "qlab_description", None) or
                                        getattr(cfg, "_name_or_path", "") or "model")[:200])
        if settings_text is not None:
            w.add_string(SETTINGS_KEY, settings_text)
        _add_tokenizer(w, tokenizer, cfg.vocab_size)
        for g in tqdm(list(tensors), desc=f"GGUF {ftype_name}", disable=not progress):
            a, t = tensors.pop(g), types[g]
            if t == T.F32:
                w.add_tensor(g, a)
            elif t == T.F16:
                w.add_tensor(g, a.astype(np.float16))
            else:
                im = imatrix.get(hf_names[g].removesuffix(".weight"))
                if im is not None and im.shape != (a.shape[1],):
                    raise BadArgumentError(f"imatrix for {hf_names[g]} has shape {im.shape}, expected "
                                           f"({a.shape[1]},)")
                w.add_tensor(g, _quantize_rows(a, t, im), raw_dtype=t)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file(progress=False)
        w.close()
    return out_path
