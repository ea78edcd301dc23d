"""Where a trial's time goes (issue 30): crops drawn on the trainer's device by one gather, the
augmentation a trial's hyperparameter, ``train_seconds`` the loop's true wall time, validation
and checkpoints bounded by time.

The statistics tests compare the device sampler with the per-crop Python loop it replaced
(:func:`_reference_crops`, kept here as the definition of the distribution), on draws large enough
that a chi-square test with a fixed seed is decisive, and deterministic.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency, chisquare

from tuner.data import Splits, load_dataset
from tuner.noise import Noise
from tuner.config import TrialConfig
from tuner.spec import SpecError, load_spec
from tuner.sampling import AUGMENT_MODES, PatchSampler, augment
from tuner.train import CHECKPOINT_SHARE, VALIDATION_SHARE, CheckpointCadence, Trainer, fit

SIZE = 8


def _images() -> list[torch.Tensor]:
    """Three images of different sizes whose every pixel value says where it is (so a crop's first
    pixel tells its image and position)."""
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (1, h, w), generator=g, dtype=torch.uint8) for h, w in ((12, 20), (30, 9), (8, 8))]


def _reference_crops(images, n, size, generator, modes):
    """The sampler before issue 30, one crop at a time on the host: an image drawn uniformly, a
    uniform position, a mode drawn uniformly from ``modes``. Returns the choices."""
    pick = torch.randint(len(images), (n,), generator=generator).tolist()
    where = torch.rand((n, 2), generator=generator, dtype=torch.float64).tolist()
    mode = torch.tensor(modes)[torch.randint(len(modes), (n,), generator=generator)].tolist()
    out = []
    for i, (u, v), m in zip(pick, where, mode):
        _, h, w = images[i].shape
        out.append((i, int(u * (h - size + 1)), int(v * (w - size + 1)), m))
    return out


def test_each_crop_is_the_window_it_drew_in_its_mode():
    images = _images()
    sampler = PatchSampler(images, SIZE, "flip_rotate")
    image, top, left, mode = sampler.draw(500, torch.Generator().manual_seed(1))
    crops = sampler.crops(image, top, left, mode)
    assert crops.shape == (500, 1, SIZE, SIZE) and crops.dtype == torch.uint8
    for k in range(500):
        i, t, l, m = int(image[k]), int(top[k]), int(left[k]), int(mode[k])
        window = images[i][:, t:t + SIZE, l:l + SIZE]
        assert window.shape[1:] == (SIZE, SIZE)  # inside the image
        assert torch.equal(crops[k], augment(window[None], m)[0])
    # The trainer's images are views of the sampler's one buffer, equal to the inputs.
    assert all(torch.equal(a, b) for a, b in zip(sampler.images, images))


@pytest.mark.parametrize("setting", ["none", "flip", "flip_rotate"])
def test_the_device_sampler_draws_as_the_host_loop_did(setting):
    """Same distribution as before: images, positions (per image) and modes, chi-square against the
    reference loop's draws (and against uniform), 30,000 crops each."""
    images, n = _images(), 30_000
    modes = AUGMENT_MODES[setting]
    image, top, left, mode = (t.numpy() for t in
                              PatchSampler(images, SIZE, setting).draw(n, torch.Generator().manual_seed(2)))
    ref = np.array(_reference_crops(images, n, SIZE, torch.Generator().manual_seed(3), modes))
    assert set(np.unique(mode)) == set(modes)
    for ours, theirs, k in ((image, ref[:, 0], len(images)), (mode, ref[:, 3], 8)):
        a, b = np.bincount(ours, minlength=k), np.bincount(theirs, minlength=k)
        keep = (a + b) > 0
        if keep.sum() > 1:
            assert chi2_contingency(np.stack([a[keep], b[keep]]))[1] > 1e-3
            assert chisquare(a[keep])[1] > 1e-3  # uniform
    for i, im in enumerate(images):
        _, h, w = im.shape
        for ours, theirs, free in ((top, ref[:, 1], h - SIZE + 1), (left, ref[:, 2], w - SIZE + 1)):
            a = np.bincount(ours[image == i], minlength=free)
            b = np.bincount(theirs[ref[:, 0] == i], minlength=free)
            assert len(a) == free  # every position reachable, none outside
            if free > 1:
                assert chisquare(a)[1] > 1e-3 and chi2_contingency(np.stack([a, b]))[1] > 1e-3


def test_crops_are_deterministic_per_seed_and_new_per_batch():
    sampler = PatchSampler(_images(), SIZE)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a1, b1, a2, b2 = sampler(16, g1), sampler(16, g1), sampler(16, g2), sampler(16, g2)
    assert torch.equal(a1, a2) and torch.equal(b1, b2) and not torch.equal(a1, b1)


def test_digits_train_upright_unless_the_spec_says_otherwise(digits):
    """``augment`` none (the default) gives the images as they are; ``flip`` only their flips, never
    a quarter turn; a spec's ``dataset.augment: true`` from before is ``fixed.augment: flip_rotate``."""
    noise = Noise("gaussian", 0.5)
    train = {a.tobytes() for a in digits.train}

    def batches(setting: str) -> torch.Tensor:
        t = Trainer(TrialConfig(width=4, depth=1, latent_dim=4, batch_size=64, augment=setting), digits, noise)
        return torch.cat(list(t._batches()))

    upright = batches("none")
    assert sorted(a.numpy().tobytes() for a in upright) == sorted(a.tobytes() for a in digits.train)
    flipped = batches("flip")
    as_is = sum(a.numpy().tobytes() in train for a in flipped)
    turned = sum(torch.rot90(a, 1, (-2, -1)).numpy().tobytes() in train for a in flipped)
    assert 0.15 < as_is / len(flipped) < 0.35  # a quarter are the identity...
    assert turned <= 0.01 * len(flipped)  # ...and no quarter turns (the few are symmetric digits)


def test_a_spec_from_before_keeps_its_augmentation(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("dataset: {name: sample_photos, augment: true}\nfixed: {arch: conv}\n")
    assert load_spec(path).base_config()["augment"] == "flip_rotate"
    path.write_text("dataset: {name: sample_photos, augment: false}\n")
    assert load_spec(path).base_config()["augment"] == "none"
    path.write_text("dataset: {name: sample_photos, augment: true}\nfixed: {augment: flip}\n")
    with pytest.raises(SpecError, match="give augment once"):
        load_spec(path)
    path.write_text("search: {augment: {choice: [none, sideways]}}\n")
    with pytest.raises(SpecError, match=r"search.augment: .*'none', 'flip' or 'flip_rotate'"):
        load_spec(path)


# --- the trial's clock and its overhead ---------------------------------------------------------

def _photos(val_images: int = 2, val_side: int = 64, patches: int = 64) -> Splits:
    g = np.random.default_rng(0)
    make = lambda k, side: [g.integers(0, 256, (1, side, side), dtype=np.uint8) for _ in range(k)]  # noqa: E731
    return Splits("photos", make(3, 48), make(val_images, val_side), make(1, 32), patch_size=16,
                  patches_per_epoch=patches)


def test_train_seconds_is_the_training_loops_wall_time():
    """On the CPU ``train_seconds`` is the training loop's wall time: all of an epoch but its
    validation (the batches drawn are counted, nothing else is), and ``train_share`` is its share
    of the trial's wall time."""
    config = TrialConfig(width=4, depth=1, latent_dim=4, batch_size=8, residual="pixel", max_epochs=3)
    before, rows = 0.0, []
    for epoch in fit(config, _photos(), Noise("gaussian", 0.1), threads=1):
        m = epoch.metrics
        trained = m["train_seconds"] - before
        before = m["train_seconds"]
        rows.append(m)
        # epoch_seconds = the loop + validation; the loop is train_seconds' increment (to 20 ms: the
        # lines between them, and a busy machine's scheduling).
        assert trained == pytest.approx(m["epoch_seconds"] - m["val_seconds"], abs=2e-2)
        assert 0 < m["train_share"] <= 1 and m["wall_seconds"] >= m["train_seconds"]
    assert [m["epoch"] for m in rows] == [1, 2, 3]  # an epoch budget validates every epoch
    assert rows[-1]["train_share"] == pytest.approx(rows[-1]["train_seconds"] / rows[-1]["wall_seconds"])


def test_under_a_time_budget_validation_waits_until_it_costs_little():
    """A validation set far costlier than an epoch of training: under a budget in seconds, epochs
    are merged until the validation's cost is at most VALIDATION_SHARE of the training since the
    last one; the budget's end is always validated."""
    data = _photos(val_images=6, val_side=256, patches=8)  # one batch of 8 crops an epoch
    config = TrialConfig(width=4, depth=1, latent_dim=4, batch_size=8, residual="pixel", max_epochs=100000,
                         max_train_seconds=1.5)
    rows = [e.metrics for e in fit(config, data, Noise("gaussian", 0.1), threads=1)]
    epochs = [m["epoch"] for m in rows]
    assert epochs[0] == 1 and all(b - a > 1 for a, b in zip(epochs[1:], epochs[2:]))  # merged after the first
    assert rows[-1]["train_seconds"] >= 1.5  # ended by the budget, validated
    total_val = sum(m["val_seconds"] for m in rows[1:])
    assert total_val <= 2 * VALIDATION_SHARE / (1 - VALIDATION_SHARE) * rows[-1]["train_seconds"] + rows[0]["val_seconds"]


def test_a_continued_trial_keeps_its_validation_cadence():
    """A trial continued from its checkpoint in a new ``fit`` (a resume, the race's winner) validates
    its first epoch there, then keeps the validation cost it measured before: the restored cost, not
    that first (in a new process, cold) validation's, sets when the next one comes."""
    data = _photos(val_images=6, val_side=256, patches=8)  # one batch of 8 crops an epoch
    config = TrialConfig(width=4, depth=1, latent_dim=4, batch_size=8, residual="pixel", max_epochs=100000,
                         max_train_seconds=3.0)
    first = list(fit(config, data, Noise("gaussian", 0.1), threads=1, stop_at=1.0))
    assert first[-1].final and 1.0 <= first[-1].metrics["train_seconds"] < 3.0
    buffer = io.BytesIO()
    torch.save(first[-1].checkpoint(), buffer)  # as a checkpoint is written and read back
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["val_cost"] == pytest.approx(min(e.metrics["val_seconds"] for e in first))
    last = first[-1].metrics["epoch"]

    def epochs(checkpoint: dict, n: int) -> list[int]:
        resumed = fit(config, data, Noise("gaussian", 0.1), threads=1, checkpoint=checkpoint)
        return [e.metrics["epoch"] for _, e in zip(range(n), resumed)]

    # A validation measured as nearly free before: every epoch validates, whatever this process's cost.
    assert epochs({**state, "val_cost": 1e-6}, 4) == [last + 1, last + 2, last + 3, last + 4]
    # A checkpoint from before val_cost: this process's own (costly) validation sets the cadence.
    old = epochs({k: v for k, v in state.items() if k != "val_cost"}, 2)
    assert old[0] == last + 1 and old[1] > last + 2
    rows = [e.metrics for e in fit(config, data, Noise("gaussian", 0.1), threads=1, checkpoint=state)]
    assert rows[0]["epoch"] == last + 1 and rows[-1]["train_seconds"] >= 3.0


def test_checkpoints_come_on_a_new_best_at_the_end_and_at_least_every_n_seconds(digits):
    config = TrialConfig(width=4, depth=1, latent_dim=4, batch_size=256, max_epochs=6, lr=3e-2)
    epochs = list(fit(config, digits, Noise("gaussian", 0.5), threads=1))
    best = -math.inf

    def plan(cadence: CheckpointCadence, cost: float) -> list[int]:
        out = []
        for e in epochs:
            if cadence.due(e):
                out.append(e.metrics["epoch"])
                cadence.written(cost)
        return out

    improving = []
    for e in epochs:
        if e.metrics["val_psnr"] > best:
            improving.append(e.metrics["epoch"])
        best = max(best, e.metrics["val_psnr"])
    assert epochs[-1].final and not epochs[0].final
    assert plan(CheckpointCadence(every_s=0), 0.0) == [1, 2, 3, 4, 5, 6]  # 0: every epoch
    # Free writes: every new best, and the last epoch.
    assert plan(CheckpointCadence(every_s=1e6), 0.0) == sorted(set(improving) | {6})
    # Writes that cost far more than the training between them: the first (which measures the cost)
    # and the last epoch only.
    assert plan(CheckpointCadence(every_s=1e6), 1e6) == [1, 6]
    assert CHECKPOINT_SHARE + VALIDATION_SHARE == pytest.approx(0.05)


def test_a_gpu_machine_searching_on_the_cpu_is_told_what_to_set():
    from tuner.search import gpu_hint

    assert gpu_hint(0, 0) is None and gpu_hint(1, 0.25) is None
    line = gpu_hint(1, 0)
    assert "--gpus-per-trial 0.25" in line and "\n" not in line


def test_sample_photos_load_without_augment_argument():
    s = load_dataset("sample_photos", patch_size=32)
    assert s.patch_size == 32 and not hasattr(s, "augment")


def test_a_trial_validates_at_asha_rungs_whatever_it_costs():
    """The costly validation of the test above, with milestones (ASHA's rungs in training seconds):
    the first validation after each milestone comes in the epoch that crosses it."""
    data = _photos(val_images=6, val_side=256, patches=8)
    config = TrialConfig(width=4, depth=1, latent_dim=4, batch_size=8, residual="pixel", max_epochs=100000,
                         max_train_seconds=1.5)
    milestones = (0.3, 0.6, 0.9)
    rows = [e.metrics for e in fit(config, data, Noise("gaussian", 0.1), threads=1, milestones=milestones)]
    seconds = [m["train_seconds"] for m in rows]
    for m in milestones:
        after = min(t for t in seconds if t >= m)
        before = max((t for t in seconds if t < m), default=0.0)
        # The validation right after a milestone came within one epoch of training of it.
        epoch_seconds = max(r["train_seconds"] / r["epoch"] for r in rows)
        assert after - m <= 3 * epoch_seconds + 0.05, (m, before, after)


def test_a_rung_cuts_the_epoch_where_it_falls():
    """Epochs of 32 steps: a milestone (an ASHA rung) ends the epoch at the step that crosses it, so
    trials are judged after the same training seconds to within a step, not an epoch; the budget
    and the epochs after it are untouched."""
    data = _photos(patches=256)
    config = TrialConfig(width=4, depth=1, latent_dim=4, batch_size=8, residual="pixel", max_epochs=100000,
                         max_train_seconds=2.0)
    milestones = (0.4, 0.8, 1.6)
    rows = [e.metrics for e in fit(config, data, Noise("gaussian", 0.1), threads=1, milestones=milestones)]
    seconds = [m["train_seconds"] for m in rows]
    step = max(r["train_seconds"] / (r["samples_seen"] / 8) for r in rows)  # the slowest step's average
    epoch = 32 * step
    for m in milestones:
        after = min(t for t in seconds if t >= m)
        assert after - m <= 2 * step + 0.02 < epoch, (m, after, step)
    assert seconds[-1] >= 2.0 and rows[-1]["samples_seen"] % 8 == 0


def test_the_budgets_rungs_are_rays():
    """BudgetSpec.rungs are the milestones of Ray's own ASHA bracket, to the bit (with the race, below race_seconds)."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    spec = load_spec(Path(__file__).resolve().parents[1] / "search_spaces" / "bsd68.yaml")
    b = spec.budget
    assert b.rungs == pytest.approx([17.4, 52.2, 156.6]) and b.max_t == b.race_seconds == 272.0
    bracket = _Bracket(min_t=b.grace_period, max_t=b.max_t, reduction_factor=b.reduction_factor, s=0)
    assert sorted(m for m, _ in bracket._rungs) == b.rungs
