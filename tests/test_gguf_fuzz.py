"""Fuzzing qlab's GGUF reader with structured mutants of a small valid file, and a writer/reader round trip.

The seed file is written by qlab's own writer (a 2-block random llama, hidden 32, Q8_0 weights, a trained
byte-level BPE tokenizer). Mutant classes: bit flips, truncations at every field boundary, huge values in every
length / count / type field, wrong value types of every key, misaligned tensor offsets and alignments, renamed /
deleted / duplicated keys and tensors, out-of-range hyper-parameters, token ids and dimensions, changed tensor
types. Each mutant is read as `qlab eval --model x.gguf` reads it (read_metadata, read_gguf, the model checks,
and a model build, some with transformers' GGUF tokenizer, for a sample) and may only succeed or raise
FileFormatError: no other QlabError is allowed either (ModelNotFoundError cannot be right: every mutant file
exists), within PARSE_SECONDS and MEMORY_FACTOR times the file's size (+ MEMORY_SLACK).
"""

from __future__ import annotations

import math
import random
import signal
import struct
import time
import tracemalloc
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from qlab.errors import FileFormatError

SEED = 22
PARSE_SECONDS = 2.0  # one mutant's read + checks (the valid file takes ~10 ms)
HANG_SECONDS = 10  # the watchdog that turns a hang into a failure
# dequantized float32 is at most 32 / 1.5 ≈ 21x its bytes (IQ1_S, the densest type); metadata objects are at most
# ~10x their bytes (a Python int/str and its list slot per 1-8 file bytes); slack for the interpreter's and the
# allocator's caches (4 MiB measured); a hang grows by 10-100 MB/s (measured on the reader before qlab's parse)
MEMORY_FACTOR = 32
MEMORY_SLACK = 16 << 20
TRACE_EVERY = 8
TOKENIZER_BUILD = 2

SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
TYPE_SIZES = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 8: (32, 34), 20: (32, 18), 26: (1, 4), 30: (1, 2)}


# ---------------------------------------------------------------- a structured model of a GGUF file


@dataclass
class KV:
    key: str
    vtype: int
    value: object
    itype: int | None = None


@dataclass
class Tensor:
    name: str
    ne: tuple
    type_id: int
    data: bytes


@dataclass
class Doc:
    version: int
    kvs: list
    tensors: list
    alignment: int = 32
    offsets: list | None = None  # None: llama.cpp's layout (each tensor right after the previous, padded)
    fields: list = field(default_factory=list)  # (kind, byte offset, width) of every length/count/type field


def _parse_value(b, pos, vtype):
    if vtype == STRING:
        n = struct.unpack_from("<Q", b, pos)[0]
        return b[pos + 8:pos + 8 + n].decode(), pos + 8 + n
    return struct.unpack_from(SCALAR[vtype], b, pos)[0], pos + struct.calcsize(SCALAR[vtype])


def parse_doc(b: bytes) -> Doc:
    """The structure of a valid GGUF file (trusted input: the seed only)."""
    version, n_t, n_kv = struct.unpack_from("<IQQ", b, 4)
    pos, kvs = 24, []
    for _ in range(n_kv):
        key, pos = _parse_value(b, pos, STRING)
        vtype = struct.unpack_from("<I", b, pos)[0]
        pos += 4
        if vtype == ARRAY:
            itype, n = struct.unpack_from("<IQ", b, pos)
            pos += 12
            items = []
            for _ in range(n):
                v, pos = _parse_value(b, pos, itype)
                items.append(v)
            kvs.append(KV(key, ARRAY, items, itype))
        else:
            v, pos = _parse_value(b, pos, vtype)
            kvs.append(KV(key, vtype, v))
    infos = []
    for _ in range(n_t):
        name, pos = _parse_value(b, pos, STRING)
        nd = struct.unpack_from("<I", b, pos)[0]
        ne = struct.unpack_from(f"<{nd}Q", b, pos + 4)
        tid, off = struct.unpack_from("<IQ", b, pos + 4 + 8 * nd)
        pos += 4 + 8 * nd + 12
        infos.append((name, ne, tid, off))
    align = next((kv.value for kv in kvs if kv.key == "general.alignment"), 32)
    start = -(-pos // align) * align
    tensors = []
    for name, ne, tid, off in infos:
        blk, size = TYPE_SIZES[tid]
        n = math.prod(ne) // blk * size
        tensors.append(Tensor(name, tuple(ne), tid, b[start + off:start + off + n]))
    return Doc(version, kvs, tensors, align)


class _Out:
    """Bytes being written, with the positions of the fields mutants aim at."""

    def __init__(self):
        self.b, self.fields = bytearray(), []

    def put(self, fmt, v, kind=None):
        width = struct.calcsize(fmt)
        if kind:
            self.fields.append((kind, len(self.b), width))
        if fmt[-1] in "bBhHiIqQ":  # integers wrap around, as a corrupted file would hold them
            fmt, v = fmt.upper(), int(v) % (1 << 8 * width)
        self.b += struct.pack(fmt, v)

    def string(self, s, kind):
        raw = s.encode() if isinstance(s, str) else s
        self.put("<Q", len(raw), kind)
        self.b += raw

    def value(self, vtype, v, kind):
        if vtype == STRING:
            self.string(v, kind)
        else:
            self.put(SCALAR[vtype], v)


def serialize(doc: Doc) -> tuple[bytes, list]:
    """(file bytes, length/count/type fields) of a Doc."""
    o = _Out()
    o.b += b"GGUF"
    o.put("<I", doc.version)
    o.put("<Q", len(doc.tensors), "n_tensors")
    o.put("<Q", len(doc.kvs), "n_kv")
    for kv in doc.kvs:
        o.string(kv.key, "key_len")
        o.put("<I", kv.vtype, "value_type")
        if kv.vtype == ARRAY:
            o.put("<I", kv.itype, "item_type")
            o.put("<Q", len(kv.value), "array_len")
            for v in kv.value:
                o.value(kv.itype, v, "item_len")
        else:
            o.value(kv.vtype, kv.value, "string_len")
    offsets, off = [], 0
    for t in doc.tensors:
        offsets.append(off)
        off += -(-len(t.data) // doc.alignment) * doc.alignment
    offsets = doc.offsets or offsets
    for t, toff in zip(doc.tensors, offsets):
        o.string(t.name, "name_len")
        o.put("<I", len(t.ne), "n_dims")
        for d in t.ne:
            o.put("<Q", d, "dim")
        o.put("<I", t.type_id, "tensor_type")
        o.put("<Q", toff, "tensor_offset")
    start = -(-len(o.b) // doc.alignment) * doc.alignment
    data = bytearray(start - len(o.b))
    for t, toff in zip(doc.tensors, offsets):
        pos = start + toff - len(o.b) - len(data)
        if pos >= 0:
            data += bytes(pos) + t.data
    o.b += data
    o.b += bytes(-len(o.b) % doc.alignment if doc.tensors else 0)  # the writer pads after the last tensor too
    o.fields.append(("data_start", start, 0))
    return bytes(o.b), o.fields


# ---------------------------------------------------------------- the seed file


def _tokenizer():
    from test_gguf_files import byte_bpe_tokenizer

    return byte_bpe_tokenizer(300, ["The quick brown fox jumps over the lazy dog, then the cat sat on the mat."] * 20)


def _tiny_llama(tokenizer, hidden=32, heads=4, kv=2, inter=64, layers=2, tied=False, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer.get_vocab()), hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                      max_position_embeddings=128, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory):
    from qlab.gguf.writer import export_gguf

    tok = _tokenizer()
    path = tmp_path_factory.mktemp("fuzz") / "seed.gguf"
    export_gguf(_tiny_llama(tok), tok, path, "Q8_0", progress=False)
    return path


# ---------------------------------------------------------------- mutants


def _set(blob: bytes, pos: int, width: int, value: int) -> bytes:
    return blob[:pos] + (value % (1 << 8 * width)).to_bytes(width, "little") + blob[pos + width:]


def bitflips(blob, fields, rng, n):
    start = next(p for k, p, _ in fields if k == "data_start")
    for i in range(n):
        pos = rng.randrange(start) if i % 4 else rng.randrange(start, len(blob))
        yield f"bit {pos}.{i % 8}", blob[:pos] + bytes([blob[pos] ^ (1 << i % 8)]) + blob[pos + 1:]


def truncations(blob, fields, rng, n_random):
    """Cuts inside and right after every field (a sample of the string items), and at random places."""
    cuts = {0, 3, 4, 8, 16, 23, 24, len(blob) - 1}
    items = [f for f in fields if f[0] == "item_len"]
    for _, p, w in [f for f in fields if f[0] != "item_len"] + rng.sample(items, 20):
        cuts |= {p + 1, p + w}
    cuts |= {rng.randrange(len(blob)) for _ in range(n_random)}
    for c in sorted(x for x in cuts if 0 <= x < len(blob)):
        yield f"cut {c}", blob[:c]


def huge_values(blob, fields, rng, item_sample):
    """Huge, off-by-one and invalid values in every length, count and type field (a sample of string items)."""
    items = [f for f in fields if f[0] == "item_len"]
    chosen = [f for f in fields if f[0] not in ("item_len", "data_start")] + rng.sample(items, item_sample)
    for kind, pos, width in chosen:
        old = int.from_bytes(blob[pos:pos + width], "little")
        if kind in ("value_type", "item_type", "tensor_type"):
            values = (0, STRING, ARRAY, 13, 99, 2**31, old + 1)
        else:
            values = (2**64 - 1, 2**63, 2**32 + old, len(blob) - pos, old + 1)
        for v in values:
            yield f"{kind}@{pos}={v}", _set(blob, pos, width, v)
        if kind == "array_len":  # one-byte items: a reader that does not bound the length never hits a short read
            yield f"u8 array_len@{pos}", _set(_set(blob, pos - 4, 4, 0), pos, width, 2**40)


def _retyped(kv: KV):
    """The same key with each other plausible value type."""
    v = kv.value
    if kv.vtype == ARRAY:
        first = v[0] if v else 0
        yield replace(kv, vtype=STRING, value=str(first), itype=None)
        yield replace(kv, itype=STRING if kv.itype != STRING else 4, value=[str(x) if kv.itype != STRING else
                                                                              len(x) for x in v])
        yield replace(kv, itype=6 if kv.itype != STRING else 7, value=[1.5] * len(v) if kv.itype != STRING
                      else [True] * len(v))
        return
    yield replace(kv, vtype=STRING, value=str(v)) if kv.vtype != STRING else replace(kv, vtype=4, value=len(v))
    yield replace(kv, vtype=ARRAY, itype=kv.vtype, value=[v])
    yield replace(kv, vtype=7, value=True)
    yield replace(kv, vtype=6, value=float(len(v) if isinstance(v, str) else v) + 0.5)
    yield replace(kv, vtype=11, value=-3)


def wrong_types(doc):
    for i, kv in enumerate(doc.kvs):
        for j, new in enumerate(_retyped(kv)):
            yield f"type {kv.key} #{j}", replace(doc, kvs=doc.kvs[:i] + [new] + doc.kvs[i + 1:])


def _with_key(doc, key, vtype, value, itype=None):
    kvs = [kv for kv in doc.kvs if kv.key != key] + [KV(key, vtype, value, itype)]
    return replace(doc, kvs=kvs)


def misaligned(doc):
    offs, off = [], 0
    for t in doc.tensors:
        offs.append(off)
        off += -(-len(t.data) // doc.alignment) * doc.alignment
    for i, t in enumerate(doc.tensors):
        for d in (1, 31, 32, -32, -1):
            if offs[i] + d >= 0:
                yield f"offset {t.name} {d:+}", replace(doc, offsets=offs[:i] + [offs[i] + d] + offs[i + 1:])
    for a, vtype in ((0, 4), (3, 4), (48, 4), (1, 4), (64, 4), (2**31, 4), (64, 10), (32, 5), (16, 4)):
        d = _with_key(doc, "general.alignment", vtype, a)
        yield f"alignment {a} type {vtype} (layout for 32)", d
        if a and not a & (a - 1) and a < 4096:
            yield f"alignment {a} type {vtype} (laid out)", replace(d, alignment=a)


def renamed(doc):
    for i, kv in enumerate(doc.kvs):
        yield f"rename {kv.key}", replace(doc, kvs=doc.kvs[:i] + [replace(kv, key=kv.key + "_")] + doc.kvs[i + 1:])
        yield f"drop {kv.key}", replace(doc, kvs=doc.kvs[:i] + doc.kvs[i + 1:])
    for i, t in enumerate(doc.tensors):
        yield f"rename {t.name}", replace(doc, tensors=doc.tensors[:i] + [replace(t, name=t.name.replace(
            "weight", "wieght"))] + doc.tensors[i + 1:])
        yield f"drop {t.name}", replace(doc, tensors=doc.tensors[:i] + doc.tensors[i + 1:])
    yield "duplicate key", replace(doc, kvs=doc.kvs + [doc.kvs[-1]])
    yield "duplicate tensor", replace(doc, tensors=doc.tensors + [doc.tensors[-1]])
    yield "empty key", replace(doc, kvs=doc.kvs + [KV("", 4, 1)])
    yield "long name", replace(doc, tensors=doc.tensors + [replace(doc.tensors[-1], name="x" * 64)])
    yield "extra block", replace(doc, tensors=doc.tensors + [replace(doc.tensors[-1], name="blk.7.ffn_up.weight")])


def bad_values(doc):
    """Out-of-range hyper-parameters and token ids; tensors with a dimension off by one; other tensor types."""
    for kv in doc.kvs:
        if kv.vtype in (4, 5, 10, 11) and (kv.key.startswith("llama.") or kv.key.endswith("_token_id")):
            for v in (0, 1, kv.value - 1, kv.value + 1, 300, 2**31, 2**40):
                yield f"{kv.key}={v}", _with_key(doc, kv.key, 10, v)
            yield f"{kv.key}=-1", _with_key(doc, kv.key, 5, -1)
        if kv.vtype == 6:
            for v in (0.0, -1.0, float("nan"), float("inf")):
                yield f"{kv.key}={v}", _with_key(doc, kv.key, 6, v)
    for i, t in enumerate(doc.tensors):
        blk, size = TYPE_SIZES[t.type_id]
        for d in range(len(t.ne)):
            for delta in (-blk, blk, -t.ne[d]):
                ne = t.ne[:d] + (t.ne[d] + delta,) + t.ne[d + 1:]
                data = bytes(max(0, math.prod(ne) // blk * size))  # a negative dim: wraps to a huge one
                yield f"{t.name} ne{d}{delta:+}", replace(doc, tensors=doc.tensors[:i] + [Tensor(
                    t.name, ne, t.type_id, data)] + doc.tensors[i + 1:])
        for tid in (0, 1, 3, 20, 26, 30):
            b2, s2 = TYPE_SIZES[tid]
            if tid != t.type_id and t.ne[0] % b2 == 0:
                new = Tensor(t.name, t.ne, tid, bytes(math.prod(t.ne) // b2 * s2))
                yield f"{t.name} type {tid}", replace(doc, tensors=doc.tensors[:i] + [new] + doc.tensors[i + 1:])
    n_tokens = len(next(kv.value for kv in doc.kvs if kv.key == "tokenizer.ggml.tokens"))
    yield "vocab_size mismatch", _with_key(doc, "llama.vocab_size", 4, n_tokens + 1)
    yield "bad merge", _with_key(doc, "tokenizer.ggml.merges", ARRAY, ["no such pair"], STRING)
    yield "tokenizer model", _with_key(doc, "tokenizer.ggml.model", STRING, "t5")
    yield "architecture", _with_key(doc, "general.architecture", STRING, "gemma")
    yield "version 1", replace(doc, version=1)
    yield "nested array", _with_key(doc, "x.nested", ARRAY, [], 4)  # item type made ARRAY below


def mutants(blob: bytes, counts: dict | None = None):
    """(class, label, bytes) of every mutant, deterministic for SEED."""
    rng = random.Random(SEED)
    doc = parse_doc(blob)
    _, fields = serialize(doc)
    byte_level = {"bitflip": bitflips(blob, fields, rng, 700),
                  "truncate": truncations(blob, fields, rng, 40),
                  "huge_length": huge_values(blob, fields, rng, 30)}
    structured = {"wrong_type": wrong_types(doc), "misaligned": misaligned(doc), "renamed": renamed(doc),
                  "bad_value": bad_values(doc)}
    for cls, gen in byte_level.items():
        for label, b in gen:
            yield cls, label, b
    for cls, gen in structured.items():
        for label, d in gen:
            b, _ = serialize(d)
            if label == "nested array":
                k = b.index(b"x.nested") + len(b"x.nested") + 4
                b = _set(b, k, 4, ARRAY)
            yield cls, label, b


# ---------------------------------------------------------------- reading a mutant


class Hang(BaseException):
    """Raised by the watchdog (a BaseException: no `except Exception` in the reader can swallow it)."""


def _alarm(signum, frame):
    raise Hang()


def read_all(path: Path, build: bool, api) -> str:
    """Read a mutant the way `qlab eval --model x.gguf` does; 'ok' or the error class name (raised if not allowed)."""
    api.read_metadata(path)
    api.read_gguf(path)
    if api.check is not None:
        api.check(path)
    if build:
        model, _ = api.load(path, build == TOKENIZER_BUILD)
        n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        assert 4 * n <= MEMORY_FACTOR * path.stat().st_size + MEMORY_SLACK, f"model of {n} parameters"
    return "ok"


@dataclass
class Api:
    read_metadata: object
    read_gguf: object
    check: object
    load: object


def qlab_api() -> Api:
    from qlab.gguf import reader

    return Api(reader.read_metadata, reader.read_gguf, reader.check_llama_file,
               lambda p, tok: reader.load_gguf_model(p, tokenizer=None if tok else False))


def run_fuzz(seed_blob: bytes, folder: Path, api: Api, builds: int = 12, tokenizers: int = 1,
             limit: int | None = None) -> dict:
    """Read every mutant; the summary and the failures (a wrong exception, a hang, too slow, too much memory).

    Memory: the process's peak RSS (ru_maxrss, for every mutant: a blow-up in any parse raises it for good) may
    grow by at most MEMORY_FACTOR x the file size + MEMORY_SLACK over the warmed-up start; every TRACE_EVERY-th
    mutant also runs under tracemalloc for its own peak (tracing every one would triple the test's time)."""
    seed = folder / "seed.gguf"
    seed.write_bytes(seed_blob)
    read_all(seed, TOKENIZER_BUILD, api)  # warm-up: imports and caches outside the limits
    old = signal.signal(signal.SIGALRM, _alarm)
    stats = {"mutants": 0, "classes": {}, "outcomes": {}, "failures": [], "longest": (0.0, ""), "peak": (0, ""),
             "builds": 0, "tokenizers": 0, "class_builds": {}, "rss0": _maxrss(), "rss": 0}
    header_end = next(p for k, p, _ in serialize(parse_doc(seed_blob))[1] if k == "data_start")
    start = time.perf_counter()
    try:
        for k, (cls, label, blob) in enumerate(mutants(seed_blob)):
            if limit is not None and k >= limit:
                break
            path = folder / f"m{k % 2}.gguf"
            if path.exists():
                path.unlink()  # a new inode: a cached mapping of the previous mutant stays valid
            path.write_bytes(blob)
            # a model build for the first `builds` mutants of each class whose header differs from the seed's, with
            # transformers' GGUF tokenizer for the first `tokenizers` of them
            n = stats["class_builds"].get(cls, 0)
            build = (n < builds and blob[:header_end] != seed_blob[:header_end]) * (1 + (n < tokenizers))
            _one(stats, cls, label, path, build, api, trace=k % TRACE_EVERY == 0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    stats["seconds"] = time.perf_counter() - start
    return stats


def _maxrss() -> int:
    """Peak resident memory of this process so far, bytes."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _read_one(stats, cls, label, path, build, api) -> str:
    """read_all under the watchdog: the outcome's name; anything but success / FileFormatError is a failure."""
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    try:
        outcome = read_all(path, build, api)
        stats["builds"] += bool(build)
        stats["tokenizers"] += build == TOKENIZER_BUILD
        stats["class_builds"][cls] = stats["class_builds"].get(cls, 0) + bool(build)
    except FileFormatError:
        outcome = "FileFormatError"
    except Hang:
        outcome = "hang"
        stats["failures"].append(f"{cls} {label}: no result after {HANG_SECONDS} s")
    except Exception as e:  # noqa: BLE001 - every other exception is the failure the test looks for
        outcome = type(e).__name__
        stats["failures"].append(f"{cls} {label}: {type(e).__name__}: {str(e)[:160]}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return outcome


def _one(stats, cls, label, path, build, api, trace):
    stats["mutants"] += 1
    stats["classes"][cls] = stats["classes"].get(cls, 0) + 1
    size = path.stat().st_size
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    outcome = _read_one(stats, cls, label, path, build, api)
    dt = time.perf_counter() - t0
    if trace:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        stats["peak"] = max(stats["peak"], (peak, f"{cls} {label}"))
        if peak > MEMORY_FACTOR * size + MEMORY_SLACK:
            stats["failures"].append(f"{cls} {label}: {peak >> 20} MiB traced for a {size}-byte file")
    key = f"{cls}:{outcome}"
    stats["outcomes"][key] = stats["outcomes"].get(key, 0) + 1
    stats["longest"] = max(stats["longest"], (dt, f"{cls} {label}"))
    if dt > PARSE_SECONDS * (3 if build else 1) and outcome != "hang":
        stats["failures"].append(f"{cls} {label}: took {dt:.2f} s")
    grown = _maxrss() - stats["rss0"]
    if grown > stats["rss"] and grown > MEMORY_FACTOR * size + MEMORY_SLACK:
        stats["failures"].append(f"{cls} {label}: peak RSS grew by {grown >> 20} MiB for a {size}-byte file")
    stats["rss"] = max(stats["rss"], grown)


def summary(stats) -> str:
    lines = [f"{stats['mutants']} mutants in {stats['seconds']:.1f} s ({stats['builds']} model builds, "
             f"{stats['tokenizers']} with the tokenizer); longest "
             f"{stats['longest'][0] * 1000:.0f} ms ({stats['longest'][1]}); peak traced memory of one read "
             f"{stats['peak'][0] / 2**20:.2f} MiB ({stats['peak'][1]}); process peak RSS growth "
             f"{stats['rss'] / 2**20:.1f} MiB"]
    for cls, n in stats["classes"].items():
        outs = {k.split(":")[1]: v for k, v in stats["outcomes"].items() if k.startswith(cls + ":")}
        lines.append(f"  {cls:12s} {n:5d}  " + ", ".join(f"{k} {v}" for k, v in sorted(outs.items())))
    return "\n".join(lines)


# ---------------------------------------------------------------- the tests


def test_seed_file_is_valid_and_reserializes(seed_file):
    """The structured model of the file is exact (mutants differ from the seed only where they mean to)."""
    from qlab.gguf.reader import load_gguf_model

    blob = seed_file.read_bytes()
    assert serialize(parse_doc(blob))[0] == blob
    model, tok = load_gguf_model(seed_file)
    assert model.config.num_hidden_layers == 2 and tok.encode("the cat")


def test_fuzz_only_file_format_errors(seed_file, tmp_path, capsys):
    """Every mutant reads or raises FileFormatError, within the time and memory limits (summary printed)."""
    stats = run_fuzz(seed_file.read_bytes(), tmp_path, qlab_api())
    with capsys.disabled():
        print("\nGGUF fuzz: " + summary(stats))
    assert stats["mutants"] > 2000 and set(stats["classes"]) == {
        "bitflip", "truncate", "huge_length", "wrong_type", "misaligned", "renamed", "bad_value"}
    assert not stats["failures"], f"{len(stats['failures'])} failures: " + "\n".join(stats["failures"][:20])


def test_gguf_tokenizer_checked(seed_file, tmp_path):
    """Tokenizer metadata that transformers would choke on is a FileFormatError naming the key."""
    from qlab.gguf.reader import load_gguf_model

    doc = parse_doc(seed_file.read_bytes())
    cases = {"tokenizer.ggml.bos_token_id": _with_key(doc, "tokenizer.ggml.bos_token_id", 4, 10**6),
             "tokenizer.ggml.merges": _with_key(doc, "tokenizer.ggml.merges", ARRAY, ["a"], STRING),
             "tokenizer.ggml.tokens": replace(doc, kvs=[kv for kv in doc.kvs if kv.key != "tokenizer.ggml.tokens"])}
    for key, d in cases.items():
        p = tmp_path / f"{key}.gguf"
        p.write_bytes(serialize(d)[0])
        with pytest.raises(FileFormatError, match=key.replace(".", r"\.")):
            load_gguf_model(p)


def test_alignment_rules_as_llama_cpp(seed_file, tmp_path):
    """general.alignment: a u32 power of two; each tensor starts where the previous one ends, padded to it."""
    from qlab.gguf.reader import read_gguf

    doc = parse_doc(seed_file.read_bytes())
    _, want = read_gguf(seed_file)
    good = replace(_with_key(doc, "general.alignment", 4, 64), alignment=64)
    bad = {"power of two": _with_key(doc, "general.alignment", 4, 48),
           "must be a u32": _with_key(doc, "general.alignment", 5, 32),
           "expected 0": replace(doc, offsets=[32] + [0] * (len(doc.tensors) - 1))}
    (tmp_path / "good.gguf").write_bytes(serialize(good)[0])
    _, got = read_gguf(tmp_path / "good.gguf")
    assert all(np.array_equal(got[k], want[k]) for k in want) and got.keys() == want.keys()
    for message, d in bad.items():
        (tmp_path / "bad.gguf").unlink(missing_ok=True)
        (tmp_path / "bad.gguf").write_bytes(serialize(d)[0])
        with pytest.raises(FileFormatError, match=message):
            read_gguf(tmp_path / "bad.gguf")


def test_model_load_path_errors(tmp_path, seed_file):
    """qlab.model.load_model (what `qlab eval --model x.gguf` calls) on bad files: FileFormatError."""
    from qlab.model import load_model

    blob = seed_file.read_bytes()
    for name, data in {"text.gguf": b"not a model\n" * 50, "empty.gguf": b"", "half.gguf": blob[:len(blob) // 2],
                       "short.gguf": blob[:-64]}.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(FileFormatError):
            load_model(str(tmp_path / name))


# ---------------------------------------------------------------- property: the writer's files read back


@pytest.fixture(scope="module")
def bpe():
    return _tokenizer()


def _check_roundtrip(model, tok, path):
    """Metadata and tensors read by qlab == gguf-py's independent parse; F32/F16 values == the model's."""
    import gguf

    from qlab.gguf.names import hf_name, hf_rows_from_gguf
    from qlab.gguf.reader import _open, read_gguf, read_metadata

    ref = gguf.GGUFReader(str(path))
    meta = read_metadata(path)
    fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert meta.keys() == fields.keys()
    for k, f in fields.items():
        want = list(f.contents()) if f.types[0] == gguf.GGUFValueType.ARRAY else f.contents()
        assert meta[k] == want or (isinstance(want, float) and np.float32(meta[k]) == np.float32(want)), k
    ours = {t.name: t for t in _open(path).tensors}
    _, floats = read_gguf(path)
    sd = model.state_dict()
    heads = {"attn_q": model.config.num_attention_heads, "attn_k": model.config.num_key_value_heads}
    for t in ref.tensors:
        mine = ours[t.name]
        assert (mine.type_name, mine.shape) == (t.tensor_type.name, tuple(reversed(t.shape.tolist()))), t.name
        assert mine.raw.tobytes() == np.asarray(t.data).view(np.uint8).tobytes(), t.name
        want = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(mine.shape)
        kind = t.name.split(".")[2] if t.name.startswith("blk.") else ""
        want = hf_rows_from_gguf(want, heads[kind]) if kind in heads else want
        np.testing.assert_array_equal(floats[t.name], want, err_msg=t.name)
        if t.tensor_type.name == "F32":
            np.testing.assert_array_equal(floats[t.name], sd[hf_name(t.name)].numpy(), err_msg=t.name)


def test_writer_files_read_back_identically(bpe, tmp_path):
    """Property: for random tiny llamas and file types, every file qlab writes reads back identically."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from qlab.gguf.writer import export_gguf

    @settings(max_examples=12, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(heads=st.sampled_from([(4, 4), (4, 2), (2, 1)]), hidden=st.sampled_from([32, 64]),
           layers=st.integers(1, 2), tied=st.booleans(), seed=st.integers(0, 2**16),
           qtype=st.sampled_from(["F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_M"]))
    def check(heads, hidden, layers, tied, seed, qtype):
        model = _tiny_llama(bpe, hidden, heads[0], heads[1], 2 * hidden, layers, tied, seed)
        path = tmp_path / f"rt-{seed}-{qtype}.gguf"
        export_gguf(model, bpe, path, qtype, progress=False)
        _check_roundtrip(model, bpe, path)
        path.unlink()

    check()
