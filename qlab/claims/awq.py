"""Claims of the awq notebooks (see qlab.claims): notebook 04_awq.

Each rule's threshold follows from the claim's words; where a notebook cell passes order-dependent numbers (grid
argmins, float residuals) the rule prints only comparisons far from the thresholds, so the lines are the same on
every CPU (the notebook's comments derive the margins).
"""

from __future__ import annotations

from collections.abc import Sequence

from .core import Claim, register, verdict

# ------------------------------------------------------------------------------------------------------------
# AWQ paper §3.1 / §3.2 (C19, C20)


def _salient_by_activation(act_ratio: float, weight_ratio: float, random_ratio: float, setting: str):
    # "far more": keeping the activation-chosen 1 % removes at least 20 % of RTN's error (ratio ≤ 0.8, 1.25× gain)
    # and gains 1.2× more than keeping the weight-norm-chosen 1 %
    act_gain, weight_gain = 1 / act_ratio, 1 / weight_ratio
    ok = act_gain > 1.25 and act_gain > 1.2 * weight_gain
    return verdict(
        "awq-salient-activation", "true" if ok else "false",
        f"output error / RTN's with 1 % of the input channels kept in float ({setting}): {act_ratio:.2f} chosen by "
        f"activation, {weight_ratio:.2f} by weight norm, {random_ratio:.2f} at random",
        f"the activation-chosen channels remove {100 * (1 - act_ratio):.0f} % of RTN's error, the weight-norm-chosen "
        f"ones {100 * (1 - weight_ratio):.0f} %" + ("" if ok else ": not 'far more'"))


def _alpha_search(best_ratio_below: bool, alpha_inside: bool, setting: str, threshold: float = 0.75):
    ok = best_ratio_below and alpha_inside
    return verdict(
        "awq-alpha-search", "true" if ok else "false",
        f"{setting}: best α on the grid leaves ≤ {threshold} of RTN's output error: {best_ratio_below}; that α lies "
        f"strictly inside (0, 1): {alpha_inside}",
        "an α between plain RTN (0) and full trust in the activations (1) removes more than a quarter of RTN's error"
        if ok else "the search does not beat RTN by a quarter with an α inside (0, 1)")


# ------------------------------------------------------------------------------------------------------------
# the kit's own claims, printed in claim form (C21, C22, C24, C25)


def _linear_objective(lin_at_module_ok: bool, module_gain_small: bool):
    ok = lin_at_module_ok and module_gain_small
    return verdict(
        "awq-linear-objective", "true" if ok else "false",
        f"at self_attn's output, the α chosen on the q/k/v outputs leaves ≤ 0.6 of RTN's error: {lin_at_module_ok}; "
        f"searching at self_attn's output instead gains < 0.15 of RTN's error: {module_gain_small}",
        "the cheap objective already finds an α that is good where the model sees the error" if ok else
        "the α chosen on the Linears' outputs is poor at the module's output, or the module search gains a lot")


def _fold_exact(delta_below: bool, positions: int, logits: int, tol: float = 1e-3):
    return verdict(
        "awq-fold-exact", "true" if delta_below else "false",
        f"max |Δlogit| over {positions} positions × {logits} logits ≤ {tol:g}: {delta_below}",
        "W·diag(s) and diag(s)⁻¹x cancel; what is left is float32 rounding (≥ 14× below the tolerance)"
        if delta_below else "the logits moved by more than float32 rounding can: the fold is wrong")


def _clip_search(one_sided_gain: float, two_sided_gain: float, threshold: float = 0.10):
    # arguments: fraction of the unclipped block-diagonal output error removed (0.19 = 19 % lower)
    ok = one_sided_gain >= threshold and two_sided_gain > one_sided_gain
    return verdict(
        "awq-clip", "true" if ok else "false",
        f"down_proj after scaling: clipping with one factor per group lowers the output error by ≥ "
        f"{100 * threshold:.0f} %: {one_sided_gain >= threshold}; two factors (lower and upper end) lower it further: "
        f"{two_sided_gain > one_sided_gain}",
        "the groups trade a little error on their extreme weights for a finer grid on all others" if ok else
        "clipping does not lower the error as claimed")


def _beats_rtn_on_groups(n_better: int, n_groups: int, worst_below: bool):
    frac = n_better / n_groups
    return verdict(
        "awq-groups-beat-rtn", "true" if frac >= 0.9 else "false",
        f"held-out samples, blocks 0–3: AWQ's output error below RTN's on {n_better} of {n_groups} scale groups "
        f"({100 * frac:.0f} %); every group's ratio AWQ/RTN ≤ 0.95: {worst_below}",
        "the scales and clipping chosen on 6 samples also help on the 2 held out" if frac >= 0.9 else
        "AWQ loses to RTN on more than 10 % of the groups")


# ------------------------------------------------------------------------------------------------------------
# the article's claims (C23, C26, C27, C28, C29)


def _output_channels(rows_scaled: bool, cols_scaled: bool, fold_lands_before: bool):
    if rows_scaled and not cols_scaled:
        word, why = "true", "the weight's rows are rescaled, its columns are not"
    elif cols_scaled and not rows_scaled:
        word = "false"
        why = ("AWQ scales the INPUT channels (columns) of the Linear it quantizes; only the op before it (a norm, "
               "the previous Linear's rows) gets 1/s on its outputs" +
               ("" if fold_lands_before else " — and here the fold did not land there: a bug"))
    else:
        word, why = "false", "neither pattern is clean: rows and columns both change (a broken fold)"
    return verdict(
        "awq-output-channels", word,
        f"W_after / W_before of q_proj and down_proj: constant down each column (rows scaled): {rows_scaled}; "
        f"varies along each row (columns scaled): {cols_scaled}; 1/s lands on the outputs of the op before within "
        f"1e-5: {fold_lands_before}", why)


def _five_percent_scaled(fractions: Sequence[float], awq_beats_rtn_fraction: float):
    fr = sorted(fractions)
    n_over = sum(f > 0.05 for f in fr)
    healthy = awq_beats_rtn_fraction >= 0.9
    med = fr[len(fr) // 2] if len(fr) % 2 else (fr[len(fr) // 2 - 1] + fr[len(fr) // 2]) / 2
    if n_over and healthy:
        word = "false"
        why = ("a well-calibrated run (AWQ beats RTN on ≥ 90 % of groups) scales more than 5 % of the channels up in "
               "many groups: every channel gets its own s, and how many exceed 1 depends only on the normalisation "
               "of s (here by √(max·min)), not on calibration health")
    elif not n_over:
        word, why = "depends", "no group exceeds 5 % here, so this run cannot test the warning"
    else:
        word, why = "depends", "the run is not healthy (AWQ loses to RTN on > 10 % of groups): it cannot test the rule"
    return verdict(
        "awq-5pct-scaled", word,
        f"{len(fr)} scale groups (blocks 0–3, 3-bit g64; AWQ beats RTN on {100 * awq_beats_rtn_fraction:.0f} % of "
        f"them): channels with s > 1 range {100 * fr[0]:.0f}–{100 * fr[-1]:.0f} % (median {100 * med:.0f} %); "
        f"{n_over} of {len(fr)} groups exceed 5 %", why)


def _scale_range(ranges: Sequence[tuple[float, float]], setting: str, min_outside: int = 1, lo: float = 0.5,
                 hi: float = 2.0, tol: float = 0.10):
    """ranges: (s_min, s_max) of each scale group. min_outside: how many groups the notebook can count on to leave
    the band on every CPU (its comment derives it from one α grid step); the verdict uses only that count."""
    lo_t, hi_t = lo * (1 - tol), hi * (1 + tol)
    outside = [(a, b) for a, b in ranges if a < lo_t or b > hi_t]
    far = [(a, b) for a, b in ranges if a < lo_t / 2 or b > 2 * hi_t]
    n_out = len(outside)
    sure = n_out >= min_outside
    word = "false" if sure and n_out else "true" if not n_out else "depends"
    return verdict(
        "awq-scale-range", word,
        f"{len(ranges)} scale groups ({setting}): at least {min_outside} leave [{lo_t:.2f}, {hi_t:.2f}] (the claimed "
        f"[{lo:g}, {hi:g}] with {100 * tol:.0f} % tolerance): {sure}; some group reaches beyond twice that band "
        f"(s < {lo_t / 2:.3f} or s > {2 * hi_t:.1f}): {bool(far)}",
        "with s = mean|x|^α / √(max·min) the range is s_max = 1/s_min = (max mean|x| / min mean|x|)^(α/2): it grows "
        "with α and with the spread of the activations, and nothing bounds it to [0.5, 2]" if word == "false" else
        "every group stays inside the band" if word == "true" else
        "groups leave the band here, but not by enough to survive a one-step change of α")


def _ten_times_faster(t_awq: float, t_gptq: float, protocol: str, source: str):
    ratio = t_gptq / t_awq  # the claim: t_GPTQ / t_AWQ = 10
    # within a factor 2 of "10×" counts as true; faster but less than 5× as partly; not faster as false
    word = "true" if ratio >= 5 else "partly" if ratio > 1 else "false"
    return verdict(
        "awq-10x-faster", word,
        f"saved benchmark result {source}: AWQ (scale + clip search) {t_awq:.0f} s vs GPTQ {t_gptq:.0f} s "
        f"({protocol}): t_GPTQ / t_AWQ = {ratio:.2f}",
        f"AWQ took {1 / ratio:.1f}× as long as GPTQ here, the opposite of 10× faster: its grid searches (α, then "
        f"clip factors per group) each evaluate the output error many times, while GPTQ is one sweep per Linear"
        if word == "false" else f"AWQ was {ratio:.1f}× faster" + ("" if word == "true" else ", not ~10×"))


def _beats_gptq(rows: Sequence[dict], source: str):
    """rows: one per grid {"grid", "awq_ppl", "awq_kl", "awq_bits", "gptq_ppl": [per seed], "gptq_kl": [per seed],
    "gptq_bits"}. "Beats at the same bits": AWQ, with no more bits per weight, has a lower KL than every GPTQ seed
    by more than GPTQ's seed-to-seed range (the only measured noise) and a lower perplexity than every GPTQ seed."""
    wins, losses, parts = 0, 0, []
    for r in rows:
        kl_spread = max(r["gptq_kl"]) - min(r["gptq_kl"])
        kl_margin = min(r["gptq_kl"]) - r["awq_kl"]
        same_bits = r["awq_bits"] <= r["gptq_bits"] * 1.02
        win = same_bits and kl_margin > kl_spread and r["awq_ppl"] < min(r["gptq_ppl"])
        loss = (r["awq_kl"] - max(r["gptq_kl"]) > kl_spread) and r["awq_ppl"] > max(r["gptq_ppl"])
        wins, losses = wins + win, losses + loss
        parts.append(f"{r['grid']}: AWQ ppl {r['awq_ppl']:.2f} KL {r['awq_kl']:.3f} at {r['awq_bits']:.2f} b/w vs "
                     f"GPTQ ppl {' / '.join(f'{x:.2f}' for x in r['gptq_ppl'])} KL "
                     f"{' / '.join(f'{x:.3f}' for x in r['gptq_kl'])} at {r['gptq_bits']:.2f} b/w "
                     f"({len(r['gptq_ppl'])} seeds)")
    n = len(rows)
    word = "true" if wins == n else "false" if losses == n else "depends"
    why = {"true": "on every grid measured AWQ's KL is lower than each GPTQ seed's by more than GPTQ's seed-to-seed "
                   "range, at no more bits; one AWQ seed and one 135M model only, so this is the saved files' answer, "
                   "not a general law",
           "false": "GPTQ is better on every grid measured",
           "depends": "the winner changes with the grid, or the gap is within the seed-to-seed spread"}[word]
    return verdict("awq-beats-gptq", word, f"saved benchmark result {source}: " + "; ".join(parts), why)


register(
    Claim("awq-salient-activation", source="AWQ paper",
          words="protecting 1 % of salient channels chosen by activation magnitude cuts the error far more than "
                "choosing them by weight magnitude",
          notebook="04_awq",
          rule="true iff keeping the activation-chosen 1 % in float removes ≥ 20 % of RTN's output error and gains "
               "≥ 1.2× more than keeping the weight-norm-chosen 1 % ('far more')",
          judge=_salient_by_activation),
    Claim("awq-alpha-search", source="AWQ paper",
          words="searching α in s = mean|x|^α cuts the output error well below RTN's",
          notebook="04_awq",
          rule="true iff the best α leaves ≤ 0.75 of RTN's output error ('well below': a quarter less) and lies "
               "strictly inside (0, 1)",
          judge=_alpha_search),
    Claim("awq-linear-objective", source="kit",
          words="the α chosen on the q/k/v outputs is good at self_attn's output too, so the cheaper 'linear' "
                "objective stays the default",
          notebook="04_awq",
          rule="true iff that α leaves ≤ 0.6 of RTN's error at self_attn's output and searching there gains < 0.15",
          judge=_linear_objective),
    Claim("awq-fold-exact", source="kit",
          words="folding the scales leaves the float model's output unchanged (up to float32 rounding)",
          notebook="04_awq",
          rule="true iff max |Δlogit| ≤ 1e-3 (float32 rounding gives 5–7e-05; a wrong fold moves logits by O(1))",
          judge=_fold_exact),
    Claim("awq-output-channels",
          words="AWQ scales the output channels (rows) of the weight it quantizes",
          notebook="04_awq",
          rule="true iff W_after/W_before is constant down each column (rows scaled) and not along rows",
          judge=_output_channels),
    Claim("awq-clip", source="kit",
          words="clipping each group's range lowers the output error; searching the two ends separately lowers it "
                "further",
          notebook="04_awq",
          rule="true iff one factor per group lowers the error by ≥ 10 % and two factors lower it further",
          judge=_clip_search),
    Claim("awq-groups-beat-rtn", source="kit",
          words="AWQ's output error is below RTN's on at least 90 % of the scale groups (held-out samples)",
          notebook="04_awq",
          rule="true iff the fraction of groups with a lower held-out error than RTN is ≥ 0.9",
          judge=_beats_rtn_on_groups),
    Claim("awq-5pct-scaled",
          words="if more than 5 % of channels are scaled the model may be poorly calibrated",
          notebook="04_awq",
          rule="false iff a healthy run (AWQ beats RTN on ≥ 90 % of groups) has groups with > 5 % of channels "
               "scaled up (a counter-example to the warning); depends when the run cannot test it",
          judge=_five_percent_scaled),
    Claim("awq-scale-range",
          words="AWQ's scales lie in [0.5, 2]",
          notebook="04_awq",
          rule="true iff every group's s lies in [0.45, 2.2] (the stated range with 10 % tolerance); false iff "
               "groups leave it even if α moved by one grid step",
          judge=_scale_range),
    Claim("awq-10x-faster",
          words="AWQ calibrates 10× faster than GPTQ",
          notebook="04_awq",
          rule="true iff t_GPTQ / t_AWQ ≥ 5 (within a factor 2 of 10×), partly iff AWQ is faster but less than 5×, "
               "false iff AWQ is not faster (same calibration tokens, same machine)",
          judge=_ten_times_faster),
    Claim("awq-beats-gptq",
          words="AWQ beats GPTQ at the same bits",
          notebook="04_awq",
          rule="true iff at equal settings (grid, group, calibration, evaluation) and no more bits/weight AWQ's KL "
               "is below every GPTQ seed's by more than GPTQ's seed-to-seed range and its perplexity below every "
               "seed's, on every grid measured; false iff the reverse; depends otherwise",
          judge=_beats_gptq),
)
