"""The embedded model's two variants, the corpora and their splits, and model-loading errors."""

import gguf
import numpy as np
import pytest
import torch

from qlab import BadArgumentError, FileFormatError, ModelNotFoundError, TextTooShortError, load_model
from qlab.data import calibration_batches, check_source, eval_tokens, split_text
from qlab.lessons.grid import levels_per_block
from qlab.model import EXACT, embedded_gguf_path
from qlab.walk import linear_layers


@pytest.fixture(scope="module")
def exact():
    return load_model(EXACT)[0]


def test_exact_variant_sits_on_the_q4_1_grid(exact):
    """At most 16 distinct values in every 32-weight block of every Linear (Q4_1's 4 bits)."""
    for name, lin in linear_layers(exact.model.layers).items():
        assert int(levels_per_block(lin.weight.detach()).max()) <= 16, name


def test_dithered_variant_adds_at_most_half_a_step(embedded, exact):
    """Oracle: gguf-py's own Q4_1 dequantization; a block's step d is the spacing of its levels."""
    model, _ = embedded
    reader = gguf.GGUFReader(str(embedded_gguf_path()))
    t = next(t for t in reader.tensors if t.name == "blk.3.ffn_down.weight")
    values = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type)).reshape(-1, 32)
    step = values.max(1).values - values.min(1).values  # = 15·d only when the block uses code 0 and 15
    W_exact = exact.model.layers[3].mlp.down_proj.weight.detach().reshape(-1, 32)
    W_dith = model.model.layers[3].mlp.down_proj.weight.detach().reshape(-1, 32)
    torch.testing.assert_close(W_exact, values)  # ffn_down is not row-permuted: same order as GGUF
    diff = (W_dith - W_exact).abs()
    d_lower = step / 15  # d ≥ (max − min)/15
    nibbles = np.asarray(t.data).reshape(-1, 20)[:, 4:]  # Q4_1 block: fp16 d, fp16 m, 16 bytes of codes
    codes = torch.from_numpy(np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int64))
    uses_full_range = (codes.min(1).values == 0) & (codes.max(1).values == 15)  # then d = (max − min)/15
    assert bool((diff.max(1).values[uses_full_range] <= d_lower[uses_full_range] / 2 * 1.001 + 1e-7).all())
    assert float(diff.mean()) > 0.2 * float((step / 15).mean() / 2)  # really dithered, not a copy
    assert int(levels_per_block(model.model.layers[3].mlp.down_proj.weight.detach()).min()) > 16


def test_tied_embeddings_and_description(embedded):
    model, tok = embedded
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert "dither" in model.qlab_description
    assert tok("hello world")["input_ids"]


def test_splits_are_disjoint_and_batches_seeded(embedded):
    _, tok = embedded
    for source in ("wiki", "news", "code"):
        calib, test = split_text(source, "calibration"), split_text(source, "evaluation")
        assert len(test) > 0.05 * len(calib)
        probe = test[len(test) // 2 : len(test) // 2 + 200]
        assert probe not in calib
    a = calibration_batches(tok, "news", n_samples=3, seqlen=64, seed=1)
    b = calibration_batches(tok, "news", n_samples=3, seqlen=64, seed=1)
    c = calibration_batches(tok, "news", n_samples=3, seqlen=64, seed=2)
    assert a.shape == (3, 64) and torch.equal(a, b) and not torch.equal(a, c)
    assert len(eval_tokens(tok, "wiki", 300)) == 300


def test_mixture_draws_evenly_from_each_source(embedded, tmp_path):
    """Oracle: every window of a mixture is a window of exactly the calibration split it is said to come from, the
    counts follow n//k (+1 for the first n mod k), and a file whose name holds '+' is still one file."""
    _, tok = embedded
    ids = calibration_batches(tok, "wiki+news+code", n_samples=7, seqlen=32, seed=4)
    assert ids.shape == (7, 32)
    splits = {s: calibration_batches(tok, s, n_samples=n, seqlen=32, seed=4)
              for s, n in (("wiki", 3), ("news", 2), ("code", 2))}
    order = ["wiki", "news", "code", "wiki", "news", "code", "wiki"]  # interleaved: every prefix balanced
    seen = {s: 0 for s in splits}
    for row, source in zip(ids, order):
        assert torch.equal(row, splits[source][seen[source]]), source
        seen[source] += 1
    assert split_text("news+code", "evaluation") == (split_text("news", "evaluation") + "\n\n"
                                                     + split_text("code", "evaluation"))
    odd = tmp_path / "a+b.txt"
    odd.write_text("A file whose name holds a plus sign. " * 200)
    assert calibration_batches(tok, str(odd), 2, 16).shape == (2, 16)
    mine = tmp_path / "mine.txt"
    mine.write_text("Some prose of my own, repeated until it is long enough. " * 200)
    assert calibration_batches(tok, f"news+{mine}", 2, 16).shape == (2, 16)
    with pytest.raises(BadArgumentError, match="at least 3"):
        calibration_batches(tok, "wiki+news+code", 2, 16)
    with pytest.raises(BadArgumentError, match="each source once"):
        calibration_batches(tok, "wiki+wiki", 2, 16)
    with pytest.raises(FileFormatError, match="neither a named source"):
        check_source("wiki+nosuchsource")


def test_text_errors(embedded, tmp_path):
    _, tok = embedded
    short = tmp_path / "short.txt"
    short.write_text("Too short to calibrate on.")
    with pytest.raises(TextTooShortError, match="fewer than one sample of 512"):
        calibration_batches(tok, str(short), 4, 512)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00 not utf-8 \xc3")
    with pytest.raises(FileFormatError, match="not UTF-8"):
        calibration_batches(tok, str(bad))
    with pytest.raises(FileFormatError, match="does not exist"):
        eval_tokens(tok, str(tmp_path / "missing.txt"))


def test_unknown_model_offline_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        load_model("qlab-tests/no-such-model")
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_model(tmp_path)
