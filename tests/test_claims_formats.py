"""The rules of notebook 09's claims (qlab/claims/formats.py), each judged on both sides of its threshold."""

import pytest

from qlab import claims

SRC = "synthetic"


def word(claim_id, **m):
    v = claims.judge(claim_id, **m)
    assert v.claim == claim_id and v.measured and v.why
    return v.verdict


def test_registered_in_notebook_09():
    ids = {"fp8-range-activations", "fp8-w8a8", "per-tensor-too-coarse"}
    reg = claims.registry()
    assert ids <= set(reg) and all(reg[i].notebook == "09_float_formats" for i in ids)
    assert not reg["fp8-w8a8"].lesson  # moved out of qlab.claims.later: measured now


def _range(int8_rest, e4m3_rest=0.027):
    return word("fp8-range-activations", int8_rest=int8_rest, e4m3_rest=e4m3_rest, e5m2_rest=0.053, int8_out=0.012,
                e4m3_out=0.026, n_rest=1534, n_out=2, setting=SRC)


@pytest.mark.parametrize("int8_rest, expected", [(0.77, "true"), (0.054, "true"), (0.053, "partly"),
                                                 (0.03, "partly"), (0.027, "false"), (0.01, "false")])
def test_fp8_range_threshold_is_twice(int8_rest, expected):
    assert _range(int8_rest) == expected


def test_fp8_range_prints_comparisons_only():
    v = claims.judge("fp8-range-activations", int8_rest=0.77, e4m3_rest=0.027, e5m2_rest=0.053, int8_out=0.012,
                     e4m3_out=0.026, n_rest=1534, n_out=2, setting=SRC)
    assert "≥ 2× E4M3's: True, ≥ 10×: True" in v.measured and "0.77" not in v.measured


def _w8a8(ppl, kl, weights_only=None):
    return word("fp8-w8a8", ppl_float=30.0, ppl=ppl, kl=kl, top1=0.9, setting="W8A8 FP8", source=SRC,
                weights_only=weights_only)


def test_fp8_w8a8_match_needs_ppl_within_1pct_and_kl():
    assert _w8a8(30.2, 0.009) == "true"
    assert _w8a8(29.8, 0.010) == "true"  # lower perplexity counts as a match too (|Δ| < 1 %)
    assert _w8a8(30.2, 0.011) == "partly"  # perplexity matches, predictions moved
    assert _w8a8(30.31, 0.005) == "false"  # +1.03 %
    assert _w8a8(29.6, 0.005) == "false"  # −1.3 %
    w = {"setting": "W8A16 e4m3", "perplexity": 30.4, "kl": 0.02}
    v = claims.judge("fp8-w8a8", ppl_float=30.0, ppl=31.0, kl=0.05, top1=0.9, setting="s", source=SRC, weights_only=w)
    assert v.verdict == "false" and "weights alone" in v.why and "W8A16 e4m3" in v.measured


def _pair(fmt, static_kl, token_kl):
    return {"fmt": fmt, "static": "static max", "static_kl": static_kl, "token_kl": token_kl, "static_ppl": 1.1,
            "token_ppl": 1.02}


def test_per_tensor_too_coarse_threshold_is_twice():
    assert word("per-tensor-too-coarse", pairs=[_pair("INT8", 0.2, 0.1)], source=SRC) == "true"
    assert word("per-tensor-too-coarse", pairs=[_pair("INT8", 0.19, 0.1)], source=SRC) == "false"
    both = [_pair("INT8", 0.5, 0.04), _pair("FP8 E4M3", 0.06, 0.04)]
    v = claims.judge("per-tensor-too-coarse", pairs=both, source=SRC)
    assert v.verdict == "depends" and "too coarse for INT8" in v.why and "not for FP8 E4M3" in v.why
    assert word("per-tensor-too-coarse", pairs=[_pair("INT8", 0.5, 0.04), _pair("FP8", 0.09, 0.04)],
                source=SRC) == "true"
    assert word("per-tensor-too-coarse", pairs=[_pair("INT8", 0.05, 0.04), _pair("FP8", 0.05, 0.04)],
                source=SRC) == "false"


def test_w8a8_claims_without_the_saved_result():
    assert word("fp8-w8a8", missing="benchmarks/results/w8a8.json") == "not measurable here"
    assert word("per-tensor-too-coarse", missing="benchmarks/results/w8a8.json") == "not measurable here"
