"""What a GPTQ calibration costs, counted from a decoder's shapes: FLOPs per phase and the memory it holds.

    cost = calibration_cost(LLAMA2_7B, n_samples=128, seqlen=512)
    cost.flops            # {"forward": ..., "attention": ..., "hessian": ..., "sweep": ..., "inverse": ...}
    cost.total_flops

Notebook 03 turns a measured calibration time of the embedded model into a throughput (FLOP/s) with this count and
estimates a 7B calibration from it — an estimate, not a measurement. The count, per decoder block and N = n_samples ·
seqlen calibration tokens (Llama-style block: q/k/v/o, gate/up/down; 1 FLOP = one multiply or one add):

    forward    2·N·Σ d_out·d_in over the block's Linears, times `forwards_per_block` (qlab's true-sequential single
               pass: 1; the two-pass form — Hessian pass, then the quantized block's output pass: 2)
    attention  QKᵀ and AV under the causal mask: per sequence and head T(T+1)/2 dot products of head_dim, each
               2·head_dim FLOPs, for both → 2·hidden·T(T+1) per sequence, times `forwards_per_block`
    hessian    XᵀX of each distinct Linear input (q/k/v share one, gate/up share one): 2·N·d_in² each
    sweep      GPTQ's column sweep: column k updates the d_in − k columns after it in every row, one multiply and
               one add each → Σ_k 2·d_out·(d_in − k) ≈ d_out·d_in² per Linear
    inverse    Cholesky of H (d³/3), its inverse (2d³/3), Cholesky of the inverse (d³/3): 4·d_in³/3 per Linear

Norms, rotary, SiLU and the quantization of each column are O(N·d) or O(d_out·d_in) and left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DecoderShape:
    """The shapes that set a Llama-style decoder's calibration cost."""

    name: str
    hidden: int
    intermediate: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab: int
    tied_embeddings: bool = False

    def linears(self) -> dict[str, tuple[int, int]]:
        """(d_out, d_in) of each Linear of one block."""
        h, i = self.hidden, self.intermediate
        kv = h * self.n_kv_heads // self.n_heads
        return {"q_proj": (h, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, h),
                "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}

    def distinct_inputs(self) -> list[int]:
        """Width of each distinct Linear input of a block (q/k/v share one, gate/up share one)."""
        return [self.hidden, self.hidden, self.hidden, self.intermediate]

    def block_params(self) -> int:
        return sum(o * i for o, i in self.linears().values())

    def params(self) -> int:
        """Linear weights of every block plus the embedding (and lm_head unless tied); norms left out."""
        return self.n_layers * self.block_params() + self.vocab * self.hidden * (1 if self.tied_embeddings else 2)


# the embedded model (qlab.model) and the model the article's "7B" stands for
SMOLLM2_135M = DecoderShape("SmolLM2-135M", hidden=576, intermediate=1536, n_layers=30, n_heads=9, n_kv_heads=3,
                            vocab=49152, tied_embeddings=True)
LLAMA2_7B = DecoderShape("Llama-2-7B", hidden=4096, intermediate=11008, n_layers=32, n_heads=32, n_kv_heads=32,
                         vocab=32000)


@dataclass(frozen=True)
class CalibrationCost:
    """FLOPs (whole model) and bytes of one GPTQ calibration."""

    shape: DecoderShape
    tokens: int
    flops: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)

    @property
    def total_flops(self) -> float:
        return sum(self.flops.values())


def calibration_cost(shape: DecoderShape, n_samples: int, seqlen: int, forwards_per_block: int = 1,
                     act_bytes: int = 4, weight_bytes: int = 2) -> CalibrationCost:
    """FLOPs per phase (see the module docstring) and memory of a GPTQ calibration of `shape` on n_samples ×
    seqlen tokens.

    memory (bytes): `weights` the whole model at `weight_bytes` per weight (held on the host; one block at a time
    on the device), `block_weights` one block, `hidden` one copy of the block inputs for every calibration token
    at `act_bytes` (a calibration holds two: the block's inputs and its outputs), `mlp_activation` the widest
    activation (gate/up outputs) for every token at once — what a single pass over the whole batch holds —
    and `hessians` the block's float32 Hessians, one per distinct input."""
    n = n_samples * seqlen
    lin = shape.linears()
    L = shape.n_layers
    flops = {
        "forward": float(forwards_per_block * L * 2 * n * shape.block_params()),
        "attention": float(forwards_per_block * L * n_samples * 2 * shape.hidden * seqlen * (seqlen + 1)),
        "hessian": float(L * sum(2 * n * d * d for d in shape.distinct_inputs())),
        "sweep": float(L * sum(o * i * i for o, i in lin.values())),
        "inverse": float(L * sum(4 * i**3 / 3 for _, i in lin.values())),
    }
    memory = {
        "weights": float(shape.params() * weight_bytes),
        "block_weights": float(shape.block_params() * weight_bytes),
        "hidden": float(n * shape.hidden * act_bytes),
        "mlp_activation": float(n * shape.intermediate * act_bytes),
        "hessians": float(4 * sum(d * d for d in shape.distinct_inputs())),
    }
    return CalibrationCost(shape, n, flops, memory)


def seconds(cost: CalibrationCost, rates: dict[str, float]) -> float:
    """Time of `cost` at `rates` (FLOP/s per phase; a phase missing from `rates` uses rates["default"])."""
    return sum(f / (rates[p] if p in rates else rates["default"]) for p, f in cost.flops.items())
