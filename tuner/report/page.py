"""The page: what ``index.html`` shows, as plain data (numbers, strings, figure file names), and
``summary.json``, the same numbers for scripts.

:func:`render` draws the figures, gathers each section's data and fills the Jinja2 template
``page.html.j2`` (autoescaped; its stylesheet ``page.css`` beside it). The words, the layout and
the order of the sections live in the template: moving a section or restyling a table changes
no Python.
"""
from __future__ import annotations

import dataclasses
import math
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from tuner.report import figures
from tuner.report.best import SAMPLE, BestModel, noise_sweep, sweep_sample
from tuner.report.figures import STYLE
from tuner.report.run import (DIVERGED, ERRORED, STATUSES, TIME_BUDGET, UNFINISHED, TrialSummary, compute_saved,
                              fanova, importance_study, ranked)
from tuner.spec import ExperimentSpec
from tuner.storage import join
from tuner.metrics import METRIC

TEMPLATE = "page.html.j2"
ROUGH_BELOW = 20  # scored trials under which the page calls the importance ranking rough


def render(run_dir: str, spec: ExperimentSpec, trials: list[TrialSummary], best: Optional[BestModel],
           out: Path) -> tuple[str, dict[str, Any]]:
    """Draw every figure into ``out`` and return the page's HTML and ``summary.json``'s content."""
    have_images = best is not None and best.test is not None
    test_psnr = float(best.psnr.mean()) if have_images else None
    best_id = best.metrics.get("trial_id") if best else None
    if best_id is None:
        best_id = next((t.trial_id for t in ranked(trials) if math.isfinite(t.best_val_psnr)), None)
    baseline = best.metrics["noisy_val_psnr"] if best else None
    compute = compute_saved(trials, spec.budget.max_t)
    data = best.data.describe() if best is not None and best.data is not None else spec.dataset.name
    e, b = spec.eval_noise, spec.budget
    page = dict(
        metric=METRIC, name=spec.name, dataset=data, noise=e.noise().describe(),
        n_trials=len(trials), generated=datetime.now().strftime("%Y-%m-%d %H:%M"),
        result=_result(best, best_id, test_psnr), checks=_checks(trials, spec, best, test_psnr),
        compute={**dataclasses.asdict(compute), "saved_pct": compute.saved_pct},
        budget=dict(max_t=b.max_t, grace_period=b.grace_period, reduction_factor=b.reduction_factor,
                    unit=_unit(b.time_attr), time_budget_s=b.time_budget_s),
        config=_best_config(spec, best, run_dir),
        curves=dict(src=figures.plot_learning_curves(trials, spec, best_id, baseline, out),
                    present=sorted({t.status for t in trials}), best_id=best_id),
        images=_images(best, out) if have_images else None,
        images_missing=None if have_images else (best.data_error if best is not None else
                                                 "no best model was exported") or "no test images",
        importance=_importance(trials, spec, run_dir, out),
        latent=_latent(best, out) if have_images and best.data.test_labels is not None else None,
        trials=_trials_table(trials, spec, best_id),
    )
    summary: dict[str, Any] = {"run_dir": run_dir, "experiment": spec.name, "trials": len(trials),
                               "statuses": {s: sum(t.status == s for t in trials) for s in STATUSES}}
    if best is not None:
        summary.update({k: best.metrics[k] for k in (METRIC, "test_psnr", "test_ssim", "noisy_val_psnr",
                                                     "noisy_test_psnr")})
        summary.update(best_trial_id=best_id, test_psnr_recomputed=test_psnr)
    summary["checks"] = [n.replace("`", "") for n in page["checks"]]  # `x` is code on the page
    summary["compute"] = page["compute"]
    if page["images"]:
        summary["test_images_worse_than_input"] = page["images"]["worse"]
        summary["noise_sweep"] = [dict(level=lv, psnr=p, noisy_psnr=q) for lv, p, q in page["images"]["sweep_rows"]]
    if page["importance"]["table"]:
        summary["importances"] = dict(page["importance"]["table"])
    return _template().render(page), summary


def _template():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(Path(__file__).parent), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    env.filters["amount"] = _amount
    return env.get_template(TEMPLATE)


def _fmt(v: Any) -> str:
    """A table value: floats to 4 significant digits, non-finite ones as ``-``."""
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "-"
    return str(v)


def _amount(v: float) -> str:
    """A budget in prose: whole numbers with thousands separators (1,290), others as they are (0.5)."""
    v = float(v)
    return f"{v:,.0f}" if v.is_integer() else f"{v:,g}"


def _unit(time_attr: str) -> str:
    """What ``budget.time_attr`` counts, in words."""
    return "epochs" if time_attr == "epoch" else "training seconds"


def _finite(x: float) -> Optional[float]:
    return float(x) if math.isfinite(x) else None


def _result(best: Optional[BestModel], best_id: Optional[str], test_psnr: Optional[float]) -> Optional[dict]:
    """The headline numbers of the exported best model, as the search recorded them and recomputed."""
    if best is None:
        return None
    m = best.metrics
    rows = [dict(split="validation", psnr=m[METRIC], noisy=m["noisy_val_psnr"],
                 ssim=_finite(m.get("val_ssim", math.nan))),
            dict(split="test", psnr=m["test_psnr"], noisy=m["noisy_test_psnr"], ssim=_finite(m["test_ssim"]))]
    if test_psnr is not None:
        rows.append(dict(split="test, recomputed by this report", psnr=test_psnr,
                         noisy=float(best.noisy_psnr.mean()), ssim=None))
    return dict(m=m, gain=m["test_psnr"] - m["noisy_test_psnr"], rows=rows, trial_id=best_id,
                epoch=m.get("epoch"), noise=best.eval_noise.describe())


def _best_config(spec: ExperimentSpec, best: Optional[BestModel], run_dir: str) -> Optional[dict]:
    """Every hyperparameter of the best trial with where its value came from: searched ones first."""
    if best is None:
        return None
    base = spec.base_config()
    chosen, defaults = [], []
    for k, v in best.config["trial"].items():
        source = ("searched" if k in spec.search else "fixed" if k in spec.fixed
                  else "experiment" if k in base else "default")
        (defaults if source == "default" else chosen).append((k, v, source))
    chosen.sort(key=lambda r: r[2] != "searched")
    return dict(chosen=chosen, defaults=defaults, best_dir=join(run_dir, "best"))


def _images(best: BestModel, out: Path) -> dict:
    """The best model on the test images: examples, per-image PSNR and the noise sweep."""
    rows = noise_sweep(best)
    return dict(examples=figures.plot_examples(best, out), histogram=figures.plot_histogram(best, out),
                sweep=figures.plot_noise_sweep(best, rows, out), sweep_rows=rows, n=len(best.psnr),
                worse=int((best.psnr < best.noisy_psnr).sum()), sample=sweep_sample(best),
                kind=best.eval_noise.kind)


def _importance(trials: list[TrialSummary], spec: ExperimentSpec, run_dir: str, out: Path) -> dict:
    """fANOVA importances of the searched hyperparameters, or why there are none."""
    study, why = importance_study(trials, spec, run_dir)
    if study is None:
        return dict(table=[], missing=why)
    import optuna

    importances = optuna.importance.get_param_importances(study, evaluator=fanova())
    return dict(table=[(k, float(v)) for k, v in importances.items()], n_scored=len(study.trials),
                scored=study.user_attrs["scored"],
                rough=len(study.trials) < ROUGH_BELOW, rough_below=ROUGH_BELOW,
                importances=figures.plot_importances(study, out),
                parallel=figures.plot_parallel_coordinate(study, out))


def _latent(best: BestModel, out: Path) -> dict:
    src, explained = figures.plot_latent(best, out)
    return dict(src=src, sample=min(SAMPLE, len(best.psnr)), explained_pct=100 * explained)


def _trials_table(trials: list[TrialSummary], spec: ExperimentSpec, best_id: Optional[str]) -> dict:
    """Every trial, best first, with its searched hyperparameters (all of them are in trials.csv)."""
    params = list(spec.search)
    rows = [dict(trial_id=t.trial_id, status=t.status, color=STYLE[t.status]["color"], epochs=t.epochs,
                 psnr=_finite(t.best_val_psnr), params=[t.config.get(p, "") for p in params],
                 error=t.error[:100], best=t.trial_id == best_id) for t in ranked(trials)]
    return dict(params=params, rows=rows, errors=any(t.error for t in trials))


def _checks(trials: list[TrialSummary], spec: ExperimentSpec, best: Optional[BestModel],
            test_psnr: Optional[float]) -> list[str]:
    """Plain-language warnings about what in this run deserves a second look (`x` marks code)."""
    notes = []
    n = {s: sum(t.status == s for t in trials) for s in STATUSES}
    b = spec.budget
    if n[TIME_BUDGET]:
        unstarted = b.num_samples - len(trials) if spec.search else 0
        notes.append(f"The search's time budget (`budget.time_budget_s`: {_amount(b.time_budget_s)} s) ran out "
                     f"while {n[TIME_BUDGET]} trial(s) were still running or waiting: they ended there, short of "
                     f"{b.max_t_key} ({_amount(b.max_t)} {_unit(b.time_attr)}), so their scores are not "
                     f"full-length ones" + (f", and {unstarted} of the {b.num_samples} trials never started."
                                            if unstarted > 0 else "."))
    if n[ERRORED]:
        notes.append(f"{n[ERRORED]} trial(s) errored; their `error.txt` is in the run folder.")
    if n[DIVERGED]:
        notes.append(f"{n[DIVERGED]} trial(s) diverged (loss or outputs went non-finite): their learning rate "
                     f"or optimizer is too aggressive for this model.")
    if n[UNFINISHED]:
        notes.append(f"{n[UNFINISHED]} trial(s) never finished: the search was interrupted "
                     f"(`tuner tune --resume` continues it).")
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
                     f"(+{winner.curve[-1][1] - winner.curve[-2][1]:.2f} dB): a larger {b.max_t_key} may help.")
    if len(trials) < 10:
        notes.append(f"Only {len(trials)} trials: treat the hyperparameter importances as a rough hint.")
    return notes
