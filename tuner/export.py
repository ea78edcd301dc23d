"""The export: a finished search's best checkpoint becomes a self-describing model folder.

:func:`export_best` picks the best checkpoint on storage of any trial (ranked by ``val_psnr``),
rebuilds its model, scores it once on the test split that no trial ever saw (whole images, the
output rounded to 8 bits, large images in tiles as ``tuner denoise`` does) and writes
``<run>/best/``: ``model.pt`` (a ``state_dict``), ``config.json``, ``metrics.json`` and a README.
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path

import torch

from tuner.data import Splits
from tuner.metrics import METRIC, MODE, TEST_SEED_OFFSET, EvalSet, evaluate, psnr_per_image
from tuner.model import build_model
from tuner.noise import Noise
from tuner.config import TrialConfig
from tuner.spec import ExperimentSpec
from tuner.storage import CONFIG_FILE, METRICS_FILE, MODEL_FILE, STATE_FILE, join, write

log = logging.getLogger(__name__)


def export_best(results, spec: ExperimentSpec, data: Splits, run_dir: str) -> tuple[str, dict, dict]:
    """Export the best trial's best checkpoint to ``<run_dir>/best/`` and measure it on the test split.

    Returns:
        (best folder, best trial config, metrics).
    """
    from tuner.search import SearchError  # the driver's error (tuner.search imports this module)

    ok = [r for r in results if r.metrics and not r.metrics.get("diverged") and r.checkpoint is not None]
    if not ok:
        if spec.budget.time_budget_s and not any(r.metrics for r in results):
            raise SearchError(f"budget.time_budget_s ({spec.budget.time_budget_s:g} s) ran out before any trial "
                              f"reported an epoch (Ray's start-up counts too); give the search more time")
        raise SearchError(f"no trial finished an epoch without diverging or failing in {run_dir}; "
                          f"see the trials' error.txt files there")
    # The best checkpoint on storage of any trial (each keeps its best ones: budget.keep_checkpoints).
    # Ranked by the checkpoints, not by result.json: after a resume a trial's log may miss the
    # epochs the killed driver had not yet copied to storage, while their checkpoints are there.
    kept = [(m[METRIC], r, c) for r in ok for c, m in (r.best_checkpoints or [])
            if isinstance(m.get(METRIC), (int, float)) and math.isfinite(m[METRIC])]
    if not kept:
        raise SearchError(f"no trial of {run_dir} has a checkpoint with a finite {METRIC}")
    _, best, checkpoint = max(kept, key=lambda k: k[0])
    with checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    trial = TrialConfig(**state["config"])
    c, h, w = data.shape
    model = build_model(trial, c, h, w)
    model.load_state_dict(state["model"])
    noise, seed = spec.eval_noise.noise(), spec.eval_noise.seed
    val = EvalSet.make(data.val, noise, seed)
    test = EvalSet.make(data.test, noise, seed + TEST_SEED_OFFSET)
    # test_psnr as the benchmarks score it: each whole image, the output rounded to 8 bits (KAIR),
    # large images denoised in tiles exactly as `tuner denoise` does.
    val_scores = evaluate(model, val)
    test_scores = evaluate(model, test, quantize=True, denoiser=_tiled)
    metrics = {
        METRIC: val_scores["psnr"],
        "val_ssim": val_scores["ssim"],
        "test_psnr": test_scores["psnr"],
        "test_ssim": test_scores["ssim"],
        "test_mse": test_scores["mse"],
        "noisy_val_psnr": float(psnr_per_image(val.noisy, val.clean).mean()),
        "noisy_test_psnr": float(psnr_per_image(test.noisy, test.clean).mean()),
        "epoch": int(state["epoch"]),
        "train_seconds": float(state.get("train_seconds", 0.0)),
        # The race's trial, also when its continuation (tuner.search.continue_winner) trained it further.
        "trial_id": best.metrics.get("continued_from") or best.metrics.get("trial_id"),
        "continued": bool(best.metrics.get("continued_from")),
    }
    config = {
        "format": "tuner-model/1",
        "experiment": spec.name,
        "metric": METRIC,
        "mode": MODE,
        "image_shape": [c, h, w],
        "trial": trial.to_dict(),
        "dataset": spec.dataset.model_dump(mode="json"),
        "eval_noise": spec.eval_noise.model_dump(mode="json"),
    }
    best_dir = join(run_dir, "best")
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), Path(tmp) / MODEL_FILE)
        files = {MODEL_FILE: (Path(tmp) / MODEL_FILE).read_bytes(),
                 CONFIG_FILE: json.dumps(config, indent=2),
                 METRICS_FILE: json.dumps(metrics, indent=2),
                 "README.md": _model_readme(config, metrics)}
    for name, content in files.items():
        write(best_dir, name, content)
    log.info("best model: %s", best_dir)
    return best_dir, trial.to_dict(), metrics


def _tiled(model, noisy: torch.Tensor) -> torch.Tensor:
    from tuner.denoise import denoise

    return denoise(model, noisy)


def _model_readme(config: dict, metrics: dict) -> str:
    c, h, w = config["image_shape"]
    return (f"# tuner model: {config['experiment']}\n\n"
            f"A denoising autoencoder for {c}x{h}x{w} images ({config['dataset']['name']}), chosen on "
            f"`{config['metric']}` under {Noise.from_dict(config['eval_noise']).describe()} noise.\n\n"
            f"- validation PSNR {metrics[METRIC]:.2f} dB (noisy input {metrics['noisy_val_psnr']:.2f} dB)\n"
            f"- test PSNR {metrics['test_psnr']:.2f} dB, SSIM {metrics['test_ssim']:.3f} "
            f"(noisy input {metrics['noisy_test_psnr']:.2f} dB)\n\n"
            f"Files: `model.pt` (state_dict, loads with `torch.load(..., weights_only=True)`), "
            f"`config.json` (hyperparameters under `trial`), `metrics.json`.\n\n"
            f"Use: `tuner denoise --model <this folder> IMAGES... --out DIR`, or "
            f"`tuner.load_model(<this folder>)` in Python.\n")
