"""Every module of the qlab package imports: a broken module fails here, naming itself, instead of being skipped.

The walk uses pkgutil over the installed package (qlab, qlab.gguf and qlab.kernels.* mapped from kernels/),
so a new module is covered without editing this file. Only an optional third-party dependency that is
genuinely absent (triton) turns into a skip, and even that fails when the CI variable is set, because the CI
set-up installs it.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

import pytest

# third-party packages a qlab module may need that the base install does not promise (pyproject extras)
OPTIONAL = {"triton"}


def all_modules() -> list[str]:
    """qlab's modules. qlab.kernels lives in kernels/ (a package-dir mapping): an editable install does not put
    it under qlab.__path__, so it is walked as a second root."""
    names = []
    for root in ("qlab", "qlab.kernels"):
        names.append(root)
        try:
            path = importlib.import_module(root).__path__
        except Exception:  # reported by test_module_imports, naming the root
            continue
        for info in pkgutil.walk_packages(path, prefix=root + ".", onerror=names.append):
            names.append(info.name)
    return sorted(set(names))


def test_the_walk_finds_the_package_tree():
    """A walk that found nothing would make the test below pass vacuously."""
    names = all_modules()
    for expected in ("qlab.eval", "qlab.gptq", "qlab.awq", "qlab.gguf.reader", "qlab.kernels.cpu",
                     "qlab.kernels.triton", "qlab.cli"):
        assert expected in names, f"{expected} missing from the package walk: {names}"


@pytest.mark.parametrize("name", all_modules())
def test_module_imports(name):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top in OPTIONAL:
            if os.environ.get("CI"):
                pytest.fail(f"{name}: optional dependency {e.name!r} is required in CI but not installed")
            pytest.skip(f"{name} needs the optional dependency {e.name!r}, which is not installed")
        pytest.fail(f"{name} does not import: {type(e).__name__}: {e}")
    except Exception as e:  # a SyntaxError, a NameError at import time, a missing qlab symbol …
        pytest.fail(f"{name} does not import: {type(e).__name__}: {e}")
