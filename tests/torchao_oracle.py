"""torchao's MX and NVFP4 reference code, run in a process of its own: `python tests/torchao_oracle.py TASK IN OUT`.

torchao is installed apart from the project's environment (`make oracle` puts it under .venv/oracles/torchao):
when it sits in site-packages, transformers imports it on every model load and it prints warnings about its CUDA
libraries into every notebook. tests/test_blockfloat.py calls this script with that folder on PYTHONPATH.
TASK "mx": IN holds W; OUT gets, for each element dtype and scale rule, torchao's scale bytes and dequantized W.
TASK "nvfp4": IN holds W; OUT gets the tensor scale, the block-scale bytes, the FP4 codes and the dequantized W.
"""

import sys
import warnings

import torch


def mx(W: torch.Tensor) -> dict:
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2
    from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx

    dts = {"mxfp8_e4m3": torch.float8_e4m3fn, "mxfp8_e5m2": torch.float8_e5m2, "mxfp6_e3m2": DTYPE_FP6_E3M2,
           "mxfp6_e2m3": DTYPE_FP6_E2M3, "mxfp4": torch.float4_e2m1fn_x2}
    modes = {"floor": ScaleCalculationMode.FLOOR, "ceil": ScaleCalculationMode.CEIL,
             "rceil": ScaleCalculationMode.RCEIL}
    out = {}
    for name, dt in dts.items():
        for mode, tm in modes.items():
            scale, data = to_mx(W, dt, 32, tm)
            out[name, mode] = (scale.view(torch.uint8).clone(), to_dtype(data, scale, dt, 32, torch.float32))
    return out


def nvfp4(W: torch.Tensor) -> dict:
    from torchao.prototype.mx_formats.kernels import unpack_uint4
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, nvfp4_quantize, per_tensor_amax_to_scale

    g = per_tensor_amax_to_scale(W.abs().max())
    scales, data = nvfp4_quantize(W, 16, g)
    return {"tensor_scale": g, "scale_codes": scales.view(torch.uint8).clone(), "codes": unpack_uint4(data),
            "dequantized": NVFP4Tensor.to_nvfp4(W, per_tensor_scale=g).dequantize(torch.float32)}


if __name__ == "__main__":
    task, src, dst = sys.argv[1:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save({"mx": mx, "nvfp4": nvfp4}[task](torch.load(src)), dst)
