"""The report's figures, one function per figure: each draws into ``out`` and returns the PNG's
file name (the page links it by that name).

Matplotlib's object API (:class:`~matplotlib.figure.Figure`, no pyplot state) for our own plots,
Optuna's matplotlib plots for the importances and the parallel coordinates.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from matplotlib.figure import Figure

from tuner.report.best import SAMPLE, BestModel
from tuner.report.run import (COMPLETED, DIVERGED, ERRORED, STATUSES, STOPPED, TIME_BUDGET, UNFINISHED, TrialSummary,
                              asha_rungs, fanova)
from tuner.config import TrialConfig
from tuner.spec import ExperimentSpec
from tuner.metrics import METRIC

EXAMPLES = 8  # test images shown clean / noisy / denoised
DPI = 110

# One look per trial outcome, shared by the learning curves and the trials table.
STYLE = {
    COMPLETED: dict(color="#4c72b0", ls="-", marker=None),
    STOPPED: dict(color="#9a9a9a", ls="-", marker="x"),
    TIME_BUDGET: dict(color="#937860", ls="-", marker="|"),  # cut off where the search's time ran out
    DIVERGED: dict(color="#c44e52", ls="--", marker="X"),
    ERRORED: dict(color="#dd8452", ls=":", marker="s"),
    UNFINISHED: dict(color="#8172b3", ls="-.", marker=">"),
}
BEST_COLOR = "#2ca02c"


def _save(fig: Figure, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=DPI)
    return name


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
            ax.plot(t.best_at, t.best_val_psnr, marker="*", color=BEST_COLOR, ms=15, mec="black",
                    mew=0.6, zorder=5)
    for r in asha_rungs(spec.budget):
        ax.axvline(r, color="#bbbbbb", lw=0.8, ls=(0, (2, 3)), zorder=1)
    if baseline is not None:
        ax.axhline(baseline, color="black", lw=1, ls=(0, (5, 3)), zorder=1)
    if spec.budget.time_attr == "epoch":
        ax.set_xlim(0.7, spec.budget.max_epochs + 0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
    else:  # ASHA's rungs count training seconds: trials of different cost meet after equal compute
        ax.set_xlim(0, spec.budget.max_t * 1.02)
        ax.set_xlabel("training seconds")
    ax.set_ylabel(f"{METRIC} (dB)")
    ax.grid(alpha=0.25)
    handles = [Line2D([], [], color=BEST_COLOR, lw=2.6, marker="*", ms=12, mec="black", mew=0.6,
                      label=f"best trial {best_id}")] if best_id else []
    for status in STATUSES:
        n = sum(t.status == status for t in trials)
        if n:
            s = STYLE[status]
            handles.append(Line2D([], [], color=s["color"], ls=s["ls"], marker=s["marker"], mew=2,
                                  label=f"{status} ({n})"))
    if asha_rungs(spec.budget):
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
        t = trained.train_noise()
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


def plot_importances(study, out: Path) -> str:
    """Optuna's bar chart of the fANOVA importances of the searched hyperparameters."""
    from optuna.visualization import matplotlib as ovm

    size = (7.0, 1.4 + 0.45 * len(study.best_trial.params))
    return _optuna_figure(
        lambda: ovm.plot_param_importances(study, evaluator=fanova(), target_name=f"best {METRIC}"),
        size, out, "param_importances.png")


def plot_parallel_coordinate(study, out: Path) -> str:
    """Optuna's parallel-coordinate plot: every scored trial as one line through its values."""
    from optuna.visualization import matplotlib as ovm

    size = (max(7.0, 1.7 * (len(study.best_trial.params) + 1)), 4.4)
    return _optuna_figure(lambda: ovm.plot_parallel_coordinate(study, target_name=f"best {METRIC}"),
                          size, out, "parallel_coordinate.png")


def _optuna_figure(plot: Callable, size: tuple[float, float], out: Path, name: str) -> str:
    import matplotlib
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning

    # Optuna's importance plot switches pyplot to ggplot; its parallel coordinates draw in whatever
    # style is on. Both in ggplot, as Optuna's own pages show them; rc_context restores the caller's.
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Attempting to set identical")  # a one-value axis
        plt.style.use("ggplot")
        fig = plot().figure
        fig.set_size_inches(*size)
        fig.savefig(out / name, dpi=DPI, bbox_inches="tight")
        plt.close(fig)
    return name
