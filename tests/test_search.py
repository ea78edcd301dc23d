"""The search service end to end: real Ray Tune, real Optuna TPE, real ASHA, real training."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tuner
from tuner.cli import main
from tuner.data import load_dataset
from tuner.spec import load_spec
from tuner.metrics import METRIC, EvalSet, evaluate
from tuner.resume import STATE_COPY, STATE_FILES

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "search_spaces" / "tiny.yaml"


def _check_best(best_dir: Path, beats_noisy: bool = True) -> dict:
    """best/ reloads into a model whose val_psnr is the one in metrics.json."""
    for name in ("model.pt", "config.json", "metrics.json", "README.md"):
        assert (best_dir / name).is_file(), name
    metrics = json.loads((best_dir / "metrics.json").read_text())
    config = json.loads((best_dir / "config.json").read_text())
    model = tuner.load_model(best_dir)
    assert isinstance(model, torch.nn.Module)
    splits = load_dataset(**config["dataset"])
    noise = config["eval_noise"]
    from tuner.noise import Noise

    val = EvalSet.make(splits.val, Noise(noise["kind"], noise["level"], noise["level_max"]), noise["seed"])
    assert evaluate(model, val)["psnr"] == pytest.approx(metrics[METRIC], abs=1e-4)
    assert math.isfinite(metrics["test_psnr"])
    if beats_noisy:
        assert metrics["val_psnr"] > metrics["noisy_val_psnr"]
        assert metrics["test_psnr"] > metrics["noisy_test_psnr"]
    return metrics


def test_tiny_search_python_api(tiny_run):
    """Trials are created, ASHA stops one early, best/ reloads with the same val_psnr."""
    result, spec = tiny_run
    assert len(result.results) == spec.budget.num_samples
    epochs = [int(r.metrics["epoch"]) for r in result.results]
    assert all(1 <= e <= spec.budget.max_epochs for e in epochs)
    assert min(epochs) < spec.budget.max_epochs, f"ASHA stopped no trial early: {epochs}"
    assert max(epochs) == spec.budget.max_epochs
    configs = {json.dumps(r.config, sort_keys=True) for r in result.results}
    assert len(configs) == spec.budget.num_samples  # TPE proposed distinct configs
    metrics = _check_best(Path(result.best_dir))
    best_reported = max(max(r.metrics_dataframe[METRIC]) for r in result.results)
    assert metrics[METRIC] == pytest.approx(best_reported, abs=1e-4)
    assert (Path(result.run_dir) / "spec.yaml").is_file()
    # A whole copy of each of Ray's state files (tuner.resume.KeepStateCopy), of this session's name.
    import pickle

    import ray.cloudpickle as cloudpickle

    copies = Path(result.run_dir) / STATE_COPY
    for pattern, read in zip(STATE_FILES, (json.loads, cloudpickle.loads, pickle.loads)):
        (copy,) = copies.glob(pattern)
        assert read(copy.read_bytes()) and (Path(result.run_dir) / copy.name).is_file(), copy.name


def test_tiny_search_cli(tmp_path):
    """The real console entry point: python -m tuner tune, exit 0, best/ on disk, numbers printed."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", "-q", "tune", str(TINY), "--name", "cli", "--storage", str(tmp_path),
         "--num-samples", "2", "--max-epochs", "2", "--no-report"],
        capture_output=True, text=True, env=env, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best val_psnr" in proc.stdout and "test_psnr" in proc.stdout
    best = tmp_path / "cli" / "best"
    metrics = _check_best(best, beats_noisy=False)  # 2 trials x 2 epochs: too short to promise that
    assert f"{metrics['val_psnr']:.2f}" in proc.stdout
    trials = [p for p in (tmp_path / "cli").iterdir() if p.name.startswith("trial_")]
    assert len(trials) == 2


FIXED_SPEC = """\
name: fixed
dataset: {name: digits}
budget: {num_samples: 4, max_epochs: 2}
resources: {cpus_per_trial: 1}
fixed: {width: 8, depth: 1, latent_dim: 8, batch_size: 64, lr: 3.0e-3}
"""


def test_a_spec_with_nothing_to_search_trains_one_trial(tmp_path, caplog):
    """No search: section (or search: {}) trains the fixed configuration as one study trial, and
    says so (issue 20); Ray's OptunaSearch would die on the empty space."""
    import optuna

    spec_path = tmp_path / "fixed.yaml"
    spec_path.write_text(FIXED_SPEC)
    spec = load_spec(spec_path)
    (tmp_path / "empty.yaml").write_text(FIXED_SPEC + "search: {}\n")
    assert load_spec(tmp_path / "empty.yaml") == spec
    with caplog.at_level("INFO", logger="tuner.search"):
        result = tuner.tune(spec, storage=str(tmp_path / "runs"), report=False, verbose=0)
    said = [r.getMessage() for r in caplog.records if "nothing to search" in r.getMessage()]
    assert len(said) == 1 and "one trial" in said[0] and "num_samples 4 does not apply" in said[0], said
    (trial,) = result.results
    assert int(trial.metrics["epoch"]) == 2 and trial.config["lr"] == 3.0e-3 and trial.config["width"] == 8
    (told,) = optuna.load_study(study_name="fixed", storage=f"sqlite:///{Path(result.run_dir) / 'study.db'}").trials
    assert told.state == optuna.trial.TrialState.COMPLETE and told.params == {}
    assert told.value == pytest.approx(max(trial.metrics_dataframe[METRIC]))
    assert Path(result.best_dir, "model.pt").is_file()


BAD_SPECS = {
    "unknown key": ("bogus: 1\n", "bogus"),
    "wrong type": ("budget: {num_samples: many}\n", "budget.num_samples"),
    "low > high": ("search: {lr: {loguniform: [0.1, 0.001]}}\n", "search.lr"),
    "unknown dataset": ("dataset: {name: imagenet}\n", "dataset.name"),
    "unknown optimizer": ("fixed: {optimizer: lion}\n", "fixed.optimizer"),
    "unknown loss in choice": ("search: {loss: {choice: [mse, ssim]}}\n", "search.loss"),
    "too deep for 8x8": ("dataset: {name: digits}\nfixed: {depth: 4}\n", "depth"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_one_line_exit_2(case, tmp_path, capsys):
    text, key = BAD_SPECS[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["tune", str(path), "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tuner: error: "), err
    assert str(path) in err and key in err, err
    assert not (tmp_path / "search").exists()  # nothing started


def test_bad_spec_subprocess_has_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("search: {lr: {uniform: [1, 0]}}\n")
    proc = subprocess.run([sys.executable, "-m", "tuner", "tune", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "search.lr" in proc.stderr and "low 1.0 > high 0.0" in proc.stderr


@pytest.mark.parametrize("flag, value", [("--num-samples", "zero"), ("--time-budget-s", "0")])
def test_bad_flag_one_line(capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        main(["tune", str(TINY), flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err


def test_existing_run_needs_resume(tiny_run, capsys):
    result, spec = tiny_run
    storage = str(Path(result.run_dir).parent)
    assert main(["tune", str(TINY), "--name", spec.name, "--storage", storage, "--no-report"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_quickstart_spec_is_valid():
    spec = load_spec(ROOT / "search_spaces" / "quickstart.yaml")
    assert spec.dataset.name == "mnist5k" and spec.eval_noise.level == 0.5
    # It searches around a hand-tuned U-Net (issue 11), which it trains first.
    assert {"width", "convs_per_stage", "latent_dim", "residual", "lr", "loss", "noise_level"} <= set(spec.search)
    assert spec.fixed["skip"] and spec.fixed["lr_schedule"] == "onecycle"
    assert spec.start_from and spec.start_from[0]["convs_per_stage"] == 2


@pytest.mark.parametrize("name", ["tiny", "quickstart", "mnist5k_wide", "mnist", "fashion_mnist", "cifar10",
                                  "photos", "bsd68", "cbsd68"])
def test_shipped_specs_load(name):
    spec = load_spec(ROOT / "search_spaces" / f"{name}.yaml")
    assert spec.name == name
    assert (ROOT / "search_spaces" / f"{name}.yaml").read_text().startswith("#")  # header comment


def test_tpe_waits_for_ten_random_trials_after_the_warm_starts_unless_the_spec_says():
    from tuner.search import make_sampler, startup_trials

    spec = load_spec(ROOT / "benchmarks" / "versus" / "impulse_bsd68.yaml")  # no searcher section
    assert spec.searcher.n_startup_trials is None and len(spec.start_from) == 1
    assert startup_trials(spec) == 11  # Optuna's default 10, the warm start not counted among them
    two = spec.model_copy(update={"start_from": spec.start_from * 2})
    assert startup_trials(two) == 12
    shipped = load_spec(ROOT / "search_spaces" / "cbsd68.yaml")  # sets n_startup_trials: 1, as Optuna counts
    assert startup_trials(shipped) == 1
    import optuna

    assert isinstance(make_sampler(spec), optuna.samplers.TPESampler)
