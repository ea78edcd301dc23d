"""Noise models: each corrupts as documented, bands vary per image, evaluation noise is fixed."""
from __future__ import annotations

import pytest
import torch

from tuner.noise import Noise, corrupt, fixed_corruption


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grey(n: int = 64, c: int = 1, side: int = 32) -> torch.Tensor:
    """Mid-grey images: Gaussian noise of std <= 0.15 is (almost) never clipped around 0.5."""
    return torch.full((n, c, side, side), 0.5)


def test_gaussian_std_matches_level():
    clean = grey()
    noisy = corrupt(clean, Noise("gaussian", 0.1), gen())
    diff = noisy - clean
    assert diff.std().item() == pytest.approx(0.1, rel=0.03)
    assert abs(diff.mean().item()) < 0.005


def test_gaussian_is_clipped_to_unit_range():
    clean = torch.rand((16, 3, 16, 16), generator=gen(1))
    noisy = corrupt(clean, Noise("gaussian", 0.8), gen())
    assert noisy.min().item() == 0.0 and noisy.max().item() == 1.0  # clipped, and clipping happened
    assert not torch.equal(noisy, clean)


@pytest.mark.parametrize("kind", ["impulse", "mask"])
def test_fraction_of_pixels_hit_matches_level(kind):
    clean = grey(c=3)
    noisy = corrupt(clean, Noise(kind, 0.3), gen())
    changed = noisy != clean  # (N, 3, H, W); impulse redraws uniform values, never exactly 0.5
    # Whole pixels are hit: all three channels together.
    assert torch.equal(changed.all(1), changed.any(1))
    assert changed[:, 0].float().mean().item() == pytest.approx(0.3, abs=0.01)
    if kind == "mask":
        assert (noisy[changed] == 0).all()
    else:
        assert noisy.min() >= 0 and noisy.max() <= 1
        assert noisy[changed].std().item() == pytest.approx((1 / 12) ** 0.5, rel=0.05)  # U(0, 1)


@pytest.mark.parametrize("kind", ["gaussian", "impulse", "mask"])
def test_level_zero_is_identity(kind):
    clean = torch.rand((4, 1, 8, 8), generator=gen(2))
    assert torch.equal(corrupt(clean, Noise(kind, 0.0), gen()), clean)


def test_gaussian_band_varies_per_image_within_band():
    clean = grey(n=200)
    noisy = corrupt(clean, Noise("gaussian", 0.02, level_max=0.15), gen())
    stds = (noisy - clean).flatten(1).std(1)  # (N,) each image's own level
    assert stds.min().item() > 0.02 * 0.85 and stds.max().item() < 0.15 * 1.1
    assert stds.max().item() - stds.min().item() > 0.1  # spread over the band, not one level
    fixed = (corrupt(clean, Noise("gaussian", 0.08), gen()) - clean).flatten(1).std(1)
    assert fixed.max().item() - fixed.min().item() < 0.02  # without a band: one level for all


def test_mask_band_varies_per_image_within_band():
    clean = torch.ones((200, 1, 32, 32))
    noisy = corrupt(clean, Noise("mask", 0.1, level_max=0.6), gen())
    fractions = (noisy == 0).flatten(1).float().mean(1)  # (N,)
    assert fractions.min().item() > 0.1 - 0.05 and fractions.max().item() < 0.6 + 0.05
    assert fractions.max().item() - fractions.min().item() > 0.4


def test_fixed_corruption_is_reproducible_and_seed_dependent():
    clean = torch.rand((8, 1, 8, 8), generator=gen(3))
    noise = Noise("gaussian", 0.5, level_max=0.7)
    a = fixed_corruption(clean, noise, seed=1234)
    torch.manual_seed(99)  # the global RNG must not matter
    torch.rand(10)
    b = fixed_corruption(clean, noise, seed=1234)
    assert torch.equal(a, b)
    assert not torch.equal(a, fixed_corruption(clean, noise, seed=1235))
    assert not torch.equal(a, clean)
    assert torch.equal(clean, torch.rand((8, 1, 8, 8), generator=gen(3)))  # input left untouched


@pytest.mark.parametrize("kind", ["gaussian", "impulse", "mask"])
def test_training_noise_differs_batch_to_batch(kind):
    clean = torch.rand((8, 1, 8, 8), generator=gen(4))
    g = gen(7)
    first, second = corrupt(clean, Noise(kind, 0.4), g), corrupt(clean, Noise(kind, 0.4), g)
    assert not torch.equal(first, second)  # the generator advances: fresh noise every batch
    assert torch.equal(first, corrupt(clean, Noise(kind, 0.4), gen(7)))  # and its state decides it


def test_invalid_noise_is_rejected():
    with pytest.raises(ValueError, match="not one of"):
        Noise("salt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out of range"):
        Noise("mask", 1.5)
    with pytest.raises(ValueError, match="level_max"):
        Noise("gaussian", 0.5, level_max=0.2)
    assert Noise("gaussian", 1.5).describe() == "gaussian 1.5"  # std may exceed 1
    assert Noise("mask", 0.1, 0.3).describe() == "mask 0.1-0.3"
