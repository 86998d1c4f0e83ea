"""Reading GGUF files back: metadata, float32 tensors (qlab's own dequantization), and a runnable HF model.

    file = "GGUF" | u32 version | u64 n_tensors | u64 n_kv | kv pairs | tensor infos | padding | tensor data

The container is parsed by the `gguf` package's GGUFReader after qlab's own sanity checks (magic, version,
counts that fit in the file, every tensor's bytes inside the file), so a truncated or corrupted file raises
FileFormatError instead of crashing or hanging. attn_q / attn_k rows are put back into Hugging Face's rotary
order (the inverse of writer.gguf_rows_from_hf).
"""

from __future__ import annotations

import os
import struct
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import BadArgumentError, FileFormatError, ModelNotFoundError, QlabError
from .writer import hf_name

_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset


def _check_header(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:4] != b"GGUF":
        raise FileFormatError(f"{path} is not a GGUF file (no 'GGUF' magic in its first bytes): give a .gguf file")
    version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
    if version not in (2, 3):
        raise FileFormatError(f"{path}: GGUF version {version} is not supported (2 or 3): the header is corrupted "
                              f"or the file is from a newer llama.cpp")
    if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES > size - 24:
        raise FileFormatError(f"{path}: the header announces {n_tensors} tensors and {n_kv} metadata entries, more "
                              f"than a {size}-byte file can hold: the file is corrupted or truncated")


def _open(path: str | os.PathLike):
    """The checked GGUFReader of a file; parsed once per file version (a 49k-token vocabulary takes seconds to
    parse): cached on path, inode, size, mtime and a checksum of the first 4 MB (header, metadata, tensor infos)."""
    import zlib

    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"no GGUF file at {path}")
    st = path.stat()
    with open(path, "rb") as f:
        crc = zlib.crc32(f.read(1 << 22))
    return _open_parsed(str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, crc)


@lru_cache(maxsize=8)
def _open_parsed(path_str: str, ino: int, size: int, mtime_ns: int, crc: int):
    import gguf

    path = Path(path_str)
    _check_header(path)
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:  # noqa: BLE001 - any parse failure of a damaged file is a format error
        raise FileFormatError(f"{path} is not a readable GGUF file ({e.__class__.__name__}: {e}); it is truncated "
                              f"or corrupted: re-download or re-export it") from e
    size = path.stat().st_size
    for t in reader.tensors:
        blk, nbytes = gguf.GGML_QUANT_SIZES.get(t.tensor_type, (None, None))
        if blk is None:
            raise FileFormatError(f"{path}: tensor {t.name} has unknown GGML type {t.tensor_type}")
        expected = int(np.prod(t.shape, dtype=np.int64)) // blk * nbytes
        if t.data_offset + expected > size or t.data.nbytes != expected:
            raise FileFormatError(f"{path}: tensor {t.name} needs {expected} bytes at offset {t.data_offset} but the "
                                  f"file has {size} bytes: it is truncated")
    return reader


def _field_value(field):
    import gguf

    if not field.types:
        return None
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        return list(field.contents())
    return field.contents()


def _metadata(reader, path) -> dict:
    try:
        return {k: _field_value(f) for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    except (UnicodeDecodeError, ValueError, IndexError) as e:
        raise FileFormatError(f"{path}: the metadata cannot be decoded ({e.__class__.__name__}: {e}); the file is "
                              f"corrupted") from e


def read_metadata(path: str | os.PathLike) -> dict:
    """The key/value metadata of a GGUF file (strings, numbers, lists)."""
    return _metadata(_open(path), path)


def _dequantize(t) -> np.ndarray:
    import gguf

    try:
        from . import block_info
        from . import dequantize as qlab_dequantize

        block_info(t.tensor_type.name)
    except (ImportError, QlabError):  # a type qlab has no block format for (IQ*): gguf-py's reference dequantizer
        qlab_dequantize = None
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # numpy order [rows, cols]
    T = gguf.GGMLQuantizationType
    if t.tensor_type == T.F32:
        return np.asarray(t.data, dtype=np.float32).reshape(shape)
    if t.tensor_type in (T.F16, T.BF16, T.F64):
        return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
    try:
        if qlab_dequantize is None:
            raise NotImplementedError
        return np.asarray(qlab_dequantize(np.asarray(t.data, dtype=np.uint8).reshape(-1), t.tensor_type.name, shape),
                          dtype=np.float32).reshape(shape)
    except NotImplementedError:  # types qlab has no block format for (IQ*): gguf-py's reference dequantizer
        return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)


def read_gguf(path: str | os.PathLike, progress: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, {GGUF tensor name: float32 array in numpy order [rows, cols]}) with q/k rows in HF order."""
    from tqdm.auto import tqdm

    from ..model import hf_rows_from_gguf

    reader = _open(path)
    meta = _metadata(reader, path)
    arch = meta.get("general.architecture", "llama")
    n_head = meta.get(f"{arch}.attention.head_count")
    n_kv = meta.get(f"{arch}.attention.head_count_kv", n_head)
    tensors = {}
    for t in tqdm(reader.tensors, desc="reading GGUF", disable=not progress):
        try:
            a = _dequantize(t)
        except (ValueError, IndexError) as e:
            raise FileFormatError(f"{path}: tensor {t.name} cannot be decoded ({e}): the file is corrupted") from e
        if arch == "llama" and ".attn_q." in t.name and n_head:
            a = hf_rows_from_gguf(a, int(n_head))
        elif arch == "llama" and ".attn_k." in t.name and n_kv:
            a = hf_rows_from_gguf(a, int(n_kv))
        tensors[t.name] = a
    return meta, tensors


def tensor_types(path: str | os.PathLike) -> dict[str, str]:
    """{GGUF tensor name: GGML type name} of a file."""
    return {t.name: t.tensor_type.name for t in _open(path).tensors}


def llama_config(meta: dict, tied: bool):
    """A transformers LlamaConfig from a GGUF file's llama.* metadata."""
    from transformers import LlamaConfig

    if meta.get("general.architecture") != "llama":
        raise FileFormatError(f"qlab loads llama-architecture GGUF files; this one is "
                              f"{meta.get('general.architecture')!r}")
    g = lambda key, default=None: meta.get(f"llama.{key}", default)  # noqa: E731
    try:
        n_head = int(g("attention.head_count"))
        hidden = int(g("embedding_length"))
        vocab = g("vocab_size") or len(meta["tokenizer.ggml.tokens"])
        return LlamaConfig(
            vocab_size=int(vocab), hidden_size=hidden, intermediate_size=int(g("feed_forward_length")),
            num_hidden_layers=int(g("block_count")), num_attention_heads=n_head,
            num_key_value_heads=int(g("attention.head_count_kv", n_head)),
            head_dim=int(g("attention.key_length", hidden // n_head)),
            max_position_embeddings=int(g("context_length", 2048)),
            rms_norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_parameters={"rope_type": "default", "rope_theta": float(g("rope.freq_base", 10000.0))},
            tie_word_embeddings=tied,
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"), eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
            pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
        )
    except (TypeError, KeyError) as e:
        raise FileFormatError(f"the GGUF metadata lacks llama hyper-parameters ({e}): the file is incomplete") from e


def load_gguf_model(path: str | os.PathLike, progress: bool = False, tokenizer=None):
    """(model, tokenizer) from a llama GGUF file: qlab dequantizes every tensor into a float32 LlamaForCausalLM;
    the tokenizer comes from transformers' GGUF tokenizer support (or is the one given)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = Path(path)
    meta, tensors = read_gguf(path, progress=progress)
    cfg = llama_config(meta, tied="output.weight" not in tensors)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    sd = {}
    for g, a in tensors.items():
        name = hf_name(g)
        if name is None:
            continue
        sd[name] = torch.from_numpy(np.array(a, dtype=np.float32))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise FileFormatError(f"{path}: tensors missing {missing[:5]} / unexpected {unexpected[:5]} for a llama model")
    model.tie_weights()
    model.eval()
    model.qlab_description = f"{path.name} (GGUF {meta.get('general.file_type')}, dequantized by qlab to float32)"
    if tokenizer is None:  # tokenizer=False: no tokenizer wanted
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tokenizer


def open_llama(path: str | os.PathLike, ctx: int = 512, n_threads: int | None = None, flash_attn: bool = False,
               kv_type: str = "f32"):
    """llama_cpp.Llama on a GGUF file with all logits and an fp32 KV cache (kv_type="f16" for llama.cpp's default),
    flash attention off unless asked, without ggml's extra CPU buffer types.

    The extra buffer types include ggml's AMX path, which dies with SIGILL ("Illegal instruction") on machines whose
    CPU reports AMX but whose kernel/sandbox does not grant AMX tile state; the plain SIMD path is used instead."""
    import llama_cpp
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
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        raise ModelNotFoundError("llama-cpp-python is not installed: the llama.cpp cross-check is unavailable") from e
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


# byte layout of one block, (field, kind, bytes): f16 = half floats, u8 = raw bytes (packed), i8 = signed codes,
# nib = two 4-bit codes per byte (low nibbles are weights 0..15, high nibbles 16..31), bits = one bit per weight
BLOCK_LAYOUTS: dict[str, list[tuple[str, str, int]]] = {
    "Q4_0": [("d", "f16", 2), ("qs", "nib", 16)],
    "Q4_1": [("d", "f16", 2), ("m", "f16", 2), ("qs", "nib", 16)],
    "Q5_0": [("d", "f16", 2), ("qh", "bits", 4), ("qs", "nib", 16)],
    "Q5_1": [("d", "f16", 2), ("m", "f16", 2), ("qh", "bits", 4), ("qs", "nib", 16)],
    "Q8_0": [("d", "f16", 2), ("qs", "i8", 32)],
    "Q2_K": [("scales", "u8", 16), ("qs", "u8", 64), ("d", "f16", 2), ("dmin", "f16", 2)],
    "Q3_K": [("hmask", "u8", 32), ("qs", "u8", 64), ("scales", "u8", 12), ("d", "f16", 2)],
    "Q4_K": [("d", "f16", 2), ("dmin", "f16", 2), ("scales", "u8", 12), ("qs", "nib", 128)],
    "Q5_K": [("d", "f16", 2), ("dmin", "f16", 2), ("scales", "u8", 12), ("qh", "u8", 32), ("qs", "nib", 128)],
    "Q6_K": [("ql", "u8", 128), ("qh", "u8", 64), ("scales", "i8", 16), ("d", "f16", 2)],
}


def block_fields(block: bytes | np.ndarray, qtype: str) -> list[dict]:
    """Decode one block's bytes field by field: [{field, offset, bytes, kind, values}] (values decoded for f16,
    int8, 4-bit and 1-bit fields; packed fields are given as their raw bytes)."""
    from ..errors import BadArgumentError

    if qtype not in BLOCK_LAYOUTS:
        raise BadArgumentError(f"no block layout for {qtype}: choose one of {', '.join(BLOCK_LAYOUTS)}")
    b = np.frombuffer(bytes(np.asarray(block, dtype=np.uint8).tobytes()), dtype=np.uint8)
    size = sum(n for _, _, n in BLOCK_LAYOUTS[qtype])
    if b.size != size:
        raise BadArgumentError(f"a {qtype} block is {size} bytes, got {b.size}")
    out, off = [], 0
    for field, kind, n in BLOCK_LAYOUTS[qtype]:
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
    import llama_cpp

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
