"""qlab.kernels.triton: fused weight-only-quantized matmul (W4A16, also 2/3/8-bit) and a dequantize kernel.

Import with TRITON_INTERPRET=1 already set to run them on a CPU (the interpreter); on a GPU they compile.
The weight layout is qlab's canonical packed one (`qlab.packing.pack_rows(codes.T, bits)`, GPTQ qweight).
"""

from .w4a16 import SUPPORTED_BITS, Config, choose_config, dequantize, interpreting, wq_matmul

__all__ = ["SUPPORTED_BITS", "Config", "choose_config", "dequantize", "interpreting", "wq_matmul"]
