"""The hand-tuned baseline of issue 11: a two-level U-Net as a person writes it in a notebook.

Two 3x3 convs + batch norm + ReLU per level, width 16 (doubling per level), transposed-conv
upsampling, skip connections (Ronneberger et al. 2015), BCE on logits, AdamW with a one-cycle
learning-rate schedule, trained noisy -> clean with a ``DataLoader`` over the training split and
fresh noise every batch. It knows nothing of tuner's training code: it is what tuner's search is
measured against. Trained for a wall-clock budget (the search's) on all the machine's cores, as a
notebook would run: one timed epoch says how many epochs fit, then the one-cycle schedule spans them.

    python benchmarks/hand_unet.py --seconds 180      # train it once at Gaussian 0.5 and score it
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tuner.data import Splits, load_dataset  # noqa: E402
from tuner.noise import Noise, corrupt  # noqa: E402

RECIPE_EPOCHS = 20  # the recipe as issue 11 describes it: 20 epochs, about 1-2 minutes on 2 cores
RECIPE = "two-level U-Net, 2x(conv3x3+BN+ReLU) per level, width 16, skips, BCE, AdamW 3e-3 one-cycle, batch 64"
LR, BATCH = 3e-3, 64


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """28x28 in, logits out; 28 -> 14 -> 7 and back."""

    def __init__(self, channels: int = 1, width: int = 16):
        super().__init__()
        self.enc1, self.enc2 = _block(channels, width), _block(width, 2 * width)
        self.mid = _block(2 * width, 4 * width)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2), _block(4 * width, 2 * width)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2), _block(2 * width, width)
        self.head = nn.Conv2d(width, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)  # (B, 16, 28, 28)
        e2 = self.enc2(F.max_pool2d(e1, 2))  # (B, 32, 14, 14)
        m = self.mid(F.max_pool2d(e2, 2))  # (B, 64, 7, 7)
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


@dataclass
class Trained:
    model: nn.Module
    epochs: int
    seconds: float


def train_hand_unet(data: Splits, noise: Noise, seconds: float | None, threads: int, seed: int = 0,
                    epochs: int | None = None) -> Trained:
    """Train the recipe for ``epochs``, or for as many whole epochs as fit in ``seconds`` of wall time."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    clean = torch.from_numpy(data.train.copy()).float() / 255.0  # (N, C, H, W)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(clean), batch_size=BATCH, shuffle=True)
    gen = torch.Generator().manual_seed(seed + 1)

    def run(model, epochs, opt=None, sched=None) -> float:
        start = time.perf_counter()
        model.train()
        for _ in range(epochs):
            for (x,) in loader:
                loss = F.binary_cross_entropy_with_logits(model(corrupt(x, noise, gen)), x)  # noisy -> clean
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        return time.perf_counter() - start

    start = time.perf_counter()
    if epochs is None:
        probe = UNet(clean.shape[1])  # one timed epoch on a throwaway model says how many fit
        popt = torch.optim.AdamW(probe.parameters(), lr=LR)
        epoch_seconds = run(probe, 1, popt, torch.optim.lr_scheduler.OneCycleLR(popt, LR, total_steps=len(loader)))
        epochs = max(1, int((seconds - (time.perf_counter() - start)) / epoch_seconds))
    model = UNet(clean.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    run(model, epochs, opt, torch.optim.lr_scheduler.OneCycleLR(opt, LR, total_steps=epochs * len(loader)))
    model.eval()
    return Trained(model, epochs, time.perf_counter() - start)


@torch.no_grad()
def denoise(model: nn.Module, noisy: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    return torch.cat([torch.sigmoid(model(noisy[i:i + batch_size])) for i in range(0, len(noisy), batch_size)])


def main() -> None:
    from tuner.metrics import TEST_SEED_OFFSET, EvalSet, psnr_per_image

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=180.0, help="wall-clock training budget (default 180)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default all)")
    args = p.parse_args()
    data, noise = load_dataset("mnist5k"), Noise("gaussian", 0.5)
    trained = train_hand_unet(data, noise, args.seconds, args.threads)
    test = EvalSet.make(data.test, noise, 1234 + TEST_SEED_OFFSET)
    psnr = float(psnr_per_image(denoise(trained.model, test.noisy), test.clean).mean())
    print(f"{RECIPE}: {trained.epochs} epochs in {trained.seconds:.0f} s, test PSNR {psnr:.2f} dB")


if __name__ == "__main__":
    main()
