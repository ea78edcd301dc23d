"""Scoring: the metric contract and how a model is measured on fixed noisy images.

Every trial, the export and the benchmarks score with these functions: the same validation
images corrupted once with the experiment's fixed evaluation noise
(:func:`tuner.noise.fixed_corruption`), PSNR per whole image averaged over the set, whatever loss
or training noise a trial used. Photos of mixed sizes are scored one size group at a time.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch

from tuner.model import DenoisingAutoencoder
from tuner.noise import Noise, fixed_corruption

# The metric contract: one name, one direction, used by reporting, Tune, ASHA and checkpoints.
METRIC = "val_psnr"
MODE = "max"
DIVERGED_PSNR = 0.0  # the worst possible PSNR on [0, 1] images (MSE = 1): a diverged trial's score
TEST_SEED_OFFSET = 1  # the test split's fixed noise uses eval seed + 1: same noise model, other draws


def as_float(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, C, H, W) uint8 -> float32 in [0, 1] on ``device``."""
    t = _tensor(images)
    return t.to(device).float().div_(255.0)


def _tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images
    with warnings.catch_warnings():  # arrays from Ray's object store are read-only; we never write
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(images)


Batch = Union[torch.Tensor, list[torch.Tensor]]  # (N, C, H, W), or photos: a list of (C, H, W) of any sizes


@dataclass
class EvalSet:
    """Clean images and their fixed corruption: what every trial is scored on. Photos of mixed
    sizes are lists of (C, H, W) tensors, scored whole, one size group at a time."""

    clean: torch.Tensor | list[torch.Tensor]  # (N, C, H, W) float in [0, 1], or a list of (C, H, W)
    noisy: torch.Tensor | list[torch.Tensor]  # the same shapes: the fixed noisy inputs

    @classmethod
    def make(cls, images: np.ndarray | torch.Tensor | list[np.ndarray], noise: Noise, seed: int,
             device: torch.device | str = "cpu") -> "EvalSet":
        if isinstance(images, list):
            clean = [as_float(a, "cpu") for a in images]
            return cls([x.to(device) for x in clean], [y.to(device) for y in fixed_corruption(clean, noise, seed)])
        clean = as_float(images, "cpu")
        return cls(clean.to(device), fixed_corruption(clean, noise, seed).to(device))

    def __len__(self) -> int:
        return len(self.clean)


def size_groups(images: Batch) -> list[list[int]]:
    """Indices of the images of each size, in order of first appearance (one group for a tensor)."""
    if isinstance(images, torch.Tensor):
        return [list(range(len(images)))]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(images):
        groups.setdefault(tuple(x.shape), []).append(i)
    return list(groups.values())


def _stack(images: Batch, idx: list[int]) -> torch.Tensor:
    return images[idx[0]:idx[-1] + 1] if isinstance(images, torch.Tensor) else torch.stack([images[i] for i in idx])


def psnr_per_image(pred: Batch, target: Batch) -> torch.Tensor:
    """(N, C, H, W) x2 (or lists of (C, H, W)) in [0, 1] -> (N,) PSNR in dB (peak 1.0), capped at
    100 dB for exact matches; no border crop (the benchmarks' convention)."""
    if not isinstance(pred, torch.Tensor):
        return torch.cat([psnr_per_image(p[None], t[None]) for p, t in zip(pred, target)])
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean SSIM (torchmetrics), with the Gaussian window shrunk to fit small images (8x8 digits)."""
    from torchmetrics.functional.image import structural_similarity_index_measure  # slow import: lazy

    side = min(pred.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)
    sigma = 1.5 * kernel / 11
    return float(structural_similarity_index_measure(
        pred.float(), target.float(), data_range=1.0, kernel_size=kernel, sigma=sigma))


EVAL_PIXELS = 2**21  # images (of one size) denoised per forward pass: about 2 megapixels


@torch.no_grad()
def evaluate(model: DenoisingAutoencoder, data: EvalSet, batch_size: int = 512, quantize: bool = False,
             denoiser=None) -> dict[str, Any]:
    """Score a model on fixed noisy inputs: whole images, one size group at a time.

    Args:
        model: the model.
        data: the clean images and their fixed noisy inputs.
        batch_size: most images per forward pass (fewer for large images: :data:`EVAL_PIXELS`).
        quantize: round the outputs to 8 bits before scoring, as a saved image is (KAIR's test
            convention; ``test_psnr``).
        denoiser: ``f(model, noisy) -> denoised`` for one size group; default ``model.denoise``
            (tests pass the tiled :func:`tuner.denoise.denoise`).

    Returns:
        ``psnr`` (mean per-image PSNR, dB), ``mse`` (per-image mean), ``ssim`` (per-image mean) and
        ``psnr_per_image`` (N,) numpy.
    """
    was_training = model.training
    model.eval()
    denoiser = denoiser or (lambda m, x: m.denoise(x))
    per_image, mse, ssims = torch.zeros(len(data)), torch.zeros(len(data)), []
    for idx in size_groups(data.clean):
        clean = _stack(data.clean, idx)  # (n, C, H, W), one size
        noisy = _stack(data.noisy, idx)
        step = max(1, min(batch_size, EVAL_PIXELS // (clean.shape[-1] * clean.shape[-2])))
        out = torch.cat([denoiser(model, noisy[i:i + step]) for i in range(0, len(noisy), step)])
        if quantize:
            out = out.mul(255.0).round_().div_(255.0)
        per_image[idx] = psnr_per_image(out, clean).cpu()
        mse[idx] = (out - clean).pow(2).flatten(1).mean(1).cpu()
        ssims.append((ssim(out, clean), len(idx)))
    model.train(was_training)
    return {
        "psnr": float(per_image.mean()),
        "mse": float(mse.mean()),
        "ssim": sum(v * n for v, n in ssims) / len(data),
        "psnr_per_image": per_image.numpy(),
    }
