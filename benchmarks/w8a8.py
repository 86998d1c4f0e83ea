"""W8A8 and W4A8: activation quantization (INT8, FP8), SmoothQuant and the KV cache, on the embedded model (issue 15).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/w8a8.py [--nsamples 32 --seqlen 512 --eval-tokens 4096
        --search-rows 4 --alphas 0.1,0.2,...,0.9 --mse-grid 100 --mse-tokens 2048 --percentile 99.99 --rows all
        --out benchmarks/results/w8a8.json] [--quick]

The embedded SmolLM2-135M (dithered float32 reference) is evaluated on the first `--eval-tokens` tokens of the wiki
evaluation split (qlab.eval protocol, 512-token windows: perplexity, KL to the float model, top-1 agreement) with
the inputs of every decoder-block Linear fake-quantized (qlab.activations; lm_head and embeddings stay float):

- W8A8 INT8: weights int8 per output channel (symmetric RTN); activations per-tensor STATIC (one range per Linear,
  calibrated on `--nsamples` × `--seqlen` tokens of the wiki calibration split by max, percentile or MSE) or
  per-token DYNAMIC (each token's absmax at run time);
- SmoothQuant (qlab.smoothquant) then W8A8 INT8 static (max) / per-token: α searched over `--alphas` per model by
  the KL of the quantized model to the float one on the first `--search-rows` calibration samples (static ranges
  re-calibrated on those samples for each α), then the static ranges calibrated again on all samples; all four
  groups smoothed (q/k/v, o via v, gate/up, down via up);
- W8A8 FP8: weights e4m3 per output channel, activations e4m3 per-tensor static (max) or per-token; e5m2 weights and
  per-token activations;
- W8A16: the INT8 and FP8 e4m3 per-channel weights alone (how much of a W8A8 row's error is the weights');
- W4A8: RTN int4 asymmetric groups of 64 weights, INT8 per-token activations; W4A16: the same weights alone;
- KV cache (keys after RoPE and values, per KV head, static ranges calibrated on the calibration samples) in FP8
  e4m3 or INT8 with float weights and activations, and with W8A8 FP8 per-token.

Static ranges are calibrated on the float (or smoothed float) model before its weights are rounded. Each row: the
seconds to prepare it (calibration, α search, rounding) and to evaluate it (fake quantization runs on the CPU:
the FP8 rows pay qlab.minifloat's table rounding, not a speed measurement). `findings` states, from the numbers,
what they say about two of the article's claims ("FP8 W8A8 matches FP16 perplexity", "per-tensor scaling is too
coarse"); the float reference here is float32, not FP16 (the two differ far less than any row here).
`--quick` runs a small version (1024 evaluation tokens, 4 × 128 calibration tokens, 3 α) for trying it.
The JSON is rewritten after every row (atomic).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qlab.activations import (  # noqa: E402
    ActQuantConfig,
    calibrate_kv_ranges,
    calibrate_ranges,
    calibrate_ranges_many,
    quantize_activations,
    quantize_kv_cache,
    quantize_weights_per_channel,
)
from qlab.data import calibration_batches, eval_tokens  # noqa: E402
from qlab.eval import Evaluator  # noqa: E402
from qlab.model import load_model  # noqa: E402
from qlab.output import check_result_path, write_result  # noqa: E402
from qlab.pipeline import quantize_model  # noqa: E402
from qlab.rtn import RTNQuantizer  # noqa: E402
from qlab.smoothquant import ALPHAS, GROUPS, channel_absmax, search_alpha, smooth_model  # noqa: E402

ROWS = ("int8-static-max", "int8-static-percentile", "int8-static-mse", "int8-token", "sq-int8-static",
        "sq-int8-token", "fp8-e4m3-static", "fp8-e4m3-token", "fp8-e5m2-token", "w8a16-int8", "w8a16-e4m3", "w4a8",
        "w4a16", "kv-fp8", "kv-int8", "fp8-e4m3-token-kv-fp8")


def w4(model) -> None:
    quantize_model(model, None, RTNQuantizer(bits=4, group_size=64, symmetric=False, zero_point="integer"),
                   progress=False, output_errors=False)


def _label(fmt: str) -> str:
    return "INT8" if fmt == "int8" else f"FP8 {fmt}"


def pct(a: float, b: float) -> str:
    return f"{(a / b - 1) * 100:+.2f} %"


def findings(rows: list[dict], ppl_float: float) -> list[str]:
    """What the measured rows say about the article's claims; each sentence computed from the numbers."""
    by = {r["row"]: r for r in rows}
    out = []
    fp8 = [by[k] for k in ("fp8-e4m3-token", "fp8-e4m3-static") if k in by]
    for r in fp8:
        d = r["perplexity"] / ppl_float - 1
        out.append(f"'FP8 W8A8 matches FP16 perplexity': {r['setting']}: perplexity {r['perplexity']:.3f} vs float32 "
                   f"{ppl_float:.3f} ({d * 100:+.2f} %), KL {r['kl']:.4f}, top-1 {r['top1']:.3f}; within 1 % of the "
                   f"float perplexity: {'yes' if abs(d) < 0.01 else 'no'}")
    if "fp8-e5m2-token" in by and "fp8-e4m3-token" in by:
        a, b = by["fp8-e5m2-token"], by["fp8-e4m3-token"]
        out.append(f"e5m2 (2 mantissa bits) per-token: KL {a['kl']:.4f}, {a['kl'] / b['kl']:.1f}× e4m3's "
                   f"{b['kl']:.4f}; perplexity {pct(a['perplexity'], ppl_float)} vs e4m3 "
                   f"{pct(b['perplexity'], ppl_float)}")
    static = [by[k] for k in ("int8-static-max", "int8-static-percentile", "int8-static-mse") if k in by]
    if static and "int8-token" in by:
        best = min(static, key=lambda r: r["kl"])
        tok = by["int8-token"]
        ratio = best["kl"] / tok["kl"]
        out.append(f"'per-tensor scaling is too coarse' (INT8): the best per-tensor static calibration "
                   f"({best['setting']}) has KL {best['kl']:.4f} = {ratio:.1f}× per-token's {tok['kl']:.4f}; "
                   f"perplexity {pct(best['perplexity'], ppl_float)} vs {pct(tok['perplexity'], ppl_float)}; "
                   f"per-tensor at least 2× per-token's KL: {'yes' if ratio >= 2 else 'no'}")
        if "int8-static-max" in by:
            mx = by["int8-static-max"]
            for k in ("int8-static-percentile", "int8-static-mse"):
                if k in by:
                    out.append(f"clipping the static INT8 range ({by[k]['setting']}) instead of the max: KL "
                               f"{by[k]['kl']:.4f} vs {mx['kl']:.4f} ({by[k]['kl'] / mx['kl']:.2f}×)")
        if "sq-int8-static" in by:
            sq = by["sq-int8-static"]
            out.append(f"SmoothQuant (α={sq.get('alpha')}) + INT8 per-tensor static: KL {sq['kl']:.4f}, "
                       f"{sq['kl'] / tok['kl']:.1f}× per-token's (without smoothing {best['kl'] / tok['kl']:.1f}×); "
                       f"perplexity {pct(sq['perplexity'], ppl_float)}")
    if "fp8-e4m3-static" in by and "fp8-e4m3-token" in by:
        a, b = by["fp8-e4m3-static"], by["fp8-e4m3-token"]
        ratio = a["kl"] / b["kl"]
        out.append(f"'per-tensor scaling is too coarse' (FP8 e4m3): per-tensor static KL {a['kl']:.4f} = "
                   f"{ratio:.1f}× per-token's {b['kl']:.4f}; perplexity {pct(a['perplexity'], ppl_float)} vs "
                   f"{pct(b['perplexity'], ppl_float)}; per-tensor at least 2× per-token's KL: "
                   f"{'yes' if ratio >= 2 else 'no'}")
    for w, a in (("w8a16-int8", "int8-token"), ("w8a16-e4m3", "fp8-e4m3-token")):
        if w in by and a in by:
            out.append(f"{by[w]['setting']}: KL {by[w]['kl']:.4f}, {by[w]['kl'] / by[a]['kl'] * 100:.0f} % of the "
                       f"KL of {by[a]['setting']} ({by[a]['kl']:.4f}; KL does not add exactly: the rest is roughly "
                       f"the activations' share)")
    if "w4a8" in by and "w4a16" in by:
        a, b = by["w4a8"], by["w4a16"]
        out.append(f"W4A8 vs W4A16 (RTN int4 g64): KL {a['kl']:.4f} vs {b['kl']:.4f}, perplexity "
                   f"{pct(a['perplexity'], ppl_float)} vs {pct(b['perplexity'], ppl_float)}: INT8 per-token "
                   f"activations add {(a['kl'] - b['kl']) / b['kl'] * 100:+.0f} % KL to the 4-bit weights' own")
    for k in ("kv-fp8", "kv-int8"):
        if k in by:
            r = by[k]
            out.append(f"{r['setting']}: KL {r['kl']:.5f}, perplexity {pct(r['perplexity'], ppl_float)}")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--search-rows", type=int, default=4, help="calibration samples the α search is judged on")
    ap.add_argument("--alphas", default=",".join(f"{a:g}" for a in ALPHAS))
    ap.add_argument("--mse-grid", type=int, default=100)
    ap.add_argument("--mse-tokens", type=int, default=2048)
    ap.add_argument("--percentile", type=float, default=99.99)
    ap.add_argument("--rows", default="all", help=f"comma-separated subset of {','.join(ROWS)}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="1024 eval tokens, 4 × 128 calibration tokens, 3 α")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "w8a8.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.nsamples, args.seqlen, args.eval_tokens, args.search_rows = 4, 128, 1024, 1
        args.alphas, args.mse_tokens = "0.3,0.5,0.8", 256
    wanted = ROWS if args.rows == "all" else tuple(args.rows.split(","))
    unknown = [r for r in wanted if r not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    alphas = [float(a) for a in args.alphas.split(",")]
    check_result_path(args.out)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    machine = f"{platform.machine()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at start"

    ref, tok = load_model()
    ref.eval()
    evaluator = Evaluator(ref, eval_tokens(tok, "wiki", args.eval_tokens), 512, progress=False)
    ppl_float = evaluator.reference.perplexity
    ids = calibration_batches(tok, "wiki", args.nsamples, args.seqlen, seed=0)
    print(f"float reference: perplexity {ppl_float:.3f} ({evaluator.protocol}); calibration {tuple(ids.shape)}",
          flush=True)
    rows: list[dict] = []
    extra: dict = {}

    def write() -> Path:
        return write_result(args.out, {
            "benchmark": "w8a8", "model": "smollm2-135m (dithered float32 reference)",
            "protocol": evaluator.protocol, "eval": "wiki evaluation split",
            "calibration": f"wiki calibration split, {args.nsamples} × {args.seqlen} tokens (seed 0)",
            "linears": "every decoder-block Linear (q/k/v/o, gate/up/down); lm_head and embeddings stay float",
            "static_ranges": "calibrated on the float (or smoothed float) model before its weights are rounded",
            "percentile": args.percentile, "mse_grid": args.mse_grid, "mse_tokens": args.mse_tokens,
            "smoothquant": {"groups": list(GROUPS), "alphas": alphas, "search_rows": args.search_rows,
                            "objective": "mean KL(float ‖ quantized) on the search rows", **extra},
            "ppl_float": ppl_float, "machine": machine, "threads": args.threads, "torch": torch.__version__,
            "argv": sys.argv[1:] if argv is None else list(argv), "quick": args.quick,
            "wall_seconds": time.perf_counter() - start, "rows": rows,
            "findings_rules": "'matches' = perplexity within 1 % of the float reference; 'too coarse' = the "
                              "per-tensor static row's KL at least twice the per-token row's (same format)",
            "findings": findings(rows, ppl_float),
        }, "benchmarks/w8a8.py")

    def record(key: str, setting: str, model, prepare_s: float, **info) -> None:
        r = evaluator.evaluate(model)
        rows.append({"row": key, "setting": setting, "perplexity": r.perplexity, "ppl_ratio": r.perplexity / ppl_float,
                     "kl": r.kl, "top1": r.top1, "prepare_seconds": prepare_s, "eval_seconds": r.seconds, **info})
        print(f"{setting:62s} ppl {r.perplexity:8.3f} (×{r.perplexity / ppl_float:.4f})  KL {r.kl:.4f}  "
              f"top-1 {r.top1:.3f}  prepare {prepare_s:6.1f} s  eval {r.seconds:6.1f} s  "
              f"(elapsed {time.perf_counter() - start:.0f} s)", flush=True)
        write()

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0

    per_token = ActQuantConfig("int8", "token")
    static_cfgs = {
        "int8-static-max": ActQuantConfig("int8", "tensor", "max"),
        "int8-static-percentile": ActQuantConfig("int8", "tensor", "percentile", percentile=args.percentile),
        "int8-static-mse": ActQuantConfig("int8", "tensor", "mse", mse_grid=args.mse_grid,
                                          mse_tokens=args.mse_tokens),
        "fp8-e4m3-static": ActQuantConfig("e4m3", "tensor", "max"),
    }
    todo = [k for k in static_cfgs if k in wanted]
    if todo:  # one shared calibration (plus the MSE pass) on the float model
        ranges_list, cal_s = timed(lambda: calibrate_ranges_many(ref, ids, [static_cfgs[k] for k in todo]))
        ranges = dict(zip(todo, ranges_list))
        print(f"static ranges calibrated in {cal_s:.0f} s", flush=True)
        for k in todo:
            cfg = static_cfgs[k]
            wfmt = "int8" if cfg.fmt == "int8" else cfg.fmt
            model = copy.deepcopy(ref)
            handle, q_s = timed(lambda: (quantize_weights_per_channel(model, wfmt),
                                         quantize_activations(model, cfg, ranges[k]))[1])
            vals = list(ranges[k].values())
            record(k, f"W8A8 {cfg.describe()}", model, cal_s + q_s, calibration_seconds_shared=cal_s,
                   range_median=float(torch.tensor(vals).median()), range_max=max(vals))
            handle.remove()
            del model

    for key, wfmt, cfg in (("int8-token", "int8", per_token), ("fp8-e4m3-token", "e4m3", ActQuantConfig("e4m3")),
                           ("fp8-e5m2-token", "e5m2", ActQuantConfig("e5m2"))):
        if key in wanted:
            model = copy.deepcopy(ref)
            handle, q_s = timed(lambda: (quantize_weights_per_channel(model, wfmt),
                                         quantize_activations(model, cfg))[1])
            record(key, f"W8A8 {cfg.describe()}" + ("" if wfmt == "int8" else f" (weights {wfmt} per channel)"),
                   model, q_s)
            handle.remove()
            del model

    sq_rows = [k for k in ("sq-int8-static", "sq-int8-token") if k in wanted]
    if sq_rows:
        x_max, xs = timed(lambda: channel_absmax(ref, ids))
        extra["activation_maxima_seconds"] = xs
        for key in sq_rows:
            static = key == "sq-int8-static"
            cfg = static_cfgs["int8-static-max"] if static else per_token

            def quantize(m, rows_, cfg=cfg, static=static):
                r = calibrate_ranges(m, rows_, cfg, progress=False) if static else None
                quantize_weights_per_channel(m, "int8")
                return quantize_activations(m, cfg, r).remove

            t0 = time.perf_counter()
            found = search_alpha(ref, ids, quantize, alphas, GROUPS, args.search_rows, x_max)
            model = copy.deepcopy(ref)
            report = smooth_model(model, x_max, found.alpha, GROUPS)
            ranges_sq = calibrate_ranges(model, ids, cfg) if static else None
            quantize_weights_per_channel(model, "int8")
            handle = quantize_activations(model, cfg, ranges_sq)
            prep = time.perf_counter() - t0 + xs
            extra[key] = {**found.to_dict(), "skipped_groups": [f"{r.block}.{r.group}: {r.skipped}" for r in report
                                                                if r.skipped],
                          "scale_range": [min(r.s_min for r in report), max(r.s_max for r in report)]}
            print(f"α search ({cfg.describe()}): " + ", ".join(f"{a:g}: {e:.4f}" for a, e in
                                                             zip(found.alphas, found.errors))
                  + f"; unsmoothed {found.error_unsmoothed:.4f} → α = {found.alpha:g}", flush=True)
            record(key, f"SmoothQuant α={found.alpha:g} + W8A8 {cfg.describe()}", model, prep, alpha=found.alpha,
                   search_kl=dict(zip([f"{a:g}" for a in found.alphas], found.errors)),
                   search_kl_unsmoothed=found.error_unsmoothed)
            handle.remove()
            del model

    for key, wfmt in (("w8a16-int8", "int8"), ("w8a16-e4m3", "e4m3")):
        if key in wanted:
            model = copy.deepcopy(ref)
            _, q_s = timed(lambda: quantize_weights_per_channel(model, wfmt))
            record(key, f"W8A16: weights {_label(wfmt)} per channel (activations float)", model, q_s)
            del model
    if "w4a8" in wanted:
        model = copy.deepcopy(ref)
        handle, q_s = timed(lambda: (w4(model), quantize_activations(model, per_token))[1])
        record("w4a8", f"W4A8: RTN int4 asym g64 + {per_token.describe()}", model, q_s)
        handle.remove()
        del model
    if "w4a16" in wanted:
        model = copy.deepcopy(ref)
        _, q_s = timed(lambda: w4(model))
        record("w4a16", "W4A16: RTN int4 asym g64 (activations float)", model, q_s)
        del model

    kv_rows = [k for k in ("kv-fp8", "kv-int8", "fp8-e4m3-token-kv-fp8") if k in wanted]
    if kv_rows:
        kv_ranges, kv_s = timed(lambda: calibrate_kv_ranges(ref, ids))
        for key in kv_rows:
            fmt = "int8" if key == "kv-int8" else "e4m3"
            model = copy.deepcopy(ref)
            t0 = time.perf_counter()
            handles = [quantize_kv_cache(model, fmt, "head", kv_ranges)]
            setting = handles[0].describe() + " (keys after RoPE, values)"
            if key == "fp8-e4m3-token-kv-fp8":
                quantize_weights_per_channel(model, "e4m3")
                handles.append(quantize_activations(model, ActQuantConfig("e4m3")))
                setting = f"W8A8 {handles[1].describe()} + {setting}"
            else:
                setting += ", weights and activations float"
            record(key, setting, model, time.perf_counter() - t0 + kv_s, kv_calibration_seconds=kv_s)
            for h in handles:
                h.remove()
            del model

    out = write()
    print(f"\n{'setting':62s} {'ppl':>9s} {'ppl/float':>9s} {'KL':>8s} {'top-1':>6s} {'prep s':>7s} {'eval s':>7s}")
    print(f"{'float32 reference':62s} {ppl_float:9.3f} {1:9.4f} {0:8.4f} {1:6.3f}")
    for r in rows:
        print(f"{r['setting'][:62]:62s} {r['perplexity']:9.3f} {r['ppl_ratio']:9.4f} {r['kl']:8.4f} {r['top1']:6.3f} "
              f"{r['prepare_seconds']:7.1f} {r['eval_seconds']:7.1f}")
    print("\nfindings:\n- " + "\n- ".join(findings(rows, ppl_float)))
    print(f"wrote {out}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
