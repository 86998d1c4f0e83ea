"""AWQ (Lin et al. 2023), activation-aware weight quantization — the one import for AWQ.

    qlab.awq.quantizer   the block quantizer: statistics, scale search and folding per block, clip, RTN/GPTQ
    qlab.awq.search      the two searches on plain tensors: scale exponent α (§3.2) and per-group clipping
    qlab.awq.fold        which Linears share a scale and how the scale folds into the op before them
    qlab.awq.probe       the "module" objective: a scale candidate measured at the consuming module's output
"""

from ..stats import InputStats, activation_magnitudes
from .fold import ScaleGroup, fold_group, kv_expand, kv_reduce, scale_groups
from .probe import ModuleProbe, capture_calls, probe_module_name
from .quantizer import AWQQuantizer, BlockState, GroupRecord, collect_block_stats, salient_protection_error
from .search import (
    AWQWarning,
    ClipSearch,
    ScaleSearch,
    alpha_values,
    apply_clip,
    awq_scales,
    awq_search_clip,
    awq_search_scales,
    output_energy,
    output_error,
    shrink_values,
    weight_magnitudes,
)

__all__ = [
    "AWQQuantizer", "AWQWarning", "BlockState", "ClipSearch", "GroupRecord", "InputStats", "ModuleProbe",
    "ScaleGroup", "ScaleSearch", "activation_magnitudes", "alpha_values", "apply_clip", "awq_scales",
    "awq_search_clip", "awq_search_scales", "capture_calls", "collect_block_stats", "fold_group", "kv_expand",
    "kv_reduce", "output_energy", "output_error", "probe_module_name", "salient_protection_error", "scale_groups",
    "shrink_values", "weight_magnitudes",
]
