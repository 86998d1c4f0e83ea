"""A CPU Linear that holds GGUF blocks and multiplies with qlab's C kernels, as llama.cpp does on a CPU.

    y = W x + b,   W in Q4_0 / Q8_0 / Q4_K / Q6_K blocks,   x quantized on the fly to Q8_0 (Q8_K for k-quants)

so y differs from the dequantized float model only by the activation rounding (|dx| <= d_x / 2 per element).
``swap_gguf_linears(model, "Q4_0")`` replaces every nn.Linear of a model in place; the model then runs its
forward pass and ``generate`` on these kernels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import qlab.kernels.cpu as K
from qlab.errors import BadArgumentError
from qlab.gguf import dequantize
from qlab.gguf.activations import q8_roundtrip
from qlab.gguf.types import TYPES


def kernel_fallback(qtype: str) -> str | None:
    """The kernel type for rows that do not split into qtype's blocks: llama-quantize's fallback (the GGUF type
    registry's, e.g. Q6_K -> Q8_0) when the kernels have it, else the kernel type of the same block size with the
    most bits per weight not above it (Q4_K -> Q5_0, which the kernels lack -> Q4_0); None without a fallback."""
    fb = TYPES[qtype].fallback
    if fb is None or fb in K.QTYPES:
        return fb
    want = TYPES[fb]
    fits = [t for t in K.QTYPES.values() if t.block_size == want.block_size
            and t.bits_per_weight <= want.bits_per_weight]
    return max(fits, key=lambda t: t.bits_per_weight).name if fits else None


FALLBACK = {name: kernel_fallback(name) for name in K.QTYPES if kernel_fallback(name)}  # {"Q4_K": "Q4_0", ...}


class GGUFLinear(nn.Module):
    """nn.Linear with its weight as GGUF block bytes [out_features, row_bytes], run by qlab.kernels.cpu.gemm."""

    def __init__(self, blocks: torch.Tensor, qtype: str, in_features: int, out_features: int,
                 bias: torch.Tensor | None = None, n_threads: int | None = None, path: str | None = None):
        super().__init__()
        qtype = qtype.upper()
        rb = K.row_bytes(qtype, in_features)
        blocks = torch.as_tensor(blocks, dtype=torch.uint8).reshape(-1)
        if blocks.numel() != rb * out_features:
            raise BadArgumentError(f"{qtype} blocks for [{out_features}, {in_features}] need {rb * out_features} "
                                   f"bytes, got {blocks.numel()}")
        self.qtype, self.in_features, self.out_features = qtype, in_features, out_features
        self.n_threads, self.path = n_threads, path
        self.register_buffer("blocks", blocks.reshape(out_features, rb).contiguous())
        self.bias = nn.Parameter(bias.detach().to(torch.float32).clone(), requires_grad=False) \
            if bias is not None else None
        self._w_float: torch.Tensor | None = None  # cache for the torch fallback path

    @classmethod
    def from_linear(cls, linear: nn.Linear, qtype: str, n_threads: int | None = None,
                    path: str | None = None) -> GGUFLinear:
        """Quantize an nn.Linear's weight to qtype blocks (ggml's quantizers, byte for byte)."""
        W = linear.weight.detach().to(torch.float32).cpu().numpy()
        blocks = K.quantize_weights(W, qtype)
        return cls(torch.from_numpy(blocks), qtype, linear.in_features, linear.out_features, linear.bias,
                   n_threads, path)

    def dequantize(self) -> torch.Tensor:
        """The float weight [out_features, in_features] the blocks stand for (qlab.gguf.dequantize)."""
        w = dequantize(self.blocks.numpy().reshape(-1), self.qtype, (self.out_features, self.in_features))
        return torch.from_numpy(np.ascontiguousarray(w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise BadArgumentError(f"input has {x.shape[-1]} features, this layer takes {self.in_features}")
        x2 = x.reshape(-1, self.in_features).to(torch.float32).contiguous()
        threads = self.n_threads or torch.get_num_threads()
        if K.has_c_kernels():
            y = K.gemm(self.qtype, self.blocks, x2, n_threads=threads, path=self.path)
        else:
            if self._w_float is None:
                self._w_float = self.dequantize()
            y = q8_roundtrip(x2, K.QTYPES[self.qtype].vec_dot_type) @ self._w_float.T
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, qtype={self.qtype}, " \
               f"bias={self.bias is not None}"


def _block(qtype: str) -> int:
    return K.QTYPES[qtype].block_size


def choose_qtype(in_features: int, qtype: str) -> str | None:
    """qtype if in_features splits into its blocks, else its fallback, else None (the layer stays float)."""
    qtype = qtype.upper()
    if qtype not in K.QTYPES:
        raise BadArgumentError(f"CPU kernels support {sorted(K.QTYPES)}, not {qtype!r}")
    for t in (qtype, FALLBACK.get(qtype)):
        if t is not None and in_features % _block(t) == 0:
            return t
    return None


def swap_gguf_linears(model: nn.Module, qtype: str, lm_head_qtype: str | None = "Q8_0", skip: tuple[str, ...] = (),
                      n_threads: int | None = None, path: str | None = None, progress: bool = False) -> dict[str, str]:
    """Replace every nn.Linear of model (in place) by a GGUFLinear; return {name: type used or "float"}.

    lm_head gets lm_head_qtype (None keeps it float; llama.cpp stores it in Q6_K/Q8_0). Names in skip stay float.
    Rows that do not split into 256-weight super-blocks use FALLBACK, as llama-quantize does.
    """
    from tqdm.auto import tqdm

    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not targets:
        raise BadArgumentError("the model has no nn.Linear layers to swap")
    used: dict[str, str] = {}
    for name, lin in tqdm(targets, desc=f"GGUF {qtype}", disable=not progress):
        leaf = name.rsplit(".", 1)[-1]
        want = lm_head_qtype if leaf == "lm_head" else qtype
        if name in skip or leaf in skip or want is None:
            used[name] = "float"
            continue
        t = choose_qtype(lin.in_features, want)
        if t is None:
            used[name] = "float"
            continue
        new = GGUFLinear.from_linear(lin, t, n_threads=n_threads, path=path)
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, leaf, new)
        used[name] = t
    return used


def gguf_model_bytes(model: nn.Module) -> int:
    """Bytes of all weights as the model now holds them (GGUF blocks + float parameters, tied counted once)."""
    seen, total = set(), 0
    for m in model.modules():
        if isinstance(m, GGUFLinear):
            total += m.blocks.numel()
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


@torch.no_grad()
def decode_tokens_per_second(model: nn.Module, ids: torch.Tensor, n_new: int = 32, reps: int = 2) -> float:
    """Greedy decoding speed (new tokens / s, KV cache on), prompt processing excluded:
    n_new / (t(generate n_new + 1) - t(generate 1)), best of reps."""
    if n_new < 1:
        raise BadArgumentError(f"n_new must be >= 1, got {n_new}")
    ids = ids if ids.dim() == 2 else ids[None]

    def t_gen(n: int) -> float:
        import time

        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return time.perf_counter() - t0

    t_gen(2)  # warm-up
    best = min(t_gen(n_new + 1) - t_gen(1) for _ in range(reps))
    return n_new / max(best, 1e-9)
