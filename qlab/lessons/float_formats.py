"""Instruments of notebook 09 (float formats): a minifloat's bit fields, its number line, per-tensor activation
rounding split by channel, one MX block under both scale roundings, and equal-size groups of saved results.

Everything here reads the formats of `qlab.minifloat` / `qlab.blockfloat` (their tables and rules); nothing here
re-implements a format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .. import blockfloat as bf
from .. import minifloat as mf
from ..activations import fake_quantize_activation
from ..errors import BadArgumentError

NAMED = ("e4m3", "e5m2", "e3m2", "e2m3", "e2m1", "e8m0")


def pow2(v: float) -> str:
    """'2^k' for a power of two, else the value (%g)."""
    m, e = torch.frexp(torch.tensor(float(v), dtype=torch.float64))
    return f"2^{int(e) - 1}" if float(m) == 0.5 else f"{v:g}"


# ----------------------------------------------------------------------------------------------------------
# one value's bit fields


@dataclass(frozen=True)
class Fields:
    """A real number x rounded to a minifloat: its code, the three fields, the value and the rounding error."""

    fmt: str
    x: float
    code: int
    sign: str  # "" for an unsigned format
    exponent: str
    mantissa: str
    value: float
    kind: str  # "zero", "subnormal", "normal", "max (saturated)", "inf", "NaN"

    @property
    def error(self) -> float:
        return self.value - self.x

    @property
    def rel_error(self) -> float:
        return abs(self.error) / abs(self.x) if self.x else 0.0

    def formula(self) -> str:
        f = mf.get_format(self.fmt)
        e, m = int(self.exponent, 2), int(self.mantissa, 2) if self.mantissa else 0
        s = "−" if self.sign == "1" else ""
        if self.kind in ("NaN", "inf"):
            return self.kind
        if e == 0 and f.subnormals:
            return f"{s}2^{1 - f.bias} · {m}/{1 << f.man_bits} = {self.value:g}"
        return f"{s}2^({e} − {f.bias}) · (1 + {m}/{1 << f.man_bits}) = {self.value:g}"

    def lines(self) -> str:
        sep = " | "
        bits = sep.join(p for p in (self.sign, self.exponent, self.mantissa) if p)
        names = sep.join(p for p, b in (("S", self.sign), ("E" * len(self.exponent), self.exponent),
                                          ("M" * len(self.mantissa), self.mantissa)) if b)
        return (f"{self.fmt}: x = {self.x:g} → code 0x{self.code:02x} = {bits}   ({names})\n"
                f"  {self.kind}: {self.formula()}\n"
                f"  rounding error {self.error:+.4g} (relative {100 * self.rel_error:.3g} %)")


def fields(x: float, fmt: str) -> Fields:
    """x rounded to fmt (qlab.minifloat's rule), split into sign / exponent / mantissa bit strings."""
    f = mf.get_format(fmt)
    code = int(mf.encode(torch.tensor([float(x)], dtype=torch.float64), f)[0])
    value = float(mf.values(f)[code])
    m_bits, e_bits = f.man_bits, f.exp_bits
    sign = str((code >> (e_bits + m_bits)) & 1) if f.signed else ""
    exp = format((code >> m_bits) & ((1 << e_bits) - 1), f"0{e_bits}b")
    man = format(code & ((1 << m_bits) - 1), f"0{m_bits}b") if m_bits else ""
    if value != value:
        kind = "NaN"
    elif abs(value) == float("inf"):
        kind = "inf"
    elif value == 0:
        kind = "zero"
    elif abs(value) == f.max_finite and abs(x) > f.max_finite:
        kind = "max (saturated)"
    elif int(exp, 2) == 0 and f.subnormals:
        kind = "subnormal"
    else:
        kind = "normal"
    return Fields(f.name, float(x), code, sign, exp, man, value, kind)


def format_rows(names: Sequence[str] = NAMED) -> list[dict]:
    """Per named format: bits, layout, bias, max finite, smallest positive (subnormal where it has them), the
    number of finite codes, and binades spanned (log2 max/min) — closed forms, exact on every machine."""
    rows = []
    for n in names:
        f = mf.get_format(n)
        rows.append({"name": f.name, "bits": f.bits, "layout": f"{'S' if f.signed else ''}E{f.exp_bits}M{f.man_bits}",
                     "bias": f.bias, "max": f.max_finite, "min": f.min_positive, "n_finite": f.n_finite,
                     "binades": float(torch.log2(torch.tensor(f.max_finite / f.min_positive, dtype=torch.float64))),
                     "inf": f.has_inf, "nan": f.nan, "subnormals": f.subnormals})
    return rows


def plot_number_line(ax, fmt: str, x: float | None = None) -> None:
    """Every positive finite value of fmt as a tick on a log axis (subnormals in another colour); x and the value
    it rounds to marked."""
    f = mf.get_format(fmt)
    v = mf.values(f)
    pos = v[torch.isfinite(v) & (v > 0)].unique()
    min_normal = 2.0 ** (1 - f.bias) if f.subnormals else 0.0
    sub = pos[pos < min_normal]
    nor = pos[pos >= min_normal]
    ax.vlines(nor.numpy(), 0, 1, color="tab:blue", lw=0.8, label=f"normal ({nor.numel()})")
    if sub.numel():
        ax.vlines(sub.numpy(), 0, 1, color="tab:orange", lw=0.8, label=f"subnormal ({sub.numel()})")
    if x is not None and x != 0:
        r = fields(x, f)
        ax.plot([abs(x)], [1.15], "v", color="tab:red", ms=9, label=f"|x| = {abs(x):g}")
        if r.value == r.value and abs(r.value) not in (0.0, float("inf")):
            ax.plot([abs(r.value)], [-0.15], "^", color="tab:green", ms=9, label=f"rounds to {abs(r.value):g}")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.4, 1.4)
    ax.set_yticks([])
    ax.set(xlabel="value (log₂ axis; the negative half mirrors it)",
           title=f"{f.name} ({f.bits} bits): {pos.numel()} positive finite values, {pow2(float(pos[0]))} … "
                 f"{float(pos[-1]):g}")
    ax.legend(fontsize=7, loc="upper left", ncol=4)


# ----------------------------------------------------------------------------------------------------------
# activations: per-tensor rounding split by channel


def outlier_channels(x: torch.Tensor, factor: float = 20.0) -> torch.Tensor:
    """Boolean mask of the input channels whose absmax exceeds factor × the median channel's absmax."""
    cm = x.abs().reshape(-1, x.shape[-1]).amax(0)
    return cm > factor * cm.median()


def channel_errors(x: torch.Tensor, outliers: torch.Tensor, fmt: str, scheme: str = "tensor") -> dict:
    """Relative error ‖x̂ − x‖ / ‖x‖ of x [tokens, K] quantized to fmt (qlab.activations' rule) with one scale for
    the whole tensor (its absmax: "tensor") or one per token ("token"), over the outlier channels and over the
    rest, and the fraction of the rest that rounds to 0."""
    x = x.reshape(-1, x.shape[-1]).float()
    r = float(x.abs().max()) if scheme == "tensor" else None
    xq = fake_quantize_activation(x, fmt, scheme, r=r)
    e = xq - x

    def rel(m):
        return float(e[:, m].norm() / x[:, m].norm()) if bool(m.any()) else float("nan")

    rest = ~outliers
    return {"fmt": fmt, "scheme": scheme, "outliers": rel(outliers), "rest": rel(rest),
            "all": float(e.norm() / x.norm()),
            "rest_zero": float(((xq[:, rest] == 0) & (x[:, rest] != 0)).float().mean())}


# ----------------------------------------------------------------------------------------------------------
# one MX block


@dataclass(frozen=True)
class MXBlock:
    fmt: str
    rounding: str
    absmax: float
    shared_exp: int
    scaled: torch.Tensor  # V / 2^e, float64 [B]
    elements: torch.Tensor  # round_to(scaled), float64 [B]
    saturated: torch.Tensor  # bool [B]: |scaled| beyond the element's max
    dequantized: torch.Tensor  # elements · 2^e

    def rel_error(self, v: torch.Tensor) -> float:
        v = v.double()
        return float((self.dequantized - v).norm() / v.norm())


def mx_block(v: torch.Tensor, fmt: str = "mxfp4", rounding: str = "floor") -> MXBlock:
    """One block of an MX format, step by step, from qlab.blockfloat (its shared exponent and its quantize_mx)."""
    bfmt = bf.get_block_format(fmt)
    if bfmt.family != "mx" or bfmt.element == "int8":
        raise BadArgumentError(f"mx_block shows MX minifloat formats; got {bfmt.name}")
    v = v.reshape(1, -1).double()
    if v.shape[1] != bfmt.block_size:
        raise BadArgumentError(f"one block of {bfmt.block_size} values, got {v.shape[1]}")
    a = v.abs().amax(-1)
    e = int(bf.mx_shared_exponent(a, bfmt, rounding)[0])
    q = bf.quantize_mx(v, bfmt, rounding)
    scaled = v[0] / 2.0 ** e
    elem = q.element_values()[0].double()
    top = mf.get_format(bfmt.element).max_finite
    return MXBlock(bfmt.name, rounding, float(a[0]), e, scaled, elem, scaled.abs() > top,
                   q.dequantize(torch.float64).reshape(-1))


# ----------------------------------------------------------------------------------------------------------
# saved results: who wins at equal size


def equal_size_groups(rows: Sequence[Mapping], tol: float = 0.1, key: str = "kl") -> list[dict]:
    """Rows sorted by bits per weight, chained into groups whose sizes lie within `tol` bits of the group's
    smallest; for each group of ≥ 2 rows the one with the lowest `key` (KL) wins."""
    srt = sorted(rows, key=lambda r: r["bits_per_weight"])
    groups: list[list[Mapping]] = []
    for r in srt:
        if groups and r["bits_per_weight"] - groups[-1][0]["bits_per_weight"] <= tol:
            groups[-1].append(r)
        else:
            groups.append([r])
    out = []
    for g in groups:
        if len(g) < 2:
            continue
        best = min(g, key=lambda r: r[key])
        out.append({"rows": [r["setting"] for r in g], "bits": (g[0]["bits_per_weight"], g[-1]["bits_per_weight"]),
                    "winner": best["setting"], key: best[key],
                    "runner_up": min((r for r in g if r is not best), key=lambda r: r[key])["setting"]})
    return out
