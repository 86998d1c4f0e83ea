"""Project hygiene CI cannot see otherwise: notebooks committed executed, environment.yml in step with pyproject."""

import json
import pathlib
import re

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IGNORE = "nbval-ignore-output"  # the cell tag nbval reads (a comment of that spelling alone does nothing)
ORDER_DEPENDENT = "order-dependent"  # the reason word of a cell whose numbers depend on float summation order


def _code_cells(nb: pathlib.Path) -> list[tuple[int, dict, str]]:
    """(nbval's cell number, cell, where) of each code cell: nbval counts code cells only, from 0."""
    cells = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
    out = []
    for k, c in enumerate(cells):
        src = "".join(c["source"]).strip()
        out.append((k, c, f"{nb.name}::Cell {k} ({src.splitlines()[0][:60] if src else 'empty'!r})"))
    return out


def _tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def test_notebooks_exist():
    assert NOTEBOOKS, "no notebooks found"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_code_cell_was_executed(nb):
    """nbval passes an unexecuted cell vacuously (nothing to compare), and an error output committed as reference
    would be "reproduced": both are caught here, naming the notebook and the cell in nbval's numbering."""
    cells = [(k, c, where) for k, c, where in _code_cells(nb) if "".join(c["source"]).strip()]
    missing = [where for k, c, where in cells if c.get("execution_count") is None]
    assert not missing, f"never executed (nbval would pass them vacuously): {missing}"
    errors = [f"{where}: {o.get('ename')}: {o.get('evalue')}" for k, c, where in cells for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"committed with an error output: {errors}"
    counts = [c["execution_count"] for k, c, where in cells]
    out_of_order = [where for (k, c, where), n in zip(cells, range(1, len(cells) + 1)) if c["execution_count"] != n]
    assert not out_of_order, (f"execution counts {counts} are not 1, 2, 3, ...: cells re-run by hand or skipped, "
                              f"their outputs are not one top-to-bottom run; first: {out_of_order[0]}")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_ignored_outputs_are_declared_and_order_dependent_ones_have_a_compared_verdict(nb):
    """The notebook rule (README, "Writing a notebook"): a cell whose output nbval must not compare has the tag
    nbval-ignore-output AND starts with the comment `# nbval-ignore-output: <why>` (the comment alone does not
    stop nbval; the tag alone hides the reason). A cell whose numbers depend on float summation order, BLAS kernel
    or SIMD width (why = "order-dependent ...") must be followed by a compared cell that prints a verdict computed
    from those numbers, so the claim is still checked on every machine."""
    cells = _code_cells(nb)
    for i, (k, c, where) in enumerate(cells):
        first = "".join(c["source"]).strip().splitlines()[:1]
        says = bool(first) and first[0].startswith(f"# {IGNORE}:")
        tagged = IGNORE in _tags(c)
        assert says == tagged, (f"{where}: " + ("says nbval-ignore-output but has no such tag (nbval compares it)"
                                               if says else "tagged nbval-ignore-output without a first-line comment "
                                               "`# nbval-ignore-output: <why>`"))
        if tagged and ORDER_DEPENDENT in first[0]:
            after = cells[i + 1] if i + 1 < len(cells) else None
            source = "".join(after[1]["source"]) if after is not None else ""
            assert after is not None and IGNORE not in _tags(after[1]) and (
                "verdict" in source or "claims.show(" in source), (
                f"{where}: order-dependent numbers must be followed by a compared cell printing a verdict")


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    for extra in ("notebooks", "triton", "test"):
        wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]
    lines = re.findall(r"^      - ([A-Za-z0-9_.\-]+[^\n]*)$", (ROOT / "environment.yml").read_text(), re.M)
    conda = {Requirement(x).name.lower(): Requirement(x) for x in lines if not x.startswith(("-e", "python", "pip"))}
    for req in wanted:
        assert req.name.lower() in conda, f"{req.name} is in pyproject.toml but not in environment.yml"
        pinned = conda[req.name.lower()]
        for spec in pinned.specifier:
            if spec.operator == "==":
                assert req.specifier.contains(spec.version), f"{req.name}=={spec.version} breaks {req}"
            else:
                assert str(pinned.specifier) == str(req.specifier), f"{req.name}: {pinned} vs {req}"
    extra_in_conda = set(conda) - {r.name.lower() for r in wanted}
    assert extra_in_conda <= {"llama-cpp-python"}, extra_in_conda  # the GGUF oracle, installed by the Makefile
