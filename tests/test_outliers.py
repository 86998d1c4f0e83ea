"""Outlier tools against hand computations: the injected outlier sets the scale (s = |outlier|/(2^(b−1)−1)),
the other weights' codes and error from a naive per-element loop, and channel magnitudes of a toy model
recorded against its inputs computed by hand."""

import pytest
import torch
from torch import nn

from qlab.errors import BadArgumentError
from qlab.lessons.outliers import (
    activation_channel_magnitudes,
    block_index,
    count_outlier_channels,
    inject_outlier,
    layer_type,
    outlier_sweep,
    summarize_by_type,
)


def _naive_symmetric(group, bits):
    qmax = 2 ** (bits - 1) - 1
    s = max(abs(v) for v in group) / qmax
    codes = [min(max(round(v / s), -qmax - 1), qmax) for v in group]  # Python round: half to even, like torch
    return s, codes, [c * s for c in codes]


def test_inject_outlier_keeps_sign_and_copies():
    g = torch.tensor([-0.5, 0.2, 0.1, -0.05])
    out = inject_outlier(g, 4.0, index=0)
    assert out[0] == pytest.approx(-2.0) and g[0] == -0.5
    assert torch.equal(out[1:], g[1:].double())
    with pytest.raises(BadArgumentError):
        inject_outlier(g, 2.0, index=9)


@pytest.mark.parametrize("bits", [3, 4])
def test_outlier_sweep_against_naive_loop(bits):
    g = torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows = outlier_sweep(g, bits=bits, symmetric=True, factors=(1, 3, 10, 100), index=5)
    for r in rows:
        grp = inject_outlier(g, r.factor, 5).tolist()
        s, codes, w_hat = _naive_symmetric(grp, bits)
        assert r.scale == pytest.approx(s, rel=1e-12)
        assert r.scale == pytest.approx(abs(r.outlier) / (2 ** (bits - 1) - 1), rel=1e-12)
        assert r.levels_used == len(set(codes))
        rest = [i for i in range(64) if i != 5]
        assert r.mse_rest == pytest.approx(sum((grp[i] - w_hat[i]) ** 2 for i in rest) / 63, rel=1e-9)
        assert r.wasted_levels == 2**bits - 1 - r.levels_used
    # an outlier 100× the group's max sends every other weight to 0: error = their own energy, 2 levels used
    big = rows[-1]
    assert big.levels_used == 2
    assert big.mse_rest == pytest.approx(float((g.pow(2).sum() - g[5] ** 2) / 63), rel=1e-9)
    assert [r.scale for r in rows] == sorted(r.scale for r in rows)


class _Block(nn.Module):
    def __init__(self, h, m):
        super().__init__()
        self.q_proj = nn.Linear(h, h, bias=False)
        self.down_proj = nn.Linear(m, h, bias=False)
        self.up = nn.Linear(h, m, bias=False)

    def forward(self, x):
        x = x + self.q_proj(x)
        return x + self.down_proj(torch.relu(self.up(x)))


class _Toy(nn.Module):
    def __init__(self, vocab=11, h=8, m=12):
        super().__init__()
        self.emb = nn.Embedding(vocab, h)
        self.layers = nn.ModuleList([_Block(h, m) for _ in range(3)])

    def forward(self, ids, use_cache=False):
        x = self.emb(ids)
        for b in self.layers:
            x = b(x)
        return x


def test_channel_magnitudes_of_a_toy_model_match_hand_forward():
    torch.manual_seed(0)
    model = _Toy()
    ids = torch.randint(0, 11, (3, 5))
    for stat in ("absmax", "meanabs"):
        mags = activation_channel_magnitudes(model, ids, layer_types=("q_proj", "down_proj"), statistic=stat)
        assert sorted(mags) == sorted(f"layers.{i}.{t}" for i in range(3) for t in ("q_proj", "down_proj"))
        with torch.no_grad():
            x = model.emb(ids).reshape(-1, 8)
            for i, b in enumerate(model.layers):
                h = torch.relu(b.up(x + b.q_proj(x)))
                ins = {"q_proj": x, "down_proj": h}
                for t, inp in ins.items():
                    want = inp.abs().amax(0) if stat == "absmax" else inp.abs().mean(0)
                    torch.testing.assert_close(mags[f"layers.{i}.{t}"], want, rtol=1e-5, atol=1e-6)
                x = b(x)
    with pytest.raises(BadArgumentError):
        activation_channel_magnitudes(model, ids, layer_types=("nope",))
    with pytest.raises(BadArgumentError):
        activation_channel_magnitudes(model, ids, statistic="median")


def test_count_outlier_channels_on_known_ratios():
    m = torch.ones(101)
    m[:3] = torch.tensor([10.0, 99.0, 100.0])  # median stays 1
    m[3] = 500.0
    c = count_outlier_channels({"layers.2.mlp.down_proj": m, "layers.0.self_attn.q_proj": torch.ones(8)})
    assert (c[0].n_10_to_100, c[0].n_over_100, c[0].max_ratio, c[0].median) == (2, 2, 500.0, 1.0)
    assert (c[1].n_10_to_100, c[1].n_over_100) == (0, 0)
    s = summarize_by_type(c)
    assert s["down_proj"]["layers_with_outliers"] == 1 and s["q_proj"]["layers_with_outliers"] == 0
    assert layer_type("model.layers.3.mlp.down_proj") == "down_proj" and block_index("model.layers.3.mlp.x") == 3
    with pytest.raises(BadArgumentError):
        count_outlier_channels({}, low=100, high=10)
