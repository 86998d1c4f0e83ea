"""The rules of notebook 03's claims (qlab/claims/gptq.py), each judged on both sides of its threshold."""

from qlab import claims

SETTING = "test layer"


def word(claim_id, **m):
    v = claims.judge(claim_id, **m)
    assert v.claim == claim_id and v.measured and v.why
    return v.verdict


def test_registered_in_notebook_03():
    ids = {"gptq-obs-toy", "gptq-beats-rtn", "gptq-act-order", "gptq-blocked-exact", "gptq-gpu-calibration",
           "gptq-gpu-inference", "gptq-7b-a100-time", "calibration-domain"}
    reg = claims.registry()
    assert ids <= set(reg) and all(reg[i].notebook == "03_gptq" for i in ids)


def test_obs_toy():
    assert word("gptq-obs-toy", loss_obs=0.004, loss_rtn=0.02) == "true"
    assert word("gptq-obs-toy", loss_obs=0.02, loss_rtn=0.02) == "false"


def test_beats_rtn_threshold_is_one():
    assert word("gptq-beats-rtn", worst_ratio=0.45, n_settings=6, setting=SETTING) == "true"
    assert word("gptq-beats-rtn", worst_ratio=0.95, n_settings=6, setting=SETTING) == "true"
    assert word("gptq-beats-rtn", worst_ratio=1.05, n_settings=6, setting=SETTING) == "false"
    # the printed comparison: the margin bound where it holds, "< 1" between, "≥ 1" above
    assert "≤ 0.6" in claims.judge("gptq-beats-rtn", worst_ratio=0.45, n_settings=6, setting=SETTING).measured
    assert "< 1" in claims.judge("gptq-beats-rtn", worst_ratio=0.95, n_settings=6, setting=SETTING).measured


def test_act_order():
    assert word("gptq-act-order", lower=3, settings=3) == "true"
    assert word("gptq-act-order", lower=2, settings=3) == "partly"
    assert word("gptq-act-order", lower=0, settings=3) == "false"


def test_blocked_exact():
    assert word("gptq-blocked-exact", codes_equal=True, rel_diff=1e-15, rows=8) == "true"
    assert word("gptq-blocked-exact", codes_equal=True, rel_diff=2e-5, rows=8) == "false"
    assert word("gptq-blocked-exact", codes_equal=False, rel_diff=0.0, rows=8) == "false"


def test_gpu_calibration_one_cpu_run_falsifies_only():
    assert word("gptq-gpu-calibration", device="cpu", quantized=7, linears=7, better_than_rtn=7) == "false"
    assert word("gptq-gpu-calibration", device="cpu", quantized=6, linears=7, better_than_rtn=6) == (
        "not measurable here")
    assert word("gptq-gpu-calibration", device="cuda", quantized=7, linears=7, better_than_rtn=7) == (
        "not measurable here")


def test_gpu_inference_needs_the_same_output():
    assert word("gptq-gpu-inference", device="cpu", linears=7, rel_diff=1e-7) == "false"
    assert word("gptq-gpu-inference", device="cpu", linears=7, rel_diff=1e-3) == "not measurable here"
    assert word("gptq-gpu-inference", device="cuda", linears=7, rel_diff=0.0) == "not measurable here"


def test_a100_time_factor_two_around_one_to_two_hours():
    m = {"cpu_hours": (2.2, 3.6), "flops": 1.7e15, "tokens": 65536, "cpu_rate": 2.1e11}
    assert word("gptq-7b-a100-time", a100_minutes=(1.5, 15), **m) == "false"  # wholly below 0.5 h
    assert word("gptq-7b-a100-time", a100_minutes=(35, 200), **m) == "true"  # within 0.5–4 h
    assert word("gptq-7b-a100-time", a100_minutes=(20, 60), **m) == "depends"  # straddles 0.5 h
    assert word("gptq-7b-a100-time", a100_minutes=(300, 600), **m) == "false"  # wholly above 4 h
    v = claims.judge("gptq-7b-a100-time", a100_minutes=(1.5, 15), **m)
    assert v.measured.startswith("estimate") and "estimate" in v.why


def test_calibration_domain_margin_is_ten_points():
    m = {"setting": SETTING}
    assert word("calibration-domain", in_domain=0.64, held_out={"news": 0.52, "code": 0.22}, **m) == "true"
    assert word("calibration-domain", in_domain=0.64, held_out={"news": 0.64, "code": 0.22}, **m) == "partly"
    assert word("calibration-domain", in_domain=0.64, held_out={"news": 0.55, "code": 0.60}, **m) == "false"
    v = claims.judge("calibration-domain", in_domain=0.64, held_out={"news": 0.64, "code": 0.22}, **m)
    assert "code keeps clearly less" in v.why and "news keeps about as much" in v.why
