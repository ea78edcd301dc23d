"""The summary table at the top of ``docs/benchmarks.md``, generated from ``benchmarks/results/``.

Each benchmark saves its headline figure in ``benchmarks/results/NAME.json``, one file per
benchmark and one row of the table each (rows in file-name order): adding a file adds a row.
The table sits between ``<!-- summary:start -->`` and ``<!-- summary:end -->``; the detailed
sections below it are written by the benchmark scripts themselves.

A results file holds one JSON object with these keys (``null`` where there is nothing to say):

- ``title``: the row's name, e.g. ``"Photos: BSD68, sigma 25"``;
- ``figure``: what was measured, in words, with the workload;
- ``unit``: the unit of ``tuner`` and ``baseline`` (``"dB"``, ``"s"``, ``"%"``, ...);
- ``tuner``, ``baseline``: the figure for tuner and for the baseline (numbers or ``null``);
- ``baseline_name``: what the baseline is;
- ``ratio`` (tuner / baseline) or ``difference`` (tuner - baseline, as for dB): exactly one of
  them when both figures are numbers, equal to what they give at the digits written;
- ``target``: the target, in words; ``met``: ``true``, ``false`` or ``null`` (no target);
- ``machine``, ``date`` (``YYYY-MM-DD``), ``runs`` (repetitions behind the figure: runs, seeds);
- ``section``: the anchor of the benchmark's section in ``docs/benchmarks.md``.

Usage::

    python3 benchmarks/summary.py            # print the table
    python3 benchmarks/summary.py --write    # rewrite the block in docs/benchmarks.md
    python3 benchmarks/summary.py --check    # exit 1 if docs/benchmarks.md's block is stale

Standard library only, so it runs without the project installed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Optional, Sequence, Union

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DOC = REPO / "docs" / "benchmarks.md"
START, END = "<!-- summary:start -->", "<!-- summary:end -->"

Number = Union[int, float]


class ResultError(ValueError):
    """A results file that cannot become a row; the message names the file and the key."""


@dataclass(frozen=True)
class Result:
    """One benchmark's headline figure: one row of the summary."""

    name: str                     # the file's stem, e.g. bench_natural
    title: str                    # the row's name
    figure: str                   # what was measured, with the workload
    unit: str                     # unit of tuner and baseline
    tuner: Optional[Number]       # tuner's figure
    baseline: Optional[Number]    # the baseline's figure
    baseline_name: str            # what the baseline is
    ratio: Optional[Number]       # tuner / baseline, as written
    difference: Optional[Number]  # tuner - baseline, as written
    target: Optional[str]         # the target in words
    met: Optional[bool]           # whether the target was met; None: no target
    machine: str                  # where it ran
    date: str                     # when, YYYY-MM-DD
    runs: int                     # repetitions behind the figure (runs, seeds)
    section: str                  # anchor of the section in docs/benchmarks.md


_STR, _OPT_NUM, _OPT_STR = "a string", "a number or null", "a string or null"
_KEYS = {"title": _STR, "figure": _STR, "unit": _STR, "tuner": _OPT_NUM, "baseline": _OPT_NUM,
         "baseline_name": _STR, "ratio": _OPT_NUM, "difference": _OPT_NUM, "target": _OPT_STR,
         "met": "true, false or null", "machine": _STR, "date": "a date YYYY-MM-DD",
         "runs": "a whole number >= 1", "section": _STR}
_OPTIONAL = {"ratio", "difference"}


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _valid(key: str, v: object) -> bool:
    kind = _KEYS[key]
    if kind == _STR:
        return isinstance(v, str) and bool(v.strip())
    if kind == _OPT_STR:
        return v is None or (isinstance(v, str) and bool(v.strip()))
    if kind == _OPT_NUM:
        return v is None or _is_number(v)
    if key == "met":
        return v is None or isinstance(v, bool)
    if key == "date":
        try:
            return isinstance(v, str) and dt.date.fromisoformat(v).isoformat() == v
        except ValueError:
            return False
    if key == "runs":
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1
    raise AssertionError(key)


def _agrees(written: Number, exact: float) -> bool:
    """Whether ``written`` is ``exact`` rounded to the digits ``written`` shows (0.98 for 0.984)."""
    return abs(written - exact) <= 0.5 * 10 ** -_decimals(written) + 1e-9


def load_result(path: Path) -> Result:
    """Read and check one results file.

    Args:
        path: ``benchmarks/results/NAME.json``.

    Returns:
        The row it describes.

    Raises:
        ResultError: bad JSON, an unknown or missing key, a wrong type, a ratio or difference that
            does not follow from the figures, or a verdict without a target.
    """
    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ResultError(f"{where}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise ResultError(f"{where}: must hold one JSON object")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise ResultError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(_KEYS)}")
    missing = [k for k in _KEYS if k not in data and k not in _OPTIONAL]
    if missing:
        raise ResultError(f"{where}: missing key {missing[0]!r} (null if there is nothing to say)")
    for key, value in data.items():
        if not _valid(key, value):
            raise ResultError(f"{where}: {key} is {value!r}; must be {_KEYS[key]}")
    tuner, baseline = data["tuner"], data["baseline"]
    given = [k for k in ("ratio", "difference") if data.get(k) is not None]
    if tuner is not None and baseline is not None:
        if len(given) != 1:
            raise ResultError(f"{where}: give exactly one of 'ratio' (tuner / baseline) or 'difference' "
                              f"(tuner - baseline)")
        key = given[0]
        if key == "ratio" and baseline == 0:
            raise ResultError(f"{where}: ratio: the baseline is 0; give a difference")
        exact = tuner / baseline if key == "ratio" else tuner - baseline
        if not _agrees(data[key], exact):
            raise ResultError(f"{where}: {key} is {data[key]!r} but the figures give {exact:.4g} "
                              f"(tuner {tuner!r}, baseline {baseline!r})")
    elif given:
        raise ResultError(f"{where}: {given[0]} needs both tuner and baseline")
    if data["met"] is not None and data["target"] is None:
        raise ResultError(f"{where}: met is {data['met']!r} but there is no target")
    return Result(name=path.stem, ratio=data.get("ratio"), difference=data.get("difference"),
                  **{k: v for k, v in data.items() if k not in _OPTIONAL})


def load_results(folder: Path = RESULTS) -> list[Result]:
    """Every ``*.json`` in ``folder``, in file-name order."""
    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise ResultError(f"{folder}: no results files (*.json)")
    return [load_result(p) for p in paths]


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown`` (lower case, punctuation dropped,
    spaces to hyphens, ``-1``, ``-2`` on repeats), outside fenced code blocks."""
    seen: Counter[str] = Counter()
    found, fenced = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            found.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
            seen[slug] += 1
    return found


def _decimals(v: Optional[Number]) -> int:
    """Digits after the point as written in the JSON file (0 for whole numbers and None)."""
    if v is None or isinstance(v, int):
        return 0
    exponent = Decimal(repr(v)).as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def _value(v: Optional[Number], unit: str, decimals: int) -> str:
    if v is None:
        return "-"
    text = f"{v:,.{decimals}f}"
    return f"{text}%" if unit == "%" else f"{text} {unit}"


def _comparison(r: Result, decimals: int) -> str:
    """tuner against the baseline: ``0.98x`` (two digits at least) or ``+0.35 dB``."""
    if r.ratio is not None:
        return f"{r.ratio:,.{max(_decimals(r.ratio), 2)}f}x"
    if r.difference is not None:
        return f"{r.difference:+,.{max(_decimals(r.difference), decimals)}f} {r.unit}"
    return "-"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(results: Sequence[Result]) -> str:
    """The summary block's body: a heading, a sentence on where it comes from, the table."""
    rows = ["| benchmark | figure | tuner | baseline | tuner vs baseline | target | verdict | machine | date | runs |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        decimals = max(_decimals(r.tuner), _decimals(r.baseline))  # both figures to the same digits
        baseline = (f"{r.baseline_name}: {_value(r.baseline, r.unit, decimals)}" if r.baseline is not None
                    else r.baseline_name or "-")
        verdict = {True: "**met**", False: "**missed**", None: "-"}[r.met]
        cells = [f"[{r.title}](#{r.section})", r.figure, _value(r.tuner, r.unit, decimals), baseline,
                 _comparison(r, decimals), r.target or "-", verdict, r.machine, r.date, str(r.runs)]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return ("## Summary\n\n"
            "One row per benchmark, generated by `python3 benchmarks/summary.py --write` from\n"
            "`benchmarks/results/*.json` (one file per benchmark). Each row names its own machine and date\n"
            "and links to its section below, which has the command, the full tables and the caveats.\n\n"
            + "\n".join(rows))


def replace_block(doc_text: str, body: str) -> str:
    """``doc_text`` with the summary block's content replaced by ``body``."""
    if doc_text.count(START) != 1 or doc_text.count(END) != 1 or doc_text.index(START) > doc_text.index(END):
        raise ResultError(f"{DOC.relative_to(REPO)}: needs one {START} ... {END} block")
    head, rest = doc_text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{body.strip()}\n{END}{tail}"


def check_sections(results: Sequence[Result], doc_text: str) -> None:
    """Every row's ``section`` names a heading of the document."""
    known = anchors(doc_text)
    for r in results:
        if r.section not in known:
            raise ResultError(f"benchmarks/results/{r.name}.json: section {r.section!r} is no heading's "
                              f"anchor in {DOC.relative_to(REPO)}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print, write or check the summary; returns the exit code."""
    p = argparse.ArgumentParser(description="The summary table of docs/benchmarks.md, from benchmarks/results/*.json.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the summary block in docs/benchmarks.md")
    mode.add_argument("--check", action="store_true", help="exit 1 if docs/benchmarks.md's summary block is stale")
    args = p.parse_args(argv)
    try:
        results = load_results()
        body = render(results)
        doc_text = DOC.read_text(encoding="utf-8")
        check_sections(results, doc_text)
        updated = replace_block(doc_text, body)
    except ResultError as e:
        sys.stderr.write(f"summary: error: {e}\n")
        return 2
    if args.write:
        if updated != doc_text:
            DOC.write_text(updated, encoding="utf-8")
        print(f"summary: {DOC.relative_to(REPO)}: {len(results)} rows")
    elif args.check:
        if updated != doc_text:
            sys.stderr.write(f"summary: {DOC.relative_to(REPO)} is stale: run python3 benchmarks/summary.py --write\n")
            return 1
        print(f"summary: {DOC.relative_to(REPO)} is up to date ({len(results)} rows)")
    else:
        print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
