"""Shared by the benchmark scripts: machine description, markdown tables, timing, and writing a
script's results section into ``docs/benchmarks.md``.

Each script owns one section of that file, between ``<!-- NAME:start -->`` and
``<!-- NAME:end -->`` markers, so re-running one benchmark replaces only its own numbers.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"

_DOC_HEADER = """# Benchmarks

Scripts in `benchmarks/` print a markdown table and, with `--write`, replace their own section
below (between `<!-- name:start/end -->` markers). Each section names the machine, date and
command that produced it.
"""


def machine() -> dict[str, Any]:
    """CPU model, core count, torch version and threads: the context every number needs."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def describe_machine(threads: int | None = None) -> str:
    """One markdown line naming the machine, the date and the thread count."""
    m = machine()
    line = (f"Machine: {m['cpu']}, {m['cores']} cores, GPU {m['gpu']}; torch {m['torch']}, "
            f"Python {m['python']}; date {_dt.date.today().isoformat()}")
    return line + (f"; `torch.set_num_threads({threads})`." if threads else ".")


def command_line() -> str:
    """The command that produced the results, as a user would type it from the repo root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    return " ".join(["python", str(script), *map(shlex.quote, sys.argv[1:])])


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; floats are printed as given (format them before)."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def write_section(name: str, body: str, doc: Path = DOC) -> Path:
    """Replace (or append) the section ``name`` of ``docs/benchmarks.md`` with ``body``.

    Args:
        name: the section's marker name (the script's name).
        body: markdown, starting with the section's heading.
        doc: the file to update.

    Returns:
        The path written.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = doc.read_text(encoding="utf-8") if doc.exists() else _DOC_HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text, encoding="utf-8")
    return doc
