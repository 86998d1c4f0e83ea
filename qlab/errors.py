"""Errors qlab raises for user mistakes: each message says what to change."""


class QlabError(Exception):
    """Base of every error caused by input qlab cannot use."""


class BadArgumentError(QlabError, ValueError):
    """An argument is out of range or inconsistent (bits, group size, shapes...)."""


class NonFiniteError(QlabError, ValueError):
    """NaN or Inf where finite numbers are required (weights, activations, statistics)."""


class TextTooShortError(QlabError, ValueError):
    """The text cannot fill the requested calibration samples or evaluation windows."""


class ModelNotFoundError(QlabError, LookupError):
    """A model name or folder that cannot be loaded (unknown, offline, missing files)."""


class FileFormatError(QlabError, ValueError):
    """A file that is unreadable, truncated, or not of the expected format."""


class NumericalError(QlabError, ArithmeticError):
    """A numerical procedure failed (e.g. a Hessian that stays non positive definite)."""


class MissingDependencyError(QlabError, ImportError):
    """An optional package or library this step needs is not installed (or not reachable); the message says how
    to get it, or what to use instead."""


class LlamaCppMissingError(MissingDependencyError):
    """llama-cpp-python, llama.cpp's library and the oracle of the GGUF cross-checks, cannot be imported."""


class OutputPathError(QlabError, ValueError):
    """An output path qlab must not or cannot write (exists and is not qlab's, protected, unwritable, no space)."""


class QlabWarning(UserWarning):
    """Something worked, but not as asked (a retry with more damping, a rejected candidate): the one warning
    class of qlab, shown through Python's warnings (silence it with warnings.filterwarnings)."""
