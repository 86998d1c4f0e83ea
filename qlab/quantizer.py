"""The block-quantizer contract: what `qlab.pipeline.quantize_model` asks of a method (RTN, GPTQ, AWQ, yours).

The walk (qlab.walk) hands a quantizer one decoder block at a time, with the calibration inputs entering it;
the quantizer rounds the block's Linears in place and says what it did in a `BlockResult`. The walk — not the
quantizer — then runs the block to make the next block's inputs; a quantizer that wants to work inside that
pass (GPTQ's single pass) returns `PassHooks` for it instead of running a pass of its own.

To add a method: write a class with the four members of `BlockQuantizer` (qlab/rtn.py is the smallest example),
then give the CLI a `--method` for it (qlab/cli.py: `QUANTIZERS`, and its flags in `_QUANT_FLAGS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from .blockfloat import BlockQuantized
from .qtensor import QuantizedTensor
from .walk import BlockInputs, PassHooks


@dataclass
class BlockResult:
    """What a block quantizer did to one block.

    qtensors       each quantized Linear's QuantizedTensor (an affine integer grid), by full name
                   ("model.layers.3.mlp.down_proj"); the Linear's weight now holds its dequantized value.
    float_weights  the float weight each quantized tensor approximates, by full name, where that is NOT the
                   Linear's weight before the call (AWQ rounds weights it first rescaled); the walk reports each
                   layer's weight error against these.
    during_pass    work to do inside the walk's pass that makes the next block's inputs; `qtensors` is complete
                   only after that pass (qlab.pipeline.quantize_block runs it and checks).
    block_tensors  the same for Linears stored in a block float format (qlab.blockfloat.BlockQuantized: MXFP4,
                   NVFP4, NF4, per-channel FP8 …; qlab.float_formats). A Linear is in one of the two dicts; both
                   types have shape, dequantize(dtype), storage_bits() and bits_per_weight(), and the walk counts
                   each from its own storage.
    """

    qtensors: dict[str, QuantizedTensor]
    float_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    during_pass: PassHooks | None = None
    block_tensors: dict[str, BlockQuantized] = field(default_factory=dict)

    def tensors(self) -> dict[str, QuantizedTensor | BlockQuantized]:
        """Every quantized Linear, affine or block format, by full name."""
        return {**self.qtensors, **self.block_tensors}


@runtime_checkable
class BlockQuantizer(Protocol):
    """A method that quantizes a model one decoder block at a time.

    forward_dtype   the dtype the walk runs calibration forwards in (None: the weights' own dtype; torch.bfloat16:
                    autocast, see qlab.walk.BlockInputs).
    config          every setting that changes the result, as a JSON-serialisable dict with a "method" key; it is
                    recorded in the output folder and carried into every export.
    describe()      a one-line human label ("GPTQ int4 asym g128 (act-order)").
    quantize_block  round the block's Linears in place (skipping the full names matched by qlab.walk.is_skipped)
                    and return a BlockResult. `inputs` is None when the model is quantized without calibration
                    data; a method that needs data raises BadArgumentError then.
    """

    forward_dtype: torch.dtype | None

    @property
    def config(self) -> dict: ...

    def describe(self) -> str: ...

    def quantize_block(self, block: nn.Module, inputs: BlockInputs | None, prefix: str, skip=()) -> BlockResult: ...
