"""The exported best model, measured again: ``<run>/best/`` loaded, its test split denoised once
(the same fixed noise the search scored it on) and the noise levels around it swept."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np
import torch

from tuner.data import DatasetError, Splits, load_dataset
from tuner.model import DenoisingAutoencoder, build_model
from tuner.noise import Noise
from tuner.config import TrialConfig
from tuner.storage import CONFIG_FILE, METRICS_FILE, MODEL_FILE, join, read_file
from tuner.metrics import TEST_SEED_OFFSET, EvalSet, psnr_per_image

SWEEP_FACTORS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)  # noise levels tried, relative to the eval level
SAMPLE = 2000  # test images used by the noise sweep and the latent plot: enough, and quick on a CPU
# Photos in the noise sweep: the first test photos within this many pixels (6 of BSD68's 481x321;
# SAMPLE MNIST digits are 1.6 M). Sweeping all 68 of CBSD68 took 2 minutes of a 30-minute search.
SWEEP_PIXELS = 1_000_000


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
        return Noise.from_dict(e)

    @property
    def test_seed(self) -> int:
        return int(self.config["eval_noise"]["seed"]) + TEST_SEED_OFFSET  # as tuner.export.export_best


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
        best.data = load_dataset(**config["dataset"])  # once: every figure shares it
    except DatasetError as e:
        best.data_error = str(e)
        return best
    best.test = EvalSet.make(best.data.test, best.eval_noise, best.test_seed)
    best.denoised = _denoise(model, best.test.noisy)
    best.psnr = psnr_per_image(best.denoised, best.test.clean).numpy()
    best.noisy_psnr = psnr_per_image(best.test.noisy, best.test.clean).numpy()
    return best


@torch.no_grad()
def _denoise(model: DenoisingAutoencoder, noisy, batch_size: int = 512):
    """Denoised images: a tensor for a tensor, a list for photos (each whole, tiled when large)."""
    if isinstance(noisy, list):
        from tuner.denoise import denoise

        return [denoise(model, x) for x in noisy]
    return torch.cat([model.denoise(noisy[i:i + batch_size]) for i in range(0, len(noisy), batch_size)])


def sweep_sample(best: BestModel) -> int:
    """How many test images the noise sweep uses: the first :data:`SAMPLE`, or for photos (a list
    of images of any size) the first ones within :data:`SWEEP_PIXELS` (at least one)."""
    images = best.data.test
    if not isinstance(images, list):
        return min(SAMPLE, len(images))
    n, pixels = 0, 0
    for x in images[:SAMPLE]:
        pixels += x.shape[-1] * x.shape[-2]
        if n and pixels > SWEEP_PIXELS:
            break
        n += 1
    return n


def noise_sweep(best: BestModel) -> list[tuple[float, float, float]]:
    """PSNR of the best model at noise levels around the one it was chosen on (seed 004's question).

    Returns:
        (level, denoised PSNR, noisy-input PSNR) per level, on the first :func:`sweep_sample` test
        images, same noise kind and seed as the test split.
    """
    noise = best.eval_noise
    center = noise.level if noise.level_max is None else (noise.level + noise.level_max) / 2
    center = center or 0.1  # a noise-free experiment: still show how it copes with some noise
    cap = 2.0 if noise.kind == "gaussian" else 1.0  # impulse and mask levels are pixel fractions
    levels = sorted({round(min(cap, center * f), 6) for f in SWEEP_FACTORS})
    images = best.data.test[:sweep_sample(best)]
    rows = []
    for level in levels:
        ev = EvalSet.make(images, replace(noise, level=level, level_max=None), best.test_seed)
        denoised = _denoise(best.model, ev.noisy)  # PSNR only: evaluate()'s SSIM costs more than the rest
        rows.append((level, float(psnr_per_image(denoised, ev.clean).mean()),
                     float(psnr_per_image(ev.noisy, ev.clean).mean())))
    return rows
