"""Detecting weights that already sit on a quantization grid: distinct levels per block."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import BadArgumentError
from ..walk import decoder_blocks, linear_layers


def levels_per_block(W: torch.Tensor, block: int = 32) -> torch.Tensor:
    """Number of distinct values in each run of `block` consecutive weights along the rows: [N·K/block]."""
    if W.shape[-1] % block:
        raise BadArgumentError(f"row length {W.shape[-1]} is not a multiple of the block size {block}; pick a block "
                               f"size that divides it")
    b = W.detach().reshape(-1, block).sort(dim=1).values
    return 1 + (b[:, 1:] != b[:, :-1]).sum(1)


def level_histogram(model: nn.Module, block: int = 32) -> torch.Tensor:
    """Over every Linear of the decoder blocks (not the embeddings / output head): how many blocks of weights
    have 1, 2, …, block distinct values ([block + 1] counts)."""
    counts = torch.zeros(block + 1, dtype=torch.long)
    for lin in linear_layers(decoder_blocks(model)).values():
        if lin.weight.shape[-1] % block == 0:
            counts += torch.bincount(levels_per_block(lin.weight, block), minlength=block + 1)
    return counts
