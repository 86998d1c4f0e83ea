"""The block-by-block walk: capture what enters the first decoder block, then carry it block to block.

Only one block's inputs are held at a time: `inputs.run(block)` turns the hidden states entering a block
into those entering the next, so a quantizer can compute each block's statistics from the outputs of the
already-quantized blocks before it (as GPTQ and AWQ do).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .errors import BadArgumentError, NonFiniteError
from .stats import record_inputs


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The repeated decoder blocks of a causal LM (the longest ModuleList of modules holding Linears)."""
    best = None
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if any(isinstance(m, nn.Linear) for m in module[0].modules()):
                if best is None or len(module) > len(best):
                    best = module
    if best is None:
        raise BadArgumentError("the model has no decoder blocks with nn.Linear layers: qlab cannot quantize it")
    return best


def block_prefix(model: nn.Module) -> str:
    blocks = decoder_blocks(model)
    for name, module in model.named_modules():
        if module is blocks:
            return name
    raise BadArgumentError("decoder blocks not found in the model")


def is_skipped(name: str, skip) -> bool:
    """A Linear is skipped when its full name equals or ends with ("." + entry) one of the skip entries."""
    return any(name == s or name.endswith("." + s) for s in skip)


def layers_to_quantize(block: nn.Module, prefix: str, skip=()) -> dict[str, nn.Linear]:
    """The block's Linears by full name, minus the skipped ones."""
    layers = {f"{prefix}.{n}": m for n, m in linear_layers(block).items()}
    return {n: m for n, m in layers.items() if not is_skipped(n, skip)}


class _StopForward(Exception):
    pass


@dataclass
class PassHooks:
    """Work a block quantizer hands to the walk: while the walk runs the block to make the next block's inputs,
    fn(name, x) sees each named module's input x [tokens, features] before that module runs (GPTQ's single pass
    quantizes each group of Linears there, so every later group sees the quantized ones). With `whole_batch`
    every calibration sample goes through in one batch, so fn sees all tokens at once."""

    modules: dict[str, nn.Module]
    fn: Callable[[str, torch.Tensor], None]
    whole_batch: bool = True


@dataclass
class BlockInputs:
    """The hidden states entering a block, one [1, T, H] tensor per calibration sample, the keyword
    arguments every block receives (rotary position embeddings, attention mask...) and the dtype the block's
    forward passes compute in: None runs them in the weights' own dtype; torch.bfloat16 runs them under
    autocast (products in bf16, the residual stream and every quantizer statistic stay float32)."""

    hidden: list[torch.Tensor]
    kwargs: dict
    compute_dtype: torch.dtype | None = None

    def __len__(self) -> int:
        return len(self.hidden)

    def batches(self, max_tokens: int | None = 8192) -> Iterator[torch.Tensor]:
        """The [1, T, H] samples stacked along the batch axis, consecutive same-shape samples together, at most
        `max_tokens` tokens per batch (None: no limit) (one [b, T, H] tensor each; any other sample alone): fewer,
        larger calls (fewer Python-level calls, larger matrix products per call)."""
        i = 0
        while i < len(self.hidden):
            h = self.hidden[i]
            per = 1  # samples in this batch: consecutive [1, T, H] of one shape, within max_tokens
            if h.dim() == 3 and h.shape[0] == 1:
                per = len(self.hidden) if max_tokens is None else max(1, max_tokens // max(1, h.shape[1]))
            j = i + 1
            while j < len(self.hidden) and j - i < per and self.hidden[j].shape == h.shape:
                j += 1
            yield h if j == i + 1 else torch.cat(self.hidden[i:j])
            i = j

    @torch.no_grad()
    def forward(self, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """The block's output hidden states on h (one sample or a batch from `batches()`), in h's dtype."""
        cast = self.compute_dtype not in (None, h.dtype)
        with torch.autocast(h.device.type, dtype=self.compute_dtype if cast else None, enabled=cast):
            y = block(h, **self.kwargs)
        y = y[0] if isinstance(y, tuple) else y
        return y.to(h.dtype)

    def like(self, hidden: list[torch.Tensor]) -> BlockInputs:
        """Other hidden states with the same keyword arguments and compute dtype."""
        return BlockInputs(hidden, self.kwargs, self.compute_dtype)

    @torch.no_grad()
    def run(self, block: nn.Module, max_tokens: int = 8192, during: PassHooks | None = None) -> BlockInputs:
        """The block's outputs, as inputs of the next block (computed `max_tokens` tokens at a time). With
        `during`, its hooks see the named modules' inputs in this very pass (every sample in one batch when it
        asks for the whole batch)."""
        if during is None:
            return self._run(block, max_tokens)
        with record_inputs(during.modules, during.fn):
            return self._run(block, None if during.whole_batch else max_tokens)

    def _run(self, block: nn.Module, max_tokens: int | None) -> BlockInputs:
        out: list[torch.Tensor] = []
        for h in self.batches(max_tokens):
            out += self.per_sample(h, self.forward(block, h), len(out))
        return self.like(out)

    def per_sample(self, batch: torch.Tensor, y: torch.Tensor, first: int) -> list[torch.Tensor]:
        """A block's output y on a batch from `batches()` whose first sample is hidden[first], one tensor per sample."""
        stacked = batch is not self.hidden[first]  # batches() concatenated several [1, T, H] samples
        return list(y.split(1)) if stacked else [y]

    def check_finite(self, where: str) -> None:
        for h in self.hidden:
            if not torch.isfinite(h).all():
                raise NonFiniteError(
                    f"NaN/Inf activations entering {where}: the model overflowed on the calibration text "
                    f"(fp16? use float32) or an earlier quantized layer is broken"
                )


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, ids: torch.Tensor, compute_dtype: torch.dtype | None = None
) -> BlockInputs:
    """Run the model on each row of ids [n, T] up to its first decoder block and keep what enters it (the
    blocks' later forward passes compute in `compute_dtype`, see BlockInputs)."""
    first = decoder_blocks(model)[0]
    hidden: list[torch.Tensor] = []
    shared: dict = {}

    def grab(module, args, kwargs):
        h = args[0] if args else kwargs.pop("hidden_states")
        hidden.append(h.detach())
        if not shared:
            shared.update({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _StopForward

    handle = first.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for row in ids:
            try:
                model(row[None], use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    shared.pop("past_key_values", None)
    shared.pop("past_key_value", None)
    shared["use_cache"] = False
    return BlockInputs(hidden, shared, compute_dtype)


def linear_layers(module: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear inside module, by its name relative to module."""
    return {name: m for name, m in module.named_modules() if isinstance(m, nn.Linear)}
