"""Training samples: random crops of photos of any size, and the flips / rotations of the trial's
``augment`` hyperparameter, drawn on the trainer's device from its seeded generator.

A data source hands over ``uint8`` images once (``tuner.data``); sampling belongs to training
(KAIR's ``dataset_dncnn.py`` crops and picks one of 8 modes per patch). Here each batch costs a
few small kernels and one gather, with no host-device round trip (issue 30).
"""
from __future__ import annotations

import torch


def augment(x: torch.Tensor, mode: int) -> torch.Tensor:
    """One of the 8 flips / rotations of square (B, C, H, W) patches: ``mode`` 0-3 rotate by
    ``mode`` quarter turns, 4-7 also flip left-right (the dihedral group DnCNN trains on; KAIR
    ``utils_image.augment_img``). Mode 0 is the identity."""
    x = torch.rot90(x, mode % 4, dims=(-2, -1))
    return x.flip(-1) if mode >= 4 else x


# The modes each ``augment`` setting draws from, uniformly: ``flip`` is the identity, the left-right
# and up-down flips and both (a half turn), which keep a picture's up and down axis; ``flip_rotate``
# adds the quarter turns (all 8, DnCNN's augmentation), right for photos and wrong for images whose
# content has an orientation (a rotated 6 is a 9).
AUGMENT_MODES: dict[str, tuple[int, ...]] = {"none": (0,), "flip": (0, 2, 4, 6), "flip_rotate": tuple(range(8))}


def mode_maps(size: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Where each pixel of a ``size`` x ``size`` crop comes from under each of :func:`augment`'s modes.

    Returns:
        (rows, cols): (8, size * size) long tensors; output pixel ``k`` of a crop in mode ``m`` is
        the source pixel (``rows[m, k]``, ``cols[m, k]``) of the unaugmented crop.
    """
    grid = torch.arange(size * size, device=device).view(1, 1, size, size)
    flat = torch.stack([augment(grid, m).reshape(-1) for m in range(8)])  # (8, size*size)
    return flat // size, flat % size


class PatchSampler:
    """Random training crops drawn where the images are, with one gather per batch.

    Each crop comes from an image drawn uniformly, at a uniform position, in a mode drawn uniformly
    from ``AUGMENT_MODES[augment]`` (the flip / rotation is folded into the gather's indices). The
    images live in one flat ``uint8`` buffer on their device; every draw uses ``generator`` (on the
    same device), so a batch costs a few small kernels and no host-device round trip, and the crops
    depend only on the generator's state (deterministic per seed).

    Args:
        images: (C, H, W) uint8 tensors of any sizes of at least ``size``, one channel count, on
            one device.
        size: the crops' side.
        augment: ``none``, ``flip`` or ``flip_rotate``.
    """

    def __init__(self, images: list[torch.Tensor], size: int, augment: str = "flip_rotate"):
        self.device = images[0].device
        self.size, self.channels = size, images[0].shape[0]
        sizes = torch.tensor([im.shape[1:] for im in images], dtype=torch.long)  # (N, 2): H, W
        numel = sizes.prod(1) * self.channels
        self.flat = torch.cat([im.reshape(-1) for im in images])  # every pixel, one buffer
        self.starts = (numel.cumsum(0) - numel).to(self.device)  # where each image begins in it
        self.heights, self.widths = sizes[:, 0].to(self.device), sizes[:, 1].to(self.device)
        self.plane = (self.heights * self.widths)  # pixels per channel
        self.rows, self.cols = mode_maps(size, self.device)
        self.modes = torch.tensor(AUGMENT_MODES[augment], device=self.device)
        self.channel = torch.arange(self.channels, device=self.device).view(1, -1, 1)  # (1, C, 1)
        self.images = [self.flat[int(a):int(a) + int(n)].view(self.channels, int(h), int(w))
                       for a, n, (h, w) in zip(self.starts.cpu(), numel, sizes)]  # the inputs, as views

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """The random choices of ``n`` crops: (image, top, left, mode), each (n,) long."""
        dev, s = self.device, self.size
        image = torch.randint(len(self.heights), (n,), generator=generator, device=dev)
        h, w = self.heights[image], self.widths[image]
        # Uniform positions as today's sampler drew them (a float64 fraction of the free range),
        # clamped so that a fraction within rounding of 1 never steps outside the image.
        u = torch.rand((n, 2), generator=generator, device=dev, dtype=torch.float64)
        top = torch.minimum((u[:, 0] * (h - s + 1)).long(), h - s)
        left = torch.minimum((u[:, 1] * (w - s + 1)).long(), w - s)
        if len(self.modes) == 1:
            mode = self.modes.expand(n)
        else:
            mode = self.modes[torch.randint(len(self.modes), (n,), generator=generator, device=dev)]
        return image, top, left, mode

    def crops(self, image: torch.Tensor, top: torch.Tensor, left: torch.Tensor, mode: torch.Tensor) -> torch.Tensor:
        """The crops of :meth:`draw`'s choices: (n, C, size, size) uint8, by one gather."""
        w = self.widths[image].unsqueeze(1)  # (n, 1)
        pixel = (top.unsqueeze(1) + self.rows[mode]) * w + left.unsqueeze(1) + self.cols[mode]  # (n, s*s)
        index = (self.starts[image].view(-1, 1, 1) + self.channel * self.plane[image].view(-1, 1, 1)
                 + pixel.unsqueeze(1))  # (n, C, s*s)
        return self.flat[index].view(len(image), self.channels, self.size, self.size)

    def __call__(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` random crops: (n, C, size, size) uint8 on the images' device."""
        return self.crops(*self.draw(n, generator))


def augment_batch(batch: torch.Tensor, modes: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Each square image of (B, C, S, S) ``batch`` in its own mode (``modes``: (B,) long), by one
    gather (``rows``, ``cols``: :func:`mode_maps` of S)."""
    b, c, s, _ = batch.shape
    pixel = rows[modes] * s + cols[modes]  # (B, S*S)
    return batch.reshape(b, c, s * s).gather(2, pixel.unsqueeze(1).expand(b, c, s * s)).view(b, c, s, s)


def sample_patches(images: list[torch.Tensor], n: int, size: int, generator: torch.Generator,
                   augment: str = "flip_rotate") -> torch.Tensor:
    """``n`` random training crops of ``images`` (:class:`PatchSampler`; build one to draw many
    batches: it packs the images once).

    Args:
        images: (C, H, W) uint8 tensors of any sizes of at least ``size``, on one device.
        n: crops.
        size: their side.
        generator: a generator on the images' device; its state alone decides the crops.
        augment: ``none``, ``flip`` or ``flip_rotate`` (:data:`AUGMENT_MODES`).

    Returns:
        (n, C, size, size) uint8 crops on the images' device.
    """
    return PatchSampler(images, size, augment)(n, generator)
