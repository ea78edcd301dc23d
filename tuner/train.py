"""Training: ``fit`` trains one configuration noisy -> clean and yields metrics every epoch.

Plain PyTorch; nothing here knows about Ray. The search adapter (``tuner.search``), the
benchmarks and notebooks all call the same :func:`fit`.

Fair comparison: every trial is scored on the same validation images corrupted once with the
experiment's fixed evaluation noise, on ``val_psnr`` (:mod:`tuner.metrics`), whatever loss or
training noise it uses (:mod:`tuner.optim`).

Speed: the images stay ``uint8`` on the trainer's device (the GPU when there is one); a batch is
an indexed slice (or, for photos, random crops drawn by one gather, :mod:`tuner.sampling`) in the
modes of the trial's ``augment``, converted to float and corrupted in bulk, with no per-sample
DataLoader. For photos an epoch is ``patches_per_epoch`` crops.

Budgets: a trial trains ``max_epochs`` epochs, or (``max_train_seconds``) until it has trained
that many seconds, so trials of very different cost can be compared at equal compute; the
learning-rate schedule spans whichever budget the trial has. With ``end_by`` (a wall-clock time:
the search's winner, which has the rest of the search's time) the budget in seconds is a first
guess: the trainer measures the share of its wall time it spends training and moves the
schedule's end to where its training will be at ``end_by``, then ends by itself, validated.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import torch

from tuner.data import Splits
from tuner.metrics import DIVERGED_PSNR, EvalSet, _tensor, evaluate, psnr_per_image
from tuner.model import build_model
from tuner.noise import Noise, corrupt
from tuner.optim import loss_fn, make_optimizer, make_scheduler
from tuner.sampling import AUGMENT_MODES, PatchSampler, augment_batch, mode_maps
from tuner.config import TrialConfig

log = logging.getLogger(__name__)


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


class Trainer:
    """One configuration's model, optimizer and random state, trained an epoch at a time.

    Args:
        config: the trial's hyperparameters.
        data: the dataset splits (uint8).
        eval_noise: the experiment's fixed evaluation noise.
        eval_seed: its seed; the validation corruption is drawn once from it.
        device: where to train; default CUDA when available.
        threads: CPU threads for PyTorch (the CPUs given to the trial).
        milestones: training seconds at which a validation is due whatever it costs (the search
            passes ASHA's rungs, so every trial is judged as soon as it reaches one).
        stop_at: training seconds at which to stop for now (the search's race), the schedules
            still spanning ``config.max_train_seconds``; None: stop at ``max_train_seconds``.
        end_by: a wall-clock time (``time.time()``) by which to have trained, validated and
            stopped: the schedules then span :attr:`horizon`, ``config.max_train_seconds`` at first,
            re-planned at every validation (:meth:`_replan`). Needs ``max_train_seconds``.
    """

    def __init__(self, config: TrialConfig, data: Splits, eval_noise: Noise, eval_seed: int = 1234,
                 device: Optional[str | torch.device] = None, threads: Optional[int] = None,
                 milestones: Sequence[float] = (), stop_at: Optional[float] = None,
                 end_by: Optional[float] = None):
        if end_by is not None and config.max_train_seconds is None:
            raise ValueError("end_by needs a budget in training seconds (max_train_seconds)")
        self._clock = time.perf_counter()  # wall_seconds counts from here
        self.milestones = sorted(milestones)
        self.stop_at = stop_at
        self.end_by = end_by
        # Where the schedules end, in training seconds: max_train_seconds, or under end_by where this
        # process's pace says its training will be then (_replan).
        self.horizon: Optional[float] = config.max_train_seconds
        self._pace: Optional[tuple[float, float]] = None  # (train_seconds, wall_seconds) at its first validation here
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
        by_time = (lambda: self.train_seconds / self.horizon) if config.max_train_seconds else None
        self.scheduler, self.per_batch = make_scheduler(config, self.optimizer, steps, by_time)
        self.val = EvalSet.make(data.val, eval_noise, eval_seed, self.device)
        self.val_seconds = 0.0  # the last validation's cost (reported)
        # A validation's cost, the cheapest seen (the same images every time; the first pays one-off
        # costs such as torchmetrics' import), kept in the checkpoint: sets the cadence of validations
        # under time budgets. The first epoch in this process validates whatever it costs.
        self.val_cost: Optional[float] = None
        self.validated = False
        self.noise = config.train_noise(eval_noise)
        self.amp_dtype = amp = autocast_dtype(config.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == torch.float16)
        self.epoch = 0
        self.best_psnr = -math.inf

    @property
    def budget_spent(self) -> bool:
        """Whether the trial has trained its ``max_train_seconds`` (its :attr:`horizon`), or the
        ``stop_at`` seconds it was told to stop at for now, or is one validation away from ``end_by``
        (never, for epoch budgets)."""
        limit = self.horizon if self.end_by is not None else self.config.max_train_seconds
        if limit is not None and self.stop_at is not None:
            limit = min(limit, self.stop_at)
        if limit is not None and self.train_seconds >= limit:
            return True
        return self.end_by is not None and time.time() >= self.end_by - (self.val_cost or 0.0)

    def _replan(self) -> None:
        """Under ``end_by``, after a validation: move :attr:`horizon` to where training will be at
        ``end_by`` less one validation, at the share of wall time this process has spent training since
        its first validation here (its start-up and that cold validation not counted; validations,
        checkpoints and reports in it). Before a second validation there is no pace to go by: the
        horizon stays ``max_train_seconds`` (the caller's plan), and :attr:`budget_spent` still ends the
        trial in time."""
        if self._pace is None:
            self._pace = (self.train_seconds, self.wall_seconds)
            return
        t0, w0 = self._pace
        if self.wall_seconds <= w0:
            return
        share = min(1.0, (self.train_seconds - t0) / (self.wall_seconds - w0))
        left = self.end_by - time.time() - (self.val_cost or 0.0)
        self.horizon = self.train_seconds + share * max(0.0, left)

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
        and always comes at a milestone (an ASHA rung) and when the budget is spent."""
        if self.config.max_train_seconds is None or self.finished:
            return True
        last = self.train_seconds - trained  # where the last validation was
        if any(last < m <= self.train_seconds for m in self.milestones):
            return True
        return not self.validated or trained * VALIDATION_SHARE >= self.val_cost * (1 - VALIDATION_SHARE)

    def train_epoch(self) -> dict[str, Any]:
        """Train one epoch (ended early when a ``max_train_seconds`` budget runs out) and evaluate
        on the validation split; under a budget in seconds, train more epochs first while a
        validation would cost over :data:`VALIDATION_SHARE` of the time (:meth:`_validation_due`).

        Returns:
            ``epoch``, ``train_loss``, ``val_psnr``, ``val_mse``, ``val_ssim``, ``lr``,
            ``epoch_seconds``, ``train_seconds`` (training time so far, ASHA's ``time_attr`` for
            budgets in seconds: the loop's wall time, the device synced), ``val_seconds``,
            ``wall_seconds`` (the trial's wall time so far) and ``train_share`` (the share of it in
            training), ``max_train_seconds`` (under a budget in seconds: where the schedules end,
            :attr:`horizon`), ``samples_seen``, ``images_per_second`` (crops for photos) and ``diverged``
            (1 when the loss or the outputs went non-finite; ``val_psnr`` is then
            :data:`DIVERGED_PSNR`).
        """
        start = time.perf_counter()
        self.model.train()
        total = torch.zeros((), device=self.device)
        seen, trained = 0, 0.0
        space = self.model.output_space
        # A milestone (an ASHA rung) cuts the epoch where it falls, so that every trial is judged after
        # the same training seconds to within a step, not an epoch (early in training, seconds apart
        # are tenths of a dB apart).
        milestone = min((m for m in self.milestones if m > self.train_seconds), default=math.inf)
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
                if self.budget_spent or self.train_seconds >= milestone:
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
        self.val_cost = self.val_seconds if self.val_cost is None else min(self.val_cost, self.val_seconds)
        self.validated = True
        self.wall_seconds += now - self._clock
        self._clock = now
        if self.end_by is not None and not metrics["diverged"]:
            self._replan()
        metrics.update(
            lr=self.optimizer.param_groups[0]["lr"],
            epoch_seconds=now - start,
            train_seconds=self.train_seconds,
            val_seconds=self.val_seconds,
            wall_seconds=self.wall_seconds,
            train_share=self.train_seconds / max(self.wall_seconds, 1e-9),
            **({"max_train_seconds": self.horizon} if self.horizon is not None else {}),
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
            "val_cost": self.val_cost,
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
        # The validation's cost as measured before (None in checkpoints older than it): a trial that
        # continues in a new process (a resume, the race's winner) keeps its cadence after its first
        # validation there, rather than timing that cold one and waiting ~39 times it for the next.
        if state.get("val_cost") is not None:
            self.val_cost = float(state["val_cost"])


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
        threads: Optional[int] = None, milestones: Sequence[float] = (),
        stop_at: Optional[float] = None, end_by: Optional[float] = None) -> Iterator[Epoch]:
    """Train one configuration noisy -> clean, yielding after every epoch.

    Stops after ``config.max_epochs`` epochs, when ``config.max_train_seconds`` of training are
    spent (or ``stop_at``; or, with ``end_by``, one validation before it), or right after an epoch
    that diverged.

    Args:
        config: the trial's hyperparameters.
        data: dataset splits.
        eval_noise: the fixed evaluation noise every trial is scored on.
        eval_seed: its seed.
        checkpoint: a :meth:`Epoch.checkpoint` to continue from.
        device: where to train; default CUDA when available.
        threads: CPU threads for PyTorch.
        milestones: training seconds at which to validate whatever it costs (:class:`Trainer`).
        stop_at: training seconds at which to stop for now, the learning-rate schedule still spanning
            ``config.max_train_seconds``: a search's race ends there, and its winner continues later
            from the final epoch's checkpoint with ``checkpoint=`` (``tuner.search``).
        end_by: a wall-clock time (``time.time()``) by which to end, validated: ``max_train_seconds``
            is then a first guess that the trainer re-plans from its own pace (:class:`Trainer`).

    Yields:
        :class:`Epoch` with the epoch's metrics (see :meth:`Trainer.train_epoch`).
    """
    trainer = Trainer(config, data, eval_noise, eval_seed, device, threads, milestones, stop_at, end_by)
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
