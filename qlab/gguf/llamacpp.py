"""llama.cpp's library (llama-cpp-python), the oracle of qlab's GGUF cross-checks: imported with a clear error.

llama-cpp-python is a source build that `make lab` does not wait for (`make oracle` builds it):
``require_llama_cpp`` raises ``LlamaCppMissingError`` with that instruction, ``llama_cpp_available`` lets a
notebook cell say so instead of failing.
"""

from __future__ import annotations

from ..errors import LlamaCppMissingError

LLAMA_CPP_MISSING = ("llama.cpp's library is not installed: run `make oracle` (it builds llama-cpp-python from "
                     "source once, ~8 min on two cores), then restart the kernel")


def require_llama_cpp():
    """The llama_cpp module, or LlamaCppMissingError saying how to build it (`make oracle`)."""
    try:
        import llama_cpp
    except ImportError as e:
        raise LlamaCppMissingError(LLAMA_CPP_MISSING) from e
    except OSError as e:  # installed, but its shared libraries do not load (a broken or foreign build)
        raise LlamaCppMissingError(f"llama.cpp's library is installed but does not load ({e}): reinstall it with "
                                   "`pip uninstall -y llama-cpp-python && make oracle`") from e
    return llama_cpp


def llama_cpp_available() -> bool:
    """Whether llama.cpp's library imports (notebook cells that need it print LLAMA_CPP_MISSING otherwise)."""
    try:
        require_llama_cpp()
    except LlamaCppMissingError:
        return False
    return True
