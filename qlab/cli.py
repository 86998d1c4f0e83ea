"""The `qlab` command: info, quantize, eval, compare, export — thin fronts over the library.

Without --model the embedded SmolLM2-135M (dithered reference) is used; without --dataset the default texts of
qlab.data (DEFAULT_CALIBRATION for quantize, DEFAULT_EVALUATION's evaluation split for eval). With --json the
last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

from .data import DEFAULT_CALIBRATION, DEFAULT_EVALUATION
from .errors import BadArgumentError, QlabError


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors raise BadArgumentError, so that --json still ends with a JSON error line."""

    def error(self, message):
        raise BadArgumentError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _int_at_least(low: int, what: str):
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, not {value!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"{what} must be ≥ {low}, not {n}")
        return n

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def _bits(value: str) -> int:
    n = _int_at_least(2, "bits")(value)
    if n > 8:
        raise argparse.ArgumentTypeError(f"bits must be an integer from 2 to 8, not {n}")
    return n


def _group(value: str):
    if value in ("channel", "tensor"):
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"group size must be a positive integer, 'channel' or 'tensor', "
                                         f"not {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"group size must be a positive integer (or 'channel' for one group per "
                                         f"row, 'tensor' for one per tensor), not {n}")
    return n


def _fraction(what: str):
    """An argparse type for a number in [0, 1]; `what` says what it is in the error message."""
    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, not {value!r}") from None
        if not 0 <= x <= 1:
            raise argparse.ArgumentTypeError(f"{what}: give a number in [0, 1], not {value}")
        return x
    return parse


QUANTIZERS = {"rtn": ("qlab.rtn", "RTNQuantizer"), "gptq": ("qlab.gptq", "GPTQQuantizer"),
              "awq": ("qlab.awq", "AWQQuantizer")}


def quantizer_class(method: str):
    """The block quantizer class of a --method (imported on demand: `qlab --help` stays fast)."""
    import importlib

    module, name = QUANTIZERS[method]
    return getattr(importlib.import_module(module), name)


# --flag (argparse dest) → (methods whose quantizer takes it, its constructor argument, CLI value → argument).
# Every one defaults to None: unless given, the quantizer class's own default applies — the classes are the one
# source of defaults (their __init__ signatures).
_QUANT_FLAGS = {
    "bits": (("rtn", "gptq", "awq"), "bits", None),
    "group_size": (("rtn", "gptq", "awq"), "group_size", None),
    "sym": (("rtn", "gptq", "awq"), "symmetric", None),
    "damp": (("gptq",), "damp", None),
    "shrink": (("gptq",), "shrink", None),
    "block_size": (("gptq",), "block_size", None),
    "act_order": (("gptq",), "act_order", None),
    "static_groups": (("gptq",), "static_groups", None),
    "true_sequential": (("gptq",), "true_sequential", None),
    "forward_dtype": (("gptq",), "forward_dtype", None),
    "alpha_grid": (("awq",), "alpha_grid", None),
    "clip": (("awq",), "clip", None),
    "then": (("awq",), "then", None),
    "objective": (("awq",), "objective", None),
    "duo_scaling": (("awq",), "duo_scaling", None),
    "shared_clip": (("awq",), "clip_independent", lambda shared: not shared),
}


# the --format names (qlab.float_formats.FORMATS, checked there; listed here so that `qlab --help` imports no torch)
FORMAT_HELP = ("weight format: int (the default: affine integer grids, --bits / --group-size / --sym), or a float "
               "format rounded to nearest (--method rtn): mxfp4, nvfp4, nf4, nf4-dq (NF4 with double "
               "quantization), mxfp6_e3m2, mxfp6_e2m3, mxfp8_e4m3, mxfp8_e5m2, mxint8, fp8-e4m3, fp8-e5m2 "
               "(per-channel FP8)")


def _add_quant_args(p: argparse.ArgumentParser) -> None:
    on_off = argparse.BooleanOptionalAction
    p.add_argument("--method", choices=tuple(QUANTIZERS), default="rtn")
    p.add_argument("--format", default="int", help=FORMAT_HELP)
    p.add_argument("--bits", type=_bits, default=None, help="2 to 8 (default: the method's, 4)")
    p.add_argument("--group-size", type=_group, default=None,
                   help="int dividing the rows, 'channel' or 'tensor' (default: the method's quantizer class's)")
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--sym", dest="sym", action="store_const", const=True, default=None,
                      help="symmetric grid (no zero-point stored)")
    grid.add_argument("--asym", dest="sym", action="store_const", const=False,
                      help="asymmetric grid, integer zero-point (default: the method's quantizer class's)")
    p.add_argument("--skip", nargs="*", default=[], help="Linear names (or suffixes) to keep in float")
    _add_calibration_args(p, 128)
    p.add_argument("--no-output-errors", action="store_true",
                   help="skip measuring each Linear's output error against the float block (one forward pass per "
                        "block less; the table then shows weight errors only)")
    g = p.add_argument_group("GPTQ (defaults: qlab.gptq.GPTQQuantizer's)")
    g.add_argument("--damp", type=_fraction("damping (a fraction of mean diag(H))"), default=None,
                   help="dampening, fraction of mean diag(H)")
    g.add_argument("--shrink", type=_fraction("shrink (the weight of diag(H))"), default=None,
                   help="shrink the Hessian toward its diagonal: (1 − γ)·H + γ·diag(H), γ in [0, 1]")
    g.add_argument("--block-size", type=_int_at_least(1, "block size"), default=None, help="lazy-batch width B")
    g.add_argument("--act-order", action=on_off, default=None, help="quantize columns by descending diag(H)")
    g.add_argument("--static-groups", action=on_off, default=None, help="group grids fixed before the sweep")
    g.add_argument("--true-sequential", action=on_off, default=None,
                   help="each sub-layer's inputs taken after the ones before it were quantized (done in one forward "
                        "per block when all calibration tokens fit in memory at once: the fastest GPTQ mode)")
    g.add_argument("--forward-dtype", choices=("float32", "bfloat16"), default=None,
                   help="dtype of the calibration forward passes (bfloat16: autocast, faster on CPUs with bf16 "
                        "matrix units; Hessians and the sweep stay float32)")
    a = p.add_argument_group("AWQ (defaults: qlab.awq.AWQQuantizer's)")
    a.add_argument("--alpha-grid", type=_int_at_least(2, "alpha grid points"), default=None,
                   help="points of the α grid in [0, 1]")
    a.add_argument("--clip", action=on_off, default=None, help="the clipping search (--no-clip: skip it)")
    a.add_argument("--then", choices=("rtn", "gptq"), default=None, help="quantizer applied after AWQ scaling")
    a.add_argument("--objective", choices=("linear", "module"), default=None,
                   help="scale search error on the Linears' outputs, or on the attention / MLP output they feed")
    a.add_argument("--duo-scaling", action=on_off, default=None,
                   help="s = mean|x|^α / mean|w|^(1−α) instead of mean|x|^α")
    a.add_argument("--shared-clip", action=on_off, default=None,
                   help="one shrink factor for both ends of each group's range (--no-shared-clip: min and max "
                        "searched apart)")


def _add_calibration_args(p: argparse.ArgumentParser, nsamples: int, seed: bool = True) -> None:
    p.add_argument("--nsamples", type=_int_at_least(1, "nsamples"), default=nsamples,
                   help="calibration samples (GPTQ/AWQ)")
    p.add_argument("--seqlen", type=_int_at_least(2, "seqlen"), default=512, help="tokens per calibration sample")
    if seed:
        p.add_argument("--seed", type=_int_at_least(0, "seed"), default=0)


def quantizer_arguments(args) -> dict:
    """The constructor arguments the command line gives the method's quantizer: only the flags given (the
    class's defaults fill the rest). A flag of another method raises BadArgumentError."""
    kwargs = {}
    for dest, (methods, name, convert) in _QUANT_FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if args.method not in methods:
            flag = "--" + dest.replace("_", "-")
            raise BadArgumentError(f"{flag} only applies to --method {' / '.join(methods)}; --method {args.method} "
                                   f"does not use it: drop it, or choose --method {methods[0]}")
        kwargs[name] = convert(value) if convert else value
    return kwargs


def weight_format(args) -> str:
    """The --format of the arguments, checked: "int" (affine integer grids) or a name of
    qlab.float_formats.FORMATS (BadArgumentError for an unknown one, listing the known)."""
    fmt = str(getattr(args, "format", None) or "int")
    if fmt.lower() == "int":
        return "int"
    from .float_formats import check_format

    return check_format(fmt)


def make_quantizer(args):
    """The block quantizer the arguments ask for (the quantizer class's defaults where a flag is not given); with
    a float --format, qlab.float_formats.FloatFormatQuantizer (round-to-nearest onto that format)."""
    fmt = weight_format(args)
    if fmt != "int":
        from .float_formats import FloatFormatQuantizer

        if args.method != "rtn":
            raise BadArgumentError(f"--format {fmt} rounds each weight to nearest on the format's grid: use --method "
                                   f"rtn (--method {args.method} produces affine integer grids: --format int)")
        given = [flag for dest, flag in (("bits", "--bits"), ("group_size", "--group-size"), ("sym", "--sym/--asym"))
                 if getattr(args, dest, None) is not None]
        if given:
            raise BadArgumentError(f"{' and '.join(given)} shape(s) the affine integer grid and does not apply to "
                                   f"--format {fmt}, whose element width and block size are fixed: drop "
                                   f"{'them' if len(given) > 1 else 'it'}, or use --format int")
        return FloatFormatQuantizer(fmt)
    return quantizer_class(args.method)(**quantizer_arguments(args))


def _quantized_shapes(model, skip) -> dict[str, tuple[int, ...]]:
    """The weight shape of every Linear the walk quantizes, by full name."""
    from .walk import block_prefix, decoder_blocks, layers_to_quantize

    prefix = block_prefix(model)
    return {n: tuple(m.weight.shape) for i, b in enumerate(decoder_blocks(model))
            for n, m in layers_to_quantize(b, f"{prefix}.{i}", skip).items()}


def _calibration(args) -> dict | None:
    """The calibration the run uses: {dataset, nsamples, seqlen, seed}; None for RTN (no calibration)."""
    if args.method == "rtn":
        return None
    return {"dataset": args.dataset or DEFAULT_CALIBRATION, "nsamples": args.nsamples, "seqlen": args.seqlen,
            "seed": getattr(args, "seed", 0)}


def _quantize(model, tokenizer, args, quantizer=None, progress=True):
    from .data import calibration_batches
    from .pipeline import quantize_model

    calib = _calibration(args)
    ids = None if calib is None else calibration_batches(tokenizer, calib["dataset"], calib["nsamples"],
                                                          calib["seqlen"], calib["seed"])
    return quantize_model(model, ids, quantizer if quantizer is not None else make_quantizer(args), skip=args.skip,
                          progress=progress, output_errors=not getattr(args, "no_output_errors", False))


def _check_inputs(args, unused_text: str | None = None) -> None:
    """The checks every command makes before any model loads: the model name and the text source (a --dataset
    the command would not use raises BadArgumentError(unused_text))."""
    from .data import check_source
    from .model import model_source

    model_source(args.model)
    if args.dataset is not None:
        if unused_text:
            raise BadArgumentError(unused_text)
        check_source(args.dataset)


def _check_out(args, kind: str, size_bytes: int = 0):
    """The --out path checked (qlab.output's rules) before work starts; the model read is protected."""
    from .output import check_output

    return check_output(args.out, kind, args.overwrite, size_bytes, protect=[args.model])


def cmd_quantize(args) -> dict:
    from .checkpoint import run_settings, save_block_quantized, save_quantized
    from .model import describe, load_model, model_source
    from .walk import linear_layers

    _check_inputs(args, "--dataset is calibration text, and RTN uses none: drop --dataset, or choose --method gptq "
                        "/ awq" if args.method == "rtn" else None)
    quantizer = make_quantizer(args)  # before any model loads: a flag of another method fails here
    if args.out:
        _check_out(args, "folder")
    fmt = weight_format(args)
    model, tokenizer = load_model(args.model)
    if fmt != "int":  # every row must split into the format's blocks: checked before any work
        from .float_formats import check_rows

        check_rows(_quantized_shapes(model, args.skip), fmt)
    if args.out:  # the float model, one byte per quantized weight (codes), its scales: known once it is loaded
        floats = sum(p.numel() * p.element_size() for p in model.parameters())
        _check_out(args, "folder", floats + sum(m.weight.numel() for m in linear_layers(model).values()))
    result = _quantize(model, tokenizer, args, quantizer)
    print(result.table())
    base = args.model or "smollm2-135m"
    settings = run_settings(quantizer, method=args.method, model=base, model_source=model_source(args.model),
                            calibration=_calibration(args), skip=args.skip, format=fmt)
    meta = {"base_model": base, "method": result.method, "bits": settings["bits"],
            "group_size": settings["group_size"], "symmetric": settings["symmetric"],
            "calibration": settings["calibration"]["dataset"] if settings["calibration"] else None,
            "description": f"{describe(model)} — quantized with {result.method}", "settings": settings}
    out = None
    if args.out and fmt != "int":  # packed block-float bytes, dequantized when the folder is loaded
        out = save_block_quantized(model, tokenizer, result.block_tensors, args.out, meta, args.overwrite,
                                   protect=[args.model])
    elif args.out:
        out = save_quantized(model, tokenizer, result.qtensors, args.out, meta, args.overwrite, protect=[args.model])
    summary = {"method": result.method, "format": fmt, "bits_per_weight": round(result.bits_per_weight(), 4),
               "seconds": round(result.seconds, 2), "layers": len(result.layers), "out": str(out) if out else None,
               "settings": settings}
    print(f"{result.method}: {summary['layers']} Linears, {summary['bits_per_weight']} bits/weight, "
          f"{summary['seconds']} s" + (f", written to {out}" if out else ""))
    return summary


def _eval_tokens(tokenizer, args):
    from .data import eval_tokens

    return eval_tokens(tokenizer, args.dataset or DEFAULT_EVALUATION, args.tokens or None)


def cmd_eval(args) -> dict:
    from .eval import Evaluator, perplexity, protocol
    from .model import describe, load_model, model_source

    _check_inputs(args)
    if args.reference:
        model_source(args.reference)
    model, tokenizer = load_model(args.model)
    tokens = _eval_tokens(tokenizer, args)
    reference = args.reference
    if reference is None and args.model and (Path(args.model) / "qlab.json").is_file():
        from .checkpoint import read_meta

        reference = read_meta(args.model).get("base_model")
    if reference:
        ref_model, _ = load_model(reference)
        r = Evaluator(ref_model, tokens, args.ctx).evaluate(model)
    else:
        r = perplexity(model, tokens, args.ctx)
    print(f"model: {describe(model)}")
    print(f"protocol: {protocol(args.ctx, len(tokens))}")
    print(f"perplexity {r.perplexity:.3f} over {r.tokens} scored tokens in {r.seconds:.1f} s"
          + (f"; KL vs {reference} {r.kl:.4f} nats, top-1 agreement {r.top1:.3f}" if reference else ""))
    out = {"perplexity": r.perplexity, "tokens": r.tokens, "seconds": r.seconds, "ctx": args.ctx}
    if reference:
        out.update(kl=r.kl, top1=r.top1, reference=reference)
    return out


def parse_setting(text: str) -> argparse.Namespace:
    """'method:bits:group[:sym|asym]', e.g. 'rtn:4:64:sym', 'gptq:3:channel' (without sym/asym: the method's
    default grid), or 'rtn:FORMAT' for a float weight format, e.g. 'rtn:mxfp4', 'rtn:nf4' (qlab.float_formats)."""
    parts = text.split(":")
    if len(parts) == 2:
        if parts[0] != "rtn" or parts[1].lower() == "int":
            raise BadArgumentError(f"setting {text!r}: a float format is given as rtn:FORMAT (e.g. rtn:mxfp4); an "
                                   f"integer grid as method:bits:group[:sym|asym] (e.g. {parts[0]}:4:64)")
        ns = build_parser().parse_args(["quantize"])
        try:
            ns.format = weight_format(argparse.Namespace(format=parts[1]))
        except BadArgumentError as e:
            raise BadArgumentError(f"setting {text!r}: {e}") from None
        return ns
    if len(parts) not in (3, 4) or parts[0] not in QUANTIZERS or parts[3:] not in ([], ["sym"], ["asym"]):
        raise BadArgumentError(f"setting {text!r} is not method:bits:group[:sym|asym] with method rtn, gptq or awq "
                               f"(e.g. rtn:4:64:sym), nor rtn:FORMAT (e.g. rtn:mxfp4, rtn:nf4)")
    ns = build_parser().parse_args(["quantize"])
    try:
        ns.method, ns.bits, ns.group_size = parts[0], _bits(parts[1]), _group(parts[2])
    except argparse.ArgumentTypeError as e:
        raise BadArgumentError(f"setting {text!r}: {e}") from None
    ns.sym = None if not parts[3:] else parts[3] == "sym"
    return ns


def cmd_compare(args) -> dict:
    from .data import check_source
    from .eval import Evaluator, protocol
    from .model import load_model

    settings = [parse_setting(text) for text in args.settings]
    _check_inputs(args)
    if args.calibration is not None:
        check_source(args.calibration)
    model, tokenizer = load_model(args.model)
    tokens = _eval_tokens(tokenizer, args)
    evaluator = Evaluator(model, tokens, args.ctx)
    rows = [{"setting": "float32", "format": "float32", "bits_per_weight": 32.0,
             "perplexity": evaluator.reference.perplexity, "kl": 0.0, "top1": 1.0, "seconds": 0.0, "size_mb": None}]
    for text, s in zip(args.settings, settings):
        s.dataset, s.nsamples, s.seqlen = args.calibration, args.nsamples, args.seqlen
        q = copy.deepcopy(model)
        result = _quantize(q, tokenizer, s, progress=False)
        r = evaluator.evaluate(q)
        size = result.storage_bits() / 8 / 2**20
        rows.append({"setting": text, "format": s.format, "bits_per_weight": result.bits_per_weight(),
                     "perplexity": r.perplexity,
                     "kl": r.kl, "top1": r.top1, "seconds": result.seconds, "size_mb": size})
        del q
    print(f"protocol: {protocol(args.ctx, len(tokens))}; sizes count the quantized Linears only")
    print(f"{'setting':22s} {'MB':>7s} {'bits/w':>7s} {'ppl':>9s} {'KL':>8s} {'top-1':>6s} {'quant s':>8s}")
    for r in rows:
        mb = "" if r["size_mb"] is None else f"{r['size_mb']:7.2f}"
        print(f"{r['setting']:22s} {mb:>7s} {r['bits_per_weight']:7.3f} {r['perplexity']:9.3f} {r['kl']:8.4f} "
              f"{r['top1']:6.3f} {r['seconds']:8.1f}")
    return {"rows": rows, "tokens": len(tokens), "ctx": args.ctx}


def cmd_claims(args) -> dict:
    from . import claims

    known = (*claims.VERDICTS, "missing")
    if args.verdict is not None and args.verdict not in known:
        raise BadArgumentError(f"--verdict must be one of {', '.join(known)}; got {args.verdict!r}")
    rows = [r for r in claims.ledger() if args.verdict in (None, r.verdict)]
    print(claims.table(rows))
    return {"claims": [r.__dict__ for r in rows]}


def cmd_info(args) -> dict:
    from .data import eval_tokens
    from .eval import perplexity, protocol
    from .model import EMBEDDED_VARIANTS, describe, load_model, parameter_count
    from .walk import linear_layers

    _check_inputs(args)
    model, tokenizer = load_model(args.model)

    shapes = {n: tuple(m.weight.shape) for n, m in linear_layers(model).items()}
    out = {"model": args.model or "smollm2-135m", "description": describe(model),
           "parameters": parameter_count(model), "linear_layers": len(shapes)}
    print(f"model: {out['model']}\n  {out['description']}\n  {out['parameters'] / 1e6:.1f} M parameters, "
          f"{len(shapes)} Linear layers")
    for shape in sorted(set(shapes.values())):
        print(f"  {sum(1 for s in shapes.values() if s == shape):3d} × Linear {shape[1]} → {shape[0]}")
    if args.tokens:
        names = list(EMBEDDED_VARIANTS) if args.model in (None, *EMBEDDED_VARIANTS) else [args.model]
        out["perplexity"] = {}
        for name in names:
            m, tok = load_model(name)
            tokens = eval_tokens(tok, args.dataset or DEFAULT_EVALUATION, args.tokens)
            r = perplexity(m, tokens, args.ctx, progress=False)
            out["perplexity"][name] = r.perplexity
            print(f"  perplexity of {name}: {r.perplexity:.3f} ({protocol(args.ctx, len(tokens))}, "
                  f"{args.dataset or DEFAULT_EVALUATION} evaluation split)")
    return out


def _folder_settings(model) -> dict | None:
    """The run settings recorded in a folder written by `qlab quantize` (None for any other model)."""
    if model is None or not (Path(model) / "qlab.json").is_file():
        return None
    from .checkpoint import read_settings

    return read_settings(model)


def cmd_export(args) -> dict:
    from .model import load_model

    if args.format == "gguf":
        from .gguf import mixes
        from .gguf.writer import export_gguf

        _check_inputs(args, None if args.imatrix else "--dataset is calibration text for --imatrix: add --imatrix, "
                                                      "or drop --dataset")
        mixes.file_type(args.type)
        _check_out(args, "file")
        model, tokenizer = load_model(args.model)
        imatrix = None
        if args.imatrix:
            from .data import calibration_batches
            from .gguf.imatrix import collect_imatrix

            ids = calibration_batches(tokenizer, args.dataset or DEFAULT_CALIBRATION, args.nsamples, args.seqlen,
                                      args.seed)
            imatrix = collect_imatrix(model, ids)
        path = export_gguf(model, tokenizer, args.out, args.type, imatrix=imatrix, overwrite=args.overwrite,
                           protect=[args.model], settings=_folder_settings(args.model))
    else:
        from .checkpoint import check_quantized_folder, load_quantized

        if args.model is None:
            raise BadArgumentError(f"--format {args.format} converts a folder written by `qlab quantize`: give it "
                                   f"as --model DIR")
        if args.dataset is not None or args.imatrix:
            raise BadArgumentError(f"--dataset / --imatrix only apply to --format gguf; drop them for {args.format}")
        check_quantized_folder(args.model)
        _check_out(args, "folder")
        model, tokenizer, qtensors, meta = load_quantized(args.model)
        if args.format == "gptq":
            from .export_gptq import save_gptq_checkpoint as save
        else:
            from .export_awq import save_awq_checkpoint as save
        path = save(model, tokenizer, qtensors, args.out, overwrite=args.overwrite, protect=[args.model],
                    settings=meta.get("settings"))
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if Path(path).is_dir() \
        else Path(path).stat().st_size
    print(f"wrote {path} ({size / 2**20:.1f} MiB)")
    return {"out": str(path), "bytes": size}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, dataset_help):
        p.add_argument("--model", default=None, help="embedded name, HF id, folder or .gguf (default: embedded)")
        p.add_argument("--dataset", default=None, help=dataset_help)
        p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    def evaluation(p):
        p.add_argument("--ctx", type=_int_at_least(2, "ctx"), default=512, help="tokens per evaluation window")
        p.add_argument("--tokens", type=_int_at_least(0, "tokens"), default=4096,
                       help="evaluation tokens (0: the whole split)")

    p = sub.add_parser("info", help="describe a model (and its perplexity)")
    common(p, f"evaluation text (default: {DEFAULT_EVALUATION} evaluation split)")
    evaluation(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("quantize", help="quantize a model and write it to --out")
    common(p, f"calibration text: wiki, news, code, wikitext2, a file, or several joined by '+' (default: "
              f"{DEFAULT_CALIBRATION} calibration split)")
    _add_quant_args(p)
    p.add_argument("--out", default=None, help="output folder (a new path, or an earlier qlab output with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is an earlier qlab output")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("eval", help="perplexity (and KL against --reference)")
    common(p, f"evaluation text: wiki, news, code, wikitext2, a file, or several joined by '+' (default: "
              f"{DEFAULT_EVALUATION} evaluation split)")
    evaluation(p)
    p.add_argument("--reference", default=None, help="reference model for KL / top-1 (default: a qlab folder's base)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="a table of quantization settings: size, bits/weight, ppl, KL, top-1")
    common(p, f"evaluation text (default: {DEFAULT_EVALUATION} evaluation split)")
    evaluation(p)
    p.add_argument("--settings", nargs="+", default=["rtn:8:64", "rtn:4:64", "rtn:4:64:sym", "rtn:3:64:sym"],
                   help="method:bits:group[:sym|asym] or rtn:FORMAT (a float format: rtn:mxfp4, rtn:nf4, ...)")
    p.add_argument("--calibration", default=None,
                   help=f"calibration text for GPTQ/AWQ (default: {DEFAULT_CALIBRATION})")
    _add_calibration_args(p, 32, seed=False)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("claims", help="the article's claims, each with the verdict its notebook printed")
    p.add_argument("--verdict", default=None, help="only the claims with this verdict (true, false, partly, ...)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(func=cmd_claims)

    p = sub.add_parser("export", help="write a GGUF file, or a GPTQ/AWQ checkpoint from a qlab folder")
    common(p, f"calibration text for --imatrix (default: {DEFAULT_CALIBRATION} calibration split)")
    p.add_argument("--format", choices=("gguf", "gptq", "awq"), required=True)
    p.add_argument("--type", default="Q8_0", help="GGUF type or mix: F32, F16, Q8_0, Q4_0, ..., Q4_K_M, ...")
    p.add_argument("--imatrix", action="store_true", help="collect importance weights on calibration text")
    _add_calibration_args(p, 32)
    p.add_argument("--out", required=True, help="output file (.gguf) or folder")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is an earlier qlab output")
    p.set_defaults(func=cmd_export)
    return parser


def _fail(e: BaseException, as_json: bool, code: int) -> int:
    """Print the error (and, with --json, a JSON error object as the last line); the exit code."""
    print(f"qlab: error: {e}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": str(e), "kind": type(e).__name__}))
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    as_json = "--json" in argv
    start = time.perf_counter()
    try:
        args = build_parser().parse_args(argv)
        out = args.func(args)
    except QlabError as e:
        return _fail(e, as_json, 2)
    except KeyboardInterrupt:
        return _fail(KeyboardInterrupt("interrupted; nothing was written at the output path"), as_json, 130)
    except Exception as e:
        if not as_json:
            raise
        import traceback

        traceback.print_exc()
        return _fail(e, as_json, 1)
    if args.json:
        out.setdefault("seconds", round(time.perf_counter() - start, 2))
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
