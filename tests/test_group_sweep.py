"""Group-size sweep on a tiny random Llama: bits/weight = b + 16/g, float weights restored afterwards,
the float row equals a direct perplexity, finer groups are never much worse; the sweet-spot rule."""

import copy
import random

import pytest
import torch

from qlab.errors import BadArgumentError
from qlab.eval import perplexity
from qlab.lessons.group_sweep import SweepRow, common_group_sizes, group_size_sweep, sweet_spot


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_sweep_on_tiny_llama(tiny):
    assert common_group_sizes(tiny) == [8, 12, 16, 24, 32, 48, 96]
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    tokens = torch.randint(0, 64, (96,), generator=torch.Generator().manual_seed(1))
    rows = group_size_sweep(tiny, tokens, [16, 96, "channel"], bits=3, symmetric=True, ctx=48, progress=False)
    assert [r.group_size for r in rows] == ["float", 16, 96, "channel"]
    assert rows[0].perplexity == pytest.approx(perplexity(tiny, tokens, ctx=48, progress=False).perplexity)
    assert rows[1].bits_per_weight == pytest.approx(3 + 16 / 16)
    assert rows[2].bits_per_weight == pytest.approx(3 + 16 / 96)
    # per channel: q,k,v,o,gate,up have 96-wide rows, down_proj 192-wide ones; weights per layer type below
    sizes = {"q": (96, 96), "k": (48, 96), "v": (48, 96), "o": (96, 96), "gate": (192, 96), "up": (192, 96),
             "down": (96, 192)}
    n = sum(a * b for a, b in sizes.values())
    want = sum(a * b * (3 + 16 / b) for a, b in sizes.values()) / n
    assert rows[3].bits_per_weight == pytest.approx(want)
    assert (rows[0].kl, rows[0].top1) == (0.0, 1.0)
    # oracle for every quantized row: a copy quantized here Linear by Linear with quantize_affine, measured by
    # an Evaluator (itself checked against a float64 loop in test_eval_and_pipeline); same numbers, same order
    from qlab.affine import quantize_affine
    from qlab.eval import Evaluator

    ev = Evaluator(tiny, tokens, ctx=48, progress=False)
    for row, g in zip(rows[1:], [16, 96, "channel"]):
        twin = copy.deepcopy(tiny)
        with torch.no_grad():
            for block in twin.model.layers:
                for lin in block.modules():
                    if isinstance(lin, torch.nn.Linear):
                        lin.weight.copy_(quantize_affine(lin.weight, 3, g, symmetric=True).dequantize())
        want = ev.evaluate(twin)
        assert want.kl > 0 and want.top1 < 1  # 3-bit rounding moves this model
        assert row.perplexity == pytest.approx(want.perplexity, rel=1e-6), g
        assert row.kl == pytest.approx(want.kl, rel=1e-6, abs=1e-9), g
        assert row.top1 == want.top1, g
    for n, p in tiny.named_parameters():
        assert torch.equal(p, before[n]), n
    with pytest.raises(BadArgumentError):
        group_size_sweep(tiny, tokens, [64], progress=False)  # 64 does not divide the 96-wide rows
    with pytest.raises(BadArgumentError):
        group_size_sweep(tiny, tokens, ["tensor"], progress=False)


def test_sweet_spot_rule():
    rows = [SweepRow("float", 32, 10.0, 0, 1), SweepRow(32, 3.5, 12.0, 0.1, 0.9), SweepRow(64, 3.25, 12.4, 0.1, 0.9),
            SweepRow(192, 3.08, 13.0, 0.2, 0.8), SweepRow(576, 3.03, 20.0, 0.5, 0.6)]
    assert sweet_spot(rows, 0.05).group_size == 64  # 12.4 ≤ 1.05·12 < 13.0
    assert sweet_spot(rows, 0.10).group_size == 192
    with pytest.raises(BadArgumentError):
        sweet_spot(rows[:1])


def test_sweet_spot_equals_a_brute_force_choice():
    """On random sweeps (the float row anywhere, ties in bits/weight allowed): the chosen row is the one a naive
    search finds — among quantized rows with perplexity ≤ (1 + tol)·(best quantized perplexity), the fewest
    bits/weight (the first such row on a tie)."""
    rnd = random.Random(0)
    for _ in range(300):
        q = [SweepRow(rnd.choice([8, 16, 32, 64, 128]), rnd.choice([3.1, 3.25, 3.5, 4.0, 4.5]),
                      rnd.uniform(5, 15), rnd.random(), rnd.random()) for _ in range(rnd.randint(1, 6))]
        rows = list(q)
        rows.insert(rnd.randint(0, len(rows)), SweepRow("float", 32.0, rnd.uniform(1, 20), 0.0, 1.0))
        tol = rnd.choice([0.0, 0.02, 0.05, 0.2])
        best_ppl = min(r.perplexity for r in q)
        want = None
        for r in q:
            if r.perplexity <= (1 + tol) * best_ppl and (want is None or r.bits_per_weight < want.bits_per_weight):
                want = r
        assert sweet_spot(rows, tol) is want
