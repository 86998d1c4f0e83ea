"""ggml's activation quantization in torch: the Q8_0 / Q8_K round trip x -> q * d that ggml's CPU matmul applies
to each row of activations before its integer dot products (ggml-cpu's from_float of the weight type's
vec_dot_type, see qlab.gguf.types).

    Q8_0, 32 values:  d = fp16(amax / 127), q = rne(x * 127 / amax)
    Q8_K, 256 values: iscale = -127 / x[argmax |x|], q = min(127, rne(iscale * x)), d = 1 / iscale (float32)

Used by the llama.cpp cross-check (qlab.gguf.crosscheck) and by the C kernels' torch fallback
(qlab.kernels.cpu.fallback); tests/test_cpu_kernels.py checks it against the C quantizers.
"""

from __future__ import annotations

import torch


def q8_roundtrip(X: torch.Tensor, act_type: str) -> torch.Tensor:
    """X [M, K] float32 -> dequantized Q8_0 / Q8_K activations (what the integer kernels multiply)."""
    M, K = X.shape
    if act_type == "Q8_0":
        xb = X.reshape(M, K // 32, 32)
        amax = xb.abs().amax(-1, keepdim=True)
        d = (amax / 127.0).to(torch.float16).to(torch.float32)
        # tensor / tensor: correctly rounded (torch evaluates scalar / tensor as scalar * reciprocal)
        iscale = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax.clamp_min(1e-38), torch.zeros_like(amax))
        q = torch.round(xb * iscale).clamp(-128, 127)
        return (q * d).reshape(M, K)
    xb = X.reshape(M, K // 256, 256)
    idx = xb.abs().argmax(-1, keepdim=True)
    mx = torch.gather(xb, -1, idx)
    safe = torch.where(mx != 0, mx, torch.ones_like(mx))
    iscale = torch.full_like(safe, -127.0) / safe
    q = torch.round(iscale * xb).clamp(max=127)
    d = torch.where(mx != 0, torch.ones_like(iscale) / iscale, torch.zeros_like(mx))
    return (q * d).reshape(M, K)
