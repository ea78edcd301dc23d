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
from tuner.spec import TrialConfig

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


@torch.no_grad()
def denoise(model: DenoisingAutoencoder, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Denoise a batch.

    Args:
        model: a loaded model.
        images: (B, C, H, W) or (C, H, W) floats in [0, 1] with the model's channel count.

    Returns:
        Denoised images, same shape, in [0, 1].
    """
    single = images.dim() == 3
    x = images[None] if single else images
    device = next(model.parameters()).device
    out = torch.cat([model.denoise(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])
    return out[0] if single else out


def denoise_files(model_dir: str | Path, inputs: Sequence[str | Path], out_dir: str | Path,
                  add_noise: bool = False, seed: int = 0) -> list[Path]:
    """Denoise PNG/JPEG files (or folders of them) and write PNGs of the same size.

    Grayscale or RGB inputs are converted to what the model expects. Convolutional models take
    any size; dense models only their training size.

    Args:
        model_dir: an exported model folder.
        inputs: image files and/or folders (searched recursively).
        out_dir: where ``<name>.png`` outputs go (``<name>_noisy.png`` too with ``add_noise``).
        add_noise: corrupt the inputs with the model's evaluation noise first, for a demo.
        seed: the seed of that noise.

    Returns:
        The written output paths.

    Raises:
        ValueError / DatasetError: one-line messages for bad inputs.
    """
    model = load_model(model_dir)
    config = model.config  # type: ignore[attr-defined]
    noise = _eval_noise(config)  # checked by load_model
    jobs: list[tuple[Path, Path]] = []  # (input file, output path relative to out_dir)
    for item in map(Path, inputs):
        files = image_files(item)
        if not files:
            raise DatasetError(f"{item}: no PNG/JPEG images in this folder")
        for f in files:
            jobs.append((f, f.relative_to(item).with_suffix(".png") if item.is_dir() else Path(f.stem + ".png")))
    out = Path(out_dir)
    generator = torch.Generator().manual_seed(seed)
    written = []
    for src, rel in jobs:
        x = load_image(src, model)  # (C, H, W)
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if add_noise:
            x = corrupt(x[None], noise, generator)[0]
            noisy_path = dest.with_name(dest.stem + "_noisy.png")
            to_pil(x).save(noisy_path)
            written.append(noisy_path)
        to_pil(denoise(model, x)).save(dest)
        written.append(dest)
    log.info("denoised %d image(s) into %s", len(jobs), out)
    return written


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

    a = (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()  # (C, H, W)
    return Image.fromarray(a[0] if a.shape[0] == 1 else np.ascontiguousarray(a.transpose(1, 2, 0)))
