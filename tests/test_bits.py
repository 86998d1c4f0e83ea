"""Bits per weight counted from packed buffers against the closed form b + (scale_bits + zero_bits)/g."""

import pytest
import torch

from qlab.affine import quantize_affine
from qlab.bits import model_bits_per_weight, overhead_table, storage_breakdown

W = torch.randn(64, 1536, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("g", [32, 128, 512])
def test_group_overhead_closed_form(bits, g):
    N, K = W.shape
    sym = storage_breakdown(quantize_affine(W, bits, g, symmetric=True))
    assert sym.bits_per_weight == pytest.approx(bits + 16 / g)
    asym_int = storage_breakdown(quantize_affine(W, bits, g, symmetric=False))
    assert asym_int.bits_per_weight == pytest.approx(bits + (16 + bits) / g)
    asym_f = storage_breakdown(quantize_affine(W, bits, g, symmetric=False, zero_point="float"))
    assert asym_f.bits_per_weight == pytest.approx(bits + 32 / g)
    assert asym_f.code_bits == N * K * bits and asym_f.scale_bits == N * (K // g) * 16
    for st, qt in ((sym, quantize_affine(W, bits, g, symmetric=True)),
                   (asym_int, quantize_affine(W, bits, g, symmetric=False))):
        assert st.total_bits == qt.storage_bits()  # the formula in QuantizedTensor agrees with the buffers


def test_channel_and_tensor():
    N, K = W.shape
    assert storage_breakdown(quantize_affine(W, 4, "channel", symmetric=True)).bits_per_weight == pytest.approx(
        4 + 16 / K)
    t = storage_breakdown(quantize_affine(W, 4, "tensor", symmetric=False))
    assert t.total_bits == N * K * 4 + 16 + 32  # one fp16 scale + one 4-bit zero padded to a 32-bit word


def test_padding_of_odd_counts_and_gidx():
    w = torch.randn(3, 20)  # 60 codes of 3 bits = 180 bits → 6 words of 32 = 192 bits
    st = storage_breakdown(quantize_affine(w, 3, "channel", symmetric=True))
    assert st.code_bits == 192
    qt = quantize_affine(W, 4, 128, symmetric=True)
    qt.g_idx = qt.g_idx.flip(0).contiguous()  # act-order style scattered columns: g_idx must be stored
    assert storage_breakdown(qt).gidx_bits == 32 * W.shape[1]


def test_model_average_is_weight_weighted():
    a = quantize_affine(W, 4, 32, symmetric=True)  # 4.5 bits
    b = quantize_affine(torch.randn(64, 512), 4, 512, symmetric=True)  # 4 + 16/512
    want = (W.numel() * 4.5 + 64 * 512 * (4 + 16 / 512)) / (W.numel() + 64 * 512)
    assert model_bits_per_weight({"a": a, "b": b}) == pytest.approx(want)


def test_overhead_table_group_128():
    rows = {(r.group_size, r.zero): r.overhead for r in overhead_table(W, 4, (128,))}
    assert rows[(128, "int")] == pytest.approx((16 + 4) / 128)
    assert rows[(128, "fp16")] == pytest.approx((16 + 16) / 128)
    assert rows[(128, "none")] == pytest.approx(16 / 128)
