"""qlab: LLM weight quantization from scratch — affine RTN, GPTQ, AWQ, GGUF — for learning and measuring."""

from .affine import fake_quantize, quantize_affine
from .errors import (
    BadArgumentError,
    FileFormatError,
    MissingDependencyError,
    ModelNotFoundError,
    NonFiniteError,
    NumericalError,
    QlabError,
    QlabWarning,
    TextTooShortError,
)
from .model import load_model
from .qtensor import QuantizedTensor
from .version import __version__

__all__ = [
    "BadArgumentError", "FileFormatError", "MissingDependencyError", "ModelNotFoundError", "NonFiniteError",
    "NumericalError", "QlabError", "QlabWarning", "QuantizedTensor", "TextTooShortError", "fake_quantize",
    "__version__", "load_model", "quantize_affine",
]
