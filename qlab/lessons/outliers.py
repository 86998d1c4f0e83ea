"""Outliers: weight outliers that stretch a group's scale, and activation channels far larger than the rest.

Weight outlier in a group of g weights, b bits, symmetric: s = max|w| / (2^(b−1) − 1). One weight of size
m·max|w| multiplies s by m, so the other g − 1 weights crowd into ≈ (2^b − 1)/m levels: the rest of the grid
is wasted and their error grows as (m·Δ)²/12.

Activation outliers (LLM.int8(), Dettmers et al. 2022, §3; AWQ, Lin et al. 2024, §2.2): a few input
channels of a Linear carry magnitudes 10–100× the median channel; the weight columns they multiply
matter most for the layer's output error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..affine import check_bits, check_finite, round_codes, scale_zero
from ..errors import BadArgumentError
from ..stats import ChannelMagnitude, accumulate, forward_rows
from ..walk import decoder_blocks, linear_layers


# ---------------------------------------------------------------------------------------------------------------
# weight outlier injected into one group
@dataclass
class OutlierRow:
    factor: float  # outlier = factor · max|w| of the clean group
    outlier: float
    scale: float
    levels_used: int  # distinct codes the group uses (outlier included)
    levels_available: int  # 2^b − 1 symmetric (one negative level unused), 2^b asymmetric
    mse_rest: float  # mean (w − ŵ)² over the other weights
    sqnr_rest_db: float

    @property
    def wasted_levels(self) -> int:
        return self.levels_available - self.levels_used


def inject_outlier(group: torch.Tensor, factor: float, index: int = 0) -> torch.Tensor:
    """A copy of the 1-D group whose element `index` is set to factor·max|group| (with that element's sign)."""
    g = group.detach().to(torch.float64).reshape(-1).clone()
    if not -len(g) <= index < len(g):
        raise BadArgumentError(f"index {index} is outside the group of {len(g)} weights")
    sign = 1.0 if g[index] >= 0 else -1.0
    g[index] = sign * factor * float(g.abs().max())
    return g


def quantize_group(group: torch.Tensor, bits: int, symmetric: bool = True) -> tuple[torch.Tensor, float, float]:
    """RTN of one 1-D group: (codes, s, z)."""
    check_bits(bits)
    g = group.detach().to(torch.float64).reshape(1, -1)
    check_finite(g)
    s, z = scale_zero(g, bits, symmetric)
    q = round_codes(g, s[:, None], z[:, None], bits)
    return q[0], float(s[0]), float(z[0])


def outlier_sweep(
    group: torch.Tensor, bits: int = 4, symmetric: bool = True, factors: Iterable[float] = (1, 2, 4, 8, 16, 32),
    index: int = 0,
) -> list[OutlierRow]:
    """Inject an outlier of each size into the group and measure scale, levels used and the others' error."""
    clean = group.detach().to(torch.float64).reshape(-1)
    rest = torch.ones(len(clean), dtype=torch.bool)
    rest[index] = False
    rows = []
    for m in factors:
        if m <= 0:
            raise BadArgumentError(f"outlier factors must be positive, got {m}")
        g = inject_outlier(clean, m, index)
        q, s, z = quantize_group(g, bits, symmetric)
        w_hat = (q - z) * s
        err = ((g - w_hat)[rest] ** 2)
        noise, signal = float(err.sum()), float((g[rest] ** 2).sum())
        rows.append(OutlierRow(
            factor=float(m), outlier=float(g[index]), scale=s, levels_used=int(torch.unique(q).numel()),
            levels_available=2**bits - 1 if symmetric else 2**bits, mse_rest=float(err.mean()),
            sqnr_rest_db=float("inf") if noise == 0 else 10 * float(torch.log10(torch.tensor(signal / noise))),
        ))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# activation outliers
LAYER_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def layer_type(name: str) -> str:
    """The last component of a module name ("model.layers.3.mlp.down_proj" → "down_proj")."""
    return name.rsplit(".", 1)[-1]


def block_index(name: str) -> int:
    """Decoder block number in a module name ("layers.3." → 3); -1 if none."""
    m = re.search(r"\.(\d+)\.", "." + name + ".")
    return int(m.group(1)) if m else -1


@torch.no_grad()
def activation_channel_magnitudes(
    model: nn.Module, ids: torch.Tensor, layer_types: Iterable[str] | None = ("q_proj", "o_proj", "gate_proj",
                                                                           "down_proj"),
    statistic: str = "absmax",
) -> dict[str, torch.Tensor]:
    """Per-input-channel magnitude of every decoder Linear's input over the tokens of ids [n, T]: {name: [in]}.

    statistic: "absmax" (max_t |x_tc|) or "meanabs" (mean_t |x_tc|, AWQ's activation statistic). q/k/v share one
    input (as gate/up do), so by default only q_proj and gate_proj are recorded of those.
    """
    if statistic not in ChannelMagnitude.STATISTICS:
        raise BadArgumentError(f"statistic must be one of {ChannelMagnitude.STATISTICS}, got {statistic!r}")
    wanted = None if layer_types is None else set(layer_types)
    modules = {}
    for i, block in enumerate(decoder_blocks(model)):
        for local, lin in linear_layers(block).items():
            if wanted is None or layer_type(local) in wanted:
                modules[f"layers.{i}.{local}"] = lin
    if not modules:
        raise BadArgumentError(f"no decoder Linear matches layer_types={sorted(wanted or [])}; try {LAYER_TYPES}")
    accs, fn = accumulate(lambda name, K: ChannelMagnitude(K, name, statistic))
    forward_rows(model, ids, modules, fn)
    return {k: a.value.float() for k, a in accs.items()}


@dataclass
class OutlierCount:
    name: str
    channels: int
    median: float
    max_ratio: float  # max channel / median channel
    n_10_to_100: int  # channels with 10 ≤ magnitude/median < 100
    n_over_100: int


def count_outlier_channels(mags: dict[str, torch.Tensor], low: float = 10.0, high: float = 100.0) -> list[OutlierCount]:
    """For each layer, how many input channels have magnitude/median in [low, high) and ≥ high."""
    if not 0 < low < high:
        raise BadArgumentError(f"need 0 < low < high, got low={low}, high={high}")
    out = []
    for name, m in mags.items():
        m = m.double()
        med = float(m.median())
        r = m / med if med > 0 else torch.full_like(m, float("inf"))
        out.append(OutlierCount(
            name=name, channels=m.numel(), median=med, max_ratio=float(r.max()),
            n_10_to_100=int(((r >= low) & (r < high)).sum()), n_over_100=int((r >= high).sum()),
        ))
    return out


def summarize_by_type(counts: list[OutlierCount]) -> dict[str, dict[str, float]]:
    """Per layer type: layers, layers with any channel ≥ low× median, total such channels, largest ratio."""
    out: dict[str, dict[str, float]] = {}
    for c in counts:
        t = out.setdefault(layer_type(c.name), {"layers": 0, "layers_with_outliers": 0, "channels_10_to_100": 0,
                                                "channels_over_100": 0, "max_ratio": 0.0})
        t["layers"] += 1
        t["layers_with_outliers"] += int(c.n_10_to_100 + c.n_over_100 > 0)
        t["channels_10_to_100"] += c.n_10_to_100
        t["channels_over_100"] += c.n_over_100
        t["max_ratio"] = max(t["max_ratio"], c.max_ratio)
    return out
