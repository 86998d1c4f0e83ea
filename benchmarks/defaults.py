"""Which defaults for the quantizers: group size and symmetric vs asymmetric grids at 4 bits, RTN / GPTQ / AWQ.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/defaults.py [--methods rtn,gptq,awq --groups 64,192
        --grids asym,sym --seeds 0,1 --seeds-for gptq --nsamples 32 --seqlen 512 --eval-tokens 4096
        --budget-s 1500 --out FILE] [--merge]

The embedded SmolLM2-135M (dithered float32 reference) is quantized with each (method, group size, grid) and
evaluated on the first `--eval-tokens` tokens of the wiki evaluation split (qlab.eval protocol, 512-token
windows): perplexity, KL to the float model, top-1 agreement, and bits per weight as `qlab quantize` counts them
(QuantizationResult.bits_per_weight, qlab.bits' accountant). Every quantizer argument is passed explicitly, so the
library's defaults (the question) do not leak into the answer: GPTQ with act-order and true-sequential (damp 0.01,
block 128, no static groups), AWQ with α grid 20 and the clipping search then RTN, RTN with integer zero-points.
Calibration: `--nsamples` × `--seqlen` tokens of the wiki calibration split; the methods listed in `--seeds-for`
are calibrated once per seed in `--seeds` (the others with the first seed only). RTN needs no calibration and is
run once. Group 128 does not divide the embedded model's hidden size (576 = 9 · 64 = 3 · 192), so the group sizes
that bracket it are measured (64: 4 + 20/64 bits asymmetric, 192: 4 + 20/192).
Rows run one after the other (the first seed's table first, group by group); a row that would start after
`--budget-s` seconds is skipped (and listed). The JSON is rewritten after every row (atomic), so an interrupted
run leaves its finished rows. With --merge the rows of an earlier result in --out are kept (a row measured again
is replaced) and this run is added to its "runs": a table grown over several runs, each run's command listed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qlab.awq import AWQQuantizer  # noqa: E402
from qlab.data import calibration_batches, eval_tokens  # noqa: E402
from qlab.eval import Evaluator  # noqa: E402
from qlab.gptq import GPTQQuantizer  # noqa: E402
from qlab.model import load_model  # noqa: E402
from qlab.output import check_result_path, write_result  # noqa: E402
from qlab.pipeline import quantize_model  # noqa: E402
from qlab.rtn import RTNQuantizer  # noqa: E402

BITS = 4


def make(method: str, group_size: int, symmetric: bool):
    if method == "rtn":
        return RTNQuantizer(bits=BITS, group_size=group_size, symmetric=symmetric, zero_point="integer")
    if method == "gptq":
        return GPTQQuantizer(bits=BITS, group_size=group_size, symmetric=symmetric, damp=0.01, block_size=128,
                             act_order=True, static_groups=False, true_sequential=True, progress=False)
    return AWQQuantizer(bits=BITS, group_size=group_size, symmetric=symmetric, alpha_grid=20, clip=True, then="rtn",
                        progress=False)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="rtn,gptq,awq")
    ap.add_argument("--groups", default="64,192")
    ap.add_argument("--grids", default="asym,sym")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--seeds-for", default="gptq", help="methods calibrated once per seed (others: first seed)")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget-s", type=float, default=1500.0, help="start no row after this many seconds")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "defaults.json"))
    ap.add_argument("--merge", action="store_true", help="keep the rows of an earlier result in --out")
    args = ap.parse_args(argv)
    check_result_path(args.out)
    earlier = json.loads(Path(args.out).read_text()) if args.merge and Path(args.out).is_file() else {}
    if earlier and "runs" not in earlier:  # a result written before runs were listed: its one run
        earlier["runs"] = [{"argv": earlier.get("argv", "not recorded"), "threads": earlier.get("threads"),
                            "machine": earlier.get("machine"), "wall_seconds": earlier.get("wall_seconds"),
                            "rows": [r["setting"] for r in earlier.get("rows", [])],
                            "skipped_over_budget": earlier.get("skipped_over_budget", [])}]
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    ref, tok = load_model()
    evaluator = Evaluator(ref, eval_tokens(tok, "wiki", args.eval_tokens), 512, progress=False)
    seeds = [int(s) for s in args.seeds.split(",")]
    calib = {}
    rows: list[dict] = []
    skipped: list[str] = []
    this_run = {"argv": sys.argv[1:] if argv is None else list(argv), "threads": args.threads,
                "machine": f"{platform.machine()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at start"}
    print(f"float reference: perplexity {evaluator.reference.perplexity:.3f} ({evaluator.protocol})", flush=True)

    def write() -> Path:
        labels = {r["setting"] for r in rows}
        kept = [r for r in earlier.get("rows", []) if r["setting"] not in labels]
        this_run.update(wall_seconds=time.perf_counter() - start, rows=[r["setting"] for r in rows],
                        skipped_over_budget=skipped)
        return write_result(args.out, {
            "benchmark": "defaults", "model": "smollm2-135m (dithered float32 reference)",
            "protocol": evaluator.protocol, "eval": "wiki evaluation split", "calibration": "wiki calibration split",
            "nsamples": args.nsamples, "seqlen": args.seqlen, "bits": BITS,
            "ppl_float": evaluator.reference.perplexity,
            "gptq": "act-order, true-sequential, damp 0.01, block 128, no static groups",
            "awq": "alpha grid 20, clipping search, then RTN, integer zero-points",
            "torch": torch.__version__, "rows": kept + rows, "runs": [*earlier.get("runs", []), this_run],
        }, "benchmarks/defaults.py")

    # seed-major, then group, then method: the first seed's full table comes first, repeats after
    plan = []
    groups = [int(g) for g in args.groups.split(",")]
    for i, seed in enumerate(seeds):
        for group in groups:
            for method in args.methods.split(","):
                if method == "rtn" and i > 0 or method != "rtn" and i > 0 and method not in args.seeds_for.split(","):
                    continue
                for grid in args.grids.split(","):
                    plan.append((method, None if method == "rtn" else seed, group, grid))
    for method, seed, group, grid in plan:
        label = f"{method} int{BITS} {grid} g{group}" + ("" if seed is None else f" seed {seed}")
        if time.perf_counter() - start > args.budget_s:
            skipped.append(label)
            continue
        ids = None
        if seed is not None:
            if seed not in calib:
                calib[seed] = calibration_batches(tok, "wiki", args.nsamples, args.seqlen, seed)
            ids = calib[seed]
        model = copy.deepcopy(ref)
        q = make(method, group, grid == "sym")
        t0 = time.perf_counter()
        result = quantize_model(model, ids, q, progress=False, output_errors=False)
        seconds = time.perf_counter() - t0
        r = evaluator.evaluate(model)
        del model
        rows.append({"setting": label, "method": method, "group_size": group, "symmetric": grid == "sym",
                     "seed": seed, "bits_per_weight": result.bits_per_weight(), "perplexity": r.perplexity,
                     "kl": r.kl, "top1": r.top1, "quantize_seconds": seconds, "describe": result.method})
        print(f"{label:28s} {result.bits_per_weight():6.3f} bits/w  ppl {r.perplexity:8.3f}  KL {r.kl:.4f}  "
              f"top-1 {r.top1:.3f}  {seconds:6.1f} s  (elapsed {time.perf_counter() - start:.0f} s)", flush=True)
        out = write()
    out = write()
    print(f"wrote {out}" + (f"; skipped over budget: {skipped}" if skipped else ""))
    return {"rows": rows, "skipped": skipped}


if __name__ == "__main__":
    main()
