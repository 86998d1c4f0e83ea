"""Calibration time of AWQ next to GPTQ (and RTN) on the embedded model, CPU.

    .venv/bin/python benchmarks/awq_calibration.py [--nsamples 32 --seqlen 512 --bits 4 --group-size 64
                                                    --threads 2 --blocks 0 --methods rtn,awq,gptq,awq+gptq
                                                    --eval 4096 --out FILE]

Each method walks the same decoder blocks on the same calibration inputs; only the quantizer call of each block
is timed (the walk that runs the quantized block to make the next block's inputs is common to all and left out).
AWQ's time is split into statistics (block forward + XᵀX), α search, clip search and the final rounding.
With --eval N the perplexity of each result on N tokens of the wiki evaluation split (512-token windows) is added.
The article under test says AWQ calibrates "10× faster" than GPTQ. Writes benchmarks/results/awq_calibration.json.
"""

from __future__ import annotations

import argparse
import copy
import json
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
from qlab.model import decoder_blocks, load_model  # noqa: E402
from qlab.pipeline import RTNQuantizer, block_prefix  # noqa: E402
from qlab.walk import capture_block_inputs  # noqa: E402


def make(method: str, bits: int, group_size):
    if method == "rtn":
        return RTNQuantizer(bits, group_size, False)
    if method == "gptq":
        from qlab.gptq import GPTQQuantizer

        return GPTQQuantizer(bits=bits, group_size=group_size, symmetric=False, progress=False)
    return AWQQuantizer(bits=bits, group_size=group_size, then="gptq" if method == "awq+gptq" else "rtn")


def run(model, inputs, method: str, bits: int, group_size, n_blocks: int, evaluator=None) -> dict:
    m = copy.deepcopy(model)
    q = make(method, bits, group_size)
    prefix = block_prefix(m)
    blocks = list(decoder_blocks(m))[: n_blocks or None]
    seconds = 0.0
    for i, block in enumerate(blocks):
        t0 = time.perf_counter()
        q(block, inputs, f"{prefix}.{i}")
        seconds += time.perf_counter() - t0
        inputs = inputs.run(block)
    out = {"method": method, "seconds": seconds, "blocks": len(blocks), "seconds_per_block": seconds / len(blocks)}
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
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=0, help="only the first N blocks (0: all)")
    ap.add_argument("--methods", default="rtn,awq,gptq,awq+gptq")
    ap.add_argument("--eval", type=int, default=0, help="also measure perplexity on this many wiki evaluation tokens")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "awq_calibration.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", AWQWarning)

    model, tok = load_model()
    ids = calibration_batches(tok, "wiki", args.nsamples, args.seqlen)
    t0 = time.perf_counter()
    inputs = capture_block_inputs(model, ids)
    capture = time.perf_counter() - t0
    evaluator = None
    if args.eval:
        from qlab.data import eval_tokens
        from qlab.eval import Evaluator

        evaluator = Evaluator(model, eval_tokens(tok, "wiki", args.eval), 512, progress=False)
        print(f"float reference perplexity {evaluator.reference.perplexity:.2f} ({evaluator.protocol})")
    rows = []
    for method in args.methods.split(","):
        r = run(model, inputs, method, args.bits, args.group_size, args.blocks, evaluator)
        rows.append(r)
        print(f"{method:9s} {r['seconds']:8.1f} s  ({r['seconds_per_block']:.2f} s/block over {r['blocks']} blocks)"
              + (f"  perplexity {r['perplexity']:.2f}" if "perplexity" in r else "")
              + (f"  AWQ parts: {r['awq_breakdown']}" if "awq_breakdown" in r else ""), flush=True)
    by = {r["method"]: r["seconds"] for r in rows}
    if "awq" in by and "gptq" in by:
        print(f"GPTQ / AWQ time ratio: {by['gptq'] / by['awq']:.2f} (the article claims AWQ is 10x faster)")
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"}, "capture_seconds": capture, "rows": rows,
        "reference_perplexity": evaluator.reference.perplexity if evaluator else None,
        "gptq_over_awq": by["gptq"] / by["awq"] if "awq" in by and "gptq" in by else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine(),
                    "load_average": os.getloadavg()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    return result


if __name__ == "__main__":
    main()
