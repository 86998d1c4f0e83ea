"""The GGUF container, parsed by qlab with every count, length and offset checked before it is used.

    file   = "GGUF" | u32 version (2, 3) | u64 n_tensors | u64 n_kv | kv * n_kv | info * n_tensors | pad | data
    kv     = string key | u32 value type | value            (type 9 = array: u32 item type | u64 count | items)
    string = u64 length | UTF-8 bytes
    info   = string name | u32 n_dims | u64 ne[n_dims] (ne[0] = row length) | u32 ggml type | u64 offset

The rules follow llama.cpp's gguf.cpp (read there, not copied): a length or count is accepted only when the
bytes it announces remain before the end of the file (and, for metadata, before qlab's metadata budget of
METADATA_BUDGET bytes); keys are non-empty and unique; arrays do not nest; ``general.alignment`` is a u32
power of two (default 32); tensor names are unique and shorter than 64 bytes; at most 4 dimensions, none
negative; the row length ne[0] is a multiple of the type's block size; the data section starts at the first
aligned position after the infos and each tensor's offset is exactly where the previous one ends, padded to
the alignment; every tensor's bytes lie inside the file. Anything else raises FileFormatError naming the key
or tensor. Memory stays within a small multiple of the file's size: nothing is allocated for a length before
the bytes behind it are known to exist.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FileFormatError
from .types import by_id

METADATA_BUDGET = 64 << 20  # bytes of key/value metadata qlab parses (a 128k-token vocabulary takes ~10 MiB)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_NAME = 64  # ggml's GGML_MAX_NAME: tensor names are shorter

STRING, ARRAY = 8, 9
# GGUF value type -> numpy little-endian dtype of one scalar (7 = bool, one byte)
VALUE_DTYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8",
                11: "<i8", 12: "<f8"}
VALUE_TYPE_NAMES = {0: "u8", 1: "i8", 2: "u16", 3: "i16", 4: "u32", 5: "i32", 6: "f32", 7: "bool", 8: "string",
                    9: "array", 10: "u64", 11: "i64", 12: "f64"}
_PLAIN_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I8": "<i1", "I16": "<i2", "I32": "<i4", "I64": "<i8"}


def type_geometry(type_id: int) -> tuple[str, int, int]:
    """(name, block size, bytes per block) of a ggml type id: the GGUF type registry (qlab.gguf.types) for the
    types qlab knows, gguf-py's GGML_QUANT_SIZES for the other float, integer and IQ types; None if unknown."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    bt = by_id(type_id)
    if bt is not None:
        return bt.name, bt.block_size, bt.type_size
    try:
        t = GGMLQuantizationType(type_id)
    except ValueError:
        return None
    block, size = GGML_QUANT_SIZES.get(t, (0, 0))
    return (t.name, block, size) if block else None


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: GGUF name, ne (row length first), ggml type, absolute byte offset and size in the file."""

    name: str
    ne: tuple[int, ...]
    type_id: int
    type_name: str
    offset: int
    nbytes: int
    buffer: object = field(repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order: [rows, cols] (ne reversed)."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.ne, dtype=object)) if self.ne else 1

    @property
    def tensor_type(self):
        """gguf-py's GGMLQuantizationType of the tensor (its ``.name`` is type_name)."""
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType(self.type_id)

    @property
    def raw(self) -> np.ndarray:
        """The tensor's bytes, uint8, read-only view of the file."""
        return np.frombuffer(self.buffer, dtype=np.uint8, count=self.nbytes, offset=self.offset)

    @property
    def data(self) -> np.ndarray:
        """Float and integer types: the values in numpy order; block types: uint8 [rows..., bytes per row]."""
        if self.type_name in _PLAIN_DTYPES:
            return self.raw.view(_PLAIN_DTYPES[self.type_name]).reshape(self.shape)
        rows = self.shape[:-1] if self.ne else ()
        return self.raw.reshape(*rows, -1) if self.nbytes else self.raw


@dataclass
class Container:
    """A parsed GGUF file: metadata values, their GGUF types, tensor infos and the mapped file."""

    path: Path
    version: int
    alignment: int
    metadata: dict
    value_types: dict  # key -> (value type, item type or None)
    tensors: list[TensorInfo]
    data_offset: int
    size: int


class _Cursor:
    """A position in the mapped file; every read checks the bytes it needs remain before ``end``."""

    def __init__(self, buf, path: Path, pos: int, end: int, limit: str):
        self.buf, self.path, self.pos, self.end, self.limit = buf, path, pos, end, limit

    def fail(self, what: str, problem: str):
        raise FileFormatError(f"{self.path}: {what} {problem}: the file is corrupted or truncated; re-download or "
                              f"re-export it")

    def need(self, n: int, what: str) -> None:
        """Fail unless n more bytes remain (the rule every length and count passes before it is used)."""
        if n > self.end - self.pos:
            self.fail(what, f"needs {n} bytes at offset {self.pos} but only {max(self.end - self.pos, 0)} remain "
                            f"before {self.limit}")

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return value

    def string(self, what: str) -> str:
        n = self.unpack("<Q", f"the length of {what}")
        self.need(n, f"{what} (declared {n} bytes long)")
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.fail(what, f"is not valid UTF-8 ({e.reason} at byte {e.start})")

    def numbers(self, vtype: int, count: int, what: str) -> list:
        dt = np.dtype(VALUE_DTYPES[vtype])
        self.need(count * dt.itemsize, f"{what} ({count} items of {VALUE_TYPE_NAMES[vtype]})")
        a = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos)
        self.pos += count * dt.itemsize
        return (a != 0).tolist() if vtype == 7 else a.tolist()


def _value(cur: _Cursor, vtype: int, key: str):
    """One scalar or string value of type vtype."""
    if vtype == STRING:
        return cur.string(f"the string value of key {key!r}")
    if vtype not in VALUE_DTYPES:
        cur.fail(f"key {key!r}", f"has value type {vtype}, which GGUF does not define (0-12)")
    return cur.numbers(vtype, 1, f"the value of key {key!r}")[0]


def _array(cur: _Cursor, key: str) -> tuple[list, int]:
    """An array value: item type, count (bounded by the bytes left), items; nested arrays are rejected."""
    itype = cur.unpack("<I", f"the item type of array {key!r}")
    count = cur.unpack("<Q", f"the length of array {key!r}")
    if itype == ARRAY:
        cur.fail(f"array {key!r}", "holds arrays; GGUF (llama.cpp) does not allow nested arrays")
    if itype == STRING:
        cur.need(8 * count, f"array {key!r} (declared {count} strings, 8 bytes of length each at least)")
        return _strings(cur, count, key), itype
    if itype not in VALUE_DTYPES:
        cur.fail(f"array {key!r}", f"has item type {itype}, which GGUF does not define (0-12)")
    return cur.numbers(itype, count, f"array {key!r}"), itype


def _strings(cur: _Cursor, count: int, key: str) -> list[str]:
    """count strings of an array (the string rule of _Cursor.string, unrolled: vocabularies hold 10^5 of them)."""
    buf, pos, end, out = cur.buf, cur.pos, cur.end, []
    unpack = struct.Struct("<Q").unpack_from
    for i in range(count):
        n = unpack(buf, pos)[0] if end - pos >= 8 else None
        if n is None or n > end - pos - 8:
            cur.pos = pos
            return [cur.string(f"item {i} of array {key!r}")]  # fails with the precise message
        out.append(buf[pos + 8:pos + 8 + n])
        pos += 8 + n
    cur.pos = pos
    try:
        return [b.decode("utf-8") for b in out]
    except UnicodeDecodeError:
        bad = next(i for i, b in enumerate(out) if not _is_utf8(b))
        cur.fail(f"item {bad} of array {key!r}", "is not valid UTF-8")


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _read_kv(cur: _Cursor, n_kv: int) -> tuple[dict, dict]:
    """n_kv key/value pairs: keys non-empty and unique."""
    meta, types = {}, {}
    for i in range(n_kv):
        key = cur.string(f"metadata key {i}")
        if not key:
            cur.fail(f"metadata key {i}", "is empty")
        if key in meta:
            cur.fail(f"metadata key {key!r}", "appears twice")
        vtype = cur.unpack("<I", f"the value type of key {key!r}")
        if vtype == ARRAY:
            meta[key], itype = _array(cur, key)
            types[key] = (ARRAY, itype)
        else:
            meta[key], types[key] = _value(cur, vtype, key), (vtype, None)
    return meta, types


def _alignment(meta: dict, types: dict, path: Path) -> int:
    """general.alignment: a u32 power of two, as llama.cpp requires (default 32)."""
    if "general.alignment" not in meta:
        return DEFAULT_ALIGNMENT
    a = meta["general.alignment"]
    if types["general.alignment"][0] != 4:
        raise FileFormatError(f"{path}: key 'general.alignment' must be a u32, it is a "
                              f"{VALUE_TYPE_NAMES[types['general.alignment'][0]]}: the file is corrupted")
    if a == 0 or a & (a - 1):
        raise FileFormatError(f"{path}: key 'general.alignment' is {a}, not a power of two: the file is corrupted")
    return a


def _tensor_info(cur: _Cursor, i: int, seen: set) -> tuple:
    """(name, ne, type id, name of type, relative offset, nbytes) of one tensor info, checked."""
    name = cur.string(f"the name of tensor {i}")
    what = f"tensor {name!r}"
    if len(name.encode()) >= MAX_NAME or not name:
        cur.fail(what, f"has a name of {len(name.encode())} bytes (1 to {MAX_NAME - 1} allowed)")
    if name in seen:
        cur.fail(what, "appears twice")
    seen.add(name)
    n_dims = cur.unpack("<I", f"the dimension count of {what}")
    if n_dims > MAX_DIMS:
        cur.fail(what, f"has {n_dims} dimensions (at most {MAX_DIMS})")
    ne = tuple(cur.unpack("<q", f"dimension {d} of {what}") for d in range(n_dims))
    if any(n < 0 for n in ne):
        cur.fail(what, f"has a negative dimension {ne}")
    type_id = cur.unpack("<I", f"the type of {what}")
    geometry = type_geometry(type_id)
    if geometry is None:
        cur.fail(what, f"has ggml type {type_id}, which neither qlab nor gguf-py knows")
    type_name, block, size = geometry
    row = ne[0] if ne else 1  # missing dimensions are 1
    if row % block:
        cur.fail(what, f"of type {type_name} has rows of {row} elements, not a multiple of its block size {block}")
    n = int(np.prod(ne, dtype=object)) if ne else 1
    offset = cur.unpack("<Q", f"the data offset of {what}")
    return name, ne, type_id, type_name, offset, n // block * size


def _layout(path: Path, infos: list, start: int, alignment: int, size: int) -> None:
    """Each tensor begins where the previous one ends, padded to the alignment, and ends inside the file."""
    expected = 0
    for name, _, _, _, offset, nbytes in infos:
        if offset != expected:
            raise FileFormatError(f"{path}: tensor {name!r} has data offset {offset}, expected {expected} (tensors "
                                  f"follow each other, each padded to {alignment} bytes): the file is corrupted")
        if start + offset + nbytes > size:
            raise FileFormatError(f"{path}: tensor {name!r} needs {nbytes} bytes at file offset {start + offset} "
                                  f"but the file has {size} bytes: it is truncated")
        expected = offset + -(-nbytes // alignment) * alignment


def _header(cur: _Cursor, size: int) -> tuple[int, int, int]:
    """(version, n_tensors, n_kv), the counts bounded by the bytes that remain."""
    if size < 4 or cur.buf[:4] != b"GGUF":
        raise FileFormatError(f"{cur.path} is not a GGUF file (no 'GGUF' magic in its first bytes): give a .gguf "
                              f"file")
    cur.pos = 4
    version = cur.unpack("<I", "the GGUF version")
    if version not in (2, 3):
        raise FileFormatError(f"{cur.path}: GGUF version {version} is not supported (2 or 3): the header is "
                              f"corrupted or the file is from a newer llama.cpp")
    n_tensors = cur.unpack("<Q", "the tensor count")
    n_kv = cur.unpack("<Q", "the metadata count")
    cur.need(n_kv * (8 + 1 + 4 + 1), f"the {n_kv} metadata entries the header announces")
    cur.need(n_tensors * (8 + 1 + 4 + 4 + 8), f"the {n_tensors} tensor infos the header announces")
    return version, n_tensors, n_kv


def parse(path: str | os.PathLike, buf) -> Container:
    """Parse the GGUF bytes ``buf`` (a mapped file) of ``path``; FileFormatError on anything out of bounds."""
    path, size = Path(path), len(buf)
    cur = _Cursor(buf, path, 0, size, "the end of the file")
    version, n_tensors, n_kv = _header(cur, size)
    budget = min(size, cur.pos + METADATA_BUDGET)
    kv_cur = _Cursor(buf, path, cur.pos, budget, "the end of the file" if budget == size else
                     f"qlab's metadata budget of {METADATA_BUDGET >> 20} MiB")
    meta, types = _read_kv(kv_cur, n_kv)
    cur.pos = kv_cur.pos
    alignment = _alignment(meta, types, path)
    seen: set = set()
    infos = [_tensor_info(cur, i, seen) for i in range(n_tensors)]
    start = -(-cur.pos // alignment) * alignment if n_tensors else cur.pos
    _layout(path, infos, start, alignment, size)
    tensors = [TensorInfo(n, ne, tid, tname, start + off, nb, buf) for n, ne, tid, tname, off, nb in infos]
    return Container(path, version, alignment, meta, types, tensors, start, size)


def open_container(path: str | os.PathLike) -> Container:
    """Map the file read-only and parse it (an empty file is 'not a GGUF file')."""
    path = Path(path)
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise FileFormatError(f"{path} is empty, not a GGUF file: give a .gguf file")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return parse(path, buf)
