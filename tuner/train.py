"""Training: ``fit`` trains one configuration noisy -> clean and yields metrics every epoch.

Plain PyTorch; nothing here knows about Ray. The search adapter (``tuner.search``), the
benchmarks and notebooks all call the same :func:`fit`.

Fair comparison: every trial is scored on the same validation images corrupted once with the
experiment's fixed evaluation noise (:func:`tuner.noise.fixed_corruption`), on ``val_psnr``,
whatever loss or training noise it uses.

Speed: the images stay one ``uint8`` tensor (on the GPU when there is one); a batch is an
indexed slice converted to float and corrupted in bulk, with no per-sample DataLoader. Photos
stay a list of ``uint8`` tensors of any size; every batch draws random crops from them with one
of 8 flips / rotations (:func:`sample_patches`, DnCNN's augmentation), and an epoch is
``patches_per_epoch`` crops.

Budgets: a trial trains ``max_epochs`` epochs, or (``max_train_seconds``) until it has trained
that many seconds, so trials of very different cost can be compared at equal compute; the
learning-rate schedule spans whichever budget the trial has.
"""
from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from tuner.data import Splits
from tuner.model import DenoisingAutoencoder, build_model
from tuner.noise import Noise, corrupt, fixed_corruption
from tuner.spec import TrialConfig

log = logging.getLogger(__name__)

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


def make_optimizer(config: TrialConfig, params) -> torch.optim.Optimizer:
    """The optimizer named by ``config.optimizer`` with its learning rate and weight decay."""
    wd = config.weight_decay
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=wd)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=wd)
    if config.optimizer == "sgd":
        nesterov = config.nesterov and config.momentum > 0  # torch rejects Nesterov without momentum
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=nesterov, weight_decay=wd)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=config.lr, momentum=config.momentum, weight_decay=wd)
    return torch.optim.Adadelta(params, lr=config.lr, weight_decay=wd)  # seed 003


def loss_fn(out: torch.Tensor, clean: torch.Tensor, loss: str, space: str = "logit") -> torch.Tensor:
    """Training loss between the model's output (logits, or pixels for ``space`` pixel) and the
    clean images (noisy -> clean)."""
    if loss == "bce":  # on logits: stable where sigmoid + BCE saturates
        return F.binary_cross_entropy_with_logits(out, clean)
    image = torch.sigmoid(out) if space == "logit" else out.float()
    return F.mse_loss(image, clean) if loss == "mse" else F.l1_loss(image, clean)


WARMUP_SHARE = 0.05  # cosine: linear warm-up over this share of the steps (Goyal et al. 2017, Loshchilov & Hutter 2017)
ONECYCLE_PCT_START = 0.25  # onecycle: share of the steps spent rising to lr (Smith & Topin 2019)


def schedule_factor(schedule: str, progress: float) -> float:
    """The learning rate's multiple of ``lr`` at ``progress`` (0..1) through a trial's budget, for
    budgets in seconds: ``cosine`` (5% linear warm-up, then cosine to 0), ``onecycle`` (torch's
    ``OneCycleLR`` curve: lr/25 rising to lr over the first quarter, then to lr/25e4; no momentum
    cycling), ``constant``."""
    p = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        if p < WARMUP_SHARE:
            return max(p / WARMUP_SHARE, 1e-3)
        return 0.5 * (1 + math.cos(math.pi * (p - WARMUP_SHARE) / (1 - WARMUP_SHARE)))
    if schedule == "onecycle":
        start, end = 1 / 25, 1 / 25e4  # OneCycleLR's div_factor and final_div_factor
        if p < ONECYCLE_PCT_START:
            t = p / ONECYCLE_PCT_START
            return 1 + (start - 1) * 0.5 * (1 + math.cos(math.pi * t))
        t = (p - ONECYCLE_PCT_START) / (1 - ONECYCLE_PCT_START)
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


def make_scheduler(config: TrialConfig, optimizer: torch.optim.Optimizer, total_steps: int, progress=None):
    """The learning-rate schedule named by ``config.lr_schedule``.

    ``cosine`` and ``onecycle`` step every batch and span the trial's budget: ``max_epochs``
    (``total_steps`` batches), or with ``max_train_seconds`` its training seconds (``progress()``
    returns the share spent, and :func:`schedule_factor` sets the rate). A trial ASHA stops early
    is stopped mid-schedule, as it would be by hand. ``constant`` with ``plateau_patience > 0`` is
    seed 001's ReduceLROnPlateau, stepped on ``val_psnr`` every epoch.

    Returns:
        (scheduler or None, whether it steps every batch).
    """
    if progress is not None and config.lr_schedule != "constant":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda _: schedule_factor(config.lr_schedule, progress())), True
    if config.lr_schedule == "cosine":
        warmup = max(1, round(WARMUP_SHARE * total_steps))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True
    if config.lr_schedule == "onecycle":
        # Adam's beta1 cycles against the learning rate as in fastai; SGD's momentum is the user's.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=ONECYCLE_PCT_START,
            cycle_momentum=config.optimizer in ("adam", "adamw")), True
    if config.plateau_patience > 0:
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.2, patience=config.plateau_patience, min_lr=config.lr * 1e-3), False
    return None, False


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``precision``; ``auto`` is bf16 where the hardware computes it natively
    (CUDA; CPUs with AVX512-BF16 or AMX, ~1.7x per step here), else None (fp32)."""
    if precision == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return torch.bfloat16 if native else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


OVERHEAD_SHARE = 0.05  # validation and checkpoints may take about this share of a trial's wall time...
VALIDATION_SHARE = CHECKPOINT_SHARE = OVERHEAD_SHARE / 2  # ...half each


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA runs them asynchronously; the CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pick_device(device: Optional[str | torch.device] = None) -> torch.device:
    """The given device, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


class Trainer:
    """One configuration's model, optimizer and random state, trained an epoch at a time.

    Args:
        config: the trial's hyperparameters.
        data: the dataset splits (uint8).
        eval_noise: the experiment's fixed evaluation noise.
        eval_seed: its seed; the validation corruption is drawn once from it.
        device: where to train; default CUDA when available.
        threads: CPU threads for PyTorch (the CPUs given to the trial).
    """

    def __init__(self, config: TrialConfig, data: Splits, eval_noise: Noise, eval_seed: int = 1234,
                 device: Optional[str | torch.device] = None, threads: Optional[int] = None):
        self._clock = time.perf_counter()  # wall_seconds counts from here
        if threads:
            torch.set_num_threads(max(1, int(threads)))
        self.config = config
        self.device = pick_device(device)
        torch.manual_seed(config.seed)  # seeding happens here, once: weights, dropout
        c, h, w = data.shape
        # channels_last: oneDNN's (and cuDNN's) fast conv layout, ~1.25x per step on this project's CPU
        # (benchmarks/bench_train.py); values, checkpoints and exports are unchanged.
        self.model = build_model(config, c, h, w).to(self.device, memory_format=torch.channels_last)
        self.optimizer = make_optimizer(config, self.model.parameters())
        self.patch_size = data.patch_size  # photos: random crops of this side; None: whole images
        self.augment = config.augment
        self.order_gen = torch.Generator(self.device).manual_seed(config.seed)  # batch order, or crops and modes
        self.noise_gen = torch.Generator(self.device).manual_seed(config.seed + 1)  # training noise
        if self.patch_size is None:
            self.train_images = _tensor(data.train).to(self.device)  # (N, C, H, W) uint8, shared, read-only
            self.epoch_samples = len(self.train_images)
            if self.augment != "none" and h != w:
                raise ValueError(f"augment {self.augment} needs square images; these are {h}x{w}")
            self.modes = torch.tensor(AUGMENT_MODES[self.augment], device=self.device)
            self.mode_rows, self.mode_cols = mode_maps(h, self.device)
        else:
            self.sampler = PatchSampler([_tensor(a).to(self.device) for a in data.train], self.patch_size,
                                        self.augment)
            self.train_images = self.sampler.images  # (C, H, W) uint8 each: views of the sampler's buffer
            self.epoch_samples = int(data.patches_per_epoch)
        self.train_seconds = 0.0  # wall time of the training loop (batches drawn, steps, synced): the compute budget
        self.wall_seconds = 0.0  # wall time of the whole trial so far: start-up, training, validation, checkpoints
        self.samples_seen = 0
        steps = math.ceil(self.epoch_samples / config.batch_size) * config.max_epochs
        by_time = (lambda: self.train_seconds / config.max_train_seconds) if config.max_train_seconds else None
        self.scheduler, self.per_batch = make_scheduler(config, self.optimizer, steps, by_time)
        self.val = EvalSet.make(data.val, eval_noise, eval_seed, self.device)
        self.val_seconds = 0.0  # the last validation's cost: sets the cadence of validations under time budgets
        self.noise = config.train_noise(eval_noise)
        self.amp_dtype = amp = autocast_dtype(config.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == torch.float16)
        self.epoch = 0
        self.best_psnr = -math.inf

    @property
    def budget_spent(self) -> bool:
        """Whether the trial has trained its ``max_train_seconds`` (never, for epoch budgets)."""
        limit = self.config.max_train_seconds
        return limit is not None and self.train_seconds >= limit

    @property
    def finished(self) -> bool:
        """Whether the trial's budget (``max_epochs`` or ``max_train_seconds``) is spent."""
        return self.epoch >= self.config.max_epochs or self.budget_spent

    def _batches(self) -> Iterator[torch.Tensor]:
        """One epoch of (B, C, H, W) uint8 training batches: the images in a random order, or
        ``patches_per_epoch`` random crops of the photos; each in a random mode of ``augment``."""
        n, bs = self.epoch_samples, self.config.batch_size
        if self.patch_size is None:
            order = torch.randperm(n, generator=self.order_gen, device=self.device)
            for i in range(0, n, bs):
                batch = self.train_images[order[i:i + bs]]
                if len(self.modes) > 1:
                    pick = torch.randint(len(self.modes), (len(batch),), generator=self.order_gen, device=self.device)
                    batch = augment_batch(batch, self.modes[pick], self.mode_rows, self.mode_cols)
                yield batch
        else:
            for i in range(0, n, bs):
                yield self.sampler(min(bs, n - i), self.order_gen)

    def _validation_due(self, trained: float) -> bool:
        """Whether to validate now, ``trained`` seconds of training after the last validation.

        Under an epoch budget every epoch is validated (ASHA counts epochs). Under a budget in
        training seconds an epoch is only a unit of work: validation waits until the training since
        the last one makes the last validation's cost at most :data:`VALIDATION_SHARE` of the time,
        and always comes when the budget is spent."""
        if self.config.max_train_seconds is None or self.finished:
            return True
        return trained * VALIDATION_SHARE >= self.val_seconds * (1 - VALIDATION_SHARE)

    def train_epoch(self) -> dict[str, Any]:
        """Train one epoch (ended early when a ``max_train_seconds`` budget runs out) and evaluate
        on the validation split; under a budget in seconds, train more epochs first while a
        validation would cost over :data:`VALIDATION_SHARE` of the time (:meth:`_validation_due`).

        Returns:
            ``epoch``, ``train_loss``, ``val_psnr``, ``val_mse``, ``val_ssim``, ``lr``,
            ``epoch_seconds``, ``train_seconds`` (training time so far, ASHA's ``time_attr`` for
            budgets in seconds: the loop's wall time, the device synced), ``val_seconds``,
            ``wall_seconds`` (the trial's wall time so far) and ``train_share`` (the share of it in
            training), ``samples_seen``, ``images_per_second`` (crops for photos) and ``diverged``
            (1 when the loss or the outputs went non-finite; ``val_psnr`` is then
            :data:`DIVERGED_PSNR`).
        """
        start = time.perf_counter()
        self.model.train()
        total = torch.zeros((), device=self.device)
        seen, trained = 0, 0.0
        space = self.model.output_space
        while True:
            loop_start, before = time.perf_counter(), self.train_seconds
            for batch in self._batches():
                clean = batch.float().div_(255.0)  # (B, C, H, W)
                noisy = corrupt(clean, self.noise, self.noise_gen)
                with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None):
                    loss = loss_fn(self.model(noisy), clean, self.config.loss, space)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.per_batch:
                    self.scheduler.step()
                total += loss.detach() * len(clean)
                seen += len(clean)
                # No sync per step: on a GPU this clock runs ahead of the kernels (a lower bound of
                # the time spent), good enough for the schedule and the budget check...
                self.train_seconds = before + time.perf_counter() - loop_start
                if self.budget_spent:
                    break
            # ...and the epoch's one sync makes the total true: the loop's wall time, batches drawn,
            # steps run and every queued kernel finished, on any device.
            _synchronize(self.device)
            self.train_seconds = before + time.perf_counter() - loop_start
            trained += self.train_seconds - before
            self.epoch += 1
            if self._validation_due(trained):
                break
        train_loss = float(total) / max(seen, 1)
        loop_seconds = time.perf_counter() - start
        self.samples_seen += seen
        metrics: dict[str, Any] = {"epoch": self.epoch, "train_loss": train_loss}
        val_start = time.perf_counter()
        scores = evaluate(self.model, self.val) if math.isfinite(train_loss) else None
        if scores is None or not math.isfinite(scores["psnr"]):
            metrics.update(val_psnr=DIVERGED_PSNR, val_mse=1.0, val_ssim=0.0, diverged=1)
            log.warning("trial diverged at epoch %d (train_loss=%s)", self.epoch, train_loss)
        else:
            metrics.update(val_psnr=scores["psnr"], val_mse=scores["mse"], val_ssim=scores["ssim"], diverged=0)
            if self.scheduler is not None and not self.per_batch:
                self.scheduler.step(scores["psnr"])
        self.best_psnr = max(self.best_psnr, metrics["val_psnr"])
        now = time.perf_counter()
        self.val_seconds = now - val_start
        self.wall_seconds += now - self._clock
        self._clock = now
        metrics.update(
            lr=self.optimizer.param_groups[0]["lr"],
            epoch_seconds=now - start,
            train_seconds=self.train_seconds,
            val_seconds=self.val_seconds,
            wall_seconds=self.wall_seconds,
            train_share=self.train_seconds / max(self.wall_seconds, 1e-9),
            samples_seen=self.samples_seen,
            images_per_second=seen / loop_seconds,
        )
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this epoch ended (tensors and plain
        values only, so it loads with ``torch.load(..., weights_only=True)``)."""
        return {
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "best_psnr": self.best_psnr,
            "train_seconds": self.train_seconds,
            "wall_seconds": self.wall_seconds,
            "samples_seen": self.samples_seen,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict(),
            "order_gen": self.order_gen.get_state(),
            "noise_gen": self.noise_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.order_gen.set_state(state["order_gen"].to("cpu"))
        self.noise_gen.set_state(state["noise_gen"].to("cpu"))
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.epoch = int(state["epoch"])
        self.best_psnr = float(state["best_psnr"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.wall_seconds = float(state.get("wall_seconds", self.train_seconds))
        self.samples_seen = int(state.get("samples_seen", 0))


@dataclass
class Epoch:
    """One epoch's outcome, as :func:`fit` yields it."""

    metrics: dict[str, Any]
    trainer: Trainer = field(repr=False)
    final: bool = False  # fit stops after this epoch: its budget is spent, or it diverged

    def checkpoint(self) -> dict[str, Any]:
        """The state to save so a later :func:`fit` continues from here (a copy: training goes on)."""
        return copy.deepcopy(self.trainer.state_dict())


class CheckpointCadence:
    """When a trial writes a checkpoint, so that writing costs at most ~:data:`CHECKPOINT_SHARE` of
    its wall time and a kill loses at most ``every_s`` seconds.

    A checkpoint is due at a trial's final epoch; after ``every_s`` seconds without one (what a
    resume needs); and at a new best ``val_psnr`` (what the export needs) once the time since the
    last write is ~39 times that write's cost. A small model on a CPU writes in milliseconds and so
    checkpoints every improving epoch; a large one on a GPU (84 MB every 3 s) does not.

    Args:
        every_s: the most seconds between two checkpoints (0: every epoch).
    """

    def __init__(self, every_s: float):
        self.every_s = every_s
        self.best = -math.inf
        self.cost = 0.0  # the last write's seconds
        self.last = time.monotonic()

    def due(self, epoch: Epoch) -> bool:
        """Whether to write ``epoch``'s checkpoint (call :meth:`written` after writing it)."""
        since = time.monotonic() - self.last
        improved = epoch.metrics["val_psnr"] > self.best
        self.best = max(self.best, epoch.metrics["val_psnr"])
        return (epoch.final or since >= self.every_s
                or (improved and since * CHECKPOINT_SHARE >= self.cost * (1 - CHECKPOINT_SHARE)))

    def written(self, seconds: float) -> None:
        """Record a checkpoint just written, and what it cost."""
        self.cost, self.last = seconds, time.monotonic()


def fit(config: TrialConfig, data: Splits, eval_noise: Noise, *, eval_seed: int = 1234,
        checkpoint: Optional[dict[str, Any]] = None, device: Optional[str | torch.device] = None,
        threads: Optional[int] = None) -> Iterator[Epoch]:
    """Train one configuration noisy -> clean, yielding after every epoch.

    Stops after ``config.max_epochs`` epochs, when ``config.max_train_seconds`` of training are
    spent, or right after an epoch that diverged.

    Args:
        config: the trial's hyperparameters.
        data: dataset splits.
        eval_noise: the fixed evaluation noise every trial is scored on.
        eval_seed: its seed.
        checkpoint: a :meth:`Epoch.checkpoint` to continue from.
        device: where to train; default CUDA when available.
        threads: CPU threads for PyTorch.

    Yields:
        :class:`Epoch` with the epoch's metrics (see :meth:`Trainer.train_epoch`).
    """
    trainer = Trainer(config, data, eval_noise, eval_seed, device, threads)
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint)
    while not trainer.finished:
        metrics = trainer.train_epoch()
        epoch = Epoch(metrics, trainer, final=trainer.finished or bool(metrics["diverged"]))
        yield epoch
        if epoch.final:
            return


def noisy_baseline(data: Splits, eval_noise: Noise, eval_seed: int = 1234) -> float:
    """PSNR of the noisy validation inputs themselves: the score of doing nothing."""
    val = EvalSet.make(data.val, eval_noise, eval_seed)
    return float(psnr_per_image(val.noisy, val.clean).mean())
