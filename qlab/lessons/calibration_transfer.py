"""Why GPTQ's gain can vanish on text it was not calibrated on, measured one Linear at a time.

GPTQ minimises the output error on the calibration inputs, tr(ΔW·H_cal·ΔWᵀ). Its column sweep is free to move
rounding error into input directions where H_cal is small, because the calibration text barely excites them.
Another text is scored by tr(ΔW·H_other·ΔWᵀ). If that text excites those same directions, the error GPTQ hid
there shows up again. The generalised eigenvalues μ of (H_other, H_cal + λI) measure the mismatch: μ_i is how
much more energy the other text puts along direction i than the calibration text does. When H_other ∝ H_cal,
every μ is equal. A few large μ mark the directions where GPTQ's error gets amplified.

Everything here is local to one Linear: the same float inputs (each text's Hessian of the float model's
inputs to that Linear) and the same quantized weights, scored under each text's Hessian. The model-level
measurement (perplexity and KL through the whole quantized model) is benchmarks/calibration_transfer.py.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import BadArgumentError
from ..stats import relative_output_error


def transfer_errors(W: torch.Tensor, quantized: Mapping[str, torch.Tensor], hessians: Mapping[str, torch.Tensor]
                    ) -> dict[str, dict[str, float]]:
    """{method: {text: ‖ΔW·X_text‖²/‖W·X_text‖²}}. Every dequantized weight in `quantized` (e.g. "rtn", "gptq")
    is scored under every text's Hessian in `hessians` (e.g. "wiki", "code")."""
    for name, W_hat in quantized.items():
        if W_hat.shape != W.shape:
            raise BadArgumentError(f"{name}: Ŵ {tuple(W_hat.shape)} does not match W {tuple(W.shape)}")
    return {m: {t: relative_output_error(W, W_hat, H) for t, H in hessians.items()} for m, W_hat in quantized.items()}


def amplification(errors: Mapping[str, Mapping[str, float]], method: str, baseline: str, calibration: str,
                  other: str) -> float:
    """How much more the error of `method` grows from the calibration text to the other text than the error of
    `baseline` does: (e_m(other) / e_m(cal)) / (e_b(other) / e_b(cal)). RTN does not look at H, so its ratio
    only reflects how hard the other text is for this Linear. A value above 1 means GPTQ put its error where
    the other text looks."""
    m, b = errors[method], errors[baseline]
    return (m[other] / m[calibration]) / (b[other] / b[calibration])


def generalised_spectrum(H_cal: torch.Tensor, H_other: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """The eigenvalues μ (ascending) of H_other·v = μ·(H_cal + λ·mean(diag H_cal)·I)·v, with λ = `damp`, the
    dampening GPTQ itself adds. Both matrices are normalised to mean diagonal 1 first, so μ ≡ 1 when the two
    texts excite every direction in the same proportion. Computed in float64 as the eigenvalues of the symmetric
    L⁻¹·H_other·L⁻ᵀ, where L is the Cholesky factor of the damped H_cal."""
    if H_cal.shape != H_other.shape or H_cal.dim() != 2 or H_cal.shape[0] != H_cal.shape[1]:
        raise BadArgumentError(f"need two square Hessians of one shape, got {tuple(H_cal.shape)} and "
                               f"{tuple(H_other.shape)}")
    if damp <= 0:
        raise BadArgumentError(f"damp must be > 0 (a fraction of mean diag H), got {damp}")
    A = H_cal.double() / torch.diag(H_cal).double().mean()
    B = H_other.double() / torch.diag(H_other).double().mean()
    L = torch.linalg.cholesky(A + damp * torch.eye(A.shape[0], dtype=torch.float64))
    C = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, B, upper=False).T, upper=False)
    return torch.linalg.eigvalsh((C + C.T) / 2)


def spectrum_summary(mu: torch.Tensor) -> dict[str, float]:
    """The few numbers of a generalised spectrum worth printing: its largest value, its median, their ratio
    (how lopsided the mismatch is), and the share of directions with μ > 10·median."""
    med = float(mu.median())
    top = float(mu.max())
    return {"max": top, "median": med, "max_over_median": top / med if med > 0 else float("inf"),
            "share_over_10x_median": float((mu > 10 * med).double().mean())}
