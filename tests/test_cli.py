"""The `qlab` command end to end on a short text (tiny settings), its JSON last line and its errors."""

import json
import subprocess
import sys

import pytest

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
    q = last_json(qlab("quantize", "--dataset", str(text), "--bits", "8", "--group-size", "64", "--out", str(out),
                       "--json"))
    assert q["layers"] == 210 and q["bits_per_weight"] == pytest.approx(8 + 24 / 64)
    e = last_json(qlab("eval", "--model", str(out), "--dataset", str(text), "--tokens", "256", "--ctx", "128",
                       "--json"))
    assert e["tokens"] == 2 * 127 and e["reference"] == "smollm2-135m"
    assert 1 < e["perplexity"] < 50 and e["kl"] < 0.05 and e["top1"] > 0.9


def test_errors_exit_2_with_a_message(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    p = qlab("eval", "--dataset", str(short), "--json", ok=False)
    assert p.returncode == 2 and "perplexity needs ≥ 2" in p.stderr
    assert last_json(p)["type"] == "TextTooShortError"
    p = qlab("quantize", "--group-size", "128", ok=False)
    assert "does not divide the row length 576" in p.stderr and "192" in p.stderr
