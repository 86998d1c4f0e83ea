"""qlab.minifloat against independent oracles: torch's float8 casts and ml_dtypes, exhaustively over every float16
and bfloat16 bit pattern; the value tables against closed forms from the format parameters; float16/bfloat16
themselves rebuilt as MiniFloats against torch's casts; the overflow and special-value rules against the format
definitions (OCP OFP8 v1.0 and OCP MX v1.0)."""

import dataclasses

import ml_dtypes
import numpy as np
import pytest
import torch

from qlab import minifloat as mf
from qlab.errors import BadArgumentError, NonFiniteError

N_PATTERNS = 1 << 16


def all_patterns(dtype: torch.dtype) -> torch.Tensor:
    """Every bit pattern of a 16-bit float dtype, as float32 values (exact), pattern order."""
    return torch.arange(N_PATTERNS, dtype=torch.int32).to(torch.int16).view(dtype).to(torch.float32)


SOURCES = {"float16": all_patterns(torch.float16), "bfloat16": all_patterns(torch.bfloat16)}


def same(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise: identical float32 bits (so +0 ≠ −0), or both NaN."""
    a, b = a.to(torch.float32).contiguous(), b.to(torch.float32).contiguous()
    return (a.view(torch.int32) == b.view(torch.int32)) | (a.isnan() & b.isnan())


def ml(x: torch.Tensor, dtype) -> torch.Tensor:
    """ml_dtypes' cast of float32 x, back to float32."""
    return torch.from_numpy(x.numpy().astype(dtype).astype(np.float32))


def torch_e4m3_saturates() -> bool:
    return float(torch.tensor([1e4]).to(torch.float8_e4m3fn).float()) == 448.0


# ----------------------------------------------------------------------------------------------------------
# Exhaustive: torch's float8 casts


@pytest.mark.parametrize("source", SOURCES)
def test_e4m3_matches_torch_on_every_16bit_pattern(source):
    x = SOURCES[source]
    mine, ref = mf.round_to(x, "e4m3"), x.to(torch.float8_e4m3fn).float()
    # Below the overflow boundary (|x| < 464 = 448 + ½·32) torch 2.x rounds to nearest-even like any version.
    in_range = ~(x.abs() >= 464)  # NaN stays in: both give NaN
    assert int(in_range.sum()) + int((x.abs() >= 464).sum()) == N_PATTERNS
    bad = ~same(mine[in_range], ref[in_range])
    assert int(bad.sum()) == 0, f"{int(bad.sum())} mismatches, e.g. x = {x[in_range][bad][:5].tolist()}"
    # Overflow is version-specific: torch 2.13's CPU cast saturates finite overflow AND ±inf to ±448 (older
    # eager casts gave NaN). Where this torch saturates, the whole pattern set must agree; our own rule
    # (saturate, the format definition of e4m3 here) is checked against 448 either way.
    over = x.abs() >= 464
    assert torch.equal(mine[over], torch.where(x[over] > 0, 448.0, -448.0))
    if torch_e4m3_saturates():
        assert int((~same(mine, ref)).sum()) == 0
    assert mine.numel() == N_PATTERNS


@pytest.mark.parametrize("source", SOURCES)
def test_e5m2_matches_torch_on_every_16bit_pattern(source):
    # e5m2 is IEEE-like in every torch version: overflow past 61440 (57344 + ½·8192, the tie going up to the even
    # code) becomes ±inf, inf stays inf, NaN stays NaN. So every pattern is compared.
    x = SOURCES[source]
    mine, ref = mf.round_to(x, "e5m2"), x.to(torch.float8_e5m2).float()
    bad = ~same(mine, ref)
    assert int(bad.sum()) == 0, f"{int(bad.sum())} mismatches, e.g. x = {x[bad][:5].tolist()}"
    assert mine.numel() == N_PATTERNS


def e8m0_rule_differences(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a cast to E8M0 that rounds ties UP, and puts float32 subnormals above 2^-127 on 2^-126 (what torch
    2.13 and ml_dtypes do: they round the float32 exponent field by its top mantissa bit), must differ from
    nearest-with-ties-to-even-code. Returns (tie mask, subnormal-band mask)."""
    x64 = x.double()
    m, e = torch.frexp(x64)  # x = m·2^e, m ∈ [0.5, 1)
    tie = (m == 0.75) & (x64 >= 2.0**-127)  # x = 1.5·2^(e−1): halfway between 2^(e−1) and 2^e
    code_below = e - 1 + 127
    tie_differs = tie & (code_below % 2 == 0)  # the even code is the lower one: ties-up takes the other
    band = (x64 > 2.0**-127) & (x64 < 1.5 * 2.0**-127)  # nearest is 2^-127, the field rule gives 2^-126
    return tie_differs, band


@pytest.mark.parametrize("source", SOURCES)
def test_e8m0_matches_torch_on_every_nonnegative_16bit_pattern(source):
    x = SOURCES[source]
    keep = ~(x < 0)  # E8M0 is unsigned: +0, −0, positives, NaNs of both signs
    xs = x[keep]
    expected_n = N_PATTERNS // 2 + 1 + (2**10 - 1 if source == "float16" else 2**7 - 1)  # + −0 + negative NaNs
    assert xs.numel() == expected_n
    mine, ref = mf.round_to(xs, "e8m0"), xs.to(torch.float8_e8m0fnu).float()
    # torch 2.13's rounding to E8M0 (measured here): ties 1.5·2^k go UP to 2^(k+1) (not to the even code);
    # float32 subnormals in (2^-127, 1.5·2^-127) go to 2^-126; 0 → 2^-127; ≥ 1.5·2^127, inf, NaN → NaN.
    tie, band = e8m0_rule_differences(xs)
    bad = ~same(mine, ref)
    unexplained = bad & ~tie & ~band
    assert int(unexplained.sum()) == 0, f"e.g. x = {xs[unexplained][:5].tolist()}"
    assert torch.equal(bad, tie | band)  # every predicted difference really is one
    up = 2 * mine[tie]  # the next power of two; above 2^127 there is none: NaN (the tie 1.5·2^127)
    assert bool(same(ref[tie], torch.where(up.isinf(), float("nan"), up)).all())
    assert bool((ref[band] == 2.0**-126).all())
    assert int(tie.sum()) > 0  # float16 and bfloat16 both hold such ties
    zero = torch.tensor([0.0])
    assert float(mf.round_to(zero, "e8m0")) == float(zero.to(torch.float8_e8m0fnu).float()) == 2.0**-127


# ----------------------------------------------------------------------------------------------------------
# Exhaustive: ml_dtypes (a second, independent implementation)

ML_CASES = {  # name: (our format, ml_dtypes type)
    "e3m2": (mf.E3M2, ml_dtypes.float6_e3m2fn),
    "e2m3": (mf.E2M3, ml_dtypes.float6_e2m3fn),
    "e2m1": (mf.E2M1, ml_dtypes.float4_e2m1fn),
    # ml_dtypes' float8_e4m3fn does not saturate (overflow and inf → NaN): compare that variant of e4m3
    "e4m3_nonsaturating": (dataclasses.replace(mf.E4M3, saturate=False), ml_dtypes.float8_e4m3fn),
    "e5m2": (mf.E5M2, ml_dtypes.float8_e5m2),
}


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("case", ML_CASES)
def test_matches_ml_dtypes_on_every_16bit_pattern(case, source):
    fmt, dtype = ML_CASES[case]
    x = SOURCES[source]
    if fmt.nan == "none":  # ml_dtypes writes NaN as −0 there; ours raises (tested below)
        x = x[~x.isnan()]
        assert x.numel() == N_PATTERNS - (2 * (2**10 - 1) if source == "float16" else 2 * (2**7 - 1))
    with np.errstate(invalid="ignore"):
        ref = ml(x, dtype)
    mine = mf.round_to(x, fmt)
    bad = ~same(mine, ref)
    assert int(bad.sum()) == 0, f"{int(bad.sum())} mismatches, e.g. x = {x[bad][:5].tolist()}"


@pytest.mark.parametrize("source", SOURCES)
def test_e8m0_matches_ml_dtypes_on_every_positive_16bit_pattern(source):
    x = SOURCES[source]
    xs = x[(x > 0) | x.isnan()]  # ml_dtypes sends 0 to NaN; we (and torch) to 2^-127
    with np.errstate(invalid="ignore"):
        ref = ml(xs, ml_dtypes.float8_e8m0fnu)
    mine = mf.round_to(xs, "e8m0")
    tie, band = e8m0_rule_differences(xs)
    assert torch.equal(~same(mine, ref), tie | band)  # ml_dtypes follows the same rule as torch


# ----------------------------------------------------------------------------------------------------------
# Value tables: against torch/ml_dtypes' own tables and against closed forms


def test_tables_equal_torch_and_ml_dtypes_decoding():
    codes8 = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    for name, dt in [("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2), ("e8m0", torch.float8_e8m0fnu)]:
        assert bool(same(mf.values(name).float(), codes8.view(dt).float()).all()), name
    for name, dt, bits in [("e3m2", ml_dtypes.float6_e3m2fn, 6), ("e2m3", ml_dtypes.float6_e2m3fn, 6),
                           ("e2m1", ml_dtypes.float4_e2m1fn, 4)]:
        ref = torch.from_numpy(np.arange(2**bits, dtype=np.uint8).view(dt).astype(np.float32))
        assert bool(same(mf.values(name).float(), ref).all()), name
        assert torch.equal(mf.decode(torch.arange(2**bits), name), ref)


def closed_form(E: int, M: int, bias: int, nan: str, signed: bool = True, subnormals: bool = True) -> dict:
    """Counts and extremes from the parameters alone (IEEE-style reasoning, no table). min_pos: the smallest
    subnormal 2^(1−bias)·2^-M, or without subnormals the smallest normal with E = 0, 2^(0−bias)."""
    signs = 2 if signed else 1
    if nan == "ieee":  # top exponent reserved: 2 infs, 2·(2^M − 1) NaNs
        n_nonfinite, top_exp, top_man = signs * (2**M), 2**E - 2 - bias, 2 - 2.0**-M
    elif nan == "all_ones":  # one NaN per sign, the top exponent otherwise normal
        n_nonfinite = signs
        top_exp, top_man = (2**E - 1 - bias, 2 - 2.0 ** (1 - M)) if M > 0 else (2**E - 2 - bias, 1.0)
    else:
        n_nonfinite, top_exp, top_man = 0, 2**E - 1 - bias, 2 - 2.0**-M
    return {"n_finite": 2 ** (E + M + int(signed)) - n_nonfinite, "max": 2.0**top_exp * top_man,
            "min_pos": 2.0 ** (1 - bias - M) if subnormals else 2.0**-bias}


@pytest.mark.parametrize("name,E,M,bias,nan,max_known", [
    ("e4m3", 4, 3, 7, "all_ones", 448.0), ("e5m2", 5, 2, 15, "ieee", 57344.0), ("e3m2", 3, 2, 3, "none", 28.0),
    ("e2m3", 2, 3, 1, "none", 7.5), ("e2m1", 2, 1, 1, "none", 6.0)])
def test_table_counts_and_extremes_match_closed_forms(name, E, M, bias, nan, max_known):
    f = mf.get_format(name)
    cf = closed_form(E, M, bias, nan)
    assert (f.exp_bits, f.man_bits, f.bias, f.nan, f.bits) == (E, M, bias, nan, 1 + E + M)
    assert f.n_finite == cf["n_finite"]
    assert f.max_finite == cf["max"] == max_known  # the OCP specs' stated maxima
    assert f.min_positive == cf["min_pos"]
    v = mf.values(name)
    assert v.shape == (2 ** (1 + E + M),) and v.dtype == torch.float64
    assert int(torch.isnan(v).sum()) + int(torch.isinf(v).sum()) == 2 ** (1 + E + M) - cf["n_finite"]


def test_e8m0_table_is_the_powers_of_two():
    v = mf.values("e8m0")
    assert v.numel() == 256 and torch.isnan(v[255]) and mf.E8M0.n_finite == 255
    assert torch.equal(v[:255], torch.tensor([2.0**k for k in range(-127, 128)], dtype=torch.float64))
    assert mf.E8M0.max_finite == 2.0**127 and mf.E8M0.min_positive == 2.0**-127
    assert closed_form(8, 0, 127, "all_ones", signed=False, subnormals=False) == {
        "n_finite": 255, "max": 2.0**127, "min_pos": 2.0**-127}


def test_emax_is_the_mx_spec_emax_elem():  # OCP MX v1.0 Table 1 / §6.3
    assert {n: mf.get_format(n).emax for n in ("e4m3", "e5m2", "e3m2", "e2m3", "e2m1")} == \
        {"e4m3": 8, "e5m2": 15, "e3m2": 4, "e2m3": 2, "e2m1": 2}


# ----------------------------------------------------------------------------------------------------------
# float16 / bfloat16 rebuilt from parameters: a 16-bit check of the generic machinery against torch's casts

FP16 = mf.MiniFloat("fp16", 5, 10, bias=15, has_inf=True, nan="ieee", saturate=False)
BF16 = mf.MiniFloat("bf16", 8, 7, bias=127, has_inf=True, nan="ieee", saturate=False)


def test_half_and_bfloat16_as_minifloats_match_torch():
    # every float16 value round-trips through FP16; every bfloat16 pattern rounds to float16 as torch's .half()
    x = SOURCES["bfloat16"]
    assert bool(same(mf.round_to(x, FP16), x.half().float()).all())
    assert bool(same(mf.round_to(SOURCES["float16"], FP16), SOURCES["float16"]).all())
    y = SOURCES["float16"]
    assert bool(same(mf.round_to(y, BF16), y.bfloat16().float()).all())
    r = torch.randn(20000, dtype=torch.float32) * torch.logspace(-30, 30, 20000)  # ties are rare: random bits
    assert bool(same(mf.round_to(r, BF16), r.bfloat16().float()).all())
    assert mf.encode(r[:4], FP16).dtype == torch.int32


# ----------------------------------------------------------------------------------------------------------
# Own rules, from the format definitions


def test_encode_decode_round_trips_every_code():
    for fmt in mf.FORMATS.values():
        codes = torch.arange(2**fmt.bits)
        v = mf.decode(codes, fmt)
        back = mf.encode(v, fmt).long()
        finite = torch.isfinite(v)
        assert torch.equal(back[finite], codes[finite]), fmt.name
        assert bool(torch.isnan(mf.decode(back[torch.isnan(v)], fmt)).all())


def test_ties_go_to_the_even_code():
    # e2m1 magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6 are codes 0..7; a tie goes to the even code
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -5.0])
    assert mf.round_to(x, "e2m1").tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -0.0, -4.0]
    # e4m3 around 1 (step 1/8): 1 + 1/16 → 1 (mantissa 000), 1 + 3/16 → 1.25 (mantissa 010)
    assert mf.round_to(torch.tensor([1 + 1 / 16, 1 + 3 / 16]), "e4m3").tolist() == [1.0, 1.25]
    # below the smallest subnormal 2^-9: half of it is a tie with 0 → 0; a bit more → 2^-9
    assert mf.round_to(torch.tensor([2.0**-10, 2.0**-10 * 1.001]), "e4m3").tolist() == [0.0, 2.0**-9]
    assert torch.signbit(mf.round_to(torch.tensor([-1e-9]), "e2m1")).item()  # −tiny → −0


def test_overflow_rules_follow_the_format_definitions():
    big = torch.tensor([463.9, 464.0, 464.01, 1e9, float("inf"), -float("inf")])
    assert mf.round_to(big, "e4m3").tolist() == [448.0, 448.0, 448.0, 448.0, 448.0, -448.0]  # saturating
    nosat = dataclasses.replace(mf.E4M3, saturate=False)  # OFP8 non-saturating mode: no inf, so NaN
    r = mf.round_to(big, nosat)
    assert r[:2].tolist() == [448.0, 448.0] and bool(r[2:].isnan().all())  # 464 = tie: 448 (mantissa 110) is even
    e5 = torch.tensor([61439.9, 61440.0, 1e9, float("inf"), -float("inf"), float("nan")])
    r = mf.round_to(e5, "e5m2")  # 57344 = 1.11·2^15 is odd, so the tie 61440 goes up: inf
    assert r[0] == 57344 and r[1:4].tolist() == [float("inf")] * 3 and r[4] == -float("inf") and r[5].isnan()
    r = mf.round_to(e5[:5], dataclasses.replace(mf.E5M2, saturate=True))
    assert r.tolist() == [57344.0] * 4 + [-57344.0]
    for name, top in [("e3m2", 28.0), ("e2m3", 7.5), ("e2m1", 6.0)]:
        r = mf.round_to(torch.tensor([1e30, float("inf"), -float("inf")]), name)
        assert r.tolist() == [top, top, -top]
    r = mf.round_to(torch.tensor([1.49 * 2.0**127, 1.5 * 2.0**127, float("inf"), float("nan"), 0.0]).double(), "e8m0")
    assert r[0] == 2.0**127 and bool(r[2:4].isnan().all()) and r[4] == 2.0**-127
    assert r[1] == 2.0**127  # the tie: 254 is the even code (torch rounds it up, to NaN)


def test_nan_inputs():
    nan = torch.tensor([1.0, float("nan")])
    assert mf.round_to(nan, "e4m3")[1].isnan() and mf.round_to(nan, "e5m2")[1].isnan()
    assert mf.encode(nan, "e4m3")[1] == 0x7F and mf.encode(-nan, "e4m3")[1] == 0xFF
    for name in ("e3m2", "e2m3", "e2m1"):
        with pytest.raises(NonFiniteError, match=f"{name} has no NaN"):
            mf.round_to(nan, name)


def test_bad_arguments_say_what_to_change():
    with pytest.raises(BadArgumentError, match="known: e4m3, e5m2, e3m2, e2m3, e2m1, e8m0"):
        mf.get_format("e4m4")
    assert mf.get_format("float8_e4m3fn") is mf.E4M3 and mf.get_format("E2M1") is mf.E2M1
    with pytest.raises(BadArgumentError, match="unsigned"):
        mf.round_to(torch.tensor([-1.0]), "e8m0")
    with pytest.raises(BadArgumentError, match=r"\[0, 15\]"):
        mf.decode(torch.tensor([16]), "e2m1")
    with pytest.raises(BadArgumentError, match="nan='ieee'"):
        mf.MiniFloat("x", 4, 3, bias=7, has_inf=True, nan="all_ones")
    with pytest.raises(BadArgumentError, match="saturate=True"):
        mf.MiniFloat("x", 2, 1, bias=1, nan="none", saturate=False)
    with pytest.raises(BadArgumentError, match="16"):
        mf.MiniFloat("x", 8, 10, bias=127)
    with pytest.raises(BadArgumentError, match="nan must be one of"):
        mf.MiniFloat("x", 4, 3, bias=7, nan="sometimes")
