"""Importance matrix (llama-imatrix): per input channel, the mean square of the activations a Linear sees.

    imatrix[layer][j] = Σ_t x_tj² / T        over every calibration token t (llama-imatrix's sum / count)

The k-quants (and the legacy types, when given one) weight each element's squared rounding error by it when
they search a block's scale and min, so the channels that carry large activations are rounded more carefully.
Collected through qlab's block-by-block walk: only one decoder block's inputs are held at a time.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import BadArgumentError, NonFiniteError
from ..stats import SquareMean, accumulate, forward_rows, record_inputs
from ..walk import block_prefix, capture_block_inputs, decoder_blocks, linear_layers
from .names import gguf_name


@torch.no_grad()
def collect_imatrix(model: nn.Module, calib_ids: torch.Tensor, progress: bool = True) -> dict[str, np.ndarray]:
    """{full Linear name (e.g. model.layers.0.self_attn.q_proj): float32 [in_features] mean of x²} for every
    Linear of the decoder blocks, from calibration token ids [n, T]."""
    if calib_ids.dim() != 2 or calib_ids.numel() == 0:
        raise BadArgumentError(f"calibration ids must be a non-empty [n_samples, seqlen] tensor, got "
                               f"{tuple(calib_ids.shape)}")
    prefix = block_prefix(model)
    blocks = decoder_blocks(model)
    inputs = capture_block_inputs(model, calib_ids)
    accs, fn = accumulate(lambda name, K: SquareMean(K, name))
    for i, block in enumerate(tqdm(blocks, desc="imatrix", disable=not progress)):
        layers = {f"{prefix}.{i}.{n}": m for n, m in linear_layers(block).items()}
        with record_inputs(layers, fn):
            inputs = inputs.run(block)
        inputs.check_finite(f"block {i + 1}")
    out = {}
    for name, acc in accs.items():
        v = acc.mean.float().numpy()
        if not np.isfinite(v).all():
            raise NonFiniteError(f"the importance of {name} is not finite: the activations overflowed")
        out[name] = v
    return out


def naive_imatrix(model: nn.Module, calib_ids: torch.Tensor) -> dict[str, np.ndarray]:
    """Reference: one full forward per sample with hooks on every decoder Linear (the oracle for the walk)."""
    prefix = block_prefix(model)
    layers = {f"{prefix}.{i}.{n}": m for i, b in enumerate(decoder_blocks(model)) for n, m in linear_layers(b).items()}
    acc: dict[str, list[np.ndarray]] = {}
    forward_rows(model, calib_ids, layers, lambda n, x: acc.setdefault(n, []).append(x.double().numpy()))
    return {n: (np.concatenate(v) ** 2).mean(0).astype(np.float32) for n, v in acc.items()}


def gguf_imatrix(imatrix: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same importances under llama.cpp's tensor names (blk.0.attn_q.weight), as llama-quantize reads them."""
    out = {}
    for name, v in imatrix.items():
        g = gguf_name(name.removesuffix(".weight") + ".weight")
        if g is not None:
            out[g] = np.asarray(v, dtype=np.float32)
    return out
