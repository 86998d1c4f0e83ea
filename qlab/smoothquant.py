"""SmoothQuant (Xiao et al. 2022): move the activations' outliers into the weights before W8A8 quantization.

For a group of Linears reading one input X (q/k/v; gate/up; o after v; down after up), per input channel j:

    s_j = max_t |X_tj|^α / max_i |W_ij|^(1−α)          (the W max over the columns j of every Linear of the group)
    X' = X · diag(1/s)        W' = W · diag(s)          X'·W'ᵀ = X·Wᵀ

so channel j's activation maximum becomes max|X_j|/s_j = (max|X_j|·max|W_j|)^(1−α) and the group's largest weight
in column j becomes (max|X_j|·max|W_j|)^α: α = 0.5 makes both √(max|X_j|·max|W_j|), α → 1 moves the whole
difficulty into the weights (every activation channel's maximum becomes 1). The division by s is folded
into the op that makes X (the norm's weight, or the previous Linear's output rows) by qlab.awq.fold — the same exact
folding AWQ uses — so the float model computes the same function (to float rounding).

Groups (qlab.awq.fold.scale_groups): "self_attn.qkv" (into input_layernorm), "self_attn.o_proj" (into v_proj's rows;
under grouped-query attention one s per v row is shared by the n_rep o columns that read it: s is computed from
the maxima over those columns, kv_expand spreads it), "mlp.gate_up" (into post_attention_layernorm),
"mlp.down_proj" (into up_proj's rows: down's input act(gate)·up is linear in up's rows). The paper smooths the
norm-fed groups; `groups` chooses.

α: one per model, searched over a grid by the error of the QUANTIZED model's output on calibration text
(KL(P_float ‖ P_quantized) of the next-token distributions, averaged over the first `search_rows` samples).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .activations import _check_ids, target_linears
from .awq.fold import ScaleGroup, fold_group, kv_expand, scale_groups
from .errors import BadArgumentError, NonFiniteError
from .stats import ChannelMagnitude, accumulate, record_inputs
from .walk import block_prefix, decoder_blocks

GROUPS = ("self_attn.qkv", "self_attn.o_proj", "mlp.gate_up", "mlp.down_proj")
NORM_GROUPS = ("self_attn.qkv", "mlp.gate_up")  # the paper's choice: the groups a LayerNorm feeds
ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def smoothing_scales(x_max: torch.Tensor, w_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = x_max^α / w_max^(1−α) per channel (float32); 1 where either maximum is 0 (nothing to balance)."""
    if not 0 <= alpha <= 1:
        raise BadArgumentError(f"alpha must lie in [0, 1], got {alpha!r}")
    x = x_max.double()
    w = w_max.double()
    ok = (x > 0) & (w > 0)
    s = torch.where(ok, x.clamp(min=1e-30) ** alpha / w.clamp(min=1e-30) ** (1 - alpha), torch.ones_like(x))
    return s.float()


def _reduce_max(v: torch.Tensor, n_rep: int, head_dim: int) -> torch.Tensor:
    """Per o column [n_kv·n_rep·d] → per v row [n_kv·d]: the max over the n_rep query heads sharing the row
    (the inverse of kv_expand's layout)."""
    if n_rep == 1:
        return v
    return v.reshape(-1, n_rep, head_dim).amax(dim=1).reshape(-1)


def group_weight_max(group: ScaleGroup) -> torch.Tensor:
    """max_i |W_ij| over every Linear of the group, per input column j."""
    return torch.stack([lin.weight.detach().float().abs().amax(dim=0) for lin in group.layers.values()]).amax(0)


@torch.no_grad()
def channel_absmax(model: nn.Module, ids: torch.Tensor, progress: bool = True) -> dict[str, torch.Tensor]:
    """max_t |x_tj| per input channel of every decoder-block Linear (float32 [K] by full name) over calibration
    ids [n, T] (qlab.stats.ChannelMagnitude)."""
    ids = _check_ids(ids)
    accs, fn = accumulate(lambda name, K: ChannelMagnitude(K, name, "absmax"))
    was_training = model.training
    model.eval()
    try:
        with record_inputs(target_linears(model), fn):
            for row in tqdm(ids, desc="activation maxima", disable=not progress):
                model(row[None], use_cache=False)
    finally:
        model.train(was_training)
    out = {}
    for name, acc in accs.items():
        v = acc.value
        if not torch.isfinite(v).all():
            raise NonFiniteError(f"NaN/Inf in the calibration activations entering {name}: load the model in "
                                 f"float32 or check the layers before it")
        out[name] = v.float()
    return out


@dataclass
class GroupScales:
    """What smoothing did to one group: its α, the scales' range, or why it was left alone."""

    block: str
    group: str
    alpha: float
    s_min: float = 1.0
    s_max: float = 1.0
    skipped: str | None = None


@torch.no_grad()
def smooth_model(model: nn.Module, x_max: dict[str, torch.Tensor], alpha: float,
                 groups: tuple[str, ...] = GROUPS) -> list[GroupScales]:
    """Smooth every decoder block in place with one α: per group, s from the float activation maxima `x_max`
    (channel_absmax of this model before smoothing) and the group's weights, folded by qlab.awq.fold.fold_group.
    The float model's output is unchanged (to rounding). Returns one GroupScales per (block, group)."""
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise BadArgumentError(f"unknown SmoothQuant group {unknown[0]!r}; known: {', '.join(GROUPS)}")
    prefix = block_prefix(model)
    report = []
    for i, block in enumerate(decoder_blocks(model)):
        bname = f"{prefix}.{i}"
        for g in scale_groups(block):  # in order: a group's weight maxima are read before a later fold touches them
            if g.name not in groups:
                continue
            first = f"{bname}.{next(iter(g.layers))}"
            if g.prev is None or g.skip_reason:
                report.append(GroupScales(bname, g.name, alpha, skipped=g.skip_reason or "nothing to fold into"))
                continue
            if first not in x_max:
                raise BadArgumentError(f"no activation maxima for {first}: compute channel_absmax(model, ids) on this "
                                       f"model before smoothing it")
            xm = _reduce_max(x_max[first].float(), g.n_rep, g.head_dim)
            wm = _reduce_max(group_weight_max(g), g.n_rep, g.head_dim)
            s_prev = smoothing_scales(xm, wm, alpha)
            s = kv_expand(s_prev, g.n_rep, g.head_dim)
            reason = fold_group(g, s_prev, s)
            if reason:
                report.append(GroupScales(bname, g.name, alpha, skipped=reason))
            else:
                report.append(GroupScales(bname, g.name, alpha, float(s.min()), float(s.max())))
    return report


# ----------------------------------------------------------------------------------------------------------
# the α search


@torch.no_grad()
def _logprobs(model: nn.Module, rows: torch.Tensor) -> list[torch.Tensor]:
    return [torch.log_softmax(model(r[None], use_cache=False).logits[0].float(), dim=-1) for r in rows]


@torch.no_grad()
def mean_kl(reference: list[torch.Tensor], model: nn.Module, rows: torch.Tensor) -> float:
    """Mean over every position of KL(P_ref ‖ P_model) of the next-token distributions (nats)."""
    total, n = 0.0, 0
    for ref, r in zip(reference, rows):
        lp = torch.log_softmax(model(r[None], use_cache=False).logits[0].float(), dim=-1)
        total += float((ref.exp() * (ref - lp)).sum())
        n += ref.shape[0]
    return total / n


@dataclass
class AlphaSearch:
    alpha: float
    alphas: list[float]
    errors: list[float]  # mean KL of the quantized, smoothed model per α
    error_unsmoothed: float  # the same quantization without smoothing
    search_rows: int
    seconds: float = 0.0
    report: list[GroupScales] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "alphas": self.alphas, "kl": self.errors, "kl_unsmoothed": self.error_unsmoothed,
                "search_rows": self.search_rows, "seconds": self.seconds}


def search_alpha(model: nn.Module, ids: torch.Tensor, quantize: Callable[[nn.Module, torch.Tensor], Callable],
                 alphas=ALPHAS, groups: tuple[str, ...] = GROUPS, search_rows: int = 4,
                 x_max: dict[str, torch.Tensor] | None = None, progress: bool = True) -> AlphaSearch:
    """The α whose smoothed-then-quantized copy of `model` is closest to the float model on the first `search_rows`
    calibration samples (mean KL). `quantize(copy, rows)` quantizes a smoothed copy in place (weights, activation
    hooks; static ranges it calibrates on `rows`, the search samples) and returns a function that undoes its
    hooks. The activation maxima `x_max` come from all of `ids` (computed when not given). `model` is not
    changed."""
    ids = _check_ids(ids)
    alphas = [float(a) for a in alphas]
    if not alphas or any(not 0 <= a <= 1 for a in alphas):
        raise BadArgumentError(f"alphas must be a non-empty list of values in [0, 1], got {alphas}")
    if search_rows < 1:
        raise BadArgumentError(f"search_rows must be ≥ 1, got {search_rows}")
    start = time.perf_counter()
    rows = ids[:search_rows]
    if x_max is None:
        x_max = channel_absmax(model, ids, progress)
    was_training = model.training
    model.eval()
    reference = _logprobs(model, rows)

    def error(alpha: float | None) -> float:
        m = copy.deepcopy(model)
        if alpha is not None:
            smooth_model(m, x_max, alpha, groups)
        undo = quantize(m, rows)
        try:
            return mean_kl(reference, m, rows)
        finally:
            undo()
            del m

    try:
        base = error(None)
        errors = [error(a) for a in tqdm(alphas, desc="SmoothQuant α", disable=not progress)]
    finally:
        model.train(was_training)
    finite = [e if math.isfinite(e) else math.inf for e in errors]
    best = alphas[min(range(len(alphas)), key=finite.__getitem__)]
    return AlphaSearch(best, alphas, errors, base, len(rows), time.perf_counter() - start)


def smoothquant(model: nn.Module, ids: torch.Tensor, quantize: Callable[[nn.Module, torch.Tensor], Callable],
                alphas=ALPHAS, groups: tuple[str, ...] = GROUPS, search_rows: int = 4,
                progress: bool = True) -> AlphaSearch:
    """Search α (search_alpha), then smooth `model` in place with it (float function unchanged). Quantizing it is
    the caller's next step (the same `quantize`)."""
    x_max = channel_absmax(model, ids, progress)
    found = search_alpha(model, ids, quantize, alphas, groups, search_rows, x_max, progress)
    found.report = smooth_model(model, x_max, found.alpha, groups)
    return found
