"""Statistics of what flows through a model: the hooks that observe it, the accumulators the methods calibrate
from, and the one definition of a relative error.

Hooks (the one hook helper): `record_inputs` / `record_outputs` call fn(name, x) with each named module's input
or output as [tokens, features]; `forward_rows` runs a whole model on each row of token ids under them.

Accumulators — each takes batches of one Linear's inputs x [tokens, K] through `add(x)`:
    HessianAccumulator   H = 2XᵀX/n                   GPTQ's layer Hessian (AWQ reads XᵀX/T = H/2)
    InputStats           mean |x| per channel, XᵀX/T  AWQ's scale statistic and error metric
    SquareMean           Σ_t x_tj² / T                llama-imatrix's importance
    ChannelMagnitude     max_t |x_tj| or mean_t |x_tj| the outliers lesson

Errors: `relative_error(num, den)` is the one rule for a ratio of squared norms, `relative_output_error(W, Ŵ, H)`
the relative output error of a Linear, tr(ΔW·H·ΔWᵀ) / tr(W·H·Wᵀ) = ‖(W − Ŵ)X‖² / ‖WX‖² for H ∝ XᵀX.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .errors import BadArgumentError, NonFiniteError, TextTooShortError

# ----------------------------------------------------------------------------------------------------------
# hooks


@contextmanager
def record_inputs(modules: dict[str, nn.Module], fn: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """While active, call fn(name, x) with each forward input of each module, x flattened to [tokens, features]."""

    def hook_for(name):
        def hook(module, args):
            x = args[0]
            fn(name, x.detach().reshape(-1, x.shape[-1]))

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def record_outputs(modules: dict[str, nn.Module], fn: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """While active, call fn(name, y) with each forward output of each module, flattened to [tokens, features]."""

    def hook_for(name):
        def hook(module, args, y):
            fn(name, y.detach().reshape(-1, y.shape[-1]))

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def modules_by_name(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    """The named modules of model (full names as in model.named_modules()); a clear error for a missing name."""
    mods = dict(model.named_modules())
    names = list(names)
    missing = [n for n in names if n not in mods]
    if missing:
        raise BadArgumentError(f"no module named {missing[0]!r} in the model; e.g. 'model.layers.0.self_attn.q_proj'")
    return {n: mods[n] for n in names}


@torch.no_grad()
def forward_rows(model: nn.Module, ids: torch.Tensor, modules: dict[str, nn.Module],
                 fn: Callable[[str, torch.Tensor], None]) -> int:
    """Run the whole model on each row of ids [n, T] (or one row [T]), one forward per row without a KV cache,
    calling fn(name, x) with every input x [tokens, features] of each named module. Returns the tokens run."""
    ids = ids[None] if ids.dim() == 1 else ids.reshape(-1, ids.shape[-1])
    with record_inputs(modules, fn):
        for row in ids:
            model(row[None], use_cache=False)
    return ids.numel()


# ----------------------------------------------------------------------------------------------------------
# accumulators


def _non_finite(name: str) -> NonFiniteError:
    return NonFiniteError(
        f"NaN/Inf in the calibration activations entering {name}: the model overflowed on the calibration text "
        f"(fp16 activations? load the model in float32) or an earlier layer is broken"
    )


def _no_tokens(name: str) -> TextTooShortError:
    return TextTooShortError(f"{name}: no calibration tokens reached this layer; give calibration text")


def _rows(x: torch.Tensor, K: int, name: str) -> torch.Tensor:
    x = x.detach().reshape(-1, x.shape[-1])
    if x.shape[1] != K:
        raise BadArgumentError(f"{name}: inputs have {x.shape[1]} features, expected {K}")
    return x


class HessianAccumulator:
    """Running H = 2XᵀX/n over batches of inputs x [tokens, K] (the OBS/GPTQ layer Hessian of ‖WX − ŴX‖²)."""

    def __init__(self, K: int, name: str = "layer", dtype: torch.dtype = torch.float32) -> None:
        self.K, self.name = K, name
        self.S = torch.zeros(K, K, dtype=dtype)  # Σ xᵀx, upper block triangle only (see add)
        self.n = 0
        nb = max(1, round(K / 192))  # column blocks of ~192 columns: less work, still large BLAS calls
        self.edges = [K * i // nb for i in range(nb + 1)]

    def add(self, x: torch.Tensor) -> None:
        """S += xᵀx, computing only the blocks on and above the diagonal (XᵀX is symmetric): with nb column
        blocks that is (nb + 1)/(2·nb) of the full product's work."""
        x = _rows(x, self.K, self.name).to(self.S.dtype)
        with torch.autocast(x.device.type, enabled=False):  # a hook may call this inside an autocast forward
            for a, b in zip(self.edges[:-1], self.edges[1:]):
                self.S[a:b, a:].addmm_(x[:, a:b].T, x[:, a:])
        self.n += x.shape[0]

    def check(self) -> None:
        """Raise when no token was added or the sums are not finite."""
        if self.n == 0:
            raise _no_tokens(self.name)
        if not torch.isfinite(self.S).all():
            raise _non_finite(self.name)

    @property
    def H(self) -> torch.Tensor:
        self.check()
        S = self.S.clone()
        for a, b in zip(self.edges[:-1], self.edges[1:]):
            S[b:, a:b] = S[a:b, b:].T  # mirror the upper blocks
            # a diagonal block's two triangles come from different BLAS sums (summation order, SIMD width and
            # kernel differ between CPUs), so they agree only to rounding: keep the upper one and mirror it,
            # which makes H bitwise symmetric by construction on every machine
            D = S[a:b, a:b]
            upper = torch.ones(b - a, b - a, dtype=torch.bool).triu()
            S[a:b, a:b] = torch.where(upper, D, D.T)
        return S * (2.0 / self.n)


class InputStats:
    """Running statistics of one Linear input x [tokens, K]: mean |x| per channel and H = XᵀX / T."""

    def __init__(self, K: int, name: str = "layer") -> None:
        self.K, self.name = K, name
        self.sum_abs = torch.zeros(K, dtype=torch.float64)
        self.gram = HessianAccumulator(K, name)  # GPTQ's running XᵀX (2XᵀX/n on read)

    @property
    def n(self) -> int:
        return self.gram.n

    def add(self, x: torch.Tensor) -> None:
        x = _rows(x, self.K, self.name).float()
        self.sum_abs += x.abs().sum(0, dtype=torch.float64)
        self.gram.add(x)

    def check(self) -> None:
        self.gram.check()
        if not torch.isfinite(self.sum_abs).all():
            raise _non_finite(self.name)

    @property
    def x_mean(self) -> torch.Tensor:
        """s_x[k] = mean over tokens of |x[:, k]| (AWQ §3.2)."""
        self.check()
        return (self.sum_abs / self.n).float()

    @property
    def H(self) -> torch.Tensor:
        self.check()
        return self.gram.H / 2


def activation_magnitudes(x: torch.Tensor | Iterable[torch.Tensor]) -> torch.Tensor:
    """s_x[k] = mean over tokens of |x[:, k]| (AWQ §3.2) — from one tensor [..., K] or an iterable of them."""
    xs = [x] if isinstance(x, torch.Tensor) else list(x)
    total = sum(t.detach().reshape(-1, t.shape[-1]).double().abs().sum(0) for t in xs)
    n = sum(t.reshape(-1, t.shape[-1]).shape[0] for t in xs)
    if n == 0:
        raise TextTooShortError("no activations given: activation magnitudes need at least one token")
    return (total / n).float()


class SquareMean:
    """Running mean of x² per input channel (llama-imatrix: Σ_t x_tj² / T), summed in float64."""

    def __init__(self, K: int, name: str = "layer") -> None:
        self.K, self.name = K, name
        self.sum_sq = torch.zeros(K, dtype=torch.float64)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = _rows(x, self.K, self.name).double()
        self.sum_sq += (x * x).sum(0)
        self.n += x.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        if self.n == 0:
            raise _no_tokens(self.name)
        return self.sum_sq / self.n


class ChannelMagnitude:
    """Running per-channel magnitude of x: "absmax" (max_t |x_tj|) or "meanabs" (mean_t |x_tj|), in float64."""

    STATISTICS = ("absmax", "meanabs")

    def __init__(self, K: int, name: str = "layer", statistic: str = "absmax") -> None:
        if statistic not in self.STATISTICS:
            raise BadArgumentError(f"statistic must be one of {self.STATISTICS}, got {statistic!r}")
        self.K, self.name, self.statistic = K, name, statistic
        self.acc = torch.zeros(K, dtype=torch.float64)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        a = _rows(x, self.K, self.name).abs().to(torch.float64)
        self.acc = torch.maximum(self.acc, a.amax(0)) if self.statistic == "absmax" else self.acc + a.sum(0)
        self.n += a.shape[0]

    @property
    def value(self) -> torch.Tensor:
        if self.n == 0:
            raise _no_tokens(self.name)
        return self.acc if self.statistic == "absmax" else self.acc / self.n


def accumulate(make: Callable[[str, int], object]) -> tuple[dict, Callable[[str, torch.Tensor], None]]:
    """A dict of accumulators by module name and the hook function that fills it: the first input a module
    sees creates its accumulator with make(name, features)."""
    accs: dict = {}

    def fn(name: str, x: torch.Tensor) -> None:
        if name not in accs:
            accs[name] = make(name, x.shape[-1])
        accs[name].add(x)

    return accs, fn


# ----------------------------------------------------------------------------------------------------------
# relative errors


def relative_error(num: float, den: float) -> float:
    """num / den for a squared error over a squared reference norm: 0 when both are 0, inf when only den is."""
    if den > 0:
        return num / den
    return 0.0 if num == 0 else float("inf")


def squared_output_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """tr(ΔW·H·ΔWᵀ) with ΔW = W − Ŵ: ‖ΔW·X‖²/T for H = XᵀX/T (products in float32, or float64 when any input
    is float64; the sum in float64)."""
    dt = torch.promote_types(torch.promote_types(W.dtype, H.dtype), torch.float32)
    D = W.to(dt) - W_hat.to(dt)
    return float(((D @ H.to(dt)) * D).sum(dtype=torch.float64))


def relative_output_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """‖(W − Ŵ)X‖² / ‖WX‖² = tr(ΔW·H·ΔWᵀ) / tr(W·H·Wᵀ) for any H ∝ XᵀX (the scale of H cancels)."""
    return relative_error(squared_output_error(W, W_hat, H), squared_output_error(W, torch.zeros_like(W), H))
