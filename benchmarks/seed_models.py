"""The five seed notebooks' models (``/work/shared/seeds/*.txt``), transcribed to PyTorch.

Each entry of :data:`SEEDS` is the seed's architecture as an ``nn.Module`` (output in [0, 1],
the seed's final sigmoid included) and its training recipe: optimizer, loss, epochs, batch
size, learning-rate schedule. They are the baselines ``bench_quality.py`` compares against.

Every model is trained noisy -> clean by :func:`train_seed`, even where the seed trained
against its noisy input by mistake (000 computes the loss against the noisy batch, 004 against
``images`` after adding noise to it) or trained plain reconstruction (002). Training noise is
drawn fresh for every batch (:func:`tuner.noise.corrupt`), as seed 004 does; seeds 000, 001 and
003 corrupted their training set once.

Where a seed leaves something out, the choice made here is stated next to it. Seeds written
for other shapes (000: CIFAR-10 RGB) take the data's channels and size.

Run alone, it trains each model once on ``mnist5k`` and prints validation PSNR::

    python benchmarks/seed_models.py            # reduced epochs, a few minutes on 2 cores
    python benchmarks/seed_models.py --full     # the seeds' own epochs
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python benchmarks/x.py` from anywhere

from tuner.data import Splits, load_dataset  # noqa: E402
from tuner.noise import Noise, corrupt  # noqa: E402
from tuner.metrics import EvalSet, as_float, psnr_per_image  # noqa: E402

# The default (reduced) budget is each SeedModel's ``small_epochs``: picked so every model trains
# for 10-30 s per noise on one core of the reference machine (the five on three noises in about
# three minutes); cheap models keep more of their epochs. The seeds' own epochs were meant for
# 40k-60k images; mnist5k has 4k, so even --full takes fewer optimizer steps than the seeds did.


# --------------------------------------------------------------------------- initialisation
def _keras_init(module: nn.Module) -> None:
    """Keras defaults: glorot_uniform kernels, zero biases (seeds 001, 002, 003)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _flax_init(module: nn.Module) -> None:
    """Flax defaults: lecun_normal kernels (variance 1 / fan_in, truncated), zero biases (seed 000)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            std = math.sqrt(1.0 / fan_in) / 0.87962566  # flax's truncated-normal correction
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- architectures
class Seed000(nn.Module):
    """Seed 000 (Flax, CIFAR-10): conv32-maxpool x2, then conv32 + bilinear resize x2, conv + sigmoid.

    ``nn.max_pool(x, (2, 2), padding='SAME')`` keeps ceil(H / 2), i.e. ``ceil_mode=True``; the
    seed's hard-coded resize targets (16, 32 for 32x32 input) become the pre-pool sizes.
    """

    def __init__(self, channels: int, height: int, width: int):
        super().__init__()
        self.enc1 = nn.Conv2d(channels, 32, 3, padding=1)
        self.enc2 = nn.Conv2d(32, 32, 3, padding=1)
        self.mid = nn.Conv2d(32, 32, 3, padding=1)
        self.dec = nn.Conv2d(32, 32, 3, padding=1)
        self.out = nn.Conv2d(32, channels, 3, padding=1)
        _flax_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size0 = x.shape[-2:]
        x = F.max_pool2d(F.relu(self.enc1(x)), 2, ceil_mode=True)  # (B, 32, H/2, W/2)
        size1 = x.shape[-2:]
        x = F.max_pool2d(F.relu(self.enc2(x)), 2, ceil_mode=True)  # (B, 32, H/4, W/4)
        x = F.relu(self.mid(x))
        # jax.image.resize 'bilinear' samples at half-pixel centres = align_corners=False
        x = F.interpolate(x, size=size1, mode="bilinear", align_corners=False)
        x = F.relu(self.dec(x))
        x = F.interpolate(x, size=size0, mode="bilinear", align_corners=False)
        return torch.sigmoid(self.out(x))  # (B, C, H, W)


class Seed001(nn.Module):
    """Seed 001 (Keras): 2 stride-2 convs -> Flatten -> Dense(latent_dim=16) -> Dense -> Reshape ->
    2 transposed convs (dropout 0.2 between them) -> transposed conv with 1 filter + sigmoid.

    The text gives the layer order, ReLU, 'same' padding, latent_dim 16 and dropout 0.2, not the
    filters or strides; those (32, 64 filters, 3x3, stride 2, linear Dense layers) follow the
    PyImageSearch Keras ``ConvAutoencoder`` the description matches (latentDim=16).
    """

    def __init__(self, channels: int, height: int, width: int, latent_dim: int = 16, dropout: float = 0.2):
        super().__init__()
        self.enc1 = nn.Conv2d(channels, 32, 3, stride=2, padding=1)
        self.enc2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        h, w = _conv_out(_conv_out(height)), _conv_out(_conv_out(width))
        self.code_shape = (64, h, w)
        self.to_code = nn.Linear(64 * h * w, latent_dim)
        self.from_code = nn.Linear(latent_dim, 64 * h * w)
        # Keras Conv2DTranspose(3, strides=2, padding='same') doubles the size: output_padding=1
        self.dec1 = nn.ConvTranspose2d(64, 64, 3, stride=2, padding=1, output_padding=1)
        self.dropout = nn.Dropout(dropout)
        self.dec2 = nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1)
        self.out = nn.ConvTranspose2d(32, channels, 3, padding=1)
        _keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        z = self.to_code(F.relu(self.enc2(F.relu(self.enc1(x)))).flatten(1))  # (B, 16)
        x = self.from_code(z).view(-1, *self.code_shape)  # (B, 64, H/4, W/4)
        x = self.dropout(F.relu(self.dec1(x)))
        x = F.relu(self.dec2(x))[..., :size[0], :size[1]]  # odd sizes: crop the doubling
        return torch.sigmoid(self.out(x))


class Seed002(nn.Module):
    """Seed 002 (Keras): conv32-maxpool, conv64-maxpool, conv64-upsample, conv32-upsample,
    conv(1) + sigmoid; 3x3 'same' convs with ReLU, nearest upsampling (UpSampling2D default)."""

    def __init__(self, channels: int, height: int, width: int):
        super().__init__()
        self.enc1 = nn.Conv2d(channels, 32, 3, padding=1)
        self.enc2 = nn.Conv2d(32, 64, 3, padding=1)
        self.dec1 = nn.Conv2d(64, 64, 3, padding=1)
        self.dec2 = nn.Conv2d(64, 32, 3, padding=1)
        self.out = nn.Conv2d(32, channels, 3, padding=1)
        _keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size0 = x.shape[-2:]
        x = F.max_pool2d(F.relu(self.enc1(x)), 2, ceil_mode=True)  # MaxPooling2D(padding='same')
        size1 = x.shape[-2:]
        x = F.max_pool2d(F.relu(self.enc2(x)), 2, ceil_mode=True)  # (B, 64, H/4, W/4): the code
        x = F.interpolate(F.relu(self.dec1(x)), size=size1, mode="nearest")
        x = F.interpolate(F.relu(self.dec2(x)), size=size0, mode="nearest")
        return torch.sigmoid(self.out(x))


class Seed003(nn.Module):
    """Seed 003 (Keras, after Chollet's blog): Dense(784 -> 32, relu) -> Dense(32 -> 784, sigmoid)."""

    def __init__(self, channels: int, height: int, width: int, encoding_dim: int = 32):
        super().__init__()
        d = channels * height * width
        self.shape = (channels, height, width)
        self.encoder = nn.Linear(d, encoding_dim)
        self.decoder = nn.Linear(encoding_dim, d)
        _keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(F.relu(self.encoder(x.flatten(1))))).view(-1, *self.shape)


def _conv_relu_bn(c_in: int, c_out: int, k: int, s: int, p: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, s, p), nn.ReLU(), nn.BatchNorm2d(c_out, momentum=0.01))


def _convT_relu_bn(c_in: int, c_out: int, k: int, s: int, p: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, k, s, p), nn.ReLU(), nn.BatchNorm2d(c_out, momentum=0.01))


class Seed004(nn.Module):
    """Seed 004 (PyTorch, verbatim): ``ae_conv`` with conv_relu_bn / convT_relu_bn blocks
    (ReLU before BatchNorm, BN momentum 0.01); 16,385 parameters on 1-channel input, as the
    seed prints."""

    def __init__(self, channels: int, height: int, width: int):
        super().__init__()
        self.encoder = nn.Sequential(
            _conv_relu_bn(channels, 8, 3, 2, 1),  # (B, 8, H/2, W/2)
            _conv_relu_bn(8, 16, 3, 2, 1),  # (B, 16, H/4, W/4)
            _conv_relu_bn(16, 32, 3, 1, 1),
        )
        self.decoder = nn.Sequential(
            _convT_relu_bn(32, 16, 4, 2, 1),
            _convT_relu_bn(16, 8, 4, 2, 1),
            nn.Conv2d(8, channels, 3, 1, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        y = self.decoder(self.encoder(x))
        if y.shape[-2:] != size:  # sizes not divisible by 4 (the seed had 28x28)
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y


def _conv_out(n: int) -> int:
    return (n + 1) // 2  # 3x3, stride 2, padding 1


# --------------------------------------------------------------------------- recipes
@dataclass(frozen=True)
class SeedModel:
    """One seed notebook's model and training recipe.

    Attributes:
        key: the seed's number ("000".."004").
        title: one line for tables.
        build: (channels, height, width) -> module whose output is the denoised image in [0, 1].
        optimizer: params -> optimizer, as the seed configures it.
        loss: ``mse`` or ``bce`` (Keras binary_crossentropy on sigmoid outputs).
        epochs: the seed's own epoch count (``--full``).
        small_epochs: the reduced default budget.
        batch_size: the seed's batch size.
        plateau: ReduceLROnPlateau arguments on validation loss (seed 001), or None.
        notes: what the transcription had to assume.
    """

    key: str
    title: str
    build: Callable[[int, int, int], nn.Module]
    optimizer: Callable[[Any], torch.optim.Optimizer]
    loss: str
    epochs: int
    small_epochs: int
    batch_size: int
    plateau: Optional[dict[str, Any]] = None
    notes: str = ""

    def budget(self, full: bool = False, epochs: Optional[int] = None) -> int:
        """Epochs to train: ``epochs`` if given, else the seed's own with ``full``, else ``small_epochs``."""
        return epochs if epochs else self.epochs if full else self.small_epochs


SEEDS: dict[str, SeedModel] = {s.key: s for s in [
    SeedModel("000", "Flax conv AE, maxpool + bilinear upsampling", Seed000,
              lambda p: torch.optim.Adam(p, lr=1e-3), "mse", epochs=10, small_epochs=1, batch_size=128,
              notes="RGB CIFAR-10 in the seed, here the data's channels; the seed did not shuffle, here "
                    "batches are shuffled like the others'"),
    SeedModel("001", "Keras conv AE, Dense(16) bottleneck, dropout 0.2, ReduceLROnPlateau", Seed001,
              lambda p: torch.optim.Adam(p, lr=1e-3, eps=1e-7), "mse", epochs=25, small_epochs=4, batch_size=32,
              # Keras: min_delta 1e-4 is absolute (torch's default threshold is relative)
              plateau={"factor": 0.2, "patience": 3, "min_lr": 1e-4, "threshold": 1e-4, "threshold_mode": "abs"},
              notes="filters, epochs and batch size not in the seed: PyImageSearch ConvAutoencoder "
                    "(32/64 filters, 25 epochs, batch 32)"),
    SeedModel("002", "Keras conv AE, maxpool + upsampling, BCE", Seed002,
              lambda p: torch.optim.Adam(p, lr=1e-3, eps=1e-7), "bce", epochs=15, small_epochs=2, batch_size=256,
              notes="the seed trains plain reconstruction; here noisy -> clean"),
    SeedModel("003", "Keras dense 784-32-784, adadelta", Seed003,
              # standalone Keras 2 (the seed imports `keras.layers`): Adadelta lr=1.0, rho=0.95, eps=1e-7
              lambda p: torch.optim.Adadelta(p, lr=1.0, rho=0.95, eps=1e-7), "mse", epochs=50, small_epochs=20, batch_size=256),
    SeedModel("004", "PyTorch conv_relu_bn AE (stride-2 convs, transposed convs)", Seed004,
              lambda p: torch.optim.Adam(p, lr=1e-3), "mse", epochs=10, small_epochs=4, batch_size=64,
              notes="the seed's loss compares against the noisy batch, here against clean; its BatchNorm "
                    "momentum 0.01 makes the running statistics lag on short budgets"),
]}


# --------------------------------------------------------------------------- training
def _loss(out: torch.Tensor, clean: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "bce":  # Keras clips sigmoid outputs to [eps, 1 - eps] before the log
        return F.binary_cross_entropy(out.clamp(1e-7, 1 - 1e-7), clean)
    return F.mse_loss(out, clean)


@torch.no_grad()
def denoise(model: nn.Module, noisy: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """(N, C, H, W) noisy in [0, 1] -> (N, C, H, W) denoised, in eval mode (no dropout, BN stats)."""
    model.eval()
    return torch.cat([model(noisy[i:i + batch_size]) for i in range(0, len(noisy), batch_size)]).clamp_(0, 1)


@dataclass
class Trained:
    """A trained seed model and how it got there."""

    seed: SeedModel
    model: nn.Module
    epochs: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def train_seed(seed: SeedModel, data: Splits, noise: Noise, *, epochs: Optional[int] = None,
               val: Optional[EvalSet] = None, random_seed: int = 0, log: bool = False) -> Trained:
    """Train one seed model with its own recipe, noisy -> clean.

    Args:
        seed: the seed model and recipe.
        data: splits; trains on ``data.train``.
        noise: training noise, drawn fresh for every batch.
        epochs: default the seed's own.
        val: fixed noisy validation images, for seed 001's ReduceLROnPlateau and the history;
            default ``data.val`` corrupted with ``noise`` (seed 1234).
        random_seed: weights, batch order and training noise.
        log: print one line per epoch.

    Returns:
        The trained model (eval mode) with its epoch count, training seconds and per-epoch
        ``train_loss``, ``val_loss`` (MSE) and ``val_psnr``.
    """
    epochs = seed.epochs if epochs is None else epochs
    torch.manual_seed(random_seed)
    c, h, w = data.shape
    model = seed.build(c, h, w)
    opt = seed.optimizer(model.parameters())
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", **seed.plateau) if seed.plateau else None
    if val is None:
        val = EvalSet.make(data.val, noise, 1234)
    images = torch.from_numpy(data.train)  # (N, C, H, W) uint8
    order_gen = torch.Generator().manual_seed(random_seed)
    noise_gen = torch.Generator().manual_seed(random_seed + 1)
    history, start = [], time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        total, order = 0.0, torch.randperm(len(images), generator=order_gen)
        for i in range(0, len(images), seed.batch_size):
            clean = as_float(images[order[i:i + seed.batch_size]])  # (B, C, H, W)
            noisy = corrupt(clean, noise, noise_gen)
            loss = _loss(model(noisy), clean, seed.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(clean)
        out = denoise(model, val.noisy)
        val_loss = float(F.mse_loss(out, val.clean))
        if sched is not None:
            sched.step(val_loss)
        history.append({"epoch": epoch, "train_loss": total / len(images), "val_loss": val_loss,
                        "val_psnr": float(psnr_per_image(out, val.clean).mean())})
        if log:
            print(f"  seed {seed.key} epoch {epoch}/{epochs}: train_loss {history[-1]['train_loss']:.4f} "
                  f"val_psnr {history[-1]['val_psnr']:.2f} dB", flush=True)
    model.eval()
    return Trained(seed, model, epochs, time.perf_counter() - start, history)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description="Train each seed notebook's model once on mnist5k (noisy -> clean) "
                                            "and print validation and test PSNR.")
    p.add_argument("--full", action="store_true", help="the seeds' own epochs (default: reduced)")
    p.add_argument("--seeds", nargs="+", default=list(SEEDS), choices=list(SEEDS), help="which seeds")
    p.add_argument("--noise", default="gaussian", choices=["gaussian", "impulse", "mask"], help="noise kind")
    p.add_argument("--level", type=float, default=0.5, help="noise level (std or pixel fraction)")
    p.add_argument("--epochs", type=int, default=None, help="train every seed this many epochs instead")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (1: on a shared 2-core machine 2 threads run slower)")
    p.add_argument("--verbose", action="store_true", help="one line per epoch")
    p.add_argument("--write", action="store_true", help="write the results section into docs/benchmarks.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from common import command_line, describe_machine, table, write_section  # sibling module
    from tuner.metrics import TEST_SEED_OFFSET, ssim

    data = load_dataset("mnist5k")
    noise = Noise(args.noise, args.level)
    val = EvalSet.make(data.val, noise, 1234)
    test = EvalSet.make(data.test, noise, 1234 + TEST_SEED_OFFSET)  # the inputs bench_quality.py scores
    noisy = [float(psnr_per_image(e.noisy, e.clean).mean()) for e in (val, test)]
    rows = []
    for key in args.seeds:
        s = SEEDS[key]
        t = train_seed(s, data, noise, epochs=s.budget(args.full, args.epochs), val=val, log=args.verbose)
        out = denoise(t.model, test.noisy)
        test_psnr = float(psnr_per_image(out, test.clean).mean())
        best = max(t.history, key=lambda h: h["val_psnr"])
        rows.append([key, s.title, f"{n_params(t.model):,}", f"{t.epochs}/{s.epochs}", s.batch_size,
                     f"{t.history[-1]['val_psnr']:.2f} (best {best['val_psnr']:.2f} @ {best['epoch']})",
                     f"{test_psnr:.2f}", f"{ssim(out, test.clean):.3f}", f"{t.seconds:.0f}"])
        print(f"seed {key}: val PSNR {t.history[-1]['val_psnr']:.2f} dB, test {test_psnr:.2f} dB "
              f"in {t.seconds:.0f} s", flush=True)
    budget = ("the seeds' own epochs" if args.full and not args.epochs else
              f"{args.epochs} epochs each" if args.epochs else "reduced epochs (`SeedModel.small_epochs`)")
    notes = "; ".join(f"{k}: {SEEDS[k].notes}" for k in args.seeds if SEEDS[k].notes)
    text = "\n".join([
        "## Seed models alone (`seed_models.py`)",
        "",
        describe_machine(args.threads),
        "",
        f"Command: `{command_line()}`",
        "",
        f"Each seed notebook's model trained once on `mnist5k` train with its own recipe and {budget}, "
        f"noisy -> clean under {noise.describe()} noise (fresh per batch); scored on the fixed noisy "
        f"validation split (seed 1234; noisy input {noisy[0]:.2f} dB) after the last epoch, and on the test "
        f"inputs `bench_quality.py` uses (seed {1234 + TEST_SEED_OFFSET}; noisy input {noisy[1]:.2f} dB).",
        "",
        table(["seed", "model", "params", "epochs (run/seed)", "batch", "val PSNR dB, last epoch",
               "test PSNR dB", "test SSIM", "train s"], rows),
        "",
        *([f"Transcription choices: {notes}.", ""] if notes else []),
        "What the numbers mean for a user: each row is what that notebook's recipe, unchanged except for "
        "training against clean targets, gets on this data; the test PSNR is comparable with the "
        "`bench_quality.py` table and with `tuner`'s `metrics.json` `test_psnr` for the same noise.",
    ])
    print("\n" + text)
    if args.write:
        print(f"\nwrote {write_section('seed_models', text)}")


if __name__ == "__main__":
    main()
