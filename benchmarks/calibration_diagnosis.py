"""Where GPTQ's advantage over RTN goes on other text: per-Linear output error under each text's inputs (issue 24).

    .venv/bin/python benchmarks/calibration_diagnosis.py [--bits 3 --group-size 64 --nsamples 32 --seqlen 512
        --shrinks 0,0.5 --out benchmarks/results/calibration_diagnosis.json]

For every Linear of the embedded SmolLM2-135M (dithered float32 reference), the Hessian of its float inputs is
taken on the calibration split of `wiki` (`--nsamples` × `--seqlen` tokens) and on the evaluation split of each
domain (wiki, news, code; `--eval-tokens` tokens each). GPTQ (act-order, asymmetric grids, each `--shrinks` γ)
quantizes the Linear ALONE from the wiki calibration Hessian; RTN on the same grid is the baseline. Each
quantized weight is scored under each domain's evaluation Hessian: relative output error ‖ΔW·X‖²/‖W·X‖². This is
local (float inputs, one Linear at a time, no error carried from earlier blocks): it says where the gain goes,
while benchmarks/calibration_transfer.py measures what the whole model does. Also per shared input: the
generalised spectrum of (H_domain, H_wiki_cal + λI) (qlab.lessons.calibration_transfer). Writes
benchmarks/results/calibration_diagnosis.json: per Linear and aggregated by Linear kind and by depth third.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qlab.affine import fake_quantize  # noqa: E402
from qlab.data import calibration_batches, eval_tokens  # noqa: E402
from qlab.gptq import gptq_quantize_layer, layer_hessians  # noqa: E402
from qlab.lessons.calibration_transfer import (  # noqa: E402
    amplification,
    generalised_spectrum,
    spectrum_summary,
    transfer_errors,
)
from qlab.model import load_model  # noqa: E402
from qlab.output import check_result_path, write_result  # noqa: E402
from qlab.walk import linear_layers  # noqa: E402

DOMAINS = ("wiki", "news", "code")
# Linears that read the same input share one Hessian: the first of each group names it
SHARED_INPUT = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.q_proj", "v_proj": "self_attn.q_proj",
                "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.gate_proj",
                "down_proj": "mlp.down_proj"}


def geometric_mean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--shrinks", default="0,0.5", help="GPTQ Hessian shrinkage values γ to score")
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "calibration_diagnosis.json"))
    args = ap.parse_args(argv)
    check_result_path(args.out)
    shrinks = [float(x) for x in args.shrinks.split(",")]
    torch.set_num_threads(1)
    start = time.perf_counter()
    machine = f"{platform.machine()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at start"

    model, tok = load_model()
    blocks = model.model.layers
    linears = {f"model.layers.{i}.{n}": m for i, b in enumerate(blocks) for n, m in linear_layers(b).items()}
    hess_names = sorted({n.rsplit(".", 2)[0] + "." + SHARED_INPUT[n.rsplit(".", 1)[1]] for n in linears})
    seq = args.seqlen
    H_cal = layer_hessians(model, calibration_batches(tok, "wiki", args.nsamples, seq, 0), hess_names)
    H_eval = {}
    for d in tqdm(DOMAINS, desc="evaluation Hessians"):
        ids = eval_tokens(tok, d, args.eval_tokens)
        H_eval[d] = layer_hessians(model, ids[: len(ids) // seq * seq].reshape(-1, seq), hess_names)

    spectra = {}
    for key in tqdm(hess_names, desc="spectra"):
        spectra[key] = {d: spectrum_summary(generalised_spectrum(H_cal[key], H_eval[d][key], args.damp))
                        for d in DOMAINS}

    rows = []
    for name, lin in tqdm(linears.items(), desc="GPTQ per Linear"):
        key = name.rsplit(".", 2)[0] + "." + SHARED_INPUT[name.rsplit(".", 1)[1]]
        W = lin.weight.detach().float()
        quantized = {"rtn": fake_quantize(W, args.bits, args.group_size, symmetric=False)}
        for g in shrinks:
            qt, _ = gptq_quantize_layer(W, H_cal[key], args.bits, args.group_size, symmetric=False, damp=args.damp,
                                        act_order=True, shrink=g)
            quantized[f"gptq shrink {g:g}"] = qt.dequantize(torch.float32).reshape(W.shape)
        errors = transfer_errors(W, quantized, {d: H_eval[d][key] for d in DOMAINS})
        rows.append({"layer": name, "kind": name.rsplit(".", 1)[1], "block": int(name.split(".")[2]),
                     "errors": errors,
                     "amplification_code": {m: amplification(errors, m, "rtn", "wiki", "code")
                                            for m in quantized if m != "rtn"}})

    methods = [f"gptq shrink {g:g}" for g in shrinks]
    n_blocks = len(blocks)

    def aggregate(select) -> dict:
        chosen = [r for r in rows if select(r)]
        return {m: {d: {"gptq_over_rtn_geomean": geometric_mean([r["errors"][m][d] / r["errors"]["rtn"][d]
                                                                  for r in chosen]),
                        "share_gptq_better": sum(r["errors"][m][d] < r["errors"]["rtn"][d] for r in chosen)
                        / len(chosen)}
                    for d in DOMAINS} for m in methods}

    by_kind = {k: aggregate(lambda r, k=k: r["kind"] == k) for k in SHARED_INPUT}
    thirds = {f"blocks {a}-{b - 1}": (a, b) for a, b in
              ((0, n_blocks // 3), (n_blocks // 3, 2 * n_blocks // 3), (2 * n_blocks // 3, n_blocks))}
    by_depth = {label: aggregate(lambda r, a=a, b=b: a <= r["block"] < b) for label, (a, b) in thirds.items()}
    overall = aggregate(lambda r: True)
    for m in methods:
        print(f"{m}: GPTQ/RTN error (geometric mean over {len(rows)} Linears) " + "  ".join(
            f"{d} {overall[m][d]['gptq_over_rtn_geomean']:.3f} ({overall[m][d]['share_gptq_better']:.0%} better)"
            for d in DOMAINS))
        for k, agg in by_kind.items():
            print(f"   {k:10s} " + "  ".join(f"{d} {agg[m][d]['gptq_over_rtn_geomean']:.3f}" for d in DOMAINS))
    out = write_result(args.out, {
        "benchmark": "calibration_diagnosis", "model": "smollm2-135m (dithered float32 reference)",
        "bits": args.bits, "group_size": args.group_size, "calibration": f"wiki, {args.nsamples} × {seq} tokens",
        "evaluation": f"each domain's evaluation split, first {args.eval_tokens} tokens",
        "gptq": f"act-order, asymmetric, damp {args.damp}, each Linear alone on float inputs", "shrinks": shrinks,
        "overall": overall, "by_kind": by_kind, "by_depth": by_depth, "spectra": spectra, "rows": rows,
        "machine": machine, "wall_seconds": time.perf_counter() - start, "torch": torch.__version__,
    }, "benchmarks/calibration_diagnosis.py")
    print(f"wrote {out} ({time.perf_counter() - start:.0f} s)")
    return {"overall": overall}


if __name__ == "__main__":
    main()
