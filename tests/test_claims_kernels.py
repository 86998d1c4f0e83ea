"""The rules of the kernels claims (qlab.claims.kernels), each judged on both sides of its threshold with
synthetic measurements: a wrong threshold fails here."""

import pytest

from qlab import claims


def _word(claim_id, **m):
    return claims.judge(claim_id, **m).verdict


BOUNDS = dict(bound_decode=3.76, bound_batch=1.0, batch_m=256)


def test_int4_speedup_without_a_gpu_run_is_not_measurable():
    v = claims.judge("int4-speedup", **BOUNDS)
    assert v.verdict == "not measurable here" and "3.76×" in v.measured and "not measured" in v.measured


@pytest.mark.parametrize("decode, batch, word", [
    ([1.9, 1.95, 1.8], None, "false"),      # below 2× at M = 1
    ([2.05, 2.1, 1.9], None, "true"),       # median 2.05: just inside
    ([3.9, 4.0, 3.95], [2.1], "true"),      # inside at both batch sizes
    ([4.2, 4.3, 4.1], None, "false"),       # above 4×: outside the words' range
    ([2.9, 3.1], [0.95, 1.0], "depends"),   # inside at decode, not at M = 256
])
def test_int4_speedup_threshold_is_2_to_4(decode, batch, word):
    assert _word("int4-speedup", **BOUNDS, decode_speedups=decode, batch_speedups=batch, gpu="H200") == word


def test_triton_kernel_exact_threshold_is_the_bound():
    assert _word("triton-kernel-exact", decode_ratio=0.99, gemm_ratio=1.0, max_err=0.01, max_ref=50) == "true"
    assert _word("triton-kernel-exact", decode_ratio=0.12, gemm_ratio=1.01, max_err=0.01, max_ref=50) == "false"


def test_tokens_per_s_byte_ratio_below_4_is_false_whatever_the_bandwidth():
    q4 = 18 / 32  # Q4_0: 4.5 bits
    for bw in (10, 75, 500):
        assert _word("gguf-cpu-tokens", q4_bytes_per_weight=q4, fp16_bytes_per_weight=2, params=7e9,
                     bandwidth_below_GBps=bw) == "false"
    v = claims.judge("gguf-cpu-tokens", q4_bytes_per_weight=q4, fp16_bytes_per_weight=2, params=7e9,
                     bandwidth_below_GBps=39)
    assert "3.56" in v.measured and "78.75 GB/s" in v.measured and "< 70 GB/s" in v.measured
    assert "'<5 for FP16' holds" in v.why


def test_tokens_per_s_with_a_byte_ratio_above_4_depends_on_the_bandwidth():
    q = 0.45  # a hypothetical 3.6-bit format: byte ratio 4.44 > 4; needs >= 63 GB/s, FP16 < 5 below 70 GB/s
    assert _word("gguf-cpu-tokens", q4_bytes_per_weight=q, fp16_bytes_per_weight=2, params=7e9,
                 bandwidth_below_GBps=60) == "false"  # cannot reach 20 tokens/s
    assert _word("gguf-cpu-tokens", q4_bytes_per_weight=q, fp16_bytes_per_weight=2, params=7e9,
                 bandwidth_below_GBps=66) == "depends"


@pytest.mark.parametrize("speeds, word", [
    ({"a": 12.7, "b": 20.0}, "true"),   # 2.01× and 3.2× over 6.32
    ({"a": 12.6, "b": 20.0}, "partly"),  # 1.99×: one engine below 2×
    ({"a": 6.3, "b": 5.0}, "false"),     # none faster than float32
])
def test_shines_threshold_is_twice_the_float_speed(speeds, word):
    assert _word("gguf-shines-cpu", float_tps=6.32, gguf_tps=speeds) == word


@pytest.mark.parametrize("types, in_ggml, word", [
    ({"Q4_0": "Q8_0", "Q4_K": "Q8_K"}, True, "partly"),   # integer, not BLAS (this build)
    ({"Q4_0": "Q8_0", "Q4_K": "Q8_K"}, False, "true"),    # integer and a BLAS library's dot product
    ({"Q4_0": "F32", "Q4_K": "Q8_K"}, True, "false"),     # a float activation type: not integer, not BLAS
    ({"Q4_0": "F16"}, False, "partly"),
])
def test_blas_two_parts(types, in_ggml, word):
    assert _word("ggml-blas-cpu", vec_dot_types=types, dot_in_ggml=in_ggml, blas_libraries=[]) == word


def test_kernels_claims_are_registered_for_their_notebooks():
    reg = claims.registry()
    assert {reg[c].notebook for c in ("int4-speedup", "triton-kernel-exact")} == {"06_triton_kernels"}
    assert {reg[c].notebook for c in ("gguf-cpu-tokens", "gguf-shines-cpu", "ggml-blas-cpu")} == {"07_cpu_kernels"}
