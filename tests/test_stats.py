"""qlab.stats: the accumulators against direct formulas on whole tensors, the hook helper, the relative-error rule,
and the block-quantizer contract every method implements."""

import math

import pytest
import torch
from torch import nn

from qlab.awq import AWQQuantizer
from qlab.errors import BadArgumentError, TextTooShortError
from qlab.float_formats import FloatFormatQuantizer
from qlab.gptq import GPTQQuantizer
from qlab.quantizer import BlockQuantizer
from qlab.rtn import RTNQuantizer
from qlab.stats import (
    ChannelMagnitude,
    HessianAccumulator,
    InputStats,
    SquareMean,
    accumulate,
    activation_magnitudes,
    forward_rows,
    modules_by_name,
    relative_error,
    relative_output_error,
)


def _batches(seed=0, K=24):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, K, generator=g, dtype=torch.float64) * (1 + torch.arange(K)) for n in (5, 17, 1, 40)]


def test_accumulators_equal_direct_formulas_over_all_tokens():
    xs = _batches()
    X = torch.cat(xs)
    h, st, sq = HessianAccumulator(24, dtype=torch.float64), InputStats(24), SquareMean(24)
    amax, mabs = ChannelMagnitude(24, statistic="absmax"), ChannelMagnitude(24, statistic="meanabs")
    for x in xs:
        for acc in (h, st, sq, amax, mabs):
            acc.add(x)
    torch.testing.assert_close(h.H, 2 * X.T @ X / len(X), rtol=1e-12, atol=0)
    torch.testing.assert_close(st.H.double(), X.T @ X / len(X), rtol=1e-5, atol=0)  # float32 sums
    torch.testing.assert_close(st.x_mean.double(), X.abs().mean(0), rtol=1e-6, atol=0)
    torch.testing.assert_close(sq.mean, (X**2).mean(0), rtol=1e-12, atol=0)
    assert torch.equal(amax.value, X.abs().amax(0))
    torch.testing.assert_close(mabs.value, X.abs().mean(0), rtol=1e-12, atol=0)
    torch.testing.assert_close(activation_magnitudes(xs).double(), X.abs().mean(0), rtol=1e-6, atol=0)
    assert torch.equal(h.H, h.H.T)  # symmetric by construction


def test_empty_and_mismatched_inputs_are_clear_errors():
    empty = {"H": HessianAccumulator(4, "blk.q"), "x_mean": InputStats(4, "blk.q"), "mean": SquareMean(4, "blk.q"),
             "value": ChannelMagnitude(4, "blk.q")}
    for result, acc in empty.items():
        with pytest.raises(TextTooShortError, match="blk.q"):
            getattr(acc, result)
        with pytest.raises(BadArgumentError, match="5 features, expected 4"):
            acc.add(torch.zeros(3, 5))
    with pytest.raises(BadArgumentError, match="statistic"):
        ChannelMagnitude(4, statistic="median")


def test_relative_error_rule_and_output_error_equals_direct():
    assert relative_error(1.0, 4.0) == 0.25
    assert relative_error(0.0, 0.0) == 0.0 and math.isinf(relative_error(1e-30, 0.0))
    g = torch.Generator().manual_seed(3)
    W, X = torch.randn(6, 24, generator=g, dtype=torch.float64), torch.cat(_batches(1))
    W_hat = W + 0.01 * torch.randn(6, 24, generator=g, dtype=torch.float64)
    direct = float(((X @ (W - W_hat).T) ** 2).sum() / ((X @ W.T) ** 2).sum())
    for H in (X.T @ X, 2 * X.T @ X / len(X)):  # the scale of H cancels
        assert relative_output_error(W, W_hat, H) == pytest.approx(direct, rel=1e-10)
    assert relative_output_error(W, W, X.T @ X) == 0.0


def test_forward_rows_and_accumulate_see_every_token_of_every_row():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))

    class LM(nn.Module):  # takes ids [1, T] and use_cache, as a causal LM does
        def __init__(self):
            super().__init__()
            self.body = model

        def forward(self, ids, use_cache=False):
            return self.body(ids[..., None].float().expand(*ids.shape, 3))

    lm = LM()
    mods = modules_by_name(lm, ["body.0", "body.2"])
    accs, fn = accumulate(lambda name, K: SquareMean(K, name))
    ids = torch.arange(12).reshape(3, 4)
    assert forward_rows(lm, ids, mods, fn) == 12
    assert accs["body.0"].n == accs["body.2"].n == 12
    x = ids.reshape(-1).double()
    torch.testing.assert_close(accs["body.0"].mean, (x**2).mean().expand(3))
    with pytest.raises(BadArgumentError, match="no module named 'body.9'"):
        modules_by_name(lm, ["body.9"])


def test_every_method_implements_the_block_quantizer_contract():
    for q in (RTNQuantizer(), GPTQQuantizer(progress=False), AWQQuantizer(), FloatFormatQuantizer("mxfp4")):
        assert isinstance(q, BlockQuantizer)
        assert q.config["method"] in ("rtn", "gptq", "awq") and isinstance(q.describe(), str)
