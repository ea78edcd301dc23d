"""The search against its alternatives at equal wall time (issue 31): is `tuner tune` worth it?

Three arms get the same task (one spec a user could have written: data, noise, validation and test
images, model family, search space, warm start) and the same wall time W, counted from the arm's
process start to its final test score (start-up, data loading, export and scoring included). Each
arm runs in its own process, one after another, never two at once:

- ``tuner``: ``tuner tune SPEC --no-report`` as shipped (Ray Tune, Optuna TPE, ASHA in training
  seconds), its ``budget.time_budget_s`` set to W less its measured start-up and export, so that
  ``best/metrics.json`` (its ``test_psnr``) is written by W. From ``time_budget_s`` alone the search
  is a race, then its winner continues from its checkpoint (``budget.continue_best``); the record's
  trial log lists the continuation as ``winner_<trial>`` (and a late starter's second interval as
  ``late_<trial>``).
- ``alone``: no search. The spec's first ``start_from`` (on its ``fixed`` and defaults) trained by
  ``tuner.fit`` for the whole budget, its learning-rate schedule spanning it; the best validation
  epoch's weights are scored.
- ``optuna``: what a user writes with Optuna alone: the same space (``trial.suggest_*``), the same
  ``fit`` and per-trial budget, ``TPESampler`` (seeded, the spec's ``searcher`` settings) and
  ``HyperbandPruner`` (the spec's grace period, per-trial budget and reduction factor) told
  ``val_psnr`` after every validation (step: the epoch, or whole training seconds), the warm start
  enqueued (``enqueue_trial``), ``study.optimize(n_trials=num_samples, timeout=...)`` with as many
  threads as the machine's cores fit trials; the best epoch of any trial is scored. The trial still
  running at the deadline is stopped there (its schedule cut, not shortened), as Ray Tune's
  ``time_budget_s`` stops tuner's.

All arms score the same way as ``tuner.export.export_best``: ``val_psnr`` on the validation split
(noise seed ``eval_noise.seed``), ``test_psnr`` on the test split (seed + ``TEST_SEED_OFFSET``), each
whole image, the output rounded to 8 bits, large images denoised in tiles as ``tuner denoise`` does.

Tasks (``TASKS``): ``bsd68_s25`` (``search_spaces/bsd68.yaml`` as shipped: Train400 -> BSD68,
sigma 25, 30 minutes; the headline) and 10-minute tasks in ``benchmarks/versus/`` that the warm
starts were not tuned for: impulse noise on the photos, sigma 50 in colour, the digits
quickstart with a time budget, and five warm starts a user brings from a notebook, far from the task's
best: the digits from seed 001's recipe, colour photos with impulse noise from seed 000's, the
digits at light, unclipped noise from seed 004's, the digits from seed 003's dense autoencoder, and
the digits under impulse noise from seed 002's (trained on clean digits in its notebook); and
``digits_defaults`` and ``photos_defaults``, seed 001's and seed 000's tasks as a user who leaves
``resources`` at their defaults writes them (two 1-CPU trials at once).
``--seeds`` replaces the spec's seed (searcher, trials, weights); the evaluation noise stays fixed.
A task of your own is a spec file in ``--tasks`` (named by its file name, W from ``--wall-s``,
600 s by default): the same three arms on your data, space and warm start (without ``start_from``,
``alone`` trains the spec's ``fixed`` values on tuner's defaults).

Each (task, seed, arm) is saved to ``benchmarks/out/versus/*.json`` as it finishes and skipped when
run again (``--force`` reruns it); ``--write`` renders the markdown section from everything saved
(printed, and written to ``benchmarks/out/versus/section.md``, with the summary table's row in
``benchmarks/out/versus/bench_versus.json``, ``benchmarks/summary.py``'s format). On the 2-core CPU:

    python benchmarks/bench_versus.py --seeds 0 1                        # ~11 h: 2 x (3 x 30 + 24 x 10 min)
    python benchmarks/bench_versus.py --tasks bsd68_s25 --seeds 0 1      # the headline, ~3 h
    python benchmarks/bench_versus.py --write                            # the section
    python benchmarks/bench_versus.py --tasks quickstart --budget-scale 0.1 --write   # smoke, ~3.5 min
    python benchmarks/bench_versus.py --tasks my_spec.yaml --seeds 0 1 --write        # yours, 2 x 3 x 10 min
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, command_line, machine, table  # noqa: E402
from tuner.data import Splits, load_dataset  # noqa: E402
from tuner.denoise import denoise  # noqa: E402
from tuner.metrics import METRIC, TEST_SEED_OFFSET, EvalSet, evaluate, psnr_per_image  # noqa: E402
from tuner.model import build_model  # noqa: E402
from tuner.config import TrialConfig  # noqa: E402
from tuner.search import startup_trials  # noqa: E402
from tuner.spec import Distribution, ExperimentSpec, SpecError, load_spec  # noqa: E402
from tuner.train import fit  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = REPO / "benchmarks" / "out" / "versus"
ARMS = ("tuner", "alone", "optuna")


@dataclasses.dataclass(frozen=True)
class Task:
    """One benchmark task: a spec and the wall time every arm gets."""

    name: str
    spec: Path  # a spec file a user could have written
    wall_s: float  # W: each arm's wall time, process start to test score
    what: str  # one line for the doc


TASKS = {t.name: t for t in [
    Task("bsd68_s25", REPO / "search_spaces" / "bsd68.yaml", 1800,
         "Train400 -> BSD68, Gaussian sigma 25, gray (`search_spaces/bsd68.yaml` as shipped)"),
    Task("impulse_bsd68", HERE / "versus" / "impulse_bsd68.yaml", 600,
         "Train400 -> BSD68, impulse noise on 20% of the pixels, gray"),
    Task("cbsd68_s50", HERE / "versus" / "cbsd68_s50.yaml", 600,
         "CBSD432 -> CBSD68, Gaussian sigma 50, colour"),
    Task("quickstart", HERE / "versus" / "quickstart.yaml", 600,
         "5,000 MNIST digits (mnist5k), Gaussian 0.5 (`quickstart.yaml` with a time budget)"),
    Task("digits_notebook", HERE / "versus" / "digits_notebook.yaml", 600,
         "5,000 MNIST digits (mnist5k), Gaussian 0.5, from seed 001's notebook recipe (a warm start not tuned for it)"),
    Task("photos_notebook", HERE / "versus" / "photos_notebook.yaml", 600,
         "CBSD432 -> CBSD68, impulse noise on 10% of the pixels, colour, from seed 000's notebook recipe (a warm start not tuned for it)"),
    Task("digits_bn_notebook", HERE / "versus" / "digits_bn_notebook.yaml", 600,
         "5,000 MNIST digits (mnist5k), Gaussian 0.1 unclipped, from seed 004's notebook recipe (a warm start not tuned for it)"),
    Task("dense_notebook", HERE / "versus" / "dense_notebook.yaml", 600,
         "5,000 MNIST digits (mnist5k), Gaussian 0.5, from seed 003's notebook recipe (a dense warm start not tuned for it)"),
    Task("conv_notebook", HERE / "versus" / "conv_notebook.yaml", 600,
         "5,000 MNIST digits (mnist5k), impulse noise on 20% of the pixels, from seed 002's notebook recipe (a warm start not tuned for it)"),
    Task("digits_defaults", HERE / "versus" / "digits_defaults.yaml", 600,
         "5,000 MNIST digits (mnist5k), Gaussian 0.5, from seed 001's notebook recipe, resources left at their defaults (two 1-CPU trials at once)"),
    Task("photos_defaults", HERE / "versus" / "photos_defaults.yaml", 600,
         "CBSD432 -> CBSD68, impulse noise on 10% of the pixels, colour, from seed 000's notebook recipe, resources left at their defaults (two 1-CPU trials at once)"),
]}

DATA_PATHS = ("path", "train_path", "val_path", "test_path")  # dataset folders a spec may name


def task_of(arg: str, wall_s: float = 600.0) -> Task:
    """A task by name (``TASKS``), or a task of your own: a spec file (``.yaml`` / ``.yml``), named
    by its file name, with ``wall_s`` for W.

    Raises:
        ValueError: one line: neither a task nor a spec file, a spec that does not load, a file name
            that is a built-in task's with another spec.
    """
    if arg in TASKS:
        return TASKS[arg]
    path = Path(arg)
    if path.suffix not in (".yaml", ".yml"):
        raise ValueError(f"{arg}: not a task ({', '.join(TASKS)}) nor a spec file (.yaml)")
    try:
        load_spec(path)
    except SpecError as e:
        raise ValueError(str(e)) from None
    name = re.sub(r"[^\w-]", "_", path.stem)
    if name in TASKS:
        if TASKS[name].spec == path.resolve() and TASKS[name].wall_s == wall_s:
            return TASKS[name]
        raise ValueError(f"{arg}: its name is the built-in task {name}'s; rename the file")
    if not wall_s > 0:
        raise ValueError(f"--wall-s must be more than 0 seconds (got {wall_s:g})")
    return Task(name, path.resolve(), float(wall_s), f"`{arg}` (a spec of your own)")


def _task(name: str, records: list[dict]) -> Task:
    """The task of saved records: a built-in one, or one of your own as its records describe it."""
    if name in TASKS:
        return TASKS[name]
    r = records[0]
    return Task(name, Path(r.get("task_spec", "")), r["wall_budget_s"] / r.get("budget_scale", 1),
                r.get("task_what", name))


# The tuner arm's process spends time outside Ray Tune's time_budget_s: Python and torch imports and
# Ray's start-up before it, stopping the trials and Ray Tune's bookkeeping after it, then the export
# (calibrated per task, as is data loading). Measured on the 2-core CPU: 7 s + 1 s idle, 13 s + 7 s
# with other jobs on it; each record keeps the tuner arm's true overhead (overhead_s).
TUNER_FIXED_S = 12.0
# What an arm keeps for its export and test scoring: the scoring of the task's costliest model
# (calibrated before the arms, on the idle machine) plus RESERVE_PAD_S; an in-process arm keeps more
# when its validations show the machine slower than that: SCORING_FACTOR times what they predict.
RESERVE_PAD_S = 3.0
SCORING_FACTOR = 1.3
# The share of a trial's wall time in training steps under a budget in seconds: validation (capped at
# tuner.train.VALIDATION_SHARE, 2.5%, in the trainer) and the first epoch's set-up take the rest.
TRAIN_SHARE = 0.97


# ---------------------------------------------------------------- the task, as every arm gets it

def resolve_spec(task: Task, seed: int, scale: float, tune_budget_s: float) -> ExperimentSpec:
    """The task's spec for one seed: the searcher's and trials' seed replaced, ``budget.time_budget_s``
    set to what the tuner arm's Ray Tune gets, and (``scale`` < 1, smoke runs) explicit per-trial
    seconds and ASHA's grace period shrunk in proportion to it; budgets derived from
    ``time_budget_s`` follow it by themselves.

    Args:
        task: the task.
        seed: the seed.
        scale: the budget scale (1 for the benchmark).
        tune_budget_s: the tuner arm's ``time_budget_s``.
    """
    shipped = load_spec(task.spec)
    spec = shipped.with_overrides(seed=seed, name=f"versus-{task.name}-s{seed}", time_budget_s=tune_budget_s)
    if task.name not in TASKS:  # yours: its folders as named from where you ran this (the arms run in REPO)
        folders = {k: str(Path(v).resolve()) for k in DATA_PATHS
                   if isinstance(v := getattr(spec.dataset, k, None), str) and not Path(v).is_absolute()}
        spec = spec.with_overrides(**folders)
    b = spec.budget
    explicit = "max_train_seconds" in b.model_fields_set  # set by the spec, not derived from time_budget_s
    if scale != 1 and b.time_attr == "train_seconds" and explicit:
        shrink = tune_budget_s / (shipped.budget.time_budget_s or tune_budget_s)  # as a derived budget would
        spec = spec.with_overrides(max_train_seconds=round(b.max_train_seconds * shrink, 1),
                                   grace_period=round(b.grace_period * shrink, 1))
    return spec


def costliest(spec: ExperimentSpec) -> TrialConfig:
    """The warm start with every size hyperparameter the search can raise at its largest: the slowest
    model to score, for the export reserve."""
    fields = {**spec.base_config(), **(spec.start_from[0] if spec.start_from else {})}
    for key in ("width", "latent_dim", "depth", "convs_per_stage"):
        d = spec.search.get(key)
        if d is not None:
            values = d.extremes()
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                fields[key] = max(values)
    return TrialConfig(**fields)


def score(spec: ExperimentSpec, data: Splits, config: TrialConfig, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Score weights as ``tuner.export.export_best`` does: ``val_psnr`` on the validation split,
    ``test_psnr`` on the test split (its own fixed noise), whole images, output rounded to 8 bits,
    tiled as ``tuner denoise``, on the CPU.

    Returns:
        ``val_psnr``, ``test_psnr``, ``test_ssim``, ``noisy_val_psnr``, ``noisy_test_psnr``.
    """
    c, h, w = data.shape
    model = build_model(config, c, h, w)
    model.load_state_dict(state)
    noise, seed = spec.eval_noise.noise(), spec.eval_noise.seed
    val = EvalSet.make(data.val, noise, seed)
    test = EvalSet.make(data.test, noise, seed + TEST_SEED_OFFSET)
    v = evaluate(model, val)
    t = evaluate(model, test, quantize=True, denoiser=lambda m, x: denoise(m, x))
    return {METRIC: v["psnr"], "test_psnr": t["psnr"], "test_ssim": t["ssim"],
            "noisy_val_psnr": float(psnr_per_image(val.noisy, val.clean).mean()),
            "noisy_test_psnr": float(psnr_per_image(test.noisy, test.clean).mean())}


def calibrate(spec: ExperimentSpec) -> dict[str, float]:
    """Seconds to load the task's data, and to score its costliest model: what the arms must keep
    in hand."""
    start = time.perf_counter()
    data = load_dataset(**spec.dataset.model_dump())
    load_s = time.perf_counter() - start
    _import_scoring()  # an arm has imported it by the time it scores
    config = costliest(spec)
    model = build_model(config, *data.shape)
    start = time.perf_counter()
    score(spec, data, config, model.state_dict())
    return {"load_s": load_s, "export_s": time.perf_counter() - start}


# ---------------------------------------------------------------- in-process arms

class Best:
    """The best epoch so far by ``val_psnr``, over every trial of an arm: its weights on the CPU."""

    def __init__(self) -> None:
        self.val_psnr = -math.inf
        self.config: Optional[TrialConfig] = None
        self.state: Optional[dict[str, torch.Tensor]] = None
        self.where: dict[str, Any] = {}
        self._lock = threading.Lock()  # Optuna's n_jobs runs trials in threads

    def offer(self, epoch, config: TrialConfig, trial: Optional[int] = None) -> None:
        v = epoch.metrics[METRIC]
        if not math.isfinite(v) or v <= self.val_psnr or epoch.metrics["diverged"]:
            return
        with self._lock:
            if v > self.val_psnr:
                self.val_psnr, self.config = v, config
                self.state = {k: t.detach().to("cpu", copy=True) for k, t in epoch.trainer.model.state_dict().items()}
                self.where = {"trial": trial, "epoch": epoch.metrics["epoch"],
                              "train_seconds": epoch.metrics["train_seconds"]}


def _pixels(images) -> int:
    """Pixels of an (N, C, H, W) array or of a list of (C, H, W) images."""
    return sum(int(a.size) for a in images) if isinstance(images, list) else int(images.size)


class Deadline:
    """When an in-process arm must have its test score, and how it stops training in time.

    Args:
        at: ``time.time()`` by which the test score must be done.
        reserve_s: seconds kept for scoring (calibrated on an idle machine: the floor).
        data: the splits; scoring costs about (val + test pixels) / val pixels validations, so a
            slow validation (another job on the machine) reserves more.
    """

    def __init__(self, at: float, reserve_s: float, data: Splits):
        self.at, self.reserve_s = at, reserve_s
        self.validations = 1 + _pixels(data.test) / _pixels(data.val)  # scoring, in validations

    def training_ends(self, val_s: float = 0.0) -> float:
        """When training must be over, validation included, the last validation having taken ``val_s``."""
        predicted = SCORING_FACTOR * self.validations * val_s + 1.0 if val_s else 0.0
        return self.at - max(self.reserve_s, predicted)

    def stop(self, trainer, val_s: float) -> bool:
        """Make a running ``fit`` end its training by :meth:`training_ends`.

        ``fit``'s wall-clock stop (``end_by``) re-plans the trial's schedule to end there, what tuner's
        winner does; an arm's trial is cut instead, as Ray Tune's ``time_budget_s`` cuts a race's
        trial, and the alone arm keeps the plan it had (its records compare with runs before
        ``end_by`` existed). When the trial's own budget would carry it past the deadline,
        the trainer's ``max_train_seconds`` is lowered to what the time left allows, at every yield
        (so the end follows the pace measured so far): its batch loop stops there and validates, as
        Ray Tune's ``time_budget_s`` stops a trial. The next stretch of training cannot be foreseen
        from the last: under a budget in seconds ``fit`` validates further apart as a trial runs
        (when a validation costs under ``tuner.train.VALIDATION_SHARE`` of the training since the
        last), so waiting until the next stretch might cross the deadline let one Optuna trial run
        40 s past W (``cbsd68_s50``, seed 1, 2026-12-06). The learning-rate schedule keeps the
        trial's own budget (the trainer's schedule spans its ``horizon``, set when it was built): the run is
        cut, not shortened. This replaces ``Trainer.config``, which ``fit`` does not document as
        settable: the one place this script leans on tuner's internals (``tests/test_bench_versus.py``
        fails if it stops working).

        Args:
            trainer: the ``Trainer`` of the epoch ``fit`` just yielded.
            val_s: the last validation's seconds.

        Returns:
            Whether it lowered the budget (the trial is then stopped by the deadline).
        """
        left = self.training_ends(val_s) - time.time()
        current = trainer.config.max_train_seconds
        needed = math.inf if current is None else (current - trainer.train_seconds) / TRAIN_SHARE + val_s
        if needed <= left:
            return False  # the trial ends in time by itself
        limit = trainer.train_seconds + max(1e-3, TRAIN_SHARE * (left - val_s) - 0.5)
        trainer.config = dataclasses.replace(trainer.config, max_train_seconds=limit)
        return True


def _threads(spec: ExperimentSpec) -> int:
    return max(1, int(spec.resources.cpus_per_trial))


def cores() -> int:
    """The cores this process may run on (its CPU affinity), as Ray counts a machine's CPUs."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _import_scoring() -> None:
    """Import what the first validation imports (torchmetrics' SSIM, ~1 s) before training starts,
    so that the first ``val_seconds`` measures a validation: :meth:`Deadline.stop` plans with it."""
    from torchmetrics.functional.image import structural_similarity_index_measure  # noqa: F401


def run_alone(spec: ExperimentSpec, data: Splits, deadline: float, reserve_s: float,
              threads: Optional[int] = None) -> dict[str, Any]:
    """The ``alone`` arm: the spec's first ``start_from`` trained by ``fit`` until ``deadline`` less
    ``reserve_s`` (the schedule spanning it), its best validation epoch scored.

    Args:
        spec: the task's spec.
        data: its splits.
        deadline: ``time.time()`` by which the test score must be done.
        reserve_s: seconds kept for scoring.
        threads: PyTorch threads (default: every core: one model has the machine).

    Returns:
        The arm's record (see :func:`score`), with ``trials``, ``epochs``, ``train_seconds``, ``best_config``.
    """
    _import_scoring()
    noise, seed = spec.eval_noise.noise(), spec.eval_noise.seed
    clock = Deadline(deadline, reserve_s, data)
    seconds = TRAIN_SHARE * (clock.training_ends() - time.time())
    if seconds <= 1:
        raise SystemExit(f"alone: {seconds:.1f} s left to train: give the task more time")
    config = TrialConfig(**{**spec.base_config(), **(spec.start_from[0] if spec.start_from else {}),
                            "max_epochs": 100000, "max_train_seconds": round(seconds, 1)})
    best, cut = Best(), False
    metrics: dict[str, Any] = {}
    for epoch in fit(config, data, noise, eval_seed=seed, threads=threads or cores()):
        metrics = epoch.metrics
        best.offer(epoch, config)
        cut = clock.stop(epoch.trainer, metrics["val_seconds"]) or cut
    if best.state is None:
        raise SystemExit("alone: no epoch finished without diverging")
    return {**score(spec, data, best.config, best.state), "trials": 1, "best_config": best.config.to_dict(),
            "best_epoch": best.where, "epochs": metrics.get("epoch"), "train_seconds": metrics.get("train_seconds"),
            "samples_per_s": metrics["samples_seen"] / max(metrics["train_seconds"], 1e-9),
            "scheduled_seconds": config.max_train_seconds, "cut_by_deadline": cut}


def suggest(trial, name: str, d: Distribution) -> Any:
    """``trial.suggest_*`` for one of the spec's distributions."""
    k, v = d.kind, d.value
    if k == "choice":
        return trial.suggest_categorical(name, list(v))
    if k in ("uniform", "loguniform"):
        return trial.suggest_float(name, v[0], v[1], log=k == "loguniform")
    return trial.suggest_int(name, v[0], v[1], log=k == "logint")


def make_study(spec: ExperimentSpec):
    """The Optuna study a user writes for the spec: TPE seeded and set as the spec's ``searcher``
    (as ``tuner.search.make_sampler`` does), Hyperband over the spec's per-trial budget, the warm
    starts enqueued."""
    import optuna

    s, b = spec.searcher, spec.budget
    sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=startup_trials(spec), multivariate=s.multivariate,
                                         constant_liar=s.constant_liar)
    pruner = optuna.pruners.HyperbandPruner(min_resource=max(1, int(round(b.grace_period))),
                                            max_resource=max(1, int(round(b.max_t))),
                                            reduction_factor=int(round(b.reduction_factor)))
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner, study_name=spec.name)
    for point in spec.start_from:
        study.enqueue_trial(point)
    return study


def run_optuna(spec: ExperimentSpec, data: Splits, deadline: float, reserve_s: float, study=None,
               machine_cores: Optional[int] = None) -> dict[str, Any]:
    """The ``optuna`` arm: ``study.optimize`` over the spec's space until ``deadline`` less ``reserve_s``,
    the best epoch of any trial scored.

    Args:
        spec: the task's spec.
        data: its splits.
        deadline: ``time.time()`` by which the test score must be done.
        reserve_s: seconds kept for scoring.
        study: a study from :func:`make_study` (default: a new one).
        machine_cores: the machine's cores (default :func:`cores`); ``n_jobs`` is that // cpus_per_trial.

    Returns:
        The arm's record (see :func:`score`), with ``trials``, ``states``, ``best_config``, ``n_jobs``.
    """
    import optuna

    _import_scoring()
    study = study or make_study(spec)
    noise, seed = spec.eval_noise.noise(), spec.eval_noise.seed
    base, by_epoch = spec.base_config(), spec.budget.time_attr == "epoch"
    threads = _threads(spec)
    n_jobs = max(1, (machine_cores or cores()) // threads)
    clock = Deadline(deadline, reserve_s, data)
    best = Best()

    def objective(trial: optuna.Trial) -> float:
        config = TrialConfig(**{**base, **{k: suggest(trial, k, d) for k, d in spec.search.items()}})
        value, step, cut = -math.inf, -1, False
        # A trial Optuna starts shortly before the deadline stops there even before its first yield
        # (fit's stop_at: the schedule still spans the trial's budget; budgets in seconds only).
        stop_at = max(1e-3, TRAIN_SHARE * (clock.training_ends() - time.time()))
        for epoch in fit(config, data, noise, eval_seed=seed, threads=threads, stop_at=stop_at):
            m = epoch.metrics
            best.offer(epoch, config, trial.number)
            value = max(value, m[METRIC])
            trial.set_user_attr("epochs", m["epoch"])
            trial.set_user_attr("samples_per_s", m["samples_seen"] / max(m["train_seconds"], 1e-9))
            step = m["epoch"] if by_epoch else max(int(m["train_seconds"]), step + 1)
            trial.report(m[METRIC], step)
            if trial.should_prune():
                raise optuna.TrialPruned()
            cut = clock.stop(epoch.trainer, m["val_seconds"]) or cut
        if (config.max_train_seconds is not None and stop_at < config.max_train_seconds
                and m["train_seconds"] >= stop_at):
            cut = True  # it reached stop_at (budgets in seconds only): the deadline ended it, not its own budget
        if cut:  # stopped by the deadline: what tuner tells its study too (tuner.study.end_running)
            trial.set_user_attr("stopped", "deadline")
            raise optuna.TrialPruned()
        return value

    optuna.logging.set_verbosity(optuna.logging.INFO)
    study.optimize(objective, n_trials=spec.budget.num_samples, timeout=max(0.0, clock.training_ends() - time.time()),
                   n_jobs=n_jobs, catch=(Exception,))
    if best.state is None:
        raise SystemExit("optuna: no trial finished an epoch without diverging")
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    log = [{"number": t.number, "state": t.state.name, "params": t.params, "steps": len(t.intermediate_values),
            "last_step": max(t.intermediate_values, default=None),
            "best": max(t.intermediate_values.values(), default=None), **t.user_attrs} for t in study.trials]
    return {**score(spec, data, best.config, best.state), "trials": len(study.trials), "states": states,
            "best_config": best.config.to_dict(), "best_epoch": best.where, "n_jobs": n_jobs,
            "pruner": type(study.pruner).__name__, "trial_log": log}


def child(arm: str, spec_path: Path, deadline: float, reserve_s: float, result: Path) -> None:
    """An in-process arm in its own process: load the spec and data, run, write the record."""
    spec = load_spec(spec_path)
    data = load_dataset(**spec.dataset.model_dump())
    print(f"{arm}: data loaded, {deadline - time.time():.0f} s to the deadline", flush=True)
    record = (run_alone if arm == "alone" else run_optuna)(spec, data, deadline, reserve_s)
    record["scored_at"] = time.time()
    result.write_text(json.dumps(record, indent=1))


# ---------------------------------------------------------------- the driver

def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TUNER_STUDY_STORAGE"}  # each run keeps its own study
    return {**env, "PYTHONUNBUFFERED": "1"}


class ArmFailed(Exception):
    """An arm's process ended without a test score; the message is its last log line."""


def _tuner_record(run_dir: Path) -> dict[str, Any]:
    """The tuner arm's record, from what its run left: ``best/`` and the study's database."""
    import optuna

    metrics_file = run_dir / "best" / "metrics.json"
    if not metrics_file.exists():
        raise ArmFailed(f"tuner exited 0 without {metrics_file}")
    m = json.loads(metrics_file.read_text())
    config = json.loads((run_dir / "best" / "config.json").read_text())["trial"]
    states: dict[str, int] = {}
    try:
        study = optuna.load_study(study_name=run_dir.name, storage=f"sqlite:///{run_dir / 'study.db'}")
    except Exception as e:  # noqa: BLE001 (the states are a detail; the scores are in best/)
        print(f"tuner: no study in {run_dir} ({e}); trial states left out", flush=True)
    else:
        for t in study.trials:
            if "prior_study" not in t.user_attrs:  # an earlier study's trials (searcher.prior_studies) ran elsewhere
                states[t.state.name] = states.get(t.state.name, 0) + 1
    log = []
    for result in [*sorted(run_dir.glob("trial_*/result.json")), *sorted(run_dir.glob("late/late_*/result.json")),
                   *sorted(run_dir.glob("winner/winner_*/result.json"))]:
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            last = rows[-1]
            log.append({"trial": result.parent.name, "epochs": last["epoch"], "train_seconds": last["train_seconds"],
                        "best": max(r[METRIC] for r in rows),
                        "samples_per_s": last["samples_seen"] / max(last["train_seconds"], 1e-9)})
    return {**{k: m[k] for k in (METRIC, "test_psnr", "test_ssim", "noisy_val_psnr", "noisy_test_psnr")},
            "trials": len(list(run_dir.glob("trial_*"))), "states": states, "trial_log": log, "best_config": config,
            "best_epoch": {"trial": m.get("trial_id"), "epoch": m.get("epoch"),
                           "train_seconds": m.get("train_seconds")},
            "scored_at": metrics_file.stat().st_mtime}


def run_arm(arm: str, task: Task, seed: int, spec_path: Path, wall_s: float, reserve_s: float, stem: str) -> dict:
    """Run one arm in its own process and time it from its start to its test score."""
    logs = OUT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    result = OUT / f"{stem}.partial.json"
    result.unlink(missing_ok=True)
    if arm == "tuner":
        storage = OUT / "runs"
        run_dir = storage / f"{stem}"
        shutil.rmtree(run_dir, ignore_errors=True)  # this script's own earlier run of the same arm
        cmd = [sys.executable, "-m", "tuner", "tune", str(spec_path), "--storage", str(storage),
               "--name", stem, "--no-report"]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", arm, "--spec", str(spec_path),
               "--reserve", f"{reserve_s:.1f}", "--result", str(result)]
    with open(logs / f"{stem}.log", "w") as log:
        start = time.time()
        if arm != "tuner":
            cmd += ["--deadline", f"{start + wall_s:.3f}"]
        log.write(" ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.run(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT).returncode
        exited = time.time() - start
    if rc != 0:
        tail = (logs / f"{stem}.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise ArmFailed(f"exit {rc}: {tail[0][:300]} (log: {os.path.relpath(logs / (stem + '.log'), REPO)})")
    record = _tuner_record(run_dir) if arm == "tuner" else json.loads(result.read_text())
    result.unlink(missing_ok=True)
    record.update(wall_s=record.pop("scored_at") - start, exit_s=exited)
    return record


def run(tasks: list[Task], arms: list[str], seeds: list[int], scale: float, force: bool,
        tuner_overhead_s: float = TUNER_FIXED_S) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        name, wall = task.name, task.wall_s * scale
        cal = calibrate(resolve_spec(task, 0, scale, task.wall_s * scale))
        reserve = cal["export_s"] + RESERVE_PAD_S
        tune_budget = wall - tuner_overhead_s - cal["load_s"] - reserve
        print(f"{name}: W {wall:.0f} s; data {cal['load_s']:.1f} s, scoring {cal['export_s']:.1f} s "
              f"(reserve {reserve:.0f} s); tuner's time_budget_s {tune_budget:.0f} s", flush=True)
        if tune_budget <= 0:
            raise SystemExit(f"{name}: a wall time of {wall:.0f} s leaves the tuner arm no search time")
        for i, seed in enumerate(seeds):
            spec = resolve_spec(task, seed, scale, round(tune_budget, 1))
            specs = OUT / "specs"
            specs.mkdir(parents=True, exist_ok=True)
            spec_path = specs / f"{name}_s{seed}{_suffix(scale)}.yaml"
            spec_path.write_text(spec.to_yaml())
            for arm in arms[i % len(arms):] + arms[:i % len(arms)]:  # each seed in another order: drift evens out
                stem = f"{name}_s{seed}_{arm}{_suffix(scale)}"
                path = OUT / f"{stem}.json"
                if path.exists() and not force and not json.loads(path.read_text()).get("failed"):
                    print(f"{stem}: saved already (--force to rerun)", flush=True)
                    continue
                print(f"{stem}: running, {wall:.0f} s", flush=True)
                try:
                    record = run_arm(arm, task, seed, spec_path, wall, reserve, stem)
                except ArmFailed as e:  # saved as such (run again next time): the other arms still run
                    record = {"failed": str(e), "test_psnr": None, METRIC: None, "trials": None, "wall_s": None,
                              "best_config": {}}
                if arm == "tuner" and record.get("wall_s") is not None:  # its time outside Ray Tune's budget
                    record["overhead_s"] = record["wall_s"] - spec.budget.time_budget_s
                record.update(task=name, task_spec=str(task.spec), task_what=task.what, seed=seed, arm=arm,
                              wall_budget_s=wall, budget_scale=scale,
                              reserve_s=reserve, tune_budget_s=spec.budget.time_budget_s,
                              max_train_seconds=spec.budget.max_train_seconds, grace_period=spec.budget.grace_period,
                              spec=os.path.relpath(spec_path, REPO), date=time.strftime("%Y-%m-%d"),
                              machine=machine(), command=command_line())
                path.write_text(json.dumps(record, indent=1))
                if record.get("failed"):
                    print(f"{stem}: FAILED, {record['failed']}", flush=True)
                else:
                    print(f"{stem}: test_psnr {record['test_psnr']:.2f} dB, val {record[METRIC]:.2f}, "
                          f"{record['trials']} trial(s), {record['wall_s']:.0f} s of {wall:.0f}", flush=True)


def _suffix(scale: float) -> str:
    return "" if scale == 1 else f"_x{scale:g}"


# ---------------------------------------------------------------- the doc section

def _load(scale: float) -> list[dict]:
    if not OUT.exists():
        return []
    records = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json")) if not p.name.endswith(".partial.json")]
    return [r for r in records if "task" in r and r.get("budget_scale", 1) == scale]  # not the summary row


CONFIG_KEYS = ("width", "latent_dim", "depth", "convs_per_stage", "residual", "lr", "loss", "noise_level", "dropout")


def _config(c: dict, searched: tuple[str, ...] = ()) -> str:
    """A configuration in one line: CONFIG_KEYS, then the task's other searched hyperparameters."""
    keys = CONFIG_KEYS + tuple(k for k in searched if k not in CONFIG_KEYS)
    return ", ".join(f"{k} {c[k]:.3g}" if isinstance(c[k], float) else f"{k} {c[k]}" for k in keys if k in c)


def _speed(r: dict) -> str:
    """Training throughput (images or crops per training second): the median over the arm's trials,
    so that a loaded machine during one arm shows."""
    values = sorted(t["samples_per_s"] for t in r.get("trial_log", []) if t.get("samples_per_s"))
    if r.get("samples_per_s"):
        values = [r["samples_per_s"]]
    return f"{values[len(values) // 2]:.0f}" if values else "-"


def render(scale: float = 1.0) -> str:
    """The markdown section, from the saved records of this budget scale."""
    records = _load(scale)
    lines = [HEADING, ""]
    if not records:
        return "\n".join(lines + ["No results saved yet: run `python benchmarks/bench_versus.py`."])
    if scale != 1:
        lines += [f"**Smoke run: every wall budget scaled by {scale:g}. These numbers test the script, "
                  "they are not results.**", ""]
    m = records[-1]["machine"]
    dates = sorted({r["date"] for r in records})
    lines += ["Each arm gets the same task (one spec: data, noise, validation and test images, model family, "
              "search space, warm start) and the same wall time W, from its process start to its test score "
              "(start-up, export and scoring included), one arm at a time. `tuner`: `tuner tune SPEC` as shipped, "
              "its `time_budget_s` set to W less its start-up and export (from it alone: a race of 30% of it, "
              "then the race's winner continues from its checkpoint; docs/search-spaces.md). `alone`: the spec's warm start "
              "(`start_from[0]`) trained by `tuner.fit` for all of W, its schedule spanning it. `optuna`: Optuna "
              "alone on the same space, `fit` and per-trial budget: `TPESampler` (the spec's searcher settings) + "
              "`HyperbandPruner` told `val_psnr` per validation, the warm start enqueued, "
              "`study.optimize(timeout=...)`. Every arm keeps its best validation epoch; `test_psnr` is scored "
              "as the export does (whole test images, output rounded to 8 bits, tiled).", "",
              f"Machine: {m['cpu']}, {m['cores']} cores, GPU {m['gpu']}; torch {m['torch']}, Python {m['python']}; "
              f"run {', '.join(dates)}, one arm at a time with no other job on the machine; each task's commands "
              "and dates are under its heading.", ""]
    names = {r["task"]: None for r in records}
    for name in [t for t in TASKS if t in names] + sorted(t for t in names if t not in TASKS):
        rs = [r for r in records if r["task"] == name]
        task = _task(name, rs)
        by = {(r["seed"], r["arm"]): r for r in rs}
        ok = {k: r for k, r in by.items() if not r.get("failed")}
        seeds = sorted({r["seed"] for r in rs})
        arms = [a for a in ARMS if any(r["arm"] == a for r in rs)]
        others = [a for a in arms if a != "tuner"] if "tuner" in arms else []

        def diffs(a: str) -> list[float]:
            return [ok[s, "tuner"]["test_psnr"] - ok[s, a]["test_psnr"]
                    for s in seeds if (s, "tuner") in ok and (s, a) in ok]

        rows = []
        for s in seeds:
            row = [s] + [f"{ok[s, a]['test_psnr']:.2f}" if (s, a) in ok else "failed" if (s, a) in by else "-"
                         for a in arms]
            row += [f"{ok[s, 'tuner']['test_psnr'] - ok[s, a]['test_psnr']:+.2f}"
                    if (s, "tuner") in ok and (s, a) in ok else "-" for a in others]
            rows.append(row)
        if len(seeds) > 1:
            row = ["mean"]
            for a in arms:
                v = [ok[s, a]["test_psnr"] for s in seeds if (s, a) in ok]
                row.append(f"**{sum(v) / len(v):.2f}**" if v else "-")
            row += [f"**{sum(diffs(a)) / len(diffs(a)):+.2f}**" if diffs(a) else "-" for a in others]
            rows.append(row)
        noisy = next((r["noisy_test_psnr"] for r in ok.values()), None)
        commands = sorted({r["command"] for r in rs if r.get("command")})
        lines += [f"### {name}: {task.what}, W = {rs[0]['wall_budget_s'] / 60:g} min", "",
                  f"Run {', '.join(sorted({r['date'] for r in rs}))}: "
                  + "; ".join(f"`{c}`" for c in commands) + ".", "",
                  "Test PSNR (dB" + (f"; the noisy input scores {noisy:.2f}" if noisy is not None else "") + "):", "",
                  table(["seed"] + arms + [f"tuner - {a}" for a in others], rows), ""]
        detail, searched = [], tuple(load_spec(task.spec).search) if task.spec.is_file() else ()
        for r in sorted(rs, key=lambda r: (r["seed"], ARMS.index(r["arm"]))):
            if r.get("failed"):
                detail.append([r["seed"], r["arm"], "-", "-", "-", f"failed: {r['failed']}"])
                continue
            states = r.get("states") or {}
            trials = str(r["trials"]) + (f" ({', '.join(f'{n.lower()} {k}' for n, k in sorted(states.items()))})"
                                         if states else "")
            over = " (over)" if r["wall_s"] > r["wall_budget_s"] * 1.01 else ""
            detail.append([r["seed"], r["arm"], f"{r[METRIC]:.2f}", trials,
                           f"{r['wall_s']:.0f} / {r['wall_budget_s']:.0f}{over}", _speed(r), _config(r["best_config"], searched)])
        lines += [table(["seed", "arm", "val_psnr", "trials (Optuna states)", "wall s (of W)", "samples / training s",
                         "best configuration"], detail), ""]
    return "\n".join(lines).rstrip() + "\n"


HEADING = "## The search against its alternatives at equal wall time (`bench_versus.py`)"
HEADLINE_TASK = "bsd68_s25"


def _machine_short(m: dict) -> str:
    """``Intel Xeon, 2 cores, no GPU``: the summary table's way of naming a machine."""
    words = re.sub(r"\((R|TM)\)", "", m["cpu"]).replace("Processor", "").replace("CPU", "").split()
    gpu = "no GPU" if m["gpu"] == "none" else m["gpu"]
    return f"{' '.join(words[:2])}, {m['cores']} cores, {gpu}"


def headline(scale: float = 1.0) -> Optional[dict[str, Any]]:
    """The summary row (``benchmarks/summary.py``'s results format) of the headline task, or of the
    first task with results: tuner's mean test PSNR over the seeds against the better alternative's."""
    ok = [r for r in _load(scale) if not r.get("failed")]
    names = [HEADLINE_TASK] + [t for t in TASKS if t != HEADLINE_TASK]
    for name in names:
        rs = [r for r in ok if r["task"] == name]
        seeds = sorted({r["seed"] for r in rs if r["arm"] == "tuner"})
        means = {}
        for arm in ARMS:
            v = [r["test_psnr"] for r in rs if r["arm"] == arm and r["seed"] in seeds]
            if v:
                means[arm] = round(sum(v) / len(v), 2)
        if "tuner" not in means or len(means) < 2:
            continue
        alt = max((a for a in means if a != "tuner"), key=means.get)
        what = {"alone": "the warm start trained alone", "optuna": "Optuna alone (TPE + Hyperband)"}
        others = [f"{what[a]}: {means[a]:.2f} dB" for a in means if a not in ("tuner", alt)]
        task, last = TASKS[name], max(rs, key=lambda r: r["date"])
        smoke = f" (smoke run: budgets x{scale:g})" if scale != 1 else ""
        return {
            "title": "The search against its alternatives" + ("" if name == HEADLINE_TASK else f" ({name})"),
            "figure": f"test PSNR, {task.what}, {task.wall_s * scale / 60:g} minutes of wall time per arm "
                      f"(start-up and export included){smoke}",
            "unit": "dB", "tuner": means["tuner"], "baseline": means[alt],
            "baseline_name": f"the better alternative, {what[alt]}" + (f" ({'; '.join(others)})" if others else ""),
            "difference": round(means["tuner"] - means[alt], 2),
            "target": "above both alternatives at equal wall time", "met": means["tuner"] > means[alt],
            "machine": _machine_short(last["machine"]), "date": last["date"], "runs": len(seeds),
            "section": re.sub(r"[^\w\- ]", "", HEADING[3:].strip().lower()).replace(" ", "-"),
        }
    return None


def main() -> None:
    global OUT
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="*", default=list(TASKS), metavar="TASK",
                   help=f"tasks to run: {', '.join(TASKS)} (default all), or spec files of your own (.yaml)")
    p.add_argument("--wall-s", type=float, default=600.0, metavar="SECONDS",
                   help="W, each arm's wall time, for a spec file of your own (default 600)")
    p.add_argument("--arms", nargs="*", default=list(ARMS), choices=ARMS, help="arms to run (default all)")
    p.add_argument("--seeds", nargs="*", type=int, default=[0], help="seeds (each replaces the spec's seed)")
    p.add_argument("--budget-scale", type=float, default=1.0,
                   help="multiply every task's wall time (and explicit per-trial seconds) by this: smoke runs")
    p.add_argument("--out", type=Path, default=OUT, help="where results, specs, runs and logs go")
    p.add_argument("--force", action="store_true", help="rerun (task, seed, arm) results saved already")
    p.add_argument("--tuner-overhead-s", type=float, default=TUNER_FIXED_S,
                   help="seconds the tuner arm spends outside Ray Tune's time budget besides data loading "
                        f"and the export (default {TUNER_FIXED_S:g}; see overhead_s in its records)")
    p.add_argument("--write", action="store_true", help="render the markdown section to OUT/section.md")
    p.add_argument("--child", choices=["alone", "optuna"], help=argparse.SUPPRESS)  # one in-process arm
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    p.add_argument("--reserve", type=float, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, a.spec, a.deadline, a.reserve, a.result)
        return
    OUT = a.out.resolve()
    if not 0 < a.budget_scale <= 1:
        p.error("--budget-scale must be in (0, 1]")
    ran = "--tasks" in sys.argv or "--seeds" in sys.argv or "--arms" in sys.argv or not a.write
    try:
        tasks = [task_of(t, a.wall_s) for t in a.tasks]
    except ValueError as e:
        p.error(str(e))
    if ran:
        run(tasks, a.arms, a.seeds, a.budget_scale, a.force, a.tuner_overhead_s)
    body = render(a.budget_scale)
    print(body)
    if a.write:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "section.md").write_text(body)
        print(f"wrote {OUT / 'section.md'}")
        row = headline(a.budget_scale)
        if row:  # benchmarks/summary.py's format: the lead copies it to benchmarks/results/
            (OUT / "bench_versus.json").write_text(json.dumps(row, indent=2) + "\n")
            print(f"wrote {OUT / 'bench_versus.json'}")


if __name__ == "__main__":
    main()
