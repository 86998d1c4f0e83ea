"""Small floating-point formats ExMy (FP8, FP6, FP4, E8M0) built from their parameters.

A minifloat code is a bit pattern  S | E…E | M…M  (sign, `exp_bits` exponent bits, `man_bits` mantissa bits):

    normal     (E ≠ 0)         value = (−1)^S · 2^(E − bias) · (1 + M / 2^m)
    subnormal  (E = 0)         value = (−1)^S · 2^(1 − bias) · (M / 2^m)       (when the format has subnormals)
    no subnormals (E8M0)       E = 0 is one more normal exponent: 2^(0 − bias) · (1 + M / 2^m)

What the top exponent field holds is where formats differ (`nan`):
    "ieee"      E all ones: M = 0 is ±inf, M ≠ 0 is NaN (E5M2, like float16)            → max 1.75·2^15 = 57344
    "all_ones"  only the pattern with E and M all ones is NaN; E all ones is otherwise a
                normal binade (E4M3 "fn" = finite: no inf; E8M0: code 255)              → max 1.75·2^8 = 448
    "none"      every pattern is a number (OCP FP6 E3M2 / E2M3, FP4 E2M1)              → max 28, 7.5, 6

    e4m3 (torch.float8_e4m3fn), 8 bits:  0 1111 110 = +448 (max)   0 1111 111 = NaN   0 0000 001 = 2^-9 (min)

Every format has a table of 2^bits values (`values`), and converting a real number is a table look-up with one
rule (`encode`): take the nearest value; on a tie take the even code (the one whose last bit is 0 — IEEE's
round-half-to-even, which for m ≥ 1 is the even mantissa). Past the largest finite value the format's own overflow
rule applies: `saturate` clamps to ±max; otherwise the value becomes ±inf (if the format has inf) or NaN. The
boundary is where rounding would reach the next binade: max + ½·ulp(max), the tie going to the even code.

Special inputs, per format:
    NaN   → NaN where the format has one (e4m3, e5m2, e8m0); e3m2/e2m3/e2m1 have no NaN: NonFiniteError.
    ±inf  → e5m2: ±inf.  e4m3: ±448 (saturating, as torch 2.13's float8_e4m3fn cast does; OCP OFP8's
            saturation mode).  e3m2/e2m3/e2m1: ±max (they saturate; so does ml_dtypes).  e8m0: NaN.
    e8m0 is unsigned (a scale format: only powers of two, 2^-127 … 2^127, no zero): a negative input raises
    BadArgumentError; 0 and anything below 2^-127 round to 2^-127 (the nearest value; torch does the same);
    from 1.5·2^127 up, NaN (no inf, not saturating — torch's rule too).

How the reference casts differ (the tests state and check each):
    torch 2.13's float8_e8m0fnu and ml_dtypes round ties of E8M0 (x = 1.5·2^e) up; this module rounds them to the
    even code like every other tie (a precision-1 format's "even" is its code's last bit). Both also round float32
    subnormals above 2^-127 up to 2^-126, not to the nearest; ml_dtypes sends 0 to NaN.
    ml_dtypes' float8_e4m3fn does not saturate: overflow and ±inf → NaN, which is
    `dataclasses.replace(E4M3, saturate=False)` here (the tie 464 stays 448: 448 = 1.110·2^8 is the even one).

The arithmetic runs in float64, exact for every input dtype up to float32 (and float64 itself): the values and the
midpoints between neighbours all fit in float64, so every comparison is exact.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .errors import BadArgumentError, NonFiniteError

NAN_RULES = ("ieee", "all_ones", "none")


@dataclass(frozen=True)
class MiniFloat:
    """A small float format: `exp_bits` exponent bits, `man_bits` mantissa bits, a sign bit if `signed`.

    bias: value = 2^(E − bias)·1.M.   has_inf: E all ones with M = 0 is ±inf (needs nan="ieee").
    nan: "ieee" (E all ones, M ≠ 0), "all_ones" (only S.1…1.1…1) or "none".   subnormals: E = 0 means 0.M·2^(1−bias).
    saturate: overflow (and ±inf input when there is no inf) goes to ±max instead of ±inf / NaN.
    """

    name: str
    exp_bits: int
    man_bits: int
    bias: int
    signed: bool = True
    has_inf: bool = False
    nan: str = "none"
    subnormals: bool = True
    saturate: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.exp_bits, int) or not isinstance(self.man_bits, int) or self.exp_bits < 1 \
                or self.man_bits < 0:
            raise BadArgumentError(f"{self.name}: exp_bits must be ≥ 1 and man_bits ≥ 0 (integers), got "
                                   f"exp_bits={self.exp_bits!r}, man_bits={self.man_bits!r}")
        if self.bits > 16:
            raise BadArgumentError(f"{self.name}: {self.bits} bits is more than the 16 this module tabulates; "
                                   f"use fewer exponent or mantissa bits")
        if self.nan not in NAN_RULES:
            raise BadArgumentError(f"{self.name}: nan must be one of {NAN_RULES}, got {self.nan!r}")
        if self.has_inf and self.nan != "ieee":
            raise BadArgumentError(f"{self.name}: inf lives in the all-ones exponent with M = 0, which only the "
                                   f"'ieee' NaN rule leaves free; set nan='ieee' or has_inf=False")
        if not self.saturate and not self.has_inf and self.nan == "none":
            raise BadArgumentError(f"{self.name}: without inf or NaN an overflow has nowhere to go but ±max; "
                                   f"set saturate=True")
        if self.nan == "ieee" and self.exp_bits == 1 and not self.subnormals:
            raise BadArgumentError(f"{self.name}: one exponent bit with the 'ieee' NaN rule leaves no finite "
                                   f"normal values; add exponent bits")

    @property
    def bits(self) -> int:
        """Width of one code (sign + exponent + mantissa)."""
        return int(self.signed) + self.exp_bits + self.man_bits

    @property
    def max_finite(self) -> float:
        return float(_magnitudes(self)[0][-1])

    @property
    def min_positive(self) -> float:
        """Smallest value above 0 (the smallest subnormal when there are subnormals)."""
        mags = _magnitudes(self)[0]
        return float(mags[mags > 0][0])

    @property
    def emax(self) -> int:
        """Exponent of the largest finite value, floor(log2(max)): the OCP MX spec's emax_elem."""
        return int(torch.frexp(torch.tensor(self.max_finite, dtype=torch.float64))[1]) - 1

    @property
    def n_finite(self) -> int:
        """Number of codes whose value is finite (+0 and −0 count as two)."""
        v = values(self)
        return int(torch.isfinite(v).sum())

    def __str__(self) -> str:
        extra = ("inf, " if self.has_inf else "") + f"NaN: {self.nan}, " + ("saturating" if self.saturate else
                                                                          "overflow → inf/NaN")
        return (f"{self.name}: {'S' if self.signed else ''}E{self.exp_bits}M{self.man_bits} bias {self.bias}, "
                f"max {self.max_finite:g}, {extra}")


# ----------------------------------------------------------------------------------------------------------
# The named formats (OCP OFP8 v1.0, OCP MX v1.0 element and scale types)

E4M3 = MiniFloat("e4m3", 4, 3, bias=7, nan="all_ones", saturate=True)  # torch.float8_e4m3fn, max 448
E5M2 = MiniFloat("e5m2", 5, 2, bias=15, has_inf=True, nan="ieee", saturate=False)  # torch.float8_e5m2, max 57344
E3M2 = MiniFloat("e3m2", 3, 2, bias=3)  # OCP FP6, max 28
E2M3 = MiniFloat("e2m3", 2, 3, bias=1)  # OCP FP6, max 7.5
E2M1 = MiniFloat("e2m1", 2, 1, bias=1)  # OCP FP4, max 6: ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}
E8M0 = MiniFloat("e8m0", 8, 0, bias=127, signed=False, nan="all_ones", subnormals=False, saturate=False)  # MX scale

FORMATS: dict[str, MiniFloat] = {f.name: f for f in (E4M3, E5M2, E3M2, E2M3, E2M1, E8M0)}

# the names torch and ml_dtypes give the same formats
ALIASES = {"float8_e4m3fn": "e4m3", "e4m3fn": "e4m3", "float8_e5m2": "e5m2", "float6_e3m2fn": "e3m2",
           "float6_e2m3fn": "e2m3", "float4_e2m1fn": "e2m1", "fp4": "e2m1", "float8_e8m0fnu": "e8m0"}


def get_format(fmt: str | MiniFloat) -> MiniFloat:
    """A `MiniFloat` by name ("e4m3", "e5m2", "e3m2", "e2m3", "e2m1", "e8m0", or torch's name), or `fmt` itself."""
    if isinstance(fmt, MiniFloat):
        return fmt
    if isinstance(fmt, str):
        key = ALIASES.get(fmt.lower(), fmt.lower())
        if key in FORMATS:
            return FORMATS[key]
    raise BadArgumentError(f"unknown minifloat format {fmt!r}; known: {', '.join(FORMATS)} "
                           f"(or build one: MiniFloat(name, exp_bits, man_bits, bias, ...))")


# ----------------------------------------------------------------------------------------------------------
# The value table


def _value_of(fmt: MiniFloat, code: int) -> float:
    """The value of one bit pattern, read field by field."""
    m_mask = (1 << fmt.man_bits) - 1
    e_all = (1 << fmt.exp_bits) - 1
    s = (code >> (fmt.exp_bits + fmt.man_bits)) & 1 if fmt.signed else 0
    e = (code >> fmt.man_bits) & e_all
    m = code & m_mask
    sign = -1.0 if s else 1.0
    if e == e_all:
        if fmt.nan == "ieee":
            return sign * float("inf") if (m == 0 and fmt.has_inf) else float("nan")
        if fmt.nan == "all_ones" and m == m_mask:
            return float("nan")
    frac = m / (1 << fmt.man_bits)
    if e == 0 and fmt.subnormals:
        return sign * 2.0 ** (1 - fmt.bias) * frac
    return sign * 2.0 ** (e - fmt.bias) * (1.0 + frac)


@functools.lru_cache(maxsize=None)
def _table(fmt: MiniFloat) -> torch.Tensor:
    return torch.tensor([_value_of(fmt, c) for c in range(1 << fmt.bits)], dtype=torch.float64)


def values(fmt: str | MiniFloat) -> torch.Tensor:
    """Every value of the format, indexed by bit code: float64 [2^bits], NaN where the code is NaN, ±inf for inf."""
    return _table(get_format(fmt)).clone()


@functools.lru_cache(maxsize=None)
def _magnitudes(fmt: MiniFloat) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The non-negative finite values in increasing order, their codes (sign bit 0), and the value one step above
    the largest (what the next code would hold if the exponent range went on): the overflow boundary lies halfway.

    With the sign bit clear, a larger code is a larger value, so the finite values are a prefix of the codes."""
    table = _table(fmt)
    half = 1 << (fmt.bits - int(fmt.signed))  # codes with the sign bit clear
    pos = table[:half]
    n = int(torch.isfinite(pos).long().cumprod(0).sum())  # the finite prefix
    mags, codes = pos[:n], torch.arange(n, dtype=torch.int64)
    top = float(mags[-1])
    e_top = int(torch.frexp(torch.tensor(top, dtype=torch.float64))[1]) - 1
    return mags, codes, top + 2.0 ** (e_top - fmt.man_bits)


def _special_codes(fmt: MiniFloat) -> tuple[int | None, int | None]:
    """(code of +NaN, code of +inf) — None where the format has none."""
    e_all = (1 << fmt.exp_bits) - 1
    if fmt.nan == "none":
        nan = None
    else:  # both rules: E and M all ones is NaN
        nan = (e_all << fmt.man_bits) | ((1 << fmt.man_bits) - 1)
    inf = (e_all << fmt.man_bits) if fmt.has_inf else None
    return nan, inf


# ----------------------------------------------------------------------------------------------------------
# Conversion


def encode(x: torch.Tensor, fmt: str | MiniFloat) -> torch.Tensor:
    """Bit codes of x in the format: round to nearest, ties to the even code, subnormals, the format's overflow
    rule (module docstring). Returns uint8 for formats of ≤ 8 bits (int32 above), x's shape."""
    fmt = get_format(fmt)
    x = torch.as_tensor(x)
    x64 = x.detach().to("cpu", torch.float64)  # the tables live on the CPU; the codes go back to x's device
    nan_in = torch.isnan(x64)
    if fmt.nan == "none" and bool(nan_in.any()):
        raise NonFiniteError(f"{int(nan_in.sum())} NaN inputs: {fmt.name} has no NaN code; remove or replace "
                             f"the NaNs (e.g. torch.nan_to_num) before rounding to {fmt.name}")
    if not fmt.signed and bool((x64 < 0).any()):
        raise BadArgumentError(f"{int((x64 < 0).sum())} negative inputs: {fmt.name} is unsigned (a scale format); "
                               f"pass |x| or use a signed format")
    mags, codes, next_up = _magnitudes(fmt)
    n = mags.numel()
    mags_ext = torch.cat([mags, torch.tensor([next_up], dtype=torch.float64)])  # index n: "overflow"
    codes_ext = torch.cat([codes, torch.tensor([n], dtype=torch.int64)])

    a = torch.where(nan_in, 0.0, x64.abs()).reshape(-1)  # NaNs are placed below
    hi = torch.searchsorted(mags_ext, a).clamp(max=n)  # first value ≥ a (n when a is past next_up too)
    lo = (hi - 1).clamp(min=0)
    mid = (mags_ext[lo] + mags_ext[hi]) / 2  # exact in float64
    even_hi = codes_ext[hi] % 2 == 0
    take_hi = (a > mid) | ((a == mid) & even_hi)
    mag_code = torch.where(take_hi, codes_ext[hi], codes_ext[lo])  # index n = overflow, inf inputs land there

    nan_code, inf_code = _special_codes(fmt)
    over = mag_code == n
    if fmt.saturate:
        mag_code = torch.where(over, n - 1, mag_code)
    else:
        mag_code = torch.where(over, inf_code if fmt.has_inf else nan_code, mag_code)
    if nan_code is not None:
        mag_code = torch.where(nan_in.reshape(-1), nan_code, mag_code)
    if fmt.signed:
        sign_bit = 1 << (fmt.exp_bits + fmt.man_bits)
        mag_code = mag_code | torch.signbit(x64).reshape(-1).long() * sign_bit
    out_dtype = torch.uint8 if fmt.bits <= 8 else torch.int32
    return mag_code.to(out_dtype).reshape(x64.shape).to(x.device)


def decode(codes: torch.Tensor, fmt: str | MiniFloat) -> torch.Tensor:
    """Values of bit codes, float32, codes' shape (every minifloat value of ≤ 8 exponent bits fits float32)."""
    fmt = get_format(fmt)
    codes = torch.as_tensor(codes)
    c = codes.to("cpu", torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 1 << fmt.bits):
        raise BadArgumentError(f"codes must lie in [0, {(1 << fmt.bits) - 1}] for the {fmt.bits}-bit {fmt.name}, "
                               f"got [{int(c.min())}, {int(c.max())}]")
    return _table(fmt)[c].to(torch.float32).to(codes.device)


def round_to(x: torch.Tensor, fmt: str | MiniFloat) -> torch.Tensor:
    """x rounded to the format (nearest, ties to even, the format's overflow rule), as float32 in x's shape."""
    return decode(encode(x, fmt), fmt)
