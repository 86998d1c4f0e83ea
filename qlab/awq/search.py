"""AWQ's two searches on plain tensors: the scale exponent α (§3.2) and the per-group clipping range.

Every error is computed from H = XᵀX/T of the calibration inputs X [T, K]: ‖ΔW·X‖²/T = tr(ΔW·H·ΔWᵀ), exact
over all tokens at a cost independent of T. The clip search needs only H's diagonal blocks, one per weight group.
`qlab.awq` collects H and drives these searches block by block.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..affine import check_bits, check_finite, fake_quantize, resolve_group_size
from ..errors import BadArgumentError, NonFiniteError, QlabWarning
from ..stats import squared_output_error
from .fold import kv_expand, kv_reduce


class AWQWarning(QlabWarning):
    """A scale or clip candidate was rejected (overflow, no activations) and AWQ fell back to a safe choice."""


# ----------------------------------------------------------------------------------------------------------
# errors


def output_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """Squared output error per token, summed over outputs: ‖(W − Ŵ)X‖²/T = tr(ΔW·H·ΔWᵀ) with H = XᵀX/T."""
    return squared_output_error(W, W_hat, H)


def output_energy(W: torch.Tensor, H: torch.Tensor) -> float:
    """‖WX‖²/T = tr(W·H·Wᵀ): the denominator of relative output errors."""
    return squared_output_error(W, torch.zeros_like(W), H)


# ----------------------------------------------------------------------------------------------------------
# scale search (§3.2)


def alpha_values(alpha_grid: int | Sequence[float]) -> torch.Tensor:
    """The α candidates: an int n gives n evenly spaced points from 0 to 1 (both included); or explicit values."""
    if isinstance(alpha_grid, int):
        if alpha_grid < 1:
            raise BadArgumentError(f"alpha_grid must be ≥ 1 points (or a list of α values), got {alpha_grid}")
        return torch.linspace(0, 1, alpha_grid) if alpha_grid > 1 else torch.zeros(1)
    a = torch.tensor([float(v) for v in alpha_grid], dtype=torch.float32)
    if a.numel() == 0 or not torch.isfinite(a).all() or (a < 0).any():
        raise BadArgumentError(f"alpha_grid values must be finite and ≥ 0, got {list(alpha_grid)}")
    return a


def awq_scales(x_mean: torch.Tensor, alpha: float, eps: float = 1e-4, w_mean: torch.Tensor | None = None
               ) -> torch.Tensor:
    """s = s_x^α normalised by √(max·min); channels below eps·max(s_x) (dead inputs) count as eps·max.

    With w_mean (AutoAWQ's "duo scaling"): s = s_x^α / s_w^(1−α), s_w the mean |w| of each input channel relative
    to its group's max — then α = 0 is not RTN."""
    xm = x_mean.float()
    peak = float(xm.max()) if xm.numel() else 0.0
    if peak <= 0 or (alpha == 0 and w_mean is None):
        return torch.ones_like(xm)
    s = xm.clamp(min=eps * peak).pow(alpha)
    if w_mean is not None:
        wm = w_mean.float()
        s = s / wm.clamp(min=eps * float(wm.max())).pow(1 - alpha)
    return s / torch.sqrt(s.max() * s.min())


def weight_magnitudes(W: torch.Tensor, group_size: int | str | None) -> torch.Tensor:
    """s_w[k] = mean over rows of |w[n, k]| / max |w| of its group (AutoAWQ's duo-scaling weight statistic)."""
    N, K = W.shape
    gs, _ = resolve_group_size(group_size, K)
    Wg = W.detach().float().abs().reshape(N, K // gs, gs)
    return (Wg / Wg.amax(-1, keepdim=True).clamp(min=1e-12)).reshape(N, K).mean(0)


@dataclass
class ScaleSearch:
    """Result of `awq_search_scales`: the chosen scales and the whole error curve."""

    s: torch.Tensor  # per input column of the group's Linears
    s_prev: torch.Tensor  # per output of the op folded into (= s, or one per v row under GQA)
    alpha: float
    alphas: torch.Tensor
    errors: torch.Tensor  # output error per α (NaN: candidate rejected)
    err_rtn: float  # s = 1
    energy: float  # ‖WX‖²/T, for relative errors
    rejected: list[str] = field(default_factory=list)
    candidates: torch.Tensor | None = None  # s_prev of every α [A, K_prev]

    @property
    def fraction_scaled_up(self) -> float:
        return float((self.s > 1).float().mean())


def awq_search_scales(
    W: torch.Tensor,
    x_mean: torch.Tensor,
    H: torch.Tensor,
    bits: int = 4,
    group_size: int | str | None = 128,
    symmetric: bool = False,
    alpha_grid: int | Sequence[float] = 20,
    n_rep: int = 1,
    head_dim: int = 0,
    name: str = "group",
    dtype: torch.dtype | None = None,
    duo_scaling: bool = False,
    loss: Callable[[torch.Tensor], float] | None = None,
    energy: float | None = None,
) -> ScaleSearch:
    """Grid search of α for the Linears stacked in W [N, K] (rows of every Linear reading the same input).

    x_mean [K] is mean |x|, H [K, K] = XᵀX/T. With n_rep > 1 (o after v under grouped-query attention) one scale
    is searched per v row (x_mean averaged over the n_rep heads sharing it) and repeated over those heads.
    dtype: the model's storage dtype; W·diag(s) is rounded to it, and a candidate that overflows it (fp16!)
    is rejected with a warning naming the group. Raises NonFiniteError when the statistics themselves are not
    finite; all-zero statistics give s = 1 (nothing to protect).
    loss: the error of a candidate Ŵ = Q(W·diag(s))·diag(s)⁻¹ [N, K] (default: the Gram-matrix output error
    tr(ΔW·H·ΔWᵀ); `qlab.awq.probe.ModuleProbe.error` measures it at the consuming module's output instead),
    with `energy` its error for Ŵ = 0 (default ‖WX‖²/T)."""
    check_bits(bits)
    dtype = dtype or W.dtype
    if not (torch.isfinite(x_mean).all() and torch.isfinite(H).all()):
        raise NonFiniteError(f"{name}: NaN/Inf in the activation statistics; the calibration pass overflowed "
                             f"(fp16 activations? use float32)")
    Wf = W.detach().float()
    check_finite(Wf, f"weight of {name}")
    alphas = alpha_values(alpha_grid)
    x_red = kv_reduce(x_mean.float(), n_rep, head_dim)
    w_red = kv_reduce(weight_magnitudes(Wf, group_size), n_rep, head_dim) if duo_scaling else None
    if loss is None:
        def loss(W_hat: torch.Tensor) -> float:
            return output_error(Wf, W_hat, H)
    err_rtn = loss(fake_quantize(Wf, bits, group_size, symmetric))
    energy = output_energy(Wf, H) if energy is None else energy
    ones_prev = torch.ones_like(x_red)
    if float(x_mean.abs().max()) == 0 or float(H.abs().max()) == 0:
        warnings.warn(f"AWQ {name}: all-zero activation statistics, no scaling (s = 1)", AWQWarning, stacklevel=2)
        return ScaleSearch(torch.ones_like(x_mean.float()), ones_prev, 0.0, alphas,
                           torch.full((len(alphas),), err_rtn), err_rtn, energy,
                           ["all-zero activation statistics"])
    errors = torch.full((len(alphas),), float("nan"), dtype=torch.float64)
    candidates = torch.ones(len(alphas), len(x_red))
    rejected: list[str] = []
    for i, a in enumerate(alphas.tolist()):
        s_prev = awq_scales(x_red, a, w_mean=w_red)
        s = kv_expand(s_prev, n_rep, head_dim)
        candidates[i] = s_prev
        Ws = (Wf * s).to(dtype)
        if not torch.isfinite(Ws).all():
            rejected.append(f"α={a:.3g}: W·s overflows {dtype}")
            continue
        W_hat = fake_quantize(Ws.float(), bits, group_size, symmetric) / s
        err = loss(W_hat)
        if err != err or err == float("inf"):
            rejected.append(f"α={a:.3g}: non-finite output error")
            continue
        errors[i] = err
    if rejected:
        warnings.warn(f"AWQ {name}: rejected {len(rejected)} of {len(alphas)} α candidates ({rejected[0]}...)",
                      AWQWarning, stacklevel=2)
    if torch.isnan(errors).all():
        warnings.warn(f"AWQ {name}: every α was rejected; falling back to s = 1 (plain RTN)", AWQWarning,
                      stacklevel=2)
        return ScaleSearch(torch.ones_like(x_mean.float()), ones_prev, 0.0, alphas, errors, err_rtn, energy,
                           rejected + ["fallback to s = 1"])
    best = int(torch.nan_to_num(errors, nan=float("inf")).argmin())
    alpha = float(alphas[best])
    s_prev = candidates[best]
    return ScaleSearch(kv_expand(s_prev, n_rep, head_dim), s_prev, alpha, alphas, errors, err_rtn, energy, rejected,
                       candidates)


# ----------------------------------------------------------------------------------------------------------
# clip search (§3.2, "we further apply clipping")


def shrink_values(clip_grid: int = 20, max_shrink: float = 0.5) -> torch.Tensor:
    """Range factors tried: 1, 1 − 1/n, …, down to (but excluding) 1 − max_shrink."""
    if clip_grid < 1 or not 0 <= max_shrink < 1:
        raise BadArgumentError(f"need clip_grid ≥ 1 and 0 ≤ max_shrink < 1, got {clip_grid}, {max_shrink}")
    n = max(1, int(round(max_shrink * clip_grid)))
    return 1 - torch.arange(n, dtype=torch.float32) / clip_grid


def apply_clip(W: torch.Tensor, ratio: torch.Tensor, group_size: int | str | None) -> torch.Tensor:
    """Clamp each group of W [N, K] to [r·min, r·max] of its own range, r = ratio[n, g]; a ratio [N, G, 2] gives
    the two ends their own factors: [r_lo·min, r_hi·max]."""
    N, K = W.shape
    gs, _ = resolve_group_size(group_size, K)
    Wg = W.float().reshape(N, K // gs, gs)
    r = ratio.float().reshape(N, K // gs, -1)
    r_lo, r_hi = r[..., :1], r[..., -1:]
    lo, hi = Wg.amin(-1, keepdim=True) * r_lo, Wg.amax(-1, keepdim=True) * r_hi
    return torch.maximum(torch.minimum(Wg, hi), lo).reshape(N, K)


@dataclass
class ClipSearch:
    ratio: torch.Tensor  # [N, G] chosen range factor of each (row, group); [N, G, 2] (lower, upper) if independent
    shrinks: torch.Tensor  # factors tried
    curve: torch.Tensor  # block-diagonal output error if every group used the same factor, per factor
    err_before: float  # block-diagonal error at factor 1
    err_after: float  # block-diagonal error with the chosen factors


def awq_search_clip(
    W: torch.Tensor,
    H: torch.Tensor,
    bits: int = 4,
    group_size: int | str | None = 128,
    symmetric: bool = False,
    clip_grid: int = 20,
    max_shrink: float = 0.5,
    independent: bool = False,
) -> ClipSearch:
    """For each row n and weight group g pick r minimising e_ngᵀ·H_gg·e_ng, e_ng = w_ng − Q(clamp(w_ng, r·min, r·max)).

    That is each group's own share of the output error ‖ΔW·X‖²/T (H_gg: the group's diagonal block of H); W and
    H in the same (scaled) coordinates. independent: search the lower and upper factors separately (all pairs
    of the grid; an asymmetric grid's range need not shrink evenly at both ends)."""
    N, K = W.shape
    gs, _ = resolve_group_size(group_size, K)
    G = K // gs
    Wf = W.detach().float()
    idx = torch.arange(G)
    Hb = H.float().reshape(G, gs, G, gs)[idx, :, idx, :]  # [G, gs, gs] diagonal blocks
    shrinks = shrink_values(clip_grid, max_shrink)
    pairs = ([(lo, hi) for lo in shrinks.tolist() for hi in shrinks.tolist()] if independent
             else [(r, r) for r in shrinks.tolist()])  # pairs[0] = (1, 1): no clipping
    errs = torch.empty(len(pairs), N, G, dtype=torch.float64)
    for i, pair in enumerate(pairs):
        ratio = torch.tensor(pair).expand(N, G, 2)
        E = (Wf - fake_quantize(apply_clip(Wf, ratio, gs), bits, gs, symmetric)).reshape(N, G, gs)
        EH = torch.bmm(E.transpose(0, 1), Hb)  # [G, N, gs]
        errs[i] = (EH * E.transpose(0, 1)).sum(-1).T.double()
    best = errs.argmin(0)  # [N, G]
    chosen = torch.tensor(pairs)[best]  # [N, G, 2]
    ratio = chosen if independent else chosen[..., 0]
    curve = errs[[pairs.index((r, r)) for r in shrinks.tolist()]].sum((1, 2))  # one shared factor everywhere
    err_after = float(errs.gather(0, best[None]).sum())
    return ClipSearch(ratio, shrinks, curve, float(curve[0]), err_after)
