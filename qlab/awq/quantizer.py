"""AWQ (Lin et al. 2023): activation-aware scaling of weight columns before quantization, then clipping.

A Linear's output error Ŵx − Wx is dominated by the few input channels whose activations are large
("salient" channels, §3.1). Multiplying those weight columns by s > 1 before rounding shrinks their relative
rounding error; the input is divided by the same s, folded into the previous op (`qlab.awq.fold`), so the float
model is unchanged. §3.2: s = s_x^α with s_x the mean |x| of each input channel, α ∈ [0, 1] chosen by grid
search to minimise the output error of the quantized group

    L(α) = ‖ Q(W·diag(s)) · diag(s)⁻¹ · X − W·X ‖²,      s = s_x^α / √(max s_x^α · min s_x^α)

(α = 0 is plain RTN, so the search can only match or beat it on the calibration data). Then each weight
group's range is shrunk (clipped) by the factor that minimises that group's share of the output error.
objective="module" measures L(α) at the output of the attention (q/k/v) or MLP (gate/up) instead, as AutoAWQ
does (`qlab.awq.probe`); clip_independent searches the two ends of each group's range separately.

This module: the block quantizer and its per-block statistics (mean |x| and H = XᵀX/T, qlab.stats.InputStats, which
the optional GPTQ step reuses). The searches are in `qlab.awq.search`, the folding in `qlab.awq.fold`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..affine import check_bits, fake_quantize, quantize_affine, resolve_group_size
from ..errors import BadArgumentError, TextTooShortError
from ..qtensor import QuantizedTensor
from ..quantizer import BlockResult
from ..stats import InputStats, accumulate, record_inputs, relative_output_error
from ..walk import is_skipped, linear_layers
from .fold import ScaleGroup, fold_group, kv_expand, scale_groups
from .probe import ModuleProbe, capture_calls, probe_module_name
from .search import (
    AWQWarning,
    ScaleSearch,
    alpha_values,
    apply_clip,
    awq_search_clip,
    awq_search_scales,
    output_error,
    shrink_values,
)

# ----------------------------------------------------------------------------------------------------------
# statistics


def collect_block_stats(block: nn.Module, inputs, names: Sequence[str] | None = None, prefix: str = "",
                        hidden: Sequence[torch.Tensor] | None = None) -> dict[str, InputStats]:
    """Input statistics (mean |x|, H = XᵀX/T) of the named Linears of a block (default: the first Linear of each
    AWQ scale group — q_proj, o_proj, gate_proj, down_proj in a llama block) over the block's calibration inputs
    (or over `hidden`, a subset of them)."""
    linears = linear_layers(block)
    names = list(names) if names is not None else [next(iter(g.layers)) for g in scale_groups(block)]
    missing = [n for n in names if n not in linears]
    if missing:
        raise BadArgumentError(f"no Linear named {missing} in the block; it has {list(linears)}")
    full = (lambda n: f"{prefix}.{n}") if prefix else (lambda n: n)
    stats, fn = accumulate(lambda n, K: InputStats(K, full(n)))
    with torch.no_grad(), record_inputs({n: linears[n] for n in names}, fn):
        for h in inputs.hidden if hidden is None else hidden:
            block(h, **inputs.kwargs)
    for n in names:
        if n not in stats:
            raise TextTooShortError(f"{full(n)}: no calibration tokens reached this layer")
        stats[n].check()
    return stats


def salient_protection_error(
    W: torch.Tensor, H: torch.Tensor, scores: torch.Tensor, fraction: float = 0.01, bits: int = 3,
    group_size: int | str | None = 128, symmetric: bool = False,
) -> float:
    """Output error of RTN when the input channels with the top `fraction` of `scores` keep float weights (AWQ §3.1,
    Table 1: scores = mean |x| protects far better than scores = weight norm or random)."""
    W_hat = fake_quantize(W.float(), bits, group_size, symmetric)
    k = int(round(fraction * W.shape[1]))
    if k > 0:
        idx = torch.topk(scores.float(), k).indices
        W_hat[:, idx] = W.float()[:, idx]
    return output_error(W, W_hat, H)


# ----------------------------------------------------------------------------------------------------------
# the block quantizer


@dataclass
class GroupRecord:
    """What AWQ did to one scale group of one block (the per-layer report)."""

    block: str
    group: str
    layers: list[str]
    alpha: float
    fraction_scaled_up: float
    s_min: float
    s_max: float
    err_rtn: float  # relative output error ‖ΔY‖²/‖Y‖² of the group, RTN on the original weights
    err_scaled: float  # ... with AWQ scales, before clipping
    err_awq: float  # ... final (scales, clip, then RTN or GPTQ)
    note: str = ""
    alphas: list[float] = field(default_factory=list)
    curve: list[float] = field(default_factory=list)  # relative error per α (search data)


@dataclass
class BlockState:
    """One block between `scale_block` and `quantize_block`: W_now = diag(row_scale)·W_original·diag(col_scale)."""

    prefix: str
    linears: dict[str, nn.Linear]
    to_quantize: list[str]
    groups: list[ScaleGroup]
    leader_of: dict[str, str]  # Linear → the Linear whose input statistics it shares
    stats: dict[str, InputStats]  # search statistics (of the float inputs, before scaling)
    held: dict[str, InputStats]  # statistics the reported errors use (held-out samples, or = stats)
    originals: dict[str, torch.Tensor]
    row_scale: dict[str, torch.Tensor]
    col_scale: dict[str, torch.Tensor]
    searches: dict[str, tuple[ScaleSearch | None, str]] = field(default_factory=dict)


class AWQQuantizer:
    """Block quantizer (qlab.quantizer contract): AWQ scale search and folding, clip search, then RTN or GPTQ.

    Statistics come from the block's calibration inputs. The scales are folded in place into the block's norms
    and the Linears preceding down_proj and o_proj, so the returned QuantizedTensors describe the *scaled*
    weights of the folded model. With holdout > 0 the last fraction of calibration samples is kept out of the
    searches and used only to measure the errors reported in `self.records`.
    Defaults measured on the embedded model (3-bit g64, benchmarks/results/awq_ablation.json): clipping every Linear
    (AutoAWQ leaves q/k alone) with two-sided factors lifted AWQ most; objective="module" and duo_scaling did not
    help beyond calibration noise. Asymmetric grids in groups of 64, as every qlab quantizer (4-bit: perplexity
    33.46 vs 35.29 symmetric, benchmarks/results/defaults.json)."""

    def __init__(
        self, bits: int = 4, group_size: int | str | None = 64, symmetric: bool = False,
        alpha_grid: int | Sequence[float] = 20, clip: bool = True, then: str = "rtn",
        clip_grid: int = 20, max_shrink: float = 0.5, clip_skip: Sequence[str] = (),
        damp: float = 0.01, holdout: float = 0.0, duo_scaling: bool = False, objective: str = "linear",
        probe_tokens: int = 2048, clip_independent: bool = True, progress: bool = False,
    ) -> None:
        check_bits(bits)
        if objective not in ("linear", "module"):
            raise BadArgumentError(f"objective must be 'linear' (the Linears' outputs) or 'module' (the output of "
                                   f"the attention / MLP they feed), got {objective!r}")
        if probe_tokens < 1:
            raise BadArgumentError(f"probe_tokens must be ≥ 1, got {probe_tokens}")
        if then not in ("rtn", "gptq"):
            raise BadArgumentError(f"then must be 'rtn' or 'gptq', got {then!r}")
        if not 0 <= holdout < 1:
            raise BadArgumentError(f"holdout must be a fraction in [0, 1), got {holdout}")
        alpha_values(alpha_grid)  # validate early
        shrink_values(clip_grid, max_shrink)
        self.bits, self.group_size, self.symmetric = bits, group_size, symmetric
        self.alpha_grid, self.clip, self.then = alpha_grid, clip, then
        self.clip_grid, self.max_shrink, self.clip_skip = clip_grid, max_shrink, tuple(clip_skip)
        self.damp, self.holdout, self.progress, self.duo_scaling = damp, holdout, progress, duo_scaling
        self.objective, self.probe_tokens, self.clip_independent = objective, probe_tokens, clip_independent
        self.records: list[GroupRecord] = []
        self.forward_dtype = None  # statistics and searches see the block run in its weights' dtype
        self.seconds: dict[str, float] = {"stats": 0.0, "scale_search": 0.0, "clip_search": 0.0, "quantize": 0.0}

    @property
    def config(self) -> dict:
        return {"method": "awq", "bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric,
                "alpha_grid": self.alpha_grid if isinstance(self.alpha_grid, int) else list(self.alpha_grid),
                "clip": self.clip, "then": self.then, "duo_scaling": self.duo_scaling, "objective": self.objective,
                "probe_tokens": self.probe_tokens, "clip_independent": self.clip_independent,
                "clip_skip": list(self.clip_skip), "clip_grid": self.clip_grid, "max_shrink": self.max_shrink,
                "damp": self.damp, "holdout": self.holdout}

    def describe(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        g = self.group_size if isinstance(self.group_size, int) else (self.group_size or "channel")
        return f"AWQ{'+clip' if self.clip else ''}→{self.then.upper()} int{self.bits} {kind} g{g}"

    def _probe_calls(self, block: nn.Module, groups: list[ScaleGroup], hidden: list[torch.Tensor], kwargs: dict
                     ) -> dict[str, tuple[str, list]]:
        """For objective="module": group name → (probed sub-module, its recorded calls on ≈probe_tokens tokens of
        whole, evenly spaced calibration samples)."""
        names = {g.name: probe_module_name(list(g.layers), isinstance(g.prev, nn.Linear)) for g in groups}
        names = {k: v for k, v in names.items() if v is not None}
        if not names or not hidden:
            return {}
        per = max(1, hidden[0].numel() // hidden[0].shape[-1])
        k = max(1, min(len(hidden), self.probe_tokens // per))
        idx = torch.linspace(0, len(hidden) - 1, k).round().long().unique().tolist()
        calls = capture_calls(block, [hidden[i] for i in idx], kwargs,
                              {m: block.get_submodule(m) for m in set(names.values())})
        return {g: (m, calls[m]) for g, m in names.items()}

    # --- the block ------------------------------------------------------------------------------------
    @torch.no_grad()
    def quantize_block(self, block: nn.Module, inputs, prefix: str = "", skip=()) -> BlockResult:
        """Scale (fold in place), clip and quantize every Linear of the block. The BlockResult's float weights
        are the scaled float weights each QuantizedTensor approximates."""
        return self.round_block(self.scale_block(block, inputs, prefix, skip))

    @torch.no_grad()
    def scale_block(self, block: nn.Module, inputs, prefix: str = "", skip=()) -> BlockState:
        """Collect statistics, search α for each scale group and fold the scales in place (no quantization yet:
        the float block computes the same function afterwards)."""
        if inputs is None or len(inputs) == 0:
            raise BadArgumentError("AWQ needs calibration data (it searches scales on activations); give "
                                   "calibration ids, or use RTN")
        full = (lambda n: f"{prefix}.{n}") if prefix else (lambda n: n)
        linears = dict(linear_layers(block).items())
        to_quantize = [n for n in linears if not is_skipped(full(n), skip)]
        groups = scale_groups(block)
        leader_of: dict[str, str] = {}
        for g in groups:
            first = next(iter(g.layers))
            for n in g.layers:
                leader_of[n] = first
        for n in linears:
            leader_of.setdefault(n, n)
        leaders = {n: linears[n] for n in set(leader_of.values())}

        t0 = time.perf_counter()
        hidden = inputs.hidden
        n_hold = int(len(hidden) * self.holdout)
        if self.holdout and n_hold == 0 and len(hidden) > 1:
            n_hold = 1
        search_h, hold_h = (hidden[:len(hidden) - n_hold], hidden[len(hidden) - n_hold:]) if n_hold else (hidden, [])
        stats = collect_block_stats(block, inputs, list(leaders), prefix, hidden=search_h)
        held = collect_block_stats(block, inputs, list(leaders), prefix, hidden=hold_h) if hold_h else stats
        probes = self._probe_calls(block, groups, search_h, inputs.kwargs) if self.objective == "module" else {}
        self.seconds["stats"] += time.perf_counter() - t0

        dtype = next(block.parameters()).dtype
        state = BlockState(
            prefix=prefix, linears=linears, to_quantize=to_quantize, groups=groups, leader_of=leader_of,
            stats=stats, held=held, originals={n: m.weight.detach().float().clone() for n, m in linears.items()},
            row_scale={n: torch.ones(m.out_features) for n, m in linears.items()},
            col_scale={n: torch.ones(m.in_features) for n, m in linears.items()},
        )
        t0 = time.perf_counter()
        for g in groups:
            names = [n for n in g.layers if n in to_quantize]
            if g.skip_reason or not names:
                state.searches[g.name] = (None, g.skip_reason or "all layers skipped")
                continue
            st = stats[leader_of[names[0]]]
            W = torch.cat([linears[n].weight.detach() for n in names])
            loss, energy = None, None
            if g.name in probes:
                mname, calls = probes[g.name]
                probe = ModuleProbe(block.get_submodule(mname), calls,
                                    [n[len(mname) + 1:] + ".weight" for n in names], full(mname))
                loss, energy = probe.error, probe.energy
            res = awq_search_scales(W, st.x_mean, st.H, self.bits, self.group_size, self.symmetric,
                                    self.alpha_grid, g.n_rep, g.head_dim, name=f"{full(g.name)}", dtype=dtype,
                                    duo_scaling=self.duo_scaling, loss=loss, energy=energy)
            note = "; ".join(res.rejected[:2])
            if not bool((res.s == 1).all()):
                reason = fold_group(g, res.s_prev, res.s)
                if reason:  # fall back to the best α whose fold fits the dtype
                    order = torch.nan_to_num(res.errors, nan=float("inf")).argsort().tolist()
                    for i in order:
                        a = float(res.alphas[i])
                        s_prev = res.candidates[i]
                        s = kv_expand(s_prev, g.n_rep, g.head_dim)
                        if fold_group(g, s_prev, s) is None:
                            res.alpha, res.s, res.s_prev = a, s, s_prev
                            break
                    else:
                        res.alpha, res.s, res.s_prev = 0.0, torch.ones_like(res.s), torch.ones_like(res.s_prev)
                    warnings.warn(f"AWQ {full(g.name)}: {reason}; used α={res.alpha:.3g} instead", AWQWarning,
                                  stacklevel=2)
                    note = (note + "; " if note else "") + f"{reason}; fell back to α={res.alpha:.3g}"
            if not bool((res.s == 1).all()):
                for n in g.layers:
                    state.col_scale[n] = state.col_scale[n] * res.s
                if isinstance(g.prev, nn.Linear):
                    state.row_scale[g.prev_name] = state.row_scale[g.prev_name] / res.s_prev
            state.searches[g.name] = (res, note)
        self.seconds["scale_search"] += time.perf_counter() - t0
        return state

    @torch.no_grad()
    def round_block(self, state: BlockState) -> BlockResult:
        """Clip search and RTN/GPTQ of each (already scaled) Linear, in place; records the group report."""
        prefix, linears, stats, leader_of = state.prefix, state.linears, state.stats, state.leader_of
        full = (lambda n: f"{prefix}.{n}") if prefix else (lambda n: n)
        col_scale, row_scale = state.col_scale, state.row_scale
        to_quantize = set(state.to_quantize)
        out: dict[str, QuantizedTensor] = {}
        float_weights: dict[str, torch.Tensor] = {}
        final_orig: dict[str, torch.Tensor] = {}  # quantized weights mapped back to original coordinates
        for n, lin in linears.items():
            if n not in to_quantize:
                continue
            st = stats[leader_of[n]]
            c = col_scale[n]
            H_s = st.H / (c[:, None] * c[None, :])  # statistics of the scaled input x / s
            W = lin.weight.detach().float()
            float_weights[full(n)] = W.clone()
            t0 = time.perf_counter()
            if self.clip and not any(n == k or n.endswith("." + k) for k in self.clip_skip):
                cs = awq_search_clip(W, H_s, self.bits, self.group_size, self.symmetric, self.clip_grid,
                                     self.max_shrink, self.clip_independent)
                W = apply_clip(W, cs.ratio, resolve_group_size(self.group_size, W.shape[1])[0])
            self.seconds["clip_search"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            if self.then == "gptq":
                from ..gptq import gptq_quantize_layer

                qt, _ = gptq_quantize_layer(W, H_s, self.bits, self.group_size, self.symmetric, self.damp,
                                            name=full(n))
            else:
                qt = quantize_affine(W, self.bits, self.group_size, self.symmetric)
            self.seconds["quantize"] += time.perf_counter() - t0
            W_hat = qt.dequantize(torch.float32)
            lin.weight.copy_(W_hat.to(lin.weight.dtype))
            final_orig[n] = W_hat / row_scale[n][:, None] / c[None, :]
            out[full(n)] = qt
        self._record(state, final_orig)
        return BlockResult(out, float_weights)

    def _record(self, state: BlockState, final_orig: dict[str, torch.Tensor]) -> None:
        originals, held, leader_of = state.originals, state.held, state.leader_of
        for g in state.groups:
            res, note = state.searches[g.name]
            names = [n for n in g.layers if n in final_orig]
            if not names:
                continue
            H = held[leader_of[names[0]]].H
            W = torch.cat([originals[n] for n in names])
            rtn = fake_quantize(W, self.bits, self.group_size, self.symmetric)
            W_fin = torch.cat([final_orig[n] for n in names])
            if res is not None and not bool((res.s == 1).all()):
                Ws = torch.cat([originals[n] for n in names]) * res.s
                scaled = fake_quantize(Ws, self.bits, self.group_size, self.symmetric) / res.s
            else:
                scaled = rtn
            s = res.s if res is not None else torch.ones(W.shape[1])
            rec = GroupRecord(
                block=state.prefix, group=g.name, layers=names, alpha=res.alpha if res is not None else 0.0,
                fraction_scaled_up=float((s > 1).float().mean()), s_min=float(s.min()), s_max=float(s.max()),
                err_rtn=relative_output_error(W, rtn, H), err_scaled=relative_output_error(W, scaled, H),
                err_awq=relative_output_error(W, W_fin, H), note=note,
                alphas=res.alphas.tolist() if res is not None else [],
                curve=(res.errors / (res.energy or 1.0)).tolist() if res is not None else [],
            )
            self.records.append(rec)

    # --- reports --------------------------------------------------------------------------------------
    def report(self) -> str:
        """One line per scale group: chosen α, fraction of channels scaled up (s > 1), errors vs RTN."""
        lines = [f"{'block':18s} {'group':16s} {'alpha':>5s} {'s>1':>6s} {'s range':>15s} "
                 f"{'err RTN':>9s} {'err scale':>9s} {'err AWQ':>9s}  note"]
        for r in self.records:
            lines.append(f"{r.block:18s} {r.group:16s} {r.alpha:5.2f} {r.fraction_scaled_up:6.1%} "
                         f"{r.s_min:7.3f}–{r.s_max:<7.2f} {r.err_rtn:9.2e} {r.err_scaled:9.2e} {r.err_awq:9.2e}  "
                         f"{r.note}")
        return "\n".join(lines)

    def fraction_better(self) -> float:
        """Fraction of groups whose final AWQ output error is below RTN's."""
        if not self.records:
            return float("nan")
        return sum(r.err_awq < r.err_rtn for r in self.records) / len(self.records)

