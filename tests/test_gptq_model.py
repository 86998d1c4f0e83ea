"""GPTQ on the embedded model: blocked == naive on real layers, and GPTQ beats RTN on every Linear it touches.
(The full-model numbers — all 210 Linears, perplexities, timing — are in benchmarks/gptq_calibration.py.)"""

import copy

import pytest
import torch

from qlab.data import calibration_batches
from qlab.gptq import GPTQQuantizer, gptq_quantize_layer
from qlab.gptq_naive import gptq_naive
from qlab.pipeline import quantize_block
from qlab.stats import HessianAccumulator, record_inputs
from qlab.walk import capture_block_inputs, decoder_blocks


@pytest.fixture(scope="module")
def calib(embedded):
    model, tok = embedded
    ids = calibration_batches(tok, "wiki", n_samples=4, seqlen=128, seed=0)
    return capture_block_inputs(model, ids)


def _hessians(block, inputs, names):
    mods = {n: block.get_submodule(n) for n in names}
    accs = {n: HessianAccumulator(m.in_features, n, dtype=torch.float64) for n, m in mods.items()}
    with torch.no_grad(), record_inputs(mods, lambda n, x: accs[n].add(x)):
        inputs.run(block)
    return {n: a.H for n, a in accs.items()}


@pytest.mark.parametrize("act_order,group_size", [(False, None), (True, 64)])
def test_blocked_equals_naive_on_real_layers(embedded, calib, act_order, group_size):
    model, _ = embedded
    block = decoder_blocks(model)[1]
    inputs = calib.run(decoder_blocks(model)[0])
    Hs = _hessians(block, inputs, ["self_attn.q_proj", "self_attn.o_proj"])
    for name, H in Hs.items():
        W = block.get_submodule(name).weight.detach().double()[:32]  # 32 rows keep the naive oracle quick
        qt, _ = gptq_quantize_layer(W, H, bits=3, group_size=group_size, act_order=act_order)
        Q, codes, *_ = gptq_naive(W, H, bits=3, group_size=group_size, act_order=act_order)
        rel = float((qt.dequantize(torch.float64) - Q).norm() / Q.norm())
        assert rel <= 1e-5, name
        assert torch.equal(qt.codes, codes), name


@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_beats_rtn_on_every_linear_of_two_blocks(embedded, calib, bits):
    model, _ = embedded
    q = GPTQQuantizer(bits=bits, group_size=64, symmetric=True, progress=False)
    inputs = calib
    for i in range(2):
        block = copy.deepcopy(decoder_blocks(model)[i])
        result, outputs = quantize_block(q, block, inputs, f"model.layers.{i}")
        out = result.qtensors
        assert len(out) == 7
        for name, qt in out.items():
            assert torch.equal(block.get_submodule(name.split(".", 3)[3]).weight, qt.dequantize())
        inputs = outputs  # the next block sees the quantized block's outputs
    assert len(q.layer_stats) == 14
    for name, st in q.layer_stats.items():
        assert st["gptq"] < st["rtn"], (name, st)
