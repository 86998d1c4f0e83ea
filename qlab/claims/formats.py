"""Claims of notebook 09_float_formats (see qlab.claims): FP8 / FP4 formats, activation quantization, W8A8.

Each rule's threshold follows from the claim's words. The live measurement (activations of one Linear) depends on
float summation order, so its rule prints only comparisons far from their thresholds (the notebook's comment
derives the margins); the W8A8 rules read a committed benchmark result, whose numbers are exact file contents.
"""

from __future__ import annotations

from collections.abc import Sequence

from .core import Claim, register, verdict

# "match": a perplexity within 1 % of the float model's; and KL(float ‖ quantized) ≤ 0.01 nats per token, the same
# size as a 1 % perplexity change (ln 1.01 = 0.00995 nats of cross-entropy), so that a row whose perplexity matches
# by compensating errors (some tokens better, others worse) but whose predictions moved does not count
MATCH_PPL, MATCH_KL = 0.01, 0.01
COARSE = 2.0  # "too coarse": per-tensor at least doubles per-token's KL (it adds more error than all of per-token's)


def _fp8_range(int8_rest: float, e4m3_rest: float, e5m2_rest: float, int8_out: float, e4m3_out: float,
               n_rest: int, n_out: int, setting: str):
    """Relative errors ‖x̂ − x‖/‖x‖ with ONE per-tensor absmax scale for all three formats, over the outlier
    channels (n_out) and the other channels (n_rest)."""
    ratio = int8_rest / e4m3_rest
    word = "true" if ratio >= 2 else "partly" if ratio > 1 else "false"
    why = {"true": "with the same per-tensor scale, INT8's uniform step (absmax/127) is far too large for the "
                   "ordinary channels, while E4M3's exponent gives them the same relative precision as the "
                   "outliers: the range, not the bit count, decides",
           "partly": "E4M3 is better on the ordinary channels, but by less than 2×: the range helps, it is not "
                     "crucial here",
           "false": "INT8 is as good as E4M3 on the ordinary channels: the range does not matter for this tensor"}[word]
    return verdict(
        "fp8-range-activations", word,
        f"{setting}, one per-tensor absmax scale for INT8, E4M3 and E5M2: on the {n_rest} ordinary channels INT8's "
        f"relative error ≥ 2× E4M3's: {ratio >= 2}, ≥ 10×: {ratio >= 10}; on the {n_out} outlier channels INT8's "
        f"error below E4M3's: {int8_out < e4m3_out}; E5M2 (14 more binades, 1 mantissa bit less) above E4M3 on the "
        f"ordinary channels: {e5m2_rest > e4m3_rest}", why)


def _missing(claim_id: str, missing: str):
    return verdict(claim_id, "not measurable here", f"{missing} is not in this checkout",
                   f"the measurement is a whole-model benchmark: run python benchmarks/w8a8.py (it writes {missing}), "
                   f"then re-execute this notebook")


def _fp8_w8a8(ppl_float: float = 0.0, ppl: float = 0.0, kl: float = 0.0, top1: float = 0.0, setting: str = "",
              source: str = "", weights_only: dict | None = None, missing: str = ""):
    if missing:  # the saved result is absent: say what would measure it
        return _missing("fp8-w8a8", missing)
    d = ppl / ppl_float - 1
    ppl_ok, kl_ok = abs(d) < MATCH_PPL, kl <= MATCH_KL
    word = "true" if ppl_ok and kl_ok else "partly" if ppl_ok else "false"
    extra = ""
    if weights_only is not None:
        dw = weights_only["perplexity"] / ppl_float - 1
        extra = (f"; {weights_only['setting']}: perplexity {weights_only['perplexity']:.2f} ({100 * dw:+.2f} %), KL "
                 f"{weights_only['kl']:.4f}")
    why = {"true": "perplexity within 1 % and KL ≤ 0.01 nats: the FP8 model predicts like the float one",
           "partly": "the perplexity matches within 1 %, but KL above 0.01 nats shows the predictions moved",
           "false": f"the perplexity is {100 * d:+.2f} % off the float model's, beyond 1 %" +
                    (": on this 135M model even the E4M3 weights alone cost more than 'matching' allows"
                     if weights_only is not None and abs(weights_only["perplexity"] / ppl_float - 1) >= MATCH_PPL
                     else "")}[word]
    return verdict(
        "fp8-w8a8", word,
        f"saved benchmark result {source}: {setting}: perplexity {ppl:.2f} vs float32 {ppl_float:.2f} "
        f"({100 * d:+.2f} %; within 1 %: {ppl_ok}), KL {kl:.4f} nats (≤ 0.01: {kl_ok}), top-1 agreement "
        f"{top1:.3f}{extra}", why)


def _per_tensor_coarse(pairs: Sequence[dict] = (), source: str = "", missing: str = ""):
    """pairs: per activation format {"fmt", "static" (setting of the best per-tensor static row), "static_kl",
    "token_kl", "static_ppl", "token_ppl"}; the perplexities as ratios to float."""
    if missing or not pairs:
        return _missing("per-tensor-too-coarse", missing or source)
    coarse, parts = [], []
    for p in pairs:
        r = p["static_kl"] / p["token_kl"]
        coarse.append(r >= COARSE)
        parts.append(f"{p['fmt']}: {p['static']} KL {p['static_kl']:.4f} (perplexity {100 * (p['static_ppl'] - 1):+.2f}"
                     f" %) vs per-token dynamic KL {p['token_kl']:.4f} ({100 * (p['token_ppl'] - 1):+.2f} %): "
                     f"{r:.1f}×")
    word = "true" if all(coarse) else "false" if not any(coarse) else "depends"
    fmts = [p["fmt"] for p in pairs]
    why = {"true": "one static range per tensor at least doubles the KL of per-token scaling in every format measured",
           "false": "per-tensor static scaling costs less than twice per-token's KL in every format measured",
           "depends": "too coarse for " + ", ".join(f for f, c in zip(fmts, coarse) if c) + " (a uniform grid, whose "
                      "step the outliers set), not for " + ", ".join(f for f, c in zip(fmts, coarse) if not c) +
                      " (whose exponent keeps the small values' relative precision)"}[word]
    return verdict("per-tensor-too-coarse", word, f"saved benchmark result {source}: " + "; ".join(parts), why)


register(
    Claim("fp8-range-activations",
          words="FP8's dynamic range is crucial for activations",
          notebook="09_float_formats",
          rule="on real activations with outlier channels and ONE per-tensor absmax scale for both: true iff INT8's "
               "relative error on the ordinary (non-outlier) channels is ≥ 2× E4M3's ('crucial': the same 8 bits "
               "without the exponent at least double the error), partly iff E4M3 is better by less than 2×, false "
               "iff not better",
          judge=_fp8_range),
    Claim("fp8-w8a8",
          words="FP8 W8A8 with per-channel weight and per-token activation scales can match FP16 perplexity",
          notebook="09_float_formats",
          rule="E4M3 weights per output channel and E4M3 activations per token, every decoder Linear, against the "
               "float model: true iff perplexity within 1 % and KL ≤ 0.01 nats/token (the size of a 1 % perplexity "
               "change, ln 1.01); partly iff only the perplexity is within 1 %; false iff it is not",
          judge=_fp8_w8a8),
    Claim("per-tensor-too-coarse",
          words="per-tensor scaling is too coarse",
          notebook="09_float_formats",
          rule="W8A8, per-channel weights: for each activation format, the best per-tensor static calibration "
               "(max / percentile / MSE) against per-token dynamic scales; 'too coarse' iff its KL is ≥ 2× "
               "per-token's (the coarse scale adds more error than the whole per-token scheme has); true iff so for "
               "every format, false iff for none, depends iff it differs by format",
          judge=_per_tensor_coarse),
)
