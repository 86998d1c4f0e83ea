"""AWQ's module-level search objective: the error at the output of the sub-module that consumes the scaled Linears.

The Gram-matrix error of `qlab.awq.search` measures a scale candidate on the Linears' own outputs. AutoAWQ
("module2inspect") measures it where it matters more: at the output of the whole self-attention for q/k/v and
of the whole MLP for gate/up, so the softmax and the SiLU(gate)·up product weigh the errors:

    L(s) = ‖ f(X; Q(W·diag(s))·diag(s)⁻¹) − f(X; W) ‖² / T        f = self_attn or mlp, the rest of f in float

It needs the sub-module's real inputs (whole sequences: attention mixes tokens), so it runs on a subset of the
calibration samples. Groups fed by a Linear of the same sub-module (v→o, up→down) need no probe: that Linear's
output *is* the sub-module's output, and the Gram-matrix error is already the exact objective.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

from ..errors import BadArgumentError


def probe_module_name(layer_names: Sequence[str], prev_is_linear: bool) -> str | None:
    """The sub-module (e.g. "self_attn", "mlp") whose output judges a scale group, or None for the Linear's own output.

    A group fed by a norm is the entry of its parent module; a group fed by a Linear of that module (v→o, up→down)
    is its exit, where the two objectives coincide."""
    if prev_is_linear:
        return None
    parents = {n.rsplit(".", 1)[0] if "." in n else "" for n in layer_names}
    if len(parents) != 1 or "" in parents:
        return None
    return parents.pop()


@torch.no_grad()
def capture_calls(block: nn.Module, hidden: Sequence[torch.Tensor], kwargs: dict, modules: dict[str, nn.Module]
                  ) -> dict[str, list[tuple[tuple, dict]]]:
    """Run the block on each hidden state [1, T, H] and keep the (args, kwargs) each named sub-module receives."""
    calls: dict[str, list[tuple[tuple, dict]]] = {n: [] for n in modules}

    def hook_for(name):
        def hook(module, args, kw):
            calls[name].append((tuple(a.detach() if torch.is_tensor(a) else a for a in args),
                                {k: (v.detach() if torch.is_tensor(v) else v) for k, v in kw.items()}))

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n), with_kwargs=True) for n, m in modules.items()]
    try:
        for h in hidden:
            block(h, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return calls


class ModuleProbe:
    """f(X; W) of a sub-module on recorded calls, with some of its Linears' weights swapped (torch.func.functional_call:
    the module is never modified). `error(W_hat)` takes the swapped weights stacked by rows, in `weights` order."""

    def __init__(self, module: nn.Module, calls: list[tuple[tuple, dict]], weights: Sequence[str],
                 name: str = "module") -> None:
        if not calls:
            raise BadArgumentError(f"{name}: no recorded calls to probe the module with")
        self.module, self.calls, self.weights, self.name = module, calls, list(weights), name
        params = [module.get_parameter(w) for w in self.weights]
        self.rows = [p.shape[0] for p in params]
        self.dtype = params[0].dtype
        with torch.no_grad():
            self.y_ref = [self._forward({}, a, k).float() for a, k in calls]
        self.tokens = sum(y.numel() // y.shape[-1] for y in self.y_ref)
        self.energy = float(sum((y.double() ** 2).sum() for y in self.y_ref)) / self.tokens

    def _forward(self, params: dict[str, torch.Tensor], args: tuple, kwargs: dict) -> torch.Tensor:
        y = functional_call(self.module, params, args, kwargs, strict=False)
        return y[0] if isinstance(y, tuple) else y

    @torch.no_grad()
    def error(self, W_hat: torch.Tensor) -> float:
        """‖f(X; Ŵ) − f(X; W)‖² / T, summed over the module's outputs, averaged over the probe's tokens."""
        if W_hat.shape[0] != sum(self.rows):
            raise BadArgumentError(f"{self.name}: W_hat has {W_hat.shape[0]} rows, the probed Linears {sum(self.rows)}")
        params = dict(zip(self.weights, torch.split(W_hat.to(self.dtype), self.rows)))
        total = 0.0
        for (a, k), y_ref in zip(self.calls, self.y_ref):
            y = self._forward(params, a, k).float()
            total += float(((y - y_ref) ** 2).sum(dtype=torch.float64))
        return total / self.tokens
