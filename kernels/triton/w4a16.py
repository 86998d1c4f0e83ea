"""Triton kernels for weight-only quantized linear layers: Y = X · dequant(Wq)ᵀ (+ bias).

Weights come in qlab's one packed layout (`qlab.packing.pack_rows(codes.T, bits)`, the GPTQ `qweight`):

    qweight int32 [K·bits/32, N]   code of (k, n) at bit offset k·bits of column n's little-endian bit stream
    scales        [G, N]           step of group g, output n           (any float dtype; read as fp32)
    zeros         [G, N]           zero-point in code units             (any float dtype; read as fp32)
    g_idx   int32 [K] or None      group of input k (act-order); None → g = k // group_size

    Ŵᵀ[k, n] = (code(k, n) − zeros[g(k), n]) · scales[g(k), n]          dequantized in fp32

Three kernels share one tile-dequantizer `_dequant_tile` ([BLOCK_K, BLOCK_N] of Ŵᵀ, all in registers):
- `_decode_kernel`: M ≤ 16 (token generation). Grid (N tiles, SPLIT_K, M tiles): each program walks one
  K slice; partial sums land in an fp32 buffer [SPLIT_K, M, N] that torch sums (split-K keeps every SM busy
  when N / BLOCK_N is small). BLOCK_M < 16 (M ≤ 8) uses a broadcast multiply + reduction in fp32 (GEMV style,
  no tensor cores, no rounding of Ŵ); BLOCK_M = 16 (M = 9…16) uses `tl.dot` with Ŵ rounded to x's dtype.
- `_gemm_kernel`: larger M. Grouped ("swizzled") 1-D grid over [BLOCK_M, BLOCK_N] output tiles, full K per
  program, `tl.dot` with fp32 accumulation.
- `_dequant_kernel`: the standalone dequantizer, writes Ŵ [N, K].

Plain pointer arithmetic only (no block pointers, no libdevice, no autotuner) so the same source runs on
triton 3.6 on a GPU and under TRITON_INTERPRET=1 on a CPU. Configs come from `choose_config`, a small
heuristic; a benchmark can sweep `Config`s explicitly.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from qlab.errors import BadArgumentError

SUPPORTED_BITS = (2, 3, 4, 8)


_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")  # read by @triton.jit at decoration


def interpreting() -> bool:
    """True when these kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1 was set before this import)."""
    return _INTERPRET


@triton.jit
def _dequant_tile(qw_ptr, s_ptr, z_ptr, g_ptr, k0, offs_n, K, N,
                  stride_qk, stride_qn, stride_sg, stride_sn,
                  BITS: tl.constexpr, GROUP_SIZE: tl.constexpr, HAS_GIDX: tl.constexpr,
                  SCALE_ROW: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, WORDS: tl.constexpr):
    """fp32 tile Ŵᵀ[k0 : k0 + BLOCK_K, offs_n] = (code − z[g]) · s[g]; zero outside K × N.

    The code of (k, n) starts at bit k·BITS of column n: word (k·BITS) // 32, offset (k·BITS) % 32.
    - gather (WORDS False): each element loads its own word (neighbours share it, the cache serves repeats) and
      shifts it; when 32 is not a multiple of BITS (3-bit) a code may straddle into the next word, whose low bits
      are OR-ed in.
    - WORDS (BITS divides 32): load each word once as a [BLOCK_K·BITS/32, BLOCK_N] tile, shift it by all
      32/BITS offsets at once ([words, 32/BITS, BLOCK_N]) and merge the first two axes: row k = word·(32/BITS) + j.
    SCALE_ROW: every k of the tile is in the same group (no g_idx, BLOCK_K divides GROUP_SIZE), so one row
    of scales/zeros [1, BLOCK_N] is loaded instead of a [BLOCK_K, BLOCK_N] gather.
    """
    offs_k = k0 + tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    mask_n = offs_n < N
    mask = mask_k[:, None] & mask_n[None, :]
    col = offs_n[None, :] * stride_qn
    if WORDS:
        offs_w = k0 // (32 // BITS) + tl.arange(0, BLOCK_K * BITS // 32)
        wmask = (offs_w[:, None] * (32 // BITS) < K) & mask_n[None, :]
        words = tl.load(qw_ptr + offs_w[:, None] * stride_qk + col, mask=wmask, other=0).to(tl.uint32, bitcast=True)
        shifts = (tl.arange(0, 32 // BITS) * BITS).to(tl.uint32)
        v = tl.reshape(words[:, None, :] >> shifts[None, :, None], (BLOCK_K, BLOCK_N))
    else:
        bit = offs_k * BITS
        word = bit // 32
        off = (bit % 32).to(tl.uint32)
        lo = tl.load(qw_ptr + word[:, None] * stride_qk + col, mask=mask, other=0).to(tl.uint32, bitcast=True)
        v = lo >> off[:, None]  # logical shift: uint32
        if 32 % BITS != 0:
            straddle = (off + BITS) > 32
            hi = tl.load(qw_ptr + (word + 1)[:, None] * stride_qk + col, mask=mask & straddle[:, None], other=0)
            hi = hi.to(tl.uint32, bitcast=True)
            v = v | (hi << ((32 - off) % 32)[:, None])  # hi is 0 where the code does not straddle
    code = (v & ((1 << BITS) - 1)).to(tl.int32).to(tl.float32)
    if SCALE_ROW:
        g = k0 // GROUP_SIZE  # the whole tile shares the group of its first k
        sz = g * stride_sg + offs_n[None, :] * stride_sn
        s = tl.load(s_ptr + sz, mask=mask_n[None, :], other=0).to(tl.float32)
        z = tl.load(z_ptr + sz, mask=mask_n[None, :], other=0).to(tl.float32)
    else:
        if HAS_GIDX:
            g = tl.load(g_ptr + offs_k, mask=mask_k, other=0)
        else:
            g = offs_k // GROUP_SIZE
        sz = g[:, None] * stride_sg + offs_n[None, :] * stride_sn
        s = tl.load(s_ptr + sz, mask=mask, other=0).to(tl.float32)
        z = tl.load(z_ptr + sz, mask=mask, other=0).to(tl.float32)
    return tl.where(mask, (code - z) * s, 0.0)


@triton.jit
def _decode_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, g_ptr, b_ptr, out_ptr,
                   M, N, K, K_PER_SPLIT,
                   stride_xm, stride_xk, stride_qk, stride_qn, stride_sg, stride_sn,
                   stride_os, stride_om, stride_on,
                   BITS: tl.constexpr, GROUP_SIZE: tl.constexpr, HAS_GIDX: tl.constexpr, HAS_BIAS: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   USE_DOT: tl.constexpr, DOT_FP32: tl.constexpr, SCALE_ROW: tl.constexpr,
                   WORDS: tl.constexpr):
    """Split-K GEMV/skinny GEMM: out[pid_k, m, n] = Σ_{k in slice pid_k} x[m, k] · Ŵᵀ[k, n] (+ bias on slice 0)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # M·N may pass 2³¹
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_lo = pid_k * K_PER_SPLIT  # K_PER_SPLIT is a multiple of BLOCK_K: tiles never cross slices
    k_hi = tl.minimum(k_lo + K_PER_SPLIT, K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        w = _dequant_tile(qw_ptr, s_ptr, z_ptr, g_ptr, k0, offs_n, K, N, stride_qk, stride_qn,
                          stride_sg, stride_sn, BITS, GROUP_SIZE, HAS_GIDX, SCALE_ROW, BLOCK_K, BLOCK_N, WORDS)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=mask_m[:, None] & (offs_k[None, :] < K), other=0.0)
        if USE_DOT:
            if DOT_FP32:
                acc = tl.dot(x.to(tl.float32), w, acc, input_precision="ieee")
            else:
                acc = tl.dot(x, w.to(x.dtype), acc)
        else:
            acc += tl.sum(x.to(tl.float32)[:, :, None] * w[None, :, :], axis=1)
    if HAS_BIAS:
        b = tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        acc += tl.where(pid_k == 0, b, 0.0)[None, :]  # the bias goes into slice 0's partial sum only
    out = out_ptr + pid_k * stride_os + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & (offs_n[None, :] < N))


@triton.jit
def _gemm_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, g_ptr, b_ptr, out_ptr,
                 M, N, K,
                 stride_xm, stride_xk, stride_qk, stride_qn, stride_sg, stride_sn, stride_om, stride_on,
                 BITS: tl.constexpr, GROUP_SIZE: tl.constexpr, HAS_GIDX: tl.constexpr, HAS_BIAS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                 DOT_FP32: tl.constexpr, SCALE_ROW: tl.constexpr, WORDS: tl.constexpr):
    """Tiled GEMM: out[m, n] = Σ_k x[m, k] · Ŵᵀ[k, n] (+ bias); GROUP_M row-tiles share weight tiles in L2."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    in_group = GROUP_M * num_pid_n
    first_m = (pid // in_group) * GROUP_M
    size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % size_m
    pid_n = (pid % in_group) // size_m
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # M·N may pass 2³¹
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        w = _dequant_tile(qw_ptr, s_ptr, z_ptr, g_ptr, k0, offs_n, K, N, stride_qk, stride_qn,
                          stride_sg, stride_sn, BITS, GROUP_SIZE, HAS_GIDX, SCALE_ROW, BLOCK_K, BLOCK_N, WORDS)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=mask_m[:, None] & (offs_k[None, :] < K), other=0.0)
        if DOT_FP32:
            acc = tl.dot(x.to(tl.float32), w, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w.to(x.dtype), acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & (offs_n[None, :] < N))


@triton.jit
def _dequant_kernel(qw_ptr, s_ptr, z_ptr, g_ptr, out_ptr, N, K,
                    stride_qk, stride_qn, stride_sg, stride_sn, stride_on, stride_ok,
                    BITS: tl.constexpr, GROUP_SIZE: tl.constexpr, HAS_GIDX: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SCALE_ROW: tl.constexpr,
                    WORDS: tl.constexpr):
    """out[n, k] = Ŵ[n, k] for one [BLOCK_K, BLOCK_N] tile (stored transposed into the [N, K] output)."""
    k0 = tl.program_id(0) * BLOCK_K
    offs_k = k0 + tl.arange(0, BLOCK_K)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    w = _dequant_tile(qw_ptr, s_ptr, z_ptr, g_ptr, k0, offs_n, K, N, stride_qk, stride_qn,
                      stride_sg, stride_sn, BITS, GROUP_SIZE, HAS_GIDX, SCALE_ROW, BLOCK_K, BLOCK_N, WORDS)
    out = out_ptr + offs_n[None, :] * stride_on + offs_k[:, None] * stride_ok
    tl.store(out, w.to(out_ptr.dtype.element_ty), mask=(offs_k[:, None] < K) & (offs_n[None, :] < N))


# ----------------------------------------------------------------------------------------------------- launch


@dataclass(frozen=True)
class Config:
    """Launch parameters of one kernel call. path: "decode" (split-K, M ≤ 16) or "gemm" (tiled)."""

    path: str
    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 2
    unpack: str = "gather"  # "gather" (a word load per code) or "words" (one load per word, 3-D shift + reshape)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: a few programs suffice


def choose_config(M: int, N: int, K: int, device: torch.device | str, path: str = "auto",
                  sm_count: int | None = None) -> Config:
    """Heuristic launch config: decode (split-K so that ≈ 4 programs per SM exist) for M ≤ 16, else tiled GEMM.

    On a CPU (the interpreter) tiles are large and splits few: each program costs Python time, not GPU time.
    sm_count overrides the device's multiprocessor count (to show what a GPU would get)."""
    if path == "auto":
        path = "decode" if M <= 16 else "gemm"
    device = torch.device(device)
    interp = device.type != "cuda"
    if path == "decode":
        block_m = min(16, _next_pow2(M)) if M <= 16 else 16
        block_n = 64 if interp else (128 if block_m < 16 else 64)
        block_k = 64 if interp or block_m < 16 else 128  # GEMV: a [BLOCK_M, 64, 128] fp32 product in registers
        n_tiles = triton.cdiv(N, block_n) * triton.cdiv(M, block_m)
        k_tiles = triton.cdiv(K, block_k)
        sms = sm_count or _sm_count(device)
        split_k = max(1, min(k_tiles, (4 * sms) // max(1, n_tiles)))
        if interp:
            split_k = min(split_k, 2)
        return Config("decode", block_m, block_n, block_k, split_k, num_warps=4, num_stages=2)
    if path != "gemm":
        raise BadArgumentError(f"path must be 'auto', 'decode' or 'gemm', got {path!r}")
    if interp:
        return Config("gemm", 32 if M <= 32 else 64, 64, 64, group_m=8)
    if M <= 64:
        return Config("gemm", max(16, _next_pow2(M)), 128, 64, group_m=8, num_warps=4, num_stages=4)
    return Config("gemm", 128, 128, 64, group_m=8, num_warps=8, num_stages=3)


def _check(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
           g_idx: torch.Tensor | None, bits: int, K: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise BadArgumentError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    if qweight.dtype != torch.int32 or qweight.dim() != 2:
        raise BadArgumentError(f"qweight must be int32 [K·bits/32, N], got {qweight.dtype} {tuple(qweight.shape)}")
    if qweight.shape[0] * 32 < K * bits:
        raise BadArgumentError(f"qweight has {qweight.shape[0]} words per column, too few for K = {K} {bits}-bit codes")
    if scales.shape != zeros.shape or scales.shape[1] != qweight.shape[1]:
        raise BadArgumentError(f"scales {tuple(scales.shape)} and zeros {tuple(zeros.shape)} must both be [G, N]")
    if g_idx is not None and (g_idx.shape != (K,) or g_idx.dtype != torch.int32):
        raise BadArgumentError(f"g_idx must be int32 [{K}], got {g_idx.dtype} {tuple(g_idx.shape)}")
    if x is not None and x.shape[-1] != K:
        raise BadArgumentError(f"x has {x.shape[-1]} features, the weight expects {K}")


def _dot_in_fp32(dtype: torch.dtype) -> bool:
    """tl.dot in fp32 (ieee) for fp32 activations, and for bf16 under the interpreter: triton 3.9's interpreter
    returns garbage from a bf16 × bf16 `tl.dot` (seen 2026-11-26); on a GPU bf16 uses the tensor cores."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and interpreting())


def _words(unpack: str, bits: int) -> bool:
    if unpack not in ("gather", "words"):
        raise BadArgumentError(f"unpack must be 'gather' or 'words', got {unpack!r}")
    return unpack == "words" and 32 % bits == 0  # 3-bit codes straddle words: always gathered


def _scale_row(g_idx: torch.Tensor | None, group_size: int, block_k: int) -> bool:
    return g_idx is None and group_size % block_k == 0


def wq_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
              g_idx: torch.Tensor | None, bits: int, group_size: int, bias: torch.Tensor | None = None,
              path: str = "auto", config: Config | None = None) -> torch.Tensor:
    """Y = X · dequant(qweight, scales, zeros, g_idx)ᵀ (+ bias) for x [..., K] fp16/bf16/fp32; Y has x's dtype.

    K = x.shape[-1]; qweight may hold padding rows beyond K. group_size is used only when g_idx is None."""
    K = x.shape[-1]
    _check(x, qweight, scales, zeros, g_idx, bits, K)
    N = qweight.shape[1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)
    M = x2.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return out.reshape(*lead, N)
    cfg = config or choose_config(M, N, K, x.device, path)
    g_arg = g_idx if g_idx is not None else qweight  # any pointer; never read when HAS_GIDX is False
    b_arg = bias if bias is not None else out
    common = dict(BITS=bits, GROUP_SIZE=group_size, HAS_GIDX=g_idx is not None, HAS_BIAS=bias is not None,
                  BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, DOT_FP32=_dot_in_fp32(x.dtype),
                  SCALE_ROW=_scale_row(g_idx, group_size, cfg.block_k), WORDS=_words(cfg.unpack, bits),
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if cfg.path == "decode":
        k_per_split = triton.cdiv(triton.cdiv(K, cfg.split_k), cfg.block_k) * cfg.block_k
        split = triton.cdiv(K, k_per_split)
        part = out[None] if split == 1 else torch.empty((split, M, N), dtype=torch.float32, device=x.device)
        grid = (triton.cdiv(N, cfg.block_n), split, triton.cdiv(M, cfg.block_m))
        _decode_kernel[grid](x2, qweight, scales, zeros, g_arg, b_arg, part, M, N, K, k_per_split,
                             x2.stride(0), x2.stride(1), qweight.stride(0), qweight.stride(1),
                             scales.stride(0), scales.stride(1), part.stride(0), part.stride(1), part.stride(2),
                             USE_DOT=cfg.block_m >= 16, **common)
        if split > 1:
            out.copy_(part.sum(0))
    elif cfg.path == "gemm":
        grid = (triton.cdiv(M, cfg.block_m) * triton.cdiv(N, cfg.block_n),)
        _gemm_kernel[grid](x2, qweight, scales, zeros, g_arg, b_arg, out, M, N, K,
                           x2.stride(0), x2.stride(1), qweight.stride(0), qweight.stride(1),
                           scales.stride(0), scales.stride(1), out.stride(0), out.stride(1),
                           GROUP_M=cfg.group_m, **common)
    else:
        raise BadArgumentError(f"config.path must be 'decode' or 'gemm', got {cfg.path!r}")
    return out.reshape(*lead, N)


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor | None,
               bits: int, group_size: int, in_features: int, dtype: torch.dtype = torch.float16,
               block_n: int = 64, block_k: int = 64, unpack: str = "gather") -> torch.Tensor:
    """Ŵ [N, K] = (code − zeros[g]) · scales[g], computed in fp32 and stored as `dtype`."""
    K = in_features
    _check(None, qweight, scales, zeros, g_idx, bits, K)
    N = qweight.shape[1]
    out = torch.empty((N, K), dtype=dtype, device=qweight.device)
    grid = (triton.cdiv(K, block_k), triton.cdiv(N, block_n))
    _dequant_kernel[grid](qweight, scales, zeros, g_idx if g_idx is not None else qweight, out, N, K,
                          qweight.stride(0), qweight.stride(1), scales.stride(0), scales.stride(1),
                          out.stride(0), out.stride(1), BITS=bits, GROUP_SIZE=group_size,
                          HAS_GIDX=g_idx is not None, BLOCK_N=block_n, BLOCK_K=block_k,
                          SCALE_ROW=_scale_row(g_idx, group_size, block_k), WORDS=_words(unpack, bits))
    return out
