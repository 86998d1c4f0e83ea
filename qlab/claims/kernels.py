"""Claims of the kernels notebooks (see qlab.claims): 06 (Triton W4A16 on a GPU) and 07 (GGUF kernels on a CPU)."""

from __future__ import annotations

from statistics import median

from .core import Claim, register, verdict
from .gguf import blas_integer_word, integer_dot_products

# ----------------------------------------------------------------------------------------------------------
# 06 · "2–4× inference speed-up" from 4-bit weights (GPU)

SPEEDUP_LOW, SPEEDUP_HIGH = 2.0, 4.0  # the words: "2–4×"


def _int4_speedup(bound_decode: float, bound_batch: float, batch_m: int, decode_speedups=None, batch_speedups=None,
                  gpu: str = "", setting: str = "", source: str = "benchmarks/results/kernels.json") -> object:
    bounds = (f"the roofline{f' ({setting})' if setting else ''} permits at most {bound_decode:.2f}× at M = 1 and "
              f"{bound_batch:.2f}× at M = {batch_m} (derived from spec-sheet numbers, not measured)")
    if not decode_speedups:
        return verdict("int4-speedup", "not measurable here",
                       f"no GPU run: {source} has not been written (`python benchmarks/kernels.py` on a CUDA GPU "
                       f"writes it); {bounds}",
                       "a speed-up is a GPU timing and this machine has no GPU; the bound allows 2–4× only for small "
                       "batches (decode), where the 4-bit weight's bytes set the time")
    d = median(decode_speedups)
    b = median(batch_speedups) if batch_speedups else None
    measured = (f"saved result {source} ({gpu}): qlab int4 g128 over bf16 cuBLAS, median over "
                f"{len(decode_speedups)} layer shapes: {d:.2f}× at M = 1"
                + (f", {b:.2f}× at M = {batch_m}" if b is not None else "") + f"; {bounds}")
    if d < SPEEDUP_LOW:
        return verdict("int4-speedup", "false", measured,
                       f"even at M = 1, where the bound is {bound_decode:.2f}×, the kernel reaches only {d:.2f}× < 2×")
    if d > SPEEDUP_HIGH:
        return verdict("int4-speedup", "false", measured,
                       f"faster than the words say ({d:.2f}× > 4× at M = 1): the bf16 baseline runs below its roofline")
    if b is not None and b < SPEEDUP_LOW:
        return verdict("int4-speedup", "depends", measured,
                       f"on the batch: {d:.2f}× at M = 1 (decode) is inside 2–4×, {b:.2f}× at M = {batch_m} "
                       f"(prefill, compute-bound) is not")
    return verdict("int4-speedup", "true", measured,
                   f"{d:.2f}× at M = 1 lies inside 2–4×" + (f" and {b:.2f}× at M = {batch_m} too" if b is not None
                                                                else ""))


# ----------------------------------------------------------------------------------------------------------
# 06 · the kit's own claim: the Triton kernel equals dequantize-then-matmul within the fp16 rounding bound


def _triton_exact(decode_ratio: float, gemm_ratio: float, max_err: float, max_ref: float) -> object:
    ok = decode_ratio <= 1.0 and gemm_ratio <= 1.0
    measured = (f"worst |kernel − reference| / rounding bound = {decode_ratio:.2f} on the decode path (M = 5), "
                f"{gemm_ratio:.2f} on the GEMM path (M = 40); max |y − ref| = {max_err:.2e}, max |ref| = "
                f"{max_ref:.1f} (96×320 layer, 4-bit g64, act-order, fp16 activations, Triton interpreter)")
    return verdict("triton-kernel-exact", "true" if ok else "false", measured,
                   "every output lies inside the bound (ratio ≤ 1)" if ok else
                   "some output lies outside the fp16/fp32 rounding bound: the kernel computes something else")


# ----------------------------------------------------------------------------------------------------------
# 07 · "20–30 tokens/s for a 4-bit GGUF model vs <5 for FP16" (7B-class, CPU)

Q4_TPS, FP16_TPS = 20.0, 5.0  # the words: 4-bit at least 20 tokens/s, FP16 below 5 -> a ratio of at least 4


def _tokens_per_s(q4_bytes_per_weight: float, fp16_bytes_per_weight: float, params: float,
                  bandwidth_below_GBps: float) -> object:
    ratio = fp16_bytes_per_weight / q4_bytes_per_weight
    need_q4 = Q4_TPS * params * q4_bytes_per_weight / 1e9  # GB/s for 20 tokens/s, bandwidth-bound decode
    max_fp16 = FP16_TPS * params * fp16_bytes_per_weight / 1e9  # GB/s above which FP16 runs >= 5 tokens/s
    q4_here = bandwidth_below_GBps * 1e9 / (params * q4_bytes_per_weight)
    fp16_here = bandwidth_below_GBps * 1e9 / (params * fp16_bytes_per_weight)
    measured = (f"bytes per weight: 4-bit GGUF (Q4_0) {q4_bytes_per_weight:.4g}, FP16 {fp16_bytes_per_weight:.4g} → "
                f"byte ratio {ratio:.2f} (the words need ≥ {Q4_TPS:.0f}/{FP16_TPS:.0f} = {Q4_TPS / FP16_TPS:.0f}); "
                f"a bandwidth-bound decode of a {params / 1e9:.0f}B model needs ≥ {need_q4:.2f} GB/s for 20 tokens/s "
                f"in Q4_0 and < {max_fp16:.0f} GB/s for <5 in FP16; one core here reads < {bandwidth_below_GBps:.0f} "
                f"GB/s beyond the caches (measured above) → < {q4_here:.0f} tokens/s in Q4_0, < {fp16_here:.1f} "
                f"in FP16")
    if need_q4 >= max_fp16:
        return verdict("gguf-cpu-tokens", "false", measured,
                       f"a bandwidth-bound decode is at most {ratio:.2f}× faster in 4-bit than in FP16, short of "
                       f"20/5 = 4, so no machine gives both numbers" +
                       ("; on this core '<5 for FP16' holds and '20–30 for 4-bit' does not"
                        if q4_here < Q4_TPS and fp16_here < FP16_TPS else ""))
    if bandwidth_below_GBps <= need_q4:
        return verdict("gguf-cpu-tokens", "false", measured,
                       f"the byte ratio allows the pair, but below {need_q4:.0f} GB/s the 4-bit model cannot reach "
                       f"20 tokens/s")
    return verdict("gguf-cpu-tokens", "depends", measured,
                   f"on the machine's bandwidth: both numbers hold between {need_q4:.0f} and {max_fp16:.0f} GB/s")


# ----------------------------------------------------------------------------------------------------------
# 07 · GGUF "shines on CPU"

SHINES = 2.0  # "shines": read as at least twice the float model's decoding speed on the same core


def _shines(float_tps: float, gguf_tps: dict, protocol: str = "", file: str = "benchmarks/results/cpu_e2e.json"
            ) -> object:
    ratios = {k: v / float_tps for k, v in gguf_tps.items()}
    measured = (f"saved result {file} (python benchmarks/cpu_e2e.py): decoding tokens/s on one core, same weights"
                + (f" ({protocol})" if protocol else "") + f": torch float32 {float_tps:.1f}; "
                + ", ".join(f"{k} {v:.1f} ({ratios[k]:.1f}×)" for k, v in gguf_tps.items()))
    if all(r >= SHINES for r in ratios.values()):
        word, why = "true", (f"every 4-bit GGUF engine decodes at least {SHINES:.0f}× faster than float32 "
                             f"({min(ratios.values()):.1f}–{max(ratios.values()):.1f}×)")
    elif all(r <= 1.0 for r in ratios.values()):
        word, why = "false", "no 4-bit GGUF engine decodes faster than float32 here"
    else:
        word, why = "partly", (f"faster than float32 ({min(ratios.values()):.1f}–{max(ratios.values()):.1f}×), "
                               f"but not everywhere by the {SHINES:.0f}× that 'shines' asks")
    return verdict("gguf-shines-cpu", word, measured, why)


# ----------------------------------------------------------------------------------------------------------
# 07 · "GGUF leverages integer matrix multiplication via BLAS libraries"

def _blas(vec_dot_types: dict, dot_in_ggml: bool, blas_libraries: list) -> object:
    integer = integer_dot_products(vec_dot_types.values())
    via_blas = not dot_in_ggml
    acts = sorted(set(vec_dot_types.values()))
    measured = (f"llama.cpp's CPU library: activations of the {len(vec_dot_types)} quantized weight types "
                f"({', '.join(vec_dot_types)}) are rounded to {', '.join(acts)} (vec_dot_type); their vec_dot "
                f"functions live in libggml-cpu itself: {dot_in_ggml}; BLAS libraries linked: "
                f"{', '.join(blas_libraries) or 'none'}")
    parts = (f"integer matrix multiplication: {'true' if integer else 'false'}"
             f"{' (int8 activations × integer weight codes, SIMD dot products)' if integer else ''}; "
             f"via BLAS: {'true' if via_blas else 'false'}"
             f"{'' if via_blas else ' (ggml own code; a BLAS backend, where built, only gets float matrices)'}")
    return verdict("ggml-blas-cpu", blas_integer_word(integer, via_blas), measured, parts)


register(
    Claim("int4-speedup", words="4-bit weights give a 2–4× inference speed-up", notebook="06_triton_kernels",
          rule="true iff the measured int4 speed-up over bf16 at M = 1 (median over layer shapes) lies in [2, 4]; "
               "depends if that holds but large batches (M = 256) fall below 2×; false outside; not measurable "
               "without a GPU run (benchmarks/results/kernels.json)",
          judge=_int4_speedup),
    Claim("triton-kernel-exact", words="the Triton W4A16 kernel equals dequantize-then-matmul within the fp16 "
          "rounding bound", notebook="06_triton_kernels", source="kit",
          rule="true iff every output's error is at most the rounding bound (ratio ≤ 1) on both kernel paths",
          judge=_triton_exact),
    Claim("gguf-cpu-tokens", words="20–30 tokens/s for a 4-bit GGUF model vs <5 for FP16",
          notebook="07_cpu_kernels",
          rule="both on one machine: 4-bit ≥ 20 and FP16 < 5 tokens/s, i.e. a ratio ≥ 4; a 7B decode is "
               "bandwidth-bound, so the ratio is the byte ratio and tokens/s = bandwidth / bytes",
          judge=_tokens_per_s),
    Claim("gguf-shines-cpu", words="GGUF shines on CPU", notebook="07_cpu_kernels",
          rule="'shines' read as: a 4-bit GGUF model decodes at least 2× faster than the float32 model of the same "
               "weights on the same core (true if every engine does, false if none is faster, partly between)",
          judge=_shines),
    Claim("ggml-blas-cpu", words="GGUF leverages integer matrix multiplication via BLAS libraries",
          notebook="07_cpu_kernels",
          rule="two parts from the words: integer (every quantized type's vec_dot_type is an integer block type) "
               "and via BLAS (the dot products are a BLAS library's, not ggml's own); true if both, partly if one, "
               "false if neither",
          judge=_blas),
)
