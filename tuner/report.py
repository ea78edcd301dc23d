"""The report: one HTML page per run, for a person deciding which model to trust.

:func:`write_report` reads what a finished search left behind - Ray Tune's experiment state
(through :class:`ray.tune.ExperimentAnalysis`, which needs no running Ray), the resolved
``spec.yaml`` and the exported ``best/`` model - and writes ``<run>/report/``:

- ``index.html``: a self-contained page (inline CSS, PNG figures beside it);
- ``trials.csv``: one row per trial with its hyperparameters, epochs, best ``val_psnr`` and
  status (``completed``, ``stopped early`` by ASHA, ``diverged``, ``errored``);
- ``summary.json``: the page's headline numbers, for scripts.

The page answers, in order: how good is the best model and how sure are we (test PSNR against
the noisy input, recomputed here from the exported weights), what did ASHA save, what does
each trial's learning curve look like, what do its outputs look like, how are the per-image
scores spread, how does it hold up at other noise levels, which hyperparameters mattered
(Optuna's fANOVA on the finished trials) and what its latent space encodes.
"""
from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import logging
import math
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import yaml
from matplotlib.figure import Figure

from tuner.data import DatasetError, Splits, load_dataset
from tuner.model import DenoisingAutoencoder, build_model
from tuner.noise import Noise
from tuner.storage import CONFIG_FILE, METRICS_FILE, MODEL_FILE, SPEC_FILE, is_uri, join, read_file, write
from tuner.spec import HYPERPARAMETERS, Distribution, ExperimentSpec, TrialConfig
from tuner.train import METRIC, TEST_SEED_OFFSET, EvalSet, psnr_per_image

log = logging.getLogger(__name__)

REPORT_DIR = "report"
COMPLETED, STOPPED, DIVERGED, ERRORED, UNFINISHED = "completed", "stopped early", "diverged", "errored", "unfinished"
EXAMPLES = 8  # test images shown clean / noisy / denoised
SWEEP_FACTORS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)  # noise levels tried, relative to the eval level
SAMPLE = 2000  # test images used by the noise sweep and the latent plot: enough, and quick on a CPU
DPI = 110

# One look per trial outcome, shared by the learning curves and the trials table.
STYLE = {
    COMPLETED: dict(color="#4c72b0", ls="-", marker=None),
    STOPPED: dict(color="#9a9a9a", ls="-", marker="x"),
    DIVERGED: dict(color="#c44e52", ls="--", marker="X"),
    ERRORED: dict(color="#dd8452", ls=":", marker="s"),
    UNFINISHED: dict(color="#8172b3", ls="-.", marker=">"),
}
BEST_COLOR = "#2ca02c"


# ---------------------------------------------------------------- the trials, as Ray Tune saw them

@dataclass
class TrialSummary:
    """One trial: its config, its per-epoch curve and how it ended.

    Attributes:
        trial_id: Ray Tune's trial id.
        config: the trial's Tune config (fixed and searched hyperparameters).
        status: ``completed``, ``stopped early``, ``diverged``, ``errored`` or ``unfinished``.
        ray_status: Ray Tune's own status (TERMINATED, ERROR, ...).
        epochs: the last epoch it reported (0 when it reported none).
        best_val_psnr: its best ``val_psnr`` (a diverged epoch counts as
            :data:`~tuner.train.DIVERGED_PSNR`; NaN when it reported nothing).
        best_epoch: the epoch of that score.
        curve: (epoch, val_psnr, diverged) per reported epoch.
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


def load_trials(run_dir: str, max_epochs: int) -> list[TrialSummary]:
    """Read every trial of a run from Ray Tune's experiment state and result files.

    Args:
        run_dir: the run folder (local path or URI).
        max_epochs: the budget a trial that ran to the end reached (``budget.max_epochs``).

    Returns:
        The trials in the order Ray Tune created them.
    """
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(run_dir)
    frames = analysis.trial_dataframes
    trials = []
    for t in analysis.trials:
        df = frames.get(t.trial_id)
        curve: list[tuple[int, float, bool]] = []
        if df is not None and len(df) and "epoch" in df:
            curve = [(int(e), float(p), bool(d)) for e, p, d in
                     zip(df["epoch"], df[METRIC], df.get("diverged", [0] * len(df)))]
        # As Ray ranks it: a diverged epoch reports DIVERGED_PSNR, the worst finite score.
        finite = [(p, e) for e, p, _ in curve if math.isfinite(p)]
        best_psnr, best_epoch = max(finite) if finite else (math.nan, 0)
        error = ""
        if t.run_metadata.error_filename:  # Ray sets it when it writes the trial's error.txt
            text = (t.get_error() or "").strip()
            error = text.splitlines()[-1] if text else "error.txt not found"
        seconds = float(df["time_total_s"].iloc[-1]) if curve and "time_total_s" in df else 0.0
        epochs = curve[-1][0] if curve else 0
        trials.append(TrialSummary(
            trial_id=t.trial_id, config=dict(t.config), ray_status=t.status,
            status=trial_status(t.status, epochs, bool(curve and curve[-1][2]), bool(error),
                                int(t.config.get("max_epochs", max_epochs))),
            epochs=epochs, best_val_psnr=best_psnr, best_epoch=best_epoch, curve=curve,
            seconds=seconds, failures=int(t.num_failures), error=error))
    return trials


def trial_status(ray_status: str, epochs: int, diverged: bool, has_error: bool, max_epochs: int) -> str:
    """How a trial ended, in the report's words.

    A trial Ray restarted after a crash and that then ran on normally is judged by how it
    ended (its ``failures`` count still shows the crash); ``errored`` means it ended in error.

    Args:
        ray_status: Ray Tune's status (``TERMINATED``, ``ERROR``, ``RUNNING``, ``PENDING``, ``PAUSED``).
        epochs: the last epoch it reported.
        diverged: its last result has ``diverged == 1``.
        has_error: Ray recorded an error (``error.txt``) for it.
        max_epochs: its epoch budget.

    Returns:
        ``completed``, ``stopped early``, ``diverged``, ``errored`` or ``unfinished``.
    """
    if ray_status == "ERROR" or (has_error and ray_status != "TERMINATED") or (
            ray_status == "TERMINATED" and epochs == 0):
        return ERRORED
    if diverged:
        return DIVERGED
    if ray_status != "TERMINATED":
        return UNFINISHED  # the search was interrupted; `tuner tune --resume` continues it
    return COMPLETED if epochs >= max_epochs else STOPPED


def write_trials_csv(trials: list[TrialSummary], spec: ExperimentSpec, path: Path) -> None:
    """One row per trial: outcome columns, then every hyperparameter of its config, then its error."""
    params = _param_columns(trials, spec)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial_id", "status", "epochs", f"best_{METRIC}", "best_epoch",
                    "time_total_s", "failures", *params, "error"])
        for t in _ranked(trials):
            w.writerow([t.trial_id, t.status, t.epochs, _num(t.best_val_psnr), t.best_epoch,
                        round(t.seconds, 3), t.failures, *(t.config.get(p, "") for p in params), t.error])


def _param_columns(trials: list[TrialSummary], spec: ExperimentSpec) -> list[str]:
    """Searched hyperparameters first (spec order), then the fixed ones (TrialConfig order)."""
    present = {k for t in trials for k in t.config}
    rest = [h for h in HYPERPARAMETERS if h in present and h not in spec.search]
    return [*spec.search, *rest, *sorted(present - set(spec.search) - set(HYPERPARAMETERS))]


def _ranked(trials: list[TrialSummary]) -> list[TrialSummary]:
    return sorted(trials, key=lambda t: -t.best_val_psnr if math.isfinite(t.best_val_psnr) else math.inf)


def _num(x: float) -> str:
    return "" if not math.isfinite(x) else repr(float(x))


# ---------------------------------------------------------------- the best model, measured again

@dataclass
class BestModel:
    """The exported best model and what the report measures with it on the test split."""

    config: dict[str, Any]  # best/config.json
    metrics: dict[str, Any]  # best/metrics.json, written by the search
    model: DenoisingAutoencoder
    data: Optional[Splits]  # None when the dataset cannot be loaded here
    data_error: str = ""
    test: Optional[EvalSet] = None
    denoised: Optional[torch.Tensor] = None  # (N, C, H, W) of test.noisy
    psnr: Optional[np.ndarray] = None  # (N,) per-image PSNR of the denoised test images
    noisy_psnr: Optional[np.ndarray] = None  # (N,) of the noisy inputs

    @property
    def eval_noise(self) -> Noise:
        e = self.config["eval_noise"]
        return Noise(e["kind"], e["level"], e.get("level_max"))

    @property
    def test_seed(self) -> int:
        return int(self.config["eval_noise"]["seed"]) + TEST_SEED_OFFSET  # as tuner.search.export_best


def load_best(run_dir: str) -> Optional[BestModel]:
    """Load ``<run>/best/`` and its dataset, and denoise the test split once.

    Returns:
        None when the run exported no best model (every trial failed or diverged).
    """
    best_dir = join(run_dir, "best")
    try:
        config = json.loads(read_file(best_dir, CONFIG_FILE))
    except (FileNotFoundError, OSError):
        return None
    metrics = json.loads(read_file(best_dir, METRICS_FILE))
    c, h, w = config["image_shape"]
    model = build_model(TrialConfig(**config["trial"]), c, h, w)
    state = torch.load(io.BytesIO(read_file(best_dir, MODEL_FILE)), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    best = BestModel(config, metrics, model, data=None)
    try:
        best.data = load_dataset(**config["dataset"])  # once: every figure below shares it
    except DatasetError as e:
        best.data_error = str(e)
        return best
    best.test = EvalSet.make(best.data.test, best.eval_noise, best.test_seed)
    best.denoised = _denoise(model, best.test.noisy)
    best.psnr = psnr_per_image(best.denoised, best.test.clean).numpy()
    best.noisy_psnr = psnr_per_image(best.test.noisy, best.test.clean).numpy()
    return best


@torch.no_grad()
def _denoise(model: DenoisingAutoencoder, noisy: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return torch.cat([model.denoise(noisy[i:i + batch_size]) for i in range(0, len(noisy), batch_size)])


def noise_sweep(best: BestModel) -> list[tuple[float, float, float]]:
    """PSNR of the best model at noise levels around the one it was chosen on (seed 004's question).

    Returns:
        (level, denoised PSNR, noisy-input PSNR) per level, on the first :data:`SAMPLE` test
        images, same noise kind and seed as the test split.
    """
    noise = best.eval_noise
    center = noise.level if noise.level_max is None else (noise.level + noise.level_max) / 2
    center = center or 0.1  # a noise-free experiment: still show how it copes with some noise
    cap = 2.0 if noise.kind == "gaussian" else 1.0  # impulse and mask levels are pixel fractions
    levels = sorted({round(min(cap, center * f), 6) for f in SWEEP_FACTORS})
    images = best.data.test[:SAMPLE]
    rows = []
    for level in levels:
        ev = EvalSet.make(images, Noise(noise.kind, level), best.test_seed)
        denoised = _denoise(best.model, ev.noisy)  # PSNR only: evaluate()'s SSIM costs more than the rest
        rows.append((level, float(psnr_per_image(denoised, ev.clean).mean()),
                     float(psnr_per_image(ev.noisy, ev.clean).mean())))
    return rows


# ---------------------------------------------------------------- which hyperparameters mattered

def _optuna_distribution(d: Distribution):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    k, v = d.kind, d.value
    if k == "choice":
        return CategoricalDistribution(list(v))
    if k in ("uniform", "loguniform"):
        return FloatDistribution(float(v[0]), float(v[1]), log=k == "loguniform")
    return IntDistribution(int(v[0]), int(v[1]), log=k == "logint")


def importance_study(trials: list[TrialSummary], spec: ExperimentSpec):
    """An in-memory Optuna study holding every trial that reported a score.

    Each trial's value is its best ``val_psnr``, as the searcher saw it: trials ASHA stopped
    count with the best score they reached before it stopped them, and a trial that diverged at
    once with :data:`~tuner.train.DIVERGED_PSNR` (0 dB).

    Returns:
        (study, None), or (None, a sentence saying why importances cannot be computed).
    """
    import optuna

    if not spec.search:
        return None, "Nothing was searched (the spec has no search section), so there is nothing to rank."
    distributions = {k: _optuna_distribution(d) for k, d in spec.search.items()}
    scored = [t for t in trials if math.isfinite(t.best_val_psnr) and all(k in t.config for k in distributions)]
    varied = [k for k in distributions if len({json.dumps(t.config[k]) for t in scored}) > 1]
    if len(scored) < 2 or not varied:
        return None, (f"{len(scored)} trial(s) reported a score and {len(varied)} searched hyperparameter(s) "
                      f"took more than one value: importances need at least 2 scored trials and one "
                      f"varied hyperparameter. Run more trials (--num-samples).")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for t in scored:
        study.add_trial(optuna.trial.create_trial(
            params={k: t.config[k] for k in distributions}, distributions=distributions,
            value=t.best_val_psnr))
    return study, None


def _evaluator():
    from optuna.importance import FanovaImportanceEvaluator

    return FanovaImportanceEvaluator(seed=0)  # Optuna's default evaluator, seeded: same report twice


# ---------------------------------------------------------------- figures

def _save(fig: Figure, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=DPI)
    return name


def _asha_rungs(spec: ExperimentSpec) -> list[int]:
    """Epochs at which ASHA compares trials (Ray's ``_Bracket`` milestones below ``max_t``)."""
    b = spec.budget
    rungs, t = [], float(b.grace_period)
    while t < b.max_epochs:
        rungs.append(t)
        t *= b.reduction_factor
    return rungs


def plot_learning_curves(trials: list[TrialSummary], spec: ExperimentSpec, best_id: Optional[str],
                         baseline: Optional[float], out: Path) -> str:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8.5, 4.6), layout="constrained")
    ax = fig.add_subplot()
    finite = [p for t in trials for _, p, d in t.curve if math.isfinite(p) and not d]
    if baseline is not None:
        finite.append(baseline)
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    pad = 0.06 * (hi - lo or 1.0)
    ax.set_ylim(lo - pad, hi + pad)
    bottom = lo - pad
    for t in sorted(trials, key=lambda t: t.trial_id == best_id):  # the best trial drawn last, on top
        style = STYLE[t.status]
        ok = [(e, p) for e, p, d in t.curve if math.isfinite(p) and not d]
        is_best = t.trial_id == best_id
        color = BEST_COLOR if is_best else style["color"]
        if ok:
            ax.plot(*zip(*ok), color=color, ls="-" if is_best else style["ls"],
                    lw=2.6 if is_best else 1.2, alpha=1.0 if is_best else 0.75, zorder=3 if is_best else 2)
        if t.status == DIVERGED and t.curve:  # its score is 0 dB: mark where it blew up, at the bottom
            ax.plot(t.curve[-1][0], bottom, marker="X", color=style["color"], ms=9, clip_on=False, zorder=4)
            if ok:
                ax.plot([ok[-1][0], t.curve[-1][0]], [ok[-1][1], bottom], color=style["color"], ls="--", lw=1)
        elif style["marker"] and ok:
            ax.plot(*ok[-1], marker=style["marker"], color=color, ms=7, mew=2, ls="none", zorder=4)
        if is_best and t.best_epoch:
            ax.plot(t.best_epoch, t.best_val_psnr, marker="*", color=BEST_COLOR, ms=15, mec="black",
                    mew=0.6, zorder=5)
    for r in _asha_rungs(spec):
        ax.axvline(r, color="#bbbbbb", lw=0.8, ls=(0, (2, 3)), zorder=1)
    if baseline is not None:
        ax.axhline(baseline, color="black", lw=1, ls=(0, (5, 3)), zorder=1)
    ax.set_xlim(0.7, spec.budget.max_epochs + 0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{METRIC} (dB)")
    ax.grid(alpha=0.25)
    handles = [Line2D([], [], color=BEST_COLOR, lw=2.6, marker="*", ms=12, mec="black", mew=0.6,
                      label=f"best trial {best_id}")] if best_id else []
    for status in (COMPLETED, STOPPED, DIVERGED, ERRORED, UNFINISHED):
        n = sum(t.status == status for t in trials)
        if n:
            s = STYLE[status]
            handles.append(Line2D([], [], color=s["color"], ls=s["ls"], marker=s["marker"], mew=2,
                                  label=f"{status} ({n})"))
    if _asha_rungs(spec):
        handles.append(Line2D([], [], color="#bbbbbb", lw=0.8, ls=(0, (2, 3)), label="ASHA rung"))
    if baseline is not None:
        handles.append(Line2D([], [], color="black", lw=1, ls=(0, (5, 3)), label="noisy input"))
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=9)
    return _save(fig, out, "learning_curves.png")


def _show(ax, image: torch.Tensor) -> None:
    """(C, H, W) in [0, 1]: grayscale with a gray colormap, RGB as is."""
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def example_indices(psnr: np.ndarray, n: int = EXAMPLES) -> list[int]:
    """Test images at evenly spaced quantiles of the denoised PSNR, worst first: the grid shows
    the failures as well as the successes."""
    order = np.argsort(psnr)
    picks = np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int)
    return [int(order[i]) for i in picks]


def plot_examples(best: BestModel, out: Path) -> str:
    idx = example_indices(best.psnr)
    fig = Figure(figsize=(1.35 * len(idx) + 0.6, 4.7), layout="constrained")
    axes = fig.subplots(3, len(idx), squeeze=False)
    rows = [("clean", best.test.clean), ("noisy", best.test.noisy), ("denoised", best.denoised)]
    for r, (name, images) in enumerate(rows):
        for c, i in enumerate(idx):
            ax = axes[r][c]
            _show(ax, images[i])
            if r == 0:  # one title per column: noisy -> denoised PSNR of that image
                ax.set_title(f"{best.noisy_psnr[i]:.1f} \u2192 {best.psnr[i]:.1f} dB", fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=11)
    return _save(fig, out, "examples.png")


def plot_histogram(best: BestModel, out: Path) -> str:
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7.5, 3.6), layout="constrained")
    ax = fig.add_subplot()
    both = np.concatenate([best.psnr, best.noisy_psnr])
    bins = np.linspace(both.min(), both.max(), 40)
    ax.hist(best.noisy_psnr, bins=bins, color="#9a9a9a", alpha=0.6, label="noisy input")
    ax.hist(best.psnr, bins=bins, color=BEST_COLOR, alpha=0.6, label="denoised")
    ax.axvline(best.noisy_psnr.mean(), color="#555555", ls="--", lw=1.2,
               label=f"noisy mean {best.noisy_psnr.mean():.2f} dB")
    ax.axvline(best.psnr.mean(), color="#1a6e1a", ls="--", lw=1.2, label=f"denoised mean {best.psnr.mean():.2f} dB")
    ax.set_xlabel("PSNR per test image (dB)")
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(frameon=False, fontsize=9)
    ax.grid(alpha=0.25)
    return _save(fig, out, "psnr_histogram.png")


def plot_noise_sweep(best: BestModel, rows: list[tuple[float, float, float]], out: Path) -> str:
    noise = best.eval_noise
    trained = TrialConfig(**best.config["trial"])
    fig = Figure(figsize=(7.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    levels, den, noisy = zip(*rows)
    ax.plot(levels, den, "o-", color=BEST_COLOR, lw=2, label="denoised")
    ax.plot(levels, noisy, "s--", color="#777777", lw=1.5, label="noisy input")
    if noise.level_max is None:
        ax.axvline(noise.level, color="black", lw=1, ls=":", label=f"evaluated at {noise.level:g}")
    else:
        ax.axvspan(noise.level, noise.level_max, color="black", alpha=0.08,
                   label=f"evaluated on {noise.level:g}-{noise.level_max:g}")
    if trained.noise_kind == noise.kind:
        t = trained.train_noise
        if t.level_max is None:
            ax.axvline(t.level, color=BEST_COLOR, lw=1, ls="--", label=f"trained at {t.level:.3g}")
        else:
            ax.axvspan(t.level, t.level_max, color=BEST_COLOR, alpha=0.1,
                       label=f"trained on {t.level:.3g}-{t.level_max:.3g}")
    unit = "standard deviation" if noise.kind == "gaussian" else "fraction of pixels hit"
    ax.set_xlabel(f"{noise.kind} noise level ({unit})")
    ax.set_ylabel("mean PSNR on test images (dB)")
    ax.legend(frameon=False, fontsize=9)
    ax.grid(alpha=0.25)
    return _save(fig, out, "noise_sweep.png")


def plot_latent(best: BestModel, out: Path) -> tuple[str, float]:
    """PCA of the bottleneck codes of the noisy test images (what the model sees in use).

    Returns:
        (file name, fraction of the codes' variance the two components explain).
    """
    noisy = best.test.noisy[:SAMPLE]
    labels = best.data.test_labels[:SAMPLE]
    codes = torch.cat([best.model.latent(noisy[i:i + 512]) for i in range(0, len(noisy), 512)])  # (N, D)
    centered = codes - codes.mean(0)
    k = min(2, codes.shape[1], len(codes))
    with torch.random.fork_rng(devices=[]):  # pca_lowrank draws from the global RNG: seed it, then restore it
        torch.manual_seed(0)
        _, s, v = torch.pca_lowrank(centered, q=k, center=False, niter=4)
    xy = (centered @ v[:, :k]).numpy()  # (N, k)
    ratio = (s[:k] ** 2 / centered.pow(2).sum().clamp_min(1e-12)).numpy()  # share of the variance
    if k == 1:
        xy = np.column_stack([xy[:, 0], np.zeros(len(xy))])
    fig = Figure(figsize=(6.4, 5.0), layout="constrained")
    ax = fig.add_subplot()
    classes = np.unique(labels)
    cmap = "tab10" if len(classes) <= 10 else "tab20"
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap=cmap, s=9, alpha=0.8, linewidths=0,
                    vmin=classes.min() - 0.5, vmax=classes.max() + 0.5)
    if len(classes) <= 20:
        ax.legend(*sc.legend_elements(num=list(classes)), title="label", loc="center left",
                  bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8)
    ax.set_xlabel(f"PC 1 ({100 * ratio[0]:.0f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * ratio[1]:.0f}% of variance)" if k > 1 else "(1-D code)")
    ax.grid(alpha=0.25)
    return _save(fig, out, "latent_pca.png"), float(ratio.sum())


def plot_optuna(study, out: Path) -> tuple[str, str]:
    """Optuna's own matplotlib plots: fANOVA importances and parallel coordinates."""
    import matplotlib
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as ovm

    names = []
    # Optuna switches pyplot to its ggplot style; rc_context puts the caller's style back.
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Attempting to set identical")  # a one-value axis
        for name, plot, size in (
                ("param_importances.png", lambda: ovm.plot_param_importances(
                    study, evaluator=_evaluator(), target_name=f"best {METRIC}"),
                 (7.0, 1.4 + 0.45 * len(study.best_trial.params))),
                ("parallel_coordinate.png", lambda: ovm.plot_parallel_coordinate(
                    study, target_name=f"best {METRIC}"), (max(7.0, 1.7 * (len(study.best_trial.params) + 1)), 4.4))):
            ax = plot()
            fig = ax.figure
            fig.set_size_inches(*size)
            fig.savefig(out / name, dpi=DPI, bbox_inches="tight")
            plt.close(fig)
            names.append(name)
    return names[0], names[1]


# ---------------------------------------------------------------- the page

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;background:#fafafa;margin:0}
main{max-width:1080px;margin:0 auto;padding:24px 28px 60px;background:#fff;box-shadow:0 0 12px #0001}
h1{font-size:26px;margin:4px 0 2px}h2{font-size:20px;margin:34px 0 8px;border-bottom:1px solid #e4e4e4;padding-bottom:4px}
.sub{color:#666;margin:0 0 10px}nav{font-size:13px;margin:8px 0 0}nav a{margin-right:12px;color:#2a5db0;text-decoration:none}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}.card{flex:1 1 150px;border:1px solid #e2e2e2;border-radius:8px;padding:10px 14px;background:#fcfcfc}
.card .v{font-size:24px;font-weight:600}.card .l{font-size:12px;color:#666;text-transform:uppercase;letter-spacing:.04em}
.good{color:#1a7f1a}.bad{color:#b3261e}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}tr.best td{background:#eaf6ea;font-weight:600}
.tag{font-size:11px;padding:1px 6px;border-radius:8px;background:#eee;color:#555}.tag.searched{background:#dce8fb;color:#1d4f99}
figure{margin:10px 0 6px}figure img{max-width:100%;height:auto;border:1px solid #eee}figcaption{color:#555;font-size:13.5px;margin-top:4px}
.note{background:#fff8e1;border-left:4px solid #f2c94c;padding:8px 12px;margin:8px 0;font-size:14px}
.cols{display:flex;gap:28px;flex-wrap:wrap;align-items:flex-start}
.missing{color:#777;font-style:italic}ul.checks{margin:6px 0;padding-left:20px}.scroll{overflow-x:auto}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "-"
    return str(v)


def _figure(src: str, alt: str, caption: str) -> str:
    return f'<figure><img src="{_e(src)}" alt="{_e(alt)}"><figcaption>{caption}</figcaption></figure>'


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>\n{body}\n</section>'


def _table(header: list[str], rows: list[list[str]], classes: Optional[list[str]] = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(f'<tr class="{c}">' + "".join(rows[i]) + "</tr>"
                   for i, c in enumerate(classes or [""] * len(rows)))
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _td(v: Any, numeric: Optional[bool] = None) -> str:
    if numeric is None:
        numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
    return f'<td class="n">{_e(_fmt(v))}</td>' if numeric else f"<td>{_e(_fmt(v))}</td>"


def _cell(text: str) -> str:
    return f'<td class="n">{_e(text)}</td>'


def _missing(text: str) -> str:
    return f'<p class="missing">{_e(text)}</p>'


@dataclass
class Compute:
    """Epochs run against the epochs a search without early stopping would have run."""

    epochs_run: int
    epochs_full: int
    saved_by_asha: int  # epochs the stopped-early trials did not run
    saved_other: int  # epochs diverged, errored or unfinished trials did not run
    seconds: float

    @property
    def saved_pct(self) -> float:
        return 100.0 * (self.epochs_full - self.epochs_run) / self.epochs_full if self.epochs_full else 0.0


def compute_saved(trials: list[TrialSummary], max_epochs: int) -> Compute:
    """How much of a full search (every trial to ``max_epochs``) the run actually ran."""
    left = {t.trial_id: max(0, max_epochs - t.epochs) for t in trials}
    asha = sum(left[t.trial_id] for t in trials if t.status == STOPPED)
    return Compute(epochs_run=sum(t.epochs for t in trials), epochs_full=len(trials) * max_epochs,
                   saved_by_asha=asha, saved_other=sum(left.values()) - asha,
                   seconds=sum(t.seconds for t in trials))


def _checks(trials: list[TrialSummary], best: Optional[BestModel], test_psnr: Optional[float]) -> list[str]:
    """Plain-language warnings about what in this run deserves a second look."""
    notes = []
    n = {s: sum(t.status == s for t in trials) for s in STYLE}
    if n[ERRORED]:
        notes.append(f"{n[ERRORED]} trial(s) errored; their <code>error.txt</code> is in the run folder.")
    if n[DIVERGED]:
        notes.append(f"{n[DIVERGED]} trial(s) diverged (loss or outputs went non-finite): their learning rate "
                     f"or optimizer is too aggressive for this model.")
    if n[UNFINISHED]:
        notes.append(f"{n[UNFINISHED]} trial(s) never finished: the search was interrupted "
                     f"(<code>tuner tune --resume</code> continues it).")
    if best is None:
        return notes
    m = best.metrics
    if m["test_psnr"] <= m["noisy_test_psnr"]:
        notes.append("The best model does not beat the noisy input on the test split: do not use it.")
    gap = m[METRIC] - m["test_psnr"]
    if abs(gap) > 1.0:
        notes.append(f"Validation and test PSNR differ by {gap:+.2f} dB: the validation split may be too "
                     f"small, or the search has fitted it.")
    if test_psnr is not None and abs(test_psnr - m["test_psnr"]) > 0.01:
        notes.append(f"Recomputing the test PSNR from the exported weights gives {test_psnr:.3f} dB, not the "
                     f"{m['test_psnr']:.3f} dB the search recorded: the model or the data changed since.")
    if best.psnr is not None:
        worse = int((best.psnr < best.noisy_psnr).sum())
        if worse:
            notes.append(f"{worse} of {len(best.psnr)} test images ({100 * worse / len(best.psnr):.1f}%) come out "
                         f"worse than their noisy input.")
    winner = next((t for t in trials if t.trial_id == m.get("trial_id")), None)
    if winner and len(winner.curve) >= 2 and winner.curve[-1][1] - winner.curve[-2][1] > 0.1:
        notes.append(f"The best trial was still improving at its last epoch "
                     f"(+{winner.curve[-1][1] - winner.curve[-2][1]:.2f} dB): a larger max_epochs may help.")
    if len(trials) < 10:
        notes.append(f"Only {len(trials)} trials: treat the hyperparameter importances as a rough hint.")
    return notes


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

    trials = load_trials(run_dir, spec.budget.max_epochs)
    write_trials_csv(trials, spec, out / "trials.csv")
    best = load_best(run_dir)
    page = _render(run_dir, spec, trials, best, out)
    (out / "index.html").write_text(page, encoding="utf-8")

    if is_uri(run_dir):
        for f in sorted(out.iterdir()):
            write(join(run_dir, REPORT_DIR), f.name, f.read_bytes())
        log.info("report: %s (local copy %s)", join(run_dir, REPORT_DIR, "index.html"), out / "index.html")
    else:
        log.info("report: %s", out / "index.html")
    return out / "index.html"


def _render(run_dir: str, spec: ExperimentSpec, trials: list[TrialSummary], best: Optional[BestModel],
            out: Path) -> str:
    """Draw every figure into ``out`` and return the page's HTML."""
    summary: dict[str, Any] = {"run_dir": run_dir, "experiment": spec.name, "trials": len(trials),
                               "statuses": {s: sum(t.status == s for t in trials) for s in STYLE}}
    sections = []
    have_images = best is not None and best.test is not None
    test_psnr = float(best.psnr.mean()) if have_images else None
    best_id = best.metrics.get("trial_id") if best else None
    if best_id is None:
        best_id = next((t.trial_id for t in _ranked(trials) if math.isfinite(t.best_val_psnr)), None)

    # --- the result
    if best is not None:
        m = best.metrics
        gain = m["test_psnr"] - m["noisy_test_psnr"]
        cards = [(f"{m['test_psnr']:.2f} dB", "test PSNR (best model)", ""),
                 (f"{gain:+.2f} dB", "over the noisy input", "good" if gain > 0 else "bad"),
                 (f"{m['test_ssim']:.3f}", "test SSIM", ""),
                 (f"{m[METRIC]:.2f} dB", "validation PSNR", "")]
        body = '<div class="cards">' + "".join(
            f'<div class="card"><div class="v {c}">{_e(v)}</div><div class="l">{_e(label)}</div></div>'
            for v, label, c in cards) + "</div>"
        rows = [["validation", m[METRIC], m["noisy_val_psnr"], m[METRIC] - m["noisy_val_psnr"],
                 m.get("val_ssim", math.nan)],
                ["test", m["test_psnr"], m["noisy_test_psnr"], gain, m["test_ssim"]]]
        if test_psnr is not None:
            rows.append(["test, recomputed by this report", test_psnr, float(best.noisy_psnr.mean()),
                         test_psnr - float(best.noisy_psnr.mean()), math.nan])
        body += _table(["split", "PSNR (dB)", "noisy input PSNR (dB)", "gain (dB)", "SSIM"],
                       [[_td(r[0]), *(_cell(f"{v:.2f}") for v in r[1:4]),
                         _cell(f"{r[4]:.3f}" if math.isfinite(r[4]) else "-")] for r in rows])
        body += (f'<p>Best trial <b>{_e(best_id)}</b>, checkpoint of epoch {m.get("epoch")}; chosen on '
                 f'{METRIC} under {_e(best.eval_noise.describe())} noise. The test split was never seen '
                 f'by any trial.</p>')
        summary.update({k: m[k] for k in (METRIC, "test_psnr", "test_ssim", "noisy_val_psnr", "noisy_test_psnr")})
        summary["best_trial_id"] = best_id
        summary["test_psnr_recomputed"] = test_psnr
    else:
        body = _missing("No best model was exported: no trial finished an epoch without diverging or failing.")
    notes = _checks(trials, best, test_psnr)
    if notes:
        body += '<div class="note"><b>Worth a second look</b><ul class="checks">' + "".join(
            f"<li>{n}</li>" for n in notes) + "</ul></div>"
    summary["checks"] = [html.unescape(re.sub(r"<[^>]+>", "", n)) for n in notes]  # plain text for scripts
    sections.append(_section("summary", "Result", body))

    # --- compute saved
    c = compute_saved(trials, spec.budget.max_epochs)
    b = spec.budget
    body = (f"<p>The trials ran <b>{c.epochs_run}</b> epochs in all; a search without early stopping "
            f"({len(trials)} trials &times; {b.max_epochs} epochs) would have run <b>{c.epochs_full}</b>. "
            f"That is <b>{c.epochs_full - c.epochs_run}</b> epochs (<b>{c.saved_pct:.0f}%</b>) not run: "
            f"{c.saved_by_asha} because ASHA stopped trials early (grace period {b.grace_period}, reduction "
            f"factor {b.reduction_factor:g}), {c.saved_other} because trials diverged, errored or were "
            f"interrupted. Total training time {c.seconds:.1f} s.</p>")
    sections.append(_section("compute", "Compute saved by ASHA", body))
    summary["compute"] = {**dataclasses.asdict(c), "saved_pct": c.saved_pct}

    # --- best config
    if best is not None:
        base = spec.base_config()
        chosen, defaults = [], []
        for k, v in best.config["trial"].items():
            source = ("searched" if k in spec.search else "fixed" if k in spec.fixed
                      else "experiment" if k in base else "default")
            row = [_td(k), _td(v, False), f'<td><span class="tag {source}">{source}</span></td>']
            (defaults if source == "default" else chosen).append((source != "searched", row))
        chosen.sort(key=lambda r: r[0])  # searched first
        best_dir = join(run_dir, "best")
        body = ('<div class="cols">'
                + _table(["set by the spec", "value", "from"], [r for _, r in chosen])
                + _table(["left at its default", "value", "from"], [r for _, r in defaults])
                + f"</div><p>Load it with <code>tuner.load_model({_e(repr(best_dir))})</code>, or denoise "
                  f"image files with <code>tuner denoise --model {_e(best_dir)} IMAGES --out DIR</code>; "
                  f"<code>best/config.json</code> holds this configuration under <code>trial</code>.</p>")
    else:
        body = _missing("No best model: see the trials table below.")
    sections.append(_section("best-config", "Best configuration", body))

    # --- learning curves
    baseline = best.metrics["noisy_val_psnr"] if best else None
    src = plot_learning_curves(trials, spec, best_id, baseline, out)
    present = {t.status for t in trials}
    legend = [text for status, text in (
        (STOPPED, "grey lines ending in &times; were stopped early by ASHA at a rung (dotted verticals)"),
        (DIVERGED, "a red &#10006; at the bottom marks where a trial diverged"),
        (ERRORED, "orange dotted lines end where a trial errored"),
        (UNFINISHED, "purple lines never finished")) if status in present]
    legend.append("the green line is the best trial, its star the checkpoint exported" if best_id else "")
    sections.append(_section("learning-curves", "Learning curves", _figure(
        src, "validation PSNR per epoch of every trial",
        f"Validation PSNR of every trial per epoch ({'; '.join(x for x in legend if x)}): look for whether the "
        f"winner pulled ahead early or was still climbing when the budget ran out.")))

    # --- the best model on test images
    if have_images:
        n_img = len(best.psnr)
        src = plot_examples(best, out)
        sections.append(_section("examples", "The best model on test images", _figure(
            src, "clean, noisy and denoised test images",
            f"Clean, noisy and denoised test images at evenly spaced ranks of the denoised PSNR, worst on the "
            f"left, with each image's noisy &rarr; denoised PSNR above it: the left columns show what the "
            f"model gets wrong.")))
        src = plot_histogram(best, out)
        worse = int((best.psnr < best.noisy_psnr).sum())
        sections.append(_section("psnr-histogram", "PSNR per test image", _figure(
            src, "histogram of per-image PSNR on the test split",
            f"Per-image PSNR on all {n_img} test images, denoised (green) against the noisy input (grey): "
            f"a long left tail means some images are badly restored ({worse} come out worse than their "
            f"input).")))
        summary["test_images_worse_than_input"] = worse
        rows = noise_sweep(best)
        src = plot_noise_sweep(best, rows, out)
        sections.append(_section("noise-sweep", "Robustness to the noise level", _figure(
            src, "PSNR across noise levels",
            f"Mean PSNR on {min(SAMPLE, n_img)} test images at other {_e(best.eval_noise.kind)} noise levels: "
            f"the gap between the two lines is what the model adds, and where it shrinks to zero or turns "
            f"negative the model should not be trusted.")))
        summary["noise_sweep"] = [dict(level=lv, psnr=p, noisy_psnr=q) for lv, p, q in rows]
    else:
        why = (best.data_error if best is not None else
               "no best model was exported") or "no test images"
        for sid, title in (("examples", "The best model on test images"), ("psnr-histogram", "PSNR per test image"),
                           ("noise-sweep", "Robustness to the noise level")):
            sections.append(_section(sid, title, _missing(f"Not available: {why}.")))

    # --- hyperparameter importance
    study, why = importance_study(trials, spec)
    if study is not None:
        import optuna

        importances = optuna.importance.get_param_importances(study, evaluator=_evaluator())
        imp_src, par_src = plot_optuna(study, out)
        rows = [[_td(k), _td(float(v), True)] for k, v in importances.items()]
        body = (_table(["hyperparameter", "importance (fANOVA)"], rows)
                + _figure(imp_src, "hyperparameter importances",
                          f"Share of the variation in best {METRIC} that each searched hyperparameter explains "
                          f"(Optuna fANOVA over {len(study.trials)} scored trials): tune the top ones further, "
                          f"fix the bottom ones"
                          + (" (with one searched hyperparameter it explains everything by construction)."
                             if len(importances) == 1 else "."))
                + _figure(par_src, "parallel coordinates of the trials",
                          f"Every scored trial as one line through its hyperparameter values, coloured by its "
                          f"best {METRIC}: look for values the good (dark) lines share."))
        summary["importances"] = {k: float(v) for k, v in importances.items()}
    else:
        body = _missing(why)
    sections.append(_section("importance", "Which hyperparameters mattered", body))

    # --- latent space
    if have_images and best.data.test_labels is not None:
        src, explained = plot_latent(best, out)
        body = _figure(src, "PCA of the latent codes coloured by label",
                       f"The best model's bottleneck codes of {min(SAMPLE, len(best.psnr))} noisy test images, "
                       f"projected on their two principal components ({100 * explained:.0f}% of the variance) "
                       f"and coloured by label: separated clusters mean the code captures what the images are, "
                       f"not just their pixels (with skip connections much of the detail bypasses it).")
    elif have_images:
        body = _missing("The dataset has no labels, so there is nothing to colour the latent codes by.")
    else:
        body = _missing("Not available: no best model or no test images.")
    sections.append(_section("latent", "Latent space", body))

    # --- trials table
    params = list(spec.search)
    errors = any(t.error for t in trials)
    rows, classes = [], []
    for t in _ranked(trials):
        dot = f'<span style="color:{STYLE[t.status]["color"]}">&#9679;</span> '
        psnr = f"{t.best_val_psnr:.2f}" if math.isfinite(t.best_val_psnr) else "-"
        rows.append([_td(t.trial_id), f"<td>{dot}{_e(t.status)}</td>", _td(t.epochs), _cell(psnr),
                     *(_td(t.config.get(p, "")) for p in params), *([_td(t.error[:100])] if errors else [])])
        classes.append("best" if t.trial_id == best_id else "")
    header = ["trial", "status", "epochs", f"best {METRIC}", *params, *(["error"] if errors else [])]
    body = (_table(header, rows, classes)
            + '<p>All hyperparameters of every trial: <a href="trials.csv">trials.csv</a>.</p>')
    sections.append(_section("trials", f"All {len(trials)} trials", body))

    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return _page(spec, trials, best, sections)


def _page(spec: ExperimentSpec, trials: list[TrialSummary], best: Optional[BestModel], sections: list[str]) -> str:
    d = spec.dataset
    data = best.data.describe() if best is not None and best.data is not None else d.name
    noise = Noise(spec.eval_noise.kind, spec.eval_noise.level, spec.eval_noise.level_max).describe()
    nav = "".join(f'<a href="#{sid}">{title}</a>' for sid, title in (
        ("summary", "Result"), ("compute", "Compute"), ("best-config", "Best config"),
        ("learning-curves", "Learning curves"), ("examples", "Examples"), ("psnr-histogram", "Histogram"),
        ("noise-sweep", "Noise levels"), ("importance", "Importance"), ("latent", "Latent"), ("trials", "Trials")))
    when = datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>tuner report: {_e(spec.name)}</title><style>{CSS}</style></head>
<body><main>
<header><h1>Search report: {_e(spec.name)}</h1>
<p class="sub">{_e(data)} &middot; evaluated on {_e(noise)} noise &middot; {len(trials)} trials, up to
{spec.budget.max_epochs} epochs each &middot; Optuna TPE + ASHA &middot; generated {when}</p>
<nav>{nav}</nav></header>
{chr(10).join(sections)}
</main></body></html>
"""
