"""qlab.kernels.cpu: SIMD C dot products of GGUF blocks (Q4_0, Q8_0, Q4_K, Q6_K) with Q8 activations, GEMV/GEMM.

    y = gemm("Q4_0", W_blocks, X, n_threads=2)     # X float32 [M, K] -> Y float32 [M, N]

As in ggml, activations are quantized on the fly (Q8_0 for Q4_0/Q8_0 weights, Q8_K for the k-quants), the
integer products are exact, and each block's integer sum is scaled by d_w * d_x. Paths: "scalar", "avx2",
"avx512", "neon", chosen by cpuid unless forced (argument ``path=`` or env ``QLAB_CPU_PATH``). All paths
give the same float result bit for bit (one summation order, the scalar path's, which is also ggml's AVX2 one).
Without a C compiler a vectorised torch path (dequantize, then float matmul) runs instead and says so once.

The types, their ggml ids (the ``t`` argument of the C functions), block geometry and activation types come from
the GGUF type registry (qlab.gguf.types): ``QTYPES`` holds its entries whose ``c_kernel`` is set.
"""

from __future__ import annotations

import ctypes
import os
import warnings
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from qlab.errors import BadArgumentError, NonFiniteError
from qlab.gguf import quantize
from qlab.gguf.types import TYPES, GGUFType

from .build import BuildError, build, build_pyext
from .fallback import gemm_torch, vec_dot_torch

QTYPES: dict[str, GGUFType] = {name: t for name, t in TYPES.items() if t.c_kernel}  # the kernels' weight types
ACT_TYPES: dict[str, GGUFType] = {t.vec_dot_type: TYPES[t.vec_dot_type] for t in QTYPES.values()}  # Q8_0, Q8_K
PATHS = {"auto": 0, "scalar": 1, "avx2": 2, "avx512": 3, "neon": 4}
_ERRORS = {-1: "bad arguments", -2: "SIMD path not available on this CPU", -3: "out of memory",
           -4: "QLAB_CPU_PATH names no kernel path"}
E_PATH, E_ENVPATH, E_ALIGN = -2, -4, -5


@lru_cache(maxsize=1)
def _load() -> ctypes.CDLL | None:
    if os.environ.get("QLAB_CPU_NO_C"):
        warnings.warn("QLAB_CPU_NO_C is set: qlab's CPU kernels run the (slow) torch path", stacklevel=3)
        return None
    try:
        lib = ctypes.CDLL(str(build()))
    except (BuildError, OSError) as e:
        warnings.warn(f"qlab's C CPU kernels are unavailable ({e}); using the vectorised torch path", stacklevel=3)
        return None
    i64, vp, c_int, fp = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)
    lib.qlab_cpu_features.restype = c_int
    lib.qlab_cpu_features.argtypes = []
    for name in ("qlab_quantize_q8_0", "qlab_quantize_q8_0_scalar", "qlab_quantize_q8_K", "qlab_quantize_w_q4_0",
                 "qlab_quantize_w_q8_0"):
        getattr(lib, name).restype = None
        getattr(lib, name).argtypes = [vp, vp, i64]
    lib.qlab_type_info.restype = c_int
    lib.qlab_type_info.argtypes = [c_int, ctypes.POINTER(i64), ctypes.POINTER(i64)]
    lib.qlab_vec_dot.restype = c_int
    lib.qlab_vec_dot.argtypes = [c_int, c_int, i64, vp, vp, fp]
    lib.qlab_gemm.restype = c_int
    lib.qlab_gemm.argtypes = [c_int, c_int, vp, i64, i64, vp, i64, vp, c_int]
    lib.qlab_gemm_foreign.restype = c_int
    lib.qlab_gemm_foreign.argtypes = [vp, vp, i64, i64, vp, i64, i64, vp, i64, vp, c_int]
    lib.qlab_read_sum.restype = ctypes.c_uint64
    lib.qlab_read_sum.argtypes = [vp, i64]
    lib.qlab_peak_probe.restype = ctypes.c_double
    lib.qlab_peak_probe.argtypes = [c_int, i64]
    return lib


@lru_cache(maxsize=1)
def _fast() -> Any:
    """The CPython module qlab_pyfast (gemm without ctypes' per-call cost), or None (then ctypes is used)."""
    if _load() is None or os.environ.get("QLAB_CPU_NO_PYEXT"):
        return None
    import importlib.util

    try:
        spec = importlib.util.spec_from_file_location("qlab_pyfast", build_pyext())
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    except Exception:  # noqa: BLE001 - no Python headers, a failed build: the ctypes route still works
        return None


def library() -> ctypes.CDLL | None:
    """The compiled kernel library (built on first use), or None when no compiler is available."""
    return _load()


def has_c_kernels() -> bool:
    return _load() is not None


def c_type_info() -> dict[int, tuple[int, int]]:
    """What the compiled kernels multiply, asked from the library: {ggml type id: (weights, bytes) per block}
    (empty without the C kernels). It equals the registry's c_kernel types (tests/test_cpu_kernels.py)."""
    lib = _load()
    if lib is None:
        return {}
    out, bs, ts = {}, ctypes.c_int64(), ctypes.c_int64()
    for tid in range(256):
        if lib.qlab_type_info(tid, ctypes.byref(bs), ctypes.byref(ts)) == 0:
            out[tid] = (bs.value, ts.value)
    return out


@lru_cache(maxsize=1)
def _features() -> int:
    lib = _load()
    return 0 if lib is None else int(lib.qlab_cpu_features())


def available_paths() -> list[str]:
    """The paths this CPU can run, best last (e.g. ['scalar', 'avx2', 'avx512']); ['torch'] without C."""
    if _load() is None:
        return ["torch"]
    f = _features()
    return [name for name, v in PATHS.items() if v and f & (1 << v)]


def best_path() -> str:
    return available_paths()[-1]


@lru_cache(maxsize=16)
def _path_id_of(path: str) -> int:
    if path not in PATHS:
        raise BadArgumentError(f"unknown CPU kernel path {path!r}: use one of {sorted(PATHS)}")
    if path != "auto" and path not in available_paths():
        raise BadArgumentError(f"path {path!r} is not available on this CPU (available: {available_paths()})")
    return PATHS[path]


def _path_id(path: str | None) -> int:
    return _path_id_of((path or os.environ.get("QLAB_CPU_PATH") or "auto").lower())


def _qtype(qtype: str) -> GGUFType:
    key = str(qtype).upper()
    if key not in QTYPES:
        raise BadArgumentError(f"CPU kernels support {sorted(QTYPES)}, not {qtype!r}")
    return QTYPES[key]


def _u8(buf: Any, what: str) -> np.ndarray | torch.Tensor:
    """A contiguous uint8 view (numpy or torch CPU), copied to an aligned buffer if its address is odd."""
    if isinstance(buf, torch.Tensor):
        if buf.device.type != "cpu" or buf.dtype != torch.uint8:
            raise BadArgumentError(f"{what}: expected a CPU uint8 tensor of block bytes, "
                                   f"got {buf.dtype} on {buf.device}")
        t = buf.contiguous()
        if t.data_ptr() % 16:
            t = t.clone()
        return t
    if isinstance(buf, (bytes, bytearray, memoryview)):
        buf = np.frombuffer(buf, dtype=np.uint8)
    a = np.asarray(buf)
    if a.dtype != np.uint8:
        raise BadArgumentError(f"{what}: expected uint8 block bytes, got dtype {a.dtype}")
    a = np.ascontiguousarray(a)
    if a.ctypes.data % 16:
        b = np.empty(a.shape, dtype=np.uint8)
        b[...] = a
        a = b
    return a


def _nbytes(a: np.ndarray | torch.Tensor) -> int:
    return a.numel() if isinstance(a, torch.Tensor) else a.size


def _ptr(a: np.ndarray | torch.Tensor) -> int:
    return a.data_ptr() if isinstance(a, torch.Tensor) else a.ctypes.data


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise BadArgumentError(f"{what}: kernel refused the call ({_ERRORS.get(rc, rc)})")


def quantize_activations(x: np.ndarray, act_type: str, path: str | None = None) -> np.ndarray:
    """Quantize float32 activations [.., K] to Q8_0 / Q8_K blocks (bytes), as ggml's from_float does.

    Q8_0: d = amax/127, q = rne(x * 127/amax) (ggml-cpu's quantize_row_q8_0); Q8_K: quantize_row_q8_K_ref.
    path="scalar" forces the portable C loop for Q8_0 (the default uses AVX2 when present; same bytes).
    """
    act_type = act_type.upper()
    if act_type not in ACT_TYPES:
        raise BadArgumentError(f"activation type must be Q8_0 or Q8_K, not {act_type!r}")
    bs, ts = ACT_TYPES[act_type].block_size, ACT_TYPES[act_type].type_size
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.size == 0 or x.shape[-1] % bs:
        raise BadArgumentError(f"{act_type} needs rows whose length is a multiple of {bs}, got shape {x.shape}")
    lib = _load()
    if lib is None:
        return quantize(x.reshape(-1, x.shape[-1]), act_type).reshape(-1)
    out = np.zeros(x.size // bs * ts, dtype=np.uint8)
    scalar = (path or os.environ.get("QLAB_CPU_PATH") or "").lower() == "scalar"
    fn = (lib.qlab_quantize_q8_0_scalar if scalar else lib.qlab_quantize_q8_0) if act_type == "Q8_0" \
        else lib.qlab_quantize_q8_K
    for r, row in enumerate(x.reshape(-1, x.shape[-1])):
        fn(row.ctypes.data, out.ctypes.data + r * (row.size // bs * ts), row.size)
    return out


def quantize_weights(W: np.ndarray, qtype: str) -> np.ndarray:
    """Float32 weights [N, K] -> GGUF block bytes [N, row_bytes], as ggml_quantize_chunk (no imatrix).

    Q4_0 / Q8_0 run in C (ggml's reference quantizers, byte for byte); the k-quants use qlab.gguf.quantize.
    """
    _qtype(qtype)
    W = np.ascontiguousarray(W, dtype=np.float32)
    if W.ndim != 2:
        raise BadArgumentError(f"weights must be 2-D [N, K], got shape {W.shape}")
    rb = row_bytes(qtype, W.shape[1])
    if not np.isfinite(W).all():
        raise NonFiniteError("weights contain NaN or Inf: GGUF blocks need finite values")
    lib = _load()
    if lib is None or qtype.upper() not in ("Q4_0", "Q8_0"):
        return quantize(W, qtype.upper()).reshape(W.shape[0], rb)
    out = np.empty((W.shape[0], rb), dtype=np.uint8)
    fn = lib.qlab_quantize_w_q4_0 if qtype.upper() == "Q4_0" else lib.qlab_quantize_w_q8_0
    fn(W.ctypes.data, out.ctypes.data, W.size)
    return out


def vec_dot(qtype: str, x_blocks: Any, y_blocks: Any, path: str | None = None) -> float:
    """One dot product: a row of weight blocks with a row of Q8_0/Q8_K activation blocks (both raw bytes)."""
    t = _qtype(qtype)
    tid, bs, ts, act = t.type_id, t.block_size, t.type_size, t.vec_dot_type
    abs_, ats = ACT_TYPES[act].block_size, ACT_TYPES[act].type_size
    x, y = _u8(x_blocks, "weights"), _u8(y_blocks, "activations")
    nx, ny = _nbytes(x), _nbytes(y)
    if nx == 0 or nx % ts:
        raise BadArgumentError(f"{qtype} weights must be a whole number of {ts}-byte blocks, got {nx} bytes")
    if ny % ats:
        raise BadArgumentError(f"{act} activations must be a whole number of {ats}-byte blocks, got {ny} bytes")
    n = nx // ts * bs
    if ny // ats * abs_ != n:
        raise BadArgumentError(f"block counts differ: {n} weights ({qtype}) vs {ny // ats * abs_} activations ({act})")
    lib = _load()
    if lib is None:
        return vec_dot_torch(qtype, x, y)
    out = ctypes.c_float(0.0)
    _check(lib.qlab_vec_dot(tid, _path_id(path), n, _ptr(x), _ptr(y), ctypes.byref(out)), "vec_dot")
    return float(out.value)


def row_bytes(qtype: str, k: int) -> int:
    """Bytes of one row of k weights in qtype (k a multiple of the block size)."""
    t = _qtype(qtype)
    bs, ts = t.block_size, t.type_size
    if k <= 0 or k % bs:
        raise BadArgumentError(f"{qtype} rows need a length that is a multiple of {bs}, got {k}")
    return k // bs * ts


def gemm(qtype: str, W_blocks: Any, X: Any, n_threads: int = 1, path: str | None = None) -> Any:
    """Y[M, N] = X[M, K] @ W^T with W given as N rows of qtype blocks; X float32 (numpy or torch), Y alike.

    Each row of X is quantized to Q8_0 (Q8_K for k-quants) once, rows of W are split over n_threads threads.
    The common case (contiguous float32 X, aligned uint8 W) takes a short path: at M = 1 on small layers the
    Python-side cost of a call is a sizeable part of the whole (tens of microseconds of work).
    """
    t = QTYPES.get(qtype) or _qtype(qtype)
    tid, bs, ts = t.type_id, t.block_size, t.type_size
    if isinstance(X, torch.Tensor):
        is_torch = True
        if not X.is_cpu:
            raise BadArgumentError(f"X must be on the CPU, got {X.device}")
        Xc = X if X.dtype == torch.float32 and X.is_contiguous() else X.detach().to(torch.float32).contiguous()
        if Xc.dim() != 2:
            raise BadArgumentError(f"X must be 2-D [M, K], got shape {tuple(X.shape)}")
        M, Kd = Xc.shape
        xa = Xc.data_ptr()
    else:
        is_torch = False
        Xc = np.ascontiguousarray(X, dtype=np.float32)
        if Xc.ndim != 2:
            raise BadArgumentError(f"X must be 2-D [M, K], got shape {Xc.shape}")
        M, Kd = Xc.shape
        xa = None  # the array itself (buffer protocol) on the fast route, its address through ctypes
    if M == 0:
        raise BadArgumentError("X has no rows")
    if Kd <= 0 or Kd % bs:
        raise BadArgumentError(f"{qtype} rows need a length that is a multiple of {bs}, got {Kd}")
    rb = Kd // bs * ts
    fast = _fast()
    if isinstance(W_blocks, torch.Tensor) and W_blocks.dtype == torch.uint8 and W_blocks.is_cpu \
            and W_blocks.is_contiguous() and not W_blocks.data_ptr() % 16:
        W, nw = W_blocks, W_blocks.numel()
        wa = W_blocks.data_ptr()
    elif fast is not None and isinstance(W_blocks, np.ndarray) and W_blocks.dtype == np.uint8 \
            and W_blocks.flags.c_contiguous:
        W, nw = W_blocks, W_blocks.size
        wa = W_blocks  # the C module reads its address (buffer protocol) and refuses it if misaligned
    else:
        W = _u8(W_blocks, "weights")
        nw, wa = _nbytes(W), _ptr(W)
    if nw == 0 or nw % rb:
        raise BadArgumentError(f"weights hold {nw} bytes: not a whole number of {qtype} rows of {Kd} "
                               f"(= {rb} bytes each); check in_features / the block type")
    N = nw // rb
    if not isinstance(n_threads, int) or n_threads < 1:
        raise BadArgumentError(f"n_threads must be a positive int, got {n_threads!r}")
    lib = _load()
    if lib is None:
        Y = gemm_torch(str(qtype).upper(), W, torch.as_tensor(Xc), N)
        return Y if is_torch else Y.numpy()
    # path None: the C side reads QLAB_CPU_PATH itself (a Python environment lookup costs ~1 us)
    pid = 0 if path is None else _path_id(path)
    if is_torch:
        Y = torch.empty(M, N, dtype=torch.float32)  # (1.5 us faster than a shape tuple)
        ya = Y.data_ptr()
    else:
        Y = np.empty((M, N), dtype=np.float32)
        ya = Y if fast is not None else Y.ctypes.data
    if fast is not None:
        rc = fast.gemm(tid, pid, wa, N, Kd, Xc if xa is None else xa, M, ya, n_threads)
        if rc == E_ALIGN:
            W = _u8(W_blocks, "weights")
            rc = fast.gemm(tid, pid, _ptr(W), N, Kd, Xc if xa is None else xa, M, ya, n_threads)
    else:
        if not isinstance(wa, int):
            wa = _ptr(wa)
        rc = lib.qlab_gemm(tid, pid, wa, N, Kd, Xc.ctypes.data if xa is None else xa, M, ya, n_threads)
    if rc:
        if rc in (E_PATH, E_ENVPATH):
            _path_id(path)  # raises the error that names the path
        _check(rc, "gemm")
    return Y


def gemm_foreign(vec_dot_ptr: int, from_float_ptr: int, qtype: str, W_blocks: Any, X: np.ndarray,
                 n_threads: int = 1) -> np.ndarray:
    """Y = X @ W^T through another library's ggml-style vec_dot/from_float function pointers (benchmarks)."""
    lib = _load()
    if lib is None:
        raise BadArgumentError("gemm_foreign needs the compiled C kernels")
    act = ACT_TYPES[_qtype(qtype).vec_dot_type]
    X = np.ascontiguousarray(X, dtype=np.float32)
    M, K = X.shape
    rb = row_bytes(qtype, K)
    W = _u8(W_blocks, "weights")
    N = _nbytes(W) // rb
    if N * rb != _nbytes(W):
        raise BadArgumentError("weights are not a whole number of rows")
    ystride = K // act.block_size * act.type_size
    Y = np.empty((M, N), dtype=np.float32)
    _check(lib.qlab_gemm_foreign(vec_dot_ptr, from_float_ptr, rb, ystride, _ptr(W), N, K, X.ctypes.data, M,
                                 Y.ctypes.data, n_threads), "gemm_foreign")
    return Y


__all__ = ["QTYPES", "ACT_TYPES", "PATHS", "library", "has_c_kernels", "c_type_info", "available_paths", "best_path",
           "quantize_activations", "quantize_weights", "vec_dot", "row_bytes", "gemm", "gemm_foreign"]
