"""Quantize a whole model block by block with any block quantizer (qlab.quantizer: the contract; RTN, GPTQ and AWQ
implement it).

The walk holds one block's calibration inputs at a time: each block is quantized on the outputs of the already
quantized blocks before it, then run (by the walk, never by the quantizer) to make the next block's inputs.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from tqdm.auto import tqdm

from .blockfloat import BlockQuantized
from .errors import BadArgumentError
from .heap import reuse_freed_memory
from .qtensor import QuantizedTensor
from .quantizer import BlockQuantizer, BlockResult
from .stats import record_outputs, relative_error
from .walk import BlockInputs, block_prefix, capture_block_inputs, decoder_blocks, layers_to_quantize


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]
    bits_per_weight: float
    weight_error: float  # ‖W − Ŵ‖² / ‖W‖²
    output_error: float | None  # ‖Y − Ŷ‖² / ‖Y‖² of this Linear's outputs over the calibration inputs


@dataclass
class QuantizationResult:
    """The quantized Linears — affine ones in `qtensors`, block-float ones (qlab.float_formats) in
    `block_tensors` — and the per-layer report."""

    qtensors: dict[str, QuantizedTensor]
    layers: list[LayerReport] = field(default_factory=list)
    seconds: float = 0.0
    method: str = ""
    block_tensors: dict[str, BlockQuantized] = field(default_factory=dict)

    def storage_bits(self) -> int:
        """Bits that store the quantized Linears, each counted from its own buffers: an affine tensor by
        qlab.qtensor.storage_breakdown (unpadded: `QuantizedTensor.storage_bits`), a block-float one by
        `BlockQuantized.storage_bits` (elements, block scales, per-tensor values)."""
        return sum(q.storage_bits() for q in self.qtensors.values()) + \
            sum(q.storage_bits() for q in self.block_tensors.values())

    def weights(self) -> int:
        """Number of weights in the quantized Linears."""
        return sum(q.codes.numel() for q in self.qtensors.values()) + \
            sum(q.numel for q in self.block_tensors.values())

    def bits_per_weight(self) -> float:
        """Over the quantized Linears: stored bits / weights (embeddings, norms and lm_head not counted)."""
        return self.storage_bits() / max(1, self.weights())

    def table(self) -> str:
        lines = [f"{'layer':45s} {'shape':>12s} {'bits/w':>7s} {'weight err':>11s} {'output err':>11s}"]
        for r in self.layers:
            out = "" if r.output_error is None else f"{r.output_error:11.3e}"
            lines.append(f"{r.name:45s} {str(r.shape):>12s} {r.bits_per_weight:7.3f} {r.weight_error:11.3e} {out}")
        return "\n".join(lines)


def _finish(result: BlockResult, block: nn.Module, inputs: BlockInputs | None, prefix: str, skip
            ) -> BlockInputs | None:
    """Run the pass the quantizer asked for (its PassHooks) and check every Linear was quantized; the block's
    outputs from that pass, or None when the quantizer asked for none."""
    if result.during_pass is None:
        return None
    outputs = inputs.run(block, during=result.during_pass)
    done = result.tensors()
    missed = [n for n in layers_to_quantize(block, prefix, skip) if n not in done]
    if missed:
        raise BadArgumentError(f"{missed[0]} was not reached by the block's forward pass; skip it (--skip)")
    return outputs


@torch.no_grad()
def quantize_block(quantizer: BlockQuantizer, block: nn.Module, inputs: BlockInputs | None, prefix: str, skip=()
                   ) -> tuple[BlockResult, BlockInputs | None]:
    """One block through `quantizer`, in place: its BlockResult and the next block's inputs (the quantized block
    run on `inputs` in the quantizer's forward dtype; None without calibration inputs)."""
    if inputs is not None:
        inputs = replace(inputs, compute_dtype=quantizer.forward_dtype)
    result = quantizer.quantize_block(block, inputs, prefix, skip)
    outputs = _finish(result, block, inputs, prefix, skip)
    if outputs is None and inputs is not None:
        outputs = inputs.run(block)
    return result, outputs


@torch.no_grad()
@reuse_freed_memory()  # large activations: reuse freed heap memory instead of page-faulting it in at every block
def quantize_model(
    model: nn.Module,
    calib_ids: torch.Tensor | None,
    quantizer: BlockQuantizer,
    skip=(),
    progress: bool = True,
    output_errors: bool = True,
) -> QuantizationResult:
    """Quantize every Linear of every decoder block of `model` in place (lm_head and embeddings stay float).

    With calibration ids [n, T], block i sees the outputs of the already-quantized blocks 0..i−1 (computed in the
    quantizer's `forward_dtype` where it has one, see qlab.walk.BlockInputs), and (with
    `output_errors`) each Linear's output error is measured against the float block on the same inputs — one more
    forward pass per block; `output_errors=False` skips it (calibration then costs what the quantizer needs).
    Without calibration ids (None), only weight errors are reported (enough for RTN).
    """
    start = time.perf_counter()
    blocks = decoder_blocks(model)
    prefix = block_prefix(model)
    inputs: BlockInputs | None = None
    if calib_ids is not None:
        if calib_ids.dim() != 2:
            raise BadArgumentError(f"calibration ids must be [n_samples, seqlen], got {tuple(calib_ids.shape)}")
        inputs = capture_block_inputs(model, calib_ids, quantizer.forward_dtype)
    result = QuantizationResult({}, method=quantizer.describe())
    for i, block in enumerate(tqdm(blocks, desc="quantizing blocks", disable=not progress)):
        name = f"{prefix}.{i}"
        if inputs is not None:
            inputs.check_finite(f"block {name}")
        float_block = copy.deepcopy(block) if inputs is not None and output_errors else None
        originals = {n: m.weight.detach().clone() for n, m in layers_to_quantize(block, name, skip).items()}
        done = quantizer.quantize_block(block, inputs, name, skip)
        outputs = _finish(done, block, inputs, name, skip)
        qts = done.tensors()
        result.qtensors.update(done.qtensors)
        result.block_tensors.update(done.block_tensors)
        originals.update(done.float_weights)
        out_err: dict[str, float] = {}
        if float_block is not None:
            inputs, out_err = _run_and_compare(block, float_block, inputs, name, list(qts))
        elif inputs is not None:
            inputs = outputs if outputs is not None else inputs.run(block)
        for n, qt in qts.items():
            W, W_hat = originals[n].double(), qt.dequantize(torch.float64)
            w_err = relative_error(float(((W - W_hat) ** 2).sum()), float((W**2).sum()))
            result.layers.append(LayerReport(n, qt.shape, qt.bits_per_weight(), w_err, out_err.get(n)))
    result.seconds = time.perf_counter() - start
    return result


def _run_and_compare(block, float_block, inputs: BlockInputs, prefix: str, names: list[str]):
    """Run the quantized block (its outputs feed the next block) and the float one on the same inputs; return
    the next inputs and, per Linear, ‖Y_float − Y_quant‖²/‖Y_float‖² of its outputs."""
    local = {n[len(prefix) + 1 :]: n for n in names}
    q_mods = {full: block.get_submodule(loc) for loc, full in local.items()}
    f_mods = {full: float_block.get_submodule(loc) for loc, full in local.items()}
    num: dict[str, float] = defaultdict(float)
    den: dict[str, float] = defaultdict(float)
    next_hidden: list[torch.Tensor] = []
    for h in inputs.batches():
        y_float: dict[str, torch.Tensor] = {}
        with record_outputs(f_mods, lambda n, y: y_float.__setitem__(n, y)):
            inputs.forward(float_block, h)

        def compare(n, y):
            num[n] += float(((y_float[n].double() - y.double()) ** 2).sum())
            den[n] += float((y_float[n].double() ** 2).sum())

        with record_outputs(q_mods, compare):
            y = inputs.forward(block, h)
        next_hidden += inputs.per_sample(h, y, len(next_hidden))
    return inputs.like(next_hidden), {n: relative_error(num[n], den[n]) for n in names}
