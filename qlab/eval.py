"""Evaluation: perplexity, and KL divergence / top-1 agreement of a model against a reference.

Protocol (printed with every result): the token stream is cut into consecutive, non-overlapping windows of
`ctx` tokens (the last may be shorter); each window is run on its own, and every token of a window except its
first is scored, given the tokens before it in that window. Perplexity = exp(mean negative log-likelihood over
the scored tokens). KL(P_ref ‖ P_model) and top-1 agreement are averaged over the same scored positions.
(llama.cpp's perplexity tool scores only the second half of each window; qlab scores all but the first token.)
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import BadArgumentError, TextTooShortError


def protocol(ctx: int, n_tokens: int) -> str:
    return (f"{n_tokens} tokens in non-overlapping {ctx}-token windows, every token but each window's first "
            f"scored")


def windows(tokens: torch.Tensor, ctx: int) -> list[torch.Tensor]:
    if tokens.dim() != 1:
        raise BadArgumentError(f"tokens must be 1-D [T], got {tuple(tokens.shape)}")
    if ctx < 2:
        raise BadArgumentError(f"context length must be ≥ 2, got {ctx}")
    ws = [tokens[i : i + ctx] for i in range(0, len(tokens), ctx)]
    ws = [w for w in ws if len(w) >= 2]
    if not ws:
        raise TextTooShortError(f"{len(tokens)} tokens cannot fill a window of 2 tokens: give more text")
    return ws


@torch.no_grad()
def window_logprobs(model: nn.Module, window: torch.Tensor) -> torch.Tensor:
    """log-softmax of the model's predictions for tokens 1..len−1 of the window: [len−1, vocab] float32."""
    logits = model(window[None], use_cache=False).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1)


@dataclass
class EvalResult:
    perplexity: float
    tokens: int  # scored tokens
    seconds: float
    ctx: int
    kl: float | None = None  # mean KL(P_ref ‖ P_model) in nats
    top1: float | None = None  # fraction of positions where both models' most likely token agree

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def perplexity(model: nn.Module, tokens: torch.Tensor, ctx: int = 512, progress: bool = True) -> EvalResult:
    """Perplexity under the module's protocol."""
    start = time.perf_counter()
    nll, n = 0.0, 0
    for w in tqdm(windows(tokens, ctx), desc="perplexity", disable=not progress):
        lp = window_logprobs(model, w)
        nll -= float(lp.gather(1, w[1:, None]).sum())
        n += len(w) - 1
    return EvalResult(math.exp(nll / n), n, time.perf_counter() - start, ctx)


class Evaluator:
    """Perplexity, KL and top-1 agreement against a reference model whose log-probabilities are computed once
    and cached (float32, [tokens, vocab] per window) so many quantized variants can be compared cheaply."""

    def __init__(self, reference: nn.Module, tokens: torch.Tensor, ctx: int = 512, progress: bool = True):
        self.tokens, self.ctx, self.progress = tokens, ctx, progress
        self.windows = windows(tokens, ctx)
        start = time.perf_counter()
        self.ref_logprobs = [window_logprobs(reference, w) for w in
                             tqdm(self.windows, desc="reference logits", disable=not progress)]
        nll = -sum(float(lp.gather(1, w[1:, None]).sum()) for lp, w in zip(self.ref_logprobs, self.windows))
        n = sum(len(w) - 1 for w in self.windows)
        self.reference = EvalResult(math.exp(nll / n), n, time.perf_counter() - start, ctx, kl=0.0, top1=1.0)

    @property
    def protocol(self) -> str:
        return protocol(self.ctx, len(self.tokens))

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> EvalResult:
        start = time.perf_counter()
        nll = kl = agree = 0.0
        n = 0
        for w, ref in tqdm(list(zip(self.windows, self.ref_logprobs)), desc="evaluating", disable=not self.progress):
            lp = window_logprobs(model, w)
            nll -= float(lp.gather(1, w[1:, None]).sum())
            kl += float((ref.exp() * (ref - lp)).sum())
            agree += float((ref.argmax(-1) == lp.argmax(-1)).sum())
            n += len(w) - 1
        return EvalResult(math.exp(nll / n), n, time.perf_counter() - start, self.ctx, kl=kl / n, top1=agree / n)
