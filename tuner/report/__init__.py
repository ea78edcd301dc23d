"""The report: one HTML page per run, for a person deciding which model to trust.

:func:`write_report` reads what a finished search left behind - Ray Tune's experiment state
(through :class:`ray.tune.ExperimentAnalysis`, which needs no running Ray), the resolved
``spec.yaml`` and the exported ``best/`` model - and writes ``<run>/report/``:

- ``index.html``: a self-contained page (inline CSS, PNG figures beside it);
- ``trials.csv``: one row per trial with its hyperparameters, epochs, best ``val_psnr`` and
  status (``completed``, ``stopped early`` by ASHA, ``ended by the time budget`` of the search,
  ``diverged``, ``errored``, ``unfinished``);
- ``summary.json``: the page's headline numbers, for scripts.

The page answers, in order: how good is the best model and how sure are we (test PSNR against
the noisy input, recomputed here from the exported weights), what did ASHA save, what does
each trial's learning curve look like, what do its outputs look like, how are the per-image
scores spread, how does it hold up at other noise levels, which hyperparameters mattered
(Optuna's fANOVA on the finished trials) and what its latent space encodes.

The package follows that data flow: :mod:`~tuner.report.run` reads the trials (statuses, compute
saved, the Optuna study), :mod:`~tuner.report.best` measures the exported model again,
:mod:`~tuner.report.figures` draws one PNG per function, and :mod:`~tuner.report.page` fills the
Jinja2 template ``page.html.j2`` (stylesheet ``page.css``) with plain data.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import yaml

from tuner.report.best import load_best
from tuner.report.page import render
from tuner.report.run import (COMPLETED, DIVERGED, ERRORED, STOPPED, TIME_BUDGET, UNFINISHED, load_trials,
                              trial_status, write_trials_csv)
from tuner.spec import ExperimentSpec
from tuner.storage import SPEC_FILE, is_uri, join, read_file, write

__all__ = ["write_report", "trial_status", "COMPLETED", "STOPPED", "TIME_BUDGET", "DIVERGED", "ERRORED",
           "UNFINISHED"]

log = logging.getLogger(__name__)

REPORT_DIR = "report"


def write_report(run_dir: str) -> Path:
    """Write ``<run_dir>/report/``: ``index.html`` with its figures, ``trials.csv`` and ``summary.json``.

    Works on a finished run and on an interrupted one (unfinished trials are marked so), with
    or without an exported best model; no Ray cluster is needed.

    Args:
        run_dir: the run folder (``<storage>/<name>``), a local path or a URI.

    Returns:
        The path of ``index.html`` (for a URI run, of the local copy that was uploaded).

    Raises:
        FileNotFoundError: ``run_dir`` is not a run folder (no ``spec.yaml``).
    """
    run_dir = str(run_dir) if is_uri(str(run_dir)) else str(Path(run_dir).expanduser().resolve())
    try:
        spec = ExperimentSpec.model_validate(yaml.safe_load(read_file(run_dir, SPEC_FILE)))
    except (FileNotFoundError, OSError):
        raise FileNotFoundError(f"{run_dir}: not a run folder (no {SPEC_FILE}); "
                                f"pass the folder 'tuner tune' made, e.g. runs/<name>") from None
    log.info("writing the report of %s", run_dir)
    out = Path(tempfile.mkdtemp(prefix="tuner-report-")) if is_uri(run_dir) else Path(run_dir, REPORT_DIR)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):  # figures of an earlier report that this one may not draw
        stale.unlink()

    trials = load_trials(run_dir, spec.budget)
    write_trials_csv(trials, spec, out / "trials.csv")
    best = load_best(run_dir)
    page, summary = render(run_dir, spec, trials, best, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    (out / "index.html").write_text(page, encoding="utf-8")

    if is_uri(run_dir):
        for f in sorted(out.iterdir()):
            write(join(run_dir, REPORT_DIR), f.name, f.read_bytes())
        log.info("report: %s (local copy %s)", join(run_dir, REPORT_DIR, "index.html"), out / "index.html")
    else:
        log.info("report: %s", out / "index.html")
    return out / "index.html"
