"""Checks a llama GGUF file's hyper-parameters, tensors and tokenizer metadata before any model is built.

    hparams  every llama.* key qlab reads: an integer (not a bool, float or string) in range, or a positive
             finite float; heads divide the hidden size (unless key_length is given), kv heads divide heads,
             value_length == key_length, rope.dimension_count == head_dim (qlab's llama rotates whole heads)
    tensors  every tensor the config implies exists with that shape (numpy order [rows, cols]) and a type qlab
             can dequantize; no per-block tensor beyond block_count
    tokenizer tokenizer.ggml.model is "gpt2" or "llama"; tokens a list of strings, one per vocabulary entry;
             token_type / scores lists of that length; merges "a b" pairs of tokens whose join is a token;
             every tokenizer.ggml.*_token_id an integer in [0, vocab)

Every failure is a FileFormatError naming the key or tensor and saying what is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import FileFormatError
from .names import hf_name

INT_MAX = 2**31 - 1  # hyper-parameters are int32 in llama.cpp
_MISSING = object()
TOKENIZER_MODELS = ("gpt2", "llama")


def _fail(path, key: str, problem: str):
    raise FileFormatError(f"{path}: {key} {problem}: the file is corrupted or not a llama model qlab can load")


def int_key(meta: dict, key: str, path, default=_MISSING, lo: int = 1, hi: int = INT_MAX) -> int:
    """meta[key] as an int in [lo, hi]; bools, floats, strings and lists are wrong types."""
    v = meta.get(key, default)
    if v is _MISSING:
        _fail(path, f"key {key!r}", "is missing")
    if isinstance(v, bool) or not isinstance(v, int):
        _fail(path, f"key {key!r}", f"must be an integer, it is {type(v).__name__} {_short(v)}")
    if not lo <= v <= hi:
        _fail(path, f"key {key!r}", f"is {v}, outside [{lo}, {hi}]")
    return v


def float_key(meta: dict, key: str, path, default: float) -> float:
    """meta[key] as a positive finite float (ints accepted, bools not)."""
    v = meta.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        _fail(path, f"key {key!r}", f"must be a number, it is {type(v).__name__} {_short(v)}")
    if not (math.isfinite(v) and v > 0):
        _fail(path, f"key {key!r}", f"is {v}, it must be positive and finite")
    return float(v)


def _short(v) -> str:
    text = repr(v)
    return text if len(text) < 60 else text[:57] + "..."


@dataclass(frozen=True)
class LlamaHParams:
    """The validated hyper-parameters of a llama GGUF file."""

    vocab: int
    hidden: int
    ff: int
    layers: int
    n_head: int
    n_kv: int
    head_dim: int
    context: int
    eps: float
    theta: float
    special: dict  # tokenizer.ggml.<name>_token_id -> id, for the ids present


def _vocab(meta: dict, path) -> int:
    """llama.vocab_size, else the number of tokens; both present: they agree."""
    tokens = meta.get("tokenizer.ggml.tokens")
    if tokens is not None and not isinstance(tokens, list):
        _fail(path, "key 'tokenizer.ggml.tokens'", f"must be an array of strings, it is {type(tokens).__name__}")
    if "llama.vocab_size" not in meta and not tokens:
        _fail(path, "keys 'llama.vocab_size' and 'tokenizer.ggml.tokens'", "are both missing or empty")
    vocab = int_key(meta, "llama.vocab_size", path, len(tokens or ()))
    if tokens is not None and len(tokens) != vocab:
        _fail(path, "key 'tokenizer.ggml.tokens'", f"holds {len(tokens)} tokens but llama.vocab_size is {vocab}")
    return vocab


def special_ids(meta: dict, vocab: int, path) -> dict[str, int]:
    """{name: id} of every tokenizer.ggml.<name>_token_id (bos, eos, unknown, padding, ...), each in [0, vocab)."""
    keys = [k for k in meta if k.startswith("tokenizer.ggml.") and k.endswith("_token_id")]
    return {k[len("tokenizer.ggml."):-len("_token_id")]: int_key(meta, k, path, lo=0, hi=vocab - 1) for k in keys}


def llama_hparams(meta: dict, path="GGUF") -> LlamaHParams:
    """Check and collect every llama.* hyper-parameter qlab's LlamaConfig reads."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise FileFormatError(f"{path}: qlab loads llama-architecture GGUF files; general.architecture is "
                              f"{_short(arch)}: give a llama GGUF file")
    n_head = int_key(meta, "llama.attention.head_count", path)
    hidden = int_key(meta, "llama.embedding_length", path)
    n_kv = int_key(meta, "llama.attention.head_count_kv", path, n_head, hi=n_head)
    if n_head % n_kv:
        _fail(path, "key 'llama.attention.head_count_kv'", f"is {n_kv}, which does not divide head_count {n_head}")
    if "llama.attention.key_length" not in meta and hidden % n_head:
        _fail(path, "key 'llama.attention.head_count'", f"is {n_head}, which does not divide embedding_length "
                                                         f"{hidden}")
    head_dim = int_key(meta, "llama.attention.key_length", path, hidden // n_head)
    if head_dim % 2:
        _fail(path, "key 'llama.attention.key_length'", f"is {head_dim}; rotary embeddings need an even head size")
    for key in ("llama.attention.value_length", "llama.rope.dimension_count"):
        if int_key(meta, key, path, head_dim) != head_dim:
            _fail(path, f"key {key!r}", f"is {meta[key]}, but qlab's llama needs it equal to the head size "
                                        f"{head_dim}")
    vocab = _vocab(meta, path)
    special = special_ids(meta, vocab, path)
    return LlamaHParams(
        vocab=vocab, hidden=hidden, ff=int_key(meta, "llama.feed_forward_length", path),
        layers=int_key(meta, "llama.block_count", path), n_head=n_head, n_kv=n_kv, head_dim=head_dim,
        context=int_key(meta, "llama.context_length", path, 2048),
        eps=float_key(meta, "llama.attention.layer_norm_rms_epsilon", path, 1e-5),
        theta=float_key(meta, "llama.rope.freq_base", path, 10000.0), special=special)


def expected_shapes(hp: LlamaHParams, tied: bool) -> dict[str, tuple[int, ...]]:
    """{GGUF tensor name: numpy shape [rows, cols]} that a llama model of these hyper-parameters holds."""
    q, kv = hp.n_head * hp.head_dim, hp.n_kv * hp.head_dim
    shapes = {"token_embd.weight": (hp.vocab, hp.hidden), "output_norm.weight": (hp.hidden,)}
    if not tied:
        shapes["output.weight"] = (hp.vocab, hp.hidden)
    per_block = {"attn_norm": (hp.hidden,), "ffn_norm": (hp.hidden,), "attn_q": (q, hp.hidden),
                 "attn_k": (kv, hp.hidden), "attn_v": (kv, hp.hidden), "attn_output": (hp.hidden, q),
                 "ffn_gate": (hp.ff, hp.hidden), "ffn_up": (hp.ff, hp.hidden), "ffn_down": (hp.hidden, hp.ff)}
    for i in range(hp.layers):
        shapes |= {f"blk.{i}.{k}.weight": s for k, s in per_block.items()}
    return shapes


def check_tensors(hp: LlamaHParams, tensors: dict[str, tuple[tuple[int, ...], str]], loadable, path="GGUF") -> None:
    """Every expected tensor present with its shape and a loadable type; no unexpected model tensor.

    tensors: {GGUF name: (numpy shape, type name)}; loadable(type name) -> whether qlab can dequantize it."""
    if hp.layers > len(tensors):
        _fail(path, "key 'llama.block_count'", f"is {hp.layers} but the file holds only {len(tensors)} tensors")
    expected = expected_shapes(hp, tied="output.weight" not in tensors)
    for name, shape in expected.items():
        if name not in tensors:
            _fail(path, f"tensor {name!r}", "is missing")
        got, type_name = tensors[name]
        if tuple(got) != shape:
            _fail(path, f"tensor {name!r}", f"has shape {tuple(got)} but the hyper-parameters imply {shape}")
        if not loadable(type_name):
            _fail(path, f"tensor {name!r}", f"has type {type_name}, which qlab cannot dequantize")
    extra = sorted(n for n in tensors if n not in expected and hf_name(n) is not None)
    if extra:
        _fail(path, f"tensor {extra[0]!r}", f"is not part of a llama model of {hp.layers} blocks "
                                            f"({len(extra)} such tensors)")


def _list_of(meta: dict, key: str, kinds: tuple, n: int | None, path) -> list | None:
    v = meta.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, kinds) and not isinstance(x, bool) for x in v):
        _fail(path, f"key {key!r}", f"must be an array of {'/'.join(k.__name__ for k in kinds)}")
    if n is not None and len(v) != n:
        _fail(path, f"key {key!r}", f"holds {len(v)} items, one per token ({n}) expected")
    return v


def _check_merges(merges: list[str], vocab: set, path) -> None:
    """Each merge is "a b" with a, b and a+b tokens (as the BPE builder requires)."""
    for i, m in enumerate(merges):
        parts = m.split(" ")
        if len(parts) != 2 or not all(p in vocab for p in parts) or parts[0] + parts[1] not in vocab:
            _fail(path, "key 'tokenizer.ggml.merges'", f"item {i} {_short(m)} is not two tokens whose join is a "
                                                       f"token")


def check_tokenizer(meta: dict, path="GGUF") -> None:
    """The tokenizer.ggml.* metadata transformers builds a tokenizer from: present, typed, consistent."""
    model = meta.get("tokenizer.ggml.model")
    if model not in TOKENIZER_MODELS:
        _fail(path, "key 'tokenizer.ggml.model'", f"is {_short(model)}; qlab builds tokenizers of type "
                                                  f"{' or '.join(TOKENIZER_MODELS)}")
    tokens = _list_of(meta, "tokenizer.ggml.tokens", (str,), None, path)
    if not tokens:
        _fail(path, "key 'tokenizer.ggml.tokens'", "is missing or empty")
    _list_of(meta, "tokenizer.ggml.token_type", (int,), len(tokens), path)
    _list_of(meta, "tokenizer.ggml.scores", (int, float), len(tokens), path)
    merges = _list_of(meta, "tokenizer.ggml.merges", (str,), None, path)
    if model == "gpt2" and merges is None:
        _fail(path, "key 'tokenizer.ggml.merges'", "is missing (a gpt2 tokenizer needs its BPE merges)")
    if model == "llama" and "tokenizer.ggml.scores" not in meta:
        _fail(path, "key 'tokenizer.ggml.scores'", "is missing (a llama tokenizer needs token scores)")
    _check_merges(merges or [], set(tokens), path)
    special_ids(meta, len(tokens), path)
    for k in ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_space_prefix"):
        if k in meta and not isinstance(meta[k], bool):
            _fail(path, f"key {k!r}", f"must be a bool, it is {type(meta[k]).__name__}")
