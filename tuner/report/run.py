"""Reading a run: every trial as Ray Tune saw it, how it ended, what ASHA saved, and the Optuna
study the importance figures are drawn from.

Ray Tune's experiment state is read with :class:`ray.tune.ExperimentAnalysis`, which needs no
running Ray.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from tuner.storage import STUDY_FILE
from tuner.budget import BudgetSpec
from tuner.config import HYPERPARAMETERS
from tuner.spec import Distribution, ExperimentSpec
from tuner.metrics import METRIC

log = logging.getLogger(__name__)

COMPLETED, STOPPED, DIVERGED, ERRORED, UNFINISHED = "completed", "stopped early", "diverged", "errored", "unfinished"
TIME_BUDGET = "ended by the time budget"  # still running when budget.time_budget_s ran out
STATUSES = (COMPLETED, STOPPED, TIME_BUDGET, DIVERGED, ERRORED, UNFINISHED)


@dataclass
class TrialSummary:
    """One trial: its config, its per-epoch curve and how it ended.

    Attributes:
        trial_id: Ray Tune's trial id.
        config: the trial's Tune config (fixed and searched hyperparameters).
        status: ``completed``, ``stopped early`` (by ASHA, at a rung), ``ended by the time budget``,
            ``diverged``, ``errored`` or ``unfinished``.
        ray_status: Ray Tune's own status (TERMINATED, ERROR, ...).
        epochs: the last epoch it reported (0 when it reported none).
        best_val_psnr: its best ``val_psnr`` (a diverged epoch counts as
            :data:`~tuner.train.DIVERGED_PSNR`; NaN when it reported nothing).
        best_epoch: the epoch of that score.
        curve: (budget position, val_psnr, diverged) per reported epoch; the position is in
            ``budget.time_attr`` units: the epoch, or the training seconds so far.
        progress: the last budget position it reported (epochs or training seconds).
        best_at: the budget position of its best score.
        seconds: its training time (Ray's ``time_total_s``).
        failures: how often Ray restarted it after a crash.
        error: the last line of its error, if it ever failed.
    """

    trial_id: str
    config: dict[str, Any]
    status: str
    ray_status: str
    epochs: int
    best_val_psnr: float
    best_epoch: int
    curve: list[tuple[int, float, bool]] = field(repr=False)
    seconds: float = 0.0
    failures: int = 0
    error: str = ""
    progress: float = 0
    best_at: float = 0


def load_trials(run_dir: str, budget: BudgetSpec) -> list[TrialSummary]:
    """Read every trial of a run from Ray Tune's experiment state and result files.

    Args:
        run_dir: the run folder (local path or URI).
        budget: the run's budget (its spec's): ``max_t`` in ``time_attr`` units (epochs or training
            seconds), ASHA's rungs and the search's ``time_budget_s``.

    Returns:
        The trials in the order Ray Tune created them.
    """
    from ray.tune import ExperimentAnalysis

    time_attr = budget.time_attr
    analysis = ExperimentAnalysis(run_dir)
    frames = analysis.trial_dataframes
    trials = []
    for t in analysis.trials:
        df = frames.get(t.trial_id)
        curve: list[tuple[float, float, bool]] = []
        epoch_of: list[int] = []
        if df is not None and len(df) and time_attr in df:
            curve = [(x if time_attr != "epoch" else int(x), float(p), bool(d)) for x, p, d in
                     zip(df[time_attr], df[METRIC], df.get("diverged", [0] * len(df)))]
            epoch_of = [int(e) for e in df["epoch"]]
        # As Ray ranks it: a diverged epoch reports DIVERGED_PSNR, the worst finite score.
        finite = [(p, i) for i, (_, p, _) in enumerate(curve) if math.isfinite(p)]
        best_psnr, best_i = max(finite) if finite else (math.nan, None)
        best_epoch = epoch_of[best_i] if best_i is not None else 0
        best_at = curve[best_i][0] if best_i is not None else 0
        error = ""
        if t.run_metadata.error_filename:  # Ray sets it when it writes the trial's error.txt
            text = (t.get_error() or "").strip()
            error = text.splitlines()[-1] if text else "error.txt not found"
        seconds = float(df["time_total_s"].iloc[-1]) if curve and "time_total_s" in df else 0.0
        epochs = epoch_of[-1] if curve else 0
        progress = curve[-1][0] if curve else 0
        status = trial_outcome(budget, t.status, epochs=epoch_of, progress=[x for x, _, _ in curve],
                               done=_last_flag(df, "done") if curve else None, diverged=bool(curve and curve[-1][2]),
                               has_error=bool(error), max_epochs=t.config.get("max_epochs"))
        trials.append(TrialSummary(
            trial_id=t.trial_id, config=dict(t.config), ray_status=t.status, status=status,
            epochs=epochs, best_val_psnr=best_psnr, best_epoch=best_epoch, curve=curve,
            seconds=seconds, failures=int(t.num_failures), error=error, progress=progress, best_at=best_at))
    return trials


def trial_outcome(budget: BudgetSpec, ray_status: str, *, epochs: Sequence[int], progress: Sequence[float],
                  done: Optional[bool], diverged: bool, has_error: bool, max_epochs: Optional[int] = None) -> str:
    """How a trial ended (:func:`trial_status`), from what its run folder records.

    Args:
        budget: the run's budget.
        ray_status: Ray Tune's status of the trial.
        epochs: the ``epoch`` of each of its results, in order.
        progress: the ``budget.time_attr`` value of each result (the epoch, or the training seconds).
        done: ``done`` of its last result (None when the results do not record it).
        diverged: its last result has ``diverged == 1``.
        has_error: Ray recorded an error for it.
        max_epochs: its own ``max_epochs`` (its config's), if not the budget's.
    """
    cap = int(max_epochs or budget.max_epochs)
    position = progress[-1] if len(progress) else 0
    # A trial stops itself when its budget is spent (tuner.train.Trainer.finished): max_epochs
    # epochs, or under a budget in seconds max_train_seconds or max_epochs, whichever comes first.
    if budget.time_attr == "epoch":
        limit = cap
    else:
        limit = position if len(epochs) and epochs[-1] >= cap else budget.max_t
    return trial_status(ray_status, position, diverged, has_error, limit,
                        ended_by_time_budget(budget, ray_status, progress, done, has_error))


def _last_flag(df, column: str) -> Optional[bool]:
    """A boolean column's last value; None when the column or its value is missing."""
    if column not in df:
        return None
    v = df[column].iloc[-1]
    return None if v is None or v != v else bool(v)  # v != v: NaN


def trial_status(ray_status: str, epochs: float, diverged: bool, has_error: bool, max_epochs: float,
                 out_of_time: bool = False) -> str:
    """How a trial ended, in the report's words.

    A trial Ray restarted after a crash and that then ran on normally is judged by how it
    ended (its ``failures`` count still shows the crash); ``errored`` means it ended in error.

    Args:
        ray_status: Ray Tune's status (``TERMINATED``, ``ERROR``, ``RUNNING``, ``PENDING``, ``PAUSED``).
        epochs: the last budget position it reported (epochs, or training seconds: ``budget.time_attr``).
        diverged: its last result has ``diverged == 1``.
        has_error: Ray recorded an error (``error.txt``) for it.
        max_epochs: its budget, in the same units.
        out_of_time: the search's time budget ended it (:func:`ended_by_time_budget`), not ASHA.

    Returns:
        ``completed``, ``stopped early``, ``ended by the time budget``, ``diverged``, ``errored`` or
        ``unfinished``.
    """
    if ray_status == "ERROR" or (has_error and ray_status != "TERMINATED"):
        return ERRORED
    if ray_status == "TERMINATED" and epochs == 0:  # ended without one result
        return TIME_BUDGET if out_of_time else ERRORED  # ...waiting to start, or crashed before one
    if diverged:
        return DIVERGED
    if ray_status != "TERMINATED":
        return UNFINISHED  # the search was interrupted; `tuner tune --resume` continues it
    if epochs >= max_epochs:  # epochs and max_epochs: in budget units
        return COMPLETED
    return TIME_BUDGET if out_of_time else STOPPED


def asha_rungs(budget: BudgetSpec) -> list[float]:
    """Where ASHA compares trials, in ``time_attr`` units (:attr:`tuner.budget.BudgetSpec.rungs`)."""
    return budget.rungs


def rung_decisions(progress: Sequence[float], rungs: Sequence[float]) -> list[Optional[float]]:
    """The rung ASHA judged a trial at on each of its results, None where it judged nothing.

    Ray's ``_Bracket.on_result``: each result is judged at the highest rung it has reached and
    the trial has not been judged at yet, if any; there ASHA stops the trial when its score is
    below the rung's cutoff. So ASHA can have stopped a trial only on a result judged here.

    Args:
        progress: the trial's ``time_attr`` value of each result, in order.
        rungs: :func:`asha_rungs`.
    """
    judged: set[float] = set()
    out: list[Optional[float]] = []
    for x in progress:
        rung = next((r for r in sorted(rungs, reverse=True) if x >= r and r not in judged), None)
        if rung is not None:
            judged.add(rung)
        out.append(rung)
    return out


def ended_by_time_budget(budget: BudgetSpec, ray_status: str, progress: Sequence[float],
                         done: Optional[bool], has_error: bool = False) -> bool:
    """Whether the search's time budget (``budget.time_budget_s``), not ASHA, ended a trial.

    When the budget runs out Ray Tune stops every trial still running or waiting
    (``TuneController._stop_experiment_if_needed``): they end ``TERMINATED`` like the trials ASHA
    stopped, and the Optuna study marks them ``PRUNED`` like those too. What tells them apart is
    the trial's last result: ASHA stops a trial on a result it judges at a rung
    (:func:`rung_decisions`), and Ray marks that result ``done`` (``_process_trial_result``:
    ``result.update(done=True)`` on the scheduler's STOP, before ``result.json`` is written). A
    trial the time budget stopped from outside has ``done`` false on its last result, or reported
    none; where the results do not record ``done``, a last result that ASHA did not judge at a
    rung is the sign.

    A trial that ended itself also logs no ``done``: one that reached ``max_t`` or its
    ``max_epochs`` is ``completed`` whatever this says (:func:`trial_outcome`).

    Args:
        budget: the run's budget.
        ray_status: Ray Tune's status of the trial.
        progress: its ``time_attr`` value of each result, in order.
        done: ``done`` of its last result (None when the results do not record it).
        has_error: Ray recorded an error for it.
    """
    if not budget.time_budget_s or ray_status != "TERMINATED":
        return False
    if not len(progress):
        return not has_error  # stopped while it waited to start
    if done is not None:
        return not done
    return rung_decisions(progress, asha_rungs(budget))[-1] is None


def ranked(trials: list[TrialSummary]) -> list[TrialSummary]:
    """Best ``val_psnr`` first; trials that reported nothing last."""
    return sorted(trials, key=lambda t: -t.best_val_psnr if math.isfinite(t.best_val_psnr) else math.inf)


def write_trials_csv(trials: list[TrialSummary], spec: ExperimentSpec, path: Path) -> None:
    """One row per trial: outcome columns, then every hyperparameter of its config, then its error."""
    params = _param_columns(trials, spec)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial_id", "status", "epochs", f"best_{METRIC}", "best_epoch",
                    "time_total_s", "failures", *params, "error"])
        for t in ranked(trials):
            w.writerow([t.trial_id, t.status, t.epochs, _num(t.best_val_psnr), t.best_epoch,
                        round(t.seconds, 3), t.failures, *(t.config.get(p, "") for p in params), t.error])


def _param_columns(trials: list[TrialSummary], spec: ExperimentSpec) -> list[str]:
    """Searched hyperparameters first (spec order), then the fixed ones (TrialConfig order)."""
    present = {k for t in trials for k in t.config}
    rest = [h for h in HYPERPARAMETERS if h in present and h not in spec.search]
    return [*spec.search, *rest, *sorted(present - set(spec.search) - set(HYPERPARAMETERS))]


def _num(x: float) -> str:
    return "" if not math.isfinite(x) else repr(float(x))


# ---------------------------------------------------------------- what ASHA saved

@dataclass
class Compute:
    """The budget run against what a search without early stopping would have run, in
    ``budget.time_attr`` units (epochs, or training seconds; the field names say epochs)."""

    epochs_run: float
    epochs_full: float
    saved_by_asha: float  # what the trials ASHA stopped at a rung did not run
    saved_by_time_budget: float  # what the trials the search's time budget ended did not run
    saved_other: float  # what diverged, errored or unfinished trials did not run
    seconds: float

    @property
    def saved_pct(self) -> float:
        return 100.0 * (self.epochs_full - self.epochs_run) / self.epochs_full if self.epochs_full else 0.0


def compute_saved(trials: list[TrialSummary], max_t: float) -> Compute:
    """How much of a full search (every trial to ``max_t``) the run actually ran, in the budget's
    units (epochs, or training seconds)."""
    left = {t.trial_id: max(0, max_t - t.progress) for t in trials}
    asha = sum(left[t.trial_id] for t in trials if t.status == STOPPED)
    out_of_time = sum(left[t.trial_id] for t in trials if t.status == TIME_BUDGET)
    return Compute(epochs_run=sum(t.progress for t in trials), epochs_full=len(trials) * max_t,
                   saved_by_asha=asha, saved_by_time_budget=out_of_time,
                   saved_other=sum(left.values()) - asha - out_of_time, seconds=sum(t.seconds for t in trials))


# ---------------------------------------------------------------- which hyperparameters mattered

def importance_study(trials: list[TrialSummary], spec: ExperimentSpec, run_dir: str):
    """The Optuna study the importance and parallel-coordinate figures are drawn from.

    The source is the run's study database (:mod:`tuner.study`, what optuna-dashboard shows):
    its ``COMPLETE`` trials, those that ran to ``max_epochs`` (or diverged, at 0 dB), each with
    its best ``val_psnr``. Trials ASHA stopped are ``PRUNED`` there and left out: an early score
    is not comparable with a full-length one. A run without a database (a URI run with no
    ``--study-storage``, or one made before tuner kept it) is rebuilt from the trials' results,
    every trial that reported a score counting with its best.

    Returns:
        (an in-memory study of the scored trials, None), or (None, a sentence saying why
        importances cannot be computed).
    """
    import optuna

    if not spec.search:
        return None, "Nothing was searched (the spec has no search section), so there is nothing to rank."
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stored = _stored_trials(spec, run_dir)
    if stored is not None:
        scored, what = stored, "trials that ran to the end"
    else:
        distributions = {k: _optuna_distribution(d) for k, d in spec.search.items()}
        scored = [optuna.trial.create_trial(params={k: t.config[k] for k in distributions},
                                            distributions=distributions, value=t.best_val_psnr)
                  for t in trials if math.isfinite(t.best_val_psnr) and all(k in t.config for k in distributions)]
        what = "scored trials"
    varied = [k for k in spec.search if len({json.dumps(t.params.get(k)) for t in scored}) > 1]
    if len(scored) < 2 or not varied:
        return None, (f"{len(scored)} {what} and {len(varied)} searched hyperparameter(s) took more than one "
                      f"value among them: importances need at least 2 such trials and one varied "
                      f"hyperparameter. Run more trials (--num-samples).")
    study = optuna.create_study(direction="maximize")
    study.add_trials(scored)
    study.set_user_attr("scored", what)  # how the page names the trials it ranks
    return study, None


def _stored_trials(spec: ExperimentSpec, run_dir: str):
    """The COMPLETE trials of the run's study database, or None when the run has none. A prior
    study's trials there (``searcher.prior_studies``) ran another search's budget: left out."""
    import optuna

    from tuner.study import PRIOR_STUDY, StudyError, default_storage_url, open_storage, storage_url, study_exists

    url = storage_url(spec, run_dir)
    if url is None or (url == default_storage_url(run_dir) and not Path(run_dir, STUDY_FILE).exists()):
        return None
    try:
        storage = open_storage(url)
        if not study_exists(storage, spec.name):
            return None
        study = optuna.load_study(study_name=spec.name, storage=storage)
        return [t for t in study.get_trials(deepcopy=True, states=(optuna.trial.TrialState.COMPLETE,))
                if PRIOR_STUDY not in t.user_attrs]
    except StudyError as e:
        log.warning("the report rebuilds importances from the trials: %s", e)
        return None


def _optuna_distribution(d: Distribution):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    k, v = d.kind, d.value
    if k == "choice":
        return CategoricalDistribution(list(v))
    if k in ("uniform", "loguniform"):
        return FloatDistribution(float(v[0]), float(v[1]), log=k == "loguniform")
    return IntDistribution(int(v[0]), int(v[1]), log=k == "logint")


def fanova():
    """Optuna's default importance evaluator, seeded: the same report twice."""
    from optuna.importance import FanovaImportanceEvaluator

    return FanovaImportanceEvaluator(seed=0)
