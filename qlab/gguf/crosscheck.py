"""qlab against llama.cpp: ggml's activation quantization emulated in float, and the perplexity agreement report.

ggml's CPU matmul never multiplies float activations by quantized weights: it first converts each row of x to
the weight type's ``vec_dot_type`` (ggml-cpu type traits) and multiplies integer blocks:

    weights   F32 | F16 | Q4_0 Q5_0 Q8_0 | Q4_1 Q5_1 | Q2_K Q3_K Q4_K Q5_K Q6_K
    x becomes F32 | F16 | Q8_0           | Q8_1      | Q8_K

    Q8_0 / Q8_1, 32 values: d = fp16(max|x| / 127), q = rne(x · 127 / max|x|)       (quantize_row_q8_0, AVX2)
    Q8_K, 256 values:       iscale = −127 / x[argmax|x|], q = min(127, rne(iscale · x)), d = 1 / iscale (float32)

``ggml_activations(model, types)`` puts this round trip (x → q·d) in front of every nn.Linear; the float matmul
with the dequantized weights then equals ggml's integer dot products up to float summation order. (Q8_1's sum
field s = fp16(d·Σq), which ggml multiplies by Q4_1/Q5_1's block minimum, is taken as d·Σq unrounded.)

Rounding is discontinuous, so two evaluations that differ only in float summation order (1e-7 relative) round
a few activations differently; each flip moves an input by a whole rounding step, far more than the float
difference that caused it, so flips multiply layer by layer until the two runs' rounding errors are unrelated.
llama.cpp shows it against itself: the same Q8_0 file with flash attention on/off differs by KL ~4e-3 and up to
~0.6 % perplexity on 511 tokens, while on the F32 file the same switch moves perplexity by 0.006 %. One
activation-rounded run is thus one draw from a distribution. ``jitter`` (seeded relative noise, default 1e-6,
float32 rounding size, on each Linear's input before rounding) draws more; ``llama_cpp_agreement`` compares
qlab's mean over draws with llama.cpp's mean over its own settings, next to the plain float evaluation
(benchmarks/gguf_agreement.py records both on 2,048 tokens).

llama.cpp's library (llama-cpp-python) is a source build that `make lab` does not wait for (`make oracle`
builds it): ``require_llama_cpp`` raises ``LlamaCppMissingError`` with that instruction, ``llama_cpp_available``
lets a notebook cell say so instead of failing (both from qlab.gguf.llamacpp).
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Iterator

import torch
from torch import nn

from ..errors import BadArgumentError
from .activations import q8_roundtrip
from .llamacpp import LLAMA_CPP_MISSING, llama_cpp_available, require_llama_cpp
from .names import hf_name
from .reader import llama_cpp_logprobs, load_gguf_model, tensor_types
from .types import TYPES

__all__ = ["LLAMA_CPP_MISSING", "LLAMA_SETTINGS", "Agreement", "activation_type", "ggml_activations",
           "linear_weight_types", "llama_cpp_agreement", "llama_cpp_available", "require_llama_cpp",
           "roundtrip_activations"]

# llama.cpp context settings that change only the float arithmetic (summation order, softmax, KV precision)
LLAMA_SETTINGS = {
    "default": {},  # fp32 KV cache, no flash attention (qlab.gguf.reader.open_llama)
    "flash_attn": {"flash_attn": True},
    "kv_f16": {"kv_type": "f16"},
}


def activation_type(weight_type: str) -> str:
    """The type ggml converts a matmul's activations to for weights of weight_type (the registry's vec_dot_type)."""
    t = TYPES.get(weight_type.upper())
    if t is None or t.vec_dot_type is None:
        raise BadArgumentError(f"no ggml activation type known for {weight_type!r}: one of "
                               f"{', '.join(n for n, t in TYPES.items() if t.vec_dot_type)}")
    return t.vec_dot_type


_ACTIVATION_TYPES = {t.vec_dot_type for t in TYPES.values() if t.vec_dot_type}  # F32 F16 BF16 Q8_0 Q8_1 Q8_K


def _is_block(act: str) -> bool:
    """Whether activations of type act are quantized in blocks (Q8_0, Q8_1, Q8_K) rather than cast (F16, BF16)."""
    return act in _ACTIVATION_TYPES and TYPES[act].block_size > 1


def roundtrip_activations(x: torch.Tensor, act: str) -> torch.Tensor:
    """x [..., K] float -> what ggml's matmul multiplies after converting x to act (Q8_0/Q8_1/Q8_K/F16/F32)."""
    if act == "F32":
        return x
    if act in ("F16", "BF16"):
        return x.to(torch.float16 if act == "F16" else torch.bfloat16).to(x.dtype)
    if not _is_block(act):
        raise BadArgumentError(f"unknown activation type {act!r}")
    K = x.shape[-1]
    block = TYPES[act].block_size
    if K % block:
        raise BadArgumentError(f"{act} activations need rows of whole {block}-blocks, got {K}")
    x2 = x.reshape(-1, K).to(torch.float32)
    return q8_roundtrip(x2, "Q8_K" if act == "Q8_K" else "Q8_0").reshape(x.shape).to(x.dtype)


def linear_weight_types(path: str | os.PathLike) -> dict[str, str]:
    """{Hugging Face Linear name: GGML type of its weight in the file}; lm_head is output.weight, or the tied
    token_embd.weight (llama.cpp multiplies by the embedding then)."""
    types = tensor_types(path)
    out = {}
    for g, t in types.items():
        name = hf_name(g)
        if name is not None and name != "model.embed_tokens.weight":
            out[name.removesuffix(".weight")] = t
    out["lm_head"] = types.get("output.weight", types.get("token_embd.weight", "F32"))
    return out


def _hook(act: str, jitter: float, gen: torch.Generator, module: nn.Module, args: tuple):
    x = args[0]
    if jitter:
        x = x * (1 + jitter * torch.randn(x.shape, generator=gen, dtype=x.dtype))
    return (roundtrip_activations(x, act), *args[1:])


@contextmanager
def ggml_activations(model: nn.Module, types: dict[str, str], jitter: float = 0.0, seed: int = 0) -> Iterator:
    """Within the block, every nn.Linear of model rounds its input as ggml would for its weight type.

    types: {Linear name: GGML weight type} (``linear_weight_types(path)``). jitter > 0 multiplies each input by
    (1 + jitter·N(0, 1)) first (seeded), drawing another sample of the rounding noise."""
    gen = torch.Generator().manual_seed(seed)
    handles = []
    try:
        for name, mod in model.named_modules():
            if not isinstance(mod, nn.Linear):
                continue
            if name not in types:
                raise BadArgumentError(f"no GGML type given for the Linear {name!r}")
            act = activation_type(types[name])
            if act != "F32":
                handles.append(mod.register_forward_pre_hook(partial(_hook, act, jitter if _is_block(act) else 0.0,
                                                                     gen)))
        yield model
    finally:
        for h in handles:
            h.remove()


@dataclass
class Agreement:
    """Perplexities of one GGUF file: qlab float, qlab with ggml's activation rounding (one per draw), llama.cpp
    (one per context setting); gaps are llama.cpp / qlab − 1 (means of log-perplexity over draws/settings)."""

    ppl_float: float
    ppl_ggml: list[float]
    ppl_llama: dict[str, float]
    kl_float: float = 0.0  # KL(P_qlab float ‖ P_llama.cpp default), per scored token
    kl_ggml: list[float] = field(default_factory=list)  # KL(P_qlab ggml draw ‖ P_llama.cpp default)
    kl_llama_self: dict[str, float] = field(default_factory=dict)  # KL(P_llama default ‖ P_llama setting)
    tokens: int = 0

    @staticmethod
    def _gmean(xs) -> float:
        xs = list(xs)
        return math.exp(sum(math.log(x) for x in xs) / len(xs))

    @property
    def llama_mean(self) -> float:
        return self._gmean(self.ppl_llama.values())

    @property
    def ggml_mean(self) -> float:
        return self._gmean(self.ppl_ggml)

    @property
    def gap_float(self) -> float:
        """llama.cpp (default settings) against qlab's float evaluation."""
        return self.ppl_llama["default"] / self.ppl_float - 1

    @property
    def gap_ggml(self) -> float:
        """llama.cpp's mean over settings against qlab's mean over activation-rounding draws."""
        return self.llama_mean / self.ggml_mean - 1

    @property
    def llama_spread(self) -> float:
        """max/min − 1 of llama.cpp's perplexities over its settings: how well llama.cpp agrees with itself."""
        v = list(self.ppl_llama.values())
        return max(v) / min(v) - 1

    def to_dict(self) -> dict:
        return asdict(self) | {"gap_float": self.gap_float, "gap_ggml": self.gap_ggml,
                               "llama_spread": self.llama_spread}


def _nll(lp: torch.Tensor, w: torch.Tensor) -> float:
    return -float(lp.gather(1, w[1:, None]).sum())


def _kl(a: torch.Tensor, b: torch.Tensor) -> float:
    """Summed KL(P_a ‖ P_b) over the positions of a window."""
    return float((a.exp() * (a - b)).sum())


@torch.no_grad()
def llama_cpp_agreement(path: str | os.PathLike, tokens: torch.Tensor, ctx: int = 512, draws: int = 3,
                        settings: tuple[str, ...] = ("default", "flash_attn", "kv_f16"), jitter: float = 1e-6,
                        model: nn.Module | None = None, progress: bool = False) -> Agreement:
    """Perplexity of a GGUF file by qlab (float; ggml-rounded activations, `draws` seeded draws) and by llama.cpp
    (each of `settings`, see LLAMA_SETTINGS), same tokens and protocol (qlab.eval windows).

    model: the file already loaded by load_gguf_model (else it is loaded here). Draw 0 has no jitter."""
    from tqdm.auto import tqdm

    from ..eval import window_logprobs, windows

    if draws < 1:
        raise BadArgumentError(f"draws must be >= 1, got {draws}")
    require_llama_cpp()  # before loading the model: say it now, not after a minute
    unknown = [s for s in settings if s not in LLAMA_SETTINGS]
    if unknown or "default" not in settings:
        raise BadArgumentError(f"settings must include 'default' and be among {list(LLAMA_SETTINGS)}, got {settings}")
    ws = windows(tokens, ctx)
    types = linear_weight_types(path)
    if model is None:
        model, _ = load_gguf_model(path, tokenizer=False)
    llama = {s: llama_cpp_logprobs(path, ws, ctx, **LLAMA_SETTINGS[s]) for s in settings}  # one context each
    nll_f = kl_f = 0.0
    nll_l = dict.fromkeys(settings, 0.0)
    kl_l = dict.fromkeys(settings, 0.0)
    nll_g, kl_g = [0.0] * draws, [0.0] * draws
    for i, w in enumerate(tqdm(ws, desc="llama.cpp agreement", disable=not progress)):
        lp_l = {s: next(g) for s, g in llama.items()}
        ref = lp_l["default"]
        for s, lp in lp_l.items():
            nll_l[s] += _nll(lp, w)
            kl_l[s] += _kl(ref, lp)
        lp = window_logprobs(model, w)
        nll_f, kl_f = nll_f + _nll(lp, w), kl_f + _kl(lp, ref)
        for k in range(draws):
            with ggml_activations(model, types, jitter=jitter if k else 0.0, seed=1000 * k + i):
                lp = window_logprobs(model, w)
            nll_g[k] += _nll(lp, w)
            kl_g[k] += _kl(lp, ref)
    for g in llama.values():
        g.close()
    n = sum(len(w) - 1 for w in ws)
    return Agreement(
        ppl_float=math.exp(nll_f / n), ppl_ggml=[math.exp(x / n) for x in nll_g],
        ppl_llama={s: math.exp(x / n) for s, x in nll_l.items()}, kl_float=kl_f / n, kl_ggml=[x / n for x in kl_g],
        kl_llama_self={s: x / n for s, x in kl_l.items() if s != "default"}, tokens=n)
