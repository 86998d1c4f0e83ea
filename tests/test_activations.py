"""Activation quantization (qlab.activations) against oracles written here: naive loops for the int8 quantizers,
closed forms for the static ranges (max, torch.quantile, a brute-force MSE search in numpy), torch's float8 casts
for FP8, and the float model itself for the hooks' removal."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from qlab.activations import (
    ActQuantConfig,
    calibrate_kv_ranges,
    calibrate_ranges,
    calibrate_ranges_many,
    fake_quantize_activation,
    quantize_activations,
    quantize_kv,
    quantize_kv_cache,
    quantize_weight_per_channel,
    quantize_weights_per_channel,
    target_linears,
)
from qlab.errors import BadArgumentError, NonFiniteError, QlabError
from qlab.stats import forward_rows, modules_by_name

TORCH_FP8 = {"e4m3": (torch.float8_e4m3fn, 448.0), "e5m2": (torch.float8_e5m2, 57344.0)}


def outlier_rows(T=6, K=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, K, generator=g)
    x[:, 3] *= 40  # an outlier channel
    x[1] = 0.0  # an all-zero token: scale 1, output 0
    return x


# ---------------------------------------------------------------- naive oracles


def naive_int8(x: torch.Tensor, per_token: bool, r: float | None = None) -> torch.Tensor:
    """Element by element: s = r/127 in float32 (r: the row's absmax, or the given range), q = round(x/s) with ties
    to even, clamped to ±127, x̂ = q·s."""
    out = torch.empty_like(x)
    for t in range(x.shape[0]):
        if per_token:
            rt = torch.tensor(0.0)
            for j in range(x.shape[1]):
                rt = torch.maximum(rt, x[t, j].abs())
        else:
            rt = torch.tensor(r, dtype=torch.float32)
        s = rt / torch.tensor(127.0)
        if float(s) == 0:
            s = torch.tensor(1.0)
        for j in range(x.shape[1]):
            q = round(float(x[t, j] / s))  # Python's round: half to even
            q = max(-127, min(127, q))
            out[t, j] = torch.tensor(float(q), dtype=torch.float32) * s
    return out


def rows_entering(model, ids, names):
    """Every input row [tokens, features] of the named Linears over ids (one forward per row), concatenated."""
    seen = {n: [] for n in names}
    with torch.no_grad():
        forward_rows(model, ids, modules_by_name(model, names), lambda n, x: seen[n].append(x.detach()))
    return {n: torch.cat(v) for n, v in seen.items()}


# ---------------------------------------------------------------- plain tensors


@pytest.mark.parametrize("per_token", [True, False])
def test_int8_quantizer_equals_naive_loops(per_token):
    x = outlier_rows()
    r = 7.3  # clips the outlier channel in the static case
    got = fake_quantize_activation(x, "int8", "token" if per_token else "tensor", None if per_token else r)
    assert torch.equal(got, naive_int8(x, per_token, r))
    assert torch.equal(got[1], torch.zeros(16))


def test_int8_ties_round_to_even():
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 3.5]])  # s = 1 exactly: every x/s a tie
    got = fake_quantize_activation(x, "int8", "token")
    assert got.tolist() == [[127.0, 0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 126.0, -126.0, 4.0]]
    assert torch.equal(got, naive_int8(x, per_token=True))


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("per_token", [True, False])
def test_fp8_rounding_equals_torch_float8_casts(fmt, per_token):
    dtype, M = TORCH_FP8[fmt]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 64, generator=g) * torch.exp(torch.randn(32, 64, generator=g) * 3)  # 2^-14 … 2^14
    if per_token:
        s = x.abs().amax(-1, keepdim=True) / M
        got = fake_quantize_activation(x, fmt, "token")
    else:
        r = float(x.abs().flatten().kthvalue(x.numel() - 20).values)  # clips the 20 largest: saturation path
        s = torch.tensor(r, dtype=torch.float32) / M
        got = fake_quantize_activation(x, fmt, "tensor", r)
    expected = (x / s).clamp(-M, M).to(dtype).float() * s
    assert torch.equal(got, expected)


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_fp8_weights_per_channel_equal_torch_casts(fmt):
    dtype, M = TORCH_FP8[fmt]
    W = torch.randn(24, 40) * torch.linspace(0.01, 3, 24)[:, None] * torch.exp(3 * torch.randn(24, 40))  # subnormals
    s = W.abs().amax(1, keepdim=True) / M
    assert torch.equal(quantize_weight_per_channel(W, fmt), (W / s).to(dtype).float() * s)


def test_int8_weights_per_channel_closed_form():
    W = torch.randn(12, 20)
    got = quantize_weight_per_channel(W, "int8")
    s = W.abs().amax(1, keepdim=True) / 127
    assert torch.allclose(got, torch.round(W / s).clamp(-127, 127) * s, rtol=0, atol=1e-6)
    assert (torch.round(got / s) - got / s).abs().max() < 1e-3  # on the grid
    assert torch.equal(got.abs().amax(1), W.abs().amax(1))  # the absmax is a level


# ---------------------------------------------------------------- the hooks on a model


def test_hooks_quantize_each_linear_input_exactly_and_remove_restores_the_float_model(tiny_llama):
    model = tiny_llama
    ids = torch.randint(0, 256, (1, 24))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
    names = list(target_linears(model))
    assert len(names) == 14 and all(".layers." in n for n in names)  # 7 per block, lm_head stays float
    mods = dict(model.named_modules())
    raw, fed, outs = {}, {}, {}
    before = [mods[n].register_forward_pre_hook(lambda m, a, n=n: raw.__setitem__(n, a[0].clone())) for n in names]
    handle = quantize_activations(model, ActQuantConfig("int8", "token"))
    after = [mods[n].register_forward_pre_hook(lambda m, a, n=n: fed.__setitem__(n, a[0].clone())) for n in names]
    out_h = [mods[n].register_forward_hook(lambda m, a, y, n=n: outs.__setitem__(n, y.clone())) for n in names]
    with torch.no_grad():
        q = model(ids, use_cache=False).logits
    for h in before + after + out_h:
        h.remove()
    assert not torch.equal(q, ref)
    for n in names:
        x = raw[n].reshape(-1, raw[n].shape[-1])
        expected = naive_int8(x, per_token=True)
        assert torch.equal(fed[n].reshape(x.shape), expected), n
        y = torch.nn.functional.linear(expected, mods[n].weight)
        assert torch.equal(outs[n].reshape(y.shape), y), n
    handle.remove()
    assert not handle.active
    with torch.no_grad():
        assert torch.equal(model(ids, use_cache=False).logits, ref)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # weights never touched


def test_static_hooks_use_the_calibrated_range_and_context_manager_removes(tiny_llama):
    model = tiny_llama
    ids = torch.randint(0, 256, (2, 16))
    cfg = ActQuantConfig("int8", "tensor", "max")
    ranges = calibrate_ranges(model, ids, cfg, progress=False)
    a = "model.layers.1.self_attn."
    assert ranges[a + "q_proj"] == ranges[a + "k_proj"] == ranges[a + "v_proj"]  # one input, one range
    ranges[a + "k_proj"] *= 0.5  # a user's own range: q/k/v share the tensor but not the quantization
    names = [a + "q_proj", a + "k_proj", a + "v_proj", "model.layers.1.mlp.down_proj"]
    mods = dict(model.named_modules())
    raw, fed = {}, {}
    with torch.no_grad():
        ref = model(ids[:1], use_cache=False).logits
        h1 = [mods[n].register_forward_pre_hook(lambda m, x, n=n: raw.__setitem__(n, x[0].clone())) for n in names]
        with quantize_activations(model, cfg, ranges):
            h2 = [mods[n].register_forward_pre_hook(lambda m, x, n=n: fed.__setitem__(n, x[0].clone())) for n in names]
            model(ids[:1], use_cache=False)
            for h in h1 + h2:
                h.remove()
        assert torch.equal(model(ids[:1], use_cache=False).logits, ref)
    for n in names:
        x = raw[n].reshape(-1, raw[n].shape[-1])
        assert torch.equal(fed[n].reshape(x.shape), naive_int8(x, per_token=False, r=ranges[n])), n


# ---------------------------------------------------------------- static ranges


def test_static_ranges_equal_their_closed_forms(tiny_llama):
    model = tiny_llama
    ids = torch.randint(0, 256, (3, 20))
    names = list(target_linears(model))
    data = rows_entering(model, ids, names)
    cfgs = [ActQuantConfig("int8", "tensor", "max"), ActQuantConfig("int8", "tensor", "percentile", percentile=99.0),
            ActQuantConfig("int8", "tensor", "percentile", percentile=100),
            ActQuantConfig("int8", "tensor", "percentile", percentile=37.5),
            ActQuantConfig("int8", "tensor", "mse", mse_grid=40, mse_tokens=None)]
    r_max, r_p99, r_p100, r_p37, r_mse = calibrate_ranges_many(model, ids, cfgs, progress=False)
    for n in names:
        a = data[n].abs()
        assert r_max[n] == float(a.max()), n
        assert r_p100[n] == float(a.max()), n
        assert r_p99[n] == float(torch.quantile(a.double().flatten(), 0.99)), n
        assert r_p37[n] == float(torch.quantile(a.double().flatten(), 0.375)), n
        # brute force in numpy: every candidate max·k/n, naive int8 with saturation, squared error in float64
        xa = data[n].numpy().astype(np.float32)
        amax = float(a.max())
        errs = []
        for k in range(1, 41):
            r = amax * k / 40
            s = np.float32(r) / np.float32(127)
            q = np.clip(np.round(xa / s), -127, 127).astype(np.float32)
            errs.append(float(((xa - q * s).astype(np.float64) ** 2).sum()))
        assert r_mse[n] == amax * (int(np.argmin(errs)) + 1) / 40, n
    # the clipped ranges are what the closed forms say they are: some of them clip
    assert any(r_mse[n] < r_max[n] for n in names) and all(r_p99[n] < r_max[n] for n in names)


@pytest.mark.parametrize("mse_tokens", [5, 20])  # part of row 0; row 0 and 4 tokens of row 1
def test_mse_range_on_the_first_tokens_only(tiny_llama, mse_tokens):
    model = tiny_llama
    ids = torch.randint(0, 256, (3, 16))
    name = "model.layers.0.mlp.down_proj"
    data = rows_entering(model, ids, [name])[name]
    cfg = ActQuantConfig("int8", "tensor", "mse", mse_grid=30, mse_tokens=mse_tokens)
    r = calibrate_ranges(model, ids, cfg, progress=False)[name]
    amax = float(data.abs().max())  # the candidates span the max over ALL tokens

    def best(sub):
        errs = [float(((sub - fake_quantize_activation(sub, "int8", "tensor", amax * k / 30)).double() ** 2).sum())
                for k in range(1, 31)]
        return amax * (int(np.argmin(errs)) + 1) / 30

    assert r == best(data[:mse_tokens])
    if mse_tokens == 5:
        assert best(data[:16]) != r  # the data make the limit visible: the whole first row gives another range


def test_fp8_static_range_by_mse_is_a_candidate(tiny_llama):
    ids = torch.randint(0, 256, (1, 8))
    cfg = ActQuantConfig("e4m3", "tensor", "mse", mse_grid=8)
    r = calibrate_ranges(tiny_llama, ids, cfg, progress=False)
    rmax = calibrate_ranges(tiny_llama, ids, ActQuantConfig("e4m3", "tensor", "max"), progress=False)
    for n in r:
        assert any(r[n] == rmax[n] * k / 8 for k in range(1, 9))


# ---------------------------------------------------------------- KV cache


def test_kv_ranges_are_the_per_head_maxima_of_rotated_keys_and_values(tiny_llama):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = tiny_llama
    ids = torch.randint(0, 256, (2, 12))
    ranges = calibrate_kv_ranges(model, ids, progress=False)
    attn = model.model.layers[1].self_attn
    d = attn.head_dim
    kin = rows_entering(model, ids, ["model.layers.1.self_attn.k_proj"])["model.layers.1.self_attn.k_proj"]
    kmax = torch.zeros(2)
    vmax = torch.zeros(2)
    with torch.no_grad():
        for i in range(2):
            h = kin[i * 12:(i + 1) * 12]
            k = attn.k_proj(h).view(1, 12, 2, d).transpose(1, 2)
            v = attn.v_proj(h).view(1, 12, 2, d).transpose(1, 2)
            cos, sin = model.model.rotary_emb(h[None], torch.arange(12)[None])
            _, k = apply_rotary_pos_emb(k, k, cos, sin)
            for head in range(2):
                kmax[head] = max(kmax[head], k[0, head].abs().max())
                vmax[head] = max(vmax[head], v[0, head].abs().max())
    kr, vr = ranges["model.layers.1.self_attn"]
    assert torch.equal(kr, kmax) and torch.equal(vr, vmax)


def test_kv_quantizer_per_head_and_per_token_equal_naive_loops():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 5, 8, generator=g) * torch.tensor([1.0, 10.0, 0.1])[None, :, None, None]
    r = torch.tensor([2.0, 30.0, 0.2])
    got = quantize_kv(x, "int8", "head", r)
    for h in range(3):
        assert torch.equal(got[0, h], naive_int8(x[0, h], per_token=False, r=float(r[h])))
    got = quantize_kv(x, "int8", "token")
    for h in range(3):
        assert torch.equal(got[0, h], naive_int8(x[0, h], per_token=True))
    dtype, M = TORCH_FP8["e4m3"]
    s = r.reshape(1, 3, 1, 1) / M
    assert torch.equal(quantize_kv(x, "e4m3", "head", r), (x / s).clamp(-M, M).to(dtype).float() * s)


def test_kv_cache_quantization_changes_attention_and_removal_restores(tiny_llama):
    model = tiny_llama
    ids = torch.randint(0, 256, (1, 16))
    impl = model.config._attn_implementation
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
        ranges = calibrate_kv_ranges(model, ids, progress=False)
        assert model.config._attn_implementation == impl
        with quantize_kv_cache(model, "e2m1", "head", ranges):  # 4-bit floats: visibly different
            coarse = model(ids, use_cache=False).logits
        with quantize_kv_cache(model, "e4m3", "token"):
            fine = model(ids, use_cache=False).logits
        assert model.config._attn_implementation == impl
        assert torch.equal(model(ids, use_cache=False).logits, ref)
    e_coarse, e_fine = (coarse - ref).norm() / ref.norm(), (fine - ref).norm() / ref.norm()
    assert 0 < e_fine < e_coarse


# ---------------------------------------------------------------- errors


def test_bad_arguments_say_what_to_change(tiny_llama, monkeypatch):
    with pytest.raises(BadArgumentError, match="known: int8, e4m3, e5m2"):
        ActQuantConfig("int4")
    with pytest.raises(BadArgumentError, match="known: int8"):
        ActQuantConfig("e8m0")  # unsigned: a scale format, not an activation format
    with pytest.raises(BadArgumentError, match="'tensor'.*'token'"):
        ActQuantConfig("int8", "channel")
    with pytest.raises(BadArgumentError, match="known: max, percentile, mse"):
        ActQuantConfig("int8", "tensor", "entropy")
    for p in (0, -1, 100.5, float("nan"), True):
        with pytest.raises(BadArgumentError, match=r"percentile must lie in \(0, 100\]"):
            ActQuantConfig("int8", "tensor", "percentile", percentile=p)
    with pytest.raises(BadArgumentError, match="needs ranges: ranges = calibrate_ranges"):
        quantize_activations(tiny_llama, ActQuantConfig("int8", "tensor"))
    with pytest.raises(BadArgumentError, match="no range for model.layers.0"):
        quantize_activations(tiny_llama, ActQuantConfig("int8", "tensor"), {})
    with pytest.raises(BadArgumentError, match="needs ranges"):
        quantize_kv_cache(tiny_llama, "e4m3", "head")
    monkeypatch.setattr("qlab.activations.MAX_KEPT", 1000)  # the 1st percentile keeps 99 % of 1024·64 values
    with pytest.raises(BadArgumentError, match="percentile closer to 100"):
        calibrate_ranges(tiny_llama, torch.randint(0, 256, (4, 256)),
                         ActQuantConfig("int8", "tensor", "percentile", percentile=1.0))
    assert issubclass(BadArgumentError, QlabError)


def test_nan_activations_name_the_linear_never_a_silent_nan(tiny_llama):
    model = tiny_llama
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = math.nan  # down_proj of block 0 is the first to see NaN
    ids = torch.randint(0, 256, (1, 8))
    with pytest.raises(NonFiniteError, match=r"entering model\.layers\.0\.mlp\.down_proj"):
        with quantize_activations(model, ActQuantConfig("int8", "token")):
            model(ids, use_cache=False)
    assert all(not any(m._forward_pre_hooks) for m in model.modules() if isinstance(m, nn.Linear))  # removed
    with pytest.raises(NonFiniteError, match=r"model\.layers\.0\.mlp\.down_proj \(calibration\)"):
        calibrate_ranges(model, ids, ActQuantConfig("int8", "tensor"), progress=False)


def test_weights_in_place_and_describe(tiny_llama):
    names = quantize_weights_per_channel(tiny_llama, "int8")
    assert len(names) == 14
    W = tiny_llama.model.layers[0].self_attn.q_proj.weight
    s = W.abs().amax(1, keepdim=True) / 127
    assert torch.allclose(W / s, torch.round(W / s), atol=1e-3)
    assert ActQuantConfig("int8", "tensor", "percentile").describe() == "INT8 per-tensor static (percentile 99.99 %)"
    assert ActQuantConfig("e4m3", "token").describe() == "FP8 e4m3 per-token dynamic"
