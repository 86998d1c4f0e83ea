"""Claims of the article that no lesson measures yet: each names the lesson (and the issue) that will.

They are in the ledger so that the table shows the whole article, not only what the kit already answers; when
a lesson lands, its claim moves to the module of its topic with a rule and a notebook.
"""

from __future__ import annotations

from .core import Claim, register

register(
    Claim("calibration-amount", words="128 calibration samples are enough; more data does not help", notebook="",
          rule="", lesson="issue 24: GPTQ/AWQ at n = 8…128 × 512 tokens, ≥ 3 seeds; 'enough' = the change from n to "
          "2n within the seed spread"),
    Claim("perplexity-inversion", words="a quantized model with lower perplexity than the original signals "
          "overlapping calibration and evaluation text", notebook="", rule="",
          lesson="issue 14 (notebook 08): evaluate on the calibration text and on held-out text"),
    Claim("activation-error-10pct", words="layers with more than 10 % activation error are the ones to fix",
          notebook="", rule="", lesson="issue 14 (notebook 08): per-layer output error against each layer's share "
          "of the perplexity increase"),
    Claim("nan-inf-fix", words="NaN/Inf outputs after quantization come from overflowing scales; fix them by "
          "keeping those layers in higher precision", notebook="", rule="",
          lesson="issue 14 (notebook 08): provoke non-finite outputs, localise the first module, apply the fix"),
    Claim("collapse", words="below 3 bits models collapse", notebook="", rule="",
          lesson="issue 14 (notebook 08): 2–3-bit RTN/GPTQ/AWQ; collapse defined from the words (perplexity > 10× "
          "float or top-1 agreement < 0.2)"),
    Claim("first-last-layers", words="keep the first and last layers in higher precision", notebook="", rule="",
          lesson="issue 16: per-layer sensitivity; the first/last blocks' share of the perplexity increase against "
          "their share of the weights"),
    Claim("qat-beats-ptq", words="quantization-aware training recovers more accuracy than post-training "
          "quantization", notebook="", rule="", lesson="not planned in this wave: needs fine-tuning (a GPU)"),
)
