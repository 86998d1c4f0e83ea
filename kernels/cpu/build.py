"""Compile qlab's C kernels (qlab_cpu.c) into a shared library, cached by source hash, with the system compiler.

qlab_cpu.c is one translation unit that #includes its parts (qlab_blocks.h, qlab_quantize.h, qlab_dot_*.h,
qlab_rows_x86.h, qlab_dispatch.h, qlab_pool.h, qlab_gemm.h, qlab_probes.h); the cache key hashes every .c and .h
file of this directory, so a change to any part gives a new build.

The library is built once per source/compiler/flags combination into ``$QLAB_KERNEL_CACHE`` (default
``~/.cache/qlab/kernels/<hash>/``), written to a temporary file and moved into place atomically, so that
concurrent processes never load a half-written file. ``python -m qlab.kernels.cpu.build`` builds it ahead of
time (the README's set-up runs it). No ``-march=native``: the SIMD paths carry their own target attributes and
are chosen at run time by cpuid, so one build runs on any x86-64 (or ARM) machine. The same source is also
built, when Python's headers are present, as the CPython module ``qlab_pyfast`` (a cheaper gemm call): qlab_pyfast.c
includes qlab_cpu.c whole and adds the module's entry point.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

SOURCES = ("qlab_cpu.c",)  # the library's one translation unit
PYEXT_SOURCES = ("qlab_pyfast.c",)  # the CPython module's (it includes qlab_cpu.c)
FLAGS = ("-O2", "-std=gnu11", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-pthread")
LIB_NAME = "libqlab_cpu.so"
PYEXT_NAME = "qlab_pyfast"


class BuildError(RuntimeError):
    """No C compiler, or the compiler failed."""


def source_dir() -> Path:
    return Path(__file__).resolve().parent


def kernel_files() -> list[Path]:
    """Every C source and header of the kernels (what the build key hashes), sorted by name."""
    d = source_dir()
    return sorted([*d.glob("*.c"), *d.glob("*.h")], key=lambda p: p.name)


def compiler() -> str | None:
    """The C compiler: $CC, else cc, gcc or clang on PATH (None if there is none)."""
    env = os.environ.get("CC")
    if env and shutil.which(env.split()[0]):
        return env.split()[0]
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def cache_root() -> Path:
    env = os.environ.get("QLAB_KERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qlab" / "kernels"


def build_key(cc: str, extra_flags: tuple[str, ...] = ()) -> str:
    """Hash of the sources, flags, compiler and platform: a new key whenever any of them changes."""
    h = hashlib.sha256()
    for path in kernel_files():
        h.update(path.name.encode() + b"\0")
        h.update(path.read_bytes())
    h.update(" ".join(FLAGS + tuple(extra_flags)).encode())
    h.update(cc.encode())
    h.update(platform.machine().encode())
    return h.hexdigest()[:16]


def _compile(sources: tuple[str, ...], extra_flags: tuple[str, ...], name: str, force: bool, verbose: bool) -> Path:
    cc = compiler()
    if cc is None:
        raise BuildError("no C compiler found (install gcc or clang, or set CC)")
    out = cache_root() / build_key(cc, tuple(extra_flags)) / name
    if out.exists() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cc, *FLAGS, *extra_flags, *[str(source_dir() / s) for s in sources], "-o", tmp, "-lm"]
    if verbose:
        print(" ".join(cmd), file=sys.stderr)
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise BuildError(f"compiling qlab's CPU kernels failed:\n{' '.join(cmd)}\n{res.stderr[-4000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def build(force: bool = False, verbose: bool = False, extra_flags: tuple[str, ...] = ()) -> Path:
    """Compile the kernels if needed and return the library's path (raises BuildError).

    extra_flags: e.g. ("-DQLAB_NO_SIMD",) builds the portable scalar-only library (what a CPU without SIMD
    paths, or a compiler without intrinsics, gets), cached separately."""
    return _compile(SOURCES, tuple(extra_flags), LIB_NAME, force, verbose)


def python_include() -> str | None:
    """The directory of this Python's C headers (None when Python.h is not installed)."""
    inc = sysconfig.get_paths().get("include")
    return inc if inc and (Path(inc) / "Python.h").exists() else None


def build_pyext(force: bool = False, verbose: bool = False) -> Path:
    """The same kernels built as the CPython module ``qlab_pyfast`` (qlab_pyfast.c, -DQLAB_PYEXT): gemm() called without
    ctypes' per-call cost. Raises BuildError without a compiler or without Python's headers."""
    inc = python_include()
    if inc is None:
        raise BuildError("Python's C headers (Python.h) are not installed")
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return _compile(PYEXT_SOURCES, ("-DQLAB_PYEXT", f"-I{inc}"), PYEXT_NAME + suffix, force, verbose)


def main() -> None:
    """Build the kernels now (used by the README's set-up): prints the library path."""
    path = build(force="--force" in sys.argv, verbose=True)
    print(path)
    try:
        print(build_pyext(force="--force" in sys.argv, verbose=True))
    except BuildError as e:  # optional: the ctypes route works without it
        print(f"(no CPython fast path: {e})", file=sys.stderr)


if __name__ == "__main__":
    main()
