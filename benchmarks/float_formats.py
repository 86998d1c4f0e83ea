"""4-bit weight formats side by side: INT4 (RTN, GPTQ, AWQ), NF4, MXFP4, NVFP4, GGUF Q4_0 / Q4_K on the embedded model.

    nice -n 10 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/float_formats.py
        [--quick] [--eval-tokens 4096] [--nsamples 32] [--seqlen 512] [--awq-alpha-grid 20] [--rows a,b,...]
        [--budget-s 2400] [--out benchmarks/results/float_formats.json]

Each row quantizes the Linears of every decoder block of the embedded SmolLM2-135M (dithered float32 reference;
embeddings and the tied lm_head stay float32 and are NOT counted in bits per weight) and evaluates it on the
first `--eval-tokens` tokens of the wiki evaluation split in 512-token windows (qlab.eval.Evaluator): perplexity,
KL(P_float ‖ P_quant) and top-1 agreement against the float model.
  int4 asym g32 / g64   RTN (qlab.rtn), GPTQ (qlab.gptq, act-order, true-sequential) and AWQ (qlab.awq, its
                        defaults but `--awq-alpha-grid`); GPTQ and AWQ calibrate on `--nsamples` × `--seqlen`
                        tokens of the wiki calibration split (seed 0)
  nf4, nf4-dq, mxfp4, nvfp4   qlab.float_formats (round to nearest onto the format, qlab.blockfloat)
  gguf Q4_0, Q4_K       qlab.gguf's byte-exact block formats, each Linear in the type llama-quantize --pure gives
                        it: the type itself where its block divides the row, else the type's fallback
                        (qlab.gguf.mixes.fallback: Q4_K needs rows of 256·n, only down_proj's 1536 fit; the other
                        Linears (576-wide rows) get Q5_0). The bits are the real bytes written.
Bits per weight are counted from storage: affine tensors by qlab.qtensor.storage_breakdown (unpadded), block
formats by BlockQuantized.storage_bits(), GGUF by the bytes of its blocks. `findings` names, for every group of
rows within ±0.1 bits per weight of each other, the one with the lowest KL. Writes the JSON (after every row,
atomically) and a PNG plot of perplexity and KL against bits per weight.
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

from qlab.data import calibration_batches, eval_tokens  # noqa: E402
from qlab.eval import Evaluator  # noqa: E402
from qlab.model import load_model  # noqa: E402
from qlab.output import check_result_path, write_result  # noqa: E402
from qlab.pipeline import quantize_model  # noqa: E402
from qlab.walk import block_prefix, decoder_blocks, layers_to_quantize  # noqa: E402

ROWS = ["rtn int4 g64", "rtn int4 g32", "nf4", "nf4-dq", "mxfp4", "nvfp4", "gguf Q4_0", "gguf Q4_K",
        "gptq int4 g64", "gptq int4 g32", "awq int4 g64", "awq int4 g32"]
QUICK_ROWS = ["rtn int4 g64", "nf4", "mxfp4", "nvfp4", "gguf Q4_0"]


def make_quantizer(label: str, args):
    from qlab.float_formats import FloatFormatQuantizer

    if label.startswith(("rtn", "gptq", "awq")):
        method, _, group = label.split()
        g = int(group[1:])
        if method == "rtn":
            from qlab.rtn import RTNQuantizer

            return RTNQuantizer(bits=4, group_size=g, symmetric=False)
        if method == "gptq":
            from qlab.gptq import GPTQQuantizer

            return GPTQQuantizer(bits=4, group_size=g, symmetric=False, progress=False)
        from qlab.awq import AWQQuantizer

        return AWQQuantizer(bits=4, group_size=g, symmetric=False, alpha_grid=args.awq_alpha_grid, progress=False)
    return FloatFormatQuantizer(label)


def gguf_quantize(model, qtype: str) -> tuple[int, int, dict[str, int]]:
    """Every decoder-block Linear through qlab.gguf (llama-quantize --pure's type with its shape fallback), in
    place: (stored bits, weights, {type: tensors})."""
    import numpy as np
    from gguf import GGMLQuantizationType

    from qlab.gguf import dequantize, quantize
    from qlab.gguf.mixes import fallback

    bits = n = 0
    types: dict[str, int] = {}
    prefix = block_prefix(model)
    with torch.no_grad():
        for i, block in enumerate(decoder_blocks(model)):
            for _, lin in layers_to_quantize(block, f"{prefix}.{i}").items():
                W = lin.weight.detach().float().numpy()
                t = fallback(GGMLQuantizationType[qtype], W.shape[1]).name  # rows: blocks along the input dim
                raw = quantize(W, t)
                lin.weight.copy_(torch.from_numpy(np.asarray(dequantize(raw, t, W.shape), dtype=np.float32)))
                bits += 8 * raw.size
                n += W.size
                types[t] = types.get(t, 0) + 1
    return bits, n, types


def findings(rows: list[dict], float_ppl: float) -> dict:
    """For every group of rows within ±0.1 bits/weight of one row, the lowest-KL row; the overall best too."""
    groups = {}
    for r in rows:
        near = tuple(sorted(x["setting"] for x in rows if abs(x["bits_per_weight"] - r["bits_per_weight"]) <= 0.1))
        if len(near) > 1:
            groups[near] = min((x for x in rows if x["setting"] in near), key=lambda x: x["kl"])
    wins = [{"rows": list(k), "bits_range": [min(x["bits_per_weight"] for x in rows if x["setting"] in k),
                                             max(x["bits_per_weight"] for x in rows if x["setting"] in k)],
             "best_kl": w["setting"], "kl": w["kl"], "bits_per_weight": w["bits_per_weight"]}
            for k, w in groups.items()]
    text = [f"within ±0.1 bits of each other ({g['bits_range'][0]:.3f}–{g['bits_range'][1]:.3f} bits/w): "
            f"{g['best_kl']} has the lowest KL ({g['kl']:.4f}) of {', '.join(g['rows'])}" for g in wins]
    best = min(rows, key=lambda x: x["kl"]) if rows else None
    if best:
        text.append(f"lowest KL overall: {best['setting']} ({best['kl']:.4f} nats, {best['bits_per_weight']:.3f} "
                    f"bits/w, perplexity ×{best['perplexity'] / float_ppl:.3f} of float)")
    return {"equal_size_winners": wins, "summary": text}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, key, label in [(axes[0], "perplexity", "perplexity [dimensionless] (wiki evaluation split)"),
                           (axes[1], "kl", "KL(P_float ‖ P_quant) per token [nats]")]:
        for r in rows:
            ax.scatter(r["bits_per_weight"], r[key], s=28)
            ax.annotate(r["setting"], (r["bits_per_weight"], r[key]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        if key == "perplexity":
            ax.axhline(result["ppl_float"], color="grey", ls="--", lw=1)
            ax.annotate(f"float32 {result['ppl_float']:.2f}", (ax.get_xlim()[0], result["ppl_float"]), fontsize=7,
                        xytext=(2, 3), textcoords="offset points", color="grey")
        ax.set_xlabel("bits per weight [bits] (decoder-block Linears, counted from storage)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"4-bit weight formats on SmolLM2-135M — {result['protocol']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens and rows (development)")
    ap.add_argument("--eval-tokens", type=int, default=None, help="default 4096 (--quick: 1024)")
    ap.add_argument("--nsamples", type=int, default=None, help="calibration samples (default 32; --quick: 4)")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--awq-alpha-grid", type=int, default=20, help="AWQ's α grid (20 is qlab.awq's default)")
    ap.add_argument("--rows", default=None, help=f"comma-separated, from: {', '.join(ROWS)}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget-s", type=float, default=2400.0, help="start no row after this many seconds")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "float_formats.json"))
    args = ap.parse_args(argv)
    tokens_n = args.eval_tokens or (1024 if args.quick else 4096)
    nsamples = args.nsamples or (4 if args.quick else 32)
    labels = args.rows.split(",") if args.rows else (QUICK_ROWS if args.quick else ROWS)
    unknown = [x for x in labels if x not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; known: {ROWS}")
    out = check_result_path(args.out)
    png = out.with_suffix(".png")
    torch.set_num_threads(args.threads)
    machine = (f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs; load average "
               f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min) at start; torch threads "
               f"{args.threads}")
    print(machine, flush=True)
    start = time.perf_counter()
    ref, tok = load_model()
    ev = Evaluator(ref, eval_tokens(tok, "wiki", tokens_n), 512, progress=False)
    float_ppl = ev.reference.perplexity
    print(f"float reference: perplexity {float_ppl:.3f} ({ev.protocol})", flush=True)
    calib = None
    rows: list[dict] = []
    skipped: list[str] = []
    result: dict = {}

    def save() -> None:
        result.clear()
        result.update({
            "benchmark": "float_formats", "model": "smollm2-135m (dithered float32 reference)",
            "protocol": ev.protocol, "eval": f"wiki evaluation split, first {tokens_n} tokens",
            "calibration": f"wiki calibration split, {nsamples} × {args.seqlen} tokens, seed 0 (GPTQ, AWQ)",
            "bits_counted": "decoder-block Linears only (embeddings and the tied lm_head stay float32, not counted)",
            "gptq": "qlab.gptq.GPTQQuantizer defaults (act-order, true-sequential), 4 bits asymmetric",
            "awq": f"qlab.awq.AWQQuantizer defaults, alpha grid {args.awq_alpha_grid}, 4 bits asymmetric",
            "gguf": "qlab.gguf byte-exact blocks; llama-quantize --pure's type with its row fallback "
                    "(qlab.gguf.mixes.fallback): Q4_K -> Q5_0 for 576-wide rows",
            "ppl_float": float_ppl, "machine": machine, "argv": sys.argv[1:] if argv is None else list(argv),
            "torch": torch.__version__, "quick": args.quick, "rows": rows, "skipped_over_budget": skipped,
            "wall_seconds": time.perf_counter() - start, "findings": findings(rows, float_ppl),
        })
        write_result(out, result, "benchmarks/float_formats.py")

    print(f"{'setting':16s} {'bits/w':>7s} {'size×':>6s} {'ppl':>8s} {'ppl×':>6s} {'KL':>7s} {'top-1':>6s} "
          f"{'quant s':>8s}", flush=True)
    for label in labels:
        if time.perf_counter() - start > args.budget_s:
            skipped.append(label)
            continue
        model = copy.deepcopy(ref)
        t0 = time.perf_counter()
        extra = {}
        if label.startswith("gguf"):
            bits, n, types = gguf_quantize(model, label.split()[1])
            extra["tensor_types"] = types
            describe = f"GGUF {label.split()[1]} (pure, with fallback)"
        else:
            ids = None
            if label.startswith(("gptq", "awq")):
                if calib is None:
                    calib = calibration_batches(tok, "wiki", nsamples, args.seqlen, 0)
                ids = calib
            q = make_quantizer(label, args)
            res = quantize_model(model, ids, q, progress=False, output_errors=False)
            bits, n, describe = res.storage_bits(), res.weights(), res.method
        seconds = time.perf_counter() - t0
        r = ev.evaluate(model)
        del model
        row = {"setting": label, "describe": describe, "bits_per_weight": bits / n, "stored_bits": bits,
               "weights": n, "size_ratio_to_float": bits / n / 32, "perplexity": r.perplexity,
               "perplexity_ratio_to_float": r.perplexity / float_ppl, "kl": r.kl, "top1": r.top1,
               "quantize_seconds": seconds, **extra}
        rows.append(row)
        print(f"{label:16s} {row['bits_per_weight']:7.3f} {row['size_ratio_to_float']:6.3f} {r.perplexity:8.3f} "
              f"{row['perplexity_ratio_to_float']:6.3f} {r.kl:7.4f} {r.top1:6.3f} {seconds:8.1f}"
              + (f"  {extra['tensor_types']}" if extra else ""), flush=True)
        save()
    save()
    plot(result, png)
    for line in result["findings"]["summary"]:
        print(line)
    print(f"wrote {out} and {png}" + (f"; skipped over budget: {skipped}" if skipped else ""))
    return result


if __name__ == "__main__":
    main()
