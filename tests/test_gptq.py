"""GPTQ: the blocked, lazy-batch, Cholesky sweep against the naive OBS oracle, and its error handling."""

import pytest
import torch

from qlab.affine import quantize_affine
from qlab.errors import BadArgumentError, NonFiniteError, NumericalError, TextTooShortError
from qlab.gptq import GPTQQuantizer, dampened_inverse_cholesky, gptq_quantize_layer
from qlab.gptq_naive import gptq_naive
from qlab.pipeline import quantize_block
from qlab.stats import HessianAccumulator
from qlab.stats import relative_output_error as layer_reconstruction_error


def _problem(N=24, K=64, T=300, seed=0, dead=(), dtype=torch.float64):
    """A weight and the Hessian 2XXᵀ/n of correlated inputs with uneven channel energies."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(K, K, generator=g, dtype=dtype) / K**0.5 + torch.eye(K, dtype=dtype)
    X = (torch.randn(T, K, generator=g, dtype=dtype) @ mix) * (0.2 + 3 * torch.rand(K, generator=g, dtype=dtype))
    X[:, list(dead)] = 0
    H = 2 * X.T @ X / T
    W = torch.randn(N, K, generator=g, dtype=dtype)
    return W, H, X


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group_size,static", [(None, False), (16, False), (16, True), (32, False)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_blocked_equals_naive_random(act_order, group_size, static, symmetric):
    W, H, _ = _problem(dead=(5,))
    # block size 24: groups of 16/32 straddle block boundaries, the hardest case for lazy updates
    qt, info = gptq_quantize_layer(W, H, bits=3, group_size=group_size, symmetric=symmetric, block_size=24,
                                   act_order=act_order, static_groups=static)
    Q, codes, scales, zeros, g_idx = gptq_naive(W, H, bits=3, group_size=group_size, symmetric=symmetric,
                                                act_order=act_order, static_groups=static)
    assert _rel(qt.dequantize(torch.float64), Q) <= 1e-5
    assert torch.equal(qt.codes, codes)
    assert torch.equal(qt.g_idx, g_idx)
    assert torch.allclose(qt.scales.double(), scales, rtol=1e-6)
    assert info["dead_inputs"] == 1


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("block_size", [1, 7, 128])
def test_blocked_equals_naive_bits_and_blocks(bits, block_size):
    W, H, _ = _problem(N=16, K=48, seed=bits)
    qt, _ = gptq_quantize_layer(W, H, bits=bits, group_size=16, block_size=block_size, act_order=True)
    Q, codes, *_ = gptq_naive(W, H, bits=bits, group_size=16, act_order=True)
    assert _rel(qt.dequantize(torch.float64), Q) <= 1e-5
    assert torch.equal(qt.codes, codes)


def test_act_order_permutation_round_trips():
    W, H, _ = _problem(K=64)
    qt, info = gptq_quantize_layer(W, H, bits=4, group_size=16, act_order=True)
    perm = info["perm"]
    assert sorted(perm.tolist()) == list(range(64))
    d = torch.diag(H)[perm]
    assert bool((d[:-1] >= d[1:]).all())  # descending diag(H)
    inv = torch.argsort(perm)
    assert torch.equal(W[:, perm][:, inv], W)  # the permutation and its inverse round-trip exactly
    # groups are formed in sweep order: sweep position j belongs to group j // 16
    assert torch.equal(qt.g_idx[perm].long(), torch.arange(64) // 16)
    # codes come back in the original column order: dequantizing them, column by column, gives the grid value
    # each original column was rounded to (independent check against the naive oracle's original-order output)
    Q, codes, *_ = gptq_naive(W, H, bits=4, group_size=16, act_order=True)
    assert torch.equal(qt.codes, codes)


def test_float32_dequantize_is_exactly_what_gptq_evaluated():
    W, H, X = _problem(dtype=torch.float32)
    qt, info = gptq_quantize_layer(W, H, bits=4, group_size=16)
    W_hat = qt.dequantize()
    assert W_hat.dtype == torch.float32
    assert torch.equal(qt.scales, qt.scales.half().float())  # fp16-exact scales: a checkpoint stores them losslessly
    # the OBS loss Σ e²/2 equals ½·tr(ΔW H_d ΔWᵀ)-like objective only approximately; check the output error instead
    err_gptq = layer_reconstruction_error(W, W_hat, H)
    err_rtn = layer_reconstruction_error(W, quantize_affine(W, 4, 16, symmetric=True).dequantize(), H)
    assert err_gptq < err_rtn


def test_reconstruction_error_matches_direct_formula():
    W, H, X = _problem()
    W_hat = W + 0.01 * torch.randn_like(W)
    direct = float(((X @ (W - W_hat).T) ** 2).sum() / ((X @ W.T) ** 2).sum())
    assert layer_reconstruction_error(W, W_hat, H) == pytest.approx(direct, rel=1e-5)  # computed in float32


def test_hessian_accumulator_matches_closed_form():
    _, _, X = _problem(dtype=torch.float32)
    acc = HessianAccumulator(X.shape[1], dtype=torch.float64)
    for chunk in X.split(70):
        acc.add(chunk)
    assert acc.n == X.shape[0]
    assert torch.allclose(acc.H, 2 * X.double().T @ X.double() / X.shape[0], rtol=1e-10)


@pytest.mark.parametrize("K", [5, 383, 576, 1000, 1536])
def test_hessian_accumulator_block_triangle_is_the_full_symmetric_product(K):
    """The accumulator computes only the upper column blocks of XᵀX; H must still be the whole 2XᵀX/n."""
    g = torch.Generator().manual_seed(K)
    X = torch.randn(300, K, generator=g, dtype=torch.float64)
    acc = HessianAccumulator(K, dtype=torch.float64)
    for chunk in X.split(128):
        acc.add(chunk)
    H = acc.H
    assert torch.equal(H, H.T)
    assert torch.allclose(H, 2 * X.T @ X / 300, rtol=1e-12, atol=1e-12)


def test_hessian_is_symmetric_whatever_the_blas_sums():
    """H is bitwise symmetric by construction, not by luck of a BLAS kernel: the two triangles of a diagonal block
    of XᵀX come from different dot products, whose summation order (SIMD width, MKL's AVX2 vs AVX-512 vs AMX
    kernels) differs between CPUs, so they may differ in the last bit (seen on an AMD EPYC and here under
    MKL_ENABLE_INSTRUCTIONS=AVX2). Simulate such a BLAS by perturbing every accumulated entry by a few ulps:
    H must still equal Hᵀ exactly and keep the upper triangle's values."""
    K = 383
    g = torch.Generator().manual_seed(1)
    X = torch.randn(200, K, generator=g, dtype=torch.float64)
    acc = HessianAccumulator(K, dtype=torch.float64)
    acc.add(X)
    acc.S *= 1 + 4 * torch.finfo(torch.float64).eps * torch.randn(K, K, generator=g, dtype=torch.float64)
    D = acc.S[: acc.edges[1], : acc.edges[1]]  # the first diagonal block
    assert not torch.equal(D, D.T)  # the simulated BLAS is not symmetric
    H = acc.H
    assert torch.equal(H, H.T)
    assert torch.equal(H.triu(), (acc.S * (2.0 / acc.n)).triu())  # the upper triangle is what was summed


def test_damping_retry_is_reported():
    W, H, _ = _problem()
    # an indefinite Hessian that 1 % dampening cannot repair but 10 % can
    H = H - 0.05 * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    H = H - (torch.linalg.eigvalsh(H).min() + 0.03 * torch.diag(H).mean()) * torch.eye(H.shape[0], dtype=H.dtype)
    qt, info = gptq_quantize_layer(W, H, bits=4, group_size=16, damp=0.01)
    assert info["damp_retries"] >= 1 and info["damp"] > 0.01


def test_non_pd_hessian_names_the_layer():
    W, H, _ = _problem()
    with pytest.raises(NumericalError, match="blk.7.q_proj"):
        gptq_quantize_layer(W, -H, bits=4, group_size=16, name="blk.7.q_proj")
    with pytest.raises(NumericalError):
        dampened_inverse_cholesky(-H, name="x")


def test_nan_activations_and_bad_arguments():
    acc = HessianAccumulator(8, name="model.layers.3.mlp.down_proj")
    x = torch.randn(10, 8)
    x[2, 3] = float("nan")
    acc.add(x)
    with pytest.raises(NonFiniteError, match="down_proj"):
        acc.H
    with pytest.raises(TextTooShortError):
        HessianAccumulator(8).H
    W, H, _ = _problem()
    with pytest.raises(BadArgumentError, match="divide"):
        gptq_quantize_layer(W, H, group_size=24)
    with pytest.raises(BadArgumentError):
        gptq_quantize_layer(W, H, bits=9)
    W[0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        gptq_quantize_layer(W, H, group_size=16)


class _Block(torch.nn.Module):
    """A toy decoder block: two Linears sharing an input (like q/k), then one fed by their product."""

    def __init__(self, d=32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.b, self.c = torch.nn.Linear(d, d), torch.nn.Linear(d, d), torch.nn.Linear(d, d)

    def forward(self, h, **kwargs):
        return (h + self.c(torch.tanh(self.a(h)) * self.b(h)),)


def _inputs(n, T, d=32):
    from qlab.walk import BlockInputs

    g = torch.Generator().manual_seed(1)
    return BlockInputs([torch.randn(1, T, d, generator=g) * (1 + torch.arange(d) / 8) for _ in range(n)], {})


@pytest.mark.parametrize("true_sequential", [False, True])
def test_block_quantizer_in_place_and_shared_hessians(true_sequential):
    block = _Block()
    originals = {n: m.weight.detach().clone() for n, m in block.named_children()}
    q = GPTQQuantizer(bits=3, group_size=16, symmetric=True, act_order=False, true_sequential=true_sequential,
                      shrink=0.0, progress=False)  # the settings of the gptq_quantize_layer oracle below
    out = quantize_block(q, block, _inputs(4, 64), "blk")[0].qtensors
    assert set(out) == {"blk.a", "blk.b", "blk.c"}
    for n, qt in out.items():
        assert torch.equal(getattr(block, n.split(".")[1]).weight, qt.dequantize())  # exactly what is evaluated
        st = q.layer_stats[n]
        assert st["gptq"] < st["rtn"]
    # a and b were fed the same tensor: one Hessian, quantized as one stacked matrix = each alone
    W, X = originals["a"], _inputs(4, 64).hidden
    H = 2 * torch.cat([x.reshape(-1, 32) for x in X]).T @ torch.cat([x.reshape(-1, 32) for x in X]) / 256
    qa, _ = gptq_quantize_layer(W, H, bits=3, group_size=16)
    assert torch.equal(qa.codes, out["blk.a"].codes)
    assert q.describe().startswith("GPTQ int3 sym g16")
    # the toolkit's default shrinks every Hessian halfway to its diagonal, as gptq_quantize_layer(shrink=0.5) does
    shrunk = GPTQQuantizer(bits=3, group_size=16, symmetric=True, act_order=False, true_sequential=true_sequential,
                           progress=False)
    assert shrunk.shrink == 0.5
    out = quantize_block(shrunk, _Block(), _inputs(4, 64), "blk")[0].qtensors
    qa, _ = gptq_quantize_layer(W, H, bits=3, group_size=16, shrink=0.5)
    assert torch.equal(qa.codes, out["blk.a"].codes)


def test_block_quantizer_skip_and_too_few_tokens():
    block = _Block()
    q = GPTQQuantizer(bits=4, group_size=16, progress=False)
    out = quantize_block(q, block, _inputs(2, 64), "blk", skip=("c",))[0].qtensors
    assert set(out) == {"blk.a", "blk.b"}
    with pytest.raises(TextTooShortError, match="nsamples"):
        quantize_block(GPTQQuantizer(bits=4, group_size=16, progress=False), _Block(), _inputs(1, 8), "blk")
    with pytest.raises(BadArgumentError):
        quantize_block(q, block, None, "blk")


def test_nan_in_block_inputs_is_a_clear_error():
    inputs = _inputs(2, 64)
    inputs.hidden[1][0, 3, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="blk"):
        quantize_block(GPTQQuantizer(bits=4, group_size=16, progress=False), _Block(), inputs, "blk")


def test_obs_step_matches_constrained_least_squares():
    from qlab.gptq_naive import obs_compensate

    _, H, _ = _problem(K=6)
    w = torch.randn(6, dtype=torch.float64)
    new, dloss = obs_compensate(w, H, 2, 0.5)
    # oracle: minimise ½ δᵀHδ with δ_2 = 0.5 − w_2 fixed  ⇒  H_FF δ_F = −H_F2 δ_2
    F = [0, 1, 3, 4, 5]
    d2 = 0.5 - w[2]
    dF = torch.linalg.solve(H[F][:, F], -H[F, 2] * d2)
    delta = torch.zeros(6, dtype=torch.float64)
    delta[F], delta[2] = dF, d2
    assert torch.allclose(new, w + delta, atol=1e-12)
    assert dloss == pytest.approx(float(0.5 * delta @ H @ delta), rel=1e-9)


def test_column_contributions_sum_to_layer_error():
    from qlab.gptq import column_error_contributions

    W, H, _ = _problem()
    W_hat = quantize_affine(W, 3, 16, symmetric=True).dequantize(torch.float64)
    c = column_error_contributions(W, W_hat, H)
    assert c.shape == (W.shape[1],)
    assert float(c.sum()) == pytest.approx(layer_reconstruction_error(W, W_hat, H), rel=1e-5)


def test_bf16_forward_keeps_float32_hessians_and_weights():
    """a and b read the block's float32 input itself, so under a bf16 forward their Hessians — and codes — equal
    the float32 run's; c reads a bf16 product, so its Hessian moves, a little."""
    runs = {}
    for dtype in ("float32", "bfloat16"):
        block = _Block()
        q = GPTQQuantizer(bits=3, group_size=16, progress=False, forward_dtype=dtype)
        runs[dtype] = (q, quantize_block(q, block, _inputs(4, 64), "blk")[0].qtensors)
        for n, qt in runs[dtype][1].items():
            w = getattr(block, n.split(".")[1]).weight
            assert w.dtype == torch.float32 and torch.equal(w, qt.dequantize())
    (q32, out32), (q16, out16) = runs["float32"], runs["bfloat16"]
    for n in ("blk.a", "blk.b"):
        assert torch.equal(out32[n].codes, out16[n].codes)
        assert q16.layer_stats[n]["gptq"] == pytest.approx(q32.layer_stats[n]["gptq"], rel=1e-6)
    moved = abs(q16.layer_stats["blk.c"]["rtn"] / q32.layer_stats["blk.c"]["rtn"] - 1)  # same W, RTN: H moved
    assert 1e-7 < moved < 1e-2
    assert q16.layer_stats["blk.c"]["gptq"] < q16.layer_stats["blk.c"]["rtn"]
    assert q16.config["forward_dtype"] == "bfloat16" and "bf16 forward" in q16.describe()
    with pytest.raises(BadArgumentError, match="forward_dtype"):
        GPTQQuantizer(forward_dtype="float8")


def test_true_sequential_single_pass_equals_group_by_group_passes():
    """One forward quantizing each group from its first Linear's pre-hook == re-running the block per group
    (forced by a zero memory budget), and the outputs of the walk's pass (in which the single pass quantized)
    == the quantized block run afterwards."""
    runs = {}
    for budget in (4 << 30, 0):
        block = _Block()
        q = GPTQQuantizer(bits=3, group_size=16, true_sequential=True, progress=False, max_pass_bytes=budget)
        result, outputs = quantize_block(q, block, _inputs(4, 64), "blk")
        runs[budget] = (q, result, outputs, block)
    (q1, res1, outputs1, block1), (q0, res0, _, _) = runs[4 << 30], runs[0]
    out1, out0 = res1.qtensors, res0.qtensors
    assert (q1.single_pass_blocks, q0.single_pass_blocks) == (1, 0)
    assert res1.during_pass is not None and res0.during_pass is None
    assert set(out1) == set(out0) == {"blk.a", "blk.b", "blk.c"}
    for n in out1:
        assert torch.equal(out1[n].codes, out0[n].codes), n
        assert q1.layer_stats[n]["gptq"] == pytest.approx(q0.layer_stats[n]["gptq"], rel=1e-5)
    after = _inputs(4, 64).run(block1)  # the quantized block, run on its own
    assert len(outputs1) == 4
    for a, b in zip(after.hidden, outputs1.hidden):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
