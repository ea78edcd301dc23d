"""benchmarks/bench_versus.py: its in-process arms (the warm start alone, Optuna alone) on real
digits with real training, real Optuna and tiny wall budgets; its task specs load and shrink."""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import optuna
import pytest

from tuner.data import load_dataset
from tuner.spec import load_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_versus  # noqa: E402

SPEC = """
name: versus-test
seed: 0
dataset: {name: digits}
eval_noise: {kind: gaussian, level: 0.3}
budget:
  time_attr: train_seconds
  max_train_seconds: 3
  grace_period: 1
  reduction_factor: 3
  num_samples: 50
  max_concurrent: 1
resources: {cpus_per_trial: 1}
searcher: {n_startup_trials: 1}
fixed: {width: 8, batch_size: 64, skip: true}
search:
  latent_dim: {choice: [4, 16]}
  depth: {int: [1, 2]}
  lr: {loguniform: [1.0e-3, 1.0e-2]}
  loss: {choice: [mse, bce]}
start_from:
  - {latent_dim: 16, depth: 2, lr: 5.0e-3, loss: mse}
"""


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    path = tmp_path_factory.mktemp("versus") / "digits.yaml"
    path.write_text(SPEC)
    spec = load_spec(path)
    return spec, load_dataset(**spec.dataset.model_dump())


def test_alone_trains_the_warm_start_until_the_deadline(task):
    spec, data = task
    bench_versus._import_scoring()  # torchmetrics' first import (1-3 s on a slow machine) is not the arm's to count here
    deadline = time.time() + 6
    r = bench_versus.run_alone(spec, data, deadline, reserve_s=1.5, threads=1)
    assert time.time() <= deadline + 1.0  # scored by the deadline (a second's slack for a loaded machine)
    assert math.isfinite(r["test_psnr"]) and r["test_psnr"] > r["noisy_test_psnr"] + 3
    assert {k: r["best_config"][k] for k in spec.start_from[0]} == spec.start_from[0]
    assert r["scheduled_seconds"] > 2 and r["trials"] == 1  # the schedule spans the whole budget


def test_optuna_searches_from_the_warm_start_with_hyperband(task):
    spec, data = task
    study = bench_versus.make_study(spec)
    assert isinstance(study.pruner, optuna.pruners.HyperbandPruner)
    assert isinstance(study.sampler, optuna.samplers.TPESampler)
    deadline = time.time() + 12
    r = bench_versus.run_optuna(spec, data, deadline, reserve_s=1.5, study=study)
    assert time.time() <= deadline + 1.0  # the trial running at the deadline was stopped there
    first = study.trials[0]
    assert first.number == 0 and {k: first.params[k] for k in spec.start_from[0]} == spec.start_from[0]
    assert len(study.trials) >= 2 and r["trials"] == len(study.trials)  # TPE proposed after the warm start
    assert all(t.intermediate_values for t in study.trials if t.state != optuna.trial.TrialState.FAIL)
    assert "FAIL" not in r["states"]
    assert math.isfinite(r["test_psnr"]) and r["test_psnr"] > r["noisy_test_psnr"] + 3
    # the best epoch of any trial (pruned ones included) is what was scored
    best = max(v for t in study.trials for v in t.intermediate_values.values())
    assert r["val_psnr"] == pytest.approx(best, abs=0.05)


@pytest.mark.parametrize("name", list(bench_versus.TASKS))
def test_task_specs_load_and_shrink(name):
    task = bench_versus.TASKS[name]
    full = bench_versus.resolve_spec(task, seed=1, scale=1.0, tune_budget_s=task.wall_s - 40)
    smoke = bench_versus.resolve_spec(task, seed=1, scale=0.1, tune_budget_s=30.0)
    assert full.seed == smoke.seed == 1 and full.start_from and full.budget.time_budget_s == task.wall_s - 40
    for s in (full, smoke):
        assert s.budget.grace_period <= s.budget.max_t
        if s.budget.time_attr == "train_seconds":
            assert s.budget.max_train_seconds <= s.budget.time_budget_s


def test_a_trial_that_would_run_past_the_deadline_is_cut_at_its_first_yield(task):
    """Under a budget in seconds ``fit`` validates further apart as a trial runs, so the stretch after
    a yield cannot be foreseen from the one before: the Optuna arm of cbsd68_s50, seed 1 (2026-12-06),
    waited for a stretch that might cross the deadline and ran 40 s past W. The budget is lowered at
    the first yield after which the trial's own budget would carry it past."""
    from tuner.config import TrialConfig
    from tuner.train import fit

    spec, data = task
    config = TrialConfig(**{**spec.base_config(), **spec.start_from[0], "max_epochs": 100000,
                            "max_train_seconds": 60.0})
    epochs = fit(config, data, spec.eval_noise.noise(), threads=1)
    epoch = next(epochs)  # one short epoch, validated: far from the next stretch's length
    clock = bench_versus.Deadline(time.time() + 6, 1.0, data)
    assert clock.stop(epoch.trainer, epoch.metrics["val_seconds"])
    assert epoch.trainer.train_seconds < epoch.trainer.config.max_train_seconds < epoch.trainer.train_seconds + 6
    last = list(epochs)[-1]  # it ends there, validated, before the deadline
    assert last.final and time.time() < clock.training_ends() + 1.0
    # One whose own budget ends in time is left alone.
    epoch = next(fit(config, data, spec.eval_noise.noise(), threads=1))
    assert not bench_versus.Deadline(time.time() + 600, 1.0, data).stop(epoch.trainer, epoch.metrics["val_seconds"])
    assert epoch.trainer.config.max_train_seconds == 60.0


def test_a_task_of_your_own_is_a_spec_file(tmp_path):
    """``--tasks my.yaml``: the comparison on a spec of your own, named by its file, W from ``--wall-s``;
    its dataset folder named relative to where you ran it. The alone arm for real on a folder of
    PNG digits (a tiny W), rendered beside the built-in tasks' sections; a name that is neither a task
    nor a spec file is one line and exit 2."""
    import json
    import subprocess

    from PIL import Image
    from sklearn.datasets import load_digits

    script = Path(bench_versus.__file__)
    (tmp_path / "imgs").mkdir()
    for i, d in enumerate(load_digits().images[:240]):
        Image.fromarray((d * 15.9).astype("uint8"), "L").save(tmp_path / "imgs" / f"{i:03d}.png")
    mine = tmp_path / "mine.yaml"
    mine.write_text(SPEC.replace("dataset: {name: digits}", "dataset: {name: folder, path: imgs, patch_size: 8}"))
    task = bench_versus.task_of(str(mine), 20)
    assert (task.name, task.spec, task.wall_s) == ("mine", mine.resolve(), 20.0)
    with pytest.raises(ValueError, match="not a task .*quickstart.* nor a spec file"):
        bench_versus.task_of("nosuch")
    clash = tmp_path / "quickstart.yaml"
    clash.write_text(mine.read_text())
    with pytest.raises(ValueError, match="the built-in task quickstart's; rename the file"):
        bench_versus.task_of(str(clash))

    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(script), "--tasks", "mine.yaml", "--arms", "alone", "--wall-s", "20",
                          "--out", str(out), "--write"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    record = json.loads((out / "mine_s0_alone.json").read_text())
    assert record["task"] == "mine" and record["task_spec"] == str(mine.resolve())
    assert record["test_psnr"] > record["noisy_test_psnr"] + 1 and record["wall_s"] <= 20 + 2
    ran = load_spec(out / "specs" / "mine_s0.yaml")
    assert ran.dataset.path == str(tmp_path / "imgs")  # absolute: the arms run in the repository
    section = (out / "section.md").read_text()
    assert "### mine: `mine.yaml` (a spec of your own), W = " in section and "| 0 | alone |" in section

    bad = subprocess.run([sys.executable, str(script), "--tasks", "nosuch", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].endswith("nosuch: not a task (" + ", ".join(bench_versus.TASKS)
                                                        + ") nor a spec file (.yaml)")
