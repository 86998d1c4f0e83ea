"""Claims of the gguf notebooks (see qlab.claims): notebook 05_gguf.

Byte layouts and quantizer outputs are exact (integer codes, fp16 fields), so most of these rules read exact
quantities; the quality rule reads a saved benchmark (labelled), and decode speed is not judged in a compared cell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .core import Claim, register, verdict


def _q4_0_overhead(overhead_bytes: int, block_weights: int, code_bytes: int):
    bits = 8 * overhead_bytes / block_weights
    word = "true" if overhead_bytes == 6 and abs(bits - 1.5) <= 0.15 else "false"
    total = 8 * (code_bytes + overhead_bytes) / block_weights
    return verdict(
        "q4_0-overhead", word,
        f"a Q4_0 block: {block_weights} weights in {code_bytes + overhead_bytes} bytes = {code_bytes} bytes of 4-bit "
        f"codes + {overhead_bytes} bytes of overhead = {bits:.2f} bits/weight overhead, {total:.2f} bits/weight in "
        f"all (read from the file's bytes)",
        f"one fp16 scale per {block_weights} weights: {overhead_bytes} bytes, "
        f"{'a third of' if 3 * overhead_bytes == 6 else 'not'} the claimed 6 bytes / 1.5 bits"
        if word == "false" else "the overhead is 6 bytes per block, 1.5 bits/weight")


def _q4_1_zero_point(extra_bytes: int, field_kind: str, offset_added_after_scaling: bool):
    word = "true" if extra_bytes * 8 == 16 else "false"
    return verdict(
        "q4_1-zero-point", word,
        f"a Q4_1 block is a Q4_0 block + {extra_bytes} bytes = {8 * extra_bytes} bits per 32 weights; the extra "
        f"field is '{field_kind}' and the weight is q·d + m: {offset_added_after_scaling}",
        "16 bits more per 32-weight block; they hold an fp16 minimum m (w = d·q + m), which plays the zero-point's "
        "role (z = −m/d, not an integer)" if word == "true" else f"the extra field is {8 * extra_bytes} bits, not 16")


def _naive_rounding(naive: Mapping[str, bool], naive_imatrix: Mapping[str, bool],
                    mse_ratio: Mapping[str, float] | None = None):
    """naive[t]: ggml's output for type t equals naive rounding (the type's own amax or min/max scale rule, then
    round-to-nearest) on every block, without an imatrix; naive_imatrix[t]: the same with an imatrix.
    mse_ratio[case]: ggml's MSE / naive rounding's MSE for the cases that differ (printed as a comparison only:
    the late digits of a mean depend on summation order)."""
    cases = {**dict(naive), **{f"{t}+imatrix": v for t, v in naive_imatrix.items()}}
    yes = [t for t, v in cases.items() if v]
    no = [t for t, v in cases.items() if not v]
    word = "true" if not no else "false" if not yes else "partly"
    lower = ""
    if mse_ratio and no:
        lower = (f"; every case that differs has a lower MSE than naive rounding (ratio ≤ 0.95): "
                 f"{all(mse_ratio[t] <= 0.95 for t in no)}")
    return verdict(
        "gguf-naive-rounding", word,
        f"per type, ggml's quantizer compared block by block with naive rounding (the type's amax or min/max "
        f"scale, round to nearest): identical on every block for {', '.join(yes) or 'none'}; different for "
        f"{', '.join(no) or 'none'}" + lower,
        {"true": "every type tested rounds naively",
         "false": "no type tested rounds naively: every one searches its scales",
         "partly": f"naive round-to-nearest for {', '.join(yes)}; a searched scale (and minimum) for "
                   f"{', '.join(no)}"}[word])


def _q4_k_m_quality(kl_km: Sequence[float], kl_same_size: Sequence[float], bits_km: float, bits_same: float,
                    same_size_type: str, source: str, live: str = ""):
    """KL to the float model of Q4_K_M and of a type of about the same size, by each engine (qlab, llama.cpp)."""
    matched = abs(bits_km / bits_same - 1) <= 0.02
    better = all(a < b for a, b in zip(kl_km, kl_same_size))
    word = ("true" if better else "false") if matched else "depends"
    return verdict(
        "q4_k_m-quality", word,
        f"saved benchmark result {source}: KL to the float model, qlab / llama.cpp: Q4_K_M "
        f"{' / '.join(f'{x:.3f}' for x in kl_km)} at {bits_km:.2f} bits/weight vs {same_size_type} "
        f"{' / '.join(f'{x:.3f}' for x in kl_same_size)} at {bits_same:.2f}" + (f"; {live}" if live else ""),
        (f"lower KL than {same_size_type} at the same file size ({100 * (bits_km / bits_same - 1):+.1f} %), by both "
         f"engines" if better else f"not lower than {same_size_type} at the same size") if matched else
        "the files differ in size by more than 2 %, so better quality may just be more bits")


def _q4_k_m_speed(bits_km: float, bits_q4_0: float):
    more = bits_km / bits_q4_0 - 1
    return verdict(
        "q4_k_m-speed", "not measurable here",
        "not timed: the times the llama.cpp sweep above could give mix opening the file, one 256-token prompt and "
        "scoring, and a decode timing on this shared 2-core machine varies several-fold between repetitions",
        f"what would measure it: llama.cpp decode tokens/s on a quiet target CPU, model loaded, prompt excluded, "
        f"≥ 3 repetitions, 'slower' iff lower by more than their spread; an estimate, not a timing: a bandwidth-bound "
        f"decode reads {100 * more:.0f} % more bytes for this Q4_K_M file than for Q4_0 (and on this model Q4_K_M is "
        f"mostly Q5_0, so even a timing would say little about Q4_K_M on a 7B model)")


INTEGER_ACTIVATION_TYPES = ("Q8_0", "Q8_1", "Q8_K")  # ggml's integer block formats for activations


def integer_dot_products(activation_types) -> bool:
    """Whether every given dot product rounds its activations to an integer block format (none given: no evidence)."""
    acts = list(activation_types)
    return bool(acts) and all(a in INTEGER_ACTIVATION_TYPES for a in acts)


def blas_integer_word(integer: bool, via_blas: bool) -> str:
    """The verdict on the two parts of "integer matmul via BLAS": true if both hold, partly if one, false if none."""
    return ("false", "partly", "true")[integer + via_blas]


def _blas_integer(vec_dot: Mapping[str, str], blas_libraries: Sequence[str], blas_backend: bool):
    """vec_dot: weight type -> activation type of ggml's CPU dot product; blas_libraries: BLAS libraries linked into
    llama.cpp; blas_backend: ggml's BLAS backend present."""
    quantized = {w: a for w, a in vec_dot.items() if w not in ("F32", "F16", "BF16")}
    integer = integer_dot_products(quantized.values())
    # ggml's BLAS backend, where built, gets float matrices (weights dequantized): BLAS never does the integer part
    word = blas_integer_word(integer, via_blas=False)
    blas = (f"BLAS libraries linked: {', '.join(blas_libraries) or 'none'}; ggml BLAS backend present: "
            f"{blas_backend}")
    return verdict(
        "gguf-blas-integer", word,
        f"activation format of every quantized weight type's dot product in ggml's CPU backend is an 8-bit integer "
        f"block type (Q8_0/Q8_1/Q8_K): {integer}; {blas}",
        ("integer matmul yes (ggml rounds activations to Q8 blocks and runs its own SIMD integer dot products), via "
         "BLAS no: " + ("this build links no BLAS" if not blas_libraries and not blas_backend else
                        "the BLAS backend only multiplies weights dequantized to float for large batches"))
        if integer else "ggml multiplies float activations for some quantized type, and BLAS does no integer part")


def _llama_crosscheck(f32_within: bool, q8_kl_ratio_ok: bool, q4_0_within: bool):
    ok = f32_within and q8_kl_ratio_ok and q4_0_within
    return verdict(
        "gguf-llama-crosscheck", "true" if ok else "false",
        f"(2) F32 file: llama.cpp within 0.5 % of qlab's perplexity: {f32_within}; (3) Q8_0, KL to llama.cpp of a "
        f"ggml-rounded qlab run / of llama.cpp with flash attention in (0.5, 2): {q8_kl_ratio_ok}; Q4_0 "
        f"perplexity within 2 %: {q4_0_within}",
        "qlab evaluates GGUF files as llama.cpp runs them, up to llama.cpp's own run-to-run spread" if ok else
        "at least one check failed (see the measured line)")


register(
    Claim("q4_0-overhead", words="Q4_0 ... 6 bytes overhead per block, ~1.5 bits/element", notebook="05_gguf",
          rule="true iff the overhead is 6 bytes (1.5 bits/weight, ±0.15) per 32-weight block — the overhead, not "
               "the total",
          judge=_q4_0_overhead),
    Claim("q4_1-zero-point", words="Q4_1 adds a 16-bit zero-point", notebook="05_gguf",
          rule="true iff a Q4_1 block is 16 bits larger than a Q4_0 block; the reason says what those bits hold",
          judge=_q4_1_zero_point),
    Claim("gguf-naive-rounding", words="GGUF uses naive rounding", notebook="05_gguf",
          rule="per type, with and without an imatrix: naive iff ggml's bytes equal the type's amax / min-max "
               "round-to-nearest on every block; true iff all naive, false iff none, partly otherwise (lists built "
               "by code)",
          judge=_naive_rounding),
    Claim("q4_k_m-quality", words="Q4_K_M is better quality [than the simple 4-bit types]", notebook="05_gguf",
          rule="true iff Q4_K_M's KL to the float model is lower than that of a type of the same file size (±2 %), "
               "by qlab's and llama.cpp's evaluation; depends when no same-size type was measured",
          judge=_q4_k_m_quality),
    Claim("q4_k_m-speed", words="[Q4_K_M is] slower [than the simple 4-bit types]", notebook="05_gguf",
          rule="slower iff decode tokens/s (model loaded, prompt excluded, ≥ 3 repetitions) is lower by more than the "
               "repetitions' spread; not timed in the notebook (machine- and load-dependent): not measurable here",
          judge=_q4_k_m_speed),
    Claim("gguf-blas-integer", words="GGUF leverages BLAS integer matmul", notebook="05_gguf",
          rule="two parts: 'integer matmul' true iff every quantized type's dot product takes 8-bit integer "
               "activation blocks; 'via BLAS' false because ggml's own code does the integer dot products (a BLAS "
               "backend only gets dequantized floats); partly iff integer yes and BLAS no",
          judge=_blas_integer),
    Claim("gguf-llama-crosscheck", source="kit",
          words="qlab's evaluation of a GGUF file agrees with llama.cpp running it", notebook="05_gguf",
          rule="true iff F32 within 0.5 %, the Q8_0 KL ratio in (0.5, 2) and Q4_0 within 2 % (margins in the cell)",
          judge=_llama_crosscheck),
)
