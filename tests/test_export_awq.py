"""AutoAWQ GEMM layout: closed-form nibble order, an independent unpacker, the checkpoint folder."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from qlab.affine import quantize_affine
from qlab.errors import BadArgumentError
from qlab.export_awq import awq_tensors, dequantize_awq, pack_awq, save_awq_checkpoint, unpack_awq


def independent_unpack(qweight: np.ndarray) -> np.ndarray:
    """Written from AutoAWQ's documented order alone: word nibble i holds column (0, 2, 4, 6, 1, 3, 5, 7)[i]."""
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    u = qweight.astype(np.int64) & 0xFFFFFFFF
    R, W = u.shape
    out = np.zeros((R, W * 8), dtype=np.int64)
    for r in range(R):
        for w in range(W):
            word = int(u[r, w])
            for i in range(8):
                out[r, 8 * w + order[i]] = (word >> (4 * i)) & 0xF
    return out


def test_closed_form_word():
    codes = torch.arange(8)[None]  # column c holds code c
    word = int(pack_awq(codes)[0, 0]) & 0xFFFFFFFF
    assert word == 0x75316420  # nibbles low→high: 0 2 4 6 1 3 5 7
    codes = torch.tensor([[15, 0, 0, 0, 0, 0, 0, 9]])
    assert int(pack_awq(codes)[0, 0]) & 0xFFFFFFFF == 0x9000000F
    assert pack_awq(torch.full((1, 8), 15)).dtype == torch.int32
    assert int(pack_awq(torch.full((1, 8), 15))[0, 0]) == -1


def test_roundtrip_and_independent_unpacker():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (40, 96), generator=g)
    packed = pack_awq(codes)
    assert packed.shape == (40, 12)
    assert torch.equal(unpack_awq(packed).long(), codes)
    assert np.array_equal(independent_unpack(packed.numpy()), codes.numpy())


def test_awq_tensors_dequantize_to_the_qtensor():
    W = torch.randn(48, 576)  # K = 576: not a multiple of 128 or 256
    qt = quantize_affine(W, 4, 64, symmetric=False)
    t = awq_tensors(qt)
    assert t["qweight"].shape == (576, 6) and t["qzeros"].shape == (9, 6) and t["scales"].shape == (9, 48)
    assert t["scales"].dtype == torch.float16
    # independent dequantization from the raw words
    q = independent_unpack(t["qweight"].numpy())
    z = independent_unpack(t["qzeros"].numpy())
    s = t["scales"].float().numpy()
    gi = np.arange(576) // 64
    W_awq = (q - z[gi]) * s[gi]  # [K, N]
    expected = ((qt.codes.float() - qt.zeros[:, qt.g_idx.long()]) * qt.scales.half().float()[:, qt.g_idx.long()]).T
    assert np.allclose(W_awq, expected.numpy(), atol=0, rtol=0)
    assert torch.allclose(dequantize_awq(t["qweight"], t["qzeros"], t["scales"]), expected)
    assert torch.allclose(dequantize_awq(t["qweight"], t["qzeros"], t["scales"]), qt.dequantize().T, rtol=1e-3,
                          atol=1e-3)


def test_symmetric_grid_stores_zero_8():
    qt = quantize_affine(torch.randn(16, 64), 4, 32, symmetric=True)
    z = independent_unpack(awq_tensors(qt)["qzeros"].numpy())
    assert (z == 8).all()


def test_rejects_what_the_layout_cannot_hold():
    with pytest.raises(BadArgumentError, match="4-bit"):
        awq_tensors(quantize_affine(torch.randn(16, 64), 3, 32))
    with pytest.raises(BadArgumentError, match="multiple of 8"):
        awq_tensors(quantize_affine(torch.randn(12, 64), 4, 32))
    with pytest.raises(BadArgumentError, match="integers"):
        awq_tensors(quantize_affine(torch.randn(16, 64), 4, 32, zero_point="float"))
    qt = quantize_affine(torch.randn(16, 64), 4, 32)
    qt.g_idx = torch.randperm(64).to(torch.int32) // 32
    with pytest.raises(BadArgumentError, match="act-order"):
        awq_tensors(qt)


def test_checkpoint_folder(tmp_path):
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=16, num_hidden_layers=1, vocab_size=64, tie_word_embeddings=True)
    m = LlamaForCausalLM(cfg).eval()
    qts = {}
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear) and name != "lm_head":
            qts[name] = quantize_affine(mod.weight, 4, 32)
            mod.weight.data.copy_(qts[name].dequantize())
    out = save_awq_checkpoint(m, None, qts, tmp_path / "awq")
    conf = json.loads((out / "config.json").read_text())["quantization_config"]
    assert conf == {"quant_method": "awq", "version": "gemm", "bits": 4, "group_size": 32, "zero_point": True,
                    "modules_to_not_convert": None}
    sd = load_file(str(out / "model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.weight" not in sd and "lm_head.weight" not in sd
    assert sd["model.layers.0.input_layernorm.weight"].dtype == torch.float16
    t = {k: sd[f"model.layers.0.mlp.down_proj.{k}"] for k in ("qweight", "qzeros", "scales")}
    assert t["qweight"].shape == (128, 8)
    W = dequantize_awq(t["qweight"], t["qzeros"], t["scales"]).T
    assert torch.allclose(W, m.model.layers[0].mlp.down_proj.weight, atol=1e-3)
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(BadArgumentError, match="one group size"):
        qts["model.layers.0.mlp.down_proj"] = quantize_affine(m.model.layers[0].mlp.down_proj.weight, 4, 64)
        save_awq_checkpoint(m, None, qts, tmp_path / "awq2")
