"""Activation quantization (W8A8, W4A8): fake-quantize the INPUT of every Linear of the decoder blocks, and the
per-channel weight formats that go with it. The model's weights are never touched by the activation hooks; remove
the handle and the float model is back, bit for bit.

One rule for every format: a scale s maps the range r onto the format's largest level M, and

    int8 (symmetric, 127 levels each side)   s = r / 127     x̂ = s · clamp(round(x / s), −127, 127)
    minifloat (FP8 e4m3 / e5m2, FP6, FP4)     s = r / M       x̂ = s · round_to(clamp(x / s, −M, M), fmt)

(round: half to even; round_to: qlab.minifloat, nearest value, ties to the even code; clamping first is the
saturating cast every FP8 kernel uses, so e5m2 never makes an inf). An all-zero range gets s = 1 (x̂ = 0).
Scales and products are float32.

Schemes (where r comes from):
    "token"   per-token DYNAMIC: each token row's own absmax max_j |x_tj|, computed at run time;
    "tensor"  per-tensor STATIC: one r per Linear, calibrated on calibration text (`calibrate_ranges`):
              "max"         max |x| over every calibration element,
              "percentile"  the p-th percentile of |x| over every element (torch.quantile's linear rule,
                            streamed exactly: only the largest values are kept),
              "mse"         the candidate r_k = max·k/n (k = 1 … n) minimising Σ (x − Q_r(x))² over the first
                            `mse_tokens` calibration tokens (a second pass, once the max is known).

Only the Linears inside the decoder blocks are quantized (q/k/v/o, gate/up/down): lm_head and the embeddings stay
float, as for qlab's weight quantizers. Linears sharing one input tensor (q/k/v, gate/up) quantize it once.

KV cache (`quantize_kv_cache`): what a llama cache stores is k AFTER the rotary embedding and v; both reach the
attention function of transformers' AttentionInterface, where a registered wrapper quantizes them (per KV head:
a static range per head, or per token and head at run time) and calls the model's own attention.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .affine import check_finite, fake_quantize
from .errors import BadArgumentError, NonFiniteError, TextTooShortError
from .minifloat import FORMATS as MINIFLOATS
from .minifloat import get_format, round_to
from .stats import record_inputs
from .walk import block_prefix, decoder_blocks, layers_to_quantize

INT8_MAX = 127
SCHEMES = {"tensor": "per-tensor static", "token": "per-token dynamic"}
CALIBRATIONS = ("max", "percentile", "mse")
MAX_KEPT = 1 << 20  # largest |x| values a percentile may keep per Linear (4 MiB)


def formats() -> tuple[str, ...]:
    """The activation / weight formats: int8 and the signed minifloats of qlab.minifloat (e4m3, e5m2, …)."""
    return ("int8",) + tuple(n for n, f in MINIFLOATS.items() if f.signed)


def check_format(fmt: str) -> str:
    if fmt == "int8":
        return fmt
    if isinstance(fmt, str):
        try:
            f = get_format(fmt)
        except BadArgumentError:
            f = None
        if f is not None and f.signed:
            return f.name
    raise BadArgumentError(f"unknown activation format {fmt!r}; known: {', '.join(formats())}")


def level_max(fmt: str) -> float:
    """The largest level M the range is mapped onto: 127 for int8, the format's largest finite value otherwise."""
    return float(INT8_MAX) if fmt == "int8" else get_format(fmt).max_finite


def _fmt_label(fmt: str) -> str:
    return "INT8" if fmt == "int8" else (f"FP8 {fmt}" if get_format(fmt).bits == 8 else f"FP{get_format(fmt).bits} "
                                                                                          f"{fmt}")


# ----------------------------------------------------------------------------------------------------------
# the quantizer on plain tensors


def scale_from_range(r: torch.Tensor | float, fmt: str) -> torch.Tensor:
    """s = r / M in float32 (M: `level_max`), 1 where r is 0."""
    r = torch.as_tensor(r, dtype=torch.float32)
    s = r / level_max(fmt)
    return torch.where(s > 0, s, torch.ones_like(s))


def quantize_scaled(x: torch.Tensor, s: torch.Tensor, fmt: str) -> torch.Tensor:
    """x̂ = s·Q(x/s) (module docstring) for float32 x and a float32 scale s broadcastable against it."""
    if fmt == "int8":
        return torch.round(x / s).clamp_(-INT8_MAX, INT8_MAX).mul_(s)
    m = level_max(fmt)
    return round_to((x / s).clamp_(-m, m), fmt).to(x.device).mul_(s)


def fake_quantize_activation(x: torch.Tensor, fmt: str = "int8", scheme: str = "token",
                             r: float | None = None) -> torch.Tensor:
    """x quantized and dequantized, in x's dtype and shape: per token row of the last axis ("token", its absmax)
    or with the per-tensor range r ("tensor")."""
    fmt = check_format(fmt)
    xf = x.detach().float()
    if scheme == "token":
        rr = xf.abs().amax(dim=-1, keepdim=True) if xf.numel() else torch.zeros(())
    elif scheme == "tensor":
        if r is None:
            raise BadArgumentError("the per-tensor static scheme needs a range r (from calibrate_ranges)")
        rr = torch.tensor(float(r), dtype=torch.float32)
    else:
        raise BadArgumentError(f"unknown scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    return quantize_scaled(xf, scale_from_range(rr, fmt), fmt).to(x.dtype)


# ----------------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class ActQuantConfig:
    """How the inputs of the Linears are quantized (module docstring): `fmt` int8 / e4m3 / e5m2 (or another signed
    minifloat), `scheme` "tensor" (static, needs calibrated ranges) or "token" (dynamic); for static ranges the
    `calibration` rule "max", "percentile" (at `percentile` %, in (0, 100]) or "mse" (`mse_grid` candidates,
    judged on the first `mse_tokens` calibration tokens; None: all). `skip`: Linear names (or name endings)
    left unquantized."""

    fmt: str = "int8"
    scheme: str = "token"
    calibration: str = "max"
    percentile: float = 99.99
    mse_grid: int = 100
    mse_tokens: int | None = 2048
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "fmt", check_format(self.fmt))
        if self.scheme not in SCHEMES:
            raise BadArgumentError(f"unknown scheme {self.scheme!r}; known: 'tensor' (per-tensor static, calibrated "
                                   f"ranges) and 'token' (per-token dynamic)")
        if self.calibration not in CALIBRATIONS:
            raise BadArgumentError(f"unknown calibration {self.calibration!r}; known: {', '.join(CALIBRATIONS)}")
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 100:
            raise BadArgumentError(f"percentile must lie in (0, 100] (e.g. 99.99), got {p!r}")
        if not isinstance(self.mse_grid, int) or self.mse_grid < 1:
            raise BadArgumentError(f"mse_grid must be a positive integer (candidates), got {self.mse_grid!r}")
        if self.mse_tokens is not None and (not isinstance(self.mse_tokens, int) or self.mse_tokens < 1):
            raise BadArgumentError(f"mse_tokens must be a positive integer or None (all), got {self.mse_tokens!r}")
        object.__setattr__(self, "skip", tuple(self.skip))

    @property
    def static(self) -> bool:
        return self.scheme == "tensor"

    def describe(self) -> str:
        label = f"{_fmt_label(self.fmt)} {SCHEMES[self.scheme]}"
        if self.static:
            label += f" ({self.calibration}" + (f" {self.percentile:g} %" if self.calibration == "percentile" else
                                                 f", {self.mse_grid} candidates" if self.calibration == "mse" else
                                                 "") + ")"
        return label


def target_linears(model: nn.Module, skip=()) -> dict[str, nn.Linear]:
    """The Linears whose inputs are quantized: every Linear of every decoder block, by full name, minus `skip`."""
    prefix = block_prefix(model)
    out: dict[str, nn.Linear] = {}
    for i, block in enumerate(decoder_blocks(model)):
        out.update(layers_to_quantize(block, f"{prefix}.{i}", skip))
    return out


# ----------------------------------------------------------------------------------------------------------
# calibration of static ranges


def mse_candidates(amax: float, n: int) -> list[float]:
    """The MSE search's ranges r_k = amax·k/n, k = 1 … n (Python floats)."""
    return [amax * k / n for k in range(1, n + 1)]


def squared_errors(x: torch.Tensor, candidates: list[float], fmt: str) -> torch.Tensor:
    """Σ (x − Q_r(x))² for each candidate range r (float64 [n]): the quantizer the hooks apply, per tensor."""
    xf = x.detach().float().reshape(-1)
    out = torch.empty(len(candidates), dtype=torch.float64)
    for i, r in enumerate(candidates):
        d = quantize_scaled(xf, scale_from_range(r, fmt), fmt).sub_(xf)
        out[i] = (d * d).sum(dtype=torch.float64)
    return out


def percentile_of_top(top: torch.Tensor, n: int, p: float) -> float:
    """The p-th percentile of n values by torch.quantile's linear rule, from their `top` largest (any order):
    rank = p/100·(n − 1) in float64, the values at floor(rank) and ceil(rank) of the ascending order, lerp."""
    rank = torch.tensor(p / 100, dtype=torch.float64) * (n - 1)
    lo, hi = int(rank.floor()), int(rank.ceil())
    need = n - lo
    if top.numel() < need:
        raise BadArgumentError(f"percentile needs the {need} largest values, {top.numel()} were kept")
    desc = torch.sort(top.double(), descending=True).values
    below, above = desc[n - 1 - lo], desc[n - 1 - hi]
    return float(torch.lerp(below, above, rank - lo))


class RangeObserver:
    """Running statistics of one Linear's input for its static range: absmax, the largest |x| (percentile),
    squared errors over the MSE candidates (second pass, once `start_mse(amax)` fixed them)."""

    def __init__(self, name: str, K: int, config: ActQuantConfig, n_elements: int) -> None:
        self.name, self.K, self.config, self.n_total = name, K, config, n_elements
        self.amax, self.n = 0.0, 0
        self.keep = 0
        if config.calibration == "percentile":
            rank = math.floor(float(torch.tensor(config.percentile / 100, dtype=torch.float64) * (n_elements - 1)))
            self.keep = n_elements - rank
            if self.keep > MAX_KEPT:
                raise BadArgumentError(
                    f"{name}: the {config.percentile:g}th percentile of {n_elements:,} values needs the largest "
                    f"{self.keep:,} kept (at most {MAX_KEPT:,}): use a percentile closer to 100 or fewer tokens")
        self.top = torch.empty(0)
        self.candidates: list[float] = []
        self.errors: torch.Tensor | None = None
        self.mse_seen = 0

    def observe(self, x: torch.Tensor) -> tuple:
        """What one batch adds (computed once for Linears sharing the batch)."""
        a = x.detach().float().abs().reshape(-1)
        top = None
        if self.keep:
            top = a if a.numel() <= self.keep else torch.topk(a, self.keep, sorted=False).values
        return float(a.max()) if a.numel() else 0.0, a.numel(), top

    def merge(self, stats: tuple) -> None:
        amax, n, top = stats
        self.amax, self.n = max(self.amax, amax), self.n + n
        if top is not None:
            both = torch.cat([self.top, top])
            self.top = both if both.numel() <= self.keep else torch.topk(both, self.keep, sorted=False).values

    def start_mse(self) -> None:
        self.candidates = mse_candidates(self.amax, self.config.mse_grid)
        self.errors = torch.zeros(len(self.candidates), dtype=torch.float64)

    @property
    def range(self) -> float:
        if self.n == 0:
            raise TextTooShortError(f"{self.name}: no calibration tokens reached this Linear; give calibration text")
        c = self.config.calibration
        if c == "max":
            return self.amax
        if c == "percentile":
            if self.n != self.n_total:
                raise BadArgumentError(f"{self.name}: saw {self.n} values, expected {self.n_total}")
            return percentile_of_top(self.top, self.n, self.config.percentile)
        if self.errors is None or self.mse_seen == 0:
            raise BadArgumentError(f"{self.name}: the MSE pass saw no tokens")
        return self.candidates[int(self.errors.argmin())]


class _SameInput:
    """Recognises the Linears that read one tensor (q/k/v, gate/up) so its statistics are computed once. It holds
    the last tensor, so no other tensor can be allocated at the same address while it is compared."""

    def __init__(self) -> None:
        self.x: torch.Tensor | None = None
        self.tag = self.value = None
        self.version = -1

    def get(self, x: torch.Tensor, tag):
        p = self.x
        if p is not None and self.tag == tag and p.data_ptr() == x.data_ptr() and p.shape == x.shape \
                and p.stride() == x.stride() and self.version == x._version:
            return self.value
        return None

    def put(self, x: torch.Tensor, tag, value) -> None:
        self.x, self.tag, self.value, self.version = x, tag, value, x._version


def _check_ids(ids: torch.Tensor) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.dim() not in (1, 2) or ids.numel() == 0:
        raise BadArgumentError("calibration ids must be a non-empty tensor [n_samples, seqlen] (or one row [T])")
    return ids[None] if ids.dim() == 1 else ids


def _finite_or_raise(name: str, x: torch.Tensor, when: str) -> None:
    if not torch.isfinite(x).all():
        n = int((~torch.isfinite(x)).sum())
        raise NonFiniteError(f"{n} NaN/Inf values in the activations entering {name} ({when}): the model overflowed "
                             f"(fp16 activations? load it in float32) or an earlier layer is broken; quantizing them "
                             f"would only spread NaNs")


@torch.no_grad()
def _run_rows(model: nn.Module, rows: torch.Tensor, modules: dict[str, nn.Module],
              fn: Callable[[str, torch.Tensor], None], desc: str, progress: bool) -> None:
    with record_inputs(modules, fn):
        for row in tqdm(rows, desc=desc, disable=not progress):
            model(row[None], use_cache=False)


def calibrate_ranges_many(model: nn.Module, ids: torch.Tensor, configs: list[ActQuantConfig],
                          progress: bool = True) -> list[dict[str, float]]:
    """Static ranges for several configurations from shared forward passes (one pass, plus one over the first
    `mse_tokens` tokens when any configuration calibrates by MSE): a list of {Linear name: range}."""
    ids = _check_ids(ids)
    configs = list(configs)
    if not configs:
        return []
    for c in configs:
        if not isinstance(c, ActQuantConfig):
            raise BadArgumentError(f"expected ActQuantConfig, got {type(c).__name__}")
    linears = target_linears(model, configs[0].skip)
    for c in configs[1:]:
        if set(target_linears(model, c.skip)) != set(linears):
            raise BadArgumentError("configurations calibrated together must skip the same Linears")
    tokens = ids.numel()
    observers: list[dict[str, RangeObserver]] = [{} for _ in configs]
    same = _SameInput()

    def fn(name: str, x: torch.Tensor) -> None:
        _finite_or_raise(name, x, "calibration")
        K = x.shape[-1]
        for obs, c in zip(observers, configs):
            if name not in obs:
                obs[name] = RangeObserver(name, K, c, tokens * K)
        stats = same.get(x, "observe")  # q/k/v (gate/up) read one tensor: observe it once
        if stats is None:
            stats = [obs[name].observe(x) for obs in observers]
            same.put(x, "observe", stats)
        for obs, st in zip(observers, stats):
            obs[name].merge(st)

    was_training = model.training
    model.eval()
    try:
        _run_rows(model, ids, linears, fn, "calibrating ranges", progress)
        mse_idx = [i for i, c in enumerate(configs) if c.calibration == "mse"]
        if mse_idx:
            for i in mse_idx:
                for o in observers[i].values():
                    o.start_mse()
            seqlen = ids.shape[-1]
            most = max((configs[i].mse_tokens or tokens) for i in mse_idx)
            rows = ids[: max(1, math.ceil(min(most, tokens) / seqlen))]
            seen: dict[str, int] = {}

            def fn_mse(name: str, x: torch.Tensor) -> None:
                done = seen.get(name, 0)
                for i in mse_idx:
                    limit = configs[i].mse_tokens or tokens
                    xs = x[: max(0, limit - done)]
                    if xs.shape[0] == 0:
                        continue
                    o = observers[i][name]
                    tag = ("mse", i, xs.shape[0], tuple(o.candidates))
                    err = same.get(x, tag)
                    if err is None:
                        err = squared_errors(xs, o.candidates, configs[i].fmt)
                        same.put(x, tag, err)
                    o.errors += err
                    o.mse_seen += xs.shape[0]
                seen[name] = done + x.shape[0]

            _run_rows(model, rows, linears, fn_mse, "MSE ranges", progress)
    finally:
        model.train(was_training)
    out = []
    for obs in observers:
        missing = [n for n in linears if n not in obs]
        if missing:
            raise TextTooShortError(f"{missing[0]}: no calibration tokens reached this Linear")
        out.append({n: obs[n].range for n in linears})
    return out


def calibrate_ranges(model: nn.Module, ids: torch.Tensor, config: ActQuantConfig,
                     progress: bool = True) -> dict[str, float]:
    """{Linear name: static range} by the configuration's rule (max, percentile, mse) on calibration ids [n, T]."""
    return calibrate_ranges_many(model, ids, [config], progress)[0]


# ----------------------------------------------------------------------------------------------------------
# the hooks


@dataclass
class ActQuantHandle:
    """Active activation quantization: `.remove()` (or leaving the `with` block) takes every hook off."""

    config: ActQuantConfig
    ranges: dict[str, float] | None
    names: list[str]
    _hooks: list = field(default_factory=list, repr=False)

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    @property
    def active(self) -> bool:
        return bool(self._hooks)

    def describe(self) -> str:
        return self.config.describe()

    def __enter__(self) -> ActQuantHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _check_ranges(ranges, names: list[str]) -> dict[str, float]:
    if ranges is None:
        raise BadArgumentError("the per-tensor static scheme needs ranges: ranges = calibrate_ranges(model, ids, "
                               "config), then quantize_activations(model, config, ranges) (or use scheme='token')")
    missing = [n for n in names if n not in ranges]
    if missing:
        raise BadArgumentError(f"no range for {missing[0]} ({len(missing)} Linears missing): calibrate the ranges "
                               f"on this model with the same skip list")
    bad = [n for n in names if not (math.isfinite(float(ranges[n])) and float(ranges[n]) >= 0)]
    if bad:
        raise BadArgumentError(f"the range of {bad[0]} is {ranges[bad[0]]!r}: ranges must be finite and ≥ 0")
    return {n: float(ranges[n]) for n in names}


def quantize_activations(model: nn.Module, config: ActQuantConfig,
                         ranges: dict[str, float] | None = None) -> ActQuantHandle:
    """Fake-quantize the input of every decoder-block Linear (forward pre-hooks; weights untouched). Returns a
    handle: `.remove()` or use it as a context manager. A NaN/Inf input raises NonFiniteError naming the Linear."""
    if not isinstance(config, ActQuantConfig):
        raise BadArgumentError(f"config must be an ActQuantConfig, got {type(config).__name__}")
    linears = target_linears(model, config.skip)
    names = list(linears)
    if config.static:
        ranges = _check_ranges(ranges, names)
        scales = {n: scale_from_range(ranges[n], config.fmt) for n in names}
    handle = ActQuantHandle(config, ranges, names)
    same = _SameInput()

    def hook_for(name: str):
        def hook(module, args):
            x = args[0]
            s = scales[name] if config.static else None
            tag = None if s is None else float(s)
            y = same.get(x, tag)  # q/k/v, gate/up: one input tensor, one range → quantized once
            if y is None:
                _finite_or_raise(name, x, "quantizing its input")
                xf = x.detach().float()
                s_t = scale_from_range(xf.abs().amax(dim=-1, keepdim=True), config.fmt) if s is None else s
                y = quantize_scaled(xf, s_t, config.fmt).to(x.dtype)
                same.put(x, tag, y)
            return (y, *args[1:])

        return hook

    handle._hooks = [m.register_forward_pre_hook(hook_for(n)) for n, m in linears.items()]
    return handle


# ----------------------------------------------------------------------------------------------------------
# weights


@torch.no_grad()
def quantize_weight_per_channel(W: torch.Tensor, fmt: str) -> torch.Tensor:
    """One scale per output row: int8 is qlab.affine's symmetric per-channel RTN (s = max|w|/127); a minifloat
    maps each row's absmax onto the format's largest value (s = max|w|/M, ŵ = s·round_to(w/s)). W's dtype."""
    fmt = check_format(fmt)
    check_finite(W)
    Wf = W.detach().float()
    if fmt == "int8":
        return fake_quantize(Wf, 8, "channel", symmetric=True).to(W.dtype)
    s = scale_from_range(Wf.abs().amax(dim=-1, keepdim=True), fmt)
    return quantize_scaled(Wf, s, fmt).to(W.dtype)


@torch.no_grad()
def quantize_weights_per_channel(model: nn.Module, fmt: str, skip=()) -> list[str]:
    """Round every decoder-block Linear's weight in place to per-output-channel `fmt` (int8 or a minifloat);
    returns the names rounded."""
    fmt = check_format(fmt)
    names = []
    for name, lin in target_linears(model, skip).items():
        check_finite(lin.weight, f"weight of {name}")
        lin.weight.copy_(quantize_weight_per_channel(lin.weight, fmt))
        names.append(name)
    return names


# ----------------------------------------------------------------------------------------------------------
# KV cache


KV_ATTENTION = "qlab_kv_quant"
_KV_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # attention module → its _KVState


@dataclass
class _KVState:
    name: str
    base: Callable
    fmt: str
    scheme: str  # "head" (static per KV head) | "token" (dynamic per token and head) | "observe"
    k_range: torch.Tensor | None = None  # [n_kv]
    v_range: torch.Tensor | None = None
    seen: int = 0


def quantize_kv(x: torch.Tensor, fmt: str, scheme: str, r: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize keys or values [B, n_kv, T, d]: per KV head with the static ranges r [n_kv] ("head"), or per token
    and head with each [d] vector's absmax ("token")."""
    xf = x.detach().float()
    if scheme == "token":
        rr = xf.abs().amax(dim=-1, keepdim=True)
    elif scheme == "head":
        rr = torch.as_tensor(r, dtype=torch.float32).reshape(1, -1, 1, 1)
    else:
        raise BadArgumentError(f"unknown KV scheme {scheme!r}; known: 'head' (static per KV head), 'token'")
    return quantize_scaled(xf, scale_from_range(rr, fmt), fmt).to(x.dtype)


def _kv_attention(module, query, key, value, *args, **kwargs):
    st = _KV_STATES.get(module)
    if st is None:
        raise BadArgumentError("qlab's KV-quantizing attention ran on a module it was not installed on: call "
                               "quantize_kv_cache(model, ...) (its handle restores the model's own attention)")
    for what, t in (("keys", key), ("values", value)):
        _finite_or_raise(f"{st.name} ({what})", t, "quantizing the KV cache")
    if st.scheme == "observe":
        km = key.detach().float().abs().amax(dim=(0, 2, 3))
        vm = value.detach().float().abs().amax(dim=(0, 2, 3))
        st.k_range = km if st.k_range is None else torch.maximum(st.k_range, km)
        st.v_range = vm if st.v_range is None else torch.maximum(st.v_range, vm)
        st.seen += key.shape[2]
    else:
        key = quantize_kv(key, st.fmt, st.scheme, st.k_range)
        value = quantize_kv(value, st.fmt, st.scheme, st.v_range)
    return st.base(module, query, key, value, *args, **kwargs)


def _attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    out = {}
    prefix = block_prefix(model)
    for i, block in enumerate(decoder_blocks(model)):
        attn = getattr(block, "self_attn", None)
        if attn is None or not hasattr(attn, "k_proj") or not hasattr(attn, "v_proj"):
            raise BadArgumentError(f"block {prefix}.{i} has no llama-style self_attn with k_proj / v_proj")
        out[f"{prefix}.{i}.self_attn"] = attn
    return out


@dataclass
class KVQuantHandle:
    """Active KV-cache quantization; `.remove()` (or leaving `with`) restores the model's own attention."""

    fmt: str
    scheme: str
    ranges: dict[str, tuple[torch.Tensor, torch.Tensor]] | None
    _restore: Callable | None = field(default=None, repr=False)

    def remove(self) -> None:
        if self._restore is not None:
            self._restore()
            self._restore = None

    def describe(self) -> str:
        return f"KV cache {_fmt_label(self.fmt)} " + ("per-head static" if self.scheme == "head" else
                                                     "per-token-and-head dynamic")

    def __enter__(self) -> KVQuantHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _install_kv(model: nn.Module, states: dict[str, _KVState]) -> Callable:
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
    except ImportError as e:  # pragma: no cover - transformers is a dependency
        raise BadArgumentError("KV-cache quantization needs transformers' AttentionInterface (transformers ≥ 4.48)") \
            from e
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if impl is None or impl == KV_ATTENTION:
        raise BadArgumentError(f"the model's attention implementation is {impl!r}: KV-cache quantization wraps a "
                               f"named one (sdpa, eager) and cannot be stacked")
    from transformers.models.llama.modeling_llama import eager_attention_forward

    base = eager_attention_forward if impl == "eager" else ALL_ATTENTION_FUNCTIONS[impl]
    AttentionInterface.register(KV_ATTENTION, _kv_attention)
    mods = _attention_modules(model)
    for name, st in states.items():
        st.base = base
        _KV_STATES[mods[name]] = st
    config._attn_implementation = KV_ATTENTION

    def restore() -> None:
        config._attn_implementation = impl
        for name in states:
            _KV_STATES.pop(mods[name], None)

    return restore


@torch.no_grad()
def calibrate_kv_ranges(model: nn.Module, ids: torch.Tensor,
                        progress: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-KV-head ranges {attention name: (max |k| per head [n_kv] after the rotary embedding, max |v| per head)}
    over calibration ids [n, T]."""
    ids = _check_ids(ids)
    states = {n: _KVState(n, None, "int8", "observe") for n in _attention_modules(model)}
    restore = _install_kv(model, states)
    try:
        _run_rows(model, ids, {}, lambda n, x: None, "calibrating KV ranges", progress)
    finally:
        restore()
    return {n: (st.k_range, st.v_range) for n, st in states.items()}


def quantize_kv_cache(model: nn.Module, fmt: str = "e4m3", scheme: str = "head",
                      ranges: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> KVQuantHandle:
    """Quantize what the KV cache stores (k after RoPE, v) inside attention, per KV head: scheme "head" with static
    ranges from `calibrate_kv_ranges`, or "token" (per token and head, dynamic)."""
    fmt = check_format(fmt)
    if scheme not in ("head", "token"):
        raise BadArgumentError(f"unknown KV scheme {scheme!r}; known: 'head' (static per KV head, calibrated "
                               f"ranges) and 'token' (dynamic per token and head)")
    mods = _attention_modules(model)
    if scheme == "head":
        if ranges is None:
            raise BadArgumentError("the static per-head KV scheme needs ranges: ranges = calibrate_kv_ranges(model, "
                                   "ids), then quantize_kv_cache(model, fmt, 'head', ranges)")
        missing = [n for n in mods if n not in ranges]
        if missing:
            raise BadArgumentError(f"no KV range for {missing[0]}: calibrate on this model")
    states = {n: _KVState(n, None, fmt, scheme, *(ranges[n] if scheme == "head" else (None, None))) for n in mods}
    return KVQuantHandle(fmt, scheme, ranges, _install_kv(model, states))
