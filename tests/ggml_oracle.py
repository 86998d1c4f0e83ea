"""ctypes access to llama.cpp's own ggml library (from llama-cpp-python): the byte-exact oracle for GGUF blocks.

Functions used (ggml.h): ``ggml_quantize_chunk(type, src, dst, start, nrows, n_per_row, imatrix)``,
``ggml_get_type_traits(type)->to_float / from_float_ref``, ``ggml_quantize_init``, ``ggml_row_size``.

``load()`` returns an ``Oracle`` or raises ``OracleUnavailable``. ``require()`` is for tests: with the ``CI``
environment variable set a missing library FAILS the test (the CI set-up builds llama-cpp-python), otherwise
the test is skipped.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

# ggml_type ids (ggml.h enum ggml_type)
GGML_TYPE_IDS = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q8_1": 9,
    "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "Q8_K": 15, "IQ4_NL": 20, "BF16": 30,
}


class OracleUnavailable(RuntimeError):
    """llama-cpp-python's libggml-base could not be found or loaded."""


class _TypeTraits(ctypes.Structure):
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


def lib_dir() -> Path:
    """The folder of llama-cpp-python's shared libraries (found without importing llama_cpp)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise OracleUnavailable("llama-cpp-python is not installed: CMAKE_ARGS=\"-DGGML_CUDA=OFF -DGGML_VULKAN=OFF "
                                "-DGGML_BLAS=OFF\" pip install llama-cpp-python==0.3.36")
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


class Oracle:
    """Thin typed wrapper over libggml-base.so."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        lib = self.lib
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        lib.ggml_quantize_init.restype = None
        lib.ggml_quantize_init.argtypes = [ctypes.c_int]
        lib.ggml_row_size.restype = ctypes.c_size_t
        lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
        lib.ggml_get_type_traits.argtypes = [ctypes.c_int]

    @staticmethod
    def type_id(qtype: str) -> int:
        return GGML_TYPE_IDS[qtype.upper()]

    def traits(self, qtype: str) -> _TypeTraits:
        return self.lib.ggml_get_type_traits(self.type_id(qtype)).contents

    def row_size(self, qtype: str, n_per_row: int) -> int:
        return int(self.lib.ggml_row_size(self.type_id(qtype), n_per_row))

    def quantize(self, x: np.ndarray, qtype: str, imatrix: np.ndarray | None = None) -> np.ndarray:
        """ggml_quantize_chunk over all rows of x [rows, cols] (float32) -> raw block bytes (uint8)."""
        x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
        nrows, n_per_row = x.shape
        t = self.type_id(qtype)
        out = np.zeros(nrows * self.row_size(qtype, n_per_row), dtype=np.uint8)
        imp = None
        if imatrix is not None:
            imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
            assert imatrix.shape == (n_per_row,)
            imp = imatrix.ctypes.data
        self.lib.ggml_quantize_init(t)
        n = self.lib.ggml_quantize_chunk(t, x.ctypes.data, out.ctypes.data, 0, nrows, n_per_row, imp)
        assert n == out.size, (n, out.size)
        return out

    def from_float_ref(self, x: np.ndarray, qtype: str) -> np.ndarray:
        """quantize_row_<type>_ref over all elements (Q8_K, which ggml_quantize_chunk does not take, included)."""
        x = np.ascontiguousarray(x, dtype=np.float32).ravel()
        out = np.zeros(self.row_size(qtype, x.size), dtype=np.uint8)
        fn = getattr(self.lib, f"quantize_row_{qtype.lower()[:-1] + qtype[-1]}_ref")
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        fn(x.ctypes.data, out.ctypes.data, x.size)
        return out

    def dequantize(self, data: np.ndarray, qtype: str, n: int) -> np.ndarray:
        """The type traits' to_float over n elements of raw block bytes -> float32 [n]."""
        data = np.ascontiguousarray(data, dtype=np.uint8)
        assert data.size == self.row_size(qtype, n)
        out = np.empty(n, dtype=np.float32)
        ptr = self.traits(qtype).to_float
        if ptr:
            _TO_FLOAT(ptr)(data.ctypes.data, out.ctypes.data, n)
        else:  # Q8_K has no traits entry in ggml-base; its exported dequantize_row_q8_K does the same job
            fn = getattr(self.lib, f"dequantize_row_{qtype.lower()[:-1] + qtype[-1]}")
            fn.restype = None
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
            fn(data.ctypes.data, out.ctypes.data, n)
        return out


@lru_cache(maxsize=1)
def load() -> Oracle:
    """Load libggml-base from llama-cpp-python's lib folder (raises OracleUnavailable)."""
    d = lib_dir()
    for name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
        if (d / name).exists():
            try:
                return Oracle(d / name)
            except OSError as e:  # pragma: no cover - broken install
                raise OracleUnavailable(f"cannot load {d / name}: {e}") from e
    raise OracleUnavailable(f"libggml-base not found in {d}")


def require_oracle(loader, what: str = "ggml oracle"):
    """For tests: loader()'s oracle, or pytest.skip — but a hard failure when the CI environment variable is set."""
    import pytest

    try:
        return loader()
    except OracleUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"{what} required in CI but unavailable: {e}")
        pytest.skip(f"{what} unavailable: {e}")


def require() -> Oracle:
    """The ggml-base oracle for tests (see `require_oracle`)."""
    return require_oracle(load)
