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
from tuner.config import TrialConfig
from tuner.spec import load_spec
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


def test_crops_are_drawn_on_the_gpu_without_a_host_sync():
    """Issue 30: sampling, flips and rotations on the device, no host-device round trip per batch
    (CUDA's sync debug mode raises on any synchronizing call)."""
    from tuner.sampling import PatchSampler

    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (1, h, w), generator=g, dtype=torch.uint8).cuda() for h, w in ((180, 180), (90, 200))]
    sampler = PatchSampler(images, 64, "flip_rotate")
    gen = torch.Generator("cuda").manual_seed(1)
    sampler(64, gen)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(10):
            batch = sampler(64, gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert batch.device.type == "cuda" and batch.shape == (64, 1, 64, 64)


def test_train_seconds_on_a_gpu_is_the_loops_synced_wall_time():
    """Issue 30: on a GPU train_seconds was 31 s for a 90 s trial (steps timed without a sync). Now
    an epoch's train_seconds covers its loop up to the last kernel: epoch_seconds - val_seconds."""
    import numpy as np

    from tuner.data import Splits

    rng = np.random.default_rng(0)
    photos = lambda k, side: [rng.integers(0, 256, (1, side, side), dtype=np.uint8) for _ in range(k)]  # noqa: E731
    data = Splits("photos", photos(8, 180), photos(2, 180), photos(1, 64), patch_size=64, patches_per_epoch=64 * 40)
    config = TrialConfig(width=64, depth=3, convs_per_stage=2, skip=True, residual="pixel", batch_norm=False,
                         batch_size=64, max_epochs=3, augment="flip_rotate")
    before = 0.0
    for epoch in tuner.fit(config, data, Noise("gaussian", 25 / 255, clip=False)):
        m = epoch.metrics
        assert m["train_seconds"] - before == pytest.approx(m["epoch_seconds"] - m["val_seconds"], abs=0.05)
        before = m["train_seconds"]
    assert m["train_share"] > 0.5  # after 3 epochs, start-up (CUDA context, cuDNN's first calls) is not most of it
