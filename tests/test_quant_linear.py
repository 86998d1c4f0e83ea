"""QuantLinear (packed weights + Triton kernel / torch reference) and swapping it into a transformers model.

Oracles: QuantizedTensor.dequantize() (the weight), and the same model with each Linear's weight replaced by
that dequantized float weight (the generated tokens)."""

import copy

import pytest
import torch
from torch import nn

from qlab.affine import quantize_affine
from qlab.errors import BadArgumentError
from qlab.qtensor import QuantizedTensor
from qlab.quant_linear import QuantLinear, swap_quant_linears

transformers = pytest.importorskip("transformers")


def _triton_device() -> str:
    """Where backend="triton" runs: CUDA when compiled kernels can run, else the CPU interpreter."""
    try:
        from qlab.kernels.triton import interpreting
    except ImportError:
        pytest.skip("triton is not installed")
    return "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"


def _qt(N: int, K: int, bits: int, group: int, act_order: bool, seed: int = 0) -> QuantizedTensor:
    g = torch.Generator().manual_seed(seed)
    qt = quantize_affine(torch.randn(N, K, generator=g), bits=bits, group_size=group)
    if act_order:  # scatter the columns' groups as GPTQ's act-order does
        qt.g_idx = qt.g_idx[torch.randperm(K, generator=g)]
    return qt


@pytest.mark.parametrize("bits,act_order", [(4, False), (4, True), (3, False), (8, True)])
def test_packed_weight_round_trips(bits, act_order):
    qt = _qt(24, 96, bits, 32, act_order)
    exact = QuantLinear.from_qtensor(qt, scale_dtype=torch.float32)
    assert torch.equal(exact.dequantize(), qt.dequantize())
    # default fp16 storage of scales: equal to dequantizing with fp16-rounded scales
    half = QuantLinear.from_qtensor(qt)
    rounded = QuantizedTensor(qt.codes, qt.scales.half().float(), qt.zeros, bits, 32, False, g_idx=qt.g_idx)
    assert torch.equal(half.dequantize(), rounded.dequantize())
    assert half.qweight.dtype == torch.int32 and half.qweight.shape == (96 * bits // 32, 24)


def test_padding_when_k_does_not_fill_words():
    qt = _qt(8, 40, 3, 8, act_order=False)  # 40·3 bits is not a whole number of int32 words: padded to 64 rows
    m = QuantLinear.from_qtensor(qt, scale_dtype=torch.float32)
    assert m.qweight.shape == (6, 8)
    x = torch.randn(3, 40)
    torch.testing.assert_close(m(x), x @ qt.dequantize().T, rtol=1e-5, atol=1e-5)
    dev = _triton_device()
    m.backend = "triton"  # the kernel reads only the first K = 40 codes of each padded column
    torch.testing.assert_close(m.to(dev)(x.to(dev)).cpu(), x @ qt.dequantize().T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
def test_triton_backend_matches_torch_backend(dtype):
    qt = _qt(40, 128, 4, 64, act_order=True)
    bias = torch.randn(40)
    torch_m = QuantLinear.from_qtensor(qt, bias, backend="torch").to(dtype)
    dev = _triton_device()
    triton_m = QuantLinear.from_qtensor(qt, bias, backend="triton").to(dtype).to(dev)
    assert triton_m.scales.dtype == torch.float16  # .to(dtype) moves but never re-rounds the scales
    x = torch.randn(2, 5, 128).to(dtype)
    y_ref, y = torch_m(x), triton_m(x.to(dev)).cpu()
    assert y.dtype == dtype and y.shape == (2, 5, 40)
    # both accumulate in fp32 and round once to `dtype`: they may differ by one rounding of the output (2 units)
    u = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-7, torch.float32: 2.0**-20}[dtype]
    ref = x.float() @ torch_m.dequantize().T + bias.to(dtype).float()
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=2 * u, atol=2 * u * float(ref.abs().max()))


def _tiny_llama(layers: int = 2):
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   initializer_range=0.2)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _quantize_linears(model: nn.Module, group: int = 32) -> dict[str, QuantizedTensor]:
    return {name: quantize_affine(mod.weight, bits=4, group_size=group, symmetric=(i % 2 == 0))
            for i, (name, mod) in enumerate(model.named_modules())
            if isinstance(mod, nn.Linear) and not name.endswith("lm_head")}


def _greedy(model: nn.Module, ids: torch.Tensor, n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("backend,n_new", [("torch", 8), ("triton", 3)])
def test_generation_matches_dequantized_float_model(backend, n_new):
    model = _tiny_llama()
    qtensors = _quantize_linears(model)
    float_model = copy.deepcopy(model)
    for name, qt in qtensors.items():  # the oracle: the float model carrying the dequantized weights
        float_model.get_submodule(name).weight.data = qt.dequantize()
    qmodel = swap_quant_linears(model, qtensors, backend=backend, scale_dtype=torch.float32)
    assert sum(isinstance(m, QuantLinear) for m in qmodel.modules()) == len(qtensors) == 14
    dev = _triton_device() if backend == "triton" else "cpu"
    qmodel, ids = qmodel.to(dev), torch.tensor([[5, 17, 42, 3, 88]])
    with torch.no_grad():
        torch.testing.assert_close(qmodel(ids.to(dev)).logits.cpu(), float_model(ids).logits, rtol=1e-4, atol=1e-4)
    assert _greedy(qmodel, ids.to(dev), n_new) == _greedy(float_model, ids, n_new)


def test_swap_refuses_bad_names_and_shapes():
    model = _tiny_llama(layers=1)
    qt = _qt(64, 64, 4, 32, act_order=False)
    with pytest.raises(BadArgumentError, match="no module"):
        swap_quant_linears(model, {"model.layers.7.mlp.up_proj": qt})
    with pytest.raises(BadArgumentError, match="not an nn.Linear"):
        swap_quant_linears(model, {"model.norm": qt})
    with pytest.raises(BadArgumentError, match="weight"):
        swap_quant_linears(model, {"model.layers.0.mlp.up_proj": qt})
    with pytest.raises(BadArgumentError, match="backend"):
        QuantLinear.from_qtensor(qt, backend="cuda")
