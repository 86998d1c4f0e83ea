"""Does GPTQ's gain survive on text it was not calibrated on? Held-out-domain recovery of GPTQ settings (issue 24).

    .venv/bin/python benchmarks/calibration_transfer.py [--settings wiki,mix,mix-shrink0.5 --bits 3 --group-size 64
        --nsamples 128 --seqlen 512 --eval-tokens 4096 --out benchmarks/results/calibration_transfer.json --merge]

The embedded SmolLM2-135M (dithered float32 reference) is quantized with RTN and with GPTQ (act-order,
true-sequential, asymmetric grids) and evaluated on the evaluation split of each domain (wiki, news, code; the
qlab.eval protocol, 512-token windows, KL and top-1 against the float model). A setting names a calibration
recipe and GPTQ options (SETTINGS below, or `name=recipe:key=value:…` on the command line):

- recipe "wiki" (one source): one calibration on it; wiki is in-domain, news and code are held out;
- recipe "mix" (every domain): for each target domain the calibration mixes the OTHER domains (leave one out), so
  every target is held out; one more calibration on all of them gives the in-domain numbers.

Recovery = (ppl_RTN − ppl_GPTQ) / (ppl_RTN − ppl_float), the share of RTN's damage GPTQ undoes, per target; KL
recovery likewise with KL. Each GPTQ calibration draws `--nsamples` × `--seqlen` tokens (a mixture: the same
number from each source, qlab.data.calibration_batches). Writes one row per (setting, target) and a summary per
setting (in-domain recovery on wiki, mean held-out recovery) to benchmarks/results/calibration_transfer.json.
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

from qlab.data import calibration_batches, eval_tokens  # noqa: E402
from qlab.eval import Evaluator  # noqa: E402
from qlab.gptq import GPTQQuantizer  # noqa: E402
from qlab.model import load_model  # noqa: E402
from qlab.output import check_result_path, write_result  # noqa: E402
from qlab.pipeline import quantize_model  # noqa: E402
from qlab.rtn import RTNQuantizer  # noqa: E402

DOMAINS = ("wiki", "news", "code")
SETTINGS = {  # name: (recipe, GPTQQuantizer options beyond bits / group size / asymmetric grids); every option
    # is spelled out, so that a name keeps its meaning when the class's defaults change ("wiki" is plain GPTQ,
    # the toolkit's default before issue 24)
    "wiki": ("wiki", {"shrink": 0.0}),
    "wiki-damp0.1": ("wiki", {"shrink": 0.0, "damp": 0.1}),
    "wiki-damp0.3": ("wiki", {"shrink": 0.0, "damp": 0.3}),
    "wiki-damp1": ("wiki", {"shrink": 0.0, "damp": 1.0}),
    "wiki-shrink0.25": ("wiki", {"shrink": 0.25}),
    "wiki-shrink0.5": ("wiki", {"shrink": 0.5}),
    "wiki-shrink0.75": ("wiki", {"shrink": 0.75}),
    "wiki-sym": ("wiki", {"shrink": 0.0, "symmetric": True}),
    "wiki-no-act-order": ("wiki", {"shrink": 0.0, "act_order": False}),
    "mix": ("mix", {"shrink": 0.0}),
    "mix-shrink0.25": ("mix", {"shrink": 0.25}),
    "mix-shrink0.5": ("mix", {"shrink": 0.5}),
    "mix-damp0.1": ("mix", {"shrink": 0.0, "damp": 0.1}),
    "mix-damp0.3": ("mix", {"shrink": 0.0, "damp": 0.3}),
}


def parse_setting(text: str) -> tuple[str, str, dict]:
    """'name' from SETTINGS, or 'name=recipe:key=value:…' (values parsed as JSON: 0.5, true)."""
    if "=" not in text.split(":")[0]:
        recipe, options = SETTINGS[text]
        return text, recipe, options
    name, rest = text.split("=", 1)
    recipe, *pairs = rest.split(":")
    return name, recipe, {k: json.loads(v) for k, v in (p.split("=", 1) for p in pairs)}


def calibrations(recipe: str) -> dict[str, list[str]]:
    """{calibration text: the targets it is evaluated on} for a recipe (see the module docstring)."""
    if recipe != "mix":
        return {recipe: list(DOMAINS)}
    plan = {"+".join(d for d in DOMAINS if d != t): [t] for t in DOMAINS}
    plan["+".join(DOMAINS)] = list(DOMAINS)
    return plan


def recovery(rtn: float, q: float, ref: float) -> float:
    return (rtn - q) / (rtn - ref) if rtn != ref else float("nan")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="wiki,mix")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "calibration_transfer.json"))
    ap.add_argument("--merge", action="store_true", help="keep the rows of earlier settings in --out")
    args = ap.parse_args(argv)
    settings = [parse_setting(s) for s in args.settings.split(",")]
    check_result_path(args.out)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    this_run = {"id": f"{time.time():.0f}-{os.getpid()}", "argv": sys.argv[1:] if argv is None else list(argv),
                "threads": args.threads,
                "machine": f"{platform.machine()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at start"}

    ref, tok = load_model()
    evaluators = {d: Evaluator(ref, eval_tokens(tok, d, args.eval_tokens), 512, progress=False) for d in DOMAINS}
    floats = {d: {"perplexity": e.reference.perplexity} for d, e in evaluators.items()}
    print("float: " + "  ".join(f"{d} {v['perplexity']:.2f}" for d, v in floats.items()), flush=True)

    def evaluate(model) -> dict:
        out = {}
        for d, e in evaluators.items():
            r = e.evaluate(model)
            out[d] = {"perplexity": r.perplexity, "kl": r.kl, "top1": r.top1}
        return out

    model = copy.deepcopy(ref)
    quantize_model(model, None, RTNQuantizer(args.bits, args.group_size, symmetric=False), progress=False,
                   output_errors=False)
    rtn = evaluate(model)
    rtn_sym = None
    print("RTN:   " + "  ".join(f"{d} {v['perplexity']:.2f} (KL {v['kl']:.3f})" for d, v in rtn.items()), flush=True)

    rows, summaries = [], []
    for name, recipe, options in settings:
        symmetric = bool(options.get("symmetric", False))
        base = rtn
        if symmetric:  # the baseline on the same grid
            if rtn_sym is None:
                model = copy.deepcopy(ref)
                quantize_model(model, None, RTNQuantizer(args.bits, args.group_size, symmetric=True), progress=False,
                               output_errors=False)
                rtn_sym = evaluate(model)
            base = rtn_sym
        kwargs = {"symmetric": False, **options}
        for text, targets in calibrations(recipe).items():
            ids = calibration_batches(tok, text, args.nsamples, args.seqlen, args.seed)
            model = copy.deepcopy(ref)
            q = GPTQQuantizer(args.bits, args.group_size, progress=False, **kwargs)
            t0 = time.perf_counter()
            quantize_model(model, ids, q, progress=False, output_errors=False)
            seconds = time.perf_counter() - t0
            measured = evaluate(model)
            del model
            for t in targets:
                m = measured[t]
                in_domain = t in text.split("+")
                rows.append({
                    "setting": name, "recipe": recipe, "options": options, "describe": q.describe(),
                    "calibration": text, "target": t, "in_domain": in_domain, **m,
                    "rtn_perplexity": base[t]["perplexity"], "rtn_kl": base[t]["kl"],
                    "float_perplexity": floats[t]["perplexity"],
                    "recovery": recovery(base[t]["perplexity"], m["perplexity"], floats[t]["perplexity"]),
                    "kl_recovery": recovery(base[t]["kl"], m["kl"], 0.0), "quantize_seconds": seconds,
                })
                r = rows[-1]
                print(f"{name:18s} cal {text:15s} → {t:5s} {'in ' if in_domain else 'out'}  ppl {m['perplexity']:8.2f} "
                      f"(RTN {base[t]['perplexity']:.2f})  recovery {r['recovery']:6.1%}  KL {m['kl']:.3f} "
                      f"(RTN {base[t]['kl']:.3f}, recovery {r['kl_recovery']:6.1%})  {seconds:.0f} s", flush=True)
        mine = [r for r in rows if r["setting"] == name]
        held = [r for r in mine if not r["in_domain"]]
        wiki_in = next(r for r in mine if r["target"] == "wiki" and r["in_domain"])
        summaries.append({
            "setting": name, "recipe": recipe, "options": options,
            "in_domain_recovery_wiki": wiki_in["recovery"], "in_domain_kl_recovery_wiki": wiki_in["kl_recovery"],
            "held_out_targets": [r["target"] for r in held],
            "mean_held_out_recovery": sum(r["recovery"] for r in held) / len(held),
            "mean_held_out_kl_recovery": sum(r["kl_recovery"] for r in held) / len(held),
            "min_held_out_recovery": min(r["recovery"] for r in held),
        })
        s = summaries[-1]
        print(f"== {name}: in-domain (wiki) {s['in_domain_recovery_wiki']:.1%}, held-out mean "
              f"{s['mean_held_out_recovery']:.1%} (min {s['min_held_out_recovery']:.1%}), held-out KL recovery "
              f"{s['mean_held_out_kl_recovery']:.1%}  (elapsed {time.perf_counter() - start:.0f} s)", flush=True)
        names = {x["setting"] for x in summaries}
        # read at each write, not at start: two runs of this script may share --out (each writes whole settings)
        earlier = json.loads(Path(args.out).read_text()) if args.merge and Path(args.out).is_file() else {}
        this_run["wall_seconds"] = time.perf_counter() - start
        write_result(args.out, {
            "benchmark": "calibration_transfer", "model": "smollm2-135m (dithered float32 reference)",
            "protocol": next(iter(evaluators.values())).protocol, "eval": "evaluation split of each domain",
            "bits": args.bits, "group_size": args.group_size, "nsamples": args.nsamples, "seqlen": args.seqlen,
            "seed": args.seed, "gptq": "act-order, true-sequential, block 128, damp 0.01, asymmetric, no Hessian "
                                       "shrinkage, unless the setting's options say otherwise",
            "float": floats, "rtn": rtn, "rtn_symmetric": rtn_sym, "torch": torch.__version__,
            "rows": [r for r in earlier.get("rows", []) if r["setting"] not in names] + rows,
            "summary": [x for x in earlier.get("summary", []) if x["setting"] not in names] + summaries,
            "runs": [r for r in earlier.get("runs", []) if r.get("id") != this_run["id"]] + [this_run],
        }, "benchmarks/calibration_transfer.py")
    return {"rows": rows, "summary": summaries}


if __name__ == "__main__":
    main()
