"""qlab.lessons.gptq_cost: the FLOP and memory count of a GPTQ calibration, checked against a hand count."""

import pytest

from qlab.lessons.gptq_cost import LLAMA2_7B, SMOLLM2_135M, DecoderShape, calibration_cost, seconds

# hidden 4, intermediate 6, one block, 2 heads of 2, 1 kv head (k/v: 2 × 4); 2 samples × 3 tokens = 6 tokens
TINY = DecoderShape("tiny", hidden=4, intermediate=6, n_layers=1, n_heads=2, n_kv_heads=1, vocab=10)


def test_tiny_shape_against_a_hand_count():
    c = calibration_cost(TINY, n_samples=2, seqlen=3)
    # Linears (d_out, d_in): q 4×4, k 2×4, v 2×4, o 4×4, gate 6×4, up 6×4, down 4×6 → 16+8+8+16+24+24+24 = 120
    assert TINY.block_params() == 120
    assert c.tokens == 6
    assert c.flops["forward"] == 2 * 6 * 120  # 1440
    # per sequence and head: 3·4/2 = 6 causal dot products of head_dim 2 → QKᵀ 6·2·2 = 24, AV 24; 2 heads, 2 seqs
    assert c.flops["attention"] == 2 * 2 * (24 + 24)  # 192
    # XᵀX of the distinct inputs 4 (q/k/v), 4 (o), 4 (gate/up), 6 (down): 2·6·(16+16+16+36)
    assert c.flops["hessian"] == 1008
    # Σ d_out·d_in²: 4·16 + 2·16 + 2·16 + 4·16 + 6·16 + 6·16 + 4·36
    assert c.flops["sweep"] == 528
    # Σ 4/3·d_in³: six Linears of width 4, one of 6 → 4/3·(6·64 + 216)
    assert c.flops["inverse"] == pytest.approx(800)
    assert c.total_flops == pytest.approx(1440 + 192 + 1008 + 528 + 800)
    # memory: 120 block weights + 10·4 embedding + 10·4 lm_head at 2 bytes; one block at 2 bytes;
    # hidden 6·4 and MLP 6·6 activations at 4 bytes; Hessians 4·(16+16+16+36) bytes
    assert c.memory == {"weights": 400, "block_weights": 240, "hidden": 96, "mlp_activation": 144, "hessians": 336}


def test_two_forwards_double_only_the_forward_phases():
    one, two = calibration_cost(TINY, 2, 3), calibration_cost(TINY, 2, 3, forwards_per_block=2)
    assert two.flops["forward"] == 2 * one.flops["forward"] and two.flops["attention"] == 2 * one.flops["attention"]
    assert all(two.flops[k] == one.flops[k] for k in ("hessian", "sweep", "inverse"))


def test_seconds_uses_a_rate_per_phase_and_a_default():
    c = calibration_cost(TINY, 2, 3)
    t = seconds(c, {"forward": 1440.0, "default": 1.0})
    assert t == pytest.approx(1 + 192 + 1008 + 528 + 800)


def test_known_models():
    assert LLAMA2_7B.params() == pytest.approx(6.738e9, rel=1e-3)  # Llama-2-7B without its norms
    assert SMOLLM2_135M.params() == pytest.approx(134.5e6, rel=1e-3)  # tied embeddings
    assert LLAMA2_7B.linears()["k_proj"] == (4096, 4096) and SMOLLM2_135M.linears()["k_proj"] == (192, 576)
