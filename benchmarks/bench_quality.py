"""Denoising quality: seed notebook models and classical denoisers (and tuner's best model) on the
``mnist5k`` test split, at Gaussian 0.5, Gaussian 0.1 and 10% impulse noise.

Every method sees the same noisy test images: ``EvalSet.make(splits.test, noise, 1234 + 1)``,
the corruption ``tuner search`` scores its exported model on (eval seed 1234, test offset 1).
Scores are mean per-image PSNR (``tuner.metrics.psnr_per_image``) and SSIM (``tuner.metrics.ssim``).

- Seed models (``seed_models.py``): trained on the train split, noisy -> clean, with their own
  recipe; by default for a reduced number of epochs (``SeedModel.small_epochs``; ``--full``: the
  seeds' own).
- Classical: Gaussian filter, median filter, non-local means, BM3D. Each one's parameter is
  chosen on the validation split (fixed noise, seed 1234), never on the test split. BM3D takes
  1-2 s per 28x28 image on one core, so by default it runs on the first ``--bm3d-images`` test
  images only; every row reports its gain over the noisy input on the same images.
- Hand-tuned U-Net (``hand_unet.py``, issue 11): a person's two-level U-Net recipe on all cores,
  twice: for the same wall time as the search of that noise (``--unet-seconds`` when no search ran
  here), and for the recipe's own 20 epochs.
- tuner: ``--tune`` runs ``search_spaces/quickstart.yaml`` once per noise (its budget, space and
  scheduler; the evaluation noise set to that column's and the training-noise range, set for 0.5,
  scaled to its level) and scores each exported model at the
  noise it was searched for. ``--tuner-model runs/NAME/best ...`` scores models exported earlier
  instead, each at its own noise (read from its ``config.json``).

    python benchmarks/bench_quality.py                  # ~4-5 CPU minutes on one core
    python benchmarks/bench_quality.py --tune --write   # + three quickstart searches, ~12 minutes more
    python benchmarks/bench_quality.py --full --tune --write   # seeds' own epochs, BM3D on all 500 (hours)
    python benchmarks/bench_quality.py --tuner-model runs/q05/best runs/q01/best runs/imp/best --write
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, describe_machine, table, write_section  # noqa: E402
from hand_unet import RECIPE_EPOCHS, train_hand_unet  # noqa: E402
from hand_unet import denoise as denoise_unet  # noqa: E402
from seed_models import SEEDS, denoise, train_seed  # noqa: E402
from tuner.data import Splits, load_dataset  # noqa: E402
from tuner.denoise import denoise as denoise_with_tuner  # noqa: E402
from tuner.noise import Noise  # noqa: E402
from tuner.metrics import TEST_SEED_OFFSET, EvalSet, psnr_per_image, ssim  # noqa: E402

QUICKSTART = Path(__file__).resolve().parent.parent / "search_spaces" / "quickstart.yaml"
QUICKSTART_LEVEL = 0.5  # quickstart.yaml's evaluation noise: its training-noise range is scaled from it
TUNER_ROW = "tuner: best of a quickstart-budget search per noise"
UNET_ROW = "hand-tuned U-Net (issue 11's recipe), trained for the search's wall time on all cores"
UNET_RECIPE_ROW = f"hand-tuned U-Net (issue 11's recipe), its {RECIPE_EPOCHS} epochs on all cores"
TARGETS = {"gaussian 0.5": 21.0, "gaussian 0.1": 30.8, "impulse 0.1": 28.5}  # issue 11: tuner's test PSNR, dB
EVAL_SEED = 1234  # tuner's default eval_noise.seed; the test split uses EVAL_SEED + TEST_SEED_OFFSET
NOISES: dict[str, Noise] = {
    "gaussian 0.5": Noise("gaussian", 0.5),
    "gaussian 0.1": Noise("gaussian", 0.1),
    "impulse 0.1": Noise("impulse", 0.1),
}
GAUSS_SIGMAS = (0.5, 0.7, 1.0, 1.4, 2.0)  # pixels
MEDIAN_SIZES = (2, 3, 5)  # pixels
NLM_H = (0.6, 0.8, 1.0, 1.2)  # x the noise's RMS


@dataclass
class Score:
    """One method at one noise on the test split."""

    psnr: float  # mean per-image PSNR, dB
    ssim: float
    gain: float  # psnr minus the noisy input's on the same images
    n: int  # test images scored
    param: str = ""  # what was tuned on the validation split, or the training budget
    seconds: float = 0.0  # training (models) or denoising the scored test images (classical)


def score(out: torch.Tensor, ev: EvalSet, param: str = "", seconds: float = 0.0) -> Score:
    """Score denoised ``out`` against the first ``len(out)`` images of ``ev``."""
    n = len(out)
    clean, noisy = ev.clean[:n], ev.noisy[:n]
    psnr = float(psnr_per_image(out, clean).mean())
    return Score(psnr, ssim(out, clean), psnr - float(psnr_per_image(noisy, clean).mean()), n, param, seconds)


# --------------------------------------------------------------------------- classical
def per_image(fn: Callable[[np.ndarray], np.ndarray], noisy: torch.Tensor) -> torch.Tensor:
    """Apply a (C, H, W) float64 -> (C, H, W) denoiser to each image of (N, C, H, W)."""
    out = [fn(x.astype(np.float64)) for x in noisy.numpy()]
    return torch.from_numpy(np.stack(out)).float().clamp_(0.0, 1.0)


def gaussian_filter(sigma: float) -> Callable[[np.ndarray], np.ndarray]:
    from scipy import ndimage

    return lambda x: ndimage.gaussian_filter(x, sigma=(0, sigma, sigma))  # no blur across channels


def median_filter(size: int) -> Callable[[np.ndarray], np.ndarray]:
    from scipy import ndimage

    return lambda x: ndimage.median_filter(x, size=(1, size, size))


def nl_means(h: float, sigma: float) -> Callable[[np.ndarray], np.ndarray]:
    from skimage.restoration import denoise_nl_means

    def fn(x: np.ndarray) -> np.ndarray:
        if x.shape[0] == 1:
            return denoise_nl_means(x[0], h=h, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True)[None]
        return denoise_nl_means(x, h=h, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True,
                                channel_axis=0)
    return fn


def bm3d_filter(sigma: float) -> Callable[[np.ndarray], np.ndarray]:
    import bm3d

    return lambda x: np.stack([bm3d.bm3d(c, sigma_psd=sigma) for c in x])  # per channel


def noise_rms(ev: EvalSet) -> float:
    """RMS of (noisy - clean): the noise's real strength after clipping (Gaussian 0.5 clipped to
    [0, 1] on black digits backgrounds is ~0.34, not 0.5), estimated on the validation split."""
    return float((ev.noisy - ev.clean).pow(2).mean().sqrt())


def tune_on_val(make: Callable[[float], Callable], grid, val: EvalSet) -> tuple[float, float]:
    """The grid value with the best mean validation PSNR, and that PSNR."""
    scored = [(float(psnr_per_image(per_image(make(v), val.noisy), val.clean).mean()), v) for v in grid]
    best_psnr, best = max(scored)
    return best, best_psnr


def classical(val: EvalSet, test: EvalSet, bm3d_images: int) -> dict[str, Score]:
    """The four classical denoisers, each with its parameter chosen on ``val``."""
    rms = noise_rms(val)
    out: dict[str, Score] = {}
    methods = [
        ("Gaussian filter", gaussian_filter, GAUSS_SIGMAS, "sigma {:g} px"),
        ("median filter", median_filter, MEDIAN_SIZES, "size {:g} px"),
        ("non-local means", lambda k: nl_means(k * rms, rms), NLM_H, "h = {:g} x noise RMS"),
    ]
    for name, make, grid, fmt in methods:
        best, _ = tune_on_val(make, grid, val)
        start = time.perf_counter()
        denoised = per_image(make(best), test.noisy)
        out[name] = score(denoised, test, fmt.format(best), time.perf_counter() - start)
    start = time.perf_counter()
    denoised = per_image(bm3d_filter(rms), test.noisy[:bm3d_images])
    out["BM3D"] = score(denoised, test, f"sigma_psd = noise RMS on val = {rms:.3f}", time.perf_counter() - start)
    return out


# --------------------------------------------------------------------------- tuner's model
def load_tuner_model(path: Path, shape: tuple[int, int, int]) -> tuple[torch.nn.Module, dict]:
    """Load ``tuner tune``'s exported ``best/`` folder with :func:`tuner.load_model`.

    Returns:
        (model in eval mode, config.json contents).

    Raises:
        SystemExit: with a one-line message when the folder is not a usable export for mnist5k.
    """
    from tuner.denoise import load_model

    try:
        model = load_model(path)
    except ValueError as e:
        raise SystemExit(f"--tuner-model {e}")
    c, h, w = model.config["image_shape"]
    if (c, h, w) != tuple(shape):
        raise SystemExit(f"--tuner-model {path}: model is for {c}x{h}x{w} images, mnist5k is "
                         f"{'x'.join(map(str, shape))}")
    return model, model.config


def _shown(folder: Path) -> Path:
    """A model folder as the docs show it: relative to the working directory when under it."""
    folder = Path(folder)
    return folder.resolve().relative_to(Path.cwd()) if folder.resolve().is_relative_to(Path.cwd()) else folder


def noise_key(config: dict) -> Optional[str]:
    """The NOISES column an exported model was searched for (its ``eval_noise``), or None."""
    ev = config.get("eval_noise") or {}
    return next((k for k, n in NOISES.items()
                 if ev.get("kind") == n.kind and ev.get("level") == n.level and not ev.get("level_max")), None)


def quickstart_search(key: str, noise: Noise, runs: Path) -> tuple[Path, Optional[float]]:
    """Run quickstart.yaml searched for ``noise``; returns the exported ``best/`` folder and the
    search's wall seconds (None when a finished search in ``runs`` was reused).

    The evaluation noise becomes ``noise``; the training noise keeps quickstart's range relative to
    the evaluation level (scaled by level / 0.5, its ``start_from`` level too) and takes its kind. Everything else -
    dataset, budget, scheduler, the rest of the space, the seed - is quickstart's.
    """
    from tuner.search import run_search
    from tuner.spec import load_spec

    data = yaml.safe_load(QUICKSTART.read_text())
    data["name"] = "quality_" + key.replace(" ", "_").replace(".", "")
    data["eval_noise"] = {"kind": noise.kind, "level": noise.level}
    low, high = data["search"]["noise_level"]["uniform"]
    scale = noise.level / QUICKSTART_LEVEL
    data["search"]["noise_level"] = {"uniform": [round(low * scale, 4), round(high * scale, 4)]}
    for point in data.get("start_from", []):  # the warm start trains at the evaluation level, as at 0.5
        if "noise_level" in point:
            point["noise_level"] = round(point["noise_level"] * scale, 4)
    run = runs / data["name"]
    if (run / "best" / "model.pt").is_file():
        print(f"{key}: reusing the search in {run}", flush=True)
        return run / "best", None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{data['name']}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        spec = load_spec(path)
    t = time.perf_counter()
    result = run_search(spec, storage=str(runs), verbose=0)
    seconds = time.perf_counter() - t
    print(f"{key}: searched in {seconds:.0f} s, best val_psnr {result.metrics['val_psnr']:.2f}", flush=True)
    return Path(result.best_dir), seconds


# --------------------------------------------------------------------------- report
def report(results: dict[str, dict[str, Score]], noisy: dict[str, Score], args, epochs: dict[str, str],
           tuner_note: Optional[str], seconds: float) -> str:
    headers = ["method", *[f"{k} PSNR dB (gain)" for k in NOISES], *[f"{k} SSIM" for k in NOISES]]
    rows = [["noisy input (no denoising)", *[f"{noisy[k].psnr:.2f}" for k in NOISES],
             *[f"{noisy[k].ssim:.3f}" for k in NOISES]]]
    for name, by_noise in results.items():
        rows.append([name, *[f"{by_noise[k].psnr:.2f} ({by_noise[k].gain:+.2f})" for k in NOISES],
                     *[f"{by_noise[k].ssim:.3f}" for k in NOISES]])
    params = []
    for name, by_noise in results.items():
        params.append([name, *[by_noise[k].param for k in NOISES],
                       " / ".join("-" if by_noise[k].seconds != by_noise[k].seconds else f"{by_noise[k].seconds:.0f}"
                                  for k in NOISES)])  # NaN: a model passed in, not trained here
    n_test = noisy[next(iter(NOISES))].n
    bm3d_n = results["BM3D"][next(iter(NOISES))].n
    body = [
        "## Denoising quality (`bench_quality.py`)",
        "",
        describe_machine(args.threads),
        "",
        f"Command: `{command_line()}` (took {seconds / 60:.1f} min)",
        "",
        f"`mnist5k` test split ({n_test} images, 1x28x28); noisy inputs fixed by "
        f"`EvalSet.make(splits.test, noise, {EVAL_SEED + TEST_SEED_OFFSET})`, identical for every row. Mean "
        f"per-image PSNR, its gain over the noisy input on the same images in brackets, and SSIM. "
        + (f"**BM3D was scored on the first {bm3d_n} test images only** (1-2 s per image on one core; "
           f"`--bm3d-images 500` or `--full` for all), so compare it by its gain. " if bm3d_n < n_test else "")
        + ("Seed models trained for their own epochs." if args.full and not args.epochs else
           "**Seed models trained on a reduced budget** (epochs below; `--full` for the seeds' own): they "
           "are not converged, so their rows understate what the seed recipes reach."),
        "",
        table(headers, rows),
        "",
        "Parameters chosen on the validation split (classical) or training budget (seeds), and seconds "
        "spent (training for models, denoising the scored test images for classical) per noise:",
        "",
        table(["method", *NOISES, "seconds (per noise)"], params),
        "",
        "What the numbers mean for a user:",
        "",
        "- *PSNR* is how close the output is to the clean image in mean squared error (10 dB = 10x less "
        "error); the *gain* is what the denoiser adds over leaving the noisy image alone.",
        "- *SSIM* (1 = identical) tracks whether strokes and edges survive; a filter can win PSNR by "
        "blurring yet lose SSIM.",
        "- A seed model's row is what a user's notebook recipe gives on this data and budget; a classical "
        "row is what one gets with no training at all.",
        f"- Seed epochs run / the seed's own: {', '.join(f'{k}: {v}' for k, v in epochs.items())}.",
    ]
    body += ["", tuner_note or "Tuner's best model: not measured in this run (pass `--tune`, or `--tuner-model "
             "runs/NAME/best` after a search). Target: it should beat every row above at the noise it was searched "
             "for."]
    return "\n".join(body)


def tuner_verdict(results: dict[str, dict[str, Score]], name: str, keys: list[str]) -> str:
    """Does tuner's model beat every other row at the noise it was searched for? One line per noise."""
    lines, met = [], 0
    for key in keys:
        mine = results[name][key]
        others = {k: v[key] for k, v in results.items() if k != name}
        beaten = [k for k, s in others.items() if s.gain >= mine.gain]
        best_other = max(others, key=lambda k: others[k].gain)
        met += not beaten
        target = TARGETS[key]
        line = (f"- {key}: **{'met' if not beaten else 'missed'}**: {mine.psnr:.2f} dB ({mine.gain:+.2f}; issue 11's "
                f"target >= {target:.1f} dB: {'met' if mine.psnr >= target else 'missed'}) vs "
                f"the best other, {best_other}, {others[best_other].psnr:.2f} dB ({others[best_other].gain:+.2f})")
        if beaten:
            line += f"; not beaten by it: {', '.join(beaten)}"
        lines.append(line + ".")
    head = (f"Target (tuner's model beats every seed model and classical denoiser at the noise it was searched "
            f"for, by PSNR gain on the same images): met at {met} of {len(keys)} noises.")
    return "\n".join([head, "", *lines])


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description="Test PSNR/SSIM on mnist5k of the seed models, classical denoisers "
                                            "and optionally tuner's best model.")
    p.add_argument("--full", action="store_true",
                   help="seeds' own epochs and BM3D on every test image (hours on one core)")
    p.add_argument("--epochs", type=int, default=None, help="train every seed model this many epochs instead")
    p.add_argument("--bm3d-images", type=int, default=None,
                   help="test images BM3D is scored on (default 15; --full: all 500)")
    p.add_argument("--seeds", nargs="*", default=list(SEEDS), choices=list(SEEDS), help="seed models to train")
    p.add_argument("--tuner-model", type=Path, nargs="+", default=[],
                   help="best/ folders exported by `tuner tune` (model.pt + config.json), each scored at its "
                        "own evaluation noise")
    p.add_argument("--tune", action="store_true",
                   help="run quickstart.yaml once per noise no --tuner-model covers, and score those models")
    p.add_argument("--runs", type=Path, default=Path("runs/bench_quality"),
                   help="where --tune's searches go; a finished one is reused (default runs/bench_quality)")
    p.add_argument("--no-unet", dest="unet", action="store_false", help="skip the hand-tuned U-Net row")
    p.add_argument("--unet-seconds", type=float, nargs="+", default=[180.0],
                   help="the U-Net's wall-clock budget where no search ran here: one value, or one per noise in "
                        "the order gaussian 0.5, gaussian 0.1, impulse 0.1 (the reused searches' times); "
                        "default 180: the quickstart's")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1 on a shared 2-core machine)")
    p.add_argument("--write", action="store_true", help="write the results section into docs/benchmarks.md")
    args = p.parse_args(argv)
    if len(args.unet_seconds) not in (1, len(NOISES)):
        p.error(f"--unet-seconds takes 1 or {len(NOISES)} values, got {len(args.unet_seconds)}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data: Splits = load_dataset("mnist5k")
    bm3d_images = min(args.bm3d_images or (len(data.test) if args.full else 15), len(data.test))
    tuners: dict[str, tuple[Path, torch.nn.Module, dict]] = {}  # noise column -> (folder, model, config)
    for folder in args.tuner_model:
        model, config = load_tuner_model(folder, data.shape)
        key = noise_key(config)
        if key is None:
            raise SystemExit(f"--tuner-model {folder}: searched for {config.get('eval_noise')}, not one of "
                             f"{', '.join(NOISES)}")
        tuners[key] = (folder, model, config)
    search_seconds = {}
    if args.tune:  # a search per noise no --tuner-model covers
        for key, noise in NOISES.items():
            if key not in tuners:
                folder, seconds = quickstart_search(key, noise, args.runs)
                if seconds is not None:  # searched here, not reused: the U-Net gets the same wall time
                    search_seconds[key] = seconds
                tuners[key] = (folder, *load_tuner_model(folder, data.shape))
        import ray

        ray.shutdown()  # the seed models train in this process next
    if tuners and set(tuners) != set(NOISES):
        missing = ", ".join(k for k in NOISES if k not in tuners)
        raise SystemExit(f"tuner models cover {', '.join(tuners)}; also needed, one per noise: {missing} "
                         f"(or pass --tune)")

    results: dict[str, dict[str, Score]] = {}
    noisy: dict[str, Score] = {}
    epochs = {k: f"{SEEDS[k].budget(args.full, args.epochs)}/{SEEDS[k].epochs}" for k in args.seeds}
    unet_seconds = dict(zip(NOISES, args.unet_seconds * (len(NOISES) if len(args.unet_seconds) == 1 else 1)))
    for key, noise in NOISES.items():
        val = EvalSet.make(data.val, noise, EVAL_SEED)
        test = EvalSet.make(data.test, noise, EVAL_SEED + TEST_SEED_OFFSET)
        noisy[key] = score(test.noisy.clone(), test)
        print(f"{key}: noisy input {noisy[key].psnr:.2f} dB", flush=True)
        if tuners:
            folder, model, _ = tuners[key]
            # tuner's models output logits: tuner's denoise applies the sigmoid (seed models end in one)
            results.setdefault(TUNER_ROW, {})[key] = score(denoise_with_tuner(model, test.noisy, 500), test,
                                                           f"`{_shown(folder)}`", search_seconds.get(key, float("nan")))
        if args.unet:
            budget = search_seconds.get(key, unet_seconds[key])
            for row, seconds, n in ((UNET_ROW, budget, None), (UNET_RECIPE_ROW, None, RECIPE_EPOCHS)):
                unet = train_hand_unet(data, noise, seconds, threads=os.cpu_count() or 1, epochs=n)
                results.setdefault(row, {})[key] = score(denoise_unet(unet.model, test.noisy), test,
                                                         f"{unet.epochs} epochs, {unet.seconds:.0f} s", unet.seconds)
                print(f"  {row}: {results[row][key].psnr:.2f} dB ({unet.epochs} epochs)", flush=True)
            torch.set_num_threads(args.threads)
        for s in (SEEDS[k] for k in args.seeds):
            trained = train_seed(s, data, noise, epochs=s.budget(args.full, args.epochs), val=val)
            name = f"seed {s.key}: {s.title}"
            results.setdefault(name, {})[key] = score(
                denoise(trained.model, test.noisy), test, f"{trained.epochs} epochs, batch {s.batch_size}",
                trained.seconds)
            print(f"  seed {s.key}: {results[name][key].psnr:.2f} dB ({trained.seconds:.0f} s training)", flush=True)
        for name, sc in classical(val, test, bm3d_images).items():
            results.setdefault(name, {})[key] = sc
            print(f"  {name}: {sc.psnr:.2f} dB on {sc.n} images ({sc.param})", flush=True)

    tuner_note = None
    if tuners:
        lines = []
        for key, (folder, _, config) in tuners.items():
            ds = config.get("dataset") or {}
            leak = ("" if ds.get("name", "mnist5k") == "mnist5k" and ds.get("split_seed", 0) == 0
                    else f" Caution: searched on {ds.get('name')} split_seed {ds.get('split_seed')}, so this test "
                         f"split may overlap its training data.")
            lines.append(f"- {key}: `{_shown(folder)}`, trial config `{json.dumps(config.get('trial'))}`.{leak}")
        how = ("`search_spaces/quickstart.yaml` run once per noise (`--tune`, or `tuner tune` and `--tuner-model`), "
               "its evaluation noise set to the column's and its training-noise range scaled from quickstart's "
               "(set for 0.5) to the level; the seconds column is the whole search where this script ran it")
        tuner_note = "\n".join([f"Tuner's models ({how}):", "", *lines, "",
                                 tuner_verdict(results, TUNER_ROW, list(NOISES))])
    text = report(results, noisy, args, epochs, tuner_note, time.perf_counter() - start)
    print("\n" + text)
    if args.write:
        print(f"\nwrote {write_section('bench_quality', text)}")


if __name__ == "__main__":
    main()
