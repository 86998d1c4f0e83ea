"""The `qlab` command end to end on a short text (tiny settings), its JSON last line and its errors."""

import json
import subprocess
import sys

import pytest
import torch

TEXT = ("The quick brown fox jumps over the lazy dog. " * 40 + "\n\n") * 6


def qlab(*args, ok=True):
    proc = subprocess.run([sys.executable, "-m", "qlab.cli", *args], capture_output=True, text=True, timeout=900)
    assert (proc.returncode == 0) == ok, proc.stderr[-2000:]
    return proc


def last_json(proc):
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_quantize_then_eval(tmp_path, embedded):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    out = tmp_path / "q8"
    q = last_json(qlab("quantize", "--bits", "8", "--group-size", "64", "--out", str(out), "--json"))
    assert q["layers"] == 210 and q["bits_per_weight"] == pytest.approx(8 + 24 / 64)
    e = last_json(qlab("eval", "--model", str(out), "--dataset", str(text), "--tokens", "256", "--ctx", "128",
                       "--json"))
    assert e["tokens"] == 2 * 127 and e["reference"] == "smollm2-135m"
    # Oracle, in this process: the same tokens and windows, and a twin of the reference whose weights carry
    # independent uniform errors of 8-bit RTN's step Δ (test_eval_and_pipeline.rounding_noise_twin). The
    # bounds (KL ≤ 3·KL_noise, top-1 flips ≤ √3·flips_noise + 3σ, |ln ppl ratio| ≤ KL + 5·√(2·KL/n)) are
    # derived in test_eval_and_pipeline.test_embedded_8bit_rtn_is_nearly_lossless.
    from test_eval_and_pipeline import (
        assert_perplexity_within_kl_bound,
        assert_within_rounding_bound,
        rounding_noise_twin,
    )

    from qlab.data import eval_tokens
    from qlab.eval import EvalResult, Evaluator

    model, tok = embedded
    ev = Evaluator(model, eval_tokens(tok, str(text), 256), ctx=128, progress=False)
    noise = ev.evaluate(rounding_noise_twin(model, 8, 64))
    r = EvalResult(e["perplexity"], e["tokens"], e["seconds"], e["ctx"], kl=e["kl"], top1=e["top1"])
    assert_within_rounding_bound(r, noise)
    assert_perplexity_within_kl_bound(r, ev.reference)


def test_errors_exit_2_with_a_message(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    p = qlab("eval", "--dataset", str(short), "--json", ok=False)
    assert p.returncode == 2 and "perplexity needs ≥ 2" in p.stderr
    assert last_json(p)["kind"] == "TextTooShortError"
    p = qlab("quantize", "--group-size", "128", ok=False)
    assert "does not divide the row length 576" in p.stderr and "192" in p.stderr


def test_method_flags_reach_the_quantizers():
    from qlab.cli import build_parser, make_quantizer

    awq = make_quantizer(build_parser().parse_args(
        ["quantize", "--method", "awq", "--objective", "module", "--duo-scaling", "--shared-clip", "--no-clip"]))
    assert (awq.objective, awq.duo_scaling, awq.clip_independent, awq.clip) == ("module", True, False, False)
    default = make_quantizer(build_parser().parse_args(["quantize", "--method", "awq"]))
    assert (default.objective, default.duo_scaling, default.clip_independent) == ("linear", False, True)
    gptq = make_quantizer(build_parser().parse_args(
        ["quantize", "--method", "gptq", "--act-order", "--static-groups", "--damp", "0.05", "--block-size", "32"]))
    assert (gptq.act_order, gptq.static_groups, gptq.damp, gptq.block_size) == (True, True, 0.05, 32)
    assert gptq.forward_dtype is None  # float32: no autocast
    bf16 = make_quantizer(build_parser().parse_args(["quantize", "--method", "gptq", "--forward-dtype", "bfloat16"]))
    assert bf16.forward_dtype == torch.bfloat16


def test_float_format_quantize_then_eval(tmp_path, embedded):
    """`qlab quantize --format nvfp4` end to end: bits per weight as the closed form summed by hand, a folder whose
    Linears load back as blockfloat's dequantization of the float weights (bit for bit), and `qlab eval` on it."""
    from qlab import blockfloat
    from qlab.eval import Evaluator
    from qlab.model import load_model

    model, tok = embedded
    shapes = {n: m.weight.shape for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")}
    n = sum(a * b for a, b in shapes.values())
    expected = (sum(4 * a * b + 8 * a * b // 16 + 32 for a, b in shapes.values())) / n  # E2M1, E4M3 per 16, f32
    out = tmp_path / "nv4"
    q = last_json(qlab("quantize", "--format", "nvfp4", "--out", str(out), "--json"))
    assert q["format"] == "nvfp4" and q["layers"] == len(shapes) == 210
    assert q["bits_per_weight"] == round(expected, 4)
    loaded, _ = load_model(out)
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.17.mlp.down_proj", "model.layers.29.mlp.up_proj"):
        W = model.get_submodule(name).weight
        assert torch.equal(loaded.get_submodule(name).weight, blockfloat.quantize(W, "nvfp4").dequantize()), name
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    e = last_json(qlab("eval", "--model", str(out), "--dataset", str(text), "--tokens", "256", "--ctx", "128",
                       "--json"))
    from qlab.data import eval_tokens

    here = Evaluator(model, eval_tokens(tok, str(text), 256), ctx=128, progress=False).evaluate(loaded)
    assert e["reference"] == "smollm2-135m" and e["kl"] > 0
    assert e["kl"] == pytest.approx(here.kl, rel=1e-4) and e["perplexity"] == pytest.approx(here.perplexity, rel=1e-4)
