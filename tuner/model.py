"""The model family: one configurable denoising autoencoder.

``arch: conv`` is a convolutional encoder/decoder (seeds 000, 001, 004): ``depth`` stages,
each halving the resolution and doubling the channels from ``width``; a bottleneck of
``latent_dim`` channels (``bottleneck: conv``) or a dense ``latent_dim`` vector as in seed 001
(``bottleneck: dense``); optional batch norm (seed 004), dropout (seed 001) and U-Net skip
connections (Ronneberger et al. 2015, suggested by seed 004). ``convs_per_stage: 2`` gives each
resolution level two 3x3 convs, as U-Nets do; ``residual`` makes the network predict the
corruption instead of the image (DnCNN, Zhang et al. 2017), in logit space or in pixel space, see
:class:`DenoisingAutoencoder`. For photos, what denoising experts use at this scale is a 3-4 level
residual U-Net in pixel space (DRUNet, Zhang et al. 2021; KAIR ``models/network_unet.py``):
``depth: 3, convs_per_stage: 2, skip: true, residual: pixel, loss: mse or l1``.

``arch: dense`` is the fully connected autoencoder of seed 003: image -> ``latent_dim`` ->
image, with ``depth - 1`` hidden layers of geometrically shrinking size in between.

Both output logits; :meth:`DenoisingAutoencoder.denoise` applies the sigmoid (every seed ends
in a sigmoid), which lets ``bce`` train on logits stably. The pixel-space residual outputs the
image itself (``output_space`` is ``pixel``), clamped to [0, 1] by ``denoise``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIN_BOTTLENECK = 2  # smallest side (pixels) the conv bottleneck may have


def max_depth(height: int, width: int) -> int:
    """The deepest conv model an image size allows: the bottleneck keeps at least 2x2 pixels."""
    depth = 0
    while min(height, width) // 2 ** (depth + 1) >= MIN_BOTTLENECK:
        depth += 1
    return depth


def check_model(config, channels: int, height: int, width: int) -> None:
    """Reject a configuration that cannot work on this image shape, before any training.

    Args:
        config: a :class:`tuner.config.TrialConfig` (or anything with its model fields).
        channels, height, width: the image shape.

    Raises:
        ValueError: with a message naming the field and what is allowed.
    """
    if channels not in (1, 3):
        raise ValueError(f"images have {channels} channels; 1 (grayscale) or 3 (RGB) are supported")
    if config.arch == "conv":
        deepest = max_depth(height, width)
        if config.depth > deepest:
            raise ValueError(f"depth {config.depth} is too deep for {height}x{width} images "
                             f"(at most {deepest}: the bottleneck must keep {MIN_BOTTLENECK}x{MIN_BOTTLENECK} pixels)")


class _Stage(nn.Sequential):
    """(conv3x3 -> [batch norm] -> ReLU) x convs -> [dropout]: one resolution level."""

    def __init__(self, c_in: int, c_out: int, batch_norm: bool, dropout: float, convs: int = 1):
        layers: list[nn.Module] = []
        for i in range(convs):
            layers.append(nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU(inplace=True))
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class ConvAutoencoder(nn.Module):
    def __init__(self, config, channels: int, height: int, width: int):
        super().__init__()
        self.depth, self.skip = config.depth, config.skip
        self.multiple = 2 ** config.depth  # inputs are padded to a multiple of this, then cropped
        widths = [config.width * 2 ** i for i in range(config.depth)]
        bn, p, n = config.batch_norm, config.dropout, config.convs_per_stage
        self.down = nn.ModuleList()
        c = channels
        for w in widths:  # encoder: stage, then stride-2 conv halves the resolution (seed 004)
            self.down.append(nn.ModuleDict({
                "stage": _Stage(c, w, bn, 0.0, n),
                "pool": nn.Conv2d(w, w, 3, stride=2, padding=1),
            }))
            c = w
        self.dense = config.bottleneck == "dense"
        if self.dense:  # seed 001: flatten -> Dense(latent_dim) -> Dense -> reshape
            h, w_ = _ceil_to(height, self.multiple) // self.multiple, _ceil_to(width, self.multiple) // self.multiple
            self.code_shape = (c, h, w_)
            self.to_code = nn.Linear(c * h * w_, config.latent_dim)
            self.from_code = nn.Linear(config.latent_dim, c * h * w_)
            self.code_dropout = nn.Dropout(p)
        else:
            self.to_code = _Stage(c, config.latent_dim, bn, 0.0, n)
            self.from_code = _Stage(config.latent_dim, c, bn, p, n)
        self.up = nn.ModuleList()
        for w in reversed(widths):  # decoder: transposed conv doubles the resolution (seed 004)
            self.up.append(nn.ModuleDict({
                "unpool": nn.ConvTranspose2d(c, w, 2, stride=2),
                "stage": _Stage(2 * w if self.skip else w, w, bn, p, n),
            }))
            c = w
        self.head = nn.Conv2d(c, channels, 1)
        self.fixed_size = (height, width) if self.dense else None

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        h, w = x.shape[-2:]
        if self.fixed_size is not None and (h, w) != self.fixed_size:
            raise ValueError(f"this model has a dense bottleneck and takes only "
                             f"{self.fixed_size[0]}x{self.fixed_size[1]} images, not {h}x{w}")
        ph, pw = _ceil_to(h, self.multiple) - h, _ceil_to(w, self.multiple) - w
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return x, h, w

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, _, _ = self._pad(x)  # (B, C, H', W'), H' and W' multiples of 2**depth
        skips = []
        for level in self.down:
            x = level["stage"](x)
            skips.append(x)
            x = level["pool"](x)
        code = self.to_code(x.flatten(1) if self.dense else x)
        return code, skips

    def decode(self, code: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        if self.dense:
            x = F.relu(self.from_code(self.code_dropout(F.relu(code)))).view(-1, *self.code_shape)
        else:
            x = self.from_code(code)
        for level, s in zip(self.up, reversed(skips)):
            x = level["unpool"](x)
            x = level["stage"](torch.cat([x, s], 1) if self.skip else x)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        code, skips = self.encode(x)
        return self.decode(code, skips)[..., :h, :w]  # (B, C, H, W) logits

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0].flatten(1)


class DenseAutoencoder(nn.Module):
    """Seed 003: image -> Dense(latent_dim) -> Dense(image), with optional hidden layers."""

    def __init__(self, config, channels: int, height: int, width: int):
        super().__init__()
        self.fixed_size = (height, width)
        d = channels * height * width
        sizes = [round(d * (config.latent_dim / d) ** (i / config.depth)) for i in range(config.depth)]
        sizes = sizes + [config.latent_dim]  # geometric from d down to latent_dim
        enc, dec = [], []
        for a, b in zip(sizes, sizes[1:]):
            enc += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        for a, b in zip(reversed(sizes[1:]), reversed(sizes[:-1])):
            dec += [nn.Dropout(config.dropout), nn.Linear(a, b), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec[:-1])  # logits out: no ReLU on the last layer
        self.shape = (channels, height, width)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.fixed_size:
            raise ValueError(f"this dense model takes only {self.fixed_size[0]}x{self.fixed_size[1]} "
                             f"images, not {x.shape[-2]}x{x.shape[-1]}")
        return self.encoder(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.latent(x)).view(-1, *self.shape)


RESIDUAL_EPS = 1e-3  # the residual model's input is clamped to [eps, 1 - eps] before its logit (+-6.9)


class DenoisingAutoencoder(nn.Module):
    """The model the search trains and exports: logits (or pixels) out, ``denoise`` for images.

    With ``residual: pixel``, the network predicts the corruption rather than the image, as DnCNN
    does (Zhang et al. 2017, "Beyond a Gaussian Denoiser"): ``out = x - net(x)``, in pixel space,
    unbounded (the standard benchmarks feed unclipped noisy inputs) and trained with ``mse`` or
    ``l1``; ``denoise`` clamps it to [0, 1]. An untrained network starts near the identity.

    With ``residual: logit``, the residual is taken in logit space so that the output
    stays a logit: ``logits = logit(clamp(x, eps, 1 - eps)) - net(x)``. The output image
    ``sigmoid(logits)`` is then always in (0, 1) with no clipping (which would stop gradients
    on the many saturated pixels of digits), ``bce`` still trains on logits, and an untrained
    network starts at the identity (the noisy input). Impulse noise, a few pixels replaced by
    arbitrary values, needs large corrections on those pixels only: unbounded logit-space
    residuals allow exactly that.
    """

    def __init__(self, config, channels: int, height: int, width: int):
        super().__init__()
        check_model(config, channels, height, width)
        cls = ConvAutoencoder if config.arch == "conv" else DenseAutoencoder
        self.net = cls(config, channels, height, width)
        self.channels = channels
        self.residual = config.residual  # none | logit | pixel
        self.output_space = "pixel" if self.residual == "pixel" else "logit"  # what forward returns
        self.fixed_size = self.net.fixed_size  # None: any image size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) noisy images (in [0, 1], or around it for unclipped noise) -> (B, C, H, W)
        logits of the clean images, or the clean images themselves when ``output_space`` is pixel."""
        if self.residual == "pixel":
            return x - self.net(x)  # the predicted corruption, removed (DnCNN)
        if self.residual == "logit":
            return torch.logit(x.clamp(RESIDUAL_EPS, 1 - RESIDUAL_EPS)) - self.net(x)  # the corruption, removed
        return self.net(x)

    def to_image(self, out: torch.Tensor) -> torch.Tensor:
        """:meth:`forward`'s output -> images in [0, 1]."""
        return out.clamp(0.0, 1.0) if self.output_space == "pixel" else torch.sigmoid(out)

    @torch.no_grad()
    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) noisy images -> (B, C, H, W) denoised images in [0, 1]."""
        return self.to_image(self(x))

    @torch.no_grad()
    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, D) bottleneck codes, for the report's latent-space plot."""
        return self.net.latent(x)


def build_model(config, channels: int, height: int, width: int) -> DenoisingAutoencoder:
    """Build the autoencoder a :class:`tuner.config.TrialConfig` describes for this image shape."""
    return DenoisingAutoencoder(config, channels, height, width)


def _ceil_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
