"""Project hygiene CI cannot see otherwise: notebooks committed executed, environment.yml in step with pyproject."""

import json
import pathlib
import re

from packaging.requirements import Requirement

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_notebook_code_cell_was_executed():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    for nb in notebooks:
        cells = json.loads(nb.read_text())["cells"]
        missing = [i for i, c in enumerate(cells)
                   if c["cell_type"] == "code" and "".join(c["source"]).strip() and c.get("execution_count") is None]
        assert not missing, f"{nb.name}: code cells {missing} were never executed (nbval would pass them vacuously)"
        errors = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, f"{nb.name} was committed with an error output"


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
