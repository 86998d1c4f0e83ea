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


def _buffer_bits(values: torch.Tensor, bits: int) -> int:
    """Bits of the int32 words `pack_rows` really writes for these b-bit integers (flattened, zero-padded to the
    values that fill whole words)."""
    import math

    from qlab.packing import pack_rows

    flat = values.reshape(-1).to(torch.int64)
    per_word = 32 // math.gcd(32, bits)
    flat = torch.cat([flat, torch.zeros((-flat.numel()) % per_word, dtype=torch.int64)])
    words = pack_rows(flat.reshape(per_word, -1), bits)
    return words.numel() * words.element_size() * 8


def test_one_accountant_agrees_with_the_closed_form():
    """QuantizedTensor.storage_bits (what `qlab quantize` / `qlab compare` report) and storage_breakdown (the
    notebooks' tables) against a count by hand: codes bits + (scale bits + zero bits) per group (+ int32 g_idx per
    column when act-order scattered the columns); padded, against the words pack_rows really writes."""
    N, K = W.shape
    scattered = quantize_affine(W, 3, 32, symmetric=True)
    scattered.g_idx = scattered.g_idx[torch.randperm(K, generator=torch.Generator().manual_seed(1))].contiguous()
    odd = torch.randn(3, 20, generator=torch.Generator().manual_seed(2))
    cases = [  # (qt, codes, scales, zeros, g_idx bits) by hand; zeros = None: integer b-bit zeros
        (quantize_affine(W, 4, 128, symmetric=False), N * K * 4, N * (K // 128) * 16, N * (K // 128) * 4, 0),
        (quantize_affine(W, 4, 64, symmetric=True), N * K * 4, N * (K // 64) * 16, 0, 0),
        (quantize_affine(W, 4, 64, symmetric=False, zero_point="float"), N * K * 4, N * (K // 64) * 16,
         N * (K // 64) * 16, 0),
        (scattered, N * K * 3, N * (K // 32) * 16, 0, 32 * K),
        (quantize_affine(W, 8, "tensor", symmetric=False), N * K * 8, 16, 8, 0),
        (quantize_affine(odd, 3, "channel", symmetric=False), 60 * 3, 3 * 16, 3 * 3, 0),
    ]
    for qt, codes, scales, zeros, gidx in cases:
        hand = codes + scales + zeros + gidx
        exact = storage_breakdown(qt, padded=False)
        assert (exact.code_bits, exact.scale_bits, exact.zero_bits, exact.gidx_bits) == (codes, scales, zeros, gidx)
        assert qt.storage_bits() == hand and qt.bits_per_weight() == pytest.approx(hand / (qt.shape[0] * qt.shape[1]))
        packed = storage_breakdown(qt)  # the default: whole int32 words, as a checkpoint stores them
        assert packed.code_bits == _buffer_bits(qt.codes, qt.bits)
        integer_zeros = not qt.symmetric and qt.zero_bits in (None, qt.bits)
        zeros_stored = qt.zeros[:1, :1] if qt.granularity == "tensor" else qt.zeros
        assert packed.zero_bits == (_buffer_bits(zeros_stored, qt.bits) if integer_zeros else zeros)
        assert (packed.scale_bits, packed.gidx_bits) == (scales, gidx)
        if (qt.shape[0] * qt.shape[1] * qt.bits) % 32 == 0 and not integer_zeros:
            assert packed.total_bits == hand  # nothing to pad
    # the model-level figure of `qlab quantize` (QuantizationResult) is the same sum
    from qlab.pipeline import QuantizationResult

    qts = {str(i): c[0] for i, c in enumerate(cases)}
    hand_total = sum(sum(c[1:]) for c in cases)
    assert QuantizationResult(qts).bits_per_weight() == pytest.approx(
        hand_total / sum(q.codes.numel() for q in qts.values()))
