"""The rules of the AWQ and GGUF claims (qlab.claims.awq, qlab.claims.gguf), each judged on both sides of its
threshold with synthetic measurements, so a wrong threshold fails."""

from __future__ import annotations

import pytest

from qlab import claims


def word(claim_id: str, **m) -> str:
    return claims.judge(claim_id, **m).verdict


# ---------------------------------------------------------------------------------------------------- awq


def test_salient_activation_far_more():
    s = "synthetic"
    assert word("awq-salient-activation", act_ratio=0.39, weight_ratio=0.99, random_ratio=1.0, setting=s) == "true"
    # removes only 15 % of the error: not "far more" than anything
    assert word("awq-salient-activation", act_ratio=0.85, weight_ratio=0.99, random_ratio=1.0, setting=s) == "false"
    # activation helps, but weight norm helps almost as much: not "far more than by weight norm"
    assert word("awq-salient-activation", act_ratio=0.5, weight_ratio=0.55, random_ratio=1.0, setting=s) == "false"


def test_alpha_search_and_kit_claims():
    assert word("awq-alpha-search", best_ratio_below=True, alpha_inside=True, setting="s") == "true"
    assert word("awq-alpha-search", best_ratio_below=True, alpha_inside=False, setting="s") == "false"
    assert word("awq-alpha-search", best_ratio_below=False, alpha_inside=True, setting="s") == "false"
    assert word("awq-linear-objective", lin_at_module_ok=True, module_gain_small=True) == "true"
    assert word("awq-linear-objective", lin_at_module_ok=True, module_gain_small=False) == "false"
    assert word("awq-fold-exact", delta_below=True, positions=128, logits=10) == "true"
    assert word("awq-fold-exact", delta_below=False, positions=128, logits=10) == "false"
    assert word("awq-clip", one_sided_gain=0.19, two_sided_gain=0.25) == "true"
    assert word("awq-clip", one_sided_gain=0.09, two_sided_gain=0.25) == "false"  # below the 10 % threshold
    assert word("awq-clip", one_sided_gain=0.19, two_sided_gain=0.19) == "false"  # two-sided not lower still
    assert word("awq-groups-beat-rtn", n_better=9, n_groups=10, worst_below=True) == "true"
    assert word("awq-groups-beat-rtn", n_better=8, n_groups=10, worst_below=False) == "false"


def test_output_channels():
    assert word("awq-output-channels", rows_scaled=False, cols_scaled=True, fold_lands_before=True) == "false"
    assert word("awq-output-channels", rows_scaled=True, cols_scaled=False, fold_lands_before=True) == "true"
    assert word("awq-output-channels", rows_scaled=True, cols_scaled=True, fold_lands_before=False) == "false"


def test_five_percent_scaled():
    assert word("awq-5pct-scaled", fractions=[0.01, 0.5, 0.02], awq_beats_rtn_fraction=1.0) == "false"
    assert word("awq-5pct-scaled", fractions=[0.01, 0.05, 0.02], awq_beats_rtn_fraction=1.0) == "depends"
    assert word("awq-5pct-scaled", fractions=[0.01, 0.5, 0.02], awq_beats_rtn_fraction=0.5) == "depends"


def test_scale_range_band_with_tolerance():
    inside = [(0.46, 2.17), (0.5, 2.0), (0.8, 1.25)]  # within [0.45, 2.2]
    assert word("awq-scale-range", ranges=inside, setting="s") == "true"
    assert word("awq-scale-range", ranges=inside + [(0.44, 2.27)], setting="s") == "false"
    assert word("awq-scale-range", ranges=inside + [(0.46, 2.25)], setting="s") == "false"
    # outside, but fewer groups than the notebook can count on everywhere
    assert word("awq-scale-range", ranges=inside + [(0.44, 2.27)], min_outside=2, setting="s") == "depends"


@pytest.mark.parametrize("t_awq, t_gptq, expected", [(10, 100, "true"), (20, 100, "true"), (21, 100, "partly"),
                                                      (99, 100, "partly"), (100, 100, "false"), (214, 102, "false")])
def test_ten_times_faster(t_awq, t_gptq, expected):
    assert word("awq-10x-faster", t_awq=t_awq, t_gptq=t_gptq, protocol="p", source="f") == expected


def _grid(awq_kl, gptq_kl, awq_ppl=33.0, gptq_ppl=(35.0, 34.5), awq_bits=4.31, gptq_bits=4.36):
    return {"grid": "g", "awq_ppl": awq_ppl, "awq_kl": awq_kl, "awq_bits": awq_bits, "gptq_ppl": list(gptq_ppl),
            "gptq_kl": list(gptq_kl), "gptq_bits": gptq_bits}


def test_beats_gptq_needs_a_margin_beyond_the_seed_spread():
    assert word("awq-beats-gptq", rows=[_grid(0.14, (0.196, 0.205))], source="f") == "true"
    # lower, but by less than GPTQ's seed-to-seed range (0.02): a tie
    assert word("awq-beats-gptq", rows=[_grid(0.19, (0.20, 0.22))], source="f") == "depends"
    # lower KL but with more bits than GPTQ: not "at the same bits"
    assert word("awq-beats-gptq", rows=[_grid(0.14, (0.196, 0.205), awq_bits=4.6)], source="f") == "depends"
    # GPTQ better on the only grid
    assert word("awq-beats-gptq", rows=[_grid(0.30, (0.196, 0.205), awq_ppl=37.0)], source="f") == "false"
    # the grids disagree
    rows = [_grid(0.14, (0.196, 0.205)), _grid(0.30, (0.196, 0.205), awq_ppl=37.0)]
    assert word("awq-beats-gptq", rows=rows, source="f") == "depends"


# ---------------------------------------------------------------------------------------------------- gguf


def test_q4_0_overhead_compares_the_overhead_not_the_total():
    assert word("q4_0-overhead", overhead_bytes=2, block_weights=32, code_bytes=16) == "false"
    assert word("q4_0-overhead", overhead_bytes=6, block_weights=32, code_bytes=16) == "true"
    assert word("q4_0-overhead", overhead_bytes=6, block_weights=64, code_bytes=32) == "false"  # 0.75 bits


def test_q4_1_zero_point():
    assert word("q4_1-zero-point", extra_bytes=2, field_kind="m", offset_added_after_scaling=True) == "true"
    assert word("q4_1-zero-point", extra_bytes=1, field_kind="m", offset_added_after_scaling=True) == "false"


def test_naive_rounding_lists_built_from_the_measurement():
    v = claims.judge("gguf-naive-rounding", naive={"Q4_0": True, "Q4_K": False}, naive_imatrix={"Q4_0": False},
                     mse_ratio={"Q4_K": 0.8, "Q4_0+imatrix": 0.9})
    assert v.verdict == "partly" and "Q4_K" in v.why and "Q4_0+imatrix" in v.why
    assert word("gguf-naive-rounding", naive={"Q4_0": True}, naive_imatrix={"Q4_0": True}) == "true"
    assert word("gguf-naive-rounding", naive={"Q4_K": False}, naive_imatrix={"Q4_K": False}) == "false"


def test_q4_k_m_quality_at_matched_size():
    m = dict(bits_km=6.27, same_size_type="Q5_0", source="f")
    assert word("q4_k_m-quality", kl_km=[0.069, 0.076], kl_same_size=[0.086, 0.090], bits_same=6.24, **m) == "true"
    # lower by one engine only
    assert word("q4_k_m-quality", kl_km=[0.069, 0.095], kl_same_size=[0.086, 0.090], bits_same=6.24, **m) == "false"
    # the comparison file is 15 % smaller: not a matched size
    assert word("q4_k_m-quality", kl_km=[0.069, 0.076], kl_same_size=[0.4, 0.4], bits_same=5.46, **m) == "depends"
    assert word("q4_k_m-speed", bits_km=6.27, bits_q4_0=5.46) == "not measurable here"


def test_blas_integer_is_partly_whenever_the_dot_products_are_integer():
    q = {"F32": "F32", "Q4_0": "Q8_0", "Q4_K": "Q8_K"}
    assert word("gguf-blas-integer", vec_dot=q, blas_libraries=[], blas_backend=False) == "partly"
    # a BLAS backend does not make BLAS do the integer part
    assert word("gguf-blas-integer", vec_dot=q, blas_libraries=["libopenblas"], blas_backend=True) == "partly"
    assert word("gguf-blas-integer", vec_dot={"Q4_0": "F32"}, blas_libraries=[], blas_backend=False) == "false"


def test_llama_crosscheck():
    assert word("gguf-llama-crosscheck", f32_within=True, q8_kl_ratio_ok=True, q4_0_within=True) == "true"
    assert word("gguf-llama-crosscheck", f32_within=True, q8_kl_ratio_ok=False, q4_0_within=True) == "false"


def test_every_claim_is_registered_for_its_notebook():
    reg = claims.registry()
    for cid in ["awq-salient-activation", "awq-scale-range", "awq-10x-faster", "awq-beats-gptq"]:
        assert reg[cid].notebook == "04_awq"
    for cid in ["q4_0-overhead", "gguf-naive-rounding", "q4_k_m-quality", "gguf-blas-integer"]:
        assert reg[cid].notebook == "05_gguf"
