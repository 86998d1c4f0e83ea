"""qlab's C CPU kernels against ggml's own CPU dot products (libggml-cpu from llama-cpp-python).

Oracle: ``ggml_get_type_traits_cpu(type)->vec_dot`` and ``->from_float`` (tests/ggml_cpu_oracle.py); weight
blocks come from ggml's own quantizer (tests/ggml_oracle.py). On x86-64 with AVX2 ggml sums in the order
qlab's kernels use (8 int32 lanes per block, fma per block, the same horizontal sum), so results must be
EQUAL bit for bit; elsewhere (ARM ggml builds sum differently) the bound is the float summation bound
(n_blocks + 5) * 2^-23 * sum |w_i x_i|. Every SIMD path must equal the scalar path bit for bit everywhere.
With CI set, a missing oracle fails the tests instead of skipping them.
"""

from __future__ import annotations

import platform

import ggml_cpu_oracle  # noqa: E402  (tests/ is on sys.path)
import ggml_oracle  # noqa: E402
import numpy as np
import pytest
import qlab.kernels.cpu as K
import torch

from qlab.errors import BadArgumentError

QTYPES = ["Q4_0", "Q8_0", "Q4_K", "Q6_K"]
PATHS = [p for p in K.available_paths() if p != "torch"]
EXACT_ORDER = platform.machine() in ("x86_64", "AMD64") and "avx2" in PATHS


@pytest.fixture(scope="module")
def cpu():
    return ggml_cpu_oracle.require()


@pytest.fixture(scope="module")
def base():
    return ggml_oracle.require()


@pytest.fixture(scope="module", autouse=True)
def _kernels():
    if not K.has_c_kernels():
        pytest.fail("qlab's C kernels did not build (is a C compiler installed?)")


def _act(qt: str) -> str:
    return K.QTYPES[qt].vec_dot_type


def _weights(base, qt: str, rows: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, k)).astype(np.float32) * rng.uniform(0.01, 3, (rows, 1)).astype(np.float32)
    w[:, rng.integers(0, k, 3)] *= 20  # outlier columns
    return base.quantize(w, qt).reshape(rows, -1)


def _assert_same(a: float, b: float, bound: float = 0.0) -> None:
    if EXACT_ORDER:
        assert np.float32(a).tobytes() == np.float32(b).tobytes(), (a, b)
    else:
        assert abs(a - b) <= bound, (a, b, bound)


def _sum_abs(cpu, base, qt, xb, yb, n) -> float:
    w = base.dequantize(xb, qt, n).astype(np.float64)
    y = base.dequantize(yb, _act(qt), n).astype(np.float64)
    return float(np.abs(w * y).sum())


# ---------------------------------------------------------------- activation quantizers


@pytest.mark.parametrize("act", ["Q8_0", "Q8_K"])
@pytest.mark.parametrize("seed", range(4))
def test_activation_quantizers_byte_exact(cpu, act, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(4096) * 10.0 ** rng.uniform(-6, 3)).astype(np.float32)
    x[:256] = 0.0  # an all-zero block
    x[300:310] = np.float32(1e-30)  # subnormal-sized scales
    x[512:544] = np.round(x[512:544] * 4) / 4  # many exact halves after scaling
    want = cpu.from_float(x, act)
    for path in ("scalar", None):
        assert np.array_equal(K.quantize_activations(x, act, path=path), want), (act, path)


# ---------------------------------------------------------------- dot products against ggml


@pytest.mark.parametrize("qt", QTYPES)
@pytest.mark.parametrize("k", [256, 768, 4096])
def test_vec_dot_equals_ggml_on_quantized_rows(cpu, base, qt, k):
    W = _weights(base, qt, 6, k, seed=k)
    rng = np.random.default_rng(1)
    for r in range(W.shape[0]):
        x = rng.standard_normal(k).astype(np.float32) * np.float32(rng.uniform(0.1, 5))
        y = cpu.from_float(x, _act(qt))
        want = cpu.vec_dot(qt, W[r], y, k)
        bound = (k // 32 + 5) * 2.0**-23 * _sum_abs(cpu, base, qt, W[r], y, k)
        for path in PATHS:
            _assert_same(K.vec_dot(qt, W[r], y, path=path), want, bound)


def _random_blocks(qt: str, nblocks: int, rng) -> np.ndarray:
    """Arbitrary block bytes (not from a quantizer) with finite fp16 scales; Q8_0 codes kept in [-127, 127]."""
    ts = K.QTYPES[qt].type_size
    b = rng.integers(0, 256, (nblocks, ts), dtype=np.uint8)
    scale = lambda: np.array([rng.uniform(-2, 2)], np.float16).view(np.uint8)  # noqa: E731
    for i in range(nblocks):
        if qt in ("Q4_0", "Q8_0"):
            b[i, 0:2] = scale()
        if qt == "Q8_0":
            b[i, 2:] = rng.integers(-127, 128, 32).astype(np.int8).view(np.uint8)
        if qt == "Q4_K":
            b[i, 0:2], b[i, 2:4] = scale(), scale()
        if qt == "Q6_K":
            b[i, 208:210] = scale()
    return b.reshape(-1)


@pytest.mark.parametrize("qt", QTYPES)
@pytest.mark.parametrize("seed", range(3))
def test_vec_dot_equals_ggml_on_random_blocks(cpu, base, qt, seed):
    rng = np.random.default_rng(100 + seed)
    nblocks = 3 if K.QTYPES[qt].block_size == 256 else 37  # odd counts: tails of the two-at-a-time loops
    n = nblocks * K.QTYPES[qt].block_size
    xb = _random_blocks(qt, nblocks, rng)
    y = cpu.from_float(rng.standard_normal(n).astype(np.float32), _act(qt))
    want = cpu.vec_dot(qt, xb, y, n)
    bound = (n // 32 + 5) * 2.0**-23 * _sum_abs(cpu, base, qt, xb, y, n)
    for path in PATHS:
        _assert_same(K.vec_dot(qt, xb, y, path=path), want, bound)


@pytest.fixture(scope="module")
def real_rows():
    """Real weights: blk.0.ffn_down of the embedded model (its Q4_1 blocks dequantized), [576, 1536]."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from qlab.model import embedded_gguf_path

    r = GGUFReader(embedded_gguf_path())
    t = next(t for t in r.tensors if t.name == "blk.0.ffn_down.weight")
    emb = next(t for t in r.tensors if t.name == "token_embd.weight")
    return dequantize(t.data, t.tensor_type).astype(np.float32), np.asarray(emb.data[:8])


@pytest.mark.parametrize("qt", QTYPES)
def test_vec_dot_equals_ggml_on_real_blocks(cpu, base, real_rows, qt):
    W, _ = real_rows
    rows = W[:8]
    blocks = base.quantize(rows, qt).reshape(8, -1)
    x = W[100:101].ravel() * 10  # a real-scale activation vector
    y = cpu.from_float(x, _act(qt))
    for r in range(8):
        want = cpu.vec_dot(qt, blocks[r], y, W.shape[1])
        bound = (W.shape[1] // 32 + 5) * 2.0**-23 * _sum_abs(cpu, base, qt, blocks[r], y, W.shape[1])
        for path in PATHS:
            _assert_same(K.vec_dot(qt, blocks[r], y, path=path), want, bound)


def test_vec_dot_equals_ggml_on_the_files_own_q8_0_embedding_rows(cpu, real_rows):
    _, emb = real_rows  # token_embd.weight: Q8_0 blocks exactly as stored in the GGUF file
    y = cpu.from_float(np.linspace(-3, 3, 576, dtype=np.float32), "Q8_0")
    for r in range(emb.shape[0]):
        want = cpu.vec_dot("Q8_0", emb[r], y, 576)
        for path in PATHS:
            _assert_same(K.vec_dot("Q8_0", emb[r], y, path=path), want, 1e-3)


# ---------------------------------------------------------------- GEMV / GEMM


@pytest.mark.parametrize("qt", QTYPES)
def test_gemm_equals_rowwise_ggml_and_paths_agree(cpu, base, qt):
    k, n, m = 512, 11, 3  # n = 11: two groups of four rows + a tail of three
    W = _weights(base, qt, n, k, seed=7)
    X = np.random.default_rng(2).standard_normal((m, k)).astype(np.float32)
    want = np.array([[cpu.vec_dot(qt, W[j], cpu.from_float(X[i], _act(qt)), k) for j in range(n)] for i in range(m)],
                    dtype=np.float32)
    ref = K.gemm(qt, W, X, n_threads=1, path="scalar")
    if EXACT_ORDER:
        assert np.array_equal(ref, want)
    for path in PATHS:
        for threads in (1, 2, 3):
            got = K.gemm(qt, W, X, n_threads=threads, path=path)
            assert np.array_equal(got, ref), (path, threads)  # every path == scalar, bit for bit
    Xt = torch.from_numpy(X)
    assert torch.equal(K.gemm(qt, torch.from_numpy(W.reshape(-1)), Xt), torch.from_numpy(ref))


@pytest.mark.parametrize("qt", QTYPES)
@pytest.mark.parametrize("path", ["avx2", "avx512", "neon"])
def test_simd_path_equals_scalar_bit_for_bit(base, qt, path):
    """Each SIMD path against the scalar one, bit for bit (GEMM over 1-3 threads, and single dot products on
    arbitrary blocks with odd block counts). The loops over PATHS above cover only the paths this CPU has, so
    on a CPU without an ISA they pass without running it: here each path is its own test and is reported as
    skipped, with the reason, where it cannot run."""
    if path not in PATHS:
        pytest.skip(f"the {path} path cannot run on this CPU ({platform.machine()}; paths here: {PATHS})")
    k, n, m = 512, 11, 3
    W = _weights(base, qt, n, k, seed=17)
    X = np.random.default_rng(5).standard_normal((m, k)).astype(np.float32)
    ref = K.gemm(qt, W, X, n_threads=1, path="scalar")
    for threads in (1, 2, 3):
        assert np.array_equal(K.gemm(qt, W, X, n_threads=threads, path=path), ref), threads
    rng = np.random.default_rng(6)
    nblocks = 3 if K.QTYPES[qt].block_size == 256 else 37
    nn = nblocks * K.QTYPES[qt].block_size
    xb = _random_blocks(qt, nblocks, rng)
    y = K.quantize_activations(rng.standard_normal(nn).astype(np.float32), _act(qt), path="scalar")
    a, b = K.vec_dot(qt, xb, y, path=path), K.vec_dot(qt, xb, y, path="scalar")
    assert np.float32(a).tobytes() == np.float32(b).tobytes(), (a, b)


@pytest.mark.parametrize("qt", QTYPES)
def test_gemm_within_the_activation_rounding_bound_of_float(base, qt):
    """|y - W_hat x| <= sum_i |w_i| d_x(i)/2 (+ float slack): the only approximation is x -> Q8(x)."""
    k, n = 512, 8
    W = _weights(base, qt, n, k, seed=3)
    W_hat = base.dequantize(W.reshape(-1), qt, n * k).reshape(n, k).astype(np.float64)
    x = np.random.default_rng(4).standard_normal(k).astype(np.float32)
    got = K.gemm(qt, W, x[None])[0].astype(np.float64)
    bs = 32 if K.QTYPES[qt].vec_dot_type == "Q8_0" else 256
    step = np.repeat(np.abs(x).reshape(-1, bs).max(1) / 127.0, bs)  # d_x of each element's block
    bound = (np.abs(W_hat) * step / 2).sum(1) * 1.01 + 1e-4 * np.abs(W_hat @ x) + 1e-6
    assert np.all(np.abs(got - W_hat @ x) <= bound)


def test_forced_path_by_environment(monkeypatch, base):
    W = _weights(base, "Q4_0", 4, 64, seed=1)
    x = np.ones((1, 64), np.float32)
    monkeypatch.setenv("QLAB_CPU_PATH", "scalar")
    a = K.gemm("Q4_0", W, x)
    monkeypatch.setenv("QLAB_CPU_PATH", "nonsense")
    with pytest.raises(BadArgumentError, match="unknown CPU kernel path"):
        K.gemm("Q4_0", W, x)
    monkeypatch.delenv("QLAB_CPU_PATH")
    assert np.array_equal(a, K.gemm("Q4_0", W, x))


def test_torch_fallback_agrees_with_c(base):
    from qlab.kernels.cpu.fallback import gemm_torch

    for qt in QTYPES:
        W = _weights(base, qt, 5, 512, seed=9)
        X = torch.randn(2, 512)
        c = K.gemm(qt, W, X)
        t = gemm_torch(qt, W.reshape(-1), X, 5)
        torch.testing.assert_close(t, c, rtol=1e-4, atol=1e-3 * float(c.abs().max()))


# ---------------------------------------------------------------- bad input: clear errors, never a crash


def test_bad_buffers_raise_qlab_errors(base):
    W = _weights(base, "Q4_K", 2, 512, seed=0).reshape(-1)
    y = K.quantize_activations(np.ones(512, np.float32), "Q8_K")
    with pytest.raises(BadArgumentError, match="whole number of 144-byte blocks"):
        K.vec_dot("Q4_K", W[:-1], y)  # short buffer
    with pytest.raises(BadArgumentError, match="block counts differ"):
        K.vec_dot("Q4_K", W[:144], y)  # 1 block vs 2
    with pytest.raises(BadArgumentError, match="292-byte blocks"):
        K.vec_dot("Q4_K", W[:288], y[:-3])
    with pytest.raises(BadArgumentError, match="uint8"):
        K.vec_dot("Q4_K", W.astype(np.int16), y)
    with pytest.raises(BadArgumentError, match="support"):
        K.vec_dot("Q5_K", W, y)
    with pytest.raises(BadArgumentError, match="multiple of 256"):
        K.gemm("Q4_K", W, np.ones((1, 500), np.float32))
    with pytest.raises(BadArgumentError, match="not a whole number of Q4_K rows"):
        K.gemm("Q4_K", W[:-144], np.ones((1, 512), np.float32))
    with pytest.raises(BadArgumentError, match="2-D"):
        K.gemm("Q4_K", W, np.ones(512, np.float32))
    with pytest.raises(BadArgumentError, match="n_threads"):
        K.gemm("Q4_K", W, np.ones((1, 512), np.float32), n_threads=0)
    with pytest.raises(BadArgumentError, match="multiple of 32"):
        K.quantize_activations(np.ones(33, np.float32), "Q8_0")


def test_misaligned_buffers_give_the_same_result(base):
    W = _weights(base, "Q6_K", 3, 512, seed=5).reshape(-1)
    x = np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32)
    raw = np.zeros(W.size + 1, np.uint8)
    raw[1:] = W
    shifted = raw[1:]  # address odd: copied to an aligned buffer before the call
    assert shifted.ctypes.data % 2 == 1
    assert np.array_equal(K.gemm("Q6_K", shifted, x), K.gemm("Q6_K", W, x))


# ---------------------------------------------------------------- the step-by-step numpy/exact reference


@pytest.mark.parametrize("seed", range(3))
def test_exact_reference_equals_kernel_and_ggml(cpu, base, seed):
    from qlab.kernels.cpu.reference import dot_q4_0_q8_0

    rng = np.random.default_rng(seed)
    W = base.quantize(rng.standard_normal((1, 256)).astype(np.float32), "Q4_0")
    y = cpu.from_float(rng.standard_normal(256).astype(np.float32), "Q8_0")
    r = dot_q4_0_q8_0(W, y)
    w_hat = base.dequantize(W, "Q4_0", 256).reshape(-1, 32)
    assert np.array_equal(r["codes_w"] * r["d_w"][:, None], w_hat)  # codes and scales decoded right
    assert r["result"].tobytes() == np.float32(K.vec_dot("Q4_0", W, y, path="scalar")).tobytes()
    if EXACT_ORDER:
        assert r["result"].tobytes() == np.float32(cpu.vec_dot("Q4_0", W, y, 256)).tobytes()


def test_q8_roundtrip_of_the_torch_path_matches_ggml(cpu, base):
    from qlab.kernels.cpu.fallback import q8_roundtrip

    x = np.random.default_rng(3).standard_normal((2, 512)).astype(np.float32) * 3
    for act in ("Q8_0", "Q8_K"):
        want = np.stack([base.dequantize(cpu.from_float(r, act), act, 512) for r in x])
        assert np.array_equal(q8_roundtrip(torch.from_numpy(x), act).numpy(), want), act


def test_roofline_probes_run():
    from qlab.lessons import cpu_roofline as R

    (n, bw), = R.read_bandwidth([1 << 16], reps=3)
    assert n == 1 << 16 and bw > 0
    assert R.gemv_intensity("Q4_0") == pytest.approx(2 * 32 / 18)
    assert R.bytes_per_weight("F32") == 4 and R.bytes_per_weight("Q6_K") == pytest.approx(210 / 256)
    peaks = R.compute_peaks(rounds=1000, reps=1)
    assert all(v > 0 for v in peaks.values())
    s = R.gemv_speed("Q4_0", 256, 64, reps=2)
    assert s["us"] > 0 and s["GBps"] > 0
    assert R.bytes_per_weight("F16") == 2 and R.gemv_intensity("F16") == 1.0
    for q in ("F32", "F16", "BF16"):  # torch's linear in that dtype; GB/s counts that dtype's bytes
        s = R.gemv_speed(q, 256, 64, reps=2)
        assert s["us"] > 0 and s["GBps"] == pytest.approx(256 * 64 * R.bytes_per_weight(q) / s["us"] / 1e3)


def test_without_a_compiler_the_torch_path_runs_and_warns_once(tmp_path):
    import subprocess
    import sys

    code = (
        "import warnings, numpy as np\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    import qlab.kernels.cpu as K\n"
        "    W = K.quantize_weights(np.ones((4, 64), np.float32), 'Q8_0')\n"
        "    a = K.gemm('Q8_0', W, np.ones((1, 64), np.float32))\n"
        "    b = K.gemm('Q8_0', W, np.ones((1, 64), np.float32))\n"
        "print(K.available_paths(), float(a[0, 0]), len([x for x in w if 'torch' in str(x.message)]))\n"
    )
    env = {**__import__("os").environ, "CC": "/nonexistent/cc", "PATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    paths, value, n_warn = out.stdout.split()
    d = float(np.float16(np.float32(1) / np.float32(127)))  # the fp16 scale of a block of ones
    assert paths == "['torch']" and n_warn == "1", out.stdout
    assert abs(float(value) - 64 * (d * 127) ** 2) < 1e-4  # 64 products of (d * 127) * (d * 127)


def test_portable_scalar_build_gives_the_same_bits(base, monkeypatch):
    """The library compiled with -DQLAB_NO_SIMD (no intrinsics at all) equals the SIMD build, bit for bit."""
    import ctypes

    monkeypatch.delenv("QLAB_CPU_PATH", raising=False)  # the perturbed CI pass forces a path the scalar build lacks

    from qlab.kernels.cpu.build import build

    lib = ctypes.CDLL(str(build(extra_flags=("-DQLAB_NO_SIMD",))))
    lib.qlab_gemm.restype = ctypes.c_int
    lib.qlab_gemm.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                              ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
    lib.qlab_cpu_features.restype = ctypes.c_int
    assert lib.qlab_cpu_features() == 2  # the scalar path only
    X = np.random.default_rng(5).standard_normal((2, 512)).astype(np.float32)
    for qt in QTYPES:
        W = _weights(base, qt, 5, 512, seed=11)
        Y = np.empty((2, 5), np.float32)
        assert lib.qlab_gemm(K.QTYPES[qt].type_id, 0, W.ctypes.data, 5, 512, X.ctypes.data, 2, Y.ctypes.data, 2) == 0
        assert np.array_equal(Y, K.gemm(qt, W, X)), qt


@pytest.mark.parametrize("qt", QTYPES)
def test_cpython_fast_route_equals_the_ctypes_route(monkeypatch, base, qt):
    """gemm through the qlab_pyfast module (buffers, METH_FASTCALL) == gemm through ctypes, numpy and torch X."""
    from qlab.kernels.cpu.build import python_include

    if python_include() is not None:
        assert K._fast() is not None  # the headers are here: the fast route must have been built
    W = _weights(base, qt, 9, 512, seed=13)
    X = np.random.default_rng(8).standard_normal((2, 512)).astype(np.float32)
    fast = [K.gemm(qt, W, X), K.gemm(qt, torch.from_numpy(W), torch.from_numpy(X)).numpy()]
    monkeypatch.setattr(K, "_fast", lambda: None)
    slow = [K.gemm(qt, W, X), K.gemm(qt, torch.from_numpy(W), torch.from_numpy(X)).numpy()]
    for a, b in zip(fast, slow):
        assert np.array_equal(a, b)


def test_neon_path_cross_compiles():
    """Where an aarch64 cross compiler is installed, the NEON path compiles and links without warnings."""
    import shutil
    import subprocess

    from qlab.kernels.cpu.build import FLAGS, source_dir

    cc = shutil.which("aarch64-linux-gnu-gcc")
    if cc is None:
        pytest.skip("no aarch64-linux-gnu-gcc on PATH")
    out = subprocess.run([cc, *FLAGS, "-Wall", "-Werror", str(source_dir() / "qlab_cpu.c"), "-o", "/dev/null", "-lm"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def test_thread_pool_under_concurrent_callers_and_fork(tmp_path):
    """The persistent worker pool: concurrent callers (GIL released) and a forked child get the serial result."""
    import subprocess
    import sys

    script = tmp_path / "pool.py"
    script.write_text(
        "import os, sys, numpy as np\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "import qlab.kernels.cpu as K\n"
        "rng = np.random.default_rng(0)\n"
        "W = K.quantize_weights(rng.standard_normal((37, 256)).astype(np.float32), 'Q4_0')\n"
        "X = rng.standard_normal((3, 256)).astype(np.float32)\n"
        "ref = K.gemm('Q4_0', W, X, n_threads=1)\n"
        "with ThreadPoolExecutor(4) as ex:\n"
        "    outs = list(ex.map(lambda i: K.gemm('Q4_0', W, X, n_threads=2 + i % 3), range(200)))\n"
        "assert all(np.array_equal(o, ref) for o in outs)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if np.array_equal(K.gemm('Q4_0', W, X, n_threads=3), ref) else 1)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "assert os.waitstatus_to_exitcode(status) == 0\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


# ---------------------------------------------------------------- the C kernels against the GGUF type registry


def test_c_type_enum_matches_registry():
    """The C sources' type ids (enum { T_Q4_0 = 2, ... } in qlab_blocks.h) are the registry's (and gguf-py's) and
    cover every type the Python front sends to C: the kernels' weight types and their activation types."""
    import re

    import gguf as gguf_py
    from qlab.kernels.cpu.build import source_dir

    from qlab.gguf.types import TYPES

    text = (source_dir() / "qlab_blocks.h").read_text()
    enum = {m.group(1): int(m.group(2)) for m in re.finditer(r"\bT_(\w+)\s*=\s*(\d+)", text)}
    assert enum, "no enum of T_<type> ids found in qlab_blocks.h"
    for name, tid in enum.items():
        assert TYPES[name].type_id == tid == gguf_py.GGMLQuantizationType[name].value, name
    kernel = {name for name, t in TYPES.items() if t.c_kernel}
    assert kernel == set(K.QTYPES) == {"Q4_0", "Q8_0", "Q4_K", "Q6_K"}
    assert kernel | set(K.ACT_TYPES) <= set(enum)


def test_c_library_types_match_registry():
    """The built library itself (qlab_type_info) multiplies exactly the registry's c_kernel types, with the
    registry's block geometry."""
    from qlab.gguf.types import TYPES

    want = {t.type_id: (t.block_size, t.type_size) for t in TYPES.values() if t.c_kernel}
    assert K.c_type_info() == want
