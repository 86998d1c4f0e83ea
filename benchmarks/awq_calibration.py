"""Calibration time and perplexity of AWQ next to GPTQ (and RTN) on the embedded model, CPU.

    .venv/bin/python benchmarks/awq_calibration.py [--nsamples 16 --seqlen 512 --bits 3,4 --group-size 64
                                                    --threads 1 --blocks 0 --methods rtn,awq,gptq,awq+gptq
                                                    --objective module --probe-tokens 2048 --duo-scaling
                                                    --eval 4096 --out FILE]

Each method quantizes the same model from the same calibration ids with `qlab.pipeline.quantize_model(...,
output_errors=False)`: the timed span is the whole calibration (capture, each block's statistics and searches,
the walk to the next block), the same work for every method apart from the quantizer itself. With --blocks N only
the first N blocks are walked and only the quantizer calls are timed (a quick timing, no perplexity).
AWQ's time is split into statistics (block forward + XᵀX), α search, clip search and the final rounding.
With --eval N the perplexity of each result on N tokens of the wiki evaluation split (512-token windows) is added,
and the fraction of RTN's perplexity increase each method recovers. The article under test says AWQ calibrates
"10× faster" than GPTQ. Writes benchmarks/results/awq_calibration.json after every row (atomic).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import resource
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qlab.awq import AWQQuantizer, AWQWarning  # noqa: E402
from qlab.data import calibration_batches  # noqa: E402
from qlab.model import load_model  # noqa: E402
from qlab.output import check_result_path, write_result  # noqa: E402
from qlab.pipeline import quantize_model  # noqa: E402
from qlab.rtn import RTNQuantizer  # noqa: E402
from qlab.walk import block_prefix, capture_block_inputs, decoder_blocks  # noqa: E402


def make(method: str, bits: int, group_size, awq_options: dict):
    if method == "rtn":
        return RTNQuantizer(bits, group_size, False)
    if method == "gptq":
        from qlab.gptq import GPTQQuantizer

        return GPTQQuantizer(bits=bits, group_size=group_size, symmetric=False, progress=False)
    return AWQQuantizer(bits=bits, group_size=group_size, then="gptq" if method == "awq+gptq" else "rtn",
                        **awq_options)


def run(model, ids, method: str, bits: int, group_size, n_blocks: int, evaluator=None,
        awq_options: dict | None = None) -> dict:
    m = copy.deepcopy(model)
    q = make(method, bits, group_size, awq_options or {})
    if n_blocks:  # quick timing: the quantizer calls of the first blocks only
        inputs = capture_block_inputs(m, ids)
        prefix = block_prefix(m)
        blocks = list(decoder_blocks(m))[:n_blocks]
        seconds = 0.0
        for i, block in enumerate(blocks):
            t0 = time.perf_counter()
            q.quantize_block(block, inputs, f"{prefix}.{i}")
            seconds += time.perf_counter() - t0
            inputs = inputs.run(block)
        evaluator = None  # a partly quantized model: no perplexity
    else:
        blocks = list(decoder_blocks(m))
        seconds = quantize_model(m, None if method == "rtn" else ids, q, progress=False,
                                 output_errors=False).seconds
    out = {"method": method, "bits": bits, "describe": q.describe(), "config": getattr(q, "config", None),
           "seconds": seconds, "blocks": len(blocks), "seconds_per_block": seconds / len(blocks)}
    if isinstance(q, AWQQuantizer):
        out["awq_breakdown"] = {k: round(v, 2) for k, v in q.seconds.items()}
        out["fraction_groups_better_than_rtn"] = q.fraction_better()
        out["groups"] = [{"block": r.block, "group": r.group, "alpha": r.alpha, "scaled_up": r.fraction_scaled_up,
                          "err_rtn": r.err_rtn, "err_awq": r.err_awq} for r in q.records]
    if evaluator is not None:
        e = evaluator.evaluate(m)
        out.update(perplexity=e.perplexity, kl=e.kl, top1=e.top1)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--bits", default="3,4", help="comma-separated bit widths")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--blocks", type=int, default=0, help="only the first N blocks (0: all)")
    ap.add_argument("--methods", default="rtn,awq,gptq,awq+gptq")
    ap.add_argument("--gptq-bits", help="run plain GPTQ only at these comma-separated bit widths (default: all)")
    ap.add_argument("--objective", choices=("linear", "module"), help="AWQ search objective")
    ap.add_argument("--probe-tokens", type=int, help="AWQ module objective: tokens probed")
    ap.add_argument("--duo-scaling", action="store_true", default=None, help="AWQ: s = mean|x|^α / mean|w|^(1-α)")
    ap.add_argument("--clip-skip", help="AWQ: comma-separated Linears left unclipped ('' for none)")
    ap.add_argument("--no-clip", action="store_true", help="AWQ: no clipping search")
    ap.add_argument("--clip-independent", action="store_true", default=None,
                    help="AWQ: search the lower and upper clip factors separately")
    ap.add_argument("--eval", type=int, default=0, help="also measure perplexity on this many wiki evaluation tokens")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "awq_calibration.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", AWQWarning)

    awq_options = {"objective": args.objective, "probe_tokens": args.probe_tokens, "duo_scaling": args.duo_scaling,
                   "clip_independent": args.clip_independent,
                   "clip_skip": None if args.clip_skip is None else [c for c in args.clip_skip.split(",") if c]}
    awq_options = {k: v for k, v in awq_options.items() if v is not None}
    if args.no_clip:
        awq_options["clip"] = False
    model, tok = load_model()
    ids = calibration_batches(tok, "wiki", args.nsamples, args.seqlen)
    evaluator = None
    if args.eval and not args.blocks:
        from qlab.data import eval_tokens
        from qlab.eval import Evaluator

        evaluator = Evaluator(model, eval_tokens(tok, "wiki", args.eval), 512, progress=False)
        print(f"float reference perplexity {evaluator.reference.perplexity:.2f} ({evaluator.protocol})")
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"}, "awq_options": awq_options, "rows": [],
        "reference_perplexity": evaluator.reference.perplexity if evaluator else None,
        "eval_protocol": evaluator.protocol if evaluator else None,
    }
    out = check_result_path(args.out)
    for bits in [int(b) for b in str(args.bits).split(",")]:
        rows = []
        for method in args.methods.split(","):
            if method == "gptq" and args.gptq_bits and str(bits) not in args.gptq_bits.split(","):
                continue
            r = run(model, ids, method, bits, args.group_size, args.blocks, evaluator, awq_options)
            rows.append(r)
            if "perplexity" in r and rows[0]["method"] == "rtn" and "perplexity" in rows[0] and evaluator:
                ref, rtn = evaluator.reference.perplexity, rows[0]["perplexity"]
                r["recovered_fraction_of_rtn_increase"] = (rtn - r["perplexity"]) / (rtn - ref)
            print(f"int{bits} {method:9s} {r['seconds']:8.1f} s  ({r['seconds_per_block']:.2f} s/block over "
                  f"{r['blocks']} blocks)" + (f"  perplexity {r['perplexity']:.2f}" if "perplexity" in r else "")
                  + (f"  recovered {r['recovered_fraction_of_rtn_increase']:.1%}"
                     if "recovered_fraction_of_rtn_increase" in r else "")
                  + (f"  AWQ parts: {r['awq_breakdown']}" if "awq_breakdown" in r else ""), flush=True)
            result["rows"].append(r)
            _write(out, result)
        by = {r["method"]: r["seconds"] for r in rows}
        if "awq" in by and "gptq" in by:
            result.setdefault("gptq_over_awq", {})[f"int{bits}"] = by["gptq"] / by["awq"]
            print(f"int{bits} GPTQ / AWQ time ratio: {by['gptq'] / by['awq']:.2f} (the article claims AWQ is 10x "
                  f"faster)")
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["machine"] = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                         "processor": platform.processor() or platform.machine(), "load_average": os.getloadavg()}
    _write(out, result)
    return result


def _write(out: Path, result: dict) -> None:
    write_result(out, result, "benchmarks/awq_calibration.py")


if __name__ == "__main__":
    main()
