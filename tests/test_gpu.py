"""The GPU path: data resident on the GPU, bf16 autocast, fractional GPUs per trial and per serving replica.

Skipped without CUDA (this project's CI has none); run on a GPU machine with `pytest -m gpu`.
"""
from __future__ import annotations

import math
import signal
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


def test_serve_replica_on_a_gpu_share_says_so_and_answers_as_the_cpu(tmp_path, digits):
    """``tuner serve --gpus-per-replica 0.5``: the replica runs on its GPU share, the model metadata
    says which device, and its answers are the CPU's in-process ones to 1/255."""
    from test_serve import _client, _expected_tensor, _export, _infer, _tuner_serve, _within

    config = TrialConfig(arch="conv", width=8, depth=1, latent_dim=8, batch_size=32, max_epochs=1)
    *_, last = tuner.fit(config, digits, Noise("gaussian", 0.3))
    model_dir = _export(last.trainer.model.cpu(), config, tmp_path / "best", {"val_psnr": last.metrics["val_psnr"]})
    with _tuner_serve(model_dir, "--gpus-per-replica", "0.5") as s:
        client = _client(s["url"])
        meta = client.get_model_metadata("denoiser")["parameters"]
        assert meta["device"] == "cuda:0" and meta["device_name"] == torch.cuda.get_device_name(0)
        batch = digits.test[:16]
        assert _within(_infer(client, batch), _expected_tensor(model_dir, batch))
        client.close()
        s["proc"].send_signal(signal.SIGINT)
