"""GPTQ checkpoint layout: an independent bit-by-bit unpacker recovers the codes and zero-points exactly,
transformers accepts the quantization_config, and save → load round-trips the model."""

import json

import numpy as np
import pytest
import torch

from qlab.errors import BadArgumentError, FileFormatError
from qlab.export_gptq import load_gptq_checkpoint, read_gptq_tensors, save_gptq_checkpoint
from qlab.gptq import gptq_quantize_layer


def _bitstream_unpack(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Independent reader: words [W, C] int32 → [count, C] codes, reading the little-endian bit stream of each
    column one bit at a time (bit i of the stream is bit i % 32 of word i // 32)."""
    u = words.astype(np.int64) & 0xFFFFFFFF
    out = np.zeros((count, u.shape[1]), dtype=np.int64)
    for r in range(count):
        for b in range(bits):
            i = r * bits + b
            out[r] |= ((u[i // 32] >> (i % 32)) & 1) << b
    return out


def _tiny_model(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def _quantize_all(model, bits, group_size, symmetric, act_order):
    qts = {}
    g = torch.Generator().manual_seed(3)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and name != "lm_head":
            K = m.in_features
            X = torch.randn(200, K, generator=g) * (0.1 + torch.rand(K, generator=g) * 3)
            qt, _ = gptq_quantize_layer(m.weight.detach(), 2 * X.T @ X / 200, bits=bits, group_size=group_size,
                                        symmetric=symmetric, act_order=act_order)
            m.weight.data.copy_(qt.dequantize())
            qts[name] = qt
    return qts


@pytest.mark.parametrize("bits,group_size,symmetric,act_order", [
    (4, 32, True, False), (3, 32, False, True), (2, None, True, True), (8, 32, False, False),
])
def test_checkpoint_layout_and_round_trip(tmp_path, bits, group_size, symmetric, act_order):
    from transformers import GPTQConfig

    model = _tiny_model()
    qts = _quantize_all(model, bits, group_size, symmetric, act_order)
    out = save_gptq_checkpoint(model, None, qts, tmp_path / "ckpt", dtype=torch.float32)
    cfg = json.loads((out / "config.json").read_text())
    qc = cfg["quantization_config"]
    desc_act = act_order and group_size is not None  # per channel, the sweep order leaves no trace in the layout
    assert (qc["bits"], qc["group_size"], qc["sym"], qc["desc_act"]) == (bits, group_size or -1, symmetric, desc_act)
    GPTQConfig.from_dict(dict(qc)).post_init()  # transformers accepts it

    from safetensors.numpy import load_file

    raw = load_file(str(out / "model.safetensors"))
    v1 = qc["checkpoint_format"] == "gptq"
    for name, qt in qts.items():
        N, K = qt.shape
        qweight, qzeros = raw[f"{name}.qweight"], raw[f"{name}.qzeros"]
        assert qweight.dtype == np.int32 and qweight.shape == (K * bits // 32, N)
        assert qzeros.shape == (qt.n_groups, N * bits // 32)
        assert raw[f"{name}.scales"].dtype == np.float16
        codes = _bitstream_unpack(qweight, bits, K).T
        assert np.array_equal(codes, qt.codes.numpy().astype(np.int64))
        zeros = _bitstream_unpack(qzeros.T.copy(), bits, N).T  # [G, N], stored zero − 1 in format v1
        expect = qt.zeros.T.numpy().astype(np.int64) - (1 if v1 else 0)
        assert np.array_equal(zeros, expect & (2**bits - 1))
        assert np.array_equal(raw[f"{name}.g_idx"], qt.g_idx.numpy())
        # the checkpoint's own dequantization formula reproduces the evaluated weight exactly
        g = raw[f"{name}.g_idx"]
        s = raw[f"{name}.scales"].astype(np.float32)[g].T  # [N, K]
        z = (expect & (2**bits - 1)) + (1 if v1 else 0)
        W = (codes.astype(np.float32) - z[g].T.astype(np.float32)) * s
        assert np.array_equal(W, qt.dequantize().numpy())

    loaded, _, qts2 = load_gptq_checkpoint(out)
    for name, qt in qts.items():
        assert torch.equal(qts2[name].codes, qt.codes) and torch.equal(qts2[name].zeros, qt.zeros)
        assert torch.equal(qts2[name].scales, qt.scales) and torch.equal(qts2[name].g_idx, qt.g_idx)
    ids = torch.arange(20)[None]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_zero_point_zero_switches_to_v2(tmp_path):
    model = _tiny_model()
    qts = _quantize_all(model, 4, 32, False, False)
    name = next(iter(qts))
    qts[name].zeros[0, 0] = 0  # a group whose minimum is 0: "zero − 1" would wrap in format v1
    out = save_gptq_checkpoint(model, None, qts, tmp_path / "c")
    qts2, qc, _ = read_gptq_tensors(out)
    assert qc["checkpoint_format"] == "gptq_v2"
    assert torch.equal(qts2[name].zeros, qts[name].zeros)


def test_export_errors(tmp_path):
    model = _tiny_model()
    qts = _quantize_all(model, 4, 32, True, False)
    first = next(iter(qts))
    mixed = dict(qts)
    mixed[first] = gptq_quantize_layer(torch.randn(qts[first].shape), torch.eye(qts[first].shape[1]), bits=3,
                                       group_size=32)[0]
    with pytest.raises(BadArgumentError, match="one setting"):
        save_gptq_checkpoint(model, None, mixed, tmp_path / "x")
    with pytest.raises(BadArgumentError, match="not a module"):
        save_gptq_checkpoint(model, None, {"nope.q": qts[first]}, tmp_path / "y")
    assert not (tmp_path / "x").exists()
    with pytest.raises(FileFormatError):
        read_gptq_tensors(tmp_path)
