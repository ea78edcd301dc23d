"""Photos at the field's standard (issue 19): folders split by image, random crops per batch,
whole-image scoring of mixed sizes, the benchmarks' noise, budgets in training seconds.

Real photos small enough for CI: the two that scikit-learn ships (china.jpg, flower.jpg, 427x640
RGB), cut into train / val / test folders in ``tmp_path``.
"""
from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from sklearn.datasets import load_sample_images

import tuner
from tuner.cli import main
from tuner.data import load_dataset
from tuner.noise import Noise, corrupt, fixed_corruption
from tuner.config import TrialConfig
from tuner.spec import SpecError, load_spec
from tuner.metrics import EvalSet, evaluate
from tuner.optim import schedule_factor
from tuner.sampling import augment, sample_patches
from tuner.train import Trainer, fit

ROOT = Path(__file__).resolve().parents[1]
SIGMA25 = Noise("gaussian", 25 / 255, clip=False)


@pytest.fixture(scope="module")
def photo_folders(tmp_path_factory) -> Path:
    """train/: china.jpg in two halves (PNG, lossless); val/: two crops of flower.jpg of different
    sizes; test/: two more flower crops, one grayscale-sized differently again."""
    china, flower = load_sample_images().images  # (427, 640, 3) uint8 each
    root = tmp_path_factory.mktemp("photos")
    parts = {
        "train": {"china_left.png": china[:, :320], "china_right.png": china[:, 320:]},
        "val": {"flower_a.png": flower[:96, :128], "flower_b.png": flower[100:180, :64]},  # mixed sizes
        "test": {"flower_c.png": flower[200:328, 200:328], "flower_d.png": flower[300:, 400:600]},
    }
    for split, files in parts.items():
        (root / split).mkdir()
        for name, a in files.items():
            Image.fromarray(np.ascontiguousarray(a), "RGB").save(root / split / name)
    return root


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


def _spec(tmp_path: Path, folders: Path, **budget) -> Path:
    spec = {
        "name": "photo-smoke", "seed": 0,
        "dataset": {"name": "folder", "train_path": str(folders / "train"), "val_path": str(folders / "val"),
                    "test_path": str(folders / "test"), "patch_size": 32, "patches_per_epoch": 16},
        "eval_noise": {"kind": "gaussian", "sigma": 25, "clip": False},
        "budget": {"num_samples": 3, "max_concurrent": 1, "time_attr": "train_seconds",
                   "max_train_seconds": 4, "grace_period": 1, "reduction_factor": 2, "max_epochs": 1000, **budget},
        "resources": {"cpus_per_trial": 1},
        "fixed": {"arch": "conv", "depth": 2, "convs_per_stage": 2, "skip": True, "residual": "pixel",
                  "latent_dim": 16, "batch_size": 8, "optimizer": "adamw", "lr_schedule": "cosine"},
        "search": {"width": {"choice": [4, 8]}, "lr": {"loguniform": [1e-3, 1e-2]}, "loss": {"choice": ["mse", "l1"]}},
    }
    path = tmp_path / "photo.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# --- the data: split by image, random crops from the training images only -----------------------

def test_separate_folders_never_mix_and_keep_whole_images(photo_folders):
    s = load_dataset("folder", train_path=photo_folders / "train", val_path=photo_folders / "val",
                     test_path=photo_folders / "test", patch_size=32)
    assert [a.shape for a in s.val] == [(3, 96, 128), (3, 80, 64)]  # whole images, mixed sizes
    assert {_digest(a) for a in s.train}.isdisjoint({_digest(a) for a in s.val + s.test})
    assert s.shape == (3, 32, 32) and s.patches_per_epoch == 2 * (427 // 32) * (320 // 32)


def test_no_test_pixel_reaches_training(tmp_path):
    """Every crop the trainer draws is a window of a training image, and of no test image."""
    china, flower = load_sample_images().images
    for split, crops in {"train": [china[100:140, 200:248], china[250:290, 300:340]],
                         "val": [flower[:40, :40]], "test": [flower[100:140, 100:150], china[0:40, 0:40]]}.items():
        (tmp_path / split).mkdir()
        for i, a in enumerate(crops):
            Image.fromarray(np.ascontiguousarray(a), "RGB").save(tmp_path / split / f"{i}.png")
    s = load_dataset("folder", train_path=tmp_path / "train", val_path=tmp_path / "val",
                     test_path=tmp_path / "test", patch_size=16, augment=False)
    trainer = Trainer(TrialConfig(width=4, depth=1, latent_dim=4, batch_size=8, residual="pixel"), s, SIGMA25)
    assert len(trainer.train_images) == len(s.train) == 2

    def windows(images: list[np.ndarray]) -> set[bytes]:  # every 16x16 window, as bytes
        out = set()
        for a in images:
            u = torch.from_numpy(a).unfold(1, 16, 1).unfold(2, 16, 1)  # (C, H', W', 16, 16)
            out |= {u[:, i, j].contiguous().numpy().tobytes() for i in range(u.shape[1]) for j in range(u.shape[2])}
        return out

    train, test = windows(s.train), windows(s.test)
    crops = torch.cat([b.cpu() for _, b in zip(range(4), trainer._batches())])  # 32 crops, 4 batches
    for crop in crops:
        key = crop.contiguous().numpy().tobytes()
        assert key in train and key not in test


def test_crops_are_random_per_batch_and_deterministic_per_seed():
    images = [torch.arange(3 * 40 * 50, dtype=torch.int64).reshape(3, 40, 50).to(torch.uint8),
              torch.randint(0, 255, (3, 64, 33), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)]
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a1, b1 = sample_patches(images, 6, 32, g1), sample_patches(images, 6, 32, g1)
    a2, b2 = sample_patches(images, 6, 32, g2), sample_patches(images, 6, 32, g2)
    assert a1.shape == (6, 3, 32, 32) and a1.dtype == torch.uint8
    assert torch.equal(a1, a2) and torch.equal(b1, b2)  # the same seed, the same crops
    assert not torch.equal(a1, b1)  # the next batch draws new ones
    assert not torch.equal(a1, sample_patches(images, 6, 32, torch.Generator().manual_seed(8)))  # another seed


def test_eight_augmentations_are_distinct_and_keep_shape():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    outs = [augment(x, m) for m in range(8)]
    assert all(o.shape == x.shape for o in outs)
    assert torch.equal(outs[0], x)
    assert len({o.numpy().tobytes() for o in outs}) == 8  # the dihedral group: all different
    # Every mode only moves pixels: each patch keeps its values.
    assert all(torch.equal(o.flatten(1).sort(1).values, x.flatten(1).sort(1).values) for o in outs)


# --- noise as the field states it ---------------------------------------------------------------

def test_unclipped_and_quantized_noise_match_their_definitions():
    clean = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    plain = corrupt(clean, SIGMA25, torch.Generator().manual_seed(3))
    assert torch.allclose(plain, clean + 25 / 255 * eps)  # y = x + sigma/255 * N(0, 1), as is
    assert plain.min() < 0 or plain.max() > 1  # not clipped
    real = Noise("gaussian", 25 / 255, clip=True, quantize=True)
    q = corrupt(clean, real, torch.Generator().manual_seed(3))
    assert torch.equal(q, ((clean + 25 / 255 * eps) * 255).round().clamp(0, 255) / 255)
    assert torch.equal(q * 255, (q * 255).round()) and q.min() >= 0 and q.max() <= 1  # 8-bit values
    with pytest.raises(ValueError, match="quantize needs clip"):
        Noise("gaussian", 0.1, clip=False, quantize=True)


def test_sigma_on_the_255_scale_is_the_level_over_255(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("eval_noise: {kind: gaussian, sigma: 25, clip: false}\n")
    spec = load_spec(path)
    assert spec.eval_noise.level == pytest.approx(25 / 255) and spec.eval_noise.noise() == SIGMA25
    assert spec.base_config()["noise_level"] == pytest.approx(25 / 255)  # training noise follows by default
    assert load_spec(tmp_path / "s.yaml").to_yaml() == load_spec(_rewrite(tmp_path, spec.to_yaml())).to_yaml()
    for bad, message in [("{kind: gaussian, sigma: 25, level: 0.5}", "not both"),
                         ("{kind: impulse, sigma: 25}", "kind impulse takes level"),
                         ("{kind: gaussian, sigma: 25, clip: false, quantize: true}", "quantize needs clip")]:
        path.write_text(f"eval_noise: {bad}\n")
        with pytest.raises(SpecError, match=message):
            load_spec(path)


def _rewrite(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "again.yaml"
    p.write_text(text)
    return p


def test_fixed_corruption_of_mixed_sizes_is_the_same_every_time():
    clean = [torch.rand(1, 9, 13), torch.rand(1, 20, 7)]
    a, b = fixed_corruption(clean, SIGMA25, 5), fixed_corruption(clean, SIGMA25, 5)
    assert [x.shape for x in a] == [x.shape for x in clean]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# --- whole-image scoring, budgets in seconds -----------------------------------------------------

def test_mixed_size_validation_is_scored_whole_per_image(photo_folders):
    s = load_dataset("folder", train_path=photo_folders / "train", val_path=photo_folders / "val",
                     test_path=photo_folders / "test", patch_size=32)
    model = tuner.model.build_model(TrialConfig(width=4, depth=2, latent_dim=8, residual="pixel"), 3, 32, 32).eval()
    val = EvalSet.make(s.val, SIGMA25, 1234)
    scores = evaluate(model, val)
    by_hand = [float(10 * torch.log10(1 / (model.denoise(n[None])[0] - c).pow(2).mean()))
               for n, c in zip(val.noisy, val.clean)]
    assert scores["psnr_per_image"] == pytest.approx(by_hand, abs=1e-3)
    assert scores["psnr"] == pytest.approx(np.mean(by_hand), abs=1e-3)


def test_a_seconds_budget_stops_training_and_spans_the_schedule():
    data = load_dataset("sample_photos", patch_size=32, patches_per_epoch=8, channels=1)
    cfg = TrialConfig(width=4, depth=2, latent_dim=8, batch_size=4, residual="pixel", optimizer="adamw",
                      lr_schedule="cosine", max_epochs=10_000, max_train_seconds=1.5)
    epochs = [e.metrics for e in fit(cfg, data, SIGMA25, threads=1)]
    last = epochs[-1]
    assert 1.5 <= last["train_seconds"] < 1.5 + 1.0 and len(epochs) > 1
    assert [m["train_seconds"] for m in epochs] == sorted(m["train_seconds"] for m in epochs)
    assert last["lr"] < 0.02 * cfg.lr  # the cosine reached its end with the budget
    assert schedule_factor("cosine", 0.0) < 0.05 and schedule_factor("cosine", 0.05) == pytest.approx(1.0)
    assert schedule_factor("onecycle", 0.25) == pytest.approx(1.0) and schedule_factor("onecycle", 1.0) < 1e-4


def test_photo_search_end_to_end_at_equal_training_seconds(photo_folders, tmp_path, capsys, monkeypatch):
    """A real Ray Tune search (Optuna TPE, ASHA on training seconds) over separate photo folders."""
    spec_path = _spec(tmp_path, photo_folders)
    storage = tmp_path / "runs"
    assert main(["-q", "tune", str(spec_path), "--storage", str(storage), "--no-report"]) == 0
    best = storage / "photo-smoke" / "best"
    metrics = json.loads((best / "metrics.json").read_text())
    config = json.loads((best / "config.json").read_text())
    assert config["eval_noise"]["clip"] is False and config["trial"]["residual"] == "pixel"
    assert math.isfinite(metrics["test_psnr"]) and metrics["train_seconds"] > 0
    # The study's COMPLETE trials trained their whole budget in seconds; the others were PRUNED.
    import optuna

    study = optuna.load_study(study_name="photo-smoke", storage=f"sqlite:///{storage / 'photo-smoke' / 'study.db'}")
    states = {t.state.name for t in study.trials}
    assert len(study.trials) == 3 and states <= {"COMPLETE", "PRUNED"} and "COMPLETE" in states
    # test_psnr is the tuner denoise output of each whole test image, rounded to 8 bits, scored against the clean one.
    model = tuner.load_model(best)
    s = load_dataset(**config["dataset"])
    test = EvalSet.make(s.test, SIGMA25, config["eval_noise"]["seed"] + 1)
    assert evaluate(model, test, quantize=True)["psnr"] == pytest.approx(metrics["test_psnr"], abs=1e-3)
    # The report of a photo run: every figure, the noise sweep on the first test photos within its
    # pixel budget (here 1 of the 2: flower_c is 128x128, flower_d 127x200).
    from tuner.report import best as report_best

    monkeypatch.setattr(report_best, "SWEEP_PIXELS", 128 * 128 + 1)
    assert main(["-q", "report", str(storage / "photo-smoke")]) == 0
    report = storage / "photo-smoke" / "report"
    assert {"examples.png", "psnr_histogram.png", "noise_sweep.png"} <= {f.name for f in report.iterdir()}
    assert "Mean PSNR on 1 test images" in (report / "index.html").read_text()
    assert len(json.loads((report / "summary.json").read_text())["noise_sweep"]) == 7


@pytest.mark.parametrize("case", ["empty", "unreadable", "too_small", "wrong_channels", "path_and_train_path"])
def test_bad_photo_folder_is_one_line_exit_2(case, photo_folders, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    extra = ""
    if case == "unreadable":
        Image.open(photo_folders / "train" / "china_left.png").save(bad / "ok.png")
        (bad / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
        expect = "broken.jpg: not a readable PNG/JPEG"
    elif case == "too_small":
        Image.fromarray(np.zeros((20, 90, 3), np.uint8)).save(bad / "thin.png")
        expect = "thin.png: 20x90, smaller than dataset.patch_size 32"
    elif case == "wrong_channels":
        Image.fromarray(np.zeros((64, 64), np.uint8), "L").save(bad / "gray.png")
        extra, expect = "  channels: 3\n", "gray.png: grayscale (1 channel) but dataset.channels is 3"
    elif case == "path_and_train_path":
        extra, expect = f"  path: {bad}\n", "give either path"
    else:
        expect = "no PNG/JPEG training images"
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: bad\ndataset:\n  name: folder\n  train_path: {bad}\n  test_path: {photo_folders / 'test'}\n"
                    f"  patch_size: 32\n{extra}")
    args = ["tune", str(spec), "--storage", str(tmp_path / "runs")]
    if case == "unreadable":  # once as a user runs it: a process of its own, and no traceback
        out = subprocess.run([sys.executable, "-m", "tuner", *args], capture_output=True, text=True, timeout=120)
        code, err = out.returncode, out.stderr
    else:
        code, err = main(args), capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err and expect in lines[0], err
    assert not (tmp_path / "runs" / "bad" / "study.db").exists()  # refused before a study or Ray exists


def test_photo_specs_refuse_fixed_size_models(tmp_path):
    path = tmp_path / "s.yaml"
    for body, message in [("fixed: {arch: dense}", "dense takes one image size only"),
                          ("search: {bottleneck: {choice: [conv, dense]}}", "dense takes one image size only"),
                          ("fixed: {residual: pixel, loss: bce}", "loss bce needs outputs in"),
                          ("budget: {time_attr: train_seconds}", "needs max_train_seconds"),
                          ("budget: {max_train_seconds: 5}", "needs time_attr train_seconds"),
                          ("budget: {time_attr: train_seconds, max_train_seconds: 5, grace_period: 9}",
                           "grace_period 9 > max_train_seconds 5")]:
        path.write_text(f"dataset: {{name: sample_photos}}\n{body}\n")
        with pytest.raises(SpecError, match=message):
            load_spec(path)
    path.write_text("fixed: {residual: true}\n")  # the digits' logit-space residual, as older specs say it
    assert load_spec(path).base_config()["residual"] is True and TrialConfig(residual=True).residual == "logit"


def test_benchmark_spec_takes_its_folders_from_the_command_line(photo_folders):
    spec = load_spec(ROOT / "search_spaces" / "bsd68.yaml")
    assert spec.eval_noise.noise().describe().startswith("gaussian 0.098") and not spec.eval_noise.clip
    moved = spec.with_overrides(train_path=str(photo_folders / "train"), test_path=str(photo_folders / "test"))
    assert (moved.dataset.train_path, moved.dataset.test_path) == (str(photo_folders / "train"), str(photo_folders / "test"))
    assert moved.dataset.val_path is None and spec.budget.time_attr == "train_seconds"


# The colour spec (~20 s) in the slow lane: the gray one covers the same code in the default lane.
@pytest.mark.parametrize("name", ["bsd68_gpu", pytest.param("cbsd68_gpu", marks=pytest.mark.slow)])
def test_the_gpu_specs_run_a_tiny_budget_on_the_cpu(tmp_path, name):
    """The GPU benchmark specs as shipped (their model family, batches, packing, time-derived
    budget) load, and run on a CPU when shrunk: 2 trials of a few training seconds on a few photos."""
    spec = load_spec(ROOT / "search_spaces" / f"{name}.yaml")
    assert spec.resources.gpus_per_trial == 0.125 and spec.budget.max_concurrent == 8
    assert spec.budget.time_attr == "train_seconds" and spec.budget.max_train_seconds > 8 * spec.budget.grace_period
    shared = ROOT.parent / "shared" / "datasets" / ("gray" if name == "bsd68_gpu" else "color")
    train, test = (shared / "Train400", shared / "BSD68") if name == "bsd68_gpu" else (shared / "CBSD432", shared / "CBSD68")
    if not train.is_dir():
        pytest.skip(f"{train} is not here (../shared/datasets)")
    data = yaml.safe_load((ROOT / "search_spaces" / f"{name}.yaml").read_text())
    data["dataset"].update(train_path=str(train), test_path=str(test), limit=2, patches_per_epoch=512, val_fraction=0.2)
    # A budget in epochs, not seconds: on a loaded 2-core CI machine 3 training seconds may be too few
    # steps for a sigma-25 denoiser to beat the noisy input; a count of steps is not.
    data["budget"] = {"num_samples": 2, "max_concurrent": 1, "max_epochs": 4, "grace_period": 2}
    data["resources"] = {"cpus_per_trial": 1, "gpus_per_trial": 0}
    data["search"]["width"] = {"choice": [8, 16]}  # a width-64 U-Net scores whole photos slowly on a CPU
    data["start_from"] = [{**data["start_from"][0], "width": 8, "batch_size": 32}]
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(data))
    result = tuner.tune(load_spec(path), storage=str(tmp_path / "runs"), report=False, verbose=0)
    assert len(result.results) == 2 and math.isfinite(result.metrics["test_psnr"])
    assert result.metrics["test_psnr"] > result.metrics["noisy_test_psnr"]
    rows = [r.metrics for r in result.results]
    assert all(0 < m["train_share"] <= 1 for m in rows)
