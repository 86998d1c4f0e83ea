"""GPTQ (Frantar et al. 2022): quantize a Linear layer column by column, compensating each column's rounding
error on the columns not yet quantized, with the layer Hessian H = 2XXᵀ/n of its calibration inputs X.

The fast form (GPTQ §3, Algorithm 1):
    0. (optional, qlab's) H ← (1 − γ)·H + γ·diag(H): shrink the correlations between inputs toward zero
       (`shrink` = γ), keeping each input's energy — see GPTQQuantizer for why;
    1. H += λ·mean(diag H)·I (dampening λ = `damp`; retried ×10 while the Cholesky factorisation fails);
    2. U = chol(H⁻¹)ᵀ, upper — row j of U is row j of the inverse Hessian of the columns ≥ j, divided by its
       root diagonal, so one factorisation replaces every OBS update of H⁻¹ (the "Cholesky trick");
    3. sweep columns j in order (act-order: descending diag H): q_j = quant(w_j), e_j = (w_j − q_j)/U_jj,
       W[:, j+1:] −= e_j U[j, j+1:] — but only inside a block of B columns; the rest of W receives the
       block's errors at once, W[:, i2:] −= E U[i1:i2, i2:] ("lazy batch updates").
Groups get their scale when the sweep reaches their first column, from the error-compensated weights then
(static groups: from the original weights, before the sweep). `qlab.gptq_naive` is the unblocked oracle.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import nn

from .affine import check_bits, check_finite, quantize_affine, resolve_group_size, scale_zero
from .errors import BadArgumentError, NonFiniteError, NumericalError, QlabWarning, TextTooShortError
from .qtensor import QuantizedTensor
from .quantizer import BlockResult
from .stats import HessianAccumulator, forward_rows, modules_by_name, record_inputs, relative_output_error
from .walk import PassHooks, is_skipped, linear_layers


def gptq_grid(Wg: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero-point of each row of Wg: qlab.affine's grid (integer zero-point), with the scale rounded to
    fp16 — the precision a GPTQ checkpoint stores — so the exported model equals the one qlab evaluates."""
    s, z = scale_zero(Wg, bits, symmetric)
    s16 = s.to(torch.float16).to(s.dtype)
    tiny = torch.tensor(2.0**-24, dtype=s.dtype)  # smallest fp16 subnormal: a scale that underflowed
    return torch.where(s16 > 0, s16, tiny), z


def column_error_contributions(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Share of each input column k in the relative output error: c_k = Σ_n ΔW[n,k]·(ΔW H)[n,k] / tr(W H Wᵀ),
    with ΔW = W − Ŵ. Σ_k c_k = layer_reconstruction_error; a c_k < 0 marks a column whose error cancels others'."""
    W, W_hat, H = W.double(), W_hat.double(), H.double()
    D = W - W_hat
    return ((D @ H) * D).sum(0) / float(((W @ H) * W).sum())


@torch.no_grad()
def layer_hessians(model: nn.Module, ids: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """H = 2XXᵀ/n of the inputs of the named Linears of the float model over ids [n, T] (a full forward per row)."""
    mods = modules_by_name(model, names)
    accs = {n: HessianAccumulator(m.in_features, n) for n, m in mods.items()}
    forward_rows(model, ids, mods, lambda n, x: accs[n].add(x))
    return {n: a.H for n, a in accs.items()}


def dampened_inverse_cholesky(
    H: torch.Tensor, damp: float = 0.01, name: str = "layer", max_retries: int = 3
) -> tuple[torch.Tensor, float, int]:
    """U = chol((H + λ·mean(diag H)·I)⁻¹), upper; λ starts at `damp` and grows ×10 at each failed factorisation.
    Returns (U, λ used, number of retries). Raises NumericalError naming the layer when all tries fail."""
    if not torch.isfinite(H).all():
        raise NonFiniteError(f"{name}: the Hessian has NaN/Inf entries (NaN activations in the calibration pass)")
    K = H.shape[0]
    mean_diag = float(torch.diag(H).mean())
    eye = torch.eye(K, dtype=H.dtype)
    lam = damp
    for attempt in range(max_retries + 1):
        Hd = H + lam * mean_diag * eye
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0 and torch.isfinite(U).all():
                return U, lam, attempt
        lam *= 10
    raise NumericalError(
        f"{name}: the Hessian stays non positive definite after {max_retries} retries (dampening up to "
        f"{lam / 10:g}·mean(diag H)); check the calibration activations of this layer, or raise --damp"
    )


@contextmanager
def single_thread():
    """Run torch on one thread: the column sweep is thousands of small ops, and thread hand-offs (worse on a
    busy machine) cost more than they save; the layer's few large products are small enough for one core."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def gptq_quantize_layer(
    W: torch.Tensor,
    H: torch.Tensor,
    bits: int = 4,
    group_size: int | str | None = 128,
    symmetric: bool = True,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
    static_groups: bool = False,
    name: str = "layer",
    max_retries: int = 3,
    shrink: float = 0.0,
) -> tuple[QuantizedTensor, dict]:
    """Quantize W [N, K] with GPTQ given its Hessian H [K, K] (2XXᵀ/n, undamped). Computes in float64 when W
    or H is float64, else float32. `shrink` γ ∈ [0, 1] replaces H by (1 − γ)·H + γ·diag(H) first (γ = 1: no
    error compensation between columns, plain rounding on GPTQ's grid). Returns (QuantizedTensor, info) with info
    keys damp (λ used), damp_retries, dead_inputs, perm (sweep order), obs_loss (Σ e²/2 of the OBS objective)
    and seconds."""
    with single_thread():
        return _gptq(W, H, bits, group_size, symmetric, damp, block_size, act_order, static_groups, name, max_retries,
                     shrink)


def shrink_to_diagonal(H: torch.Tensor, shrink: float) -> torch.Tensor:
    """(1 − γ)·H + γ·diag(H): the off-diagonal entries (correlations between inputs) scaled by 1 − γ, the
    diagonal kept bit for bit. Still positive semi-definite: a convex combination of two such matrices."""
    if not 0.0 <= shrink <= 1.0:
        raise BadArgumentError(f"shrink must be in [0, 1] (0: the Hessian as measured, 1: its diagonal), got {shrink}")
    if shrink == 0.0:
        return H
    out = H * (1.0 - shrink)
    out.diagonal().copy_(H.diagonal())
    return out


def _gptq(W, H, bits, group_size, symmetric, damp, block_size, act_order, static_groups, name, max_retries,
          shrink=0.0):
    t0 = time.perf_counter()
    check_bits(bits)
    if W.dim() != 2 or H.shape != (W.shape[1], W.shape[1]):
        raise BadArgumentError(f"{name}: need W [N, K] and H [K, K], got {tuple(W.shape)} and {tuple(H.shape)}")
    if block_size < 1:
        raise BadArgumentError(f"block_size must be ≥ 1, got {block_size}")
    if damp <= 0:
        raise BadArgumentError(f"damp must be > 0 (a fraction of mean(diag H), e.g. 0.01), got {damp}")
    check_finite(W, f"weight of {name}")
    dtype = torch.float64 if torch.float64 in (W.dtype, H.dtype) else torch.float32
    W = W.detach().to(dtype).clone()
    H = shrink_to_diagonal(H.detach().to(dtype), shrink).clone()
    N, K = W.shape
    gs, granularity = resolve_group_size(group_size, K)
    if granularity == "tensor":
        raise BadArgumentError("GPTQ quantizes per channel or per group; use group_size=None or an integer")
    grouped = granularity == "group"
    G = K // gs

    dead = torch.diag(H) == 0  # inputs that never fired: H has nothing to say, keep them out of the inverse
    H[dead, dead] = 1

    perm = torch.arange(K)
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
    inv_perm = torch.argsort(perm)

    scales = torch.zeros(N, G, dtype=dtype)
    zeros = torch.zeros(N, G, dtype=dtype)
    dynamic = grouped and not static_groups
    if dynamic:
        col_group = torch.arange(K) // gs  # group of sweep position j (groups follow the sweep order)
    else:  # per channel or static groups: scales from the original weights, groups in original column order
        for g in range(G):
            scales[:, g], zeros[:, g] = gptq_grid(W[:, g * gs:(g + 1) * gs], bits, symmetric)
        col_group = perm // gs  # group of the column at sweep position j

    W = W[:, perm]
    H = H[perm][:, perm]
    U, lam, retries = dampened_inverse_cholesky(H, damp, name, max_retries)
    del H

    # the sweep works on Wᵀ [K, N] so that a column of W is one contiguous row in memory
    Wt = W.T.contiguous()
    del W
    codes = torch.zeros(K, N, dtype=torch.uint8)
    loss = torch.zeros(N, dtype=dtype)
    St, Zt = scales.T.contiguous(), zeros.T.contiguous()  # [G, N]
    maxq = 2**bits - 1
    groups = col_group.tolist()
    diag = torch.diag(U).tolist()
    for i1 in range(0, K, block_size):
        i2 = min(i1 + block_size, K)
        W1 = Wt[i1:i2].clone()  # the block, kept fully up to date
        E1 = torch.zeros(i2 - i1, N, dtype=dtype)  # its scaled errors, applied to W[:, i2:] after the block
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if dynamic and j % gs == 0:  # a group starts: scale from the current, error-compensated weights
                end = min(j + gs, K)
                cur = W1[i:end - i1]
                if end > i2:  # the group reaches past the block: apply the block's pending updates first
                    cur = torch.cat([cur, Wt[i2:end] - U[i1:i2, i2:end].T @ E1])
                St[j // gs], Zt[j // gs] = gptq_grid(cur.T, bits, symmetric)
            # the column's code, its error scaled by U_jj, and the OBS update of the block's later columns,
            # written with as few tensor operations as possible (this loop runs once per input column)
            s, z, w, e = St[groups[j]], Zt[groups[j]], W1[i], E1[i]
            c = torch.div(w, s).add_(z).round_().clamp_(0, maxq)  # = qlab.affine.round_codes(w, s, z, bits)
            codes[j] = c
            torch.sub(w, c.sub_(z).mul_(s), out=e).div_(diag[j])
            W1[i + 1:].addr_(U1[i, i + 1:], e, alpha=-1)
        loss += E1.square().sum(0) / 2
        Wt[i2:] -= U[i1:i2, i2:].T @ E1  # lazy batch update of every later column
    scales, zeros = St.T, Zt.T
    codes = codes.T

    g_idx = col_group[inv_perm].to(torch.int32)
    qt = QuantizedTensor(
        codes=codes[:, inv_perm].contiguous(), scales=scales.float(), zeros=zeros.float(), bits=bits,
        group_size=gs, symmetric=symmetric, g_idx=g_idx, granularity=granularity,
    )
    info = {
        "damp": lam, "damp_retries": retries, "dead_inputs": int(dead.sum()), "perm": perm,
        "obs_loss": float(loss.sum()), "seconds": time.perf_counter() - t0,
    }
    return qt, info


# ----------------------------------------------------------------------------------------------------------
# model level: the block quantizer of qlab.pipeline


class _Stop(Exception):
    pass


def _collect_hessians(
    block: nn.Module, inputs, modules: dict[str, nn.Linear], prefix: str, stop_early: bool
) -> tuple[list[list[str]], dict[str, HessianAccumulator]]:
    """Run every calibration sample through the block and accumulate one Hessian per distinct input:
    Linears fed the same tensor (q/k/v, gate/up) share one. Returns (groups of names sharing an input, in
    execution order; accumulator of each group's first name). With stop_early the forward stops once every
    module has seen its input."""
    groups: list[list[str]] = []
    accs: dict[str, HessianAccumulator] = {}
    leader: dict[str, str] = {}
    seen: list[tuple[torch.Tensor, str]] = []  # this sample's inputs (held, so addresses stay unique)

    def fn(name: str, x: torch.Tensor) -> None:
        if name not in leader:  # first sample: group modules by identical input tensor
            for t, other in seen:
                if t.data_ptr() == x.data_ptr() and t.shape == x.shape and t.stride() == x.stride():
                    leader[name] = leader[other]
                    next(g for g in groups if g[0] == leader[other]).append(name)
                    break
            else:
                leader[name] = name
                groups.append([name])
                accs[name] = HessianAccumulator(x.shape[1], f"{prefix}.{name}" if prefix else name)
        seen.append((x, name))
        if leader[name] == name:
            accs[name].add(x)
        if stop_early and len(seen) == len(modules):
            raise _Stop

    with torch.no_grad(), record_inputs(modules, fn):
        for h in inputs.batches():
            seen.clear()
            try:
                inputs.forward(block, h)
            except _Stop:
                pass
    seen.clear()
    return groups, accs


FORWARD_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


def forward_compute_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """The autocast dtype of a `forward_dtype` setting: None for float32 (no autocast), torch.bfloat16."""
    key = str(value).removeprefix("torch.") if value is not None else "float32"
    if key not in FORWARD_DTYPES:
        raise BadArgumentError(f"forward_dtype must be one of {list(FORWARD_DTYPES)}, got {value!r}")
    return FORWARD_DTYPES[key]


class GPTQQuantizer:
    """Block quantizer (qlab.quantizer contract): GPTQ on every Linear of a decoder block, in place.

    Hessians come from the block's inputs (outputs of the already-quantized previous blocks). With
    true_sequential the Linears are quantized group by group in execution order (q/k/v, o, gate/up, down),
    each group's Hessian taken after the groups before it were quantized. When one forward over every
    calibration token at once fits in `max_pass_bytes` (estimated activations), that is done in a single pass:
    the first Linear of each group quantizes its group from the whole batch's inputs before the forward goes on.
    That pass is the walk's own pass that makes the next block's inputs (the BlockResult's `during_pass`): one
    forward per block instead of a Hessian pass plus an output pass. Otherwise each group re-runs the block in
    batches. Per-layer reconstruction errors of GPTQ and of RTN (same grid) are kept in
    `self.layer_stats`.

    `forward_dtype` is the dtype of the calibration forward passes (the Hessian pass and the quantized block's
    pass that makes the next block's inputs): "float32" (default) or "bfloat16" — autocast, as the GPTQ reference
    runs its passes in fp16 on a GPU; the Hessians, the sweep and the quantized weights stay float32. On a CPU with
    bf16 matrix units it is the faster choice, and the inputs GPTQ sees drift ≈ 1 % per block from float32.

    `shrink` γ replaces every Hessian by (1 − γ)·H + γ·diag(H) before the sweep (qlab's addition to GPTQ). Why:
    the sweep moves each column's rounding error onto the columns correlated with it, so the error lands in
    input directions the calibration text barely excites (small eigenvalues of H). A text of another kind
    excites some of them hundreds of times more (the generalised eigenvalues of (H_code, H_wiki): max/median ≈
    760 on block 10's up_proj, ≈ 120 for held-out wiki; qlab.lessons.calibration_transfer, notebook 03), and the
    error GPTQ hid there comes back. Per Linear on float inputs (3-bit g64, wiki calibration, geometric mean over
    the 210 Linears; benchmarks/results/calibration_diagnosis.json), GPTQ's output error is 0.38× RTN's on held-out
    wiki and 0.41× on news, but 0.83× on code. On code the MLP Linears (gate/up/down 1.05–1.11×) and the last
    third of the blocks (1.04×) do WORSE than RTN, while q/k/v keep most of their gain. The median over shared
    inputs of max/median μ is 81 for held-out wiki and 1,021 for code.
    Shrinking the correlations keeps each input's weight (the diagonal, what AWQ and the imatrix use) and trusts
    the calibration sample's cross-channel structure only halfway: with γ = 0.5 the ratios become 0.42 / 0.44 /
    0.65, and GPTQ beats RTN on code in 93 % of the Linears instead of 60 %. It is not the same as damping: λ·I
    lifts every direction by the same amount, whatever its energy, and at the model level damp 0.3 is worse on
    two of the three texts (recovery 62 % wiki, 64 % news, 16 % code, against 63 / 64 / 22 % at 0.01). Mixing the
    sources does not beat it either: calibrated on the other two sources with γ = 0.5, held-out recovery is 65 %
    wiki, 70 % news and 54 % code, against 73 % news and 57 % code from wiki alone. So the calibration default
    stays a single text (qlab.data.DEFAULT_CALIBRATION), and the fix lives in the Hessian.

    Defaults (the toolkit's, shared by `qlab quantize`; `gptq_quantize_layer` keeps the paper's basic algorithm):
    act-order and true-sequential (82 % perplexity recovery in 134 s where the basic two-pass form gives 64 %,
    benchmarks/results/gptq_calibration.md), asymmetric grids in groups of 64 (lower perplexity than symmetric
    on both calibration seeds, and than groups of 192 in every row, benchmarks/results/defaults.json; 128, the
    field's usual size, does not divide the embedded model's 576-wide rows), and shrink 0.5 (3-bit g64, 128 × 512
    wiki calibration tokens, perplexity recovery of RTN's increase on each text's held-out split: wiki 63 % → 71 %,
    news 64 % → 73 %, code 22 % → 57 %; benchmarks/results/calibration_transfer.json)."""

    def __init__(
        self, bits: int = 4, group_size: int | str | None = 64, symmetric: bool = False, damp: float = 0.01,
        block_size: int = 128, act_order: bool = True, static_groups: bool = False,
        true_sequential: bool = True, min_tokens: int = 128, progress: bool = True,
        forward_dtype: str | torch.dtype = "float32", max_pass_bytes: int = 4 << 30, shrink: float = 0.5,
    ) -> None:
        check_bits(bits)
        shrink_to_diagonal(torch.zeros(1, 1), shrink)  # checks the value before any calibration
        self.forward_dtype = forward_compute_dtype(forward_dtype)
        self.bits, self.group_size, self.symmetric, self.damp = bits, group_size, symmetric, damp
        self.block_size, self.act_order, self.static_groups = block_size, act_order, static_groups
        self.true_sequential, self.min_tokens, self.progress = true_sequential, min_tokens, progress
        self.max_pass_bytes, self.shrink = max_pass_bytes, shrink
        self.layer_stats: dict[str, dict] = {}
        self.single_pass_blocks = 0  # how many blocks took that path
        self.sweep_seconds = 0.0  # time spent in the column sweeps (gptq_quantize_layer), all blocks together

    @property
    def config(self) -> dict:
        return {"method": "gptq", "bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric,
                "damp": self.damp, "shrink": self.shrink, "block_size": self.block_size, "act_order": self.act_order,
                "static_groups": self.static_groups, "true_sequential": self.true_sequential,
                "forward_dtype": str(self.forward_dtype or torch.float32).removeprefix("torch.")}

    def describe(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        g = self.group_size if isinstance(self.group_size, int) else "channel"
        extras = [x for x, on in ((f"shrink {self.shrink:g}", True), (f"damp {self.damp:g}", self.damp != 0.01),
                                  ("act-order", self.act_order), ("static-groups", self.static_groups),
                                  ("true-sequential", self.true_sequential),
                                  ("bf16 forward", self.forward_dtype == torch.bfloat16)) if on]
        return f"GPTQ int{self.bits} {kind} g{g}" + (f" ({', '.join(extras)})" if extras else "")

    def quantize_block(self, block: nn.Module, inputs, prefix: str = "", skip=()) -> BlockResult:
        from tqdm.auto import tqdm

        if inputs is None:
            raise BadArgumentError("GPTQ needs calibration data: pass calibration ids to quantize_model")
        inputs = replace(inputs, compute_dtype=self.forward_dtype)
        modules = {n: m for n, m in linear_layers(block).items()
                   if not is_skipped(f"{prefix}.{n}" if prefix else n, skip)}
        if not modules:
            return BlockResult({})
        n_tokens = sum(h.shape[0] * h.shape[1] if h.dim() == 3 else h.shape[0] for h in inputs.hidden)
        if n_tokens < self.min_tokens:
            raise TextTooShortError(
                f"{n_tokens} calibration tokens reach {prefix or 'the block'}; GPTQ needs at least "
                f"{self.min_tokens} (more samples or longer sequences: --nsamples, --seqlen)"
            )
        full = {n: f"{prefix}.{n}" if prefix else n for n in modules}
        out: dict[str, QuantizedTensor] = {}
        bar = tqdm(total=len(modules), desc=f"GPTQ {prefix}".strip(), leave=False, disable=not self.progress)
        if self.true_sequential:
            order, _ = _collect_hessians(block, _first(inputs), modules, prefix, stop_early=True)
            if self._fits_one_pass(inputs, modules):
                return BlockResult(out, during_pass=self._single_pass(order, modules, full, out, bar))
            for names in order:  # too large for one pass: one partial pass per group
                sub = {n: modules[n] for n in names}
                _, accs = _collect_hessians(block, inputs, sub, prefix, stop_early=True)
                out.update(self._quantize_group(names, modules, accs[names[0]], full))
                bar.update(len(names))
        else:
            order, accs = _collect_hessians(block, inputs, modules, prefix, stop_early=True)
            for names in order:
                out.update(self._quantize_group(names, modules, accs[names[0]], full))
                bar.update(len(names))
        bar.close()
        return BlockResult(out)

    def _fits_one_pass(self, inputs, modules: dict[str, nn.Linear]) -> bool:
        """Whether every calibration sample can go through the block in one batch: all [1, T, H] of one shape, and
        the forward's activations (each Linear's output plus a few hidden-sized tensors per token, 4 bytes each)
        within max_pass_bytes."""
        shapes = {tuple(h.shape) for h in inputs.hidden}
        shape = shapes.pop()
        if shapes or len(shape) != 3 or shape[0] != 1:
            return False
        _, T, width = shape
        per_token = sum(m.out_features for m in modules.values()) + 4 * width
        return len(inputs) * T * per_token * 4 <= self.max_pass_bytes

    def _single_pass(self, order, modules, full, out: dict[str, QuantizedTensor], bar) -> PassHooks:
        """True-sequential GPTQ inside the walk's pass over the whole batch: the pre-hook of each group's first
        Linear takes the group's Hessian from the batch's inputs and quantizes the group in place (into `out`)
        before the forward reaches it, so every later group sees the quantized ones before it."""
        groups = {names[0]: names for names in order}

        def quantize_group(name: str, x: torch.Tensor) -> None:
            if full[name] in out:  # called again
                return
            with torch.autocast(x.device.type, enabled=False):  # the sweep in float32 even under a bf16 forward
                acc = HessianAccumulator(x.shape[1], full[name])
                acc.add(x)
                out.update(self._quantize_group(groups[name], modules, acc, full))
            bar.update(len(groups[name]))
            if len(out) == len(modules):
                bar.close()

        self.single_pass_blocks += 1
        return PassHooks({n: modules[n] for n in groups}, quantize_group, whole_batch=True)

    def _quantize_group(
        self, names: Sequence[str], modules: dict[str, nn.Linear], acc: HessianAccumulator, full: dict[str, str]
    ) -> dict[str, QuantizedTensor]:
        """Linears sharing one input share H: GPTQ on their stacked rows equals GPTQ on each (rows are independent)."""
        H = acc.H
        Ws = [modules[n].weight.detach().float() for n in names]
        rows = [w.shape[0] for w in Ws]
        label = ", ".join(full[n] for n in names)
        qt, info = gptq_quantize_layer(
            torch.cat(Ws), H, self.bits, self.group_size, self.symmetric, self.damp, self.block_size,
            self.act_order, self.static_groups, name=label, shrink=self.shrink,
        )
        self.sweep_seconds += info["seconds"]
        if info["damp_retries"]:
            warnings.warn(f"GPTQ: {label}: Cholesky failed at damp={self.damp:g}, used damp={info['damp']:g}",
                          QlabWarning, stacklevel=2)
        out = {}
        r0 = 0
        for n, W, r in zip(names, Ws, rows):
            part = QuantizedTensor(
                codes=qt.codes[r0:r0 + r], scales=qt.scales[r0:r0 + r], zeros=qt.zeros[r0:r0 + r], bits=qt.bits,
                group_size=qt.group_size, symmetric=qt.symmetric, g_idx=qt.g_idx.clone(),
                granularity=qt.granularity,
            )
            r0 += r
            W_hat = part.dequantize(torch.float32)
            rtn = quantize_affine(W, self.bits, self.group_size, self.symmetric).dequantize(torch.float32)
            self.layer_stats[full[n]] = {
                "gptq": relative_output_error(W, W_hat, H), "rtn": relative_output_error(W, rtn, H),
                "damp": info["damp"], "damp_retries": info["damp_retries"], "dead_inputs": info["dead_inputs"],
                "tokens": acc.n,
            }
            lin = modules[n]
            lin.weight.data.copy_(W_hat.to(lin.weight.dtype))
            out[full[n]] = part
        return out


def _first(inputs):
    """The same BlockInputs holding only its first sample (to discover the execution order cheaply)."""
    return inputs.like(inputs.hidden[:1])
