"""Text corpora that work offline, their disjoint calibration/evaluation splits, and calibration batches.

Named sources:
    wiki       ~100 Wikipedia articles shipped in gensim's test data (markup stripped), CC BY-SA
    news       300 news articles (gensim's lee_background.cor)
    code       Python standard-library sources of the running interpreter
    wikitext2  WikiText-2 raw through `datasets` (needs the network the first time)
    any path   a UTF-8 text file of your own
    a+b+…      several of the above mixed ("wiki+news+code", "wiki+my_notes.txt"): calibration draws the same
               number of samples from each (the first ones take the remainder); evaluation reads their
               evaluation splits one after another

Splits: a named source is cut once, at a paragraph break near 90 % of its characters: the first part is the
calibration split, the rest the evaluation split, so calibration never sees evaluation text (wikitext2 uses its
own train/test splits). A user file is used whole for whichever role it is given.
"""

from __future__ import annotations

import bz2
import functools
import os
import re
import sysconfig
from pathlib import Path

import torch

from .errors import BadArgumentError, FileFormatError, MissingDependencyError, TextTooShortError

SOURCES = ("wiki", "news", "code", "wikitext2")
EVAL_FRACTION = 0.1
DEFAULT_EVALUATION = "wiki"  # the text qlab eval / compare score on without --dataset
DEFAULT_CALIBRATION = "wiki"  # the text GPTQ, AWQ and the imatrix calibrate on without --dataset (issue 24: a mixture
# of wiki, news and code calibrated GPTQ no better on held-out text than wiki alone; see qlab.gptq.GPTQQuantizer)


def _gensim_data() -> Path:
    import gensim

    return Path(gensim.__file__).parent / "test" / "test_data"


def _wiki() -> str:
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    path = _gensim_data() / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    articles = []
    with bz2.open(path) as f:
        for title, markup, _ in extract_pages(f):
            if markup.lstrip().upper().startswith("#REDIRECT"):
                continue
            text = filter_wiki(markup).replace("'''", "").replace("''", "")
            lines = [ln.strip() for ln in text.splitlines()]
            text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
            if len(text) > 500:
                articles.append(f"= {title} =\n\n{text}")
    return "\n\n".join(articles)


def _news() -> str:
    lines = (_gensim_data() / "lee_background.cor").read_text(encoding="utf-8").splitlines()
    return "\n\n".join(ln.strip() for ln in lines if ln.strip())


def _code(max_chars: int = 3_000_000) -> str:
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(root.glob("*.py")):  # top-level modules only: deterministic, no tests or vendored code
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(f"# file: {path.name}\n{text}")
        total += len(text)
        if total >= max_chars:
            break
    return "\n\n".join(parts)


_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")  # control characters other than \t \n \v \f \r
MAX_CONTROL_FRACTION = 0.001  # prose and code have none; one in a thousand characters means "not text"


def mixture(source: str) -> list[str]:
    """The sources a text name stands for: "wiki+news+code" → ["wiki", "news", "code"]; one name or the path of
    an existing file (even one whose name holds a "+") → [itself]."""
    if source in SOURCES or "+" not in source or Path(source).expanduser().is_file():
        return [source]
    parts = source.split("+")
    if any(not p for p in parts) or len(set(parts)) < len(parts):
        raise BadArgumentError(f"text {source!r}: a mixture names each source once, joined by '+' "
                               f"(e.g. 'wiki+news+code')")
    return parts


def check_source(source: str) -> None:
    """Fail fast when `source` is neither a named source nor a readable text file, or a mixture of them (before
    any model loads)."""
    parts = mixture(source)
    if len(parts) > 1:
        for part in parts:
            check_source(part)
        return
    if source in SOURCES:
        return
    p = Path(source).expanduser()
    if not p.is_file():
        raise FileFormatError(f"text {source!r} is neither a named source ({', '.join(SOURCES)}) nor an existing "
                              f"file: check the path")
    _check_text(p, _decode(p, p.read_bytes()[: 1 << 16], partial=True))


def _decode(p: Path, data: bytes, partial: bool = False) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if partial and e.start >= len(data) - 3:  # a multi-byte character cut by the sample's end
            return data[: e.start].decode("utf-8")
        raise FileFormatError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8") from e


def _check_text(p: Path, text: str) -> str:
    """text, or FileFormatError when it holds NUL / control characters (a binary file that happens to decode)."""
    n = len(_CONTROL.findall(text))
    if "\x00" in text or n > MAX_CONTROL_FRACTION * max(len(text), 1):
        raise FileFormatError(f"{p} does not look like text ({n} control characters in {len(text):,}): give a "
                              f"plain UTF-8 text file")
    return text


def _read_file(path: str | os.PathLike) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileFormatError(f"text file {p} does not exist; give one of {SOURCES} or the path of a UTF-8 text file")
    try:
        return _check_text(p, _decode(p, p.read_bytes()))
    except OSError as e:
        raise FileFormatError(f"cannot read {p}: {e.strerror}") from e


@functools.lru_cache(maxsize=8)
def load_text(source: str = "wiki") -> str:
    """The whole text of a named source or a file (both splits together for named sources)."""
    if source == "wiki":
        return _wiki()
    if source == "news":
        return _news()
    if source == "code":
        return _code()
    if source == "wikitext2":
        calib, test = _wikitext2()
        return calib + "\n\n" + test
    return _read_file(source)


def _wikitext2() -> tuple[str, str]:
    try:
        from datasets import load_dataset

        ds = load_dataset("wikitext", "wikitext-2-raw-v1")
    except Exception as e:  # ImportError or no network
        raise MissingDependencyError(
            f"wikitext2 needs the `datasets` package and the network the first time ({e.__class__.__name__}); "
            f"offline, use 'wiki', 'news', 'code' or a text file"
        ) from e
    return "\n\n".join(ds["train"]["text"]), "\n\n".join(ds["test"]["text"])


def _cut(text: str, fraction: float = EVAL_FRACTION) -> int:
    target = int(len(text) * (1 - fraction))
    brk = text.find("\n\n", target)
    return target if brk < 0 else brk


def split_text(source: str = "wiki", split: str = "calibration") -> str:
    """The calibration or evaluation split of a named source; a file is returned whole for either."""
    if split not in ("calibration", "evaluation"):
        raise BadArgumentError(f"split must be 'calibration' or 'evaluation', got {split!r}")
    parts = mixture(source)
    if len(parts) > 1:
        return "\n\n".join(split_text(part, split) for part in parts)
    if source == "wikitext2":
        return _wikitext2()[0 if split == "calibration" else 1]
    text = load_text(source)
    if source not in SOURCES:
        return text
    cut = _cut(text)
    return text[:cut] if split == "calibration" else text[cut:].lstrip("\n")


@functools.lru_cache(maxsize=16)
def _tokens(tokenizer, source: str, split: str) -> torch.Tensor:
    text = split_text(source, split)
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def calibration_batches(
    tokenizer, source: str = "wiki", n_samples: int = 32, seqlen: int = 512, seed: int = 0
) -> torch.Tensor:
    """n_samples windows of seqlen tokens drawn at seeded random offsets from the calibration split: [n, seqlen].
    A mixture "a+b+…" draws n_samples/k windows from each of its k sources (the first n_samples mod k sources one
    more), interleaved a, b, …, a, b, … so that every prefix of the batch is balanced."""
    if n_samples < 1 or seqlen < 2:
        raise BadArgumentError(f"need n_samples ≥ 1 and seqlen ≥ 2, got {n_samples} and {seqlen}")
    parts = mixture(source)
    if len(parts) > 1:
        k = len(parts)
        if n_samples < k:
            raise BadArgumentError(f"{n_samples} calibration samples cannot cover the {k} sources of {source!r}: "
                                   f"give at least {k}")
        drawn = [calibration_batches(tokenizer, part, n_samples // k + (i < n_samples % k), seqlen, seed)
                 for i, part in enumerate(parts)]
        order = [d[j] for j in range(len(drawn[0])) for d in drawn if j < len(d)]
        return torch.stack(order)
    ids = _tokens(tokenizer, source, "calibration")
    if len(ids) < seqlen:
        raise TextTooShortError(
            f"the calibration text of {source!r} has {len(ids)} tokens, fewer than one sample of {seqlen}: "
            f"give a longer text or a smaller sequence length"
        )
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seqlen + 1, (n_samples,), generator=g)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


def eval_tokens(tokenizer, source: str = "wiki", max_tokens: int | None = 4096) -> torch.Tensor:
    """The first max_tokens tokens of the evaluation split (all of it when None): [T]."""
    ids = _tokens(tokenizer, source, "evaluation")
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise TextTooShortError(f"the evaluation text of {source!r} has {len(ids)} tokens; perplexity needs ≥ 2")
    return ids
