"""Claims of the basics notebooks (see qlab.claims): 00_tour, 01_affine_quantization, 02_group_size_and_outliers.

Bits, grids, groups, outliers and the accuracy cost of 4-bit weights. Each rule's threshold follows from the
claim's words; the notebooks pass only numbers that summation order cannot move at the printed precision (or
comparisons with a margin derived in the cell's comment), so the printed lines are the same on every CPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .core import Claim, register, verdict


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if not items:
        return ""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ------------------------------------------------------------------------------------------------------------
# 00_tour


def _rtn_lossless_on_grid(err_exact: float, err_dithered: float, n_layers: int):
    # float32 arithmetic: (q − z)·s and q·d + m differ by rounding (~1e-15 relative), so "lossless" means < 1e-12;
    # a real rounding error of a 4-bit grid is ~1e-2, so "not lossless" means > 1e-6
    lossless, lossy = err_exact < 1e-12, err_dithered > 1e-6
    ok = lossless and lossy
    return verdict(
        "rtn-lossless-on-grid", "true" if ok else "false",
        f"largest relative weight error over the {n_layers} decoder Linears: {err_exact:.0e} on the exact Q4_1 weights "
        f"(lossless means < 1e-12, float32 round-off), {err_dithered:.0e} on the dithered reference (> 1e-6)",
        "the exact weights already sit on Q4_1's grid, which this RTN setting reproduces; the dither moves them off "
        "it" if ok else ("the exact weights are not reproduced" if not lossless else
                         "the dithered weights are reproduced too: the dither did not move them off the grid"))


def _four_bit_under_1pct(reference_ppl: float, rows: Sequence[tuple[str, float, float, float]], protocol: str,
                         saved: Sequence[tuple[str, float, float, str]] = ()):
    # words: "<1 % accuracy loss". Two readings of "accuracy": perplexity (the relative increase must stay below
    # 1 %) or next-token agreement with the float model (top-1 agreement ≥ 99 %). rows: (setting, bits/weight,
    # perplexity, top-1 agreement) of the 4-bit settings measured live; the best one decides. saved: (setting,
    # float perplexity, quantized perplexity, source) of saved benchmark results, printed with their label as
    # context (the verdict rests on the live measurement)
    rise = {name: 100 * (ppl / reference_ppl - 1) for name, _, ppl, _ in rows}
    best_ppl = min(rows, key=lambda r: r[2])
    best_top1 = max(rows, key=lambda r: r[3])
    ppl_ok, top1_ok = rise[best_ppl[0]] < 1.0, best_top1[3] >= 0.99
    word = "true" if ppl_ok and top1_ok else ("false" if not (ppl_ok or top1_ok) else "depends")
    measured = (f"{protocol}: " + "; ".join(f"{name} ({bpw:.2f} bits/weight) perplexity {rise[name]:+.0f} % "
                                           f"({reference_ppl:.2f} → {ppl:.2f}), top-1 agreement {top1:.2f}"
                                           for name, bpw, ppl, top1 in rows))
    saved_rise = {name: 100 * (q / ref - 1) for name, ref, q, _ in saved}
    if saved:
        measured += "; saved results, not re-measured here: " + "; ".join(
            f"{name} {ref:.2f} → {q:.2f} ({saved_rise[name]:+.1f} %, {source})" for name, ref, q, source in saved)
    why = (f"the best 4-bit setting measured here raises perplexity by {rise[best_ppl[0]]:.0f} % and agrees with "
           f"the float model on {100 * best_top1[3]:.0f} % of next tokens")
    if saved:
        best_saved = min(saved_rise, key=saved_rise.get)
        above = "also stays above" if saved_rise[best_saved] >= 1 else "stays below"
        why += f"; the best saved result, {best_saved.split(' (')[0]}, {above} 1 % ({saved_rise[best_saved]:+.1f} %)"
    if word == "false":
        why += ("; the figure is usually quoted for 7B+ models, which lose less at 4 bits than this 135M model "
                "(not measured here)")
    elif word == "depends":
        why += "; whether that is '<1 % loss' depends on reading 'accuracy' as perplexity or as top-1 agreement"
    return verdict("four-bit-under-1pct", word, measured, why)


# ------------------------------------------------------------------------------------------------------------
# 01_affine_quantization


def _sr_unbiased(z_max: float, n_values: int, n_draws: int, rtn_max_bias: float):
    # SR: with 401 independent values a true zero mean exceeds 5 standard errors with probability ~2e-4 in all,
    # so z_max < 5 is the unbiasedness test; RTN: "a bias up to s/2" means the largest |bias| reaches (nearly)
    # s/2 and never passes it: 0.45 s ≤ max ≤ 0.5 s (+1e-9 for float round-off). rtn_max_bias is in units of s.
    sr_ok = z_max < 5
    rtn_ok = 0.45 <= rtn_max_bias <= 0.5 + 1e-9
    return verdict(
        "sr-unbiased", "true" if sr_ok and rtn_ok else "false",
        f"{n_values} values, {n_draws} seeded SR draws each (s = 0.25): largest |SR bias| = {z_max:.1f} standard "
        f"errors (unbiased: < 5 over {n_values} values); largest |RTN bias| = {rtn_max_bias:.3f} s",
        ("SR's mean lands on w within its sampling noise everywhere, while RTN misses by up to half a step"
         if sr_ok and rtn_ok else
         ("SR's mean misses w by more than sampling noise allows" if not sr_ok else
          "RTN's largest bias is not half a step")))


def _noise_halves_per_bit(mse_by_bits: Mapping[int, float], setting: str):
    # words: the noise power "halves" with each extra bit: a ratio of 2 (−3.01 dB) per bit; ±10 % → [1.8, 2.2]
    bits = sorted(mse_by_bits)
    ratios = {b: mse_by_bits[b] / mse_by_bits[b + 1] for b in bits[:-1]}
    inside = [b for b, r in ratios.items() if 1.8 <= r <= 2.2]
    word = "true" if len(inside) == len(ratios) else ("false" if not inside else "partly")
    lo, hi = min(ratios.values()), max(ratios.values())
    return verdict(
        "noise-halves-per-bit", word,
        f"{setting}: the noise power (MSE) falls per extra bit by "
        + ", ".join(f"{r:.2f}× ({b}→{b + 1})" for b, r in ratios.items())
        + " ('halves' = 2×, i.e. −3.0 dB, ±10 %)",
        f"it quarters: one more bit halves the step Δ and MSE = Δ²/12 falls 4× (−6.02 dB); measured {lo:.2f}–"
        f"{hi:.2f}×, more than 4× at low bits because the 2^b − 1 steps more than double"
        if word == "false" else f"{len(inside)} of {len(ratios)} steps lie within 10 % of 2×")


def _mse_law_uniform(ratio_by_bits: Mapping[int, float], gain_by_step: Mapping[int, float],
                     ideal_by_step: Mapping[int, float]):
    # Δ²/12 part: 2^18 uniform values give the MSE a relative sampling error of ~0.3 %, so "≈" is judged at 2 %;
    # dB part: the measured gain per bit must match 20·log10(L_{b+1}/L_b) within 0.1 dB
    worst = max(abs(r - 1) for r in ratio_by_bits.values())
    worst_db = max(abs(gain_by_step[b] - ideal_by_step[b]) for b in gain_by_step)
    law_ok, db_ok = worst <= 0.02, worst_db <= 0.1
    near6 = [b for b in sorted(gain_by_step) if all(abs(gain_by_step[c] - 6.02) < 0.5 for c in gain_by_step
                                                    if c >= b)]
    word = "true" if law_ok and db_ok else ("false" if not (law_ok or db_ok) else "partly")
    bits = sorted(ratio_by_bits)
    return verdict(
        "mse-law-uniform", word,
        f"2^18 uniform values, asymmetric per tensor, float zero-point, {bits[0]}–{bits[-1]} bits: MSE/(Δ²/12) within "
        f"{worst:.3f} of 1; dB gained per bit within {worst_db:.2f} dB of 20·log10(L_b+1/L_b) ("
        + ", ".join(f"{gain_by_step[b]:.2f}" for b in sorted(gain_by_step)) + " dB)"
        + (f"; within 0.5 dB of 6.02 dB from {near6[0]} bits on" if near6 else ""),
        "the error is uniform over one step at every width; the gain per bit exceeds 6.02 dB at low bits only "
        "because 2^b − 1 steps more than double" if word == "true" else
        ("MSE ≈ Δ²/12 holds but the dB gained per bit departs from the step count's prediction" if law_ok else
         "MSE departs from Δ²/12 by more than 2 %" + ("" if db_ok else " and the dB per bit from its prediction")))


def _mse_law_real(ratio_by_bits: Mapping[int, float], layer: str):
    # real weights: a 5 % band around Δ²/12 (the law's uniform-error assumption, not sampling noise, is tested:
    # 331,776 weights give ~0.3 % sampling error)
    bits = sorted(ratio_by_bits)
    ok = {b: abs(ratio_by_bits[b] - 1) < 0.05 for b in bits}
    from_b = next((b for b in bits if all(ok[c] for c in bits if c >= b)), None)
    word = "true" if from_b == bits[0] else ("false" if from_b is None else "partly")
    fails = [b for b in bits if not ok[b]]
    return verdict(
        "mse-law-real", word,
        f"{layer}, symmetric per output channel: MSE/(Δ²/12) = "
        + ", ".join(f"{ratio_by_bits[b]:.2f} ({b} bits)" for b in bits),
        f"within 5 % from {from_b} to {bits[-1]} bits; at {_join([str(b) for b in fails])} bit(s) the step is so "
        f"coarse that most weights fall into the zero bin and their error is their own size (< Δ/2), not uniform"
        if word == "partly" else ("within 5 % at every width" if word == "true" else
                                  "outside 5 % of Δ²/12 at the widest step measured"))


def _clipping_pays(results: Mapping[int, tuple[float, float, float]], layer: str):
    # words: "the total MSE drops": the best clip's MSE must lie below the unclipped MSE; a drop of more than 1 %
    # (far beyond float round-off of a mean over 331,776 squared errors) counts. results: bits → (best clip c,
    # MSE at c, MSE unclipped)
    gains = {b: unclipped / best for b, (_, best, unclipped) in results.items()}
    drops = [b for b, g in gains.items() if g > 1.01]
    word = "true" if len(drops) == len(gains) else ("false" if not drops else "partly")
    return verdict(
        "clipping-pays", word,
        f"{layer}, symmetric per channel, clip fractions 1.0–0.4 of max|w|: "
        + "; ".join(f"{b}-bit: the best clip, {c:.1f}, lowers the MSE {gains[b]:.2f}× below the unclipped one"
                    for b, (c, _, _) in results.items()),
        "the smaller step for the many weights inside the range outweighs the larger error of the few clipped ones"
        if word == "true" else (f"the MSE drops at {_join([str(b) for b in drops])} bit(s) only" if drops else
                                "no clip lowers the MSE by more than 1 %"))


def _mse_law_on_grid(ratio: float, predicted: float, setting: str):
    # words: "MSE ≈ Δ²/12": within 5 % of 1 holds; anything else (here: an error of exactly zero up to float
    # round-off, ratio < 1e-6) does not
    word = "true" if abs(ratio - 1) < 0.05 else "false"
    shown = "0 (exact)" if ratio < 1e-9 else f"{ratio:.3f}"
    return verdict(
        "mse-law-on-grid", word, f"{setting}: MSE/(Δ²/12) = {shown} (Δ²/12 = {predicted:.1e})",
        "the weights already sit on this grid, so the error is 0, not Δ²/12 (a trap when judging quantizers on "
        "prior-quantized models)" if ratio < 1e-6 else
        ("the error is uniform over one step" if word == "true" else "the error is not uniform over one step"))


# ------------------------------------------------------------------------------------------------------------
# 02_group_size_and_outliers


def _outlier_wastes_grid(factor: float, scale_ratio: float, levels_before: int, levels_after: int,
                         mse_ratio: float, setting: str):
    # "stretches the scale": the scale grows; "wastes levels": fewer distinct levels used; "degrades the others":
    # their MSE rises by more than 1.5× (the rule does not hinge on it: the measured rise is far larger)
    stretch, waste, degrade = scale_ratio > 1.0, levels_after < levels_before, mse_ratio > 1.5
    ok = stretch and waste and degrade
    return verdict(
        "outlier-wastes-grid", "true" if ok else ("false" if not (stretch or waste or degrade) else "partly"),
        f"{setting}, one weight set to {factor:g}× max|w|: scale ×{scale_ratio:.1f}, levels used {levels_before} → "
        f"{levels_after}, MSE of the other weights ×{mse_ratio:.0f}",
        f"the outlier sets the step, so the other weights share {levels_after} levels instead of {levels_before} and "
        f"their error grows ~(m·Δ)²/12" if ok else "not all three effects appear")


def _activation_outliers(n_10_to_100: int, n_over_100: int, channels: int, layers_with: int, layers: int,
                         max_ratio: float, over_100_at: str, protocol: str):
    # "a few": the channels at ≥ 10× the median are under 1 % of all channels (and exist);
    # "10–100×": their ratios stay within the range, with 2× tolerance at the top (≤ 200×)
    n = n_10_to_100 + n_over_100
    few = 0 < n and n / channels < 0.01
    in_range = n > 0 and max_ratio <= 200
    word = "true" if few and in_range else ("false" if not (few or in_range) else "partly")
    measured = (f"{protocol}: {n_10_to_100} channels in [10, 100)× the layer's median channel and {n_over_100} "
                f"above 100×, of {channels} ({100 * n / channels:.2f} %), in {layers_with} of {layers} layers; "
                f"largest ratio {max_ratio:.0f}×")
    if word == "partly" and few:
        why = (f"few ({100 * n / channels:.2f} % of channels) and {n_10_to_100} of {n} in 10–100×, but {n_over_100} "
               f"exceed 100× ({over_100_at}), the largest {max_ratio:.0f}× — {max_ratio / 100:.0f}× above the stated "
               f"top")
    elif word == "true":
        why = f"{100 * n / channels:.2f} % of channels, none beyond 2× the stated top"
    elif word == "partly":
        why = f"the ratios stay within the range, but {100 * n / channels:.1f} % of channels is not 'a few'"
    else:
        why = "no channel reaches 10× the median" if n == 0 else "neither few nor within 10–100×"
    return verdict("activation-outliers", word, measured, why)


def _outliers_dominate_error(layers: Sequence[tuple[str, int, int, float, float]], setting: str):
    # words: errors in the outlier columns "dominate" e_out: in a layer, the columns of the channels ≥ 10× the
    # median carry more than half of the layer's RTN output error. layers: (name, outlier channels, channels,
    # share of the output error, largest ratio)
    shares = sorted(s for *_, s, _ in layers)
    n = len(layers)
    median = shares[n // 2] if n % 2 else (shares[n // 2 - 1] + shares[n // 2]) / 2
    dominated = [row for row in layers if row[3] > 0.5]
    word = "true" if len(dominated) == n else ("false" if not dominated else "partly")
    big = [row for row in layers if row[4] >= 100]
    n_out = sum(r[1] for r in layers)
    n_ch = sum(r[2] for r in layers)
    measured = (f"{setting}: in the {n} layers with channels ≥ 10× the median, those channels ({n_out} of {n_ch} "
                f"inputs, {100 * n_out / n_ch:.1f} %) carry {100 * shares[0]:.0f}–{100 * shares[-1]:.0f} % of the "
                f"layer's output error (median {100 * median:.0f} %); more than half in {len(dominated)} of {n} layers")
    if big:
        measured += "; where a channel exceeds 100×: " + ", ".join(
            f"{name} ({ratio:.0f}×) {100 * s:.1f} %" for name, _, _, s, ratio in big)
    if word == "partly":
        types = sorted({name.rsplit(".", 1)[-1] for name, *_ in dominated})
        small = [row for row in layers if row[4] < 100]
        why = (f"they dominate in {len(dominated)} of {n} layers ({_join(types)}): in "
               f"{sum(row[3] > 0.5 for row in big)} of {len(big)} where a channel exceeds 100×, in "
               f"{sum(row[3] > 0.5 for row in small)} of {len(small)} where the largest stays below 100× — a peak of "
               f"10–100× the median does not by itself make a column carry most of the error")
    elif word == "true":
        why = "in every layer with outlier channels their columns carry most of the output error"
    else:
        why = "in no layer do the outlier channels' columns carry half of the output error"
    return verdict("outliers-dominate-error", word, measured, why)


def _g128_half_bit(overheads: Mapping[str, float], near_half: Sequence[str]):
    # "~0.5 bits": within ±20 % of 0.5 ([0.4, 0.6]) for one of the usual 4-bit layouts of a 128 group
    hits = [z for z, v in overheads.items() if 0.4 <= v <= 0.6]
    word = "true" if hits else "false"
    lo, hi = min(overheads.values()), max(overheads.values())
    return verdict(
        "g128-half-bit", word,
        "stored buffers of a 4-bit g128 down_proj: overhead "
        + ", ".join(f"{v:.3f} bits/weight ({z})" for z, v in overheads.items()),
        f"one fp16 scale per 128 weights is 16/128 = 0.125 bits, 0.156–0.25 with a zero-point: {0.5 / hi:.0f}–"
        f"{0.5 / lo:.0f}× less than claimed; 0.5 bits/weight is what {_join(list(near_half))} cost"
        if word == "false" else f"the {_join(hits)} layout costs ~0.5 bits/weight")


def _g128_sweet_spot(fits_every_layer: bool, knee: str, finest: str, sweep: str, layer_errors: Mapping[int, float],
                     layer: str):
    # words: "128 is the sweet spot". Whole model: the knee (the cheapest group within 5 % of the best perplexity)
    # should sit at 128 ± one power of 2 (64–256); when it lands on the finest group measured there is no knee
    # inside the range. Where 128 fits (a 1536-wide down_proj): a sweet spot at 128 means halving g below 128
    # gains clearly less (< half) than halving it to 128 did (relative output-error reduction per halving).
    gs = sorted(layer_errors, reverse=True)
    cuts = {(a, b): 1 - layer_errors[b] / layer_errors[a] for a, b in zip(gs, gs[1:])}
    to128 = next((c for (a, b), c in cuts.items() if b == 128), None)
    below = [c for (a, b), c in cuts.items() if a <= 128]
    layer_knee = to128 is not None and below and max(below) < 0.5 * to128
    no_knee = knee == finest
    measured = (f"{sweep}: " + (f"the cheapest group within 5 % of the best perplexity is the finest measured, "
                                f"g{knee}: no knee inside the range" if no_knee else f"knee at g{knee}")
                + f"; {layer} output error: " + ", ".join(f"g{g} {100 * e:.2f} %" for g, e in layer_errors.items())
                + " (each halving of g removes " + ", ".join(f"{100 * c:.0f} %" for c in cuts.values()) + ")")
    if not fits_every_layer:
        word = "not measurable here"
        why = ("128 does not divide this model's 576-wide rows, so no whole-model g128 exists; "
               + ("where 128 fits (down_proj), every halving of g keeps removing a similar share of the error — no "
                  "sign of a sweet spot at 128" if not layer_knee else
                  "where 128 fits (down_proj), the gains do flatten below 128"))
    else:
        knee_in = (not no_knee) and knee.isdigit() and 64 <= int(knee) <= 256
        word = "true" if knee_in else "false"
        why = (f"the measured knee g{knee} lies within 64–256" if knee_in else
               "no knee inside the measured range" if no_knee else f"the measured knee g{knee} lies outside 64–256")
    return verdict("g128-sweet-spot", word, measured, why)


# ------------------------------------------------------------------------------------------------------------

register(
    Claim("rtn-lossless-on-grid", source="kit", notebook="00_tour",
          words="RTN at asymmetric 4-bit, group 32, float zero-point is lossless on the exact (grid-aligned) weights, "
                "not on the dithered reference",
          rule="true iff the largest relative weight error is < 1e-12 on the exact weights (float32 round-off) and "
               "> 1e-6 on the dithered ones", judge=_rtn_lossless_on_grid),
    Claim("four-bit-under-1pct", notebook="00_tour", words="<1 % accuracy loss at 4-bit",
          rule="true iff the best 4-bit setting measured raises perplexity by < 1 % and keeps top-1 agreement "
               "≥ 99 %; false iff neither; depends iff only one reading of 'accuracy' holds",
          judge=_four_bit_under_1pct),
    Claim("sr-unbiased", source="kit", notebook="01_affine_quantization",
          words="E[SR(w)] = w for every w (stochastic rounding is unbiased); RTN has a per-value bias up to s/2",
          rule="true iff the largest |SR bias| over the values is < 5 standard errors and RTN's largest |bias| is "
               "within [0.45, 0.5] s", judge=_sr_unbiased),
    Claim("noise-halves-per-bit", notebook="01_affine_quantization", words="noise power halves per bit",
          rule="'halves' = a noise-power ratio of 2 (−3.0 dB) per extra bit, ±10 %: true iff every measured ratio "
               "lies in [1.8, 2.2], false iff none does", judge=_noise_halves_per_bit),
    Claim("mse-law-uniform", source="kit", notebook="01_affine_quantization",
          words="MSE ≈ Δ²/12 on uniform data, and one more bit buys 20·log10(L_b+1/L_b) dB (L_b = 2^b − 1 steps), "
                "tending to 6.02 dB",
          rule="true iff MSE/(Δ²/12) is within 2 % of 1 at every width and the dB gained per bit within 0.1 dB of "
               "the step-count prediction", judge=_mse_law_uniform),
    Claim("mse-law-real", source="kit", notebook="01_affine_quantization",
          words="MSE ≈ Δ²/12 on real weights",
          rule="within 5 % of Δ²/12: true at every width, partly from some width on, false otherwise",
          judge=_mse_law_real),
    Claim("clipping-pays", source="kit", notebook="01_affine_quantization",
          words="at low bits clipping the range is worth it — the total MSE drops",
          rule="true iff the best clip fraction lowers the MSE by more than 1 % at every low width measured (3 and "
               "4 bits)", judge=_clipping_pays),
    Claim("mse-law-on-grid", source="kit", notebook="01_affine_quantization",
          words="MSE ≈ Δ²/12 also on weights that already sit on a quantization grid",
          rule="true iff MSE/(Δ²/12) is within 5 % of 1", judge=_mse_law_on_grid),
    Claim("outlier-wastes-grid", source="kit", notebook="02_group_size_and_outliers",
          words="one large weight in a group stretches the scale, wastes levels and degrades the others",
          rule="true iff the scale grows, fewer levels are used and the other weights' MSE rises more than 1.5×",
          judge=_outlier_wastes_grid),
    Claim("activation-outliers", notebook="02_group_size_and_outliers",
          words="a few activation channels have magnitudes 10–100× the median",
          rule="'a few': the channels ≥ 10× the median are < 1 % of all; '10–100×': none beyond 200× (2× tolerance "
               "at the top); true iff both, partly iff one", judge=_activation_outliers),
    Claim("outliers-dominate-error", notebook="02_group_size_and_outliers",
          words="weight errors in the columns that meet the outlier channels dominate the layer's output error",
          rule="per layer, the columns of the channels ≥ 10× the median carry > 50 % of the RTN output error: true "
               "in every such layer, partly in some, false in none", judge=_outliers_dominate_error),
    Claim("g128-half-bit", notebook="02_group_size_and_outliers",
          words="a group size of 128 adds ~0.5 bits per element",
          rule="true iff a usual 4-bit g128 layout (no zero, 4-bit zero, fp16 zero) stores 0.4–0.6 bits/weight "
               "beyond the codes", judge=_g128_half_bit),
    Claim("g128-sweet-spot", notebook="02_group_size_and_outliers",
          words="a group size of 128 is the sweet spot",
          rule="the knee (cheapest group within 5 % of the best perplexity) at 64–256; not measurable here when "
               "128 does not divide every row (then the layers where it fits show whether gains flatten below 128)",
          judge=_g128_sweet_spot),
)
