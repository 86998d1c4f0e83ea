"""Evaluation against transformers' own loss, the block walk against the model's own forward, RTN end to end."""

import copy
import math

import pytest
import torch

from qlab.checkpoint import load_quantized, save_quantized
from qlab.data import eval_tokens
from qlab.eval import Evaluator, perplexity
from qlab.pipeline import quantize_model
from qlab.rtn import RTNQuantizer
from qlab.walk import capture_block_inputs, decoder_blocks


def test_perplexity_equals_transformers_loss(tiny_llama):
    tokens = torch.randint(0, 256, (300,), generator=torch.Generator().manual_seed(0))
    nll, n = 0.0, 0
    for i in range(0, 300, 128):  # windows of 128: 128, 128, 44 tokens
        w = tokens[i : i + 128][None]
        with torch.no_grad():
            loss = tiny_llama(w, labels=w).loss  # mean over the window's len−1 predicted tokens
        nll += float(loss) * (w.shape[1] - 1)
        n += w.shape[1] - 1
    r = perplexity(tiny_llama, tokens, ctx=128, progress=False)
    assert r.tokens == n == 297
    assert r.perplexity == pytest.approx(math.exp(nll / n), rel=1e-5)


def test_kl_of_a_model_against_itself_is_zero(tiny_llama):
    tokens = torch.randint(0, 256, (200,), generator=torch.Generator().manual_seed(1))
    ev = Evaluator(tiny_llama, tokens, ctx=64, progress=False)
    r = ev.evaluate(tiny_llama)
    assert r.kl == pytest.approx(0.0, abs=1e-6) and r.top1 == 1.0
    assert r.perplexity == pytest.approx(ev.reference.perplexity, rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# KL, top-1 and perplexity against oracles written here, independently of qlab.eval


def _log_softmax(row: list[float]) -> list[float]:
    """float64, one row, by the definition: x_i − log Σ_j exp(x_j) (shifted by the max for range)."""
    m = max(row)
    lse = m + math.log(math.fsum(math.exp(x - m) for x in row))
    return [x - lse for x in row]


def _argmax(row: list[float]) -> int:
    best = 0
    for i, x in enumerate(row):
        if x > row[best]:
            best = i
    return best


def _loop_oracle(reference, model, tokens: list[int], ctx: int) -> tuple[float, float, float, int]:
    """(perplexity, mean KL(P_ref ‖ P_model), top-1 agreement, scored tokens) by plain loops in float64 over
    consecutive windows of ctx tokens: in every window the logits at position t predict token t+1."""
    nll = kl = 0.0
    agree = n = 0
    for start in range(0, len(tokens), ctx):
        w = tokens[start : start + ctx]
        if len(w) < 2:
            continue
        with torch.no_grad():
            a = reference(torch.tensor([w])).logits[0].double().tolist()
            b = model(torch.tensor([w])).logits[0].double().tolist()
        for t in range(len(w) - 1):
            la, lb = _log_softmax(a[t]), _log_softmax(b[t])
            nll -= lb[w[t + 1]]
            kl += math.fsum(math.exp(x) * (x - y) for x, y in zip(la, lb))
            agree += _argmax(a[t]) == _argmax(b[t])
            n += 1
    return math.exp(nll / n), kl / n, agree / n, n


class _Bigram(torch.nn.Module):
    """A stub causal LM whose next-token log-probabilities depend only on the current token: logits = table[id]."""

    def __init__(self, probs: list[list[float]]):
        super().__init__()
        self.table = torch.tensor(probs, dtype=torch.float64).log().float()

    def forward(self, ids, use_cache=False):
        return type("Out", (), {"logits": self.table[ids]})()


def test_kl_top1_and_perplexity_of_two_bigram_models_in_closed_form():
    """Reference: p = (.7, .1, .1, .1) after every token. Model: the same after token 0, q = (.3, .5, .1, .1)
    after any other. After a non-zero token KL(p ‖ q) = .7·ln(7/3) + .1·ln(1/5) (the reverse direction,
    .3·ln(3/7) + .5·ln 5, differs) and the top-1 tokens differ; after token 0 the KL is 0 and they agree.
    Tokens [1 0 0 2 | 0 3 3 0 | 0 1] in windows of 4 score 7 positions (each window's first token is not
    scored), conditioned on 1 0 0 | 0 3 3 | 0: 3 non-zero of 7. Model NLL of the next tokens 0 0 2 | 3 3 0 | 1:
    −ln .3 twice (after 1 and 3), −ln .1 four times, −ln .7 once; reference under p: −ln .7 three times,
    −ln .1 four times."""
    ref = _Bigram([[0.7, 0.1, 0.1, 0.1]] * 4)
    model = _Bigram([[0.7, 0.1, 0.1, 0.1]] + [[0.3, 0.5, 0.1, 0.1]] * 3)
    tokens = torch.tensor([1, 0, 0, 2, 0, 3, 3, 0, 0, 1])
    ev = Evaluator(ref, tokens, ctx=4, progress=False)
    r = ev.evaluate(model)
    assert r.tokens == ev.reference.tokens == 7
    # float32 log-probabilities of O(1) size carry ≤ a few·2⁻²⁴ absolute error: rel=1e-5 leaves > 10× room
    assert r.kl == pytest.approx(3 / 7 * (0.7 * math.log(7 / 3) + 0.1 * math.log(1 / 5)), rel=1e-5)
    assert r.top1 == pytest.approx(4 / 7, abs=1e-12)
    nll = 2 * math.log(10 / 3) + 4 * math.log(10) - math.log(0.7)
    assert r.perplexity == pytest.approx(math.exp(nll / 7), rel=1e-5)
    assert ev.reference.perplexity == pytest.approx(math.exp((4 * math.log(10) - 3 * math.log(0.7)) / 7), rel=1e-5)
    assert perplexity(model, tokens, ctx=4, progress=False).perplexity == pytest.approx(r.perplexity, rel=1e-6)


def test_kl_and_top1_of_two_different_llamas_equal_a_float64_loop(tiny_llama):
    """Two different tiny Llamas (the second's weights moved by noise): Evaluator's KL, top-1 and perplexity
    equal `_loop_oracle`'s, which recomputes log-softmax, KL(P_ref ‖ P_model) and argmax per position in float64.
    Tolerance: Evaluator works in float32 on log-probabilities |log p| ≲ 10, so each carries ≲ 10·2⁻²³ ≈ 1.2e-6
    absolute error, and KL = Σ p (a − b) then errs by ≲ 2.4e-6 (Σ p = 1) plus a float32 summation over 256
    terms (≲ 256·2⁻²⁴·Σ|p(a − b)|, of the same order): abs=1e-5 per mean KL. Top-1 counts must be equal: a
    float32 tie that flips an argmax needs two logits within one ulp, which these seeded inputs do not have."""
    other = copy.deepcopy(tiny_llama)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for m in (tiny_llama, other):
            m.lm_head.weight.mul_(10)  # sharper distributions than the 0.02-std initialisation's near-uniform ones
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    tokens = torch.randint(0, 256, (150,), generator=torch.Generator().manual_seed(12))
    ev = Evaluator(tiny_llama, tokens, ctx=64, progress=False)  # windows of 64, 64 and 22 tokens
    r = ev.evaluate(other)
    ppl, kl, top1, n = _loop_oracle(tiny_llama, other, tokens.tolist(), 64)
    assert r.tokens == n == 63 + 63 + 21
    assert 0.05 < kl and 0.05 < top1 < 0.95, (kl, top1)  # a case where KL and top-1 mean something
    assert r.kl == pytest.approx(kl, abs=1e-5)
    assert r.top1 == top1
    assert r.perplexity == pytest.approx(ppl, rel=1e-5)
    ref_ppl, ref_kl, ref_top1, _ = _loop_oracle(tiny_llama, tiny_llama, tokens.tolist(), 64)
    assert ev.reference.perplexity == pytest.approx(ref_ppl, rel=1e-5) and (ref_kl, ref_top1) == (0.0, 1.0)


def test_block_walk_reproduces_the_forward_pass(tiny_llama):
    ids = torch.randint(0, 256, (3, 40), generator=torch.Generator().manual_seed(2))
    inputs = capture_block_inputs(tiny_llama, ids)
    for block in decoder_blocks(tiny_llama):
        inputs = inputs.run(block)
    logits = torch.stack([tiny_llama.lm_head(tiny_llama.model.norm(h))[0] for h in inputs.hidden])
    with torch.no_grad():
        torch.testing.assert_close(logits, tiny_llama(ids).logits, rtol=1e-4, atol=1e-4)


def test_batched_block_run_equals_one_sample_at_a_time(tiny_llama):
    ids = torch.randint(0, 256, (5, 40), generator=torch.Generator().manual_seed(4))
    inputs = capture_block_inputs(tiny_llama, ids)
    inputs.hidden.append(inputs.hidden[0][:, :30].clone())  # a shorter sample closes the batch it would join
    assert [tuple(b.shape[:2]) for b in inputs.batches(max_tokens=80)] == [(2, 40), (2, 40), (1, 40), (1, 30)]
    inputs.hidden.pop()  # (the block's shared kwargs — rotary tables — are for 40 tokens)
    block = decoder_blocks(tiny_llama)[0]
    one = inputs.run(block, max_tokens=1)
    together = inputs.run(block)
    assert [h.shape for h in together.hidden] == [h.shape for h in inputs.hidden]
    for a, b in zip(one.hidden, together.hidden):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bf16_block_walk_stays_near_the_float32_forward(tiny_llama):
    ids = torch.randint(0, 256, (3, 40), generator=torch.Generator().manual_seed(6))
    exact = capture_block_inputs(tiny_llama, ids)
    bf16 = capture_block_inputs(tiny_llama, ids, torch.bfloat16)
    for block in decoder_blocks(tiny_llama):
        exact, bf16 = exact.run(block), bf16.run(block)
    for a, b in zip(exact.hidden, bf16.hidden):
        assert b.dtype == torch.float32  # the residual stream stays float32
        rel = float((a - b).norm() / a.norm())
        assert 1e-5 < rel < 2e-2  # bf16 products (8-bit mantissa): ≈ 2⁻⁹ per product, not float32's 2⁻²⁴


def test_bf16_gptq_pipeline_writes_exact_float32_weights(tiny_llama):
    """Under a bf16 forward the first block's q/k/v still read a float32 RMSNorm output, so their codes equal
    the float32 run's; later inputs come from bf16 products and move."""
    from qlab.gptq import GPTQQuantizer

    ids = torch.randint(0, 256, (4, 48), generator=torch.Generator().manual_seed(7))
    other = copy.deepcopy(tiny_llama)
    f32 = quantize_model(tiny_llama, ids, GPTQQuantizer(3, 32, progress=False), progress=False)
    b16 = quantize_model(other, ids, GPTQQuantizer(3, 32, progress=False, forward_dtype="bfloat16"), progress=False)
    for name, qt in b16.qtensors.items():
        w = other.get_submodule(name).weight
        assert w.dtype == torch.float32 and torch.equal(w, qt.dequantize())
    first = [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]
    assert all(n in f32.qtensors for n in first)
    for n in first:
        assert torch.equal(f32.qtensors[n].codes, b16.qtensors[n].codes)
    assert any(not torch.equal(f32.qtensors[n].codes, b16.qtensors[n].codes) for n in f32.qtensors if n not in first)
    assert all(r.output_error is not None and math.isfinite(r.output_error) for r in b16.layers)


def test_single_pass_true_sequential_pipeline_equals_group_passes(tiny_llama):
    from qlab.gptq import GPTQQuantizer

    ids = torch.randint(0, 256, (4, 48), generator=torch.Generator().manual_seed(8))
    other = copy.deepcopy(tiny_llama)
    one = GPTQQuantizer(3, 32, true_sequential=True, progress=False)
    many = GPTQQuantizer(3, 32, true_sequential=True, progress=False, max_pass_bytes=0)
    r1 = quantize_model(tiny_llama, ids, one, progress=False, output_errors=False)
    r0 = quantize_model(other, ids, many, progress=False, output_errors=False)
    assert (one.single_pass_blocks, many.single_pass_blocks) == (2, 0)
    assert set(r1.qtensors) == set(r0.qtensors) and len(r1.qtensors) == 14
    for name, qt in r1.qtensors.items():
        assert torch.equal(qt.codes, r0.qtensors[name].codes), name
        assert torch.equal(tiny_llama.get_submodule(name).weight, qt.dequantize())


def test_skipping_output_errors_changes_no_weight(tiny_llama):
    from qlab.gptq import GPTQQuantizer

    ids = torch.randint(0, 256, (4, 48), generator=torch.Generator().manual_seed(5))
    other = copy.deepcopy(tiny_llama)
    full = quantize_model(tiny_llama, ids, GPTQQuantizer(3, 32, progress=False), progress=False)
    lean = quantize_model(other, ids, GPTQQuantizer(3, 32, progress=False), progress=False, output_errors=False)
    assert all(r.output_error is not None for r in full.layers)
    assert all(r.output_error is None for r in lean.layers)
    for name, qt in full.qtensors.items():
        assert torch.equal(qt.codes, lean.qtensors[name].codes)


def test_rtn_pipeline_sets_weights_reports_errors_and_skips(tiny_llama):
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(3))
    original = copy.deepcopy(tiny_llama)
    result = quantize_model(tiny_llama, ids, RTNQuantizer(3, 32, True), skip=["mlp.down_proj"], progress=False)
    assert len(result.qtensors) == 2 * 6  # q, k, v, o, gate, up in each of 2 blocks
    for name, qt in result.qtensors.items():
        lin = tiny_llama.get_submodule(name)
        torch.testing.assert_close(lin.weight, qt.dequantize())
    for i in range(2):
        torch.testing.assert_close(tiny_llama.model.layers[i].mlp.down_proj.weight,
                                   original.model.layers[i].mlp.down_proj.weight)
    assert all(0 < r.output_error < 1 for r in result.layers)
    # weight error: the reported ‖W − Ŵ‖²/‖W‖² equals a direct float64 computation, and lies below the
    # round-to-nearest bound Σ_groups gs·(Δ_g/2)² / ‖W‖² (each weight moves at most half its group's step)
    assert {r.name for r in result.layers} == set(result.qtensors)
    for r in result.layers:
        W = original.get_submodule(r.name).weight.double()
        qt = result.qtensors[r.name]
        direct = float(((W - qt.dequantize().double()) ** 2).sum() / (W**2).sum())
        assert r.weight_error == pytest.approx(direct, rel=1e-5), r.name
        bound = float(32 * (qt.scales.double() / 2).pow(2).sum() / (W**2).sum())
        assert direct <= bound, (r.name, direct, bound)
    assert result.bits_per_weight() == pytest.approx(3 + 16 / 32)


def test_checkpoint_round_trip_and_atomic_failure(tiny_llama, tmp_path, monkeypatch):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, "[UNK]")))
    result = quantize_model(tiny_llama, None, RTNQuantizer(4, 32), progress=False)
    out = save_quantized(tiny_llama, tok, result.qtensors, tmp_path / "q", {"method": result.method})
    model, _, qts, meta = load_quantized(out)
    assert meta["method"] == "RTN int4 asym g32"
    for name, qt in qts.items():
        torch.testing.assert_close(model.get_submodule(name).weight, qt.dequantize())
        assert torch.equal(qt.codes, result.qtensors[name].codes)

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(tok, "save_pretrained", fail)
    with pytest.raises(OSError):
        save_quantized(tiny_llama, tok, result.qtensors, tmp_path / "broken", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]  # nothing half-written left behind


@pytest.fixture(scope="module")
def wiki_eval(embedded):
    model, tok = embedded
    return Evaluator(model, eval_tokens(tok, "wiki", 1024), progress=False)


def _rtn(model, **kw):
    q = copy.deepcopy(model)
    quantize_model(q, None, RTNQuantizer(**kw), progress=False)
    return q


def rounding_noise_twin(model, bits: int, group_size: int, seed: int = 0):
    """A copy of `model` whose decoder-block Linear weights get independent uniform noise on [−Δ/2, Δ/2], with Δ
    computed here, per group of `group_size` along each row, as asymmetric integer-zero-point RTN's step:
    Δ = (max(max w, 0) − min(min w, 0)) / (2^bits − 1). Same layers and same step as RTN, random errors."""
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in twin.model.layers:
            for lin in block.modules():
                if isinstance(lin, torch.nn.Linear):
                    W = lin.weight
                    G = W.double().reshape(W.shape[0], -1, group_size)
                    delta = (G.amax(-1).clamp(min=0) - G.amin(-1).clamp(max=0)) / (2**bits - 1)
                    e = (torch.rand(G.shape, generator=g, dtype=torch.float64) - 0.5) * delta[..., None]
                    W.copy_((G + e).reshape(W.shape).to(W.dtype))
    return twin


def assert_within_rounding_bound(r, noise) -> None:
    """RTN's result `r` against the uniform-noise twin's `noise` (same evaluator), by the bounds derived in
    `test_embedded_8bit_rtn_is_nearly_lossless`."""
    n = r.tokens
    assert 0 < r.kl <= 3 * noise.kl, (r.kl, noise.kl)
    d_rtn, d_noise = round((1 - r.top1) * n), round((1 - noise.top1) * n)
    assert d_rtn <= math.sqrt(3) * d_noise + 3 * math.sqrt(math.sqrt(3) * d_noise + 1), (d_rtn, d_noise, n)


def test_embedded_8bit_rtn_is_nearly_lossless(embedded, wiki_eval):
    """8-bit RTN's KL, top-1 and perplexity bounded by what 8-bit rounding allows — no picked threshold.

    RTN (asymmetric, integer zero-point, groups of 64) moves each weight by e with |e| ≤ Δ/2, Δ its group's
    step (the grid spans the group, nothing is clipped). For a small perturbation KL(P ‖ P_{W+e}) ≈ ½·eᵀFe
    (F: the Fisher information of the next-token distribution in the weights). Rounding errors are
    uncorrelated across weights (the usual model of quantization noise at 256 levels), so the cross terms
    vanish and KL_rtn ≈ ½·Σ F_ii·e_i² ≤ ½·Σ F_ii·Δ_i²/4. The oracle, a twin with independent uniform errors
    of the same Δ (`rounding_noise_twin`), has KL_noise ≈ ½·Σ F_ii·Δ_i²/12. Hence
        KL_rtn ≤ 3·KL_noise        (3 = (Δ²/4)/(Δ²/12): worst-case |e| = Δ/2 against the uniform mean square).
    Both are measured with the same forward passes on this machine, so the bound does not depend on the
    platform's float arithmetic. (RTN's errors are in fact ≈ uniform, Δ²/12 each: the ratio is ≈ 1.1, and
    the noise twin's KL varies by ≈ 5 % between seeds — small against the factor 3.)
    Top-1: a position flips when the perturbation of its top-2 logit margin exceeds the margin; for small
    perturbations the flip rate is ∝ the perturbation's standard deviation, which for RTN is ≤ √3× the
    twin's. Counts are Poisson-like, so 3 standard deviations are added:
        d_rtn ≤ √3·d_noise + 3·√(√3·d_noise + 1)     (d: positions whose top-1 tokens differ).
    Perplexity: per token, log p_ref(x) − log p_rtn(x) has mean KL and variance ≈ 2·KL under P_ref (second
    order); over n tokens typical of the reference, |ln(ppl_rtn / ppl_ref)| ≤ KL + 5·√(2·KL / n)."""
    r = wiki_eval.evaluate(_rtn(embedded[0], bits=8, group_size=64))
    noise = wiki_eval.evaluate(rounding_noise_twin(embedded[0], 8, 64))
    assert_within_rounding_bound(r, noise)
    assert_perplexity_within_kl_bound(r, wiki_eval.reference)


def assert_perplexity_within_kl_bound(r, reference) -> None:
    """|ln(ppl / ppl_ref)| ≤ KL + 5·√(2·KL / n): the derivation is in test_embedded_8bit_rtn_is_nearly_lossless."""
    assert r.tokens == reference.tokens
    change = abs(math.log(r.perplexity / reference.perplexity))
    assert change <= r.kl + 5 * math.sqrt(2 * r.kl / r.tokens), (r.perplexity, reference.perplexity, r.kl)


def test_embedded_3bit_rtn_raises_perplexity(embedded, wiki_eval):
    r4 = wiki_eval.evaluate(_rtn(embedded[0], bits=4, group_size=64, symmetric=True))
    r3 = wiki_eval.evaluate(_rtn(embedded[0], bits=3, group_size=64, symmetric=True))
    assert wiki_eval.reference.perplexity < r4.perplexity < r3.perplexity
    assert 0 < r4.kl < r3.kl
