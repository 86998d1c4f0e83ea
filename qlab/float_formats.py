"""Round-to-nearest onto a block float format: the block quantizer that puts qlab.blockfloat's formats (MXFP8/6/4,
MXINT8, NVFP4, NF4) and per-channel FP8 into the model walk, the CLI (`qlab quantize --format mxfp4`) and a folder.

    format      what each Linear's weight becomes                                   bits per weight
    mxfp8_e4m3  … nf4   qlab.blockfloat.quantize(W, format) (see its table)          8.25 … 4.25, nvfp4 4.5 + 32/numel
    nf4-dq      NF4 with QLoRA's double quantization of the absmax constants      4 + 8/64 + 32·(⌈blocks/256⌉+1)/numel
    fp8-e4m3    one FP8 E4M3 code per weight, one float32 scale per output row    8 + 32/K   (K = the row length)
    fp8-e5m2    the same with E5M2 elements

Per-channel FP8 (the usual "FP8 weights" of inference engines, per-channel scaling):
    s_r = max|W_r| / max_element   (float32; 1 for an all-zero row)        element = round_to(W_r / s_r, element)
saturating at ±max_element (E5M2 too: weights never become inf). It is a `BlockQuantized` whose one block is the
whole row (`fp8_format`), so `dequantize`, `storage_bits` and `bits_per_weight` are blockfloat's own; only its
bytes differ (`pack_weight` / `unpack_weight`: codes, then the float32 row scales).

Every weight is rounded once onto the format's grid, with no calibration data (like qlab.rtn); the Linear's weight
becomes the dequantized value, and the `BlockQuantized` of each Linear goes into `BlockResult.block_tensors`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from . import blockfloat as bf
from . import minifloat as mf
from .errors import BadArgumentError, FileFormatError
from .quantizer import BlockResult
from .walk import layers_to_quantize

INT = "int"  # the affine integer path (qlab.rtn / gptq / awq): not a format of this module
FP8_ELEMENTS = {"fp8-e4m3": "e4m3", "fp8-e5m2": "e5m2"}
NF4_DQ = "nf4-dq"
FORMATS: dict[str, str] = {
    **{name: f.description for name, f in bf.BLOCK_FORMATS.items()},
    NF4_DQ: "QLoRA NormalFloat4 with double quantization (absmax constants in 8 bits)",
    "fp8-e4m3": "FP8 E4M3 per weight, one float32 scale per output row",
    "fp8-e5m2": "FP8 E5M2 per weight, one float32 scale per output row",
}
"""Every format name `FloatFormatQuantizer` (and `qlab quantize --format`) takes, with a description."""


def check_format(name: str) -> str:
    """The canonical name of a float format (case-insensitive), or BadArgumentError listing the known ones."""
    key = str(name).lower()
    if key in FORMATS:
        return key
    raise BadArgumentError(f"unknown weight format {name!r}; known: {INT} (affine integer grids), "
                           f"{', '.join(FORMATS)}")


def row_multiple(name: str) -> int:
    """The number every row length must be a multiple of in this format (1: any length)."""
    name = check_format(name)
    if name in FP8_ELEMENTS:
        return 1
    return bf.BLOCK_FORMATS["nf4" if name == NF4_DQ else name].block_size


def formats_fitting(row_length: int) -> list[str]:
    """The formats whose blocks divide a row of `row_length` values."""
    return [n for n in FORMATS if row_length > 0 and row_length % row_multiple(n) == 0]


def check_rows(shapes: dict[str, tuple[int, ...]], name: str) -> None:
    """BadArgumentError naming the first weight (of {name: shape}) whose rows the format's block does not divide,
    and the formats that fit every one of them."""
    name = check_format(name)
    B = row_multiple(name)
    bad = {n: s for n, s in shapes.items() if not s or s[-1] % B}
    if not bad:
        return
    layer, shape = next(iter(bad.items()))
    fits = [f for f in FORMATS if all(s and s[-1] % row_multiple(f) == 0 for s in shapes.values())]
    raise BadArgumentError(
        f"--format {name} needs rows (the input dimension) whose length is a multiple of its block size {B}: "
        f"{len(bad)} Linear(s) do not fit, e.g. {layer} with rows of {shape[-1] if shape else 0}. Formats whose "
        f"blocks divide every row of this model: {', '.join(fits) if fits else 'none'}; or keep those Linears in "
        f"float (--skip)")


# ----------------------------------------------------------------------------------------------------------
# Per-channel FP8


def fp8_format(name: str, row_length: int) -> bf.BlockFormat:
    """The `BlockFormat` of per-channel FP8 for rows of `row_length`: one block per row, a float32 scale."""
    element = FP8_ELEMENTS[name]
    return bf.BlockFormat(name, "fp8", element, 8, int(row_length), "float32", 32,
                          description=FORMATS[name])


def quantize_fp8_rows(W: torch.Tensor, name: str = "fp8-e4m3") -> bf.BlockQuantized:
    """Per-output-channel FP8 of W [..., K] (module docstring): codes [R, K], float32 row scales [R, 1]."""
    if name not in FP8_ELEMENTS:
        raise BadArgumentError(f"per-channel FP8 formats: {', '.join(FP8_ELEMENTS)}; got {name!r}")
    W = torch.as_tensor(W).detach()
    if W.dim() == 0 or not W.is_floating_point() or W.shape[-1] == 0:
        raise BadArgumentError(f"{name} quantizes a floating-point tensor with non-empty rows, got dtype {W.dtype} "
                               f"and shape {tuple(W.shape)}")
    fmt = fp8_format(name, W.shape[-1])
    X = bf._as_rows(W, fmt)  # the shared checks (finite values), float64 [R, K]
    elem = dataclasses.replace(mf.get_format(fmt.element), saturate=True)
    absmax = X.abs().amax(-1, keepdim=True)  # [R, 1]
    s = torch.where(absmax > 0, absmax / elem.max_finite, 1.0).to(torch.float32)  # the stored scale
    if bool((s == 0).any()):
        raise BadArgumentError(f"{name}: a row's absmax is too small for a float32 scale (absmax/"
                               f"{elem.max_finite:g} underflows); rescale the weight first")
    codes = mf.encode(X / s.double(), elem)  # one rounding of the exact quotient
    return bf.BlockQuantized(fmt=fmt, shape=tuple(W.shape), codes=codes, scale_codes=s.view(torch.int32), scales=s)


# ----------------------------------------------------------------------------------------------------------
# One front for every name


def quantize_weight(W: torch.Tensor, name: str) -> bf.BlockQuantized:
    """W [..., K] in the named format (`FORMATS`)."""
    name = check_format(name)
    if name in FP8_ELEMENTS:
        return quantize_fp8_rows(W, name)
    if name == NF4_DQ:
        return bf.quantize(W, "nf4", double_quant=True)
    return bf.quantize(W, name)


def format_name(q: bf.BlockQuantized) -> str:
    """The `FORMATS` name of a quantized weight (nf4 with double quantization: "nf4-dq")."""
    if q.fmt.family == "nf4" and q.double_quant is not None:
        return NF4_DQ
    return q.fmt.name


def pack_weight(q: bf.BlockQuantized) -> bytes:
    """The bytes that store q: `blockfloat.pack` for its formats; per-channel FP8: the 8-bit codes (row-major),
    then the float32 row scales (little-endian). 8·len(bytes) = q.storage_bits()."""
    if q.fmt.family != "fp8":
        return bf.pack(q)
    scales = np.ascontiguousarray(q.scales.reshape(-1).numpy(), dtype="<f4")
    return q.codes.contiguous().numpy().tobytes() + scales.tobytes()


def unpack_weight(data: bytes, name: str, shape) -> bf.BlockQuantized:
    """Inverse of `pack_weight`: the weight of `shape` stored in format `name` (FileFormatError when the bytes do
    not fit)."""
    name = check_format(name)
    shape = tuple(int(s) for s in shape)
    if not shape or shape[-1] % row_multiple(name):
        raise FileFormatError(f"{name}: a weight of shape {shape} cannot be stored (rows not a multiple of "
                              f"{row_multiple(name)})")
    if name not in FP8_ELEMENTS:
        return bf.unpack(data, "nf4" if name == NF4_DQ else name, shape, double_quant=name == NF4_DQ)
    K = shape[-1]
    R = int(np.prod(shape)) // K
    if len(data) != R * K + 4 * R:
        raise FileFormatError(f"{name} data of shape {shape} must be {R * K + 4 * R} bytes, got {len(data)}")
    codes = torch.from_numpy(np.frombuffer(data, dtype=np.uint8, count=R * K).copy()).reshape(R, K)
    scales = torch.from_numpy(np.frombuffer(data, dtype="<f4", offset=R * K).astype(np.float32)).reshape(R, 1)
    return bf.BlockQuantized(fmt=fp8_format(name, K), shape=shape, codes=codes, scale_codes=scales.view(torch.int32),
                             scales=scales)


# ----------------------------------------------------------------------------------------------------------
# The block quantizer


@dataclass
class FloatFormatQuantizer:
    """Round-to-nearest of each Linear onto a block float format (`FORMATS`); no calibration data needed."""

    format: str = "mxfp4"
    forward_dtype = None  # no calibration forward of its own

    def __post_init__(self) -> None:
        if str(self.format).lower() == INT:
            raise BadArgumentError("format 'int' is the affine integer path: use qlab.rtn.RTNQuantizer")
        self.format = check_format(self.format)

    @property
    def config(self) -> dict:
        return {"method": "rtn", "format": self.format}

    @torch.no_grad()
    def quantize_block(self, block, inputs, prefix, skip=()) -> BlockResult:
        layers = layers_to_quantize(block, prefix, skip)
        check_rows({n: tuple(m.weight.shape) for n, m in layers.items()}, self.format)
        out = {}
        for name, lin in layers.items():
            q = quantize_weight(lin.weight, self.format)
            lin.weight.copy_(q.dequantize(lin.weight.dtype))
            out[name] = q
        return BlockResult({}, block_tensors=out)

    def describe(self) -> str:
        return f"RTN {self.format}"
