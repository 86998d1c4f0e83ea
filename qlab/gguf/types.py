"""The GGUF type registry: every fact qlab holds about a ggml tensor type, in one table that every module reads.

Every ggml quantized type cuts a row into blocks of ``block_size`` weights and stores each block in
``type_size`` bytes (little-endian). Bits per weight = 8 * type_size / block_size::

    name   id  block bytes  bpw    layout (bytes, in order)
    Q4_0    2    32    18   4.5    d:f16 | qs[16] (two 4-bit codes per byte)
    Q4_1    3    32    20   5.0    d:f16 m:f16 | qs[16]
    Q5_0    6    32    22   5.5    d:f16 | qh[4] (5th bits) | qs[16]
    Q5_1    7    32    24   6.0    d:f16 m:f16 | qh[4] | qs[16]
    Q8_0    8    32    34   8.5    d:f16 | qs[32] int8
    Q8_1    9    32    36   9.0    d:f16 s:f16 | qs[32] int8   (activations of Q4_1/Q5_1 dot products only)
    Q2_K   10   256    84   2.625  scales[16] (4-bit scale | 4-bit min) | qs[64] | d:f16 dmin:f16
    Q3_K   11   256   110   3.4375 hmask[32] | qs[64] | scales[12] (16 x 6 bits) | d:f16
    Q4_K   12   256   144   4.5    d:f16 dmin:f16 | scales[12] (8 x 6-bit scale, 8 x 6-bit min) | qs[128]
    Q5_K   13   256   176   5.5    d:f16 dmin:f16 | scales[12] | qh[32] | qs[128]
    Q6_K   14   256   210   6.5625 ql[128] | qh[64] | scales[16] int8 | d:f16
    Q8_K   15   256   292   9.125  d:f32 | qs[256] int8 | bsums[16] int16  (activations only, never in files)

plus the float types F32 (0), F16 (1) and BF16 (30), one element per "block".

One ``GGUFType`` per type (the model is gguf-py's single size table, ``GGML_QUANT_SIZES``, extended with what
qlab needs): ggml's enum id and block geometry, the type llama-quantize falls back to for rows that do not split
into its blocks, whether its quantizer takes importance weights, the activation type of ggml-cpu's dot product
(``vec_dot_type``), whether qlab's C kernels (``qlab.kernels.cpu``) have a dot product for it, its byte layout
(for ``qlab.gguf.reader.block_fields``), and qlab's byte-exact quantize / dequantize functions. Adding a type
means adding its row here (and its functions, and its C kernel if it gets one); the readers, the writer, the
mixes, the llama.cpp cross-check, the C kernels' Python front and the CPU Linear all read this table.
tests/test_gguf_blocks.py checks it against gguf-py and ggml; tests/test_cpu_kernels.py against the C kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from qlab.errors import BadArgumentError
from qlab.gguf import kquants, kquants_k45, legacy

# one block field: (name, kind, bytes); kind f16 = half floats, u8 = raw (packed) bytes, i8 = signed codes,
# nib = two 4-bit codes per byte (low nibbles first), bits = one bit per weight
Layout = tuple[tuple[str, str, int], ...]


@dataclass(frozen=True)
class GGUFType:
    """One ggml tensor type: ``type_size`` bytes hold ``block_size`` elements."""

    name: str
    type_id: int  # ggml.h enum ggml_type (gguf-py's GGMLQuantizationType)
    block_size: int
    type_size: int
    fallback: str | None = None  # what llama-quantize uses when a row is not a multiple of block_size
    takes_imatrix: bool = False  # whether ggml_quantize_chunk uses importance weights for this type
    vec_dot_type: str | None = None  # activation type of ggml-cpu's dot product with weights of this type
    c_kernel: bool = False  # whether qlab.kernels.cpu has a dot product (vec_dot, gemm) for this type
    layout: Layout | None = field(default=None, repr=False)  # a block's fields, in byte order
    quantize: Callable | None = field(default=None, repr=False)  # float32 [NB*block] rows -> uint8 [NB, type_size]
    dequantize: Callable | None = field(default=None, repr=False)  # uint8 [NB, type_size] -> float32 [NB, block]

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size


_NIB16, _F16 = ("qs", "nib", 16), ("d", "f16", 2)

_TABLE = [
    GGUFType("F32", 0, 1, 4, vec_dot_type="F32"),
    GGUFType("F16", 1, 1, 2, vec_dot_type="F16"),
    GGUFType("Q4_0", 2, 32, 18, None, True, "Q8_0", True, (_F16, _NIB16),
             legacy.quantize_q4_0, legacy.dequantize_q4_0),
    GGUFType("Q4_1", 3, 32, 20, None, True, "Q8_1", False, (_F16, ("m", "f16", 2), _NIB16),
             legacy.quantize_q4_1, legacy.dequantize_q4_1),
    GGUFType("Q5_0", 6, 32, 22, None, True, "Q8_0", False, (_F16, ("qh", "bits", 4), _NIB16),
             legacy.quantize_q5_0, legacy.dequantize_q5_0),
    GGUFType("Q5_1", 7, 32, 24, None, True, "Q8_1", False, (_F16, ("m", "f16", 2), ("qh", "bits", 4), _NIB16),
             legacy.quantize_q5_1, legacy.dequantize_q5_1),
    GGUFType("Q8_0", 8, 32, 34, None, False, "Q8_0", True, (_F16, ("qs", "i8", 32)),
             legacy.quantize_q8_0, legacy.dequantize_q8_0),
    GGUFType("Q8_1", 9, 32, 36),
    GGUFType("Q2_K", 10, 256, 84, "Q4_0", True, "Q8_K", False,
             (("scales", "u8", 16), ("qs", "u8", 64), ("d", "f16", 2), ("dmin", "f16", 2)),
             kquants.quantize_q2_k, kquants.dequantize_q2_k),
    GGUFType("Q3_K", 11, 256, 110, "Q4_0", True, "Q8_K", False,
             (("hmask", "u8", 32), ("qs", "u8", 64), ("scales", "u8", 12), ("d", "f16", 2)),
             kquants.quantize_q3_k, kquants.dequantize_q3_k),
    GGUFType("Q4_K", 12, 256, 144, "Q5_0", True, "Q8_K", True,
             (("d", "f16", 2), ("dmin", "f16", 2), ("scales", "u8", 12), ("qs", "nib", 128)),
             kquants_k45.quantize_q4_k, kquants_k45.dequantize_q4_k),
    GGUFType("Q5_K", 13, 256, 176, "Q5_1", True, "Q8_K", False,
             (("d", "f16", 2), ("dmin", "f16", 2), ("scales", "u8", 12), ("qh", "u8", 32), ("qs", "nib", 128)),
             kquants_k45.quantize_q5_k, kquants_k45.dequantize_q5_k),
    GGUFType("Q6_K", 14, 256, 210, "Q8_0", True, "Q8_K", True,
             (("ql", "u8", 128), ("qh", "u8", 64), ("scales", "i8", 16), ("d", "f16", 2)),
             kquants.quantize_q6_k, kquants.dequantize_q6_k),
    GGUFType("Q8_K", 15, 256, 292, quantize=kquants.quantize_q8_k, dequantize=kquants.dequantize_q8_k),
    GGUFType("BF16", 30, 1, 2, vec_dot_type="BF16"),
]

TYPES: dict[str, GGUFType] = {t.name: t for t in _TABLE}
"""Every type qlab knows, by name."""

QTYPES: dict[str, GGUFType] = {t.name: t for t in _TABLE if t.quantize is not None}
"""The block formats qlab quantizes and dequantizes itself (byte-exact with ggml)."""

_BY_ID = {t.type_id: t for t in _TABLE}


def by_id(type_id: int) -> GGUFType | None:
    """The registry's entry for a ggml type id (None for ids qlab does not know)."""
    return _BY_ID.get(int(type_id))


def block_info(qtype: str) -> GGUFType:
    """The entry of one of qlab's block formats, by a name such as "Q4_K" (case-insensitive)."""
    key = str(qtype).upper()
    if key not in QTYPES:
        raise BadArgumentError(f"unknown GGUF block type {qtype!r}; choose one of {', '.join(QTYPES)}")
    return QTYPES[key]
