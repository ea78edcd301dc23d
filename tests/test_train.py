"""Training: real PyTorch on the real digits dataset, one thread, a few epochs at most."""
from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from tuner.data import load_dataset
from tuner.config import TrialConfig
from tuner.metrics import DIVERGED_PSNR, METRIC, MODE, evaluate, psnr_per_image
from tuner.optim import loss_fn, make_optimizer
from tuner.train import Trainer, fit, noisy_baseline

TIMING = ("epoch_seconds", "train_seconds", "val_seconds", "wall_seconds", "train_share", "images_per_second")  # wall-clock: the only metrics allowed to differ


@pytest.fixture(scope="module")
def digits_256():
    """256 training images (8 batches of 32): multi-epoch tests at a fifth of the cost."""
    return load_dataset("digits", limit=256)


def run(config, data, noise, **kwargs) -> list[dict]:
    return [e.metrics for e in fit(config, data, noise, threads=1, **kwargs)]


def comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING}


def test_metric_contract():
    assert (METRIC, MODE, DIVERGED_PSNR) == ("val_psnr", "max", 0.0)


def test_psnr_on_known_errors():
    clean = torch.full((3, 1, 8, 8), 0.5)
    assert psnr_per_image(clean + 0.1, clean).tolist() == pytest.approx([20.0] * 3, abs=1e-4)
    assert psnr_per_image(clean, clean).tolist() == pytest.approx([100.0] * 3)  # capped, not inf


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "rmsprop", "adadelta"])
def test_each_optimizer_trains_an_epoch(digits, eval_noise, tiny_config, optimizer):
    config = tiny_config(optimizer=optimizer, nesterov=True)
    trainer = Trainer(config, digits, eval_noise, threads=1)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    metrics = trainer.train_epoch()
    assert math.isfinite(metrics["train_loss"]) and metrics["diverged"] == 0
    assert math.isfinite(metrics[METRIC]) and metrics[METRIC] > DIVERGED_PSNR
    assert metrics["lr"] == config.lr
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))  # it stepped
    expected = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
                "rmsprop": torch.optim.RMSprop, "adadelta": torch.optim.Adadelta}[optimizer]
    assert type(trainer.optimizer) is expected


def test_optimizer_settings_reach_torch():
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = make_optimizer(TrialConfig(optimizer="sgd", lr=0.1, momentum=0.5, nesterov=True, weight_decay=0.01), params)
    assert sgd.defaults["momentum"] == 0.5 and sgd.defaults["nesterov"] and sgd.defaults["weight_decay"] == 0.01
    # torch refuses Nesterov without momentum; the config asks for it only alongside momentum.
    assert not make_optimizer(TrialConfig(optimizer="sgd", momentum=0.0, nesterov=True), params).defaults["nesterov"]
    assert make_optimizer(TrialConfig(optimizer="rmsprop", momentum=0.3), params).defaults["momentum"] == 0.3


@pytest.mark.parametrize("loss", ["mse", "bce", "l1"])
def test_each_loss_trains_an_epoch(digits, eval_noise, tiny_config, loss):
    (metrics,) = run(tiny_config(loss=loss), digits, eval_noise)
    assert math.isfinite(metrics["train_loss"]) and metrics["train_loss"] > 0
    assert metrics["diverged"] == 0 and math.isfinite(metrics[METRIC])


def test_losses_act_on_logits():
    logits = torch.tensor([[-3.0, 0.0, 2.0, 40.0]], requires_grad=True)
    clean = torch.tensor([[0.0, 0.5, 1.0, 0.0]])
    out = torch.sigmoid(logits)
    assert loss_fn(logits, clean, "mse").item() == pytest.approx(F.mse_loss(out, clean).item())
    assert loss_fn(logits, clean, "l1").item() == pytest.approx(F.l1_loss(out, clean).item())
    # bce on logits is softplus(x) - x * y exactly; BCE on sigmoid(40) == 1.0 in float32 would
    # clamp the last term's log at -100 and lose its gradient.
    bce = loss_fn(logits, clean, "bce")
    expected = (F.softplus(logits) - logits * clean).mean()
    assert bce.item() == pytest.approx(expected.item(), rel=1e-6)
    bce.backward()
    assert logits.grad[0, 3].item() == pytest.approx(1.0 / 4, rel=1e-4)  # (sigmoid(40) - 0) / N


def test_diverged_trial_is_scored_and_stopped(digits, eval_noise, tiny_config):
    # BCE keeps pushing logits without the saturation MSE-on-sigmoid has; with lr=100 and no batch
    # norm they overflow to NaN within the first epoch (checked for seeds 0-7).
    config = tiny_config(optimizer="sgd", lr=100.0, loss="bce", batch_norm=False, max_epochs=3)
    epochs = run(config, digits, eval_noise)
    assert len(epochs) == 1  # fit stops right after the epoch that diverged
    (m,) = epochs
    assert m["diverged"] == 1 and m[METRIC] == DIVERGED_PSNR and m["val_mse"] == 1.0
    assert math.isnan(m["train_loss"])


@pytest.mark.parametrize("case", ["dropout", "plateau"])
def test_resume_matches_an_uninterrupted_run(digits_256, eval_noise, tiny_config, tmp_path, case):
    # Dropping any one part of the checkpoint (global RNG, noise or order generator, scheduler)
    # moves val_psnr by >= 1e-4 dB in at least one case; the tolerance is 1e-6.
    data = digits_256
    if case == "dropout":  # dropout draws from the global RNG, which the checkpoint must carry
        config = tiny_config(dropout=0.3, plateau_patience=2, lr=3e-3, max_epochs=4)
    else:  # a run whose learning rate drops in the resumed half: the scheduler's state matters
        config = tiny_config(dropout=0.2, plateau_patience=1, lr=1e-4, max_epochs=4)
    straight = run(config, data, eval_noise)
    if case == "plateau":
        assert straight[1]["lr"] > straight[3]["lr"], "the config no longer plateaus; pick another"

    first = []
    for epoch in fit(config, data, eval_noise, threads=1):
        first.append(epoch.metrics)
        if epoch.metrics["epoch"] == 2:
            torch.save(epoch.checkpoint(), tmp_path / "ckpt.pt")
            break
    torch.manual_seed(12345)  # a restarted worker's RNG is anywhere; the checkpoint must reset it
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed = fit(config, data, eval_noise, checkpoint=state, threads=1)
    rest = [e.metrics for e in resumed]

    assert [m["epoch"] for m in first + rest] == [1, 2, 3, 4]
    for a, b in zip(straight, first + rest):
        a, b = comparable(a), comparable(b)
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-6), (key, a["epoch"])


def test_end_by_moves_the_schedule_s_end_to_where_training_is_at_the_deadline(digits_256, eval_noise, tiny_config):
    """The search's winner (tuner.search) trains until a wall-clock time, ``end_by``: its
    ``max_train_seconds`` is a first guess, too short or too long, that the trainer re-plans from the
    pace it measures at every validation. It ends by itself, validated, its cosine ended where its
    training did (each epoch reports the schedule's end as ``max_train_seconds``)."""
    for guess in (0.3, 100.0):
        config = tiny_config(max_epochs=100_000, max_train_seconds=guess, lr_schedule="cosine")
        end_by = time.time() + 3.0
        rows = run(config, digits_256, eval_noise, end_by=end_by)
        assert time.time() < end_by + 1.0  # an epoch of 256 digits and its validation: a few hundredths of a second
        assert rows[0]["max_train_seconds"] == guess  # no pace to go by before a second validation
        assert rows[-1]["train_seconds"] > 3 * 0.3  # past the short guess; the long one cut to the time there was
        assert rows[-1]["max_train_seconds"] == pytest.approx(rows[-1]["train_seconds"], rel=0.05)
        assert rows[-1]["lr"] < 0.05 * config.lr
    # Without end_by, max_train_seconds is the budget, whatever the time.
    rows = run(tiny_config(max_epochs=100_000, max_train_seconds=0.3, lr_schedule="cosine"), digits_256, eval_noise)
    assert rows[-1]["train_seconds"] == pytest.approx(0.3, abs=0.1)
    assert {r["max_train_seconds"] for r in rows} == {0.3}
    with pytest.raises(ValueError, match="end_by needs a budget in training seconds"):
        Trainer(tiny_config(), digits_256, eval_noise, end_by=time.time() + 1)


def test_checkpoint_is_a_snapshot(digits_256, eval_noise, tiny_config):
    kept = [(e.checkpoint(), e.trainer.model.state_dict()) for e in
            fit(tiny_config(max_epochs=2), digits_256, eval_noise, threads=1)]
    first, _ = kept[0]
    _, final = kept[1]
    assert first["epoch"] == 1
    assert not all(torch.equal(first["model"][k], final[k]) for k in final)  # epoch 1's weights


def test_same_seed_same_metrics(digits_256, eval_noise, tiny_config):
    config = tiny_config(max_epochs=2, dropout=0.2, noise_level=0.2, noise_level_max=0.6)
    a, b = run(config, digits_256, eval_noise), run(config, digits_256, eval_noise)
    assert [comparable(m) for m in a] == [comparable(m) for m in b]
    other = run(tiny_config(max_epochs=2, dropout=0.2, noise_level=0.2, noise_level_max=0.6, seed=1),
                digits_256, eval_noise)
    assert other[-1][METRIC] != a[-1][METRIC]


def test_every_trial_is_scored_on_the_same_noisy_images(digits, eval_noise, tiny_config):
    # Fair comparison: the validation corruption depends on the experiment, not on the trial.
    a = Trainer(tiny_config(seed=0), digits, eval_noise, eval_seed=7, threads=1)
    b = Trainer(tiny_config(seed=5, noise_kind="mask", noise_level=0.3), digits, eval_noise, eval_seed=7,
                threads=1)
    assert torch.equal(a.val.noisy, b.val.noisy)
    c = Trainer(tiny_config(seed=0), digits, eval_noise, eval_seed=8, threads=1)
    assert not torch.equal(a.val.noisy, c.val.noisy)
    # The score of doing nothing is computed on exactly those inputs.
    assert noisy_baseline(digits, eval_noise, eval_seed=7) == pytest.approx(
        float(psnr_per_image(a.val.noisy, a.val.clean).mean()))


def test_training_beats_the_noisy_input(digits, eval_noise, tiny_config):
    baseline = noisy_baseline(digits, eval_noise)  # ~9.4 dB at gaussian 0.5
    config = tiny_config(width=16, latent_dim=16, lr=3e-3, max_epochs=4)
    epochs = list(fit(config, digits, eval_noise, threads=1))
    scores = [e.metrics[METRIC] for e in epochs]
    # Measured: ~14.4 dB after 4 epochs (seeds 0 and 1), i.e. ~5 dB above the noisy input.
    assert scores[-1] > baseline + 3.0
    assert scores[-1] > scores[0]
    # ``evaluate`` on the trained model reproduces the reported score, image by image.
    trainer = epochs[-1].trainer
    scored = evaluate(trainer.model, trainer.val)
    assert scored["psnr"] == pytest.approx(scores[-1], abs=1e-5)
    assert scored["psnr_per_image"].shape == (len(digits.val),)
    assert 0 < scored["ssim"] <= 1 and scored["mse"] == pytest.approx(epochs[-1].metrics["val_mse"])
