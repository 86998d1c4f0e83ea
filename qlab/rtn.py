"""Round-to-nearest (RTN): the simplest block quantizer, and the example to copy when adding a method.

Each Linear of the block is rounded to the nearest level of its own affine grid (qlab.affine); no calibration
data is needed, so the walk may pass `inputs=None`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .affine import check_finite, quantize_affine
from .quantizer import BlockResult
from .walk import layers_to_quantize


@dataclass
class RTNQuantizer:
    """Round-to-nearest affine quantization of each Linear (no calibration data needed)."""

    bits: int = 4
    group_size: int | str | None = 64  # the toolkit's default group (benchmarks/results/defaults.json)
    symmetric: bool = False
    zero_point: str = "integer"
    forward_dtype = None  # RTN runs no calibration forward of its own

    @property
    def config(self) -> dict:
        return {"method": "rtn", **asdict(self)}

    @torch.no_grad()
    def quantize_block(self, block, inputs, prefix, skip=()) -> BlockResult:
        out = {}
        for name, lin in layers_to_quantize(block, prefix, skip).items():
            check_finite(lin.weight, f"weight of {name}")
            qt = quantize_affine(lin.weight, self.bits, self.group_size, self.symmetric, zero_point=self.zero_point)
            lin.weight.copy_(qt.dequantize(lin.weight.dtype))
            out[name] = qt
        return BlockResult(out)

    def describe(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        g = self.group_size if isinstance(self.group_size, int) else (self.group_size or "channel")
        return f"RTN int{self.bits} {kind} g{g}"


