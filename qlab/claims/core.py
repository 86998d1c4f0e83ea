"""A claim, the verdict on it, and how a notebook prints both.

Every claim cell of the notebooks prints the same four lines (README, "Writing a notebook"):

    claim [id]: "the article's words"
    measured: what was measured, with its protocol (and uncertainty where noise matters)
    verdict [id]: true | false | partly | depends | not measurable here
    why: one sentence

The verdict is computed by the claim's rule (`Claim.judge`) from the measurement; the rule's threshold follows
from the claim's own words (`Claim.rule` says how). `qlab.claims.ledger` collects every claim and its verdict.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadArgumentError

VERDICTS = ("true", "false", "partly", "depends", "not measurable here", "not yet measured")


@dataclass(frozen=True)
class Verdict:
    """The outcome of judging one claim: a word of VERDICTS, the measurement it rests on, and why."""

    claim: str  # the claim's id
    verdict: str
    measured: str
    why: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise BadArgumentError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    def lines(self) -> str:
        c = get(self.claim)
        return (f'claim [{c.id}]: "{c.words}"\nmeasured: {self.measured}\nverdict [{c.id}]: {self.verdict}\n'
                f"why: {self.why}")


@dataclass(frozen=True)
class Claim:
    """One claim of the article (or of a paper a notebook tests): its words, where it is measured, and its rule.

    id        short and stable ("q4_0-overhead"); notebooks print it, the ledger finds it by it
    words     the claim as the article words it
    notebook  the notebook that measures it ("05_gguf"), "" where no lesson measures it yet
    rule      the verdict rule in words: the threshold and why it follows from the words
    judge     measurement (keyword arguments) -> Verdict; None for claims not measured yet
    source    "article" or the paper it comes from
    lesson    for a claim not measured yet: what would measure it
    """

    id: str
    words: str
    notebook: str
    rule: str
    judge: Callable[..., Verdict] | None = None
    source: str = "article"
    lesson: str = ""


_REGISTRY: dict[str, Claim] = {}


def register(*claims: Claim) -> None:
    for c in claims:
        if c.id in _REGISTRY:
            raise BadArgumentError(f"claim id {c.id!r} is registered twice")
        _REGISTRY[c.id] = c


def get(claim_id: str) -> Claim:
    if claim_id not in _REGISTRY:
        raise BadArgumentError(f"no claim {claim_id!r}; `qlab claims` lists them")
    return _REGISTRY[claim_id]


def registry() -> dict[str, Claim]:
    return dict(_REGISTRY)


def judge(claim_id: str, **measurement) -> Verdict:
    """The verdict on a claim from a measurement (keyword arguments of its rule)."""
    c = get(claim_id)
    if c.judge is None:
        raise BadArgumentError(f"claim {claim_id!r} has no rule yet: {c.lesson or 'no lesson measures it'}")
    return c.judge(**measurement)


def show(claim_id: str, **measurement) -> None:
    """Judge a claim and print its four lines (the form every claim cell prints). Returns nothing, so that a cell
    ending in show(...) displays only those lines; `judge` returns the Verdict."""
    print(judge(claim_id, **measurement).lines())


def verdict(claim_id: str, word: str, measured: str, why: str) -> Verdict:
    """A Verdict for claim_id (what a rule returns)."""
    return Verdict(claim_id, word, measured, why)


# ----------------------------------------------------------------------------------------------------------
# saved benchmark results (claims whose measurement takes longer than a notebook may run)

REPO = Path(__file__).resolve().parents[2]  # the checkout: notebooks/ and benchmarks/results/ sit there


def results_dir() -> Path:
    """benchmarks/results of this checkout (the committed long measurements)."""
    return REPO / "benchmarks" / "results"


def saved_result(name: str) -> dict:
    """A committed benchmark result (benchmarks/results/<name>), with a clear error when the checkout lacks it."""
    path = results_dir() / name
    if not path.is_file():
        raise BadArgumentError(f"{path} is missing: this claim reads a committed benchmark result; run from a clone "
                               f"of the qlab repository")
    return json.loads(path.read_text())
