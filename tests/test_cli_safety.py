"""Nothing lost: qlab.output's rules for every writer, and the CLI's checks of its arguments before any work.

Each CLI case runs `qlab.cli.main` in-process with model loading replaced by a failure, so a check that
happened after the model loaded (the old behaviour: ~8–30 s of work first) fails the test."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from qlab import cli, model
from qlab.errors import FileFormatError, ModelNotFoundError, OutputPathError
from qlab.output import MANIFEST, atomic_file, atomic_folder, check_output, clean_stale, is_qlab_folder


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_qlab_folder(path):
    with atomic_folder(path) as tmp:
        (tmp / "weights.bin").write_bytes(b"\0" * 10)
    return path


# ---------------------------------------------------------------- qlab.output


def test_a_users_folder_is_never_replaced(tmp_path):
    user = tmp_path / "userdir"
    user.mkdir()
    (user / "thesis.txt").write_text("my only copy")
    for overwrite in (False, True):
        with pytest.raises(OutputPathError, match="not written by qlab"):
            with atomic_folder(user, overwrite=overwrite) as tmp:
                (tmp / "x").write_text("new")
    assert (user / "thesis.txt").read_text() == "my only copy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["userdir"]  # no temporary left either


def test_qlab_outputs_are_replaced_only_with_overwrite(tmp_path):
    out = _write_qlab_folder(tmp_path / "q")
    assert is_qlab_folder(out) and json.loads((out / MANIFEST).read_text())["writer"] == "qlab"
    with pytest.raises(OutputPathError, match="--overwrite"):
        _write_qlab_folder(out)
    with atomic_folder(out, overwrite=True) as tmp:
        (tmp / "new.bin").write_bytes(b"1")
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, "new.bin"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]
    empty = tmp_path / "empty"
    empty.mkdir()
    _write_qlab_folder(empty)  # an empty folder holds nothing to lose
    assert is_qlab_folder(empty)


@pytest.mark.parametrize("where", ["cwd", "home", "parent_of_cwd", "root", "model", "parent_of_model"])
def test_protected_paths(tmp_path, monkeypatch, where):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    model_dir = tmp_path / "models" / "m"
    model_dir.mkdir(parents=True)
    target = {"cwd": ".", "home": "~", "parent_of_cwd": "..", "root": "/", "model": model_dir,
              "parent_of_model": tmp_path / "models"}[where]
    with pytest.raises(OutputPathError, match="never writes"):
        check_output(target, "folder", overwrite=True, protect=[model_dir])


def test_kinds_writability_and_space(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(OutputPathError, match="not a folder"):
        check_output(f, "folder")
    with pytest.raises(OutputPathError, match="is a folder"):
        check_output(tmp_path, "file", protect=[])
    with pytest.raises(OutputPathError, match="cannot write"):
        check_output(f / "sub" / "out", "folder")  # a file where a parent folder should be
    if os.path.isdir("/proc/self"):  # a real probe: even root cannot create folders in /proc
        with pytest.raises(OutputPathError, match="cannot write"):
            check_output("/proc/qlab-out", "folder")
    with pytest.raises(OutputPathError, match="MiB are free"):
        check_output(tmp_path / "big", "folder", size_bytes=2**62)
    assert check_output(tmp_path / "new" / "deeper", "folder") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # a check creates nothing


def test_a_failed_write_leaves_the_target_as_it_was(tmp_path):
    out = _write_qlab_folder(tmp_path / "q")
    with pytest.raises(RuntimeError):
        with atomic_folder(out, overwrite=True) as tmp:
            (tmp / "half.bin").write_bytes(b"1")
            raise RuntimeError("disk full")
    assert (out / "weights.bin").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["q"]
    g = tmp_path / "m.json"
    with pytest.raises(RuntimeError):
        with atomic_file(g) as tmp:
            tmp.write_text("{")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


def test_files_are_replaced_only_when_recognised(tmp_path):
    g = tmp_path / "model.gguf"
    g.write_text("my own model")
    for overwrite in (False, True):
        with pytest.raises(OutputPathError, match="not written by qlab"):
            with atomic_file(g, overwrite, recognise=lambda p: p.read_text() == "ours"):
                pass
    g.write_text("ours")
    with pytest.raises(OutputPathError, match="--overwrite"):
        with atomic_file(g, recognise=lambda p: p.read_text() == "ours"):
            pass
    with atomic_file(g, True, recognise=lambda p: p.read_text() == "ours") as tmp:
        tmp.write_text("new")
    assert g.read_text() == "new"


def test_temporaries_of_dead_processes_are_cleaned(tmp_path):
    pid = _dead_pid()
    stale = tmp_path / f".q.qlab-tmp-{pid}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    old = tmp_path / f".q.qlab-old-{pid}"
    old.write_text("x")
    alive = tmp_path / f".q.qlab-tmp-{os.getpid()}"  # this process: still writing, must stay
    alive.mkdir()
    other = tmp_path / f".other.qlab-tmp-{pid}"  # another target's, killed: goes too
    other.mkdir()
    user = tmp_path / ".q.qlab-tmp-notes"  # not qlab's name (no PID): stays
    user.mkdir()
    assert sorted(clean_stale(tmp_path / "q")) == sorted([stale, old, other])
    assert alive.exists() and user.exists() and not stale.exists() and not old.exists() and not other.exists()


def test_sigterm_while_writing_removes_the_temporary(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from qlab.output import atomic_folder
        with atomic_folder({str(tmp_path / "q")!r}) as tmp:
            (tmp / "part.bin").write_bytes(b"0" * 1000)
            print("writing", flush=True)
            time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the CLI checks before any work


@pytest.fixture
def no_loading(monkeypatch):
    """Model loading fails the test: every CLI error below must come before it."""

    def loaded(*a, **k):
        raise AssertionError("the model was loaded before the bad argument was noticed")

    monkeypatch.setattr(model, "load_model", loaded)


def _run(argv, capsys):
    t = time.perf_counter()
    code = cli.main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert time.perf_counter() - t < 10
    return code, json.loads(out.strip().splitlines()[-1]), err


BAD = [  # argv, error kind, words the message must hold
    (["quantize", "--group-size", "-1"], "BadArgumentError", "positive integer"),
    (["quantize", "--group-size", "0"], "BadArgumentError", "positive integer"),
    (["quantize", "--bits", "9"], "BadArgumentError", "2 to 8"),
    (["quantize", "--bits", "1"], "BadArgumentError", "≥ 2"),
    (["quantize", "--bits", "x"], "BadArgumentError", "integer"),
    (["quantize", "--nsamples", "0"], "BadArgumentError", "nsamples must be ≥ 1"),
    (["quantize", "--damp", "-0.1"], "BadArgumentError", "[0, 1]"),
    (["quantize", "--method", "gptq", "--seqlen", "1"], "BadArgumentError", "seqlen must be ≥ 2"),
    (["quantize", "--dataset", "missing.txt"], "BadArgumentError", "RTN uses none"),
    (["quantize", "--method", "gptq", "--dataset", "missing.txt"], "FileFormatError", "check the path"),
    (["eval", "--tokens", "-100"], "BadArgumentError", "tokens must be ≥ 0"),
    (["eval", "--ctx", "0"], "BadArgumentError", "ctx must be ≥ 2"),
    (["eval", "--model", "./missing_folder/"], "ModelNotFoundError", "no model at"),
    (["eval", "--model", "missing.gguf"], "ModelNotFoundError", "no GGUF file"),
    (["eval", "--reference", "./nowhere"], "ModelNotFoundError", "no model at"),
    (["export", "--format", "gptq", "--out", "x"], "BadArgumentError", "give it as --model DIR"),
    (["export", "--format", "gguf", "--dataset", "news", "--out", "m.gguf"], "BadArgumentError", "add --imatrix"),
    (["export", "--format", "gguf", "--type", "Q9_X", "--out", "m.gguf"], "BadArgumentError", "Q9_X"),
    (["compare", "--settings", "rtn:four:64"], "BadArgumentError", "rtn:four:64"),
    (["compare", "--settings", "rtn:4:64:symm"], "BadArgumentError", "method:bits:group"),
    (["compare", "--settings", "rtn:12:64"], "BadArgumentError", "2 to 8"),
    (["quantize", "--out", "."], "OutputPathError", "current folder"),
    (["info", "--unknown-flag"], "BadArgumentError", "unrecognized"),
]


@pytest.mark.parametrize("argv,kind,words", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_arguments_fail_before_any_work(argv, kind, words, no_loading, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, last, err = _run(argv, capsys)
    assert code == 2 and last["kind"] == kind and words in last["error"], last
    assert last["error"] in err and list(tmp_path.iterdir()) == []


def test_output_problems_fail_before_any_work(no_loading, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "userdir").mkdir()
    (tmp_path / "userdir" / "thesis.txt").write_text("mine")
    (tmp_path / "model.gguf").write_text("mine too")
    for argv, words in [(["quantize", "--out", "userdir"], "not written by qlab"),
                        (["quantize", "--out", "userdir", "--overwrite"], "not written by qlab"),
                        (["quantize", "--out", "userdir/thesis.txt"], "not a folder"),
                        (["export", "--format", "gguf", "--out", "model.gguf", "--overwrite"], "not written by qlab"),
                        (["export", "--format", "gguf", "--out", "userdir"], "is a folder")]:
        code, last, _ = _run(argv, capsys)
        assert code == 2 and last["kind"] == "OutputPathError" and words in last["error"], (argv, last)
    assert (tmp_path / "userdir" / "thesis.txt").read_text() == "mine"
    assert (tmp_path / "model.gguf").read_text() == "mine too"


def test_binary_and_damaged_inputs_get_messages(tmp_path):
    from qlab.checkpoint import load_quantized
    from qlab.data import check_source, load_text

    ascii_noise = bytes(range(128)) * 100  # valid UTF-8, but a quarter of it control characters
    (tmp_path / "bin.dat").write_bytes(ascii_noise)
    with pytest.raises(FileFormatError, match="does not look like text"):
        check_source(str(tmp_path / "bin.dat"))
    with pytest.raises(FileFormatError, match="does not look like text"):
        load_text(str(tmp_path / "bin.dat"))
    (tmp_path / "prose.txt").write_text("Alice was beginning to get very tired.\r\n\tIndented\x0c\n" * 50)
    check_source(str(tmp_path / "prose.txt"))
    q = tmp_path / "q"
    q.mkdir()
    (q / "config.json").write_text("{}")
    (q / "qlab.json").write_text('{"layers": {')
    (q / "quantized.safetensors").write_bytes(b"\x08\0\0\0\0\0\0\0{}")
    with pytest.raises(FileFormatError, match="damaged"):
        load_quantized(q)
    unfinished = tmp_path / f".q.qlab-tmp-{_dead_pid()}"
    unfinished.mkdir()
    (unfinished / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="unfinished"):
        model.model_source(unfinished)
    assert model.model_source("HuggingFaceTB/SmolLM2-135M") == "hub"
    assert model.model_source(None) == "embedded"


def test_benchmark_results_are_stamped_and_never_replace_a_users_file(tmp_path):
    """write_result: JSON stamped with the writer and the UTC time (notebooks label saved results with both); it
    replaces an earlier qlab result but refuses a file qlab did not write."""
    import datetime

    from qlab.output import check_result_path, is_qlab_result, write_result

    target = tmp_path / "bench.json"
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    write_result(target, {"rows": [1, 2]}, "benchmarks/x.py")
    data = json.loads(target.read_text())
    when = datetime.datetime.fromisoformat(data["written_at"])
    assert data["written_by"] == "qlab benchmarks/x.py" and data["rows"] == [1, 2]
    assert when.tzinfo is not None and before <= when <= datetime.datetime.now(datetime.timezone.utc)
    assert is_qlab_result(target)
    write_result(target, {"rows": [3]}, "benchmarks/x.py")  # an earlier qlab result is replaced
    assert json.loads(target.read_text())["rows"] == [3]
    mine = tmp_path / "mine.json"
    mine.write_text('{"my": "numbers"}')
    with pytest.raises(OutputPathError):
        check_result_path(mine)
    with pytest.raises(OutputPathError):
        write_result(mine, {"rows": []}, "benchmarks/x.py")
    assert json.loads(mine.read_text()) == {"my": "numbers"}
