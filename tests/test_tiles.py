"""Tiled inference (``tuner.denoise.denoise``) for real: a 3-level conv U-Net with seeded weights on
scikit-learn's sample photos (427x640 RGB, offline), against whole-image inference of the same
model; the memory of a large image measured in a subprocess; ``tuner denoise`` on a big image.

The U-Net's receptive field reaches 67 px from a pixel (2 convs per level at strides 1, 2, 4,
two at the 8x bottleneck, the pooling convs), so aligned tiles that discard 72 px are exact to
float precision, and the default 32 px agree to well under 0.01 dB even with He-initialised
weights, whose pixels depend on their whole receptive field (measured: ~1e-4 dB, max abs
diff ~0.1); tiles without overlap, or off the 2**depth grid, differ by ~0.5.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tuner
from tuner.cli import main
from tuner.denoise import OVERLAP, TILE, _tile_spans, load_image, model_multiple, tile_size, to_pil
from tuner.model import build_model

UNET = dict(arch="conv", depth=3, width=8, convs_per_stage=2, skip=True, latent_dim=32)
EXACT = 72  # px of overlap past the receptive field (67 px): tiles then match to float precision
MAX_DIFF = 1e-5  # tiled with EXACT overlap vs whole, max abs difference in [0, 1] units
MAX_DB = 0.01  # tiled with the default overlap vs whole, PSNR difference (issue 19's bound)


def _unet(channels: int) -> torch.nn.Module:
    """The U-Net with seeded He-initialised weights (He et al. 2015: variance-preserving through
    ReLUs), so that each output pixel depends on its whole receptive field, as a trained model's
    does; PyTorch's default initialisation shrinks activations layer by layer and barely looks past
    a pixel's own neighbourhood, which would let misaligned tiles pass."""
    torch.manual_seed(0)
    model = build_model(tuner.TrialConfig(**UNET), channels, 64, 64)
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model.eval()


@pytest.fixture(scope="module")
def unets() -> dict[int, torch.nn.Module]:
    """The U-Nets by channel count (1: grayscale, 3: RGB)."""
    return {c: _unet(c) for c in (1, 3)}


def _psnr(x: torch.Tensor, clean: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((x - clean) ** 2).mean()))


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """china.jpg as (3, 427, 640) floats in [0, 1]."""
    from sklearn.datasets import load_sample_images

    return torch.from_numpy(np.array(load_sample_images().images[0])).permute(2, 0, 1).float() / 255


def _noisy(clean: torch.Tensor, sigma: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (clean + sigma * torch.randn(clean.shape, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("n,tile,overlap,multiple", [
    (427, 128, 32, 8), (640, 128, 32, 8), (1000, 512, 32, 8), (513, 512, 32, 8), (4000, 512, 64, 16),
    (129, 72, 32, 8), (301, 128, 16, 1)])
def test_tile_spans_are_aligned_and_cover_the_axis_once(n, tile, overlap, multiple):
    spans = _tile_spans(n, tile, overlap, multiple)
    assert len(spans) > 1
    assert spans[0][2] == 0 and spans[-1][3] == n and spans[-1][1] == n
    for (s, e, ks, ke), nxt in zip(spans, spans[1:] + [None]):
        assert s % multiple == 0 and e - s <= tile and s <= ks < ke <= e
        if e < n:  # every tile but the last is a whole tile
            assert e - s == tile
        if nxt is not None:
            assert nxt[2] == ke  # kept parts abut: each pixel once
            assert e - ke >= overlap and nxt[2] - nxt[0] >= overlap  # inner margins discarded
    assert _tile_spans(500, 512, 32, 8) == [(0, 500, 0, 500)]


@pytest.mark.parametrize("channels,size,tile", [(3, None, 256), (1, None, 256), (3, (301, 517), 160),
                                                (1, (427, 640), None)])
def test_tiled_matches_whole_image(photo, unets, channels, size, tile):
    """Tiled and whole-image inference agree on a real photo; sizes that are not multiples of the
    tile (nor of 2**depth), grayscale and RGB, rows and columns of tiles, the default tile (512)."""
    clean = photo if channels == 3 else photo.mean(0, keepdim=True)
    if size:
        clean = clean[:, :size[0], :size[1]]
    noisy = _noisy(clean)
    model = unets[channels]
    whole = tuner.denoise(model, noisy, tile=0)
    seen = []  # the input of every forward pass: the tiles
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    tiled = tuner.denoise(model, noisy, tile=tile)  # the default overlap
    hook.remove()
    t = tile or TILE
    assert len(seen) > 1 and all(h <= t and w <= t for h, w in seen), seen  # one tile per pass
    assert tiled.shape == whole.shape == noisy.shape
    assert abs(_psnr(tiled, clean) - _psnr(whole, clean)) < MAX_DB
    assert float((tiled - whole).abs().max()) < 0.25  # seams at most: 0.06-0.15 measured
    exact = tuner.denoise(model, noisy, tile=tile, overlap=EXACT)
    assert float((exact - whole).abs().max()) < MAX_DIFF


def test_misaligned_or_overlap_free_tiles_would_not_match(photo, unets):
    """The two rules the agreement rests on matter on this photo and model: a tile's centre
    matches the whole image only if the tile's origin is a multiple of 2**depth (8), and tiles
    that keep their edges (no overlap) do not match."""
    noisy = _noisy(photo)[None]  # (1, 3, 427, 640)
    model = unets[3]
    whole = tuner.denoise(model, noisy, tile=0)
    size = 128 + 2 * EXACT
    for origin, aligned in [(96, True), (97, False), (100, False)]:
        centre = model.denoise(noisy[..., origin:origin + size, origin:origin + size])[..., EXACT:-EXACT, EXACT:-EXACT]
        diff = float((centre - whole[..., origin + EXACT:origin + size - EXACT, origin + EXACT:origin + size - EXACT]
                      ).abs().max())
        assert (diff < MAX_DIFF) == aligned, (origin, diff)  # measured: 0 aligned, 0.17-0.42 not
    no_overlap = tuner.denoise(model, noisy, tile=256, overlap=0)
    assert float((no_overlap - whole).abs().max()) > 0.1


def test_batches_and_sizes_that_need_no_tiles(photo, unets):
    """(B, C, H, W) batches tile per image; images no larger than a tile go through whole."""
    model = unets[3]
    batch = torch.stack([_noisy(photo), _noisy(photo.flip(-1))])  # (2, 3, 427, 640)
    tiled = tuner.denoise(model, batch, tile=256, overlap=EXACT)
    assert tiled.shape == batch.shape
    for i in range(2):
        assert float((tiled[i] - tuner.denoise(model, batch[i], tile=0)).abs().max()) < MAX_DIFF
    small = batch[:, :, :100, :120]
    assert torch.equal(tuner.denoise(model, small), model.denoise(small))  # exactly as before tiling


def test_alignment_and_bad_tiles():
    conv = _unet(1)
    assert model_multiple(conv) == 8
    assert tile_size(conv) == (TILE, OVERLAP)
    assert tile_size(conv, 515, 30) == (512, 32)  # tile rounded down, overlap up, to multiples of 8
    assert tile_size(conv, 0) is None
    dense = build_model(tuner.TrialConfig(arch="dense", depth=1, latent_dim=8), 1, 8, 8)
    assert tile_size(dense, 128) is None  # a dense bottleneck takes its training size only: never tiled
    with pytest.raises(ValueError, match="too small"):
        tile_size(conv, 64, 32)
    with pytest.raises(ValueError, match="0 or more"):
        tile_size(conv, -1)


# ---------------------------------------------------------------- memory

MEMORY_SCRIPT = """
import resource, sys, torch
import tuner
from tuner.model import build_model
torch.set_num_threads(1)
tile = int(sys.argv[1])
torch.manual_seed(0)
model = build_model(tuner.TrialConfig(**{unet!r}), 1, 64, 64).eval()
x = torch.rand(1, 1536, 1024)  # 1.6 megapixels, grayscale
tuner.denoise(model, x[:, :64, :64])  # load PyTorch's kernels before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
y = tuner.denoise(model, x, tile=tile)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024)  # MiB: the most memory denoising added (ru_maxrss is in KiB on Linux)
"""


def _peak_mib(tile: int) -> float:
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT.format(unet=UNET), str(tile)],
                         capture_output=True, text=True, timeout=120, check=True)
    return float(out.stdout.split()[-1])


def _largest_tensor_mib(model: torch.nn.Module, x: torch.Tensor, tile: int) -> float:
    """The largest input or output of any layer while ``tuner.denoise`` runs, in MiB."""
    largest = [0]

    def record(module, inputs, output):
        for t in (*inputs, output):
            if isinstance(t, torch.Tensor):
                largest[0] = max(largest[0], t.numel() * t.element_size())

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        tuner.denoise(model, x, tile=tile)
    finally:
        hook.remove()
    return largest[0] / 2**20


def test_large_image_stays_under_a_memory_bound(unets):
    """A 1536x1024 image in 256-px tiles: no layer sees more than one tile, 256**2 px x 16 channels
    (the decoder's concatenated skip) x 4 B = 4 MiB, against 96 MiB whole; and the process's peak
    memory (max RSS, in a fresh process) grows by under 64 MiB: the 6 MiB output and one tile's
    activations (measured: 37-41 MiB tiled, 460-920 MiB whole; under memory pressure the kernel
    may evict library pages counted in the baseline, so only the upper bound is asserted)."""
    x = torch.rand(1, 1536, 1024)
    tiled = _largest_tensor_mib(unets[1], x, 256)
    assert tiled <= 256**2 * 16 * 4 / 2**20, tiled
    assert _largest_tensor_mib(unets[1], x, 0) >= 20 * tiled  # what tiling saves
    rss = _peak_mib(256)
    assert rss < 64, f"tiled denoising added {rss:.0f} MiB"


# ---------------------------------------------------------------- tuner denoise

def _export(model: torch.nn.Module, channels: int, folder: Path) -> Path:
    """A model folder in the format ``tuner.export.export_best`` writes (``load_model`` reads it)."""
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "config.json").write_text(json.dumps({
        "format": "tuner-model/1", "experiment": "tiles-test", "metric": "val_psnr", "mode": "max",
        "image_shape": [channels, 64, 64], "trial": tuner.TrialConfig(**UNET).to_dict(),
        "dataset": {"name": "photos"}, "eval_noise": {"kind": "gaussian", "level": 0.1, "seed": 1}}))
    return folder


def test_tuner_denoise_big_image_in_tiles(photo, unets, tmp_path):
    """``tuner denoise`` on a 1281x1920 photo (3x china.jpg) writes a PNG of the same size, what
    ``tuner.denoise`` gives with the --tile it was given, and all but a few seam pixels equal to
    whole-image inference."""
    model = unets[3]
    folder = _export(model, 3, tmp_path / "best")
    big = torch.nn.functional.interpolate(_noisy(photo)[None], scale_factor=3, mode="bilinear")[0]
    src = tmp_path / "big.png"
    Image.fromarray((big * 255).round().byte().permute(1, 2, 0).numpy()).save(src)
    assert main(["denoise", str(src), "--model", str(folder), "--out", str(tmp_path / "out"),
                 "--tile", "384"]) == 0
    got = np.asarray(Image.open(tmp_path / "out" / "big.png"))
    assert got.shape == (1281, 1920, 3)
    x = load_image(src, model)  # (3, 1281, 1920)
    want = np.asarray(to_pil(tuner.denoise(model, x, tile=384)))
    assert np.array_equal(got, want)  # the flag reached denoise: 384-px tiles, default overlap
    whole = np.asarray(to_pil(tuner.denoise(model, x, tile=0)))
    assert np.abs(got.astype(int) - whole).mean() < 0.25  # seam pixels differ by a few levels (measured: 0.07 mean)


@pytest.mark.parametrize("flag,words", [("-1", "must be 0"), ("big", "not a whole number"),
                                        ("40", "too small for this model")])
def test_bad_tile_is_one_line(photo, tmp_path, capsys, flag, words):
    folder = _export(_unet(1), 1, tmp_path / "best")
    src = tmp_path / "a.png"
    Image.fromarray((photo[0, :40, :40] * 255).byte().numpy()).save(src)
    try:
        code = main(["denoise", str(src), "--model", str(folder), "--out", str(tmp_path / "out"), "--tile", flag])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("tuner: error: ") and err.count("\n") == 1, err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before any image was written
