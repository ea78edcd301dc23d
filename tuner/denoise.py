"""Use an exported model: load ``<run>/best/`` and denoise tensors or a user's image files.

Model files load with ``torch.load(..., weights_only=True)``: a model folder from someone
else can hold tensors and plain values only, never code.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from tuner.data import DatasetError, image_files, read_image
from tuner.model import DenoisingAutoencoder, build_model
from tuner.noise import Noise, corrupt
from tuner.config import TrialConfig

log = logging.getLogger(__name__)

MODEL_FORMAT = "tuner-model/1"


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> DenoisingAutoencoder:
    """Load an exported model folder (``model.pt`` + ``config.json``) as a ``torch.nn.Module``.

    Args:
        model_dir: e.g. ``runs/quickstart/best``.
        device: where to put the model.

    Returns:
        The model in eval mode; ``model.config`` holds the folder's ``config.json``.

    Raises:
        ValueError: the folder is not an exported tuner model.
    """
    from tuner.storage import CONFIG_FILE, MODEL_FILE, read_file

    folder = str(model_dir)
    try:
        config: dict[str, Any] = json.loads(read_file(folder, CONFIG_FILE))
    except FileNotFoundError:
        raise ValueError(f"{folder}: not a tuner model folder (no {CONFIG_FILE}); "
                         f"pass the best/ folder of a run, e.g. runs/quickstart/best") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{folder}/{CONFIG_FILE}: not valid JSON") from None
    if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT:
        raise ValueError(f"{folder}/{CONFIG_FILE}: not a {MODEL_FORMAT} config")
    try:
        shape = config["image_shape"]
        if not (isinstance(shape, list) and len(shape) == 3 and all(type(v) is int and v > 0 for v in shape)):
            raise ValueError(f"image_shape must be [channels, height, width], not {str(shape)[:40]}")
        c, h, w = shape
        _eval_noise(config)
        # On the meta device: no memory until the weights arrive, so a config.json claiming a
        # giant image cannot make us allocate it; the weights below must match it exactly.
        with torch.device("meta"):
            model = build_model(TrialConfig(**config["trial"]), c, h, w)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{folder}/{CONFIG_FILE}: not a valid {MODEL_FORMAT} config ({_reason(e)})") from None
    import io

    try:
        state = torch.load(io.BytesIO(read_file(folder, MODEL_FILE)), map_location=device, weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{folder}: no {MODEL_FILE}") from None
    except Exception as e:  # UnpicklingError for files carrying code
        raise ValueError(f"{folder}/{MODEL_FILE}: not loadable as weights only ({type(e).__name__})") from None
    try:
        model.load_state_dict(state, assign=True)  # strict: every key and shape as config.json says
    except Exception as e:
        raise ValueError(f"{folder}/{MODEL_FILE}: weights do not match {CONFIG_FILE} ({type(e).__name__})") from None
    model.config = config  # type: ignore[attr-defined]
    return model.to(device).eval()


def _eval_noise(config: dict[str, Any]) -> Noise:
    e = config["eval_noise"]
    return Noise.from_dict(e)


def _reason(e: Exception) -> str:
    """The first line of an error, e.g. the first of a pydantic ValidationError's messages."""
    if hasattr(e, "errors"):
        err = e.errors()[0]
        return f"trial.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


# Measured on china.jpg with a 3-level U-Net (tests/test_tiles.py): discarding 32 px puts tiled
# inference within 1e-3 dB of whole-image inference for a briefly trained net (max abs diff 2e-3),
# and 2e-3 dB (max abs diff 0.15) for He-initialised weights, whose pixels see their whole
# receptive field; 72 px, past that net's 67-px receptive field, is exact, but costs 1.9x the
# whole image's compute at 512-px tiles against 1.3x for 32 px.
TILE = 512  # pixels: the default largest tile side; images no larger than this go through whole
OVERLAP = 32  # pixels each tile discards at its inner edges


def model_multiple(model: DenoisingAutoencoder) -> int:
    """What tile origins and sides must be multiples of: ``2**depth`` for conv models, which pad
    their input to it at the bottom/right and down-sample with stride-2 convs, so a tile that
    starts elsewhere sees another sampling grid than the whole image does; 1 for dense models."""
    return int(getattr(model.net, "multiple", 1))


def tile_size(model: DenoisingAutoencoder, tile: int | None = None, overlap: int | None = None
              ) -> tuple[int, int] | None:
    """The (tile, overlap) ``denoise`` uses with this model, rounded to its alignment.

    Args:
        model: a loaded model.
        tile: the largest tile side in pixels, rounded down to a multiple of :func:`model_multiple`;
            default :data:`TILE`; 0 turns tiling off.
        overlap: pixels each tile discards at its inner edges, rounded up to that multiple;
            default :data:`OVERLAP`.

    Returns:
        ``(tile, overlap)``, or None where images always go through whole (tiling off, or a
        dense model, which takes only its training size).

    Raises:
        ValueError: a negative value, or a tile too small to keep anything after its overlap.
    """
    tile = TILE if tile is None else tile
    overlap = OVERLAP if overlap is None else overlap
    if tile < 0 or overlap < 0:
        raise ValueError(f"tile ({tile}) and overlap ({overlap}) must be 0 or more pixels")
    if tile == 0 or model.fixed_size is not None:
        return None
    m = model_multiple(model)
    overlap = -(-overlap // m) * m
    least = 2 * overlap + m  # a tile keeps at least m pixels between its two discarded margins
    if tile < least:
        raise ValueError(f"tile {tile} px is too small for this model: at least {least} px "
                         f"({overlap} px overlap on each side, sides multiples of {m}), or 0 for no tiling")
    return tile // m * m, overlap


def _tile_spans(n: int, tile: int, overlap: int, multiple: int) -> list[tuple[int, int, int, int]]:
    """Cut one axis of ``n`` pixels into tiles: ``(start, stop, keep_start, keep_stop)`` each.

    Starts are multiples of ``multiple``, and every tile but the last is ``tile`` long, so each
    tile is padded and down-sampled on the whole image's grid; the last ends at ``n``, where the
    model pads it exactly as it pads the whole image. Neighbours overlap by at least
    ``2 * overlap``, and each keeps its side of the middle of the overlap, so no kept pixel is
    nearer than ``overlap`` to an inner tile edge (whose zero padding differs from the true
    neighbours). Cropping, not blending: each output pixel comes from the one tile it is most
    central in. A linear blend across the overlaps measured 3-10x further from whole-image inference
    (it mixes in the tile edges that cropping discards) and needs a second, weight, accumulator.
    """
    if n <= tile:
        return [(0, n, 0, n)]
    last = -(-(n - tile) // multiple) * multiple  # the first aligned start whose tile reaches n
    starts = [0]
    while starts[-1] + tile < n:
        starts.append(min(starts[-1] + tile - 2 * overlap, last))
    stops = [min(s + tile, n) for s in starts]
    cuts = [0] + [(s + e) // 2 for s, e in zip(starts[1:], stops[:-1])] + [n]  # middles of the overlaps
    return [(s, e, cuts[i], cuts[i + 1]) for i, (s, e) in enumerate(zip(starts, stops))]


@torch.no_grad()
def denoise(model: DenoisingAutoencoder, images: torch.Tensor, batch_size: int = 64,
            tile: int | None = None, overlap: int | None = None) -> torch.Tensor:
    """Denoise a batch, large images in overlapping tiles so that memory stays bounded.

    Images no larger than one tile go through whole, up to ``batch_size`` at a time but at most
    one tile's worth of pixels per forward pass. A larger image goes through one tile at a time
    (see :func:`tile_size` and :func:`_tile_spans`), into one output tensor: memory is the
    input, the output and one tile's activations, whatever the image size. The result agrees
    with whole-image inference to well under 0.01 dB (``tests/test_tiles.py``).

    Args:
        model: a loaded model.
        images: (B, C, H, W) or (C, H, W) floats in [0, 1] with the model's channel count.
        batch_size: most whole images per forward pass.
        tile: largest tile side in pixels (default :data:`TILE`; 0: never tile).
        overlap: pixels a tile discards at its inner edges (default :data:`OVERLAP`).

    Returns:
        Denoised images, same shape, in [0, 1], on the CPU.

    Raises:
        ValueError: a tile too small for the model (see :func:`tile_size`).
    """
    single = images.dim() == 3
    x = images[None] if single else images  # (B, C, H, W)
    device = next(model.parameters()).device
    plan = tile_size(model, tile, overlap)
    h, w = x.shape[-2:]
    if plan is None or (h <= plan[0] and w <= plan[0]):
        per_pass = batch_size if plan is None else max(1, min(batch_size, plan[0] ** 2 // (h * w)))
        out = torch.cat([model.denoise(x[i:i + per_pass].to(device)).cpu() for i in range(0, len(x), per_pass)])
        return out[0] if single else out
    t, o = plan
    m = model_multiple(model)
    rows, cols = _tile_spans(h, t, o, m), _tile_spans(w, t, o, m)
    out = torch.empty(x.shape, dtype=x.dtype)  # (B, C, H, W)
    for b in range(len(x)):
        for y0, y1, ky0, ky1 in rows:
            for x0, x1, kx0, kx1 in cols:
                y = model.denoise(x[b:b + 1, :, y0:y1, x0:x1].to(device))  # (1, C, y1 - y0, x1 - x0)
                out[b, :, ky0:ky1, kx0:kx1] = y[0, :, ky0 - y0:ky1 - y0, kx0 - x0:kx1 - x0].cpu()
                del y  # free this tile's output before the next tile's forward pass
    return out[0] if single else out


def denoise_files(model_dir: str | Path, inputs: Sequence[str | Path], out_dir: str | Path,
                  add_noise: bool = False, seed: int = 0, tile: int | None = None,
                  overwrite: bool = False) -> list[Path]:
    """Denoise PNG/JPEG files (or folders of them) and write PNGs of the same size.

    Grayscale or RGB inputs are converted to what the model expects. Convolutional models take
    any size, large images in tiles (see :func:`denoise`); dense models only their training size.
    Every output is planned before the first is written: two inputs that would be written to one
    file (``a.png`` and ``a.jpg``), or an output file that exists already (without ``overwrite``),
    stop the run with one line and nothing written.

    Args:
        model_dir: an exported model folder.
        inputs: image files and/or folders (searched recursively).
        out_dir: where ``<name>.png`` outputs go (``<name>_noisy.png`` too with ``add_noise``); a
            folder's images keep their paths inside it.
        add_noise: corrupt the inputs with the model's evaluation noise first, for a demo.
        seed: the seed of that noise.
        tile: largest tile side in pixels (default :data:`TILE`; 0: each image whole).
        overwrite: replace output files that exist.

    Returns:
        The written output paths.

    Raises:
        ValueError / DatasetError / FileExistsError: one-line messages for bad inputs.
    """
    model = load_model(model_dir)
    config = model.config  # type: ignore[attr-defined]
    noise = _eval_noise(config)  # checked by load_model
    tile_size(model, tile)  # a tile too small for this model fails here, before any image is read
    out = Path(out_dir)
    jobs = _plan(inputs, out, add_noise, overwrite)
    generator = torch.Generator().manual_seed(seed)
    written = []
    for src, dest, noisy_path in jobs:
        x = load_image(src, model)  # (C, H, W)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if noisy_path is not None:
            x = corrupt(x[None], noise, generator)[0]
            to_pil(x).save(noisy_path)
            written.append(noisy_path)
        to_pil(denoise(model, x, tile=tile)).save(dest)
        written.append(dest)
    log.info("denoised %d image(s) into %s", len(jobs), out)
    return written


def _plan(inputs: Sequence[str | Path], out: Path, add_noise: bool,
          overwrite: bool) -> list[tuple[Path, Path, Path | None]]:
    """(input, output, noisy output or None) for every image; refuses clashes and, without
    ``overwrite``, outputs that exist."""
    jobs: list[tuple[Path, Path, Path | None]] = []
    seen: set[Path] = set()
    for item in map(Path, inputs):
        files = image_files(item)
        if not files:
            raise DatasetError(f"{item}: no PNG/JPEG images in this folder")
        for f in files:
            if f.resolve() in seen:  # the same image named twice (a file and its folder): denoised once
                continue
            seen.add(f.resolve())
            dest = out / (f.relative_to(item).with_suffix(".png") if item.is_dir() else Path(f.stem + ".png"))
            jobs.append((f, dest, dest.with_name(dest.stem + "_noisy.png") if add_noise else None))
    writer: dict[Path, Path] = {}
    for src, *dests in jobs:
        for dest in filter(None, dests):
            if dest in writer:
                raise FileExistsError(f"{writer[dest]} and {src} would both be written to {dest}: rename one, "
                                      f"or denoise them into different --out folders")
            writer[dest] = src
    if not overwrite:
        there = [d for d in writer if d.exists()]
        if there:
            more = f" (and {len(there) - 1} more)" if len(there) > 1 else ""
            raise FileExistsError(f"{there[0]} exists{more}; add --overwrite to replace it, or choose another --out")
    return jobs


def load_image(source: str | Path | bytes, model: DenoisingAutoencoder, name: str | None = None) -> torch.Tensor:
    """Read a PNG/JPEG (a file or its bytes) as the model's input: what ``tuner denoise`` and
    ``tuner serve`` both do to an image before denoising it.

    Args:
        source: a path, or the file's content.
        model: a loaded model; the image is converted to its channel count (1 or 3).
        name: what error messages call the image; default the path.

    Returns:
        (C, H, W) float32 in [0, 1].

    Raises:
        tuner.data.ImageTooLarge: over the pixel limit (refused from the header, before decoding).
        DatasetError: not an image, or truncated.
        ValueError: a dense model given another size than the one it takes.
    """
    name = name or str(source)
    x = torch.from_numpy(read_image(Path(source) if isinstance(source, str) else source,
                                    model.channels, name)).float().div_(255.0)  # (C, H, W)
    if model.fixed_size is not None and tuple(x.shape[-2:]) != tuple(model.fixed_size):
        h, w = model.fixed_size
        raise ValueError(f"{name}: {x.shape[-2]}x{x.shape[-1]} image, but this model (dense) takes only "
                         f"{h}x{w} images; resize it, or use a model with arch conv and bottleneck conv")
    return x


def to_pil(x: torch.Tensor):
    """(C, H, W) floats in [0, 1] -> an 8-bit grayscale or RGB ``PIL.Image`` (rounded, clipped)."""
    from PIL import Image

    a = x.clamp(0, 1).mul_(255).round_().to(torch.uint8).numpy()  # (C, H, W); one float copy, not three
    return Image.fromarray(a[0] if a.shape[0] == 1 else np.ascontiguousarray(a.transpose(1, 2, 0)))
