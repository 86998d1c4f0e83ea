"""The claims ledger: every claim registered once, every measured claim judged in its notebook's committed
outputs (a compared cell, the verdict vocabulary), and the ledger reading exactly those lines."""

import json
import re
from pathlib import Path

import nbformat
import pytest

from qlab import claims
from qlab.cli import main
from qlab.errors import BadArgumentError

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
VERDICT_LINE = re.compile(r"^verdict\b.*$", re.M)


def _verdict_outputs():
    """(notebook, cell index, ignored?, text) of every output line that starts with 'verdict'."""
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, 4)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            ignored = cell.source.lstrip().startswith("# nbval-ignore-output")
            for out in cell.get("outputs", []):
                text = out.get("text", "") or out.get("data", {}).get("text/plain", "")
                for line in VERDICT_LINE.findall(text):
                    yield path.stem, i, ignored, line


def test_registry_is_complete_and_well_formed():
    reg = claims.registry()
    assert len(reg) >= 30  # the article's claims the notebooks test, plus those no lesson measures yet
    stems = {p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")}
    for c in reg.values():
        assert re.fullmatch(r"[a-z0-9][a-z0-9_.+-]*", c.id), c.id
        assert c.words.strip() and '"' not in c.words, c.id
        if c.notebook:
            assert c.notebook in stems, (c.id, c.notebook)
            assert c.judge is not None and c.rule.strip(), c.id
        else:
            assert c.lesson.strip(), c.id
    with pytest.raises(BadArgumentError, match="twice"):
        claims.core.register(next(iter(reg.values())))


def test_every_verdict_line_is_a_registered_claim_in_a_compared_cell():
    lines = list(_verdict_outputs())
    assert lines, "no notebook prints a verdict"
    reg = claims.registry()
    for stem, i, ignored, line in lines:
        m = re.match(r"^verdict \[([\w.+-]+)\]: (.*)$", line)
        assert m, f"{stem} cell {i}: a verdict line not in the form 'verdict [id]: word': {line!r}"
        cid, rest = m.groups()
        assert cid in reg, f"{stem} cell {i}: claim {cid!r} is not registered in qlab.claims"
        assert reg[cid].notebook == stem, f"{stem} cell {i}: claim {cid!r} is registered for {reg[cid].notebook}"
        assert any(rest.startswith(v) for v in claims.VERDICTS), f"{stem} cell {i}: {rest!r} is not a verdict"
        assert not ignored, f"{stem} cell {i}: a verdict in an nbval-ignore-output cell is never compared"


def test_every_measured_claim_has_its_verdict_in_its_notebook():
    rows = claims.ledger()
    missing = [r.id for r in rows if r.verdict == "missing"]
    assert not missing, f"claims whose notebook prints no verdict line: {missing}"
    printed = [i for _, _, _, line in _verdict_outputs() for i in re.findall(r"\[([\w.+-]+)\]", line)]
    twice = sorted({i for i in printed if printed.count(i) > 1})
    assert not twice, f"claims judged twice: {twice}"


def test_ledger_reads_the_verdict_lines_of_a_notebook(tmp_path):
    """The parser on a synthetic executed notebook: the verdict word, also for multi-word verdicts."""
    some = [c for c in claims.registry().values() if c.notebook][:2]
    if len(some) < 2:
        pytest.skip("fewer than two measured claims registered")
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(...)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=(
        f"claim [{some[0].id}]: \"...\"\nverdict [{some[0].id}]: not measurable here: no GPU\n"
        f"verdict [{some[1].id}]: false\n"))]
    nb.cells = [cell]
    (tmp_path / "05_x.ipynb").write_text(nbformat.writes(nb))
    found = claims.notebook_verdicts(tmp_path)
    assert found == {some[0].id: ("05_x", "not measurable here"), some[1].id: ("05_x", "false")}


def test_verdict_words_are_the_vocabulary():
    any_claim = next(iter(claims.registry()))
    with pytest.raises(BadArgumentError, match="verdict must be one of"):
        claims.verdict(any_claim, "PARTLY", "", "")
    with pytest.raises(BadArgumentError, match="no claim"):
        claims.judge("no-such-claim")


def test_qlab_claims_prints_the_ledger(capsys):
    assert main(["claims", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    rows = json.loads(out[-1])["claims"]
    assert {r["id"] for r in rows} == set(claims.registry())
    assert any(line.startswith(f"{len(rows)} claims:") for line in out)
    assert main(["claims", "--verdict", "maybe"]) == 2
