"""AWQ's scale groups and exact folding: Linears that share one input, and the op before them that absorbs 1/s.

AWQ (Lin et al. 2023, §3.2) multiplies the *input* channels of a Linear by s (its weight columns: W·diag(s))
and divides the same channels of its input by s. The division is folded into the op that produces that input,
so the float model computes exactly the same function:

    norm → Linear        y = W·(g ⊙ n(x))  =  (W·diag(s))·((g / s) ⊙ n(x))      fold into the norm's weight g
    Linear₁ → Linear₂    y = W₂·(W₁x + b₁) =  (W₂·diag(s))·((W₁x + b₁) / s)     fold into Linear₁'s output rows

In a llama block: q/k/v share the input norm's output; gate/up share the post-attention norm's output;
down's input is act(gate)·up, linear in up's rows; o's input is the attention output, linear in v's rows.
With grouped-query attention (SmolLM2: 9 query heads, 3 KV heads) v has fewer rows than o has inputs:
o's input channel h·d_head + i carries v's row (h // n_rep)·d_head + i for each of the n_rep query heads of
a KV head, so one s per v row is shared by n_rep o columns (`kv_expand`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import BadArgumentError


@dataclass
class ScaleGroup:
    """Linears sharing one input, and the op whose output is that input (None: nothing to fold into)."""

    name: str  # e.g. "self_attn.qkv"
    prev_name: str | None  # module name inside the block ("input_layernorm", "self_attn.v_proj")
    prev: nn.Module | None
    layers: dict[str, nn.Linear]  # name inside the block → Linear, all reading the same input
    n_rep: int = 1  # o after v under grouped-query attention: each v row feeds n_rep o columns
    head_dim: int = 0
    skip_reason: str | None = None  # set when the group cannot be scaled (shapes do not allow it)


def kv_expand(s_kv: torch.Tensor, n_rep: int, head_dim: int) -> torch.Tensor:
    """One scale per v row [n_kv·d] → one per o column [n_kv·n_rep·d]: column h·d + i takes row (h // n_rep)·d + i."""
    if n_rep == 1:
        return s_kv
    n_kv = s_kv.numel() // head_dim
    return s_kv.reshape(n_kv, 1, head_dim).expand(n_kv, n_rep, head_dim).reshape(-1)


def kv_reduce(x: torch.Tensor, n_rep: int, head_dim: int) -> torch.Tensor:
    """Inverse direction of `kv_expand` for statistics: the mean over the n_rep query heads sharing a v row."""
    if n_rep == 1:
        return x
    return x.reshape(-1, n_rep, head_dim).mean(dim=1).reshape(-1)


def _is_offset_norm(norm: nn.Module) -> bool:
    """Gemma-style RMSNorm computes (1 + g) ⊙ n(x): the fold must act on 1 + g."""
    return type(norm).__name__.startswith("Gemma") and "Norm" in type(norm).__name__


def folded_norm_params(norm: nn.Module, s: torch.Tensor) -> dict[str, torch.Tensor]:
    """The norm's new parameters with its outputs divided by s: g' = g / s (and b' = b / s)."""
    if getattr(norm, "weight", None) is None:
        raise BadArgumentError(f"{type(norm).__name__} has no weight to fold AWQ scales into")
    w = norm.weight.detach().float()
    out = {"weight": ((1 + w) / s - 1) if _is_offset_norm(norm) else w / s}
    if getattr(norm, "bias", None) is not None:
        out["bias"] = norm.bias.detach().float() / s
    return out


def folded_linear_row_params(linear: nn.Linear, s: torch.Tensor) -> dict[str, torch.Tensor]:
    """A Linear's new parameters with its outputs divided by s: rows W[j, :] / s_j (and b_j / s_j)."""
    out = {"weight": linear.weight.detach().float() / s[:, None]}
    if linear.bias is not None:
        out["bias"] = linear.bias.detach().float() / s
    return out


def scaled_column_params(linear: nn.Linear, s: torch.Tensor) -> dict[str, torch.Tensor]:
    """A Linear's weight with its input columns multiplied by s: W·diag(s)."""
    return {"weight": linear.weight.detach().float() * s[None, :]}


def fold_group(group: ScaleGroup, s_prev: torch.Tensor, s: torch.Tensor) -> str | None:
    """Apply scales to a group in place: prev's outputs / s_prev, every layer's columns · s.

    s is per input column of the layers; s_prev per output of prev (equal to s except under GQA, where
    s = kv_expand(s_prev)). Every new tensor is formed and checked in the model's dtype first: if one
    overflows (fp16!), nothing is changed and the reason is returned; None on success.
    """
    if group.prev is None:
        return "nothing precedes the group to fold into"
    new: list[tuple[nn.Module, dict[str, torch.Tensor]]] = []
    if isinstance(group.prev, nn.Linear):
        new.append((group.prev, folded_linear_row_params(group.prev, s_prev)))
    else:
        new.append((group.prev, folded_norm_params(group.prev, s_prev)))
    for lin in group.layers.values():
        new.append((lin, scaled_column_params(lin, s)))
    cast: list[tuple[nn.Module, str, torch.Tensor]] = []
    for module, params in new:
        for pname, value in params.items():
            p = getattr(module, pname)
            v = value.to(p.dtype)
            if not torch.isfinite(v).all():
                where = group.prev_name if module is group.prev else group.name
                return f"folding the scales overflows {p.dtype} in {where}.{pname}"
            cast.append((module, pname, v))
    with torch.no_grad():
        for module, pname, v in cast:
            getattr(module, pname).copy_(v)
    return None


def _get(block: nn.Module, path: str) -> nn.Module | None:
    m = block
    for part in path.split("."):
        m = getattr(m, part, None)
        if m is None:
            return None
    return m


def scale_groups(block: nn.Module) -> list[ScaleGroup]:
    """The AWQ scale groups of a llama-style decoder block (Llama, Mistral, Qwen2, SmolLM...), in search order.

    Raises BadArgumentError for a block whose layout is not llama-style (AWQ needs to know what precedes
    each Linear to fold the scales exactly)."""
    need = ["input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
            "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    missing = [n for n in need if _get(block, n) is None]
    if missing:
        raise BadArgumentError(
            f"AWQ supports llama-style decoder blocks (input_layernorm, self_attn.q/k/v/o_proj, "
            f"post_attention_layernorm, mlp.gate/up/down_proj); {type(block).__name__} lacks {missing}"
        )
    if _get(block, "pre_feedforward_layernorm") is not None:
        raise BadArgumentError(
            f"{type(block).__name__} has a pre-feedforward norm (Gemma-style): its post_attention_layernorm "
            f"does not feed the MLP, so AWQ's llama-style folding would be wrong"
        )
    g = {n: _get(block, n) for n in need}
    groups = [
        ScaleGroup("self_attn.qkv", "input_layernorm", g["input_layernorm"],
                   {f"self_attn.{n}": g[f"self_attn.{n}"] for n in ("q_proj", "k_proj", "v_proj")}),
    ]
    v, o = g["self_attn.v_proj"], g["self_attn.o_proj"]
    vo = ScaleGroup("self_attn.o_proj", "self_attn.v_proj", v, {"self_attn.o_proj": o})
    if o.in_features % v.out_features:
        vo.prev, vo.skip_reason = None, (f"o_proj has {o.in_features} inputs, not a multiple of v_proj's "
                                         f"{v.out_features} outputs")
    elif o.in_features != v.out_features:
        attn = _get(block, "self_attn")
        head_dim = int(getattr(attn, "head_dim", 0) or 0)
        n_rep = o.in_features // v.out_features
        if head_dim <= 0 or v.out_features % head_dim:
            vo.prev, vo.skip_reason = None, "grouped-query attention with an unknown head_dim"
        else:
            vo.n_rep, vo.head_dim = n_rep, head_dim
    groups.append(vo)
    groups.append(ScaleGroup("mlp.gate_up", "post_attention_layernorm", g["post_attention_layernorm"],
                             {n: g[n] for n in ("mlp.gate_proj", "mlp.up_proj")}))
    groups.append(ScaleGroup("mlp.down_proj", "mlp.up_proj", g["mlp.up_proj"], {"mlp.down_proj": g["mlp.down_proj"]}))
    return groups
