"""The claims ledger: every claim of the article the kit tests, the rule that judges it, and its verdict.

    qlab.claims.show("q4_0-overhead", overhead_bytes=2, block_weights=32)   # what a claim cell calls
    qlab claims                                                              # the whole ledger, from the shell

A claim lives in the module of its topic (basics: bits, groups, outliers, accuracy; gptq; awq; gguf; kernels;
later: claims no lesson measures yet). Its verdict is printed by the notebook that measures it, in a compared
cell (`verdict [id]: ...`); `ledger()` reads those lines from the committed notebooks, so the table shows what
the notebooks measured without re-running them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from . import awq, basics, formats, gguf, gptq, kernels, later  # noqa: F401  (each registers its claims)
from .core import REPO, VERDICTS, Claim, Verdict, get, judge, registry, saved_result, show, verdict

__all__ = ["VERDICTS", "Claim", "LedgerRow", "Verdict", "get", "judge", "ledger", "notebook_verdicts", "registry",
           "saved_result", "show", "table", "verdict"]

_VERDICT_LINE = re.compile(r"^verdict \[([\w.+-]+)\]: (.*)$", re.M)


def notebooks_dir() -> Path:
    return REPO / "notebooks"


def notebook_verdicts(folder: Path | None = None) -> dict[str, tuple[str, str]]:
    """{claim id: (notebook, verdict word)} from the `verdict [id]: ...` lines in the committed outputs of the
    notebooks in `folder` (default: this checkout's notebooks/)."""
    folder = Path(folder) if folder is not None else notebooks_dir()
    found: dict[str, tuple[str, str]] = {}
    for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            for out in cell.get("outputs", []):
                text = out.get("text") or "".join(out.get("data", {}).get("text/plain", ""))
                text = "".join(text) if isinstance(text, list) else text
                for claim_id, rest in _VERDICT_LINE.findall(text):
                    word = next((v for v in sorted(VERDICTS, key=len, reverse=True) if rest.startswith(v)), rest)
                    found[claim_id] = (path.stem, word)
    return found


@dataclass(frozen=True)
class LedgerRow:
    id: str
    words: str
    source: str
    notebook: str
    verdict: str  # a word of VERDICTS, or "missing" when the notebook printed none
    rule: str


def ledger(folder: Path | None = None) -> list[LedgerRow]:
    """Every registered claim with the verdict its notebook printed ("not yet measured" when no lesson measures
    it yet; "missing" when its notebook printed no verdict line — a defect the tests catch)."""
    printed = notebook_verdicts(folder)
    rows = []
    for c in sorted(registry().values(), key=lambda c: c.notebook or "~"):  # by notebook; not yet measured last
        if not c.notebook:
            word = "not yet measured"
        else:
            word = printed.get(c.id, (c.notebook, "missing"))[1]
        rows.append(LedgerRow(c.id, c.words, c.source, c.notebook or "—", word, c.rule if c.notebook else c.lesson))
    return rows


def table(rows: list[LedgerRow] | None = None, width: int = 70) -> str:
    """The ledger as a text table (one line per claim), with a count per verdict."""
    rows = ledger() if rows is None else rows
    lines = [f"{'claim':24s} {'verdict':20s} {'notebook':28s} {'source':11s} words"]
    for r in rows:
        words = r.words if len(r.words) <= width else r.words[: width - 1] + "…"
        lines.append(f"{r.id:24s} {r.verdict:20s} {r.notebook:28s} {r.source:11s} \"{words}\"")
    for who, subset in (("", rows), (" of the article", [r for r in rows if r.source == "article"])):
        counts = {v: sum(r.verdict == v for r in subset) for v in (*VERDICTS, "missing")}
        lines.append(f"{len(subset)} claims{who}: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n))
    return "\n".join(lines)
