"""Safe outputs: every file or folder qlab writes is checked before any work, built under a temporary sibling
name and renamed into place, and marked as qlab's so that only qlab's own earlier outputs are ever replaced.

    target            what the user named (--out)
    .NAME.qlab-tmp-PID  the output being written (removed on error or interrupt; a later run writing in the
                      same folder removes it once process PID is gone, e.g. after a SIGKILL)
    .NAME.qlab-old-PID  the replaced output, between the two renames of an --overwrite

Rules: an existing non-empty target is replaced only with overwrite=True and only when qlab wrote it (a folder
holding MANIFEST, a file its writer recognises); never the current folder, the home folder, the file-system
root, a folder holding any of them, or a model being read (or a folder holding it).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import BadArgumentError, OutputPathError

MANIFEST = ".qlab-output.json"  # inside every folder qlab writes: {"writer": "qlab", "kind": ..., "created": ...}
TMP_MARK, _OLD = ".qlab-tmp-", ".qlab-old-"  # in the names of outputs being written / replaced
_SPACE_MARGIN = 1.10  # free space asked for beyond the estimate (file-system overhead, tokenizer files)


def _sibling(target: Path, mark: str) -> Path:
    return target.with_name(f".{target.name}{mark}{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale(target: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that qlab processes no longer running left in `target`'s folder (any target's: a
    killed run's leftover goes with the next run writing beside it); the removed paths."""
    target = Path(target)
    removed = []
    if not target.parent.is_dir():
        return removed
    for mark in (TMP_MARK, _OLD):
        for p in target.parent.glob(f".*{mark}*"):
            pid = p.name.rsplit(mark, 1)[1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                _remove(p)
                removed.append(p)
    return removed


def is_qlab_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder qlab wrote (it holds a readable MANIFEST naming qlab)."""
    try:
        return json.loads((Path(path) / MANIFEST).read_text()).get("writer") == "qlab"
    except (OSError, ValueError, AttributeError):
        return False


def _contains(outer: Path, inner: Path) -> bool:
    return inner == outer or outer in inner.parents


def _protected(target: Path, protect: Iterable[str | os.PathLike]) -> str | None:
    """Why `target` must never be replaced, or None."""
    if target == Path(target.anchor):
        return "it is the root of the file system"
    for what, p in (("the current folder", Path.cwd()), ("your home folder", Path.home())):
        if _contains(target, p.resolve()):
            return f"it is {what}" if target == p.resolve() else f"it holds {what} ({p})"
    for p in protect:
        if p is not None and os.path.lexists(p):
            p = Path(p).resolve()
            if _contains(target, p):
                return f"it is the model being read ({p})" if target == p else f"it holds the model being read ({p})"
    return None


def _existing_ancestor(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _check_writable(target: Path, size_bytes: int) -> None:
    base = _existing_ancestor(target.parent)
    if not base.is_dir():
        raise OutputPathError(f"cannot write {target}: {base} is a file, not a folder; choose another output path")
    try:  # a real probe: os.access says yes to root even on read-only file systems
        probe = base / f".qlab-probe{TMP_MARK}{os.getpid()}"
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        raise OutputPathError(f"cannot write in {base} ({e.strerror}): choose an output path in a folder you can "
                              f"write to") from None
    if size_bytes:
        free = shutil.disk_usage(base).free
        if free < size_bytes * _SPACE_MARGIN:
            raise OutputPathError(f"{target} needs about {size_bytes * _SPACE_MARGIN / 2**20:,.0f} MiB but only "
                                  f"{free / 2**20:,.0f} MiB are free in {base}: free some space or choose another "
                                  f"disk")


def check_output(target: str | os.PathLike, kind: str = "folder", overwrite: bool = False, size_bytes: int = 0,
                 protect: Iterable[str | os.PathLike | None] = (),
                 recognise: Callable[[Path], bool] | None = None) -> Path:
    """Check, before any work, that qlab may write `target` (kind "folder" or "file"); the absolute path.

    Raises OutputPathError saying what to change: a protected path, an existing target of the other kind, a
    non-empty target without overwrite, a target qlab did not write, an unwritable folder, too little free
    space for `size_bytes`. Removes temporary siblings left by dead qlab processes."""
    if kind not in ("folder", "file"):
        raise BadArgumentError(f"kind must be 'folder' or 'file', not {kind!r}")
    if str(target).strip() == "":
        raise OutputPathError("the output path is empty: name a new folder or file")
    target = Path(os.path.abspath(os.path.expanduser(target)))
    why = _protected(target.resolve(), protect)
    if why:
        raise OutputPathError(f"qlab never writes to {target}: {why}. Name a new folder, e.g. {target / 'qlab-out'}"
                              if kind == "folder" else f"qlab never writes to {target}: {why}")
    clean_stale(target)
    if os.path.lexists(target):
        is_dir = target.is_dir() and not target.is_symlink()
        if kind == "folder" and not is_dir:
            raise OutputPathError(f"{target} exists and is not a folder: name a new folder for the output")
        if kind == "file" and is_dir:
            raise OutputPathError(f"{target} is a folder: name a file for the output (e.g. {target / 'model.gguf'})")
        empty = is_dir and not any(target.iterdir())
        if not empty:
            ours = is_qlab_folder(target) if is_dir else bool(recognise and recognise(target))
            if not ours:
                raise OutputPathError(f"{target} exists and was not written by qlab: qlab never replaces it. Choose "
                                      f"a new path" + (" (or empty that folder yourself)" if is_dir else ""))
            if not overwrite:
                raise OutputPathError(f"{target} exists (an earlier qlab output): pass --overwrite to replace it "
                                      f"(overwrite=True), or choose a new path")
    _check_writable(target, size_bytes)
    return target


@contextmanager
def _cleanup_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while writing, so the `finally` below removes the temporary output."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename tmp to target; an existing target is moved aside first and removed after the rename."""
    old = None
    if os.path.lexists(target):
        old = _sibling(target, _OLD)
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except OSError:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        _remove(old)


@contextmanager
def atomic_folder(target: str | os.PathLike, overwrite: bool = False, size_bytes: int = 0,
                  protect: Iterable[str | os.PathLike | None] = (), kind: str = "qlab output") -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it gets qlab's MANIFEST and replaces
    `target`; on error or interrupt it is removed. `target` is checked first (check_output)."""
    target = check_output(target, "folder", overwrite, size_bytes, protect)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, TMP_MARK)
    _remove(tmp)
    tmp.mkdir()
    try:
        with _cleanup_on_sigterm():
            yield tmp
            manifest = {"writer": "qlab", "kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (tmp / MANIFEST).write_text(json.dumps(manifest))
            _swap_in(tmp, target)
    finally:
        _remove(tmp)


@contextmanager
def atomic_file(target: str | os.PathLike, overwrite: bool = False, size_bytes: int = 0,
                protect: Iterable[str | os.PathLike | None] = (),
                recognise: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary file path beside `target`; on success it replaces `target`, on error it is removed.
    An existing `target` is replaced only with overwrite=True when `recognise(target)` says qlab wrote it."""
    target = check_output(target, "file", overwrite, size_bytes, protect, recognise)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, TMP_MARK)
    _remove(tmp)
    try:
        with _cleanup_on_sigterm():
            yield tmp
            _swap_in(tmp, target)
    finally:
        _remove(tmp)


def is_qlab_result(path: str | os.PathLike) -> bool:
    """Whether a JSON file is a result qlab wrote (an object whose "written_by" names qlab)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and str(data.get("written_by", "")).startswith("qlab")


def check_result_path(path: str | os.PathLike) -> Path:
    """A benchmark's --out checked before it runs: new, or an earlier qlab result (which it will replace)."""
    return check_output(path, "file", overwrite=True, recognise=is_qlab_result)


def write_result(path: str | os.PathLike, result: dict, writer: str) -> Path:
    """Write a benchmark's result as JSON stamped {"written_by": "qlab <writer>", "written_at": UTC time} (atomic;
    replaces only an earlier qlab result, so a user's file named by --out survives). A notebook that prints a saved
    result labels it with both."""
    stamp = {"written_by": f"qlab {writer}",
             "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    with atomic_file(path, overwrite=True, recognise=is_qlab_result) as tmp:
        tmp.write_text(json.dumps({**stamp, **result}, indent=1))
    return Path(path)
