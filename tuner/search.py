"""The search: Ray Tune over a spec, with Optuna TPE suggesting and ASHA stopping early.

:func:`run_search` loads the dataset once, puts it in Ray's object store
(``tune.with_parameters``) so concurrent trials on a node share one copy, and runs a
``Tuner`` whose trials are :func:`train_trial` - a thin adapter from Tune's config dict to
:func:`tuner.train.fit`. The searcher is :class:`tuner.searcher.StudySearch` (Optuna TPE, told each
trial's true outcome, its study in a database; the spec's ``start_from`` queued first). Each
epoch reports its metrics; checkpoints come on a new best, at the end and at least every
``budget.checkpoint_every_s``, and only the best few per trial are kept (ranked by ``val_psnr``).
At the end the best checkpoint of the best trial is exported to ``<run>/best/`` (``tuner.export``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from tuner.cluster import check_trial_fits, largest_node_cpus
from tuner.data import Splits, load_dataset
from tuner.export import export_best
from tuner.metrics import METRIC, MODE
from tuner.noise import Noise
from tuner.race import (TIE_DB, continuation_seconds, is_warm_start, late_start_bar, late_starter, race_lead,
                        race_winner, training_share)
from tuner.budget import CONTINUE_END_S, CONTINUE_START_S
from tuner.config import TrialConfig
from tuner.spec import ExperimentSpec
from tuner.storage import CONFIG_FILE, METRICS_FILE, SPEC_FILE, STATE_FILE, absolute, exists, join, write
from tuner.train import CheckpointCadence, fit, noisy_baseline, pick_device

log = logging.getLogger(__name__)



class SearchError(Exception):
    """The search could not produce a result; the message is one line for the user."""


# ---------------------------------------------------------------- the trial (Ray adapter)

def train_trial(config: dict[str, Any], data: Splits, eval_noise: dict[str, Any], threads: int,
                checkpoint_every_s: float = 0.0, rungs: tuple[float, ...] = (), stop_at: Optional[float] = None,
                start=None, continued_from: Optional[str] = None, end_by: Optional[float] = None) -> None:
    """Ray Tune function trainable: one trial of the search.

    Args:
        config: Tune's config dict; its keys are :class:`TrialConfig` fields.
        data: the dataset splits, from the object store (shared by the node's trials).
        eval_noise: the experiment's evaluation noise (``kind``, ``level``, ``level_max``, ``seed``).
        threads: PyTorch CPU threads (the CPUs given to the trial).
        checkpoint_every_s: the most seconds between two checkpoints (``budget.checkpoint_every_s``):
            an epoch is checkpointed on a new best, at the end, and at least this often
            (:class:`tuner.train.CheckpointCadence`); every epoch reports its metrics.
        rungs: ASHA's rungs in training seconds: a trial validates as soon as it reaches one.
        stop_at: the race's end in training seconds (``budget.race_seconds``): the trial stops there,
            checkpointed, its schedules spanning ``max_train_seconds`` (``fit(stop_at=)``).
        start: the winner's continuation: the race's checkpoint (a ``tune.Checkpoint``) to continue from.
        continued_from: the continued race trial's id, reported with every epoch.
        end_by: the winner's continuation: the wall-clock time (``time.time()``) by which it ends by
            itself, validated (``fit(end_by=)``), before Ray Tune's ``time_budget_s`` would stop it.
    """
    from ray import tune

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" line per epoch is noise
    trial = TrialConfig(**config)
    noise, seed = _eval_noise(eval_noise)
    state = None
    checkpoint = tune.get_checkpoint() or start  # its own when a crashed or resumed trial restarts
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    import ray

    node = ray.get_runtime_context().get_node_id()  # nodes share an IP when simulated on one machine
    _warn_unusable_gpu(ray.get_gpu_ids())
    device = pick_device().type  # what fit() trains on
    cadence = CheckpointCadence(checkpoint_every_s)
    for epoch in fit(trial, data, noise, eval_seed=seed, checkpoint=state, threads=threads, milestones=rungs,
                     stop_at=stop_at, end_by=end_by):
        metrics = {**epoch.metrics, "node_id": node, "device": device, "threads": torch.get_num_threads()}
        if continued_from:
            metrics["continued_from"] = continued_from
        if not cadence.due(epoch):
            tune.report(metrics)
            continue
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            torch.save(epoch.checkpoint(), Path(d) / STATE_FILE)
            (Path(d) / CONFIG_FILE).write_text(json.dumps(trial.to_dict(), indent=2))
            # The epoch's metrics travel with its checkpoint: a resume can rebuild Ray's record of a
            # checkpoint that the killed driver never logged (tuner.resume).
            (Path(d) / METRICS_FILE).write_text(json.dumps(epoch.metrics))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        cadence.written(time.perf_counter() - start)


def gpu_hint(cluster_gpus: float, gpus_per_trial: float) -> Optional[str]:
    """The one line a search prints when the machine (or cluster) has GPUs its spec does not ask
    for, with what to set; None when there is nothing to say."""
    if cluster_gpus <= 0 or gpus_per_trial > 0:
        return None
    return (f"this Ray cluster has {cluster_gpus:g} GPU(s) but resources.gpus_per_trial is 0, so every trial "
            f"trains on the CPU; to pack 4 trials per GPU give --gpus-per-trial 0.25 --max-concurrent "
            f"{max(4, int(4 * cluster_gpus))} (docs/gpu.md), or a GPU spec such as search_spaces/bsd68_gpu.yaml")


_gpu_warned = False


def _warn_unusable_gpu(gpu_ids: list) -> None:
    """Say once per worker process that Ray gave this trial a GPU that PyTorch cannot use.

    The device is ``pick_device()``'s (``torch.cuda.is_available()``), never Ray's GPU ids: a node
    may advertise a GPU (``ray start --num-gpus``, a fake cluster) without a CUDA build of torch.
    """
    global _gpu_warned
    if gpu_ids and not torch.cuda.is_available() and not _gpu_warned:
        _gpu_warned = True
        log.warning("Ray assigned GPU %s to this trial but PyTorch has no usable CUDA device "
                    "(torch %s); training on the CPU", ",".join(map(str, gpu_ids)), torch.__version__)


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def _identity_psnr(spec: ExperimentSpec, data: Splits) -> Optional[float]:
    """The noisy validation images' own ``val_psnr`` (what a model that changes nothing scores), for
    a race's scheduler; None when there is no race with a warm start."""
    if not (spec.budget.continue_best and spec.start_from):
        return None
    noise, seed = _eval_noise(spec.eval_noise.model_dump())
    return noisy_baseline(data, noise, seed)


def _eval_noise(spec: dict[str, Any]) -> tuple[Noise, int]:
    return Noise.from_dict(spec), int(spec["seed"])


# ---------------------------------------------------------------- the driver

@dataclass
class SearchResult:
    """What a finished search leaves behind.

    Attributes:
        run_dir: the run folder (local path or URI).
        best_dir: the exported best model folder.
        best_config: the best trial's hyperparameters.
        metrics: ``val_psnr``, ``test_psnr``, ``test_ssim``, noisy baselines, trial id, epoch.
        results: Ray Tune's ``ResultGrid`` for every trial.
    """

    run_dir: str
    best_dir: str
    best_config: dict[str, Any]
    metrics: dict[str, Any]
    results: Any


def run_search(spec: ExperimentSpec, *, storage: str = "./runs", address: Optional[str] = None,
               resume: bool = False, verbose: int = 1) -> SearchResult:
    """Run (or resume) a search and export its best model.

    Args:
        spec: the validated experiment (CLI overrides already applied).
        storage: where runs live: a local folder or a URI such as ``s3://bucket/path``;
            the run is ``<storage>/<spec.name>``.
        address: a Ray cluster to join (``auto`` for the one ``ray start``/``ray up`` made);
            None starts a local Ray.
        resume: continue the interrupted run of the same name instead of starting anew.
        verbose: Ray Tune's verbosity (0 silent, 1 progress table, 2 more).

    Returns:
        The :class:`SearchResult`.

    Raises:
        SearchError: nothing to resume, a run of that name exists already, or no trial succeeded.
        tuner.cluster.CapacityError: no node of the cluster (nor any node type its autoscaler can
            add) can run a trial.
    """
    import ray
    from ray import tune

    from tuner import study
    from tuner.resume import recorded_trials
    from tuner.resume import repair as repair_snapshot
    from tuner.searcher import resuming_in

    # Trials of a few seconds checkpoint often by design; Ray's hint about it is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    storage = absolute(storage)
    run_dir = join(storage, spec.name)
    started = exists(join(run_dir, "tuner.pkl"))
    if resume and not started:
        raise SearchError(f"nothing to resume at {run_dir}; run without --resume to start it")
    if not resume and started:
        raise SearchError(f"a run named {spec.name!r} exists in {storage}; "
                          f"add --resume to continue it, or pick another --name")
    data = load_dataset(**spec.dataset.model_dump())  # a bad folder fails here, before a study or Ray exists
    if not resume:  # a resumed search reopens the study its searcher saved
        study_storage, spec, proven = _open_study(spec, run_dir)
    joined = bool(address) or ray.is_initialized()  # a Ray started here has no autoscaler
    _init_ray(address)
    check_trial_fits(spec.resources.cpus_per_trial, spec.resources.gpus_per_trial, joined=joined)
    hint = gpu_hint(ray.cluster_resources().get("GPU", 0), spec.resources.gpus_per_trial)
    if hint:
        log.warning(hint)

    b = spec.budget
    identity = _identity_psnr(spec, data)  # the race's scheduler and its late starter
    params = {"data": data, "eval_noise": spec.eval_noise.model_dump(),  # the object store
              "threads": max(1, int(spec.resources.cpus_per_trial)), "checkpoint_every_s": b.checkpoint_every_s}
    resources = {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial}
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, **params, rungs=tuple(b.rungs) if b.time_attr == "train_seconds" else (),
                             stop_at=b.race_seconds if b.continue_best else None),
        resources,
    )
    if resume:
        log.info("resuming search %s from %s", spec.name, run_dir)
        # Ray's last snapshot may name checkpoints deleted since (tuner.resume)
        repair_snapshot(run_dir, study.storage_url(spec, run_dir), spec.name)
        ray_trials = recorded_trials(run_dir)
        with resuming_in(run_dir, ray_trials):  # the searcher's study moves with the run folder
            tuner = tune.Tuner.restore(run_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        num_samples = b.num_samples if spec.search else 1
        if not spec.search:
            log.info("nothing to search (the spec has no search: entries): training its fixed configuration "
                     "as one trial%s", f"; num_samples {b.num_samples} does not apply" if b.num_samples > 1 else "")
        each = (f"{b.max_epochs} epochs" if b.time_attr == "epoch" else f"{b.max_t:g} training seconds")
        log.info("starting search %s: %d trials, up to %s each, in %s", spec.name, num_samples, each, run_dir)
        if b.continue_best:
            log.info("the race takes about %.0f s of the %.0f s budget (at most %.0f); then its best trial continues "
                     "from its checkpoint (to about %.0f training seconds)", b.race_budget_s, b.time_budget_s,
                     b.race_limit_s, b.max_train_seconds)
        write(run_dir, SPEC_FILE, spec.to_yaml())
        tuner = make_tuner(spec, trainable, storage=storage, search_alg=make_searcher(spec, study_storage, run_dir),
                           scheduler=make_scheduler(spec, identity_psnr=identity, proven=proven),
                           num_samples=num_samples, verbose=verbose)
    fit_start = time.monotonic()
    with resuming_in(run_dir, ray_trials) if resume else contextlib.nullcontext():
        results = tuner.fit()
    budget = b.race_limit_s
    url = study.storage_url(spec, run_dir)
    if budget and url and time.monotonic() - fit_start >= budget:  # stopped by the time budget, not Ctrl-C
        told = study.end_running(study.open_storage(url), spec.name, b.max_epochs)  # epochs: see end_running
        log.info("time budget of %g s spent: %d running trial(s) stopped", budget, told)
    finals: list = []
    if b.continue_best:
        # Resumed: the race's time is not known, the winner gets its share; else what the race left.
        left = b.time_budget_s - (b.race_budget_s if resume else time.monotonic() - fit_start)
        finals = continue_winner(spec, results, params, resources, run_dir, left_s=left, resume=resume,
                                 verbose=verbose, identity=identity)
    log.info("search %s finished: %d trials; exporting the best model", spec.name, len(results))
    best_dir, best_config, metrics = export_best([*results, *finals], spec, data, run_dir)
    return SearchResult(run_dir, best_dir, best_config, metrics, results)


# ---------------------------------------------------------------- the winner continues

WINNER = "winner"  # the continuation's Ray Tune experiment: <run>/winner/
LATE = "late"  # a late starter's second race interval, before the winner is named: <run>/late/
LATE_SHARE = 1 / 3  # a late starter's second interval may take at most this share of the wall time the race left


def solo_resources(spec: ExperimentSpec, node_cpus: float) -> dict[str, float]:
    """What the race's winner is given to train on alone after the race: on CPUs,
    the CPUs of every slot the race ran (``cpus_per_trial`` x ``max_concurrent``), as far as one node
    has them (``node_cpus``: :func:`tuner.cluster.largest_node_cpus`), and as many PyTorch threads.
    The race's other slots are empty by then, and a model trained on two threads trains 1.4-1.5x the
    crops a second it does on one (docs/benchmarks.md, "The winner trains on the race's slots"):
    with the defaults (one CPU a trial, two at once) the winner would leave half a 2-core machine idle
    for the rest of the budget. A GPU trial keeps its share (``gpus_per_trial``): alone on the device
    it has the rest of it anyway. A late starter's second interval keeps the race's resources: it is
    judged against the winner's curve in training seconds, which the race measured on them.

    Args:
        spec: the experiment.
        node_cpus: the most CPUs one live node has; no more than ``cpus_per_trial`` keeps a trial's.
    """
    r = spec.resources
    cpus = r.cpus_per_trial
    if r.gpus_per_trial == 0:
        cpus = max(cpus, min(cpus * spec.budget.max_concurrent, math.floor(node_cpus)))
    return {"cpu": cpus, "gpu": r.gpus_per_trial}


def latest_checkpoint(result) -> Optional[tuple[Any, dict[str, Any]]]:
    """A race trial's latest checkpoint and the metrics reported with it, or None. Ray keeps the
    latest on disk (``result.checkpoint``) beside the best ``keep_checkpoints``, but lists only the best
    in ``result.best_checkpoints``: with ``keep_checkpoints: 1`` the latest is often not among them, so
    its metrics are the row of the trial's results that wrote it (``checkpoint_dir_name``)."""
    latest = result.checkpoint
    if latest is None:
        return None
    for c, m in result.best_checkpoints:
        if c.path == latest.path:
            return c, m
    df = result.metrics_dataframe
    if df is None or "checkpoint_dir_name" not in df:
        return None
    rows = df[df["checkpoint_dir_name"] == os.path.basename(latest.path.rstrip("/"))]
    return (latest, rows.iloc[-1].to_dict()) if len(rows) else None


def continue_winner(spec: ExperimentSpec, race, params: dict[str, Any], resources: dict[str, float], run_dir: str, *,
                    left_s: float, resume: bool = False, verbose: int = 1, identity: Optional[float] = None) -> list:
    """The winner continues: the race's best trial (:func:`tuner.race.race_winner`) resumes from its latest
    checkpoint as one more Ray Tune experiment, ``<run>/winner/``, and trains for the time the race
    left, its schedules stretched to span it: ``max_train_seconds`` set to where it should end
    (:func:`tuner.race.continuation_seconds`), then moved by the trainer as it measures its pace, so
    that it ends, validated, just before the budget does (``fit(end_by=)``).

    Before it, a late starter (:func:`tuner.race.late_starter`) that lost the race trains on from its
    checkpoint for one more race interval, to twice ``race_seconds`` (``<run>/late/``), when that takes
    at most :data:`LATE_SHARE` of the time left; it takes the winner's place if it then clears
    :func:`tuner.race.late_start_bar`.

    Args:
        spec: the experiment (``budget.continue_best``).
        race: the race's results (Ray Tune's ``ResultGrid``).
        params: :func:`train_trial`'s data, noise, threads and checkpoint cadence.
        resources: a race trial's resources: a late starter's second interval keeps them, judged
            against the winner's race seconds; the winner is given every slot's (:func:`solo_resources`).
        run_dir: the run folder.
        left_s: wall seconds left of ``budget.time_budget_s``.
        resume: continue an interrupted continuation if there is one.
        verbose: Ray Tune's verbosity.
        identity: the noisy validation images' own ``val_psnr`` (:func:`tuner.train.noisy_baseline`);
            None: no late starter.

    Returns:
        The late starter's and the continuation's results (none when there was no time or no winner).
    """
    b = spec.budget
    ok = [r for r in race if r.metrics and not r.metrics.get("diverged") and r.best_checkpoints]
    histories = {r.metrics["trial_id"]: _history(r) for r in ok}
    warm = [r.metrics["trial_id"] for r in ok if is_warm_start(r.config, spec.start_from)]
    rungs = [*b.rungs, b.race_seconds]
    key, ahead = race_winner(histories, rungs, warm), race_winner(histories, rungs)
    if key != ahead:
        rung, lead, margin = race_lead(histories, rungs, ahead, key)
        log.info("trial %s tied the warm start %s at the race's end (%g training seconds): ahead by %.2f dB, no "
                 "more than %.2f (the warm start's gain since its previous rung: %.2f dB); the warm start keeps "
                 "the lead", ahead, key, rung, lead, min(margin, TIE_DB), margin)
    if key is None:
        log.warning("no trial of the race has a checkpoint to continue from; exporting the race's best")
        return []
    winner = next(r for r in ok if r.metrics["trial_id"] == key)
    checkpoint, metrics, clock = _where_it_stopped(winner)
    extra: list = []
    late = late_starter(histories, {r.metrics["trial_id"]: r.config for r in ok}, rungs, key, identity)
    if late is not None:
        extra, left_s, won = _train_late_starter(spec, next(r for r in ok if r.metrics["trial_id"] == late), late,
                                                 histories, key, params, resources, run_dir, left_s=left_s,
                                                 identity=identity, resume=resume, verbose=verbose)
        if won is not None:
            key, winner = late, won
            checkpoint, metrics, clock = _where_it_stopped(winner)
    trained = float(metrics.get("train_seconds", 0.0))
    seconds = continuation_seconds(trained, left_s, clock, float(metrics.get("val_seconds", 0.0)))
    if seconds <= trained + b.grace_period:
        log.info("the race left %.0f s: too little for its winner, trial %s, to continue", left_s, key)
        return extra
    solo = solo_resources(spec, largest_node_cpus())  # the race's slots are empty now
    log.info("the race is over: trial %s wins (val_psnr %.2f dB at %.0f training seconds); it continues "
             "to about %.0f training seconds (to the end of the budget, at the pace it measures) on %g CPU(s) in %s",
             key, metrics.get(METRIC, math.nan), trained, seconds, solo["cpu"], join(run_dir, WINNER))
    return [*extra, *_train_on(spec, checkpoint, {**winner.config, "max_train_seconds": round(seconds, 1)},
                               {**params, "threads": max(1, int(solo["cpu"]))}, solo, run_dir, name=WINNER,
                               key=key, left_s=left_s, to_the_end=True, resume=resume, verbose=verbose)]


def _train_late_starter(spec: ExperimentSpec, result, late: str, histories: dict[str, list[tuple[float, float]]],
                        key: str, params: dict[str, Any], resources: dict[str, float], run_dir: str, *, left_s: float,
                        identity: float, resume: bool, verbose: int) -> tuple[list, float, Any]:
    """The late starter ``late`` (its race ``result``), which lost the race to ``key``, trains on to twice
    ``race_seconds`` (``<run>/late/``) when that fits in :data:`LATE_SHARE` of ``left_s``. Its results,
    the wall seconds then left, and its result when it cleared :func:`tuner.race.late_start_bar` (else None)."""
    b = spec.budget
    rungs, until = [*b.rungs, b.race_seconds], 2 * b.race_seconds
    checkpoint, metrics, clock = _where_it_stopped(result)
    begun = resume and exists(join(run_dir, LATE, "tuner.pkl"))  # decided before an interruption: go on
    if resume and not begun and exists(join(run_dir, WINNER, "tuner.pkl")):
        return [], left_s, None  # the winner was named without it
    cost = (CONTINUE_START_S + (until - float(metrics.get("train_seconds", 0.0))) / training_share(clock)
            + float(metrics.get("val_seconds", 0.0)))
    what = (f"trial {late}, a late starter (still at the noisy input's {identity:.2f} dB at {b.rungs[1]:g} training "
            f"seconds), lost the race to trial {key} ({histories[late][-1][1]:.2f} dB against "
            f"{histories[key][-1][1]:.2f} at its end)")
    if cost > LATE_SHARE * left_s and not begun:
        log.info("%s; the %.0f s left are too few to train it on to %.0f training seconds", what, left_s, until)
        return [], left_s, None
    bar = late_start_bar(histories[key], rungs, until)
    log.info("%s; it trains on to %.0f training seconds and takes the winner's place if it scores over %.2f there",
             what, until, bar)
    started = time.monotonic()
    results = _train_on(spec, checkpoint, {**result.config}, params, resources, run_dir, name=LATE, key=late,
                        left_s=left_s, stop_at=until, resume=resume, verbose=verbose)
    left_s -= time.monotonic() - started
    ok = [r for r in results if r.metrics and not r.metrics.get("diverged") and r.best_checkpoints]
    last = _history(ok[0])[-1] if ok and _history(ok[0]) else (math.nan, -math.inf)
    if last[1] > bar:
        log.info("trial %s scored %.2f dB at %.0f training seconds, over %.2f: it wins the race", late, last[1],
                 last[0], bar)
        return results, left_s, ok[0]
    log.info("trial %s scored %.2f dB, not over %.2f: trial %s keeps the race", late, last[1], bar, key)
    return results, left_s, None


def _history(result) -> list[tuple[float, float]]:
    """A trial's validations, ``(train_seconds, val_psnr)`` in order, finite."""
    df = result.metrics_dataframe
    if df is None or METRIC not in df or "train_seconds" not in df:
        return []
    return [(float(t), float(v)) for t, v in df[["train_seconds", METRIC]].itertuples(index=False)
            if math.isfinite(v)]


def _where_it_stopped(result) -> tuple[Any, dict[str, Any], list[tuple[float, float]]]:
    """A trial's latest checkpoint (Ray always keeps it) with the metrics that wrote it, and its clock,
    ``(time_total_s, train_seconds)`` per report. Where it stopped, not its best validation: a better
    validation earlier was a noisier measure of a less trained model, mid-schedule."""
    df = result.metrics_dataframe
    latest = latest_checkpoint(result)
    checkpoint, metrics = latest or max(result.best_checkpoints, key=lambda cm: cm[1].get(METRIC, -math.inf))
    clock = ([(float(w), float(t)) for w, t in df[["time_total_s", "train_seconds"]].itertuples(index=False)]
             if df is not None and {"time_total_s", "train_seconds"} <= set(df) else [])
    return checkpoint, metrics, clock


def _train_on(spec: ExperimentSpec, checkpoint, config: dict[str, Any], params: dict[str, Any],
              resources: dict[str, float], run_dir: str, *, name: str, key: str, left_s: float,
              stop_at: Optional[float] = None, to_the_end: bool = False, resume: bool = False,
              verbose: int = 1) -> list:
    """A race trial trains on from ``checkpoint`` with ``config`` as one Ray Tune experiment of one
    trial, ``<run>/<name>/<name>_<key>``, within ``left_s`` wall seconds, to ``stop_at`` training
    seconds or its ``max_train_seconds``; or, ``to_the_end`` (the winner), until :data:`CONTINUE_END_S`
    before those ``left_s`` end, its ``max_train_seconds`` then a first guess that it re-plans from its
    own pace (``fit(end_by=)``). An interrupted one resumes (``resume``). Its results."""
    from ray import tune

    b = spec.budget
    # A wall-clock time, read on the driver and compared on the trial's node (clocks kept in step by NTP)
    end_by = time.time() + left_s - CONTINUE_END_S if to_the_end else None
    trainable = tune.with_resources(tune.with_parameters(train_trial, **params, start=checkpoint, continued_from=key,
                                                         stop_at=stop_at, end_by=end_by), resources)
    folder = join(run_dir, name)
    if resume and exists(join(folder, "tuner.pkl")):
        tuner = tune.Tuner.restore(folder, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=config,
            tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=1, time_budget_s=max(1.0, left_s),
                                        trial_name_creator=lambda t: f"{name}_{key}",
                                        trial_dirname_creator=lambda t: f"{name}_{key}"),
            run_config=tune.RunConfig(
                name=name, storage_path=run_dir, verbose=verbose,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=b.keep_checkpoints,
                                                        checkpoint_score_attribute=METRIC, checkpoint_score_order=MODE),
                failure_config=tune.FailureConfig(max_failures=b.max_failures)),
        )
    return list(tuner.fit())


# ---------------------------------------------------------------- Ray Tune's parts

def make_searcher(spec: ExperimentSpec, study_storage, run_dir: str, cls: Optional[type] = None):
    """The run's :class:`tuner.searcher.StudySearch` (TPE from :func:`make_sampler`) on its study storage.

    Args:
        spec: the experiment.
        study_storage: the storage :func:`_open_study` opened (the study made, ``start_from`` queued).
        run_dir: the run folder (a study in it moves with it).
        cls: a subclass of ``StudySearch`` to build instead (``benchmarks/bench_scale.py`` times it).
    """
    from tuner.searcher import StudySearch

    b = spec.budget
    return (cls or StudySearch)(time_attr=b.time_attr, max_t=b.max_t, metric=METRIC, mode=MODE,
                                      sampler=make_sampler(spec), storage=study_storage, study_name=spec.name,
                                      run_dir=run_dir, space=spec.param_space())


def make_scheduler(spec: ExperimentSpec, identity_psnr: Optional[float] = None,
                   proven: list[dict[str, Any]] = ()):
    """ASHA, its rungs in epochs or in training seconds (``budget.time_attr``), so that a small fast
    model and a large slow one are compared after the same compute; in a race (``continue_best``)
    with warm starts, :class:`tuner.scheduler.WarmStartASHA`, which judges a residual challenger still
    at ``identity_psnr`` (the noisy validation images' own score) only at the race's end, one per trial
    running at once (at the first rung only beside plain warm starts), and the ``proven``
    configurations (a prior study's best, :func:`with_priors`) there too."""
    from ray.tune.schedulers import ASHAScheduler

    b = spec.budget
    kwargs = dict(time_attr=b.time_attr, max_t=b.max_t, grace_period=b.grace_period, reduction_factor=b.reduction_factor)
    if b.continue_best and (spec.start_from or proven):
        from tuner.scheduler import HEDGED_PER_SLOT, WarmStartASHA

        return WarmStartASHA(spec.start_from, b.rungs, identity_psnr=identity_psnr,
                             max_hedged=HEDGED_PER_SLOT * b.max_concurrent, proven=proven,
                             plan_train_s=b.race_train_s, **kwargs)
    return ASHAScheduler(**kwargs)


def make_tuner(spec: ExperimentSpec, trainable, *, storage: str, search_alg, scheduler, num_samples: int,
               verbose: int = 1, callbacks: Optional[list] = None):
    """The ``Tuner`` of a new search: ``search_alg`` under the spec's concurrency limit, actors
    reused, checkpoints ranked by ``val_psnr``, the run in ``<storage>/<spec.name>``.

    Args:
        spec: the experiment.
        trainable: the Tune trainable (:func:`train_trial` with its data and resources).
        storage: the runs' parent folder or URI.
        search_alg: the searcher (:func:`make_searcher`); a ``SearchAlgorithm`` that is not a
            ``Searcher`` (Ray's ``BasicVariantGenerator``) limits its own concurrency.
        scheduler: the trial scheduler (:func:`make_scheduler`).
        num_samples: trials to run.
        verbose: Ray Tune's verbosity.
        callbacks: extra Tune callbacks (a benchmark's probes); Ray's own loggers are added as always,
            and :class:`tuner.resume.KeepStateCopy` (whole copies of Ray's state files for a resume).
    """
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter, Searcher

    from tuner.resume import KeepStateCopy

    b = spec.budget
    if isinstance(search_alg, Searcher):
        search_alg = ConcurrencyLimiter(search_alg, max_concurrent=b.max_concurrent)
    return tune.Tuner(
        trainable,
        param_space=spec.param_space(),
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, num_samples=num_samples, time_budget_s=b.race_limit_s,
            search_alg=search_alg, scheduler=scheduler,
            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
            # A trial of a few seconds would otherwise pay for a fresh worker process and a
            # torch import each (benchmarks/bench_orchestration.py measured ~8 core-seconds).
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=spec.name, storage_path=storage, verbose=verbose, callbacks=[KeepStateCopy(), *(callbacks or [])],
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=b.keep_checkpoints, checkpoint_score_attribute=METRIC,
                checkpoint_score_order=MODE),
            failure_config=tune.FailureConfig(max_failures=b.max_failures),
        ),
    )


def startup_trials(spec: ExperimentSpec) -> int:
    """How many finished trials TPE waits for before it models anything (Optuna's
    ``n_startup_trials``, which counts the warm starts): the spec's ``searcher.n_startup_trials``, or
    by default Optuna's own 10 after the spec's ``start_from``. With fewer points TPE draws around the
    best one, the warm start, and a challenger that ties it is a race's most expensive outcome (ASHA
    promotes it rung after rung and what it trained is lost); random challengers mostly lose at the
    first rung and leave the winner the time (docs/benchmarks.md, "Random challengers")."""
    n = spec.searcher.n_startup_trials
    return n if n is not None else len(spec.start_from) + 10


def make_sampler(spec: ExperimentSpec):
    """Optuna's ``TPESampler`` as the spec's ``searcher`` section sets it, seeded by the spec."""
    import optuna

    s = spec.searcher
    return optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=startup_trials(spec),
                                      constant_liar=s.constant_liar, multivariate=s.multivariate)


def _open_study(spec: ExperimentSpec, run_dir: str):
    """Create the run's Optuna study (before Ray starts, so a bad storage is a one-line error), copy
    in the prior studies' trials and queue the spec's ``start_from`` configurations.

    Returns:
        The storage the searcher writes to, the spec the search runs (:func:`with_priors`) and the
        prior studies' best configuration, queued after ``start_from`` (none without priors)."""
    import optuna

    from tuner import study
    from tuner.searcher import distributions

    url = study.storage_url(spec, run_dir)
    if url is None:
        log.warning("the Optuna study of a run in %s is kept only in the run's searcher state; "
                    "give --study-storage URL to keep it in a database", run_dir)
        storage = optuna.storages.InMemoryStorage()
    else:
        storage = study.open_storage(url)
        log.info("Optuna study %r in %s", spec.name, study.shown_url(url))
    # Earlier searches' trials, as W&B Sweeps' prior runs: TPE's history (read before the study is made,
    # so a bad prior leaves nothing behind).
    priors = [(name, *study.prior_trials(_prior_study(spec, name, run_dir, storage), spec,
                                         distributions(spec.param_space())))
              for name in spec.searcher.prior_studies]
    for name, trials, left_out in priors:
        log.info("prior study %r: %d of its finished trials join this search's study%s", name, len(trials),
                 f" ({left_out} are not points of this search)" if left_out else "")
    spec, proven = with_priors(spec, [t for _, trials, _ in priors for t in trials])
    study.create_study(storage, spec.name, {"run_dir": run_dir, "spec": spec.to_yaml()})
    loaded = optuna.load_study(study_name=spec.name, storage=storage)
    for _, trials, _ in priors:
        loaded.add_trials(trials)
    # What Ray's points_to_evaluate does; partial ones are completed by TPE. Only those the search will
    # run: one beyond num_samples would stay WAITING in the study for ever.
    queued = [*spec.start_from, *proven][:spec.budget.num_samples]
    for point in queued:
        loaded.enqueue_trial(point)
    return storage, spec, [p for p in proven if p in queued]


def with_priors(spec: ExperimentSpec, trials: list) -> tuple[ExperimentSpec, list[dict[str, Any]]]:
    """What prior studies change in a search: their best finished trial (the highest ``COMPLETE``
    ``val_psnr``) is run after the spec's own ``start_from`` (unless it is one of them), so a second
    search begins where the first ended; and TPE's start-up counts this search's own trials only
    (``searcher.n_startup_trials`` plus the prior trials), so its challengers are drawn from the whole
    space, not around the earlier winner. Measured: with the prior trials as TPE's first trials, the
    challengers were the earlier winner's neighbours, tied it and one another, and the race ran to its
    limit (docs/benchmarks.md, "A prior study").

    The prior's best is not a warm start of the race: it is measured on this task already, so ASHA's
    first rung, which ranks how fast a model starts, does not stop it (it runs to the race's end,
    :class:`tuner.scheduler.WarmStartASHA`'s ``proven``), but it holds no lead against a tie there
    (:func:`tuner.race.race_winner`): a challenger ahead of it wins. As a warm start it kept the lead against a
    residual U-Net ahead by 0.95 dB that had won the same task without a prior by 0.36 dB more.

    Args:
        spec: the search's spec.
        trials: the prior studies' trials that are points of this search
            (:func:`tuner.study.prior_trials`), as Optuna ``FrozenTrial`` objects.

    Returns:
        The spec with ``searcher.n_startup_trials`` set, and the best configuration to queue (a list
        of none or one).
    """
    if not trials:
        return spec, []
    from optuna.trial import TrialState

    proven = []
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    if done:
        best = max(done, key=lambda t: t.value)
        if not is_warm_start(best.params, spec.start_from):
            proven.append(dict(best.params))
            log.info("prior studies: their best trial (val_psnr %.2f) runs after the warm starts: %s", best.value,
                     ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in best.params.items()))
    own = startup_trials(spec) + len(proven)
    searcher = spec.searcher.model_copy(update={"n_startup_trials": own + len(trials)})
    return spec.model_copy(update={"searcher": searcher}), proven


def _prior_study(spec: ExperimentSpec, name: str, run_dir: str, storage):
    """The earlier search ``name``'s study: in this search's study storage when the spec names one,
    else in its run folder beside this one (``<storage>/<name>/study.db``)."""
    import optuna

    from tuner import study

    if spec.study_storage:
        where = study.shown_url(spec.study_storage)
    else:
        url = study.default_storage_url(join(os.path.dirname(run_dir.rstrip("/")), name))
        if url is None:
            raise SearchError(f"searcher.prior_studies: {name!r}: a run on a URI keeps its study in memory; "
                              f"give --study-storage URL to keep studies (and find priors) in a database")
        path = url.removeprefix("sqlite:///")
        where = f"the run folder {os.path.dirname(path)}"
        if not os.path.exists(path):
            raise SearchError(f"searcher.prior_studies: no earlier search {name!r} in {where} "
                              f"(give the run name of a search under the same --storage, or share a --study-storage)")
        storage = study.open_storage(url)
    if not study.study_exists(storage, name):
        names = sorted(s.study_name for s in storage.get_all_studies())
        raise SearchError(f"searcher.prior_studies: no study {name!r} in {where}; "
                          f"studies there: {', '.join(names) or '(none)'}")
    return optuna.load_study(study_name=name, storage=storage)


def _init_ray(address: Optional[str]) -> None:
    import ray

    if ray.is_initialized():
        return
    log.info("starting Ray%s", f" (joining {address})" if address else " locally")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # address="local": always a fresh Ray of our own; with None, ray.init joins whatever cluster
        # /tmp/ray/ray_current_cluster names (any `ray start` on this machine, even a dead one).
        # The dashboard of a local search listens on localhost only, and the dashboard agent's
        # Prometheus endpoint (0.0.0.0, no auth) is not started.
        os.environ.setdefault("RAY_enable_metrics_collection", "0")
        ray.init(address="local", dashboard_host="127.0.0.1", include_dashboard=False, log_to_driver=True)
