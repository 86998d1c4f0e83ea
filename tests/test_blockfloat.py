"""qlab.blockfloat against independent oracles: hand-worked blocks from the OCP MX v1.0 rules, a naive MX written
here from the spec with ml_dtypes casting the elements, torchao's MX and NVFP4 reference code, bitsandbytes' NF4
(code table, codes, double quantization), closed forms for bits per weight, and byte round trips."""

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch

from qlab import blockfloat as bf
from qlab import minifloat as mf
from qlab.errors import BadArgumentError, FileFormatError, NonFiniteError

MX_FP = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4"]


TORCHAO = Path(sys.prefix) / "oracles" / "torchao"  # `make oracle` installs it there, out of site-packages
needs_torchao = pytest.mark.skipif(not (TORCHAO / "torchao").is_dir(),
                                   reason=f"torchao is not installed in {TORCHAO}: run `make oracle`")


def torchao(tmp_path, task: str, W: torch.Tensor):
    """torchao's result for W, computed by tests/torchao_oracle.py in a process of its own (see there why)."""
    src, dst = tmp_path / "W.pt", tmp_path / "ref.pt"
    torch.save(W, src)
    env = {**os.environ, "PYTHONPATH": str(TORCHAO)}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("torchao_oracle.py")), task, str(src),
                           str(dst)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(dst)


def bnb_functional():
    """bitsandbytes.functional, imported without its import-time deprecation warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import bitsandbytes.functional as F
    return F


def weight(rows: int = 48, cols: int = 256, seed: int = 0) -> torch.Tensor:
    """Gaussian rows over 8 decades of scale, plus the blocks the rules treat specially: a zero block, an exact
    power-of-two absmax, and blocks whose absmax mantissa is near 2 (they saturate under the spec's floor)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g) * torch.logspace(-4, 4, cols)[torch.randperm(cols, generator=g)]
    W[0, :64] = 0
    W[1, :32] = torch.linspace(-1, 1, 32) * 4.0  # absmax 4 = 2^2
    W[2, :32] = torch.linspace(-1, 1, 32) * 1.96
    W[3, :32] = torch.linspace(-1, 1, 32) * 479.0
    return W


# ----------------------------------------------------------------------------------------------------------
# MX: hand-worked blocks (OCP MX v1.0 §6.3: X = 2^(floor(log2 absmax) − emax_elem), elements saturate)


def test_mxfp4_block_by_hand():
    v = torch.zeros(32)
    v[:6] = torch.tensor([5.0, -1.3, 0.26, 0.24, 2.5, -0.7])
    q = bf.quantize(v, "mxfp4")
    # absmax 5 → floor(log2 5) = 2, emax(E2M1) = 2 → shared exponent 0 → E8M0 code 127, X = 1
    assert q.scale_codes.tolist() == [[127]] and q.scales.tolist() == [[1.0]]
    # E2M1: 5 is a tie between 4 and 6 → 4 (even code); 0.26 → 0.5; 0.24 → 0; 2.5 tie → 2; 0.7 → 0.5
    assert q.dequantize()[:6].tolist() == [4.0, -1.5, 0.5, 0.0, 2.0, -0.5]
    assert q.codes[0, :6].tolist() == [0b0110, 0b1011, 0b0001, 0b0000, 0b0100, 0b1001]


def test_mxfp8_e4m3_saturation_and_the_scale_rounding_variants():
    v = torch.zeros(32)
    v[0], v[1] = 480.0, 3.0  # 480 = 1.875·2^8
    # floor: shared exp = 8 − 8 = 0; 480 > 448 saturates; 3 stays
    q = bf.quantize(v, "mxfp8_e4m3")
    assert q.scale_codes.item() == 127 and q.dequantize()[:2].tolist() == [448.0, 3.0]
    # ceil: ceil(log2 480) − 8 = 1 → X = 2: 480/2 = 240 = 1.875·2^7 fits; 3/2 = 1.5 fits
    for mode in ("ceil", "rceil"):  # rceil: ceil(log2(480/448)) = 1, the same here
        q = bf.quantize(v, "mxfp8_e4m3", scale_rounding=mode)
        assert q.scale_codes.item() == 128 and q.dequantize()[:2].tolist() == [480.0, 3.0]
    # absmax 300: floor and rceil keep X = 1 (300 ≤ 448 fits), ceil goes to X = 2 although nothing saturates
    v[0] = 300.0
    assert [bf.quantize(v, "mxfp8_e4m3", scale_rounding=m).scale_codes.item() for m in ("floor", "ceil", "rceil")] \
        == [127, 128, 127]
    # a power-of-two absmax: ceil = floor
    v[0] = 256.0
    assert bf.quantize(v, "mxfp8_e4m3", scale_rounding="ceil").scale_codes.item() == 127


def test_mxfp6_e2m3_and_mxint8_by_hand():
    v = torch.zeros(32)
    v[0], v[1] = 3.0, 0.3
    q = bf.quantize(v, "mxfp6_e2m3")  # floor(log2 3) = 1, emax 2 → X = 2^-1; 3/X = 6, 0.3/X = 0.6 → 0.625
    assert q.scale_codes.item() == 126 and q.dequantize()[:2].tolist() == [3.0, 0.3125]
    w = torch.zeros(32)
    w[:4] = torch.tensor([1.99, -0.5, 0.1, -1.995])  # absmax 1.995: floor(log2) = 0, emax(int8) = 0 → X = 1
    q = bf.quantize(w, "mxint8")
    # codes round(w·64): 127.36 → 127, −32, 6.4 → 6, −127.68 → −128 → −127 (the symmetric clamp)
    assert q.codes[0, :4].view(torch.int8).tolist() == [127, -32, 6, -127]
    assert q.dequantize()[:4].tolist() == [127 / 64, -0.5, 6 / 64, -127 / 64]


def test_all_zero_block_gets_the_smallest_scale_and_zeros():
    for name in bf.BLOCK_FORMATS:
        W = torch.zeros(2, 64)
        q = bf.quantize(W, name)
        assert torch.equal(q.dequantize(), W) and not q.dequantize().isnan().any(), name
    q = bf.quantize(torch.zeros(1, 32), "mxfp4")
    assert q.scale_codes.tolist() == [[0]] and q.codes.eq(0).all()  # E8M0 code 0 = 2^-127


def mx_oracle(W: torch.Tensor, elem: str, mode: str) -> torch.Tensor:
    """The spec written out block by block in plain Python floats, elements cast by ml_dtypes after clamping."""
    dt = {"e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2, "e3m2": ml_dtypes.float6_e3m2fn,
          "e2m3": ml_dtypes.float6_e2m3fn, "e2m1": ml_dtypes.float4_e2m1fn}.get(elem)
    top = {"e4m3": 448.0, "e5m2": 57344.0, "e3m2": 28.0, "e2m3": 7.5, "e2m1": 6.0, "int8": 127 / 64}[elem]
    emax = math.floor(math.log2(top))
    out = np.zeros(W.shape, dtype=np.float64)
    rows = W.double().numpy()
    for r in range(rows.shape[0]):
        for b in range(0, rows.shape[1], 32):
            blk = rows[r, b:b + 32]
            a = float(np.abs(blk).max())
            if a == 0:
                continue
            fl = math.frexp(a)[1] - 1  # floor(log2 a), exact
            e = {"floor": fl - emax, "ceil": (fl if a == 2.0**fl else fl + 1) - emax,
                 "rceil": next(k for k in range(fl - emax, fl - emax + 3) if a <= top * 2.0**k)}[mode]
            x = np.clip(blk / 2.0**e, -top, top)
            q = np.round(x * 64) / 64 if elem == "int8" else x.astype(np.float32).astype(dt).astype(np.float64)
            out[r, b:b + 32] = q * 2.0**e
    return torch.from_numpy(out.astype(np.float32))


@pytest.mark.parametrize("mode", bf.SCALE_ROUNDINGS)
@pytest.mark.parametrize("name", MX_FP + ["mxint8"])
def test_mx_matches_the_spec_written_out(name, mode):
    W = weight(24, 128)
    ref = mx_oracle(W, bf.BLOCK_FORMATS[name].element, mode)
    assert torch.equal(bf.quantize(W, name, scale_rounding=mode).dequantize(), ref)


@needs_torchao
def test_mx_matches_torchao_reference(tmp_path):
    """torchao 0.18's `to_mx` (pure PyTorch, runs on CPU) for the five MX float formats and its three
    shared-exponent rules FLOOR / CEIL / RCEIL: scale codes, element values and dequantized weights agree exactly.
    (torchao has no MXINT8; the spec oracle above covers it.)"""
    W = weight(64, 512)
    checked = 0
    reference = torchao(tmp_path, "mx", W)
    assert len(reference) == 15
    for (name, mode), (scale, ref) in reference.items():
        q = bf.quantize(W, name, scale_rounding=mode)
        assert torch.equal(scale.reshape(q.scale_codes.shape), q.scale_codes), (name, mode)
        assert torch.equal(q.dequantize(), ref), (name, mode)
        checked += W.numel()
    assert checked == 15 * 64 * 512


# ----------------------------------------------------------------------------------------------------------
# NVFP4


def test_nvfp4_by_hand():
    W = torch.zeros(2, 16)
    W[0, 0], W[0, 1], W[1, 0] = 2688.0, 1000.0, 1.0  # absmax 2688 = 6·448 → g = 1
    q = bf.quantize(W, "nvfp4")
    assert float(q.tensor_scale) == 1.0
    # block 0: absmax/6/g = 448 → E4M3 code 0x7E; 1000/448 = 2.23 → E2M1 2 → 896
    # block 1: 1/6 = 0.1667 → E4M3 nearest 0.171875 (= 11/64); 1/0.171875 = 5.82 → 6 → 1.03125
    assert q.scale_codes.reshape(-1).tolist() == [0x7E, mf.encode(torch.tensor(11 / 64), "e4m3").item()]
    assert q.dequantize()[0, :2].tolist() == [2688.0, 896.0] and q.dequantize()[1, 0].item() == 6 * 11 / 64
    # a block far below the tensor's absmax: its scale would round to 0; it gets 2^-9 (code 1), never 0
    W[1, 0] = 2688.0 * 2.0**-24
    q = bf.quantize(W, "nvfp4")
    assert q.scale_codes[1, 0].item() == 1 and q.dequantize()[1, 0].item() == 0.0


@needs_torchao
def test_nvfp4_matches_torchao_reference(tmp_path):
    """torchao 0.18's `nvfp4_quantize` with its per-tensor scale absmax/(6·448). One stated difference: torchao
    floors a block scale at E4M3's smallest NORMAL 2^-6 (its E4M3_EPS = finfo.tiny), we round it to the nearest
    E4M3, subnormals included (floor 2^-9). Every block whose scale target is ≥ 2^-6 agrees exactly in E4M3 code
    and E2M1 codes; the dequantized values to 1 float32 ulp (torchao forms g·s in float32 first)."""
    g = torch.Generator().manual_seed(1)
    W = torch.randn(128, 512, generator=g) * torch.logspace(-3, 1, 512)
    ref = torchao(tmp_path, "nvfp4", W)
    g_ref = ref["tensor_scale"]
    q = bf.quantize(W, "nvfp4")
    assert float(q.tensor_scale) == float(g_ref)
    target = W.reshape(128, 32, 16).abs().amax(-1).double() / 6 / g_ref.double()  # [R, G] block-scale targets
    normal = target >= 2.0**-6
    assert 0 < int((~normal).sum()) < 0.01 * normal.numel()  # this weight has a few such tiny blocks
    ref_codes = ref["scale_codes"].reshape(q.scale_codes.shape)
    assert torch.equal(ref_codes[normal], q.scale_codes[normal])
    assert bool((mf.decode(ref_codes[~normal], "e4m3") == 2.0**-6).all())  # torchao's floor
    assert torch.equal(q.scale_codes[~normal], mf.encode(target[~normal], "e4m3"))  # ours: the nearest
    blocks = normal[..., None].expand(128, 32, 16).reshape(128, 512)
    assert torch.equal(ref["codes"].reshape(q.codes.shape)[blocks], q.codes[blocks])
    torch.testing.assert_close(q.dequantize()[blocks], ref["dequantized"][blocks], rtol=2.0**-23, atol=0)


# ----------------------------------------------------------------------------------------------------------
# NF4


def test_nf4_levels_equal_bitsandbytes_and_the_quantile_construction():
    levels = bf.nf4_values()
    assert levels.shape == (16,) and levels[7] == 0 and levels[0] == -1 and levels[15] == 1
    assert bool((levels[1:] > levels[:-1]).all())
    from scipy.stats import norm  # the QLoRA construction, recomputed with bitsandbytes' rounded offset

    off = 0.9677083
    pos, neg = norm.ppf(np.linspace(off, 0.5, 9)[:-1]), -norm.ppf(np.linspace(off, 0.5, 8)[:-1])
    ref = np.sort(np.concatenate([pos, neg, [0.0]]))
    np.testing.assert_allclose(levels.numpy(), ref / ref.max(), atol=1e-6, rtol=0)
    F = bnb_functional()
    np.testing.assert_allclose(levels.numpy(), F.get_4bit_type("nf4", device="cpu").double().numpy(), atol=1e-6,
                               rtol=0)


def test_dynamic_map_equals_bitsandbytes():
    F = bnb_functional()
    ref = F.create_dynamic_map(signed=True).double().sort().values
    mine = bf.dynamic_map_values().sort().values
    torch.testing.assert_close(mine, ref, atol=1e-7, rtol=0)


def bnb_nf4(W: torch.Tensor, double_quant: bool):
    F = bnb_functional()
    packed, state = F.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    b = packed.reshape(-1)
    codes = torch.stack([b >> 4, b & 15], -1).reshape(W.shape)  # bitsandbytes: first code in the high nibble
    absmax = (F.dequantize_blockwise(state.absmax, state.state2) + state.offset) if double_quant else state.absmax
    return codes, absmax, F.dequantize_4bit(packed, state)


def test_nf4_matches_bitsandbytes_codes_and_weights():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(96, 512, generator=g) * 0.02
    W[5, :64] = 0
    codes, absmax, ref = bnb_nf4(W, double_quant=False)
    q = bf.quantize(W, "nf4")
    assert torch.equal(codes, q.codes)  # every 4-bit code, exactly
    assert torch.equal(absmax.reshape(q.scales.shape), q.scales)
    # levels differ from bitsandbytes' float32 table by < 2e-7 (the offset 0.9677083 is rounded there)
    torch.testing.assert_close(q.dequantize(), ref, rtol=1e-6, atol=1e-9)


def test_nf4_double_quant_matches_bitsandbytes_and_is_bounded():
    g = torch.Generator().manual_seed(3)
    W = torch.randn(300, 1024, generator=g) * 0.02  # 4800 blocks: 18 full groups of 256 and a partial one
    codes, absmax_ref, ref = bnb_nf4(W, double_quant=True)
    q = bf.quantize(W, "nf4", double_quant=True)
    assert torch.equal(codes, q.codes)  # elements are coded with the exact absmax, before it is compressed
    exact = W.reshape(-1, 64).abs().amax(-1).double()
    mine, theirs = q.scales.reshape(-1).double(), absmax_ref.double()
    # ours takes the nearest dynamic-map value; bitsandbytes' CPU kernel picks its neighbour for a few constants
    # near a midpoint (5 of these 4800). Ours is never farther from the true absmax; tol: the float32 rounding
    # of bitsandbytes' map values, ~1e-8 relative.
    tol = 1e-6 * exact
    assert bool(((mine - exact).abs() <= (theirs - exact).abs() + tol).all())
    assert int(((mine - theirs).abs() > tol).sum()) < 0.01 * mine.numel()
    # the bound: half the widest gap of the map (0.9/64 near ±1) times the group's scale, plus float32 rounding
    gap = bf.dynamic_map_values().sort().values.diff().max().item()
    dq = q.double_quant
    per = torch.repeat_interleave(dq.scales, 256)[: exact.numel()].double()
    assert bool(((mine - exact).abs() <= gap / 2 * per + 1e-7 * exact).all())
    torch.testing.assert_close(q.dequantize(), ref, rtol=0.02, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Bits per weight, packing


def test_bits_per_weight_closed_forms():
    W = torch.randn(2, 256 * 64)  # numel a multiple of 64·256
    n = W.numel()
    expected = {"mxfp8_e4m3": 8 + 8 / 32, "mxfp8_e5m2": 8.25, "mxfp6_e3m2": 6 + 8 / 32, "mxfp6_e2m3": 6.25,
                "mxfp4": 4 + 8 / 32, "mxint8": 8.25, "nvfp4": 4 + 8 / 16 + 32 / n, "nf4": 4 + 32 / 64}
    for name, bpw in expected.items():
        assert bf.quantize(W, name).bits_per_weight() == pytest.approx(bpw, rel=1e-12), name
    # double quantization: 8-bit absmax codes, a float32 per 256 blocks, and the float32 mean
    assert bf.quantize(W, "nf4", double_quant=True).bits_per_weight() == pytest.approx(
        4 + 8 / 64 + 32 / (64 * 256) + 32 / n, rel=1e-12)
    V = torch.randn(3, 640)  # 30 blocks: one partial group of 256
    assert bf.quantize(V, "nf4", double_quant=True).storage_bits() == 4 * V.numel() + 8 * 30 + 32 + 32


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_codes_round_trips_and_reads_as_a_bit_stream(bits):
    g = torch.Generator().manual_seed(bits)
    for count in (1, 7, 8, 33, 1000):
        codes = torch.randint(0, 2**bits, (count,), generator=g)
        packed = bf.pack_codes(codes, bits)
        assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(count * bits / 8)
        stream = np.unpackbits(packed.numpy(), bitorder="little")  # the oracle: numpy's own bit order
        read = (stream[: count * bits].reshape(count, bits) << np.arange(bits)).sum(1)
        np.testing.assert_array_equal(read, codes.numpy())
        assert torch.equal(bf.unpack_codes(packed, bits, count), codes.to(torch.uint8))
    assert bf.pack_codes(torch.tensor([1, 2, 3, 4]), 4).tolist() == [0x21, 0x43]  # low nibble first


@pytest.mark.parametrize("name,dq", [(n, False) for n in bf.BLOCK_FORMATS] + [("nf4", True)])
def test_pack_unpack_round_trips_every_format(name, dq):
    W = weight(6, 128)
    q = bf.quantize(W, name, double_quant=True) if dq else bf.quantize(W, name)
    data = bf.pack(q)
    assert 8 * len(data) == q.storage_bits()
    back = bf.unpack(data, name, W.shape, double_quant=dq)
    assert torch.equal(back.codes, q.codes) and torch.equal(back.scales, q.scales)
    assert torch.equal(back.dequantize(), q.dequantize())
    with pytest.raises(FileFormatError, match="truncated"):
        bf.unpack(data[:-1], name, W.shape, double_quant=dq)
    with pytest.raises(FileFormatError, match="left over"):
        bf.unpack(data + b"\0", name, W.shape, double_quant=dq)


# ----------------------------------------------------------------------------------------------------------
# The front, bad input


def test_fake_quantize_replaces_a_linear_weight():
    lin = torch.nn.Linear(64, 8)
    for name in bf.BLOCK_FORMATS:
        W_hat = bf.fake_quantize(lin.weight, name)
        assert W_hat.dtype == torch.float32 and W_hat.shape == lin.weight.shape
        assert torch.equal(W_hat, bf.quantize(lin.weight, name).dequantize())
        rel = (W_hat - lin.weight).norm() / lin.weight.norm()
        assert rel < {"mxfp4": 0.2, "nvfp4": 0.2, "nf4": 0.2}.get(name, 0.08), (name, float(rel))
    with torch.no_grad():
        lin.weight.copy_(bf.fake_quantize(lin.weight, "mxfp4"))
    assert lin(torch.randn(3, 64)).shape == (3, 8)
    assert bf.fake_quantize(torch.randn(2, 3, 64), "nf4").shape == (2, 3, 64)  # leading dims are rows


def test_bad_input_raises_and_says_what_to_change():
    with pytest.raises(BadArgumentError, match="known: mxfp8_e4m3, .*nvfp4, nf4"):
        bf.quantize(torch.randn(2, 32), "mxfp5")
    with pytest.raises(BadArgumentError, match=r"multiple of its block size 32; got 100.*96, 128.*none of the"):
        bf.quantize(torch.randn(2, 100), "mxfp4")  # 100 is not a multiple of 16 either: no registered format fits
    with pytest.raises(BadArgumentError, match=r"block size 64; got 48.*nvfp4"):
        bf.quantize(torch.randn(2, 48), "nf4")
    for name in bf.BLOCK_FORMATS:
        W = torch.randn(2, 64)
        W[1, 3] = float("nan")
        with pytest.raises(NonFiniteError, match=f"{name} quantizes finite numbers only"):
            bf.quantize(W, name)
        W[1, 3] = float("inf")
        with pytest.raises(NonFiniteError, match=name):
            bf.quantize(W, name)
    tiny = torch.full((1, 32), 2.0**-130)  # needs 2^(-130 − 2): below E8M0
    with pytest.raises(BadArgumentError, match=r"outside E8M0's 2\^-127 … 2\^127.*needs 2\^-132"):
        bf.quantize(tiny, "mxfp4")
    huge = torch.full((1, 32), 2.0**200, dtype=torch.float64)
    with pytest.raises(BadArgumentError, match="E8M0"):
        bf.quantize(huge, "mxint8")
    with pytest.raises(BadArgumentError, match="MX formats only"):
        bf.quantize(torch.randn(2, 64), "nvfp4", scale_rounding="ceil")
    with pytest.raises(BadArgumentError, match="scale_rounding must be one of"):
        bf.quantize(torch.randn(2, 64), "mxfp4", scale_rounding="round")
    with pytest.raises(BadArgumentError, match="nf4 only"):
        bf.quantize(torch.randn(2, 64), "mxfp4", double_quant=True)
    with pytest.raises(BadArgumentError, match="floating-point"):
        bf.quantize(torch.ones(2, 64, dtype=torch.int32), "mxfp4")
    with pytest.raises(BadArgumentError, match=r"\[0, 15\]"):
        bf.pack_codes(torch.tensor([16]), 4)
