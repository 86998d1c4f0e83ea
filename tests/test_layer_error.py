"""Layer-output error against direct formulas: ‖XWᵀ − XŴᵀ‖²/‖XWᵀ‖², the identity-input special case
(= 1/SQNR), and inputs recorded from a toy model compared with a hand forward."""

import math

import pytest
import torch
from torch import nn

from qlab.affine import fake_quantize, sqnr_db
from qlab.errors import BadArgumentError
from qlab.lessons.layer_error import collect_inputs, compare_granularities, relative_output_error


def test_matches_norm_formula_and_identity_case():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(16, 64, generator=g)
    W_hat = fake_quantize(W, bits=3, group_size=32, symmetric=True)
    X = torch.randn(100, 64, generator=g)
    want = (torch.linalg.norm(X @ W.T - X @ W_hat.T) ** 2 / torch.linalg.norm(X @ W.T) ** 2).item()
    assert relative_output_error(W, W_hat, X) == pytest.approx(want, rel=1e-4)
    assert relative_output_error(W, W, X) == 0.0
    # X = I: the output is W itself, so the error is ‖W − Ŵ‖²/‖W‖² = 10^(−SQNR/10)
    assert relative_output_error(W, W_hat, torch.eye(64)) == pytest.approx(10 ** (-sqnr_db(W, W_hat) / 10), rel=1e-9)
    with pytest.raises(BadArgumentError):
        relative_output_error(W, W_hat, torch.randn(5, 63))


def test_outlier_channel_dominates_output_error():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(8, 32, generator=g, dtype=torch.float64)
    W_hat = W.clone()
    W_hat[:, 3] += 0.1  # error only in column 3
    X = torch.randn(50, 32, generator=g, dtype=torch.float64)
    base = relative_output_error(W, W_hat, X)
    X[:, 3] *= 30  # channel 3 becomes an outlier channel
    assert relative_output_error(W, W_hat, X) > 10 * base


def test_compare_granularities_bits_and_skips():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(32, 576, generator=g) * torch.logspace(-1, 1, 32)[:, None]  # rows of very different scale
    X = torch.randn(64, 576, generator=g)
    rows = compare_granularities(W, X, bits=4, group_sizes=("tensor", "channel", 128, 64, 32))
    labels = [r.granularity for r in rows]
    assert labels == ["tensor", "channel", "group 64", "group 32"]  # 128 does not divide 576
    bpw = {r.granularity: r.bits_per_weight for r in rows}
    assert bpw["channel"] == pytest.approx(4 + 16 / 576) and bpw["group 32"] == pytest.approx(4.5)
    assert math.isclose(bpw["tensor"], 4 + 16 / W.numel())
    err = {r.granularity: r.weight_mse for r in rows}
    assert err["tensor"] > 3 * err["channel"]  # a per-tensor step is set by the largest row


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 6)
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 4)

    def forward(self, ids, use_cache=False):
        return self.b(torch.tanh(self.a(self.emb(ids))))


def test_collect_inputs_toy():
    torch.manual_seed(0)
    m = _Toy()
    ids = torch.randint(0, 7, (2, 5))
    got = collect_inputs(m, ids, ["a", "b"])
    with torch.no_grad():
        e = m.emb(ids).reshape(-1, 6)
        torch.testing.assert_close(got["a"], e)
        torch.testing.assert_close(got["b"], torch.tanh(m.a(e)))
    assert collect_inputs(m, ids, ["b"], max_tokens=3)["b"].shape == (3, 6)
    with pytest.raises(BadArgumentError):
        collect_inputs(m, ids, ["c"])
