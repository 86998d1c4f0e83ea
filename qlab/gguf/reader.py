"""Reading GGUF files back: metadata, float32 tensors (qlab's own dequantization), and a runnable HF model.

    file = "GGUF" | u32 version | u64 n_tensors | u64 n_kv | kv pairs | tensor infos | padding | tensor data

The container is parsed by qlab itself (qlab.gguf.container): every count, length and offset is checked
against the bytes that remain before it is used, alignment and tensor layout as llama.cpp requires, so a
truncated, corrupted or crafted file raises FileFormatError instead of crashing, hanging or filling memory.
Before a model is built, its hyper-parameters, tensor shapes and types and its tokenizer metadata are checked
(qlab.gguf.llama_check). attn_q / attn_k rows are put back into Hugging Face's rotary order
(qlab.gguf.names.hf_rows_from_gguf). ``read_settings`` returns the settings qlab's writer stored in the file.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import BadArgumentError, FileFormatError, ModelNotFoundError, QlabError
from . import dequantize as qlab_dequantize
from .container import Container, TensorInfo, open_container
from .llama_check import check_tensors, check_tokenizer, int_key, llama_hparams
from .llamacpp import require_llama_cpp
from .names import SETTINGS_KEY, hf_name, hf_rows_from_gguf
from .types import QTYPES, TYPES

_FLOAT_TYPES = ("F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64")


def _open(path: str | os.PathLike) -> Container:
    """The checked container of a file; parsed once per file version (a 49k-token vocabulary takes a while to
    parse): cached on path, inode, size, mtime and a checksum of the first 4 MB (header, metadata, tensor infos)."""
    import zlib

    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"no GGUF file at {path}")
    try:
        st = path.stat()
        with open(path, "rb") as f:
            crc = zlib.crc32(f.read(1 << 22))
        return _open_parsed(str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, crc)
    except OSError as e:  # unreadable (permissions, a device error): nothing to parse
        raise ModelNotFoundError(f"cannot read the GGUF file {path} ({e.strerror or e}): check its permissions") from e


@lru_cache(maxsize=8)
def _open_parsed(path_str: str, ino: int, size: int, mtime_ns: int, crc: int) -> Container:
    return open_container(path_str)


def _metadata(container: Container) -> dict:
    """A fresh copy of the metadata (lists copied: callers may edit them without touching the cache)."""
    return {k: list(v) if isinstance(v, list) else v for k, v in container.metadata.items()}


def read_metadata(path: str | os.PathLike) -> dict:
    """The key/value metadata of a GGUF file (strings, numbers, lists)."""
    return _metadata(_open(path))


def read_settings(path: str | os.PathLike) -> dict | None:
    """The settings of the qlab run that wrote a GGUF file (export_gguf's ``settings``), or None when the file
    holds none (not written by qlab, or written without settings)."""
    import json

    text = _open(path).metadata.get(SETTINGS_KEY)
    if text is None:
        return None
    try:
        settings = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        settings = None
    if not isinstance(settings, dict):
        raise FileFormatError(f"{path}: metadata key {SETTINGS_KEY!r} must hold a JSON object as a string, got "
                              f"{str(text)[:80]!r}: the file is corrupted")
    return settings


def _gguf_py_dequantizes(type_name: str) -> bool:
    """Whether gguf-py has a dequantizer for this type (qlab delegates IQ*, TQ*, MXFP4 to it)."""
    import gguf.quants

    return any(t.name == type_name for t in getattr(gguf.quants, "_type_traits", {}))


def loadable(type_name: str) -> bool:
    """Whether a model weight may have this ggml type: a float type, one of qlab's block formats, or another type
    gguf-py dequantizes (IQ*, TQ*, MXFP4); integer types (I8..I64) are read as numbers, never as weights."""
    return type_name in ("F32", "F16", "BF16", "F64") or type_name in QTYPES or _gguf_py_dequantizes(type_name)


def decodable(type_name: str) -> bool:
    """Whether read_gguf can turn a tensor of this type into numbers: the float and integer types, qlab's block
    formats, and the types gguf-py dequantizes."""
    return type_name in _FLOAT_TYPES or loadable(type_name)


def _dequantize(t: TensorInfo) -> np.ndarray:
    """float32 values of a tensor of a decodable type, in numpy order: qlab's block formats; floats directly;
    gguf-py for the rest."""
    import gguf

    if t.type_name == "BF16":
        return (t.raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(t.shape)
    if t.type_name in _FLOAT_TYPES:
        return np.asarray(t.data, dtype=np.float32)
    if t.type_name in QTYPES:
        return np.asarray(qlab_dequantize(t.raw, t.type_name, t.shape), dtype=np.float32)
    return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(t.shape)


def _head_counts(meta: dict, path) -> tuple[int | None, int | None]:
    """(head_count, head_count_kv) of a llama file when present, checked as positive integers."""
    if meta.get("general.architecture", "llama") != "llama" or "llama.attention.head_count" not in meta:
        return None, None
    n_head = int_key(meta, "llama.attention.head_count", path)
    return n_head, int_key(meta, "llama.attention.head_count_kv", path, n_head)


def _to_hf_rows(name: str, a: np.ndarray, heads: tuple, path) -> np.ndarray:
    """attn_q / attn_k rows from llama.cpp's interleaved rotary order to Hugging Face's."""
    n = heads[0] if ".attn_q." in name else heads[1] if ".attn_k." in name else None
    if n is None:
        return a
    if a.ndim != 2 or a.shape[0] % (2 * n):
        raise FileFormatError(f"{path}: tensor {name!r} has shape {a.shape}; its rows must split into {n} heads of "
                              f"rotary pairs (a multiple of {2 * n}): the file is corrupted")
    return hf_rows_from_gguf(a, n)


def read_gguf(path: str | os.PathLike, progress: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, {GGUF tensor name: float32 array in numpy order [rows, cols]}) with q/k rows in HF order."""
    from tqdm.auto import tqdm

    container = _open(path)
    meta = _metadata(container)
    heads = _head_counts(meta, path)
    tensors = {}
    for t in tqdm(container.tensors, desc="reading GGUF", disable=not progress):
        if not decodable(t.type_name):
            raise FileFormatError(f"{path}: tensor {t.name!r} has type {t.type_name}, which neither qlab nor gguf-py "
                                  f"can decode: qlab reads float and block-quantized types")
        try:
            a = _dequantize(t)
        except (ValueError, IndexError, QlabError) as e:
            raise FileFormatError(f"{path}: tensor {t.name!r} of type {t.type_name} cannot be decoded "
                                  f"({e.__class__.__name__}: {e}): qlab reads float and block-quantized types") from e
        tensors[t.name] = _to_hf_rows(t.name, a, heads, path) if heads[0] else a
    return meta, tensors


def tensor_types(path: str | os.PathLike) -> dict[str, str]:
    """{GGUF tensor name: GGML type name} of a file."""
    return {t.name: t.type_name for t in _open(path).tensors}


def llama_config(meta: dict, tied: bool):
    """A transformers LlamaConfig from a GGUF file's llama.* metadata (checked: FileFormatError names the key)."""
    from transformers import LlamaConfig

    hp = llama_hparams(meta)
    try:
        return LlamaConfig(
            vocab_size=hp.vocab, hidden_size=hp.hidden, intermediate_size=hp.ff, num_hidden_layers=hp.layers,
            num_attention_heads=hp.n_head, num_key_value_heads=hp.n_kv, head_dim=hp.head_dim,
            max_position_embeddings=hp.context, rms_norm_eps=hp.eps,
            rope_parameters={"rope_type": "default", "rope_theta": hp.theta}, tie_word_embeddings=tied,
            bos_token_id=hp.special.get("bos"), eos_token_id=hp.special.get("eos"),
            pad_token_id=hp.special.get("padding"))
    except (ValueError, TypeError) as e:  # transformers' own validation, should the checks above miss a rule
        raise FileFormatError(f"the GGUF's llama hyper-parameters do not make a valid LlamaConfig ({e})") from e


def check_llama_file(path: str | os.PathLike, with_tokenizer: bool = True):
    """(container, hyper-parameters) of a llama GGUF file after every check a model build needs: hyper-parameters,
    each expected tensor's shape and type, and (with_tokenizer) the tokenizer metadata."""
    container = _open(path)
    meta = container.metadata
    hp = llama_hparams(meta, path)
    check_tensors(hp, {t.name: (t.shape, t.type_name) for t in container.tensors}, loadable, path)
    if with_tokenizer:
        check_tokenizer(meta, path)
    return container, hp


def _gguf_tokenizer(path: Path):
    """transformers' tokenizer built from the file's (checked) tokenizer metadata; any failure a FileFormatError."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - transformers' converter on checked but unusual metadata
        raise FileFormatError(f"{path}: transformers cannot build a tokenizer from its tokenizer.ggml.* metadata "
                              f"({e.__class__.__name__}: {str(e)[:200]}); pass a tokenizer instead") from e


def load_gguf_model(path: str | os.PathLike, progress: bool = False, tokenizer=None):
    """(model, tokenizer) from a llama GGUF file: qlab dequantizes every tensor into a float32 LlamaForCausalLM;
    the tokenizer comes from transformers' GGUF tokenizer support (or is the one given; False: none).
    Everything is checked before the model is built: a bad file raises FileFormatError naming the key or tensor."""
    from transformers import LlamaForCausalLM

    path = Path(path)
    check_llama_file(path, with_tokenizer=tokenizer is None)
    meta, tensors = read_gguf(path, progress=progress)
    cfg = llama_config(meta, tied="output.weight" not in tensors)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    sd = {hf_name(g): torch.from_numpy(np.array(a, dtype=np.float32)) for g, a in tensors.items() if hf_name(g)}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise FileFormatError(f"{path}: tensors missing {missing[:5]} / unexpected {unexpected[:5]} for a llama model")
    model.tie_weights()
    model.eval()
    model.qlab_description = f"{path.name} (GGUF {meta.get('general.file_type')}, dequantized by qlab to float32)"
    if tokenizer is None:  # tokenizer=False: no tokenizer wanted
        tokenizer = _gguf_tokenizer(path)
    return model, tokenizer


def open_llama(path: str | os.PathLike, ctx: int = 512, n_threads: int | None = None, flash_attn: bool = False,
               kv_type: str = "f32"):
    """llama_cpp.Llama on a GGUF file with all logits and an fp32 KV cache (kv_type="f16" for llama.cpp's default),
    flash attention off unless asked, without ggml's extra CPU buffer types.

    The extra buffer types include ggml's AMX path, which dies with SIGILL ("Illegal instruction") on machines whose
    CPU reports AMX but whose kernel/sandbox does not grant AMX tile state; the plain SIMD path is used instead."""
    llama_cpp = require_llama_cpp()
    import llama_cpp.llama as llama_module

    kv = {"f32": 0, "f16": 1}
    if kv_type not in kv:
        raise BadArgumentError(f"kv_type must be 'f32' or 'f16', got {kv_type!r}")
    default = llama_cpp.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    llama_module.llama_cpp.llama_model_default_params = params
    try:
        return llama_cpp.Llama(str(path), logits_all=True, type_k=kv[kv_type], type_v=kv[kv_type], n_ctx=ctx,
                               n_batch=ctx, n_ubatch=ctx, n_threads=n_threads or min(2, os.cpu_count() or 1),
                               flash_attn=flash_attn, verbose=False)
    finally:
        llama_module.llama_cpp.llama_model_default_params = default


def llama_cpp_logprobs(path: str | os.PathLike, ws: list[torch.Tensor], ctx: int = 512, n_threads: int | None = None,
                       flash_attn: bool = False, kv_type: str = "f32") -> Iterator[torch.Tensor]:
    """llama.cpp's log-softmax predictions for tokens 1..len-1 of each window, one [len-1, vocab] float32 tensor per
    window, yielded as computed (one model and context for all windows)."""
    require_llama_cpp()
    _open(path)  # clear errors for damaged files before llama.cpp sees them
    llm = open_llama(path, ctx, n_threads, flash_attn=flash_attn, kv_type=kv_type)
    try:
        for w in ws:
            llm.reset()
            llm.eval(w.tolist())
            yield torch.log_softmax(torch.from_numpy(np.array(llm.scores[: len(w) - 1], dtype=np.float32)), -1)
    finally:
        llm.close()


def llama_cpp_evaluate(path: str | os.PathLike, tokens: torch.Tensor, ctx: int = 512, reference=None,
                       progress: bool = False, n_threads: int | None = None, flash_attn: bool = False,
                       kv_type: str = "f32"):
    """Perplexity of a GGUF file run by llama.cpp itself (llama-cpp-python logits, fp32 KV cache), under qlab's
    protocol (qlab.eval: non-overlapping ctx windows, all but each window's first token scored). With an
    Evaluator as reference, also KL(P_ref ‖ P_llama.cpp) and top-1 agreement on the same positions."""
    import math
    import time

    from tqdm.auto import tqdm

    from ..eval import EvalResult, windows

    require_llama_cpp()  # before any work (llama_cpp_logprobs is a generator: it would say so only at window 1)
    start = time.perf_counter()
    ws = windows(tokens, ctx) if reference is None else reference.windows
    nll = kl = agree = 0.0
    n = 0
    lps = llama_cpp_logprobs(path, ws, ctx, n_threads, flash_attn=flash_attn, kv_type=kv_type)
    for k, (w, lp) in enumerate(tqdm(zip(ws, lps), total=len(ws), desc="llama.cpp", disable=not progress)):
        nll -= float(lp.gather(1, w[1:, None]).sum())
        if reference is not None:
            ref = reference.ref_logprobs[k]
            kl += float((ref.exp() * (ref - lp)).sum())
            agree += float((ref.argmax(-1) == lp.argmax(-1)).sum())
        n += len(w) - 1
    extra = {} if reference is None else {"kl": kl / n, "top1": agree / n}
    return EvalResult(math.exp(nll / n), n, time.perf_counter() - start, ctx, **extra)


def block_fields(block: bytes | np.ndarray, qtype: str) -> list[dict]:
    """Decode one block's bytes field by field: [{field, offset, bytes, kind, values}] (values decoded for f16,
    int8, 4-bit and 1-bit fields; packed fields are given as their raw bytes). The layouts are the GGUF type
    registry's (qlab.gguf.types)."""
    layout = TYPES[qtype].layout if qtype in TYPES else None
    if layout is None:
        raise BadArgumentError(f"no block layout for {qtype}: choose one of "
                               f"{', '.join(n for n, t in TYPES.items() if t.layout)}")
    b = np.frombuffer(bytes(np.asarray(block, dtype=np.uint8).tobytes()), dtype=np.uint8)
    size = sum(n for _, _, n in layout)
    if b.size != size:
        raise BadArgumentError(f"a {qtype} block is {size} bytes, got {b.size}")
    out, off = [], 0
    for field, kind, n in layout:
        raw = b[off:off + n]
        if kind == "f16":
            values = raw.view(np.float16).astype(np.float32)
        elif kind == "i8":
            values = raw.view(np.int8)
        elif kind == "nib":
            values = np.concatenate([raw & 0x0F, raw >> 4]) if n == 16 else raw
            if n != 16:  # k-quants: 32-byte groups, low nibbles then high nibbles
                values = np.concatenate([np.concatenate([g & 0x0F, g >> 4]) for g in raw.reshape(-1, 32)])
        elif kind == "bits":
            values = np.unpackbits(raw, bitorder="little")
        else:
            values = raw
        out.append({"field": field, "offset": off, "bytes": n, "kind": kind, "values": values})
        off += n
    return out


def ggml_runtime_facts() -> dict:
    """How llama.cpp's CPU backend multiplies quantized weights: the activation type each weight type's dot
    product uses (type traits' vec_dot_type), whether a BLAS library is linked, and the compiled SIMD features."""
    import ctypes
    import subprocess

    import gguf

    llama_cpp = require_llama_cpp()
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    cpu = ctypes.CDLL(str(lib_dir / "libggml-cpu.so"))

    class Traits(ctypes.Structure):
        _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p), ("vec_dot_type", ctypes.c_int),
                    ("nrows", ctypes.c_int64)]

    cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(Traits)
    cpu.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
    dot = {}
    for name in ("F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"):
        t = gguf.GGMLQuantizationType[name]
        dot[name] = gguf.GGMLQuantizationType(cpu.ggml_get_type_traits_cpu(int(t)).contents.vec_dot_type).name
    linked = []
    for so in sorted(lib_dir.glob("*.so")):
        try:
            linked += subprocess.run(["ldd", str(so)], capture_output=True, text=True, timeout=10).stdout.split()
        except (OSError, subprocess.SubprocessError):
            pass
    blas_libs = sorted({x for x in linked if any(k in x.lower() for k in ("blas", "mkl", "accelerate"))})
    return {"vec_dot_type": dot, "blas_libraries": blas_libs,
            "ggml_blas_backend": any(lib_dir.glob("libggml-blas*")),
            "system_info": llama_cpp.llama_print_system_info().decode().strip()}
