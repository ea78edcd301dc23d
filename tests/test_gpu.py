"""The GPU path: data resident on the GPU, bf16 autocast, fractional GPUs per trial.

Skipped without CUDA (this project's CI has none); run on a GPU machine with `pytest -m gpu`.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import tuner
from tuner.noise import Noise
from tuner.spec import TrialConfig, load_spec
from tuner.train import Trainer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_trainer_keeps_data_on_the_gpu_with_bf16(digits):
    trainer = Trainer(TrialConfig(width=8, depth=1, max_epochs=1), digits, Noise("gaussian", 0.3))
    assert trainer.train_images.device.type == "cuda" and trainer.train_images.dtype == torch.uint8
    assert trainer.val.noisy.device.type == "cuda"
    assert trainer.amp_dtype == torch.bfloat16  # precision: auto
    metrics = trainer.train_epoch()
    assert math.isfinite(metrics["train_loss"]) and metrics["val_psnr"] > 0


def test_four_trials_share_one_gpu(tmp_path):
    spec = load_spec(Path(__file__).resolve().parents[1] / "search_spaces" / "tiny.yaml").with_overrides(
        name="gpu", gpus_per_trial=0.25, max_concurrent=4)
    result = tuner.tune(spec, storage=str(tmp_path), report=False, verbose=0)
    assert len(result.results) == spec.budget.num_samples
    assert all(not r.error for r in result.results)
