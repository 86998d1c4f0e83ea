"""ctypes access to ggml's own CPU dot products (libggml-cpu.so from the llama-cpp-python build).

``ggml_get_type_traits_cpu(type)`` gives ``from_float`` (the activation quantizer ggml's matmul uses, e.g.
quantize_row_q8_0 with its AVX2 rounding) and ``vec_dot`` (e.g. ggml_vec_dot_q4_0_q8_0). ``ggml_cpu_init()``
is called first (it fills ggml's fp16 tables). ``load()`` returns a ``CpuOracle`` or raises
``OracleUnavailable``; ``require()`` skips a test without it, but FAILS it when the ``CI`` variable is set.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

import numpy as np
from ggml_oracle import GGML_TYPE_IDS, OracleUnavailable, lib_dir, require_oracle  # tests/ is on sys.path

VEC_DOT = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.c_void_p,
                           ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
FROM_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


class _TraitsCpu(ctypes.Structure):
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p), ("vec_dot_type", ctypes.c_int),
                ("nrows", ctypes.c_int64)]


ACT_SIZES = {"Q8_0": (32, 34), "Q8_K": (256, 292)}
WEIGHT_ACT = {"Q4_0": "Q8_0", "Q8_0": "Q8_0", "Q4_K": "Q8_K", "Q6_K": "Q8_K"}


class CpuOracle:
    """ggml's CPU type traits: from_float and vec_dot function pointers, callable from Python."""

    def __init__(self, path):
        self.base = ctypes.CDLL(str(path.parent / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
        self.lib = ctypes.CDLL(str(path))
        self.lib.ggml_cpu_init.restype = None
        self.lib.ggml_cpu_init.argtypes = []
        self.lib.ggml_cpu_init()
        self.lib.ggml_get_type_traits_cpu.restype = ctypes.POINTER(_TraitsCpu)
        self.lib.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]

    def traits(self, qtype: str) -> _TraitsCpu:
        return self.lib.ggml_get_type_traits_cpu(GGML_TYPE_IDS[qtype.upper()]).contents

    def pointers(self, qtype: str) -> tuple[int, int]:
        """(vec_dot of the weight type, from_float of its activation type) as raw addresses."""
        t = self.traits(qtype)
        act = WEIGHT_ACT[qtype.upper()]
        assert t.vec_dot_type == GGML_TYPE_IDS[act], (qtype, t.vec_dot_type)
        return t.vec_dot, self.traits(act).from_float

    def from_float(self, x: np.ndarray, act_type: str) -> np.ndarray:
        """ggml-cpu's activation quantizer (Q8_0 or Q8_K) over a float32 vector -> block bytes."""
        x = np.ascontiguousarray(x, dtype=np.float32).ravel()
        bs, ts = ACT_SIZES[act_type]
        out = np.zeros(x.size // bs * ts, dtype=np.uint8)
        FROM_FLOAT(self.traits(act_type).from_float)(x.ctypes.data, out.ctypes.data, x.size)
        return out

    def vec_dot(self, qtype: str, x_blocks: np.ndarray, y_blocks: np.ndarray, n: int) -> float:
        """ggml's vec_dot of n weights (qtype blocks) with n activations (Q8_0 / Q8_K blocks)."""
        x = np.ascontiguousarray(x_blocks, dtype=np.uint8)
        y = np.ascontiguousarray(y_blocks, dtype=np.uint8)
        s = ctypes.c_float(0.0)
        VEC_DOT(self.traits(qtype).vec_dot)(n, ctypes.byref(s), 0, x.ctypes.data, 0, y.ctypes.data, 0, 1)
        return float(s.value)


@lru_cache(maxsize=1)
def load() -> CpuOracle:
    d = lib_dir()
    p = d / "libggml-cpu.so"
    if not p.exists():
        raise OracleUnavailable(f"libggml-cpu.so not found in {d}")
    try:
        return CpuOracle(p)
    except OSError as e:  # pragma: no cover - broken install
        raise OracleUnavailable(f"cannot load {p}: {e}") from e


def require() -> CpuOracle:
    """The ggml-cpu oracle for tests (see `ggml_oracle.require_oracle`)."""
    return require_oracle(load, "ggml CPU oracle")
