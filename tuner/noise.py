"""Noise models: the corruption a denoising autoencoder learns to remove.

Three kinds, as in the seed notebooks:

- ``gaussian``: ``clean + level * N(0, 1)``, clipped to [0, 1] (seeds 001, 003, 004); with
  ``clip: false`` not clipped (the field's standard: DnCNN, FFDNet, KAIR add white Gaussian noise
  of sigma/255 and feed the result as is), with ``quantize: true`` clipped and rounded to 8 bits,
  as a real noisy photo is;
- ``impulse``: a fraction ``level`` of pixels replaced by uniform random values (seed 000);
- ``mask``: a fraction ``level`` of pixels set to zero (seed 003's description of
  denoising autoencoders, after Vincent et al. 2008).

A ``level_max`` turns the level into a band: each image draws its own level uniformly from
``[level, level_max]``, so one model learns a range of noise (seed 004's exercise).

Training noise is drawn fresh for every batch from the trainer's generator; evaluation noise
is drawn once, from a fixed seed, by :func:`fixed_corruption`, so every trial is scored on
bit-identical noisy inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

NoiseKind = Literal["gaussian", "impulse", "mask"]
NOISE_KINDS: tuple[str, ...] = ("gaussian", "impulse", "mask")


@dataclass(frozen=True)
class Noise:
    """One noise model.

    Attributes:
        kind: ``gaussian`` | ``impulse`` | ``mask``.
        level: Gaussian standard deviation, or the fraction of pixels hit (impulse, mask).
        level_max: If set, each image draws a level uniformly from ``[level, level_max]``.
    """

    kind: NoiseKind = "gaussian"
    level: float = 0.5
    level_max: Optional[float] = None
    clip: bool = True  # gaussian: clip the noisy image to [0, 1]; False is the denoising benchmarks' convention
    quantize: bool = False  # gaussian: also round it to 8 bits (k/255), as a real photo is; needs clip

    def __post_init__(self) -> None:
        if self.quantize and not self.clip:
            raise ValueError("noise quantize needs clip: an 8-bit image holds values in [0, 1] only")
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"noise kind {self.kind!r} is not one of {', '.join(NOISE_KINDS)}")
        top = self.level if self.level_max is None else self.level_max
        if self.level < 0 or (self.kind != "gaussian" and top > 1):
            raise ValueError(f"noise level {top} out of range (impulse and mask take a fraction 0..1)")
        if self.level_max is not None and self.level_max < self.level:
            raise ValueError(f"noise level_max {self.level_max} < level {self.level}")

    @classmethod
    def from_dict(cls, d: dict) -> "Noise":
        """From an ``eval_noise`` mapping as a spec or a model's ``config.json`` holds it (``seed``
        and ``sigma`` are ignored; files from before clip / quantize existed mean clipped)."""
        return cls(d["kind"], d["level"], d.get("level_max"), d.get("clip", True), d.get("quantize", False))

    def describe(self) -> str:
        level = f"{self.level:g}" if self.level_max is None else f"{self.level:g}-{self.level_max:g}"
        if self.kind != "gaussian" or (self.clip and not self.quantize):
            return f"{self.kind} {level}"  # the digits' convention: a std on the [0, 1] scale, clipped
        if self.level_max is None:
            level = f"{self.level:.4g} (sigma {self.level * 255:.3g}/255)"  # the photo benchmarks' convention
        return f"{self.kind} {level}, {'8-bit' if self.quantize else 'unclipped'}"


def _levels(noise: Noise, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Per-image noise levels, shape (N, 1, 1, 1)."""
    if noise.level_max is None or noise.level_max == noise.level:
        return torch.full((n, 1, 1, 1), noise.level, device=device)
    u = torch.rand((n, 1, 1, 1), generator=generator, device=device)
    return noise.level + (noise.level_max - noise.level) * u


def corrupt(clean: torch.Tensor, noise: Noise, generator: torch.Generator) -> torch.Tensor:
    """Corrupt a batch of clean images.

    Args:
        clean: (B, C, H, W) floats in [0, 1].
        noise: the noise model.
        generator: random source on ``clean``'s device; its state fully decides the noise.

    Returns:
        (B, C, H, W) noisy images: in [0, 1], except Gaussian noise with ``clip`` off.
    """
    b, c, h, w = clean.shape
    level = _levels(noise, b, generator, clean.device)  # (B, 1, 1, 1)
    if noise.kind == "gaussian":
        eps = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
        noisy = clean + level * eps
        if noise.quantize:  # an 8-bit photo: round(255 * y) / 255, clipped (KAIR's "clipped" AWGN)
            return noisy.mul_(255.0).round_().clamp_(0.0, 255.0).div_(255.0)
        return noisy.clamp_(0.0, 1.0) if noise.clip else noisy
    # impulse and mask pick whole pixels (all channels together), as seed 000 does.
    hit = torch.rand((b, 1, h, w), generator=generator, device=clean.device) < level  # (B, 1, H, W)
    if noise.kind == "impulse":
        values = torch.rand(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
        return torch.where(hit, values, clean)
    return clean.masked_fill(hit, 0.0)  # mask


def fixed_corruption(clean: torch.Tensor | list[torch.Tensor], noise: Noise, seed: int):
    """The evaluation corruption: the same noisy images for every call with the same seed.

    Drawn on the CPU so the result does not depend on the device a trial runs on.

    Args:
        clean: (N, C, H, W) floats in [0, 1], on any device; or a list of (C, H, W) images of
            any sizes (photos), corrupted in order from one generator.
        noise: the experiment's evaluation noise.
        seed: the experiment's evaluation-noise seed.

    Returns:
        The noisy images, as ``clean`` (a tensor, or a list), on its device.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if isinstance(clean, torch.Tensor):
        return corrupt(clean.detach().to("cpu", torch.float32), noise, generator).to(clean.device)
    return [corrupt(x.detach().to("cpu", torch.float32)[None], noise, generator)[0].to(x.device) for x in clean]
