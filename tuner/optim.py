"""Optimisation: the training loss, the optimizer and the learning-rate schedule a trial's config names."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tuner.config import TrialConfig


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
