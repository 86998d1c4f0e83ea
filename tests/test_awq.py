"""AWQ: statistics, scale and clip searches against naive oracles, exact folding on a toy llama, bad input."""

import copy
import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import repeat_kv

from qlab.affine import fake_quantize, quantize_affine
from qlab.awq import (
    AWQQuantizer,
    AWQWarning,
    InputStats,
    activation_magnitudes,
    alpha_values,
    apply_clip,
    awq_scales,
    awq_search_clip,
    awq_search_scales,
    collect_block_stats,
    output_error,
    weight_magnitudes,
)
from qlab.awq.fold import fold_group, kv_expand, kv_reduce, scale_groups
from qlab.awq.probe import ModuleProbe, capture_calls, probe_module_name
from qlab.errors import BadArgumentError, NonFiniteError
from qlab.pipeline import quantize_block, quantize_model
from qlab.walk import BlockInputs, capture_block_inputs


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one thread avoids OpenMP's spin-waits on a busy 2-core machine (20× faster)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def toy_model(hidden=96, inter=160, heads=6, kv=2, layers=2, salient=4, seed=0):
    """A tiny llama (GQA, widths not multiples of 256) with random norms and a few salient embedding channels."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads,
                      num_key_value_heads=kv, head_dim=hidden // heads, num_hidden_layers=layers, vocab_size=128,
                      max_position_embeddings=64)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.5 * torch.randn_like(p))
        m.model.embed_tokens.weight[:, :salient] *= 20
    return m


def salient_data(T=2048, K=64, N=48, n_salient=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(T, K, generator=g)
    X[:, :n_salient] *= 30
    W = torch.randn(N, K, generator=g)
    return X, W


# ---------------------------------------------------------------------------------------------------------
# statistics and errors


def test_activation_magnitudes_and_stats_match_direct():
    X = torch.randn(3, 50, 40)
    st = InputStats(40)
    for x in X:
        st.add(x)
    Xf = X.reshape(-1, 40).double()
    assert torch.allclose(activation_magnitudes(X).double(), Xf.abs().mean(0), rtol=1e-6)
    assert torch.allclose(activation_magnitudes(list(X)).double(), Xf.abs().mean(0), rtol=1e-6)
    assert torch.allclose(st.x_mean.double(), Xf.abs().mean(0), rtol=1e-6)
    assert torch.allclose(st.H.double(), Xf.T @ Xf / len(Xf), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape,bits,gs,sym", [((48, 96), 4, 32, False), ((20, 576), 3, 64, True),
                                                ((8, 96), 2, "channel", False), ((16, 1536), 4, 64, False)])
def test_fake_quantize_is_bit_identical_to_quantize_affine(shape, bits, gs, sym):
    W = torch.randn(*shape) * torch.rand(shape[1]) * 3
    assert torch.equal(fake_quantize(W, bits, gs, sym), quantize_affine(W, bits, gs, sym).dequantize())


def test_output_error_equals_direct_output_mse():
    X, W = salient_data()
    W_hat = quantize_affine(W, 3, 16).dequantize()
    H = X.T @ X / len(X)
    direct = float(((X.double() @ (W - W_hat).double().T) ** 2).sum() / len(X))
    assert output_error(W, W_hat, H) == pytest.approx(direct, rel=1e-4)


# ---------------------------------------------------------------------------------------------------------
# scale search


def test_awq_scales_closed_form():
    x = torch.tensor([0.5, 2.0, 8.0, 0.0])
    assert torch.equal(awq_scales(x, 0.0), torch.ones(4))
    s = awq_scales(x, 0.5)
    assert float(s.max() * s.min()) == pytest.approx(1.0, rel=1e-6)  # normalised by √(max·min)
    assert s[2] / s[1] == pytest.approx(2.0, rel=1e-6)  # (8/2)^0.5
    assert torch.isfinite(s).all() and float(s[3]) > 0  # a dead channel gets the floor, not 0
    assert torch.equal(awq_scales(torch.zeros(5), 0.7), torch.ones(5))
    assert torch.allclose(alpha_values(20), torch.linspace(0, 1, 20))
    with pytest.raises(BadArgumentError):
        alpha_values(0)
    with pytest.raises(BadArgumentError):
        alpha_values([0.1, float("nan")])


def test_duo_scaling_statistic():
    W = torch.tensor([[1.0, -2.0, 4.0, 0.0], [2.0, 2.0, -1.0, 1.0]])
    # per row and group of 2: |w| / max|w| of the group, then the mean over rows
    assert torch.allclose(weight_magnitudes(W, 2), torch.tensor([0.75, 1.0, 1.0, 0.5]))
    x = torch.tensor([1.0, 3.0, 2.0, 5.0])
    assert torch.allclose(awq_scales(x, 1.0, w_mean=torch.rand(4) + 0.5), awq_scales(x, 1.0))
    X, Wr = salient_data()
    res = awq_search_scales(Wr, activation_magnitudes(X), X.T @ X / len(X), 3, 16, alpha_grid=11,
                            duo_scaling=True)
    assert torch.isfinite(res.errors).all() and float(res.errors.min()) < res.err_rtn  # α = 0 is not RTN here
    # naive oracle: s_w by loops over rows and groups, s = s_x^α / s_w^(1−α) for every α of the grid, the actual
    # inputs run through Q(W·diag(s))·diag(s)⁻¹; the search must pick the argmin of this curve
    N, K = Wr.shape
    sw = torch.zeros(K, dtype=torch.float64)
    for n in range(N):
        for k in range(K):
            grp = Wr[n, k // 16 * 16 : k // 16 * 16 + 16].double().abs()
            sw[k] += abs(float(Wr[n, k])) / float(grp.max()) / N
    xm = X.double().abs().mean(0)
    naive = []
    for a in torch.linspace(0, 1, 11).tolist():
        s = xm.clamp(min=1e-4 * xm.max()) ** a / sw.clamp(min=1e-4 * sw.max()) ** (1 - a)
        s = (s / (s.max() * s.min()).sqrt()).float()
        W_hat = quantize_affine(Wr * s, 3, 16).dequantize() / s
        naive.append(float(((X.double() @ (Wr - W_hat).double().T) ** 2).sum() / len(X)))
    naive = torch.tensor(naive, dtype=torch.float64)
    # float32 search vs float64 oracle: the curves agree to rtol=1e-3 (H's float32 sums over 2048 samples and
    # the rounding of s), so the chosen α must be within that tolerance of the oracle's minimum
    assert torch.allclose(res.errors, naive, rtol=1e-3)
    chosen = int((torch.linspace(0, 1, 11) - res.alpha).abs().argmin())
    assert float(naive[chosen]) <= float(naive.min()) * (1 + 2e-3), (res.alpha, naive)


def test_scale_search_matches_naive_grid_and_beats_rtn():
    X, W = salient_data()
    H = X.T @ X / len(X)
    res = awq_search_scales(W, activation_magnitudes(X), H, bits=3, group_size=16, alpha_grid=11)
    # naive oracle: for every α, quantize W·diag(s) with quantize_affine and run the actual inputs through it
    naive = []
    for a in torch.linspace(0, 1, 11).tolist():
        xm = X.abs().mean(0)
        s = xm.clamp(min=1e-4 * xm.max()) ** a
        s = s / (s.max() * s.min()).sqrt()
        W_hat = quantize_affine(W * s, 3, 16).dequantize() / s
        naive.append(float(((X.double() @ (W - W_hat).double().T) ** 2).sum() / len(X)))
    naive = torch.tensor(naive)
    assert torch.allclose(res.errors, naive.double(), rtol=1e-3)
    assert res.alpha == pytest.approx(float(torch.linspace(0, 1, 11)[naive.argmin()]))
    assert res.errors[0] == pytest.approx(res.err_rtn, rel=1e-6)  # α = 0 is RTN
    assert res.alpha > 0 and float(res.errors.min()) < 0.8 * res.err_rtn
    assert res.fraction_scaled_up < 0.5  # only the salient channels grow


def test_gqa_scales_are_shared_per_kv_row():
    n_kv, n_rep, d = 2, 3, 4
    v = torch.arange(n_kv * d, dtype=torch.float32)
    # oracle: transformers' repeat_kv maps KV head h//n_rep onto query head h
    rep = repeat_kv(v.reshape(1, n_kv, 1, d), n_rep).reshape(-1)
    assert torch.equal(kv_expand(v, n_rep, d), rep)
    assert torch.equal(kv_reduce(kv_expand(v, n_rep, d), n_rep, d), v)
    X, _ = salient_data(K=n_kv * n_rep * d)
    W = torch.randn(8, n_kv * n_rep * d)
    res = awq_search_scales(W, activation_magnitudes(X), X.T @ X / len(X), 3, 8, n_rep=n_rep, head_dim=d)
    assert res.s_prev.shape == (n_kv * d,) and torch.equal(res.s, kv_expand(res.s_prev, n_rep, d))


def test_module_objective_matches_naive_block_copies():
    """objective="module": the α curve of q/k/v measured at self_attn's output and of gate/up at the MLP's output,
    against a naive oracle that swaps the weights in deep copies of the block and hooks the sub-module's output."""
    m = toy_model(layers=1)
    block = m.model.layers[0]
    inputs = capture_block_inputs(m, torch.randint(0, 128, (3, 24)))
    calls = capture_calls(block, inputs.hidden, inputs.kwargs, {"self_attn": block.self_attn, "mlp": block.mlp})
    for group, sub, names in [("self_attn.qkv", "self_attn", ["q_proj", "k_proj", "v_proj"]),
                              ("mlp.gate_up", "mlp", ["gate_proj", "up_proj"])]:
        leader = block.get_submodule(f"{sub}.{names[0]}")
        st = collect_block_stats(block, inputs, [f"{sub}.{names[0]}"])[f"{sub}.{names[0]}"]
        W = torch.cat([block.get_submodule(f"{sub}.{n}").weight.detach() for n in names])
        probe = ModuleProbe(block.get_submodule(sub), calls[sub], [f"{n}.weight" for n in names])
        res = awq_search_scales(W, st.x_mean, st.H, 3, 32, alpha_grid=6, loss=probe.error, energy=probe.energy)

        def sub_outputs(b):
            ys = []
            h = b.get_submodule(sub).register_forward_hook(lambda mod, a, y: ys.append(y[0] if isinstance(y, tuple)
                                                                                       else y))
            with torch.no_grad():
                for x in inputs.hidden:
                    b(x, **inputs.kwargs)
            h.remove()
            return torch.cat([y.reshape(-1, y.shape[-1]) for y in ys]).double()

        y_ref = sub_outputs(block)
        naive = []
        for a in torch.linspace(0, 1, 6).tolist():
            xm = torch.cat([x.reshape(-1, x.shape[-1]) for x in
                            _inputs_of(block, inputs, leader)]).abs().mean(0)
            s = xm.clamp(min=1e-4 * xm.max()) ** a
            s = s / (s.max() * s.min()).sqrt()
            b = copy.deepcopy(block)
            with torch.no_grad():
                for n in names:
                    lin = b.get_submodule(f"{sub}.{n}")
                    lin.weight.copy_(quantize_affine(lin.weight * s, 3, 32).dequantize() / s)
            naive.append(float(((sub_outputs(b) - y_ref) ** 2).sum() / len(y_ref)))
        naive = torch.tensor(naive, dtype=torch.float64)
        assert torch.allclose(res.errors, naive, rtol=1e-3), (group, res.errors, naive)
        assert res.alpha == pytest.approx(float(torch.linspace(0, 1, 6)[naive.argmin()]))
        assert probe.energy == pytest.approx(float((y_ref ** 2).sum() / len(y_ref)), rel=1e-5)
    assert probe_module_name(["self_attn.q_proj", "self_attn.k_proj"], prev_is_linear=False) == "self_attn"
    assert probe_module_name(["mlp.down_proj"], prev_is_linear=True) is None  # its output is the MLP's output
    assert probe_module_name(["q", "k"], prev_is_linear=False) is None


def _inputs_of(block, inputs, module):
    xs = []
    h = module.register_forward_pre_hook(lambda mod, a: xs.append(a[0].detach()))
    with torch.no_grad():
        for x in inputs.hidden:
            block(x, **inputs.kwargs)
    h.remove()
    return xs


def test_module_objective_folds_exactly_and_beats_rtn_at_the_module_output():
    m = toy_model()
    ids = torch.randint(0, 128, (6, 32))
    ref = m(ids).logits
    mm = copy.deepcopy(m)
    q = AWQQuantizer(bits=3, group_size=32, objective="module", probe_tokens=64, duo_scaling=True)
    inp = capture_block_inputs(mm, ids)
    for i, block in enumerate(mm.model.layers):
        st = q.scale_block(block, inp, f"model.layers.{i}")
        res, _ = st.searches["self_attn.qkv"]
        assert float(res.errors.nan_to_num(float("inf")).min()) <= res.err_rtn  # measured at self_attn's output
        inp = inp.run(block)
    assert (mm(ids).logits - ref).abs().max() <= 1e-4
    assert q.config["objective"] == "module"
    with pytest.raises(BadArgumentError):
        AWQQuantizer(objective="softmax")
    with pytest.raises(BadArgumentError):
        AWQQuantizer(probe_tokens=0)


# ---------------------------------------------------------------------------------------------------------
# clip search


def test_clip_search_matches_naive_per_group_search():
    X, W = salient_data(T=512, K=32, N=6)
    gs = 8
    H = X.T @ X / len(X)
    cs = awq_search_clip(W, H, bits=3, group_size=gs, clip_grid=10, max_shrink=0.5)
    assert torch.equal(cs.shrinks, 1 - torch.arange(5) / 10)
    for n in range(W.shape[0]):  # naive: loop over rows, groups and factors with the actual inputs
        for g in range(W.shape[1] // gs):
            w, x = W[n, g * gs:(g + 1) * gs], X[:, g * gs:(g + 1) * gs]
            errs = []
            for r in cs.shrinks.tolist():
                wc = w.clamp(r * w.min(), r * w.max())
                q = quantize_affine(wc[None], 3, gs).dequantize()[0]
                errs.append(float(((x.double() @ (w - q).double()) ** 2).sum()))
            assert float(cs.ratio[n, g]) == pytest.approx(float(cs.shrinks[int(torch.tensor(errs).argmin())]))
    assert cs.err_after <= cs.err_before
    assert torch.equal(apply_clip(W, torch.ones(6, 4), gs), W)


def test_independent_clip_search_matches_naive_pair_search():
    X, W = salient_data(T=256, K=16, N=4)
    gs = 8
    W[:, 0] += 3.0  # lopsided groups: the best lower and upper factors differ
    H = X.T @ X / len(X)
    cs = awq_search_clip(W, H, bits=3, group_size=gs, clip_grid=8, max_shrink=0.5, independent=True)
    shared = awq_search_clip(W, H, bits=3, group_size=gs, clip_grid=8, max_shrink=0.5)
    assert cs.ratio.shape == (4, 2, 2)
    for n in range(W.shape[0]):  # naive: every (lower, upper) pair with the actual inputs
        for g in range(W.shape[1] // gs):
            w, x = W[n, g * gs:(g + 1) * gs], X[:, g * gs:(g + 1) * gs]
            best, arg = float("inf"), None
            for lo in cs.shrinks.tolist():
                for hi in cs.shrinks.tolist():
                    q = quantize_affine(w.clamp(lo * w.min(), hi * w.max())[None], 3, gs).dequantize()[0]
                    e = float(((x.double() @ (w - q).double()) ** 2).sum())
                    if e < best:
                        best, arg = e, (lo, hi)
            assert tuple(cs.ratio[n, g].tolist()) == pytest.approx(arg)
    assert cs.err_after <= shared.err_after + 1e-9  # the shared factors are among the pairs
    assert torch.allclose(cs.curve, shared.curve)
    assert torch.equal(apply_clip(W, torch.ones(4, 2, 2), gs), W)


# ---------------------------------------------------------------------------------------------------------
# folding and the block quantizer


def test_folding_random_scales_is_exact_on_toy_llama():
    m = toy_model()
    ids = torch.randint(0, 128, (2, 24))
    ref = m(ids).logits
    g = torch.Generator().manual_seed(1)
    for block in m.model.layers:
        for grp in scale_groups(block):
            n_prev = grp.prev.out_features if isinstance(grp.prev, torch.nn.Linear) else grp.prev.weight.numel()
            s_prev = torch.exp(torch.randn(n_prev, generator=g))  # scales over e^±3
            assert fold_group(grp, s_prev, kv_expand(s_prev, grp.n_rep, grp.head_dim)) is None
    assert (m(ids).logits - ref).abs().max() <= 1e-4


def test_groups_of_smollm_shaped_block():
    m = toy_model(hidden=96, heads=6, kv=2)
    groups = {g.name: g for g in scale_groups(m.model.layers[0])}
    assert list(groups["self_attn.qkv"].layers) == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
    assert groups["self_attn.o_proj"].n_rep == 3 and groups["self_attn.o_proj"].head_dim == 16
    assert groups["mlp.down_proj"].prev is m.model.layers[0].mlp.up_proj
    with pytest.raises(BadArgumentError, match="llama-style"):
        scale_groups(torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_searched_scales_fold_exactly_and_awq_beats_rtn():
    m = toy_model()
    ids = torch.randint(0, 128, (8, 32))
    ref = m(ids).logits
    inputs = capture_block_inputs(m, ids)
    for bits in (3, 4):
        q = AWQQuantizer(bits=bits, group_size=32, holdout=0.25)
        mm = copy.deepcopy(m)
        inp = inputs
        for i, block in enumerate(mm.model.layers):
            q.scale_block(block, inp, f"model.layers.{i}")
            inp = inp.run(block)
        assert (mm(ids).logits - ref).abs().max() <= 1e-4  # scaled, not yet quantized: same function
        q2 = AWQQuantizer(bits=bits, group_size=32, holdout=0.25)
        quantize_model(copy.deepcopy(m), ids, q2, progress=False)
        assert len(q2.records) == 8
        assert q2.fraction_better() >= 0.9, q2.report()  # held-out samples: AWQ's error below RTN's
        assert all(0 <= r.alpha <= 1 for r in q2.records)


def test_quantizer_returns_qtensors_of_the_folded_weights():
    m = toy_model(layers=1)
    ids = torch.randint(0, 128, (4, 16))
    q = AWQQuantizer(bits=4, group_size=32)
    res, _ = quantize_block(q, m.model.layers[0], capture_block_inputs(m, ids), "model.layers.0")
    assert len(res.qtensors) == 7 and set(res.float_weights) == set(res.qtensors)
    for name, qt in res.qtensors.items():
        assert torch.equal(m.get_submodule(name).weight, qt.dequantize())
        W = res.float_weights[name]  # the scaled float weight it approximates: RTN of it is at most clipped
        assert float((W - qt.dequantize()).abs().max()) < float(W.abs().max())
    assert "self_attn.qkv" in q.report() and q.describe().startswith("AWQ")


def test_awq_then_gptq_runs():
    """qlab.gptq is qlab's own module: if it does not import, this fails (no importorskip)."""
    import qlab.gptq  # noqa: F401

    m = toy_model(layers=1)
    ids = torch.randint(0, 128, (4, 32))
    q = AWQQuantizer(bits=3, group_size=32, then="gptq")
    res = quantize_model(m, ids, q, progress=False)
    assert len(res.qtensors) == 7 and q.fraction_better() >= 0.9


# ---------------------------------------------------------------------------------------------------------
# bad input


def test_nonfinite_statistics_stop_with_the_layer_name():
    X, W = salient_data()
    H = X.T @ X / len(X)
    H[3, 3] = float("inf")
    with pytest.raises(NonFiniteError, match="model.layers.7.mlp"):
        awq_search_scales(W, X.abs().mean(0), H, name="model.layers.7.mlp")


def test_nan_activations_stop_cleanly_before_any_change():
    m = toy_model(layers=1)
    inputs = capture_block_inputs(m, torch.randint(0, 128, (2, 16)))
    inputs.hidden[1][0, 3, 5] = float("nan")
    block = m.model.layers[0]
    before = copy.deepcopy(block.state_dict())
    with pytest.raises(NonFiniteError, match="model.layers.0"):
        AWQQuantizer(bits=4, group_size=32).quantize_block(block, inputs, "model.layers.0")
    assert all(torch.equal(before[k], v) for k, v in block.state_dict().items())


def test_fp16_overflow_candidates_are_rejected_and_reported():
    X, W = salient_data()
    X[:, 0] *= 1e4  # an enormous outlier channel: large α pushes W·s past fp16's 65504
    W = (W * 1000).half()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = awq_search_scales(W, X.abs().mean(0), X.T @ X / len(X), 4, 16, name="model.layers.2.self_attn.qkv")
    msgs = [str(x.message) for x in w if issubclass(x.category, AWQWarning)]
    assert msgs and "model.layers.2.self_attn.qkv" in msgs[0] and "overflows" in msgs[0]
    assert torch.isnan(res.errors).any() and torch.isfinite(res.errors[0])
    assert torch.isfinite((W.float() * res.s).half()).all()
    # naive oracle over the default grid of 20 α: a candidate whose W·s is not finite in fp16 is out; among
    # the rest the actual inputs' output error decides, and the search must pick that argmin
    Wf, xm = W.float(), X.double().abs().mean(0)
    naive = []
    for a in torch.linspace(0, 1, 20).tolist():
        sc = xm.clamp(min=1e-4 * xm.max()) ** a
        sc = (sc / (sc.max() * sc.min()).sqrt()).float()
        if not torch.isfinite((Wf * sc).half()).all():
            naive.append(float("nan"))
            continue
        W_hat = quantize_affine((Wf * sc).half().float(), 4, 16).dequantize() / sc
        naive.append(float(((X.double() @ (Wf - W_hat).double().T) ** 2).sum() / len(X)))
    naive = torch.tensor(naive, dtype=torch.float64)
    assert torch.equal(torch.isnan(res.errors), torch.isnan(naive))  # the same candidates rejected
    ok = ~torch.isnan(naive)
    assert torch.allclose(res.errors[ok], naive[ok], rtol=1e-3)
    chosen = int((torch.linspace(0, 1, 20) - res.alpha).abs().argmin())
    assert not torch.isnan(naive[chosen])
    assert float(naive[chosen]) <= float(naive[ok].min()) * (1 + 2e-3), (res.alpha, naive)


def test_all_zero_activations_mean_no_scaling():
    W = torch.randn(16, 32)
    with pytest.warns(AWQWarning, match="all-zero"):
        res = awq_search_scales(W, torch.zeros(32), torch.zeros(32, 32), 4, 16, name="dead")
    assert res.alpha == 0 and torch.equal(res.s, torch.ones(32))
    # a block fed all-zero hidden states: RMSNorm gives zeros, every group falls back to s = 1
    m = toy_model(layers=1)
    inputs = capture_block_inputs(m, torch.randint(0, 128, (2, 16)))
    zero = BlockInputs([torch.zeros_like(h) for h in inputs.hidden], inputs.kwargs)
    q = AWQQuantizer(bits=4, group_size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AWQWarning)
        q.quantize_block(m.model.layers[0], zero, "model.layers.0")
    assert {r.group for r in q.records if r.alpha == 0} >= {"self_attn.qkv", "mlp.gate_up"}
    assert all(torch.isfinite(p).all() for p in m.parameters())


def test_bad_arguments():
    with pytest.raises(BadArgumentError):
        AWQQuantizer(bits=9)
    with pytest.raises(BadArgumentError):
        AWQQuantizer(then="magic")
    with pytest.raises(BadArgumentError):
        AWQQuantizer(alpha_grid=0)
    m = toy_model(layers=1)
    with pytest.raises(BadArgumentError, match="calibration"):
        AWQQuantizer().quantize_block(m.model.layers[0], None, "model.layers.0")
    inputs = capture_block_inputs(m, torch.randint(0, 128, (1, 8)))
    with pytest.raises(BadArgumentError, match="does not divide"):
        AWQQuantizer(group_size=128).quantize_block(m.model.layers[0], inputs, "model.layers.0")


# ---------------------------------------------------------------------------------------------------------
# the embedded model


@pytest.mark.slow
def test_embedded_model_awq_beats_rtn_on_held_out_groups(embedded):
    """SmolLM2-135M as it is (576 = 9·64 wide, GQA 9/3 heads): folding exact, AWQ < RTN on ≥ 90 % of groups."""
    from qlab.data import calibration_batches
    from qlab.walk import decoder_blocks

    model, tok = embedded
    ids = calibration_batches(tok, "wiki", n_samples=8, seqlen=128, seed=3)
    for bits in (3, 4):
        m = copy.deepcopy(model)
        # the cheaper searches (the default module objective and two-sided clip are tested on the toy model)
        q = AWQQuantizer(bits=bits, group_size=64, holdout=0.25, objective="linear", clip_independent=False)
        inputs = capture_block_inputs(m, ids)
        for i, block in enumerate(decoder_blocks(m)[:3]):
            if bits == 3 and i == 0:  # scaled but not quantized: the model computes the same logits
                probe = copy.deepcopy(m)
                q.scale_block(decoder_blocks(probe)[0], inputs, "model.layers.0")
                with torch.no_grad():
                    assert (probe(ids[:1]).logits - m(ids[:1]).logits).abs().max() <= 1e-4
            q.quantize_block(block, inputs, f"model.layers.{i}")
            inputs = inputs.run(block)
        assert q.fraction_better() >= 0.9, q.report()
