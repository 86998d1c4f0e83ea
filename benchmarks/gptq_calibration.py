"""GPTQ vs RTN on the embedded model: perplexity, per-layer reconstruction error, calibration time and memory.

    .venv/bin/python benchmarks/gptq_calibration.py [--nsamples 128 --seqlen 512 --settings 4:64,3:64,3:channel]
        [--act-order --true-sequential both --forward-dtypes float32,bfloat16]

For each setting (bits:group, symmetric grid) the embedded SmolLM2-135M (dithered float32 reference) is quantized
with RTN and with GPTQ (calibration: `--nsamples` × `--seqlen` tokens of the wiki calibration split, walked block
by block through qlab.pipeline.quantize_model), then evaluated on the first `--eval-tokens` tokens of the wiki
evaluation split (qlab.eval protocol, 512-token windows). Reported: perplexities, the share of RTN's perplexity
increase GPTQ recovers, (RTN − GPTQ)/(RTN − float), how many Linears have a lower ‖WX − ŴX‖²/‖WX‖² under GPTQ
than RTN, wall and CPU time of each GPTQ calibration (the whole quantize_model call with output_errors=False: with
--true-sequential one forward per block when the batch fits in memory, else a Hessian pass and an output pass) and
the process's peak resident memory. On a shared machine, CPU seconds / threads
estimates the wall time the run would take on idle cores. With several `--forward-dtypes` each setting is
calibrated once per dtype of the calibration forward passes (GPTQQuantizer.forward_dtype), side by side. Writes
benchmarks/results/gptq_calibration.json. Goals (issue 4): recovery ≥ 70 % at 3-bit g64; < 3 min for 128 × 512.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qlab.data import calibration_batches, eval_tokens  # noqa: E402
from qlab.eval import Evaluator  # noqa: E402
from qlab.gptq import GPTQQuantizer  # noqa: E402
from qlab.model import load_model  # noqa: E402
from qlab.output import check_result_path, write_result  # noqa: E402
from qlab.pipeline import quantize_model  # noqa: E402
from qlab.rtn import RTNQuantizer  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def parse_settings(text: str) -> list[tuple[int, int | None]]:
    out = []
    for item in text.split(","):
        bits, group = item.split(":")
        out.append((int(bits), None if group == "channel" else int(group)))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--settings", default="3:64,4:64,3:channel")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--act-order", action="store_true")
    ap.add_argument("--true-sequential", nargs="?", const="on", default="off", choices=("off", "on", "both"),
                    help="both: calibrate each setting without and with it, side by side")
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--forward-dtypes", default="float32", help="comma-separated: float32, bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gptq_calibration.json"))
    args = ap.parse_args(argv)
    check_result_path(args.out)
    torch.set_num_threads(args.threads)

    ref, tok = load_model()
    tokens = eval_tokens(tok, "wiki", args.eval_tokens)
    evaluator = Evaluator(ref, tokens, 512, progress=False)
    calib = calibration_batches(tok, "wiki", args.nsamples, args.seqlen, args.seed)
    del ref
    print(f"float reference: perplexity {evaluator.reference.perplexity:.3f} ({evaluator.protocol})", flush=True)
    rows: list[dict] = []

    def write() -> Path:  # after every setting, so a long run leaves its finished rows behind
        result = {
            "benchmark": "gptq_calibration", "model": "smollm2-135m (dithered float32 reference)",
            "protocol": evaluator.protocol, "eval": "wiki evaluation split", "calibration": "wiki calibration split",
            "nsamples": args.nsamples, "seqlen": args.seqlen, "act_order": args.act_order,
            "true_sequential": {"off": False, "on": True}.get(args.true_sequential, "both"), "damp": args.damp,
            "threads": args.threads,
            "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
            "torch": torch.__version__, "rows": rows,
        }
        return write_result(args.out, result, "benchmarks/gptq_calibration.py")

    def calibrate(bits, group, forward_dtype, true_sequential, label, rtn) -> dict:
        model, _ = load_model()
        q = GPTQQuantizer(bits=bits, group_size=group, symmetric=True, damp=args.damp, act_order=args.act_order,
                          true_sequential=true_sequential, progress=False, forward_dtype=forward_dtype)
        rss_before = peak_rss_mib()
        t0, c0 = time.perf_counter(), cpu_seconds()
        quantize_model(model, calib, q, progress=True, output_errors=False)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        gptq = evaluator.evaluate(model)
        del model
        wins = sum(st["gptq"] < st["rtn"] for st in q.layer_stats.values())
        ratios = [st["gptq"] / st["rtn"] for st in q.layer_stats.values() if st["rtn"] > 0]
        base = evaluator.reference.perplexity
        recovery = (rtn.perplexity - gptq.perplexity) / (rtn.perplexity - base) if rtn.perplexity > base else None
        row = {
            "setting": label, "bits": bits, "group_size": group, "forward_dtype": forward_dtype,
            "true_sequential": true_sequential, "single_pass_blocks": q.single_pass_blocks, "ppl_float": base,
            "ppl_rtn": rtn.perplexity, "ppl_gptq": gptq.perplexity, "kl_rtn": rtn.kl, "kl_gptq": gptq.kl,
            "recovery": recovery,
            "linears": len(q.layer_stats), "linears_gptq_better": wins,
            "median_err_ratio_gptq_over_rtn": sorted(ratios)[len(ratios) // 2],
            "max_err_ratio_gptq_over_rtn": max(ratios), "calibration_seconds": seconds, "calibration_cpu_seconds": cpu,
            "peak_rss_mib": peak_rss_mib(), "peak_rss_mib_before": rss_before,
            "damp_retries": sum(st["damp_retries"] for st in q.layer_stats.values()),
            "layer_errors": {n: {"gptq": st["gptq"], "rtn": st["rtn"]} for n, st in q.layer_stats.items()},
        }
        rec = "n/a" if recovery is None else f"{100 * recovery:.0f} %"
        order = "true-seq" if true_sequential else "two-pass"
        print(f"{label:22s} {forward_dtype:8s} {order:8s} RTN {rtn.perplexity:8.3f}  GPTQ {gptq.perplexity:8.3f}  "
              f"recovery {rec:>6s}  "
              f"GPTQ<RTN on {wins}/{len(q.layer_stats)} Linears  calibration {seconds:6.1f} s (CPU {cpu:.0f} s)  "
              f"peak RSS {row['peak_rss_mib']:.0f} MiB", flush=True)
        return row

    for bits, group in parse_settings(args.settings):
        label = f"int{bits} sym {'per-channel' if group is None else f'g{group}'}"
        model, _ = load_model()
        quantize_model(model, None, RTNQuantizer(bits, group, symmetric=True), progress=False)
        rtn = evaluator.evaluate(model)
        del model
        for true_sequential in {"off": [False], "on": [True], "both": [False, True]}[args.true_sequential]:
            for forward_dtype in args.forward_dtypes.split(","):
                rows.append(calibrate(bits, group, forward_dtype, true_sequential, label, rtn))
                out = write()
    print(f"wrote {out}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
