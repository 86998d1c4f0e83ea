"""SmoothQuant (qlab.smoothquant): the folded model computes the same function (real blocks of the embedded model),
the smoothed activation and weight maxima equal their closed forms, the α search returns its argmin and leaves the
model alone, and smoothing an outlier channel helps per-tensor INT8."""

import copy

import pytest
import torch

from qlab.activations import ActQuantConfig, calibrate_ranges, quantize_activations, quantize_weights_per_channel
from qlab.errors import BadArgumentError
from qlab.smoothquant import (
    GROUPS,
    NORM_GROUPS,
    channel_absmax,
    mean_kl,
    search_alpha,
    smooth_model,
    smoothing_scales,
)
from qlab.stats import forward_rows, modules_by_name

N_BLOCKS = 3


@pytest.fixture(scope="module")
def real_blocks(embedded):
    """The embedded model's first 3 decoder blocks (with its embeddings, final norm and head), float32, and 2 × 64
    tokens of the wiki calibration split."""
    from transformers import LlamaForCausalLM

    from qlab.data import calibration_batches

    full, tok = embedded
    cfg = copy.deepcopy(full.config)
    cfg.num_hidden_layers = N_BLOCKS
    small = LlamaForCausalLM(cfg).eval()
    keep = {k: v for k, v in full.state_dict().items()
            if not k.startswith("model.layers.") or int(k.split(".")[2]) < N_BLOCKS}
    missing, unexpected = small.load_state_dict(keep, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing)
    small.tie_weights()
    return small, calibration_batches(tok, "wiki", 2, 64)


def inputs_of(model, ids, names):
    """Every input row [tokens, features] of the named Linears over ids (one forward per row), concatenated."""
    seen = {n: [] for n in names}
    with torch.no_grad():
        forward_rows(model, ids, modules_by_name(model, names), lambda n, x: seen[n].append(x.detach()))
    return {n: torch.cat(v) for n, v in seen.items()}


def rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("alpha", [0.5, 0.85])
def test_folding_leaves_the_float_model_unchanged_on_real_blocks(real_blocks, alpha):
    model, ids = real_blocks
    m = copy.deepcopy(model)
    with torch.no_grad():
        ref = model(ids, use_cache=False)
        report = smooth_model(m, channel_absmax(m, ids, progress=False), alpha)
        out = m(ids, use_cache=False)
    assert len(report) == 4 * N_BLOCKS and not any(r.skipped for r in report)  # o_proj too, through GQA's kv_expand
    assert rel(out.logits, ref.logits) <= 1e-4
    for i in range(N_BLOCKS):  # the weights did change, a lot
        a, b = m.model.layers[i].self_attn.q_proj.weight, model.model.layers[i].self_attn.q_proj.weight
        assert rel(a, b) > 0.1
        assert rel(m.model.layers[i].mlp.down_proj.weight, model.model.layers[i].mlp.down_proj.weight) > 0.1


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_smoothed_maxima_equal_the_closed_form(real_blocks, alpha):
    """After smoothing, channel j of a group's input peaks at max|X_j|/s_j = (max|X_j|·max|W_j|)^(1−α) and the
    group's largest weight in column j is (max|X_j|·max|W_j|)^α — with o_proj's GQA sharing: one s per v row,
    from the maxima over the n_rep o columns that read it."""
    model, ids = real_blocks
    firsts = {"self_attn.qkv": ["q_proj", "k_proj", "v_proj"], "mlp.gate_up": ["gate_proj", "up_proj"],
              "mlp.down_proj": ["down_proj"], "self_attn.o_proj": ["o_proj"]}
    full = {g: [f"model.layers.{i}.{g.split('.')[0]}.{lin}" for i in range(N_BLOCKS) for lin in lins]
            for g, lins in firsts.items()}
    names = [n for v in full.values() for n in v]
    before = inputs_of(model, ids, names)
    mods0 = dict(model.named_modules())
    m = copy.deepcopy(model)
    x_max = channel_absmax(m, ids, progress=False)
    smooth_model(m, x_max, alpha)
    after = inputs_of(m, ids, names)
    # the o and down groups fold into v's and up's rows, which also belong to the qkv and gate_up groups: their
    # weight maxima are checked on a copy smoothed in those two groups only
    m_norm = copy.deepcopy(model)
    smooth_model(m_norm, x_max, alpha, NORM_GROUPS)
    weights = {**dict(m.named_modules()), **{n: mod for n, mod in m_norm.named_modules()
                                             if n.endswith(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"))}}
    cfg = model.config
    d, n_rep = cfg.head_dim, cfg.num_attention_heads // cfg.num_key_value_heads
    for g, lins in firsts.items():
        for i in range(N_BLOCKS):
            group = [f"model.layers.{i}.{g.split('.')[0]}.{lin}" for lin in lins]
            x = before[group[0]].abs().amax(0).double()
            w = torch.stack([mods0[n].weight.detach().abs().amax(0) for n in group]).amax(0).double()
            if g == "self_attn.o_proj":  # column c = h·d + j reads v row (h // n_rep)·d + j
                xr, wr = torch.empty_like(x), torch.empty_like(w)
                for c in range(x.numel()):
                    h, j = divmod(c, d)
                    peers = [hh * d + j for hh in range(cfg.num_attention_heads) if hh // n_rep == h // n_rep]
                    xr[c], wr[c] = x[peers].max(), w[peers].max()
                s = xr ** alpha / wr ** (1 - alpha)
                x_expected, w_expected = x / s, w * s
            else:
                x_expected, w_expected = (x * w) ** (1 - alpha), (x * w) ** alpha
            x_got = after[group[0]].abs().amax(0).double()
            w_got = torch.stack([weights[n].weight.detach().abs().amax(0) for n in group]).amax(0).double()
            assert torch.allclose(x_got, x_expected, rtol=1e-4, atol=0), (g, i)
            assert torch.allclose(w_got, w_expected, rtol=1e-5, atol=0), (g, i)
            for n in group[1:]:  # every Linear of the group reads the same smoothed input
                assert torch.equal(after[n], after[group[0]])


def test_the_papers_groups_only(real_blocks):
    model, ids = real_blocks
    m = copy.deepcopy(model)
    report = smooth_model(m, channel_absmax(m, ids, progress=False), 0.5, NORM_GROUPS)
    assert {r.group for r in report} == set(NORM_GROUPS)
    for i in range(N_BLOCKS):
        assert torch.equal(m.model.layers[i].self_attn.o_proj.weight, model.model.layers[i].self_attn.o_proj.weight)
        assert torch.equal(m.model.layers[i].mlp.down_proj.weight, model.model.layers[i].mlp.down_proj.weight)


def test_smoothing_scales_closed_form_and_guards():
    x = torch.tensor([4.0, 0.0, 9.0, 1.0])
    w = torch.tensor([1.0, 2.0, 0.0, 0.25])
    s = smoothing_scales(x, w, 0.5)
    assert torch.allclose(s, torch.tensor([2.0, 1.0, 1.0, 2.0]))  # 0 in either maximum: no scaling
    assert torch.equal(smoothing_scales(x[:1], w[:1], 1.0), torch.tensor([4.0]))
    for a in (-0.1, 1.5):
        with pytest.raises(BadArgumentError, match=r"alpha must lie in \[0, 1\]"):
            smoothing_scales(x, w, a)


def outlier_model(tiny_llama):
    """tiny_llama with an outlier channel in every norm's output (its weight × 60): the case SmoothQuant is for."""
    with torch.no_grad():
        for layer in tiny_llama.model.layers:
            layer.input_layernorm.weight[5] *= 60
            layer.post_attention_layernorm.weight[17] *= 60
    return tiny_llama


def w8a8_static(m, ids):
    cfg = ActQuantConfig("int8", "tensor", "max")
    ranges = calibrate_ranges(m, ids, cfg, progress=False)
    quantize_weights_per_channel(m, "int8")
    return quantize_activations(m, cfg, ranges).remove


def test_smoothing_helps_per_tensor_int8_on_an_outlier_channel(tiny_llama):
    model = outlier_model(tiny_llama)
    ids = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        ref = [torch.log_softmax(model(r[None], use_cache=False).logits[0], -1) for r in ids]
    errors = {}
    for alpha in (None, 0.5):
        m = copy.deepcopy(model)
        if alpha is not None:
            smooth_model(m, channel_absmax(m, ids, progress=False), alpha)
        undo = w8a8_static(m, ids)
        errors[alpha] = mean_kl(ref, m, ids)
        undo()
    assert errors[0.5] < 0.5 * errors[None]


def test_alpha_search_returns_its_argmin_and_leaves_the_model_alone(tiny_llama):
    model = outlier_model(tiny_llama)
    ids = torch.randint(0, 256, (3, 16))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def quantize(m, calib):
        calls.append(calib.shape)
        return w8a8_static(m, calib)

    found = search_alpha(model, ids, quantize, alphas=(0.2, 0.5, 0.8), search_rows=2, progress=False)
    assert calls == [(2, 16)] * 4  # unsmoothed + one per α, on the search rows
    assert found.alpha == found.alphas[min(range(3), key=found.errors.__getitem__)]
    assert found.search_rows == 2 and min(found.errors) < found.error_unsmoothed
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(any(m._forward_pre_hooks) for m in model.modules())


def test_bad_arguments(tiny_llama):
    with pytest.raises(BadArgumentError, match="known: " + ", ".join(GROUPS)):
        smooth_model(tiny_llama, {}, 0.5, ("mlp.everything",))
    with pytest.raises(BadArgumentError, match="compute channel_absmax"):
        smooth_model(tiny_llama, {}, 0.5)
    with pytest.raises(BadArgumentError, match="alphas must be"):
        search_alpha(tiny_llama, torch.zeros(1, 4, dtype=torch.long), lambda m, i: (lambda: None), alphas=(2.0,),
                     x_max={})
