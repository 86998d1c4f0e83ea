"""GGUFLinear / swap_gguf_linears: a model on qlab's CPU kernels against the same model with the blocks
dequantized to float (the oracle: nn.Linear on qlab.gguf.dequantize of the same bytes).

The kernels quantize each activation block to Q8 (|x - x_hat| <= amax_block / 254) before the integer dot
products. Two oracles:
- one layer: a float matmul of the dequantized weights with Q8 round-tripped inputs (torch's q8_roundtrip)
  gives the same numbers up to float summation order (rtol 1e-5). Through a whole model no such tight bound
  holds: float-order differences upstream can flip a Q8 rounding (one code step) in a later layer;
- whole model: the dequantized float twin differs by the activation rounding only: on this tiny random
  model that moves logits by 3-6 % of their spread (measured), asserted as <= 0.1 * std, and the greedy
  tokens must be identical.
"""

from __future__ import annotations

import copy

import ggml_oracle  # noqa: E402  (tests/ is on sys.path)
import numpy as np
import pytest
import qlab.kernels.cpu as K
import torch
from qlab.kernels.cpu.fallback import q8_roundtrip
from torch import nn

from qlab.cpu_quant_linear import GGUFLinear, choose_qtype, swap_gguf_linears
from qlab.errors import BadArgumentError


@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=320, max_position_embeddings=128, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def _dequantized_twin(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model)
    for name, m in list(twin.named_modules()):
        if isinstance(m, GGUFLinear):
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            lin.weight.data = m.dequantize()
            if m.bias is not None:
                lin.bias.data = m.bias.data.clone()
            parent = twin.get_submodule(name.rsplit(".", 1)[0]) if "." in name else twin
            setattr(parent, name.rsplit(".", 1)[-1], lin)
    return twin


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0", "Q4_K", "Q6_K"])
def test_swapped_model_matches_its_dequantized_twin(llama, qtype):
    model = copy.deepcopy(llama)
    used = swap_gguf_linears(model, qtype, lm_head_qtype="Q8_0", n_threads=2)
    assert used["lm_head"] == "Q8_0" and used["model.layers.0.mlp.down_proj"] == qtype
    twin = _dequantized_twin(model)
    ids = torch.randint(0, 320, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = model(ids).logits, twin(ids).logits
    spread = float(b.std())
    err = float((a - b).abs().max())
    assert err <= 0.1 * spread, f"max|dlogit| vs float twin = {err:.3g}, std = {spread:.3g}"
    with torch.no_grad():
        ga = model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)
        gb = twin.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(ga, gb)


def test_weights_quantized_byte_exact_with_ggml():
    base = ggml_oracle.require()
    W = torch.randn(24, 512)
    for qt in ("Q4_0", "Q8_0", "Q4_K", "Q6_K"):
        lin = nn.Linear(512, 24, bias=True)
        lin.weight.data = W
        g = GGUFLinear.from_linear(lin, qt)
        assert np.array_equal(g.blocks.numpy().reshape(-1), base.quantize(W.numpy(), qt)), qt
        x = torch.randn(3, 5, 512)
        y = g(x)
        assert y.shape == (3, 5, 24)
        want = q8_roundtrip(x.reshape(-1, 512), K.QTYPES[qt].vec_dot_type) @ g.dequantize().T + lin.bias.data
        torch.testing.assert_close(y.reshape(-1, 24), want, rtol=1e-5, atol=1e-4)


def test_fallbacks_and_errors(llama):
    assert choose_qtype(576, "Q4_K") == "Q4_0" and choose_qtype(1536, "Q4_K") == "Q4_K"
    assert choose_qtype(576, "Q6_K") == "Q8_0" and choose_qtype(100, "Q8_0") is None
    with pytest.raises(BadArgumentError):
        choose_qtype(512, "Q5_K")
    with pytest.raises(BadArgumentError, match="no nn.Linear"):
        swap_gguf_linears(nn.Sequential(nn.ReLU()), "Q4_0")
    g = GGUFLinear.from_linear(nn.Linear(64, 8), "Q8_0")
    with pytest.raises(BadArgumentError, match="features"):
        g(torch.randn(2, 63))
    with pytest.raises(BadArgumentError, match="bytes"):
        GGUFLinear(torch.zeros(10, dtype=torch.uint8), "Q8_0", 64, 8)
    m = copy.deepcopy(llama)
    used = swap_gguf_linears(m, "Q4_0", lm_head_qtype=None, skip=("o_proj",))
    assert used["lm_head"] == "float" and used["model.layers.1.self_attn.o_proj"] == "float"
    assert isinstance(m.model.layers[1].self_attn.q_proj, GGUFLinear)
    assert K.has_c_kernels()
