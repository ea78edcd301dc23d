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


def sample_patches(images: list[torch.Tensor], n: int, size: int, generator: torch.Generator,
                   flip_rotate: bool = True) -> torch.Tensor:
    """Random training crops: each from an image drawn uniformly, at a uniform position, then
    (``flip_rotate``) in one of :func:`augment`'s 8 modes.

    Args:
        images: (C, H, W) uint8 tensors of any sizes of at least ``size``, on one device.
        n: crops.
        size: their side.
        generator: a CPU generator; its state alone decides the crops (deterministic per seed).
        flip_rotate: draw a flip / rotation mode per crop.

    Returns:
        (n, C, size, size) uint8 crops on the images' device.
    """
    pick = torch.randint(len(images), (n,), generator=generator).tolist()
    where = torch.rand((n, 2), generator=generator, dtype=torch.float64).tolist()
    crops = []
    for i, (u, v) in zip(pick, where):
        _, h, w = images[i].shape
        top, left = int(u * (h - size + 1)), int(v * (w - size + 1))
        crops.append(images[i][:, top:top + size, left:left + size])
    batch = torch.stack(crops)  # (n, C, size, size)
    if flip_rotate:
        modes = torch.randint(8, (n,), generator=generator)
        for m in modes.unique().tolist():
            if m:
                sel = (modes == m).nonzero().flatten().to(batch.device)
                batch[sel] = augment(batch[sel], m)
    return batch


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
        if self.patch_size is None:
            self.train_images = _tensor(data.train).to(self.device)  # (N, C, H, W) uint8, shared, read-only
            self.epoch_samples = len(self.train_images)
        else:
            self.train_images = [_tensor(a).to(self.device) for a in data.train]  # (C, H, W) uint8 each
            self.epoch_samples = int(data.patches_per_epoch)
        self.augment = data.augment
        self.train_seconds = 0.0  # time spent in training steps (not validation): the compute budget
        self.samples_seen = 0
        steps = math.ceil(self.epoch_samples / config.batch_size) * config.max_epochs
        by_time = (lambda: self.train_seconds / config.max_train_seconds) if config.max_train_seconds else None
        self.scheduler, self.per_batch = make_scheduler(config, self.optimizer, steps, by_time)
        self.val = EvalSet.make(data.val, eval_noise, eval_seed, self.device)
        self.order_gen = torch.Generator("cpu").manual_seed(config.seed)  # batch order, or crops and modes
        self.noise_gen = torch.Generator(self.device).manual_seed(config.seed + 1)  # training noise
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

    def _batches(self) -> Iterator[torch.Tensor]:
        """One epoch of (B, C, H, W) uint8 training batches: the images in a random order, or
        ``patches_per_epoch`` random crops of the photos."""
        n, bs = self.epoch_samples, self.config.batch_size
        if self.patch_size is None:
            order = torch.randperm(n, generator=self.order_gen).to(self.device)
            for i in range(0, n, bs):
                yield self.train_images[order[i:i + bs]]
        else:
            for i in range(0, n, bs):
                yield sample_patches(self.train_images, min(bs, n - i), self.patch_size, self.order_gen, self.augment)

    def train_epoch(self) -> dict[str, Any]:
        """Train one epoch (ended early when a ``max_train_seconds`` budget runs out) and evaluate
        on the validation split.

        Returns:
            ``epoch``, ``train_loss``, ``val_psnr``, ``val_mse``, ``val_ssim``, ``lr``,
            ``epoch_seconds``, ``train_seconds`` (training time so far, ASHA's ``time_attr`` for
            budgets in seconds), ``val_seconds``, ``samples_seen``, ``images_per_second`` (crops
            for photos) and ``diverged`` (1 when the loss or the outputs went non-finite;
            ``val_psnr`` is then :data:`DIVERGED_PSNR`).
        """
        start = time.perf_counter()
        self.model.train()
        total = torch.zeros((), device=self.device)
        seen = 0
        space = self.model.output_space
        for batch in self._batches():
            step_start = time.perf_counter()
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
            # Timed without a device sync: on a GPU the clock runs ahead of the kernels by at most
            # a few steps, which the epoch's final sync (float(total) below) settles.
            self.train_seconds += time.perf_counter() - step_start
            if self.budget_spent:
                break
        train_loss = float(total) / max(seen, 1)  # one device sync per epoch
        loop_seconds = time.perf_counter() - start
        self.samples_seen += seen
        self.epoch += 1
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
        metrics.update(
            lr=self.optimizer.param_groups[0]["lr"],
            epoch_seconds=time.perf_counter() - start,
            train_seconds=self.train_seconds,
            val_seconds=time.perf_counter() - val_start,
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
        self.order_gen.set_state(state["order_gen"])
        self.noise_gen.set_state(state["noise_gen"].to("cpu"))
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.epoch = int(state["epoch"])
        self.best_psnr = float(state["best_psnr"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.samples_seen = int(state.get("samples_seen", 0))


@dataclass
class Epoch:
    """One epoch's outcome, as :func:`fit` yields it."""

    metrics: dict[str, Any]
    trainer: Trainer = field(repr=False)

    def checkpoint(self) -> dict[str, Any]:
        """The state to save so a later :func:`fit` continues from here (a copy: training goes on)."""
        return copy.deepcopy(self.trainer.state_dict())


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
    while trainer.epoch < config.max_epochs and not trainer.budget_spent:
        epoch = Epoch(trainer.train_epoch(), trainer)
        yield epoch
        if epoch.metrics["diverged"]:
            return


def noisy_baseline(data: Splits, eval_noise: Noise, eval_seed: int = 1234) -> float:
    """PSNR of the noisy validation inputs themselves: the score of doing nothing."""
    val = EvalSet.make(data.val, eval_noise, eval_seed)
    return float(psnr_per_image(val.noisy, val.clean).mean())
