"""`QuantLinear`: an `nn.Linear` replacement that keeps its weight packed (GPTQ layout) and multiplies with it.

    y = x · Ŵᵀ + b,   Ŵ[n, k] = (code[n, k] − zeros[g(k), n]) · scales[g(k), n]

The weight is held as `qlab.packing.pack_rows(codes.T, bits)` (int32 [K·bits/32, N]), scales and zeros as
[G, N] (transposed from `QuantizedTensor`'s [N, G]; zeros in code units) and `g_idx` [K] when act-order
scattered the groups. forward() runs:
- the fused Triton kernel (`qlab.kernels.triton.wq_matmul`) on CUDA tensors, or on CPU under
  TRITON_INTERPRET=1 when `backend="triton"` (the tests' route);
- otherwise a torch reference: unpack, dequantize in fp32, matmul in fp32, round to x's dtype.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import BadArgumentError, MissingDependencyError
from .packing import pack_rows, unpack_rows
from .qtensor import QuantizedTensor

BACKENDS = ("auto", "torch", "triton")


def padded_rows(K: int, bits: int) -> int:
    """Smallest K' ≥ K whose K'·bits fills whole int32 words (pack_rows' requirement); extra codes are 0."""
    step = 32 // math.gcd(32, bits)
    return -(-K // step) * step


class QuantLinear(nn.Module):
    """Linear layer with a packed b-bit weight (b ∈ {2, 3, 4, 8}), per-group scales/zeros, optional g_idx."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int, n_groups: int,
                 bias: bool = False, act_order: bool = False, scale_dtype: torch.dtype = torch.float16,
                 backend: str = "auto") -> None:
        super().__init__()
        if bits not in (2, 3, 4, 8):
            raise BadArgumentError(f"QuantLinear packs 2, 3, 4 or 8-bit codes, got bits={bits}")
        if backend not in BACKENDS:
            raise BadArgumentError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.backend = bits, group_size, backend
        words = padded_rows(in_features, bits) * bits // 32
        self.register_buffer("qweight", torch.zeros(words, out_features, dtype=torch.int32))
        self.register_buffer("scales", torch.zeros(n_groups, out_features, dtype=scale_dtype))
        self.register_buffer("zeros", torch.zeros(n_groups, out_features, dtype=scale_dtype))
        self.register_buffer("g_idx", torch.zeros(in_features, dtype=torch.int32) if act_order else None)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_qtensor(cls, qt: QuantizedTensor, bias: torch.Tensor | None = None,
                     scale_dtype: torch.dtype = torch.float16, backend: str = "auto") -> QuantLinear:
        """Pack a `QuantizedTensor` (codes [N, K] → GPTQ qweight) plus an optional bias [N]."""
        N, K = qt.shape
        default_g = torch.arange(K, dtype=torch.int32) // qt.group_size
        act_order = not torch.equal(qt.g_idx.to(torch.int32).cpu(), default_g)
        if scale_dtype == torch.float16 and float(qt.scales.abs().max()) > torch.finfo(torch.float16).max:
            raise BadArgumentError("scales exceed the float16 range: pass scale_dtype=torch.float32")
        m = cls(K, N, qt.bits, qt.group_size, qt.n_groups, bias is not None, act_order, scale_dtype, backend)
        codes = torch.zeros(padded_rows(K, qt.bits), N, dtype=torch.uint8)
        codes[:K] = qt.codes.T.cpu()
        m.qweight.copy_(pack_rows(codes, qt.bits))
        m.scales.copy_(qt.scales.T.to(scale_dtype))
        m.zeros.copy_(qt.zeros.T.to(scale_dtype))
        if act_order:
            m.g_idx.copy_(qt.g_idx.to(torch.int32))
        if bias is not None:
            m.bias = bias.detach().clone()
        return m.to(qt.codes.device)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - nn.Module signature
        """Move with the model but keep scales/zeros in their storage dtype (model.half() must not round them)."""
        keep = {n: self._buffers[n] for n in ("scales", "zeros")}
        super()._apply(fn, recurse)
        for n, t in keep.items():
            self._buffers[n] = t.to(self._buffers[n].device)
        return self

    def group_index(self) -> torch.Tensor:
        """g(k) for every input column k (int64, on the weight's device)."""
        if self.g_idx is not None:
            return self.g_idx.long()
        return torch.arange(self.in_features, device=self.qweight.device) // self.group_size

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Ŵ [N, K] by the torch reference path: unpack the codes, (code − z[g]) · s[g] in fp32."""
        K = self.in_features
        codes = unpack_rows(self.qweight.cpu(), self.bits, padded_rows(K, self.bits))[:K]  # [K, N]
        codes = codes.to(self.qweight.device, torch.float32)
        g = self.group_index()
        W_t = (codes - self.zeros.float()[g]) * self.scales.float()[g]  # [K, N]
        return W_t.T.contiguous().to(dtype)

    def uses_triton(self, x: torch.Tensor) -> bool:
        return self.backend == "triton" or (self.backend == "auto" and x.is_cuda)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_triton(x):
            return self._triton_forward(x)
        y = x.to(torch.float32) @ self.dequantize(torch.float32).T
        if self.bias is not None:
            y = y + self.bias.to(torch.float32)
        return y.to(x.dtype)

    def _triton_forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            from qlab.kernels.triton import interpreting, wq_matmul
        except ImportError as e:  # triton missing
            raise MissingDependencyError(f"backend='triton' needs the triton package ({e}): pip install triton, "
                                         f"or use backend='torch'") from e
        if not x.is_cuda and not interpreting():
            raise BadArgumentError("backend='triton' on a CPU tensor needs TRITON_INTERPRET=1 set before "
                                   "qlab.kernels.triton is first imported; or use backend='torch'")
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return wq_matmul(x, self.qweight, self.scales, self.zeros, self.g_idx, self.bits, self.group_size, bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, act_order={self.g_idx is not None}, bias={self.bias is not None}, "
                f"backend={self.backend}")


def swap_quant_linears(model: nn.Module, qtensors: dict[str, QuantizedTensor], backend: str = "auto",
                       scale_dtype: torch.dtype = torch.float16) -> nn.Module:
    """Replace each `nn.Linear` named in `qtensors` (full module names) by a `QuantLinear`; returns the model."""
    for name, qt in qtensors.items():
        try:
            old = model.get_submodule(name)
        except AttributeError as e:
            raise BadArgumentError(f"the model has no module named {name!r} to replace") from e
        if not isinstance(old, nn.Linear):
            raise BadArgumentError(f"{name!r} is a {type(old).__name__}, not an nn.Linear")
        if tuple(old.weight.shape) != qt.shape:
            raise BadArgumentError(f"{name!r} has weight {tuple(old.weight.shape)}, the quantized one is {qt.shape}")
        new = QuantLinear.from_qtensor(qt, old.bias, scale_dtype=scale_dtype, backend=backend)
        new = new.to(old.weight.device)
        if new.bias is not None:
            new.bias = new.bias.to(old.weight.dtype)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model
