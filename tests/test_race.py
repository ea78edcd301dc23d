"""The winner continues (issue 31): a search with ``budget.time_budget_s`` alone is a race of
``race_share`` of it, whose trials stop at ``race_seconds`` (ASHA's max_t), then the race's best
trial resumes from its checkpoint, as one more Ray Tune experiment (``<run>/winner/``), and trains
for the rest of the budget, its schedule spanning the whole. Real Ray Tune, Optuna, ASHA and
PyTorch on scikit-learn's digits; the judge (:func:`tuner.race.race_winner`) on plain histories."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

import tuner
from tuner.metrics import METRIC, MODE
from tuner.budget import CONTINUE_START_S, TRAINING_SHARE
from tuner.race import (STEEP_DB, TIE_DB, continuation_seconds, is_residual, race_lead, race_winner,
                        warm_start_margin)
from tuner.search import WINNER, latest_checkpoint
from tuner.spec import load_spec

from test_reliability import _Search  # the killed-search helper

RACE_SPEC = {
    "name": "race",
    "seed": 0,
    "dataset": {"name": "digits"},
    "eval_noise": {"kind": "gaussian", "level": 0.3},
    # A race of 0.3 x 50 s whose trials stop at 4 training seconds, then the winner continues. (From
    # time_budget_s alone a race is derived only when it fits Ray's start-up, ~20 s, in its share.)
    "budget": {"time_budget_s": 50, "continue_best": True, "race_seconds": 4, "num_samples": 4,
               "reduction_factor": 2, "max_concurrent": 2, "checkpoint_every_s": 0},
    "resources": {"cpus_per_trial": 1},
    "fixed": {"width": 8, "batch_size": 64, "skip": True, "lr_schedule": "cosine"},
    "search": {"latent_dim": {"choice": [4, 16]}, "lr": {"loguniform": [1.0e-3, 1.0e-2]},
               "loss": {"choice": ["mse", "bce"]}},
    "start_from": [{"latent_dim": 16, "lr": 0.004, "loss": "mse"}],
}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- the judge

def test_the_winner_is_judged_at_the_highest_rung_two_trials_reached():
    """ASHA's comparison: b beat a at 30 s; a's extra training to 90 s does not count."""
    histories = {"a": [(10.2, 20.0), (30.5, 22.0), (90.1, 25.0)], "b": [(10.1, 21.0), (31.0, 23.0)],
                 "c": [(10.3, 24.0)]}
    assert race_winner(histories, [10, 30, 90]) == "b"
    # At the first rung all three are compared: c, stopped there, was best then.
    assert race_winner({k: h[:1] for k, h in histories.items()}, [10, 30, 90]) == "c"


def test_the_value_at_a_rung_is_the_first_validation_past_it():
    histories = {"a": [(5, 10.0), (12, 20.0), (40, 30.0)], "b": [(9, 15.0), (11, 19.0), (40, 29.0)]}
    assert race_winner(histories, [10]) == "a"  # 20.0 at 12 s against 19.0 at 11 s
    assert race_winner(histories, [10, 40]) == "a"  # both reached 40 s: 30.0 against 29.0


def test_a_race_of_one_or_none():
    assert race_winner({"only": [(3, 12.0), (6, 14.0)]}, [10, 30]) == "only"
    assert race_winner({}, [10]) is None
    assert race_winner({"x": [(5, math.nan)], "y": []}, [1]) is None
    assert race_winner({"x": [(5, math.nan)], "y": [(5, 3.0)]}, [1]) == "y"  # a diverged epoch does not count


def test_the_warm_start_keeps_the_lead_unless_a_challenger_clears_its_last_gain():
    # The colour sigma-50 race (bench_versus, 2026-12-05, rungs 14.5, 43.6 and the race's end 75.5 s):
    # a width-16 challenger led the width-24 warm start at every rung, by 0.27 dB at the end, less
    # than the 0.51 dB the warm start gained since 43.6 s; it won, continued, and finished 0.16 dB
    # below the warm start trained alone. The warm start now continues.
    warm = [(4.8, 14.88), (14.6, 23.26), (44.0, 25.34), (75.6, 25.85)]
    challenger = [(4.9, 15.18), (14.6, 23.44), (43.9, 25.67), (75.6, 26.12)]
    rungs = [4.84, 14.52, 43.56, 75.5]
    histories = {"warm": warm, "challenger": challenger}
    assert race_winner(histories, rungs) == "challenger"  # ASHA's judgement alone
    assert race_winner(histories, rungs, incumbents=["warm"]) == "warm"
    rung, lead, margin = race_lead(histories, rungs, "challenger", "warm")  # what the log says of the tie
    assert (rung, lead, margin) == (75.5, pytest.approx(0.27), pytest.approx(0.51))
    # A lead larger than that gain wins (a warm start that is wrong for the task is replaced).
    far = [(t, v + 0.6) for t, v in challenger]
    assert race_winner({"warm": warm, "far": far}, rungs, incumbents=["warm"]) == "far"
    # A warm start that leads wins either way; a warm start that stopped at a lower rung is not
    # compared at the higher one; with several warm starts the best of them is the bar.
    assert race_winner({"warm": challenger, "c": warm}, rungs, incumbents=["warm"]) == "warm"
    assert race_winner({"warm": warm[:2], "c": challenger, "d": [(t, v - 1) for t, v in challenger]},
                       rungs, incumbents=["warm"]) == "c"
    other = [(t, v - 0.1) for t, v in warm]
    assert race_winner({"warm": warm, "warm2": other, "challenger": challenger}, rungs,
                       incumbents=["warm", "warm2"]) == "warm"
    # A warm start with one validation at the rung (none below it to gain from): no margin.
    assert race_winner({"warm": warm[-1:], "challenger": challenger}, rungs, incumbents=["warm"]) == "challenger"


def test_a_lead_past_a_tie_wins_the_race_while_the_warm_start_still_climbs():
    # The race of seed 004's recipe on the digits (benchmarks/versus/digits_bn_notebook.yaml, bench_versus,
    # 2026-12-06 10:34; rungs 1.82, 7.28 and 29.12 s, the race's end 58.1 s): the recipe (a batch-norm conv
    # autoencoder without skips) climbed 3.86 dB over the last rung interval, to 27.56, and a residual
    # U-Net led it there by 3.06 dB, on a curve near its plateau. The margin alone kept the recipe.
    warm = [(1.397, 7.27), (1.828, 7.42), (7.093, 10.35), (7.295, 10.44), (12.166, 13.68), (17.172, 17.78),
            (22.326, 21.2), (27.308, 23.23), (29.135, 23.7), (33.052, 24.98), (36.98, 25.71), (41.056, 26.34),
            (44.991, 26.51), (48.914, 26.57), (53.387, 27.46), (57.343, 27.61), (58.113, 27.56)]
    unet = [(1.849, 24.64), (7.305, 29.16), (24.874, 30.26), (29.138, 30.03), (45.997, 30.62), (58.128, 30.62)]
    rungs = [1.82, 7.28, 29.12, 58.1]
    assert warm_start_margin(warm, 58.1, rungs) > 30.62 - 27.56  # 3.86: what kept the recipe before
    assert race_winner({"w": warm, "u": unet}, rungs, ["w"]) == "u"
    # A lead within TIE_DB is still a tie, however the curves run.
    assert race_winner({"w": warm, "u": [(t, v - 2.6) for t, v in unet]}, rungs, ["w"]) == "w"


def test_a_lead_past_a_tie_is_a_better_model_not_a_faster_start():
    # The race of seed 002's recipe on the digits under 20% impulse noise (benchmarks/versus/conv_notebook.yaml,
    # seed 1, bench_versus, 2026-12-06 16:27; rungs 1.8, 7.2 and 28.8 s, the race's end 57.5 s): a smaller
    # challenger (width 16, latent 32, lr 2.1e-3) led the recipe by 0.75 dB at the end, where the recipe
    # had gained 2.16 dB since 28.8 s. Judged a tie under a 1-dB bar, the recipe continued and scored
    # 24.85 dB; the challenger's configuration trained alone for the whole budget scored 25.96, the
    # recipe alone 25.27. Every lead that was a tie (0.05-0.55 dB) is still one.
    warm = [(1.9, 8.9), (7.3, 10.23), (23.4, 19.36), (28.9, 20.59), (41.7, 22.04), (52.5, 22.52), (57.6, 22.75)]
    challenger = [(0.9, 9.42), (1.8, 10.5), (7.2, 19.57), (12.9, 21.44), (18.4, 22.27), (23.9, 22.39),
                  (28.9, 22.73), (34.0, 22.74), (40.0, 23.17), (45.2, 23.18), (51.2, 23.35), (56.8, 23.44),
                  (57.5, 23.5)]
    rungs = [1.8, 7.2, 28.8, 57.5]
    assert TIE_DB < 23.5 - 22.75 < warm_start_margin(warm, 57.5, rungs)
    assert race_winner({"w": warm, "c": challenger}, rungs, ["w"]) == "c"
    assert race_winner({"w": warm, "c": [(t, v - 0.2) for t, v in challenger]}, rungs, ["w"]) == "w"  # 0.55


def _stopped_at(scheduler, config: dict, history: list[tuple[float, float]]):
    """Where ``scheduler`` (a :class:`tuner.scheduler.WarmStartASHA`) stops a new trial of ``config`` fed
    ``history`` as ``(train_seconds, val_psnr)`` results; None: it ran through all of them."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    trial = Trial("trainable", config=config, stub=True)
    scheduler.on_trial_add(None, trial)
    for t, v in history:
        if scheduler.on_trial_result(None, trial, {"train_seconds": t, METRIC: v}) == TrialScheduler.STOP:
            return t
    return None


def test_a_lead_on_a_steep_curve_is_no_tie():
    """The race of seed 002's recipe on the digits under impulse noise (benchmarks/versus/conv_notebook.yaml,
    seed 1, bench_versus, 2026-12-06 19:05; rungs 1.8, 7.2, 28.8 s, the race's end 57.9): a skip +
    batch-norm model with l1 led the recipe by 0.59 dB at 7.2 training seconds, where the recipe had
    gained 5.18 since the first rung. ASHA promoted it; the rule stopped it as a tie. Trained on alone
    (tuner.fit, 2026-12-07) it scored 25.71 dB at 54 s, where the race's winner, trained so too, scored 24.36: no tie
    at a rung where the warm start climbs more than STEEP_DB, and a challenger behind it still is one."""
    from tuner.scheduler import WarmStartASHA

    start_from = [{"width": 32, "latent_dim": 64, "skip": False, "batch_norm": False, "lr": 1e-3, "loss": "bce"}]
    scheduler = WarmStartASHA(start_from, [1.8, 7.2, 28.8], time_attr="train_seconds", metric=METRIC, mode="max",
                              max_t=57.9, grace_period=1.8, reduction_factor=3)

    def feed(config, history):
        return _stopped_at(scheduler, config, history)

    assert feed(start_from[0], [(1.7, 8.23), (1.8, 8.87), (7.3, 14.05), (15.1, 19.75), (22.7, 21.36)]) is None
    stuck = {**start_from[0], "loss": "l1"}  # at an all-black output's score: ASHA stops it
    assert feed(stuck, [(1.8, 9.88), (7.3, 9.88)]) == 7.3
    skip_bn = {"width": 16, "latent_dim": 16, "skip": True, "batch_norm": True, "lr": 2.2e-3, "loss": "l1"}
    # (Its first report past 1.82 s, the first rung, was at 7.3 s: ASHA judged it at the second only.)
    assert feed({**skip_bn, "lr": 1e-3}, [(1.2, 7.5), (7.3, 13.9)]) == 7.3  # behind by 0.15: a tie, stopped
    assert feed(skip_bn, [(1.2, 7.51), (7.3, 14.64)]) is None  # ahead by 0.59: it runs on
    # Where the recipe had gained no more than STEEP_DB, the same lead is a tie.
    scheduler = WarmStartASHA(start_from, [1.8, 7.2, 28.8], time_attr="train_seconds", metric=METRIC, mode="max",
                              max_t=57.9, grace_period=1.8, reduction_factor=3)
    assert feed(start_from[0], [(1.8, 12.87), (7.3, 14.05)]) is None
    assert feed(skip_bn, [(1.2, 7.51), (7.3, 14.64)]) == 7.3


# The headline race (bsd68.yaml, bench_versus, 2026-12-05 08:41; rungs 18.3, 54.9, 164.7 s, the race's
# end 285 s): the warm start, then a width-32 challenger that ASHA promoted to the end, tying it.
HEADLINE_RUNGS = [18.3, 54.9, 164.7]
HEADLINE_WARM = [(7, 20.41), (18.3, 24.83), (34, 25.87), (51, 26.24), (55, 26.20), (72, 26.43), (87, 26.62),
                 (101, 26.78), (114, 26.84), (129, 26.91), (142, 26.97), (155, 26.94), (165, 27.05),
                 (178, 27.00), (204, 27.17), (230, 27.17), (254, 27.25), (280, 27.30), (285, 27.28)]
HEADLINE_CHALLENGER = [(12, 21.23), (18.4, 25.12), (43, 26.29), (55, 26.64), (79, 26.83), (105, 26.95),
                       (130, 27.08), (153, 27.18), (165, 27.12), (188, 27.26), (213, 27.24), (239, 27.29),
                       (264, 27.35), (285, 27.42)]


def test_the_rung_rule_stops_a_challenger_that_ties_the_warm_start():
    """WarmStartASHA (Ray Tune's ASHA with the warm start's lead): the headline's challenger led by
    0.44 dB at the 54.9-s rung, where the warm start had gained 1.37 since 18.3 s: stopped there,
    not 230 training seconds later at the race's end, where race_winner would not have chosen it."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from tuner.scheduler import WarmStartASHA

    start_from = [{"width": 16, "latent_dim": 128, "lr": 1.0e-3, "loss": "mse"}]
    scheduler = WarmStartASHA(start_from, HEADLINE_RUNGS, time_attr="train_seconds", metric=METRIC, mode="max",
                              max_t=285.0, grace_period=18.3, reduction_factor=3)
    warm = Trial("trainable", config={**start_from[0], "depth": 3}, stub=True)
    challenger = Trial("trainable", config={"width": 32, "latent_dim": 64, "lr": 5.9e-4, "loss": "mse", "depth": 3},
                       stub=True)
    for trial in (warm, challenger):
        scheduler.on_trial_add(None, trial)

    def feed(trial, history):
        for t, v in history:
            action = scheduler.on_trial_result(None, trial, {"train_seconds": t, METRIC: v})
            if action == TrialScheduler.STOP:
                return t
        return None

    assert feed(warm, HEADLINE_WARM[:-1]) is None  # the warm start runs through every rung
    assert feed(challenger, HEADLINE_CHALLENGER) == 55  # first past 54.9 s
    # A challenger far ahead (a warm start wrong for the task) is not stopped by the rule.
    far = Trial("trainable", config={"width": 24, "latent_dim": 64, "lr": 1.5e-3, "loss": "mse", "depth": 3}, stub=True)
    scheduler.on_trial_add(None, far)
    assert feed(far, [(t, v + 1.5) for t, v in HEADLINE_CHALLENGER[:-1]]) is None
    # Judged at the end the same way: the tie does not win; the far one does.
    rungs = [*HEADLINE_RUNGS, 285.0]
    assert race_winner({"w": HEADLINE_WARM, "c": HEADLINE_CHALLENGER}, rungs, ["w"]) == "w"
    assert race_winner({"w": HEADLINE_WARM, "c": HEADLINE_CHALLENGER}, rungs) == "c"  # ASHA's judgement alone


# The photos_notebook race, seed 1 (bench_versus's spec, 2026-12-05 16:26; 10% impulse noise, the noisy
# validation images at 18.33 dB; rungs 4.36, 13.08, 39.24 s, the race's end 67.9 s): the warm start, a
# plain autoencoder, then a residual U-Net that ASHA stopped at 13 s, still at the noisy input. Its later
# points: the same U-Net without batch norm trained by itself (tuner.fit, the race's schedule), which sat
# there to 25 s and scored 32.1 at 70 s.
PHOTOS_RUNGS = [4.36, 13.08, 39.24]
PHOTOS_IDENTITY = 18.33
PHOTOS_WARM = [(4.2, 13.98), (4.4, 14.11), (13.1, 20.21), (39.3, 24.21), (68.0, 22.19)]
PHOTOS_UNET = [(4.5, 17.31), (13.2, 18.19), (25.0, 18.38), (39.1, 20.19), (50.0, 21.69), (60.1, 29.19), (68.1, 31.93)]


def _photos_race(identity_psnr, restored_from=None, warm=PHOTOS_WARM, residual="none"):
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from tuner.scheduler import WarmStartASHA

    start_from = [{"width": 32, "skip": False, "residual": residual, "loss": "mse"}]
    scheduler = WarmStartASHA(start_from, PHOTOS_RUNGS, identity_psnr=identity_psnr, max_hedged=1,
                              time_attr="train_seconds", metric=METRIC, mode="max", max_t=67.9,
                              grace_period=4.36, reduction_factor=3)

    def add(**config):
        trial = Trial("trainable", config={**start_from[0], **config}, stub=True)
        scheduler.on_trial_add(None, trial)
        return trial

    def feed(trial, history):
        """Where the scheduler stops ``trial`` (None: it ran through ``history``)."""
        for t, v in history:
            if scheduler.on_trial_result(None, trial, {"train_seconds": t, METRIC: v}) == TrialScheduler.STOP:
                return t
        return None

    if restored_from is not None:  # a resumed race: Tune restores its scheduler from the run's snapshot
        scheduler.restore(restored_from)
        return add, feed, scheduler
    assert feed(add(), warm) == warm[-1][0]  # the warm start runs to the race's end (ASHA's max_t)
    return add, feed, scheduler


def test_a_residual_challenger_still_at_the_noisy_input_is_judged_at_the_race_end(tmp_path):
    add, feed, scheduler = _photos_race(PHOTOS_IDENTITY)
    unet = {"skip": True, "residual": "pixel", "loss": "l1"}
    hedged = add(**unet)
    assert feed(hedged, PHOTOS_UNET[:3]) is None  # hedged at 13 s
    scheduler.save(str(tmp_path / "scheduler.pkl"))  # the race is interrupted and resumed here
    add, feed, _ = _photos_race(PHOTOS_IDENTITY, restored_from=str(tmp_path / "scheduler.pkl"))
    assert feed(hedged, PHOTOS_UNET[3:]) == 68.1  # still hedged: it runs to the race's end
    assert race_winner({"w": PHOTOS_WARM, "u": PHOTOS_UNET}, [*PHOTOS_RUNGS, 67.9], ["w"]) == "u"
    # One hedge per trial running at once: a second such challenger is stopped where ASHA stops it.
    assert feed(add(**unet, lr=0.002), PHOTOS_UNET) == 13.2
    # A plain autoencoder there has no identity to leave (it starts from nothing): stopped.
    add2, feed2, _ = _photos_race(PHOTOS_IDENTITY)
    assert feed2(add2(loss="l1"), PHOTOS_UNET) == 13.2
    # A residual challenger that has left the noisy input (by more than IDENTITY_DB) is judged as any other.
    assert feed2(add2(**unet), [(t, v + 1.2) for t, v in PHOTOS_UNET]) == 13.2


def test_a_hedged_challenger_that_falls_back_is_stopped():
    """The photo recipe's seed 3 (bench_versus, 2026-12-07, a 2-core AMD EPYC, twice): a residual model
    (depth 3, batch norm, batches of 32) under the warm start and the noisy input at the first rung,
    judged at the second, hedged there, then lost ground and sat under the noisy input to the race's
    end, 53 of its 66 training seconds. A hedge bets on a model about to leave the noisy input; one
    that scores less a rung interval later has not begun to, and is stopped there."""
    dud = {"skip": False, "residual": "pixel", "loss": "mse", "depth": 3, "batch_size": 32}
    for first, second, third in ((10.35, 17.48, 17.19), (10.47, 17.35, 15.91)):
        add, feed, _ = _photos_race(PHOTOS_IDENTITY)
        assert feed(add(**dud), [(4.4, first), (13.1, second), (39.3, third), (68.0, 16.34)]) == 39.3
    # One sitting at the noisy input (within FALLBACK_DB of where it was) is still on the bet, as is one
    # that climbs (PHOTOS_UNET: 18.19 at the second rung, 20.19 at the third).
    add, feed, _ = _photos_race(PHOTOS_IDENTITY)
    assert feed(add(**dud), [(4.4, 10.35), (13.1, 18.30), (39.3, 18.25), (68.0, 18.4)]) == 68.0  # the race's end
    add, feed, _ = _photos_race(PHOTOS_IDENTITY)
    assert feed(add(**dud), [(4.4, 10.35), *PHOTOS_UNET[1:]]) == 68.1
    # One hedged at the first rung (above the warm start there), past the noisy input by the third:
    # a few tenths lost there is a rung's noise on a model that has left it, not a fall back.
    add, feed, _ = _photos_race(PHOTOS_IDENTITY)
    assert feed(add(loss="l1"), [(4.4, 19.3)]) is None  # raises ASHA's first-rung cutoff over 17.31
    assert feed(add(**dud), [(4.4, 17.31), (13.1, 21.9), (39.3, 21.5), (68.0, 26.0)]) == 68.0


def test_no_hedge_without_the_noisy_input_score():
    add, feed, _ = _photos_race(None)  # what make_scheduler gives without a race's warm start
    assert feed(add(skip=True, residual="pixel"), PHOTOS_UNET) == 13.2
    add, feed, _ = _photos_race(None)
    assert feed(add(loss="l1"), [(4.4, 19.3)]) is None
    assert feed(add(skip=True, residual="pixel"), [(4.5, 16.2)]) == 4.5


def test_the_first_rung_hedges_a_residual_challenger_only_beside_a_plain_warm_start():
    """The photo recipe's seed 1 (bench_versus, 2026-12-05 22:18 and 22:34): its U-Net (batch norm,
    residual, l1, batches of 128) scored 16.2 dB at the first rung (4.5 s), under the noisy input's
    18.33 and under ASHA's cutoff there (another challenger had scored 18.9), but above the warm start
    (a plain autoencoder, 15.9), and was stopped; trained on by itself it scored 32.03 dB at 130 s,
    where the warm start reached 26.84 at 188 s. A plain warm start shows nothing of how soon a
    residual model leaves the identity."""
    add, feed, _ = _photos_race(PHOTOS_IDENTITY)
    assert feed(add(loss="l1"), [(4.4, 19.3)]) is None  # a plain challenger raises ASHA's cutoff to 17.57
    unet = {"skip": True, "residual": "pixel", "loss": "l1", "batch_size": 128}
    assert feed(add(**unet), [(4.5, 16.2), *PHOTOS_LATE_1[1:]]) == 68.3  # hedged: it runs to the race's end
    # One hedge per trial running at once: the next is judged as a plain model, at the next rung (the
    # warm start is under the noisy input at the first: WarmStartASHA._defer).
    assert feed(add(**unet, lr=0.002), [(4.5, 15.9), (13.1, 17.0)]) == 13.1
    # One under the warm start there (a plain model a few seconds into its own start) has not begun to
    # learn the identity back: not hedged there, judged at the next rung; still at the noisy input
    # there, it is hedged (seed 3, 2026-12-06: 13.9 dB under the warm start's 16.8, then 17.45; it sat
    # at the noisy input to the race's end), as the U-Net that wins seed 1 is (2026-12-07: 15.54 dB
    # under the warm start's 17.11, then 17.95): at the second rung the two look alike.
    add, feed, _ = _photos_race(PHOTOS_IDENTITY, warm=[(4.4, 16.8), *PHOTOS_WARM[2:]])
    assert feed(add(loss="l1"), [(4.4, 19.3)]) is None
    assert feed(add(**{**unet, "skip": False}, depth=3), [(4.4, 13.9), (13.2, 17.45), (39.5, 17.79), (68.3, 17.67)]) == 68.3
    # One that has left the noisy input (by more than IDENTITY_DB) is judged as any other.
    add, feed, _ = _photos_race(PHOTOS_IDENTITY)
    assert feed(add(loss="l1"), [(4.4, 25.0)]) is None
    assert feed(add(**unet), [(4.4, 19.5)]) == 4.4
    # Past the first rung, one far below the noisy input (it makes the images worse) is judged as any other.
    assert feed(add(**unet, lr=0.003), [(4.4, 22.0), (13.1, 16.0)]) == 13.1
    # Beside a residual warm start none is hedged at the first rung: the warm start is at the identity
    # there too, and shows by the next rung how soon this family leaves it; one is judged there.
    add, feed, _ = _photos_race(PHOTOS_IDENTITY, residual="pixel")
    assert feed(add(loss="l1"), [(4.4, 19.3)]) is None
    assert feed(add(**unet), [(4.5, 16.2), (13.1, 17.0)]) == 13.1


# The race of seed 002's recipe on the digits under impulse noise (benchmarks/versus/conv_notebook.yaml,
# seed 1, bench_versus, 2026-12-07 00:34; the noisy validation images at 12.03 dB; rungs 1.81, 7.24,
# 29.0 s, the race's end 57.8, a reduction factor of 4): the warm start first, under the noisy input at
# the first rung as 10 of the 11 challengers were.
CONV_RUNGS = [1.81, 7.24, 29.0]
CONV_IDENTITY = 12.03
CONV_WARM = [(1.71, 8.23), (1.84, 8.6), (7.25, 13.48), (16.43, 20.02), (24.44, 21.57), (28.99, 22.01),
             (37.28, 22.48), (45.13, 22.78), (52.95, 22.98), (57.83, 23.16)]
CONV_SKIP_BN = [(1.35, 7.51), (1.85, 8.13)]  # skip + batch norm, l1: stopped there by ASHA


def test_a_first_rung_where_no_model_denoises_yet_stops_no_one():
    """The skip + batch-norm l1 model that ASHA stopped at the first rung, 0.47 dB under the warm start
    where neither had reached the noisy input, trained alone on the race's schedule scored 25.71 dB at
    54 s (2026-12-06), where the race's winner scored 24.36: the rung ranked how fast models begin, not
    where they go. Where neither it nor the warm start has reached the noisy input there, a challenger
    is judged at the next rung instead; where the warm start has, ASHA's screening stands."""
    from tuner.scheduler import WarmStartASHA

    start_from = [{"width": 32, "latent_dim": 64, "skip": False, "batch_norm": False, "lr": 1e-3, "loss": "bce"}]
    skip_bn = {"width": 16, "latent_dim": 16, "skip": True, "batch_norm": True, "lr": 2.25e-3, "loss": "l1"}

    def race(warm, identity_psnr=CONV_IDENTITY):
        scheduler = WarmStartASHA(start_from, CONV_RUNGS, identity_psnr=identity_psnr, time_attr="train_seconds",
                                  metric=METRIC, mode="max", max_t=57.8, grace_period=1.81, reduction_factor=4)
        assert _stopped_at(scheduler, start_from[0], warm) == warm[-1][0]  # ASHA's max_t: the race's end
        return lambda config, history: _stopped_at(scheduler, config, history)

    run = race(CONV_WARM)
    assert run(skip_bn, CONV_SKIP_BN) is None
    # Judged at the next rung: there it is no better than an all-black output (9.88 dB), and stopped.
    assert run(skip_bn, [*CONV_SKIP_BN, (7.3, 9.88)]) == 7.3
    # Where the warm start had reached the noisy input at the first rung, or its score is unknown, ASHA stops it there.
    assert race([(1.84, 12.5), *CONV_WARM[2:]])(skip_bn, CONV_SKIP_BN) == 1.85
    assert race(CONV_WARM, identity_psnr=None)(skip_bn, CONV_SKIP_BN) == 1.85
    # As it does one that has reached the noisy input there and is under ASHA's cutoff.
    run = race(CONV_WARM)
    for config, first in ((skip_bn, 15.0), ({**skip_bn, "lr": 3e-3}, 16.0), ({**skip_bn, "lr": 4e-3}, 17.0)):
        assert run(config, [(1.82, first)]) is None
    assert run({**skip_bn, "lr": 1e-3}, [(1.82, 12.2)]) == 1.82


def test_the_race_s_plan_pays_for_judging_at_the_next_rung():
    """Judging a challenger at the next rung costs it one more rung interval; once the race has trained
    what its plan holds (``budget.race_train_s``), ASHA's first rung stands again, so that trials not yet
    started are drawn and screened before the race's limit cuts them."""
    from tuner.budget import BudgetSpec
    from tuner.scheduler import WarmStartASHA

    # conv_notebook.yaml's budget in that run (bench_versus gave tuner 582 s of its 10 minutes)
    b = BudgetSpec(time_budget_s=582, num_samples=12, reduction_factor=4, max_concurrent=1)
    assert b.rungs == pytest.approx(CONV_RUNGS, abs=0.05) and b.race_seconds == 57.8
    assert b.race_train_s == pytest.approx(0.965 * 0.3 * 582 - 20 - 12 * 3)  # 112.5 s: its wall less start-ups
    assert BudgetSpec(time_budget_s=560, num_samples=12, max_concurrent=3).race_train_s == pytest.approx(
        3 * (0.965 * 0.3 * 560 - 20 - 4 * 3))  # each slot's
    assert BudgetSpec(time_budget_s=560, continue_best=False).race_train_s is None

    start_from = [{"width": 32, "latent_dim": 64, "skip": False, "batch_norm": False, "lr": 1e-3, "loss": "bce"}]
    scheduler = WarmStartASHA(start_from, b.rungs, identity_psnr=CONV_IDENTITY, time_attr="train_seconds",
                              metric=METRIC, mode="max", max_t=b.race_seconds, grace_period=b.grace_period,
                              reduction_factor=b.reduction_factor, plan_train_s=b.race_train_s)
    assert _stopped_at(scheduler, start_from[0], CONV_WARM) == 57.83  # 57.8 of the plan's 112.5 s
    spent = 57.83
    for k in range(7):  # seven challengers judged at the next rung, and stopped there: 7.3 s each
        config = {"width": 16, "latent_dim": 16, "skip": True, "batch_norm": True, "lr": 1e-3 + k * 1e-4, "loss": "l1"}
        assert _stopped_at(scheduler, config, [(1.35, 7.51), (1.85, 8.4), (7.3, 9.88 - 0.1 * k)]) == 7.3
        spent += 7.3
    assert spent + 1.85 + (7.24 - 1.85) > b.race_train_s  # the eighth no longer fits in the plan: stopped where ASHA stops it
    skip_bn = {"width": 16, "latent_dim": 16, "skip": True, "batch_norm": True, "lr": 2.25e-3, "loss": "l1"}
    assert _stopped_at(scheduler, skip_bn, CONV_SKIP_BN) == 1.85


# The impulse_bsd68 race, seed 0 (bench_versus, 2026-12-06 04:36, a 2-core AMD EPYC; 20% impulse noise, the
# noisy validation images at 15.65 dB; rungs 4.83, 14.5, 43.5 s, the race's end 75.4): the warm start is a
# residual U-Net itself (mse) and had left the noisy input by 14.5 s; an l1 U-Net with a low learning rate
# was still there, was hedged, lost the race (25.78 against 26.09) and, as a late starter, scored 26.77 at
# 151 s, under the winner's bar of 27.27: 145 of the search's 554 s for nothing.
IMPULSE_RUNGS = [4.83, 14.5, 43.5]
IMPULSE_IDENTITY = 15.65
IMPULSE_WARM = [(4.9, 15.57), (14.54, 22.52), (24.18, 23.6), (43.56, 25.21), (62.7, 25.86), (75.41, 26.09)]
IMPULSE_L1 = [(4.86, 15.72), (14.52, 15.68), (32.13, 16.14), (43.67, 21.99), (63.41, 25.57), (75.53, 25.78)]


def test_no_hedge_where_a_residual_warm_start_has_left_the_noisy_input():
    from tuner.scheduler import WarmStartASHA

    def race(warm_config, warm_history):
        start_from = [{"width": 16, "latent_dim": 128, "lr": 1.0e-3, "loss": "mse"}]
        scheduler = WarmStartASHA(start_from, IMPULSE_RUNGS, identity_psnr=IMPULSE_IDENTITY, max_hedged=1,
                                  time_attr="train_seconds", metric=METRIC, mode="max", max_t=75.4,
                                  grace_period=4.83, reduction_factor=3)

        def run(config, history):
            return _stopped_at(scheduler, config, history)

        assert run({**start_from[0], **warm_config}, warm_history) == warm_history[-1][0]
        return run

    unet = {"residual": "pixel", "skip": True}
    l1 = {**unet, "width": 24, "latent_dim": 128, "lr": 5.6e-4, "loss": "l1"}
    # The warm start, a residual U-Net at 22.52 dB at the second rung, has shown how soon this family
    # leaves the noisy input here: the l1 U-Net still there is stopped where ASHA stops it.
    run = race(unet, IMPULSE_WARM)
    assert run(l1, IMPULSE_L1) == 14.52
    # A plain autoencoder warm start shows nothing of the sort: the l1 U-Net is hedged, as on photos.
    run = race({"residual": "none", "skip": False}, IMPULSE_WARM)
    assert run(l1, IMPULSE_L1) == 75.53
    # Nor does a residual warm start itself still at the noisy input there.
    run = race(unet, [(4.9, 15.57), (14.54, 16.2), (43.56, 24.0), (75.41, 26.09)])
    assert run(l1, IMPULSE_L1) == 75.53


# The impulse_bsd68 race, seed 0 (bench_versus, 2026-12-06 19:36 on the 2-core Xeon; the noisy validation
# images at 15.65 dB; rungs 4.88, 14.64, 43.92 s, the race's end 76.1 s): the space fixes residual U-Nets.
# At the first rung all five trials were within 0.46 dB of the noisy input, and ASHA stopped the three l1
# ones there; the one it let through (mse) was 1.04 dB under the warm start at the second rung.
IMPULSE_0_RUNGS = [4.88, 14.64, 43.92]
IMPULSE_0_WARM = [(4.93, 15.88), (14.67, 23.07), (28.02, 24.31), (43.46, 25.14), (63.34, 26.02), (76.16, 26.53)]
IMPULSE_0_CHALLENGERS = [  # in the order they ran: configuration, validations
    ({"width": 24, "latent_dim": 256, "lr": 9.17e-4, "loss": "l1"}, [(4.91, 15.62)]),
    ({"width": 24, "latent_dim": 128, "lr": 5.64e-4, "loss": "l1"}, [(4.94, 15.67)]),
    ({"width": 32, "latent_dim": 64, "lr": 5.89e-4, "loss": "mse"}, [(4.91, 16.11), (14.67, 22.03)]),
    ({"width": 16, "latent_dim": 128, "lr": 1.1e-3, "loss": "l1"}, [(4.89, 15.68)]),
]


def test_the_first_rung_ranks_residual_models_still_at_the_noisy_input():
    """A rung where every trial is a residual model still at the noisy input ranks a few tenths of a dB
    of start; it was measured whether that ranks anything (2026-12-06 22:20-22:40, the rung letting such
    trials through to the next): on this task the three l1 U-Nets were still at the noisy input at the
    second rung (15.69-16.02 dB, where the warm start scored 23.07), and on colour sigma 50 the first
    rung's order held at the second for the best of five (14.92 then 22.0 dB); the 30-50 training seconds
    it cost the races left the search 0.11-0.26 dB lower than before. ASHA's first rung stands."""

    from tuner.scheduler import WarmStartASHA

    unet = {"depth": 3, "skip": True, "residual": "pixel"}
    start_from = [{"width": 16, "latent_dim": 128, "lr": 1.0e-3, "loss": "mse"}]
    scheduler = WarmStartASHA(start_from, IMPULSE_0_RUNGS, identity_psnr=IMPULSE_IDENTITY, max_hedged=1,
                              time_attr="train_seconds", metric=METRIC, mode="max", max_t=76.1,
                              grace_period=4.88, reduction_factor=3)

    def run(config, history):
        return _stopped_at(scheduler, {**unet, **config}, history)

    assert run(start_from[0], IMPULSE_0_WARM) == 76.16  # the warm start runs to the race's end
    assert [run(config, history) for config, history in IMPULSE_0_CHALLENGERS] == [4.91, 4.94, 14.67, 4.89]


def test_residual_true_and_false_are_logit_and_none():
    """The quickstart's space still searches ``residual: [false, true]`` (tuner.config reads them as none
    and logit): a model with ``residual: false`` starts from nothing, not as the identity."""
    assert not is_residual({"residual": False}) and not is_residual({"residual": "none"}) and not is_residual({})
    assert is_residual({"residual": True}) and is_residual({"residual": "logit"}) and is_residual({"residual": "pixel"})


# The photos_notebook race, seed 2 (2026-12-05 17:38): the warm start, and a skip U-Net without a
# residual (width 32, depth 3, l1) that led it by 2.09 dB at 4.4 s and 2.13 at 13 s, where the warm start
# had gained 4.13 since the first rung. Its later points: the same configuration trained by itself on the
# race's schedule (tuner.fit).
PHOTOS_WARM_2 = [(2.9, 13.52), (4.4, 17.08), (13.1, 21.21), (39.3, 24.15), (68.1, 24.57)]
PHOTOS_SKIP_2 = [(4.4, 19.17), (13.1, 23.34), (39.2, 27.11), (68.1, 27.79)]


def test_a_challenger_well_ahead_in_mid_race_is_judged_at_the_race_end():
    """The warm start's margin in mid-race stops ties only: a challenger ahead by more than TIE_DB
    runs on, however steeply the warm start climbs, and the race's end judges it with the full margin
    (there the warm start gained 0.42 dB over the last interval; the U-Net leads by 3.2)."""
    add, feed, _ = _photos_race(None, warm=PHOTOS_WARM_2)
    # Ahead by 0.49 dB at 13 s, within TIE_DB, but where the warm start gained 4.13 (more than STEEP_DB):
    # no tie in mid-race, ASHA's to judge (it promotes it).
    assert 21.7 - 21.21 <= TIE_DB and STEEP_DB < 21.21 - 17.08
    assert feed(add(width=16, loss="l1"), [(4.4, 17.2), (13.1, 21.7)]) is None
    # Ahead by 0.79 dB there, as this race's width-16 l1 challenger was: past a tie, it runs on.
    assert feed(add(width=16, loss="l1"), [(4.4, 17.2), (13.1, 22.0)]) is None
    # The U-Net, ahead by 2.13 dB there, runs to the race's end (ASHA's max_t) and wins it.
    assert feed(add(skip=True, depth=3, loss="l1"), PHOTOS_SKIP_2) == 68.1
    rungs = [*PHOTOS_RUNGS, 67.9]
    assert race_winner({"w": PHOTOS_WARM_2, "u": PHOTOS_SKIP_2}, rungs, ["w"]) == "u"
    # Behind the warm start: ASHA's own screening or the rule, as before.
    assert feed(add(width=16, lr=3.0e-4), [(4.4, 18.0), (13.1, 19.0)]) == 13.1


# The photos_notebook race, seed 1 (bench_versus, 2026-12-05 20:34; the noisy validation images at 18.33 dB;
# rungs 4.38, 13.14, 39.4 s, the race's end 68.3): the warm start, a plain autoencoder, won it against a
# batch-norm residual U-Net hedged at 13 s, still at the noisy input. The U-Net's later points: the same
# configuration trained by itself on the race's schedule (tuner.fit, 2026-12-05 22:20), which left the
# noisy input between 68 and 130 training seconds.
PHOTOS_RUNGS_1 = [4.38, 13.14, 39.4, 68.3]
PHOTOS_WARM_1 = [(3.0, 13.64), (4.4, 15.44), (13.2, 20.38), (39.4, 22.12), (68.4, 24.92)]
PHOTOS_LATE_1 = [(4.5, 16.96), (13.2, 18.38), (39.4, 20.52), (68.3, 21.04)]
PHOTOS_LATE_1_ON = [(80.0, 23.9), (100.0, 27.82), (130.0, 32.03), (150.1, 31.13)]


def test_a_late_starter_that_lost_the_race_is_found_and_judged_after_one_more_interval():
    from tuner.race import IDENTITY_DB, late_start_bar, late_starter, value_at

    unet = {"residual": "pixel", "skip": True}
    histories = {"w": PHOTOS_WARM_1, "u": PHOTOS_LATE_1, "p": [(4.4, 16.0), (13.2, 18.5), (39.4, 19.0), (68.3, 20.5)],
                 "s": [(4.4, 17.0), (13.2, 18.0)]}  # stopped at the second rung: it did not run the race
    configs = {"w": {"residual": "none"}, "u": unet, "p": {"residual": "none"}, "s": unet}
    assert race_winner(histories, PHOTOS_RUNGS_1, ["w"]) == "w"
    # The U-Net: residual, within IDENTITY_DB of the noisy input at the second rung, ran to the end, lost.
    assert abs(PHOTOS_LATE_1[1][1] - PHOTOS_IDENTITY) <= IDENTITY_DB
    assert late_starter(histories, configs, PHOTOS_RUNGS_1, "w", PHOTOS_IDENTITY) == "u"
    # Not the winner itself, nor a plain autoencoder there (it starts from nothing, not from the identity),
    # nor any without the noisy input's score or without a rung between the first and the race's end.
    assert late_starter(histories, configs, PHOTOS_RUNGS_1, "u", PHOTOS_IDENTITY) is None
    assert late_starter(histories, {**configs, "u": {"residual": "none"}}, PHOTOS_RUNGS_1, "w", PHOTOS_IDENTITY) is None
    assert late_starter(histories, configs, PHOTOS_RUNGS_1, "w", None) is None
    assert late_starter(histories, configs, [4.38, 68.3], "w", PHOTOS_IDENTITY) is None
    # One hedged at the first rung and still under the noisy input at the second (batch norm) is one too.
    under = {**histories, "u": [(4.5, 16.2), (13.2, 16.9), *PHOTOS_LATE_1[2:]]}
    assert late_starter(under, configs, PHOTOS_RUNGS_1, "w", PHOTOS_IDENTITY) == "u"
    # One still at the noisy input (or under it) at the race's end shows no sign of leaving it: none.
    stuck = {**histories, "u": [(4.4, 13.9), (13.2, 17.45), (39.5, 17.79), (68.3, 17.67)]}
    assert late_starter(stuck, configs, PHOTOS_RUNGS_1, "w", PHOTOS_IDENTITY) is None
    # One it has left (by more than IDENTITY_DB at the second rung) is judged as any other.
    left = {**histories, "u": [(t, v + 1.5) for t, v in PHOTOS_LATE_1]}
    assert late_starter(left, configs, PHOTOS_RUNGS_1, "w", PHOTOS_IDENTITY) is None
    # The bar at twice the race: the warm start's 24.92 plus its last gain (2.80 dB from 39.4 to 68.3 s)
    # carried on per doubling of training, 28.45 (it scored 25.17 at 72 s and 26.84 at 188 s when it went on).
    until = 2 * 68.3
    bar = late_start_bar(PHOTOS_WARM_1, PHOTOS_RUNGS_1, until)
    assert bar == pytest.approx(24.92 + 2.80 * math.log(2) / math.log(68.3 / 39.4), abs=0.01)
    # The U-Net clears it there (31.13 at 150 s); where it was still climbing out, at 100 s, it would not.
    assert value_at(PHOTOS_LATE_1 + PHOTOS_LATE_1_ON, until) > bar > 27.82
    # A winner that lost ground over its last interval sets its own score; before the race's end, its last.
    assert late_start_bar([(4.4, 15.0), (39.4, 25.0), (68.3, 24.0)], PHOTOS_RUNGS_1, until) == 24.0
    assert late_start_bar([(4.4, 15.0), (39.4, 25.0)], PHOTOS_RUNGS_1, until) == 25.0


def test_the_winner_plans_its_training_at_the_share_it_trained_in_the_race():
    # The colour sigma-50 race's winner (bench_versus, 2026-12-05): 4.9 training seconds at its first
    # report (8.9 s of wall time, its start-up in it), 76.2 at its last (85.0 s): 94% of its wall time
    # in training. 338 s were left; a validation took 2.6 s.
    clock = [(8.9, 4.9), (20.3, 14.7), (51.2, 44.0), (85.0, 76.2)]
    share = (76.2 - 4.9) / (85.0 - 8.9)
    end = continuation_seconds(76.2, 338.3, clock, val_s=2.6)
    assert end == pytest.approx(76.2 + share * (338.3 - CONTINUE_START_S - 2.6))
    # Planned at TRAINING_SHARE of all the time left, it was stopped by Ray Tune 40 s short of its end.
    assert end < 76.2 + TRAINING_SHARE * 338.3 - CONTINUE_START_S - 10
    # No history to measure: TRAINING_SHARE; a share above it (rounding) is capped; nothing left: nothing more.
    assert continuation_seconds(10.0, 108.0, [], 0.0) == pytest.approx(10.0 + TRAINING_SHARE * 100.0)
    assert continuation_seconds(10.0, 108.0, [(1.0, 1.0), (2.0, 3.0)], 0.0) == pytest.approx(10.0 + TRAINING_SHARE * 100.0)
    assert continuation_seconds(10.0, 5.0, clock, 1.0) == 10.0


def test_the_winner_trains_on_the_cpus_of_every_race_slot():
    """After the race the other slots are empty: the winner is given their CPUs, up to what one node
    has; a GPU trial keeps its share. The real race below checks the threads its winner trained on."""
    from tuner.search import solo_resources
    from tuner.spec import ExperimentSpec

    def solo(budget: dict, resources: dict, node_cpus: float) -> dict:
        spec = ExperimentSpec.model_validate({**RACE_SPEC, "budget": {**RACE_SPEC["budget"], **budget},
                                              "resources": resources})
        return solo_resources(spec, node_cpus)

    assert solo({"max_concurrent": 2}, {"cpus_per_trial": 1}, 2) == {"cpu": 2, "gpu": 0}
    assert solo({"max_concurrent": 8}, {"cpus_per_trial": 2}, 16) == {"cpu": 16, "gpu": 0}
    assert solo({"max_concurrent": 8}, {"cpus_per_trial": 2}, 6) == {"cpu": 6, "gpu": 0}  # one node's worth
    assert solo({"max_concurrent": 1}, {"cpus_per_trial": 2}, 16) == {"cpu": 2, "gpu": 0}  # the race's one slot
    assert solo({"max_concurrent": 4}, {"cpus_per_trial": 4}, 0) == {"cpu": 4, "gpu": 0}  # no node now: its own
    assert solo({"max_concurrent": 8}, {"cpus_per_trial": 2, "gpus_per_trial": 0.125}, 16) == {"cpu": 2, "gpu": 0.125}


# ---------------------------------------------------------------- a real search

@pytest.fixture(scope="module")
def race_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("race")
    path = tmp / "race.yaml"
    # keep_checkpoints 1: Ray lists only a trial's best checkpoint, and keeps its latest on disk beside it
    path.write_text(yaml.safe_dump({**RACE_SPEC, "budget": {**RACE_SPEC["budget"], "keep_checkpoints": 1}}))
    spec = load_spec(path)
    result = tuner.tune(spec, storage=str(tmp / "runs"), report=False, verbose=0)
    return result, spec


def test_a_time_budget_alone_races_then_the_winner_continues(race_run):
    result, spec = race_run
    b = spec.budget
    assert b.continue_best and b.race_seconds < b.max_train_seconds and b.race_budget_s == pytest.approx(15)
    run = Path(result.run_dir)
    # The race: every trial stopped at race_seconds at the latest (ASHA's max_t; an epoch of digits is
    # a few hundredths of a second), none continued inside it.
    race = {p.parent.name.removeprefix("trial_"): _rows(p) for p in run.glob("trial_*/result.json")}
    assert len(race) >= 2 and all(rows for rows in race.values())
    assert all(rows[-1]["train_seconds"] <= b.race_seconds + 1.0 for rows in race.values())
    # The winner: one more experiment, one trial, continuing a race trial from its checkpoint.
    (folder,) = (run / WINNER).glob(f"{WINNER}_*")
    rows = _rows(folder / "result.json")
    winner = {r["continued_from"] for r in rows}
    assert len(winner) == 1 and winner <= set(race)
    (winner,) = winner
    raced = race[winner]
    assert rows[0]["train_seconds"] > max(r["train_seconds"] for r in raced) * 0.5  # not from scratch
    assert rows[0]["epoch"] > min(r["epoch"] for r in raced)
    # From its latest checkpoint (one every epoch here), where the race left it, not its best validation.
    assert rows[0]["epoch"] == raced[-1]["epoch"] + 1
    # On the CPUs of both race slots (2 trials at once of 1 CPU each), as far as the node has them.
    import ray

    node_cpus = int(ray.cluster_resources()["CPU"])
    assert {r["threads"] for rows_ in race.values() for r in rows_} == {1}
    assert {r["threads"] for r in rows} == {min(2, node_cpus)}
    # Its schedule spans the whole: it trained past the race to the end of its schedule, where the
    # cosine ends (the learning rate near zero), having started mid-schedule (near the peak). The end
    # was planned (max_train_seconds, params.json), then moved to where the budget ends at the pace
    # it measured (fit(end_by=)): each epoch reports the end it then had.
    config = json.loads((folder / "params.json").read_text())
    assert config["max_train_seconds"] > b.race_seconds
    assert rows[0]["max_train_seconds"] == config["max_train_seconds"]
    assert rows[-1]["train_seconds"] == pytest.approx(rows[-1]["max_train_seconds"], rel=0.05)
    assert rows[-1]["lr"] < 0.1 * config["lr"] < rows[0]["lr"]
    # The export is the continued model, named by the race trial it continued.
    best = json.loads((Path(result.best_dir) / "metrics.json").read_text())
    assert best["continued"] is True and best["trial_id"] == winner
    assert best[METRIC] == pytest.approx(max(r[METRIC] for r in rows), abs=1e-4)
    assert best[METRIC] > max(r[METRIC] for r in raced)  # training on improved on the race
    assert best["test_psnr"] > best["noisy_test_psnr"] + 3


def test_a_late_starter_trains_on_from_where_the_race_left_it_and_is_judged_by_the_bar(race_run, tmp_path):
    """The late starter's second interval, for real: a race trial that lost trains on from its latest
    checkpoint to twice race_seconds (<run>/late/, its schedule unchanged) and takes the winner's place
    only if its score there clears :func:`tuner.race.late_start_bar`."""
    from tuner.data import load_dataset
    from tuner.race import late_start_bar
    from tuner.search import LATE, _history, _train_late_starter

    result, spec = race_run
    b = spec.budget
    best = json.loads((Path(result.best_dir) / "metrics.json").read_text())
    race = {r.metrics["trial_id"]: r for r in result.results if r.metrics and r.checkpoint is not None}
    loser = next(k for k in race if k != best["trial_id"])
    histories = {k: _history(r) for k, r in race.items()}
    params = {"data": load_dataset(**spec.dataset.model_dump()), "eval_noise": spec.eval_noise.model_dump(),
              "threads": 1, "checkpoint_every_s": 0.0}
    results, left, won = _train_late_starter(spec, race[loser], loser, histories, best["trial_id"], params,
                                             {"cpu": 1, "gpu": 0}, str(tmp_path), left_s=60.0,
                                             identity=best["noisy_val_psnr"], resume=False, verbose=0)
    rows = _rows(next((tmp_path / LATE).glob(f"{LATE}_{loser}")) / "result.json")
    raced = _rows(Path(result.run_dir) / f"trial_{loser}" / "result.json")
    assert {r["continued_from"] for r in rows} == {loser} and rows[0]["epoch"] == raced[-1]["epoch"] + 1
    assert 2 * b.race_seconds <= rows[-1]["train_seconds"] < 2 * b.race_seconds + 1.0
    # The race's schedule, not a new one: it spans the race trial's own max_train_seconds still.
    assert json.loads(next((tmp_path / LATE).glob(f"{LATE}_*")).joinpath("params.json").read_text())[
        "max_train_seconds"] == race[loser].config["max_train_seconds"]
    assert 0 < left < 60.0 and len(results) == 1
    bar = late_start_bar(histories[best["trial_id"]], [*b.rungs, b.race_seconds], 2 * b.race_seconds)
    assert (won is not None) == (rows[-1][METRIC] > bar)
    # Too little time left for it (over LATE_SHARE of it): not trained on, nothing changes.
    assert _train_late_starter(spec, race[loser], loser, histories, best["trial_id"], params, {"cpu": 1, "gpu": 0},
                               str(tmp_path / "short"), left_s=10.0, identity=best["noisy_val_psnr"], resume=False,
                               verbose=0) == ([], 10.0, None)
    assert not (tmp_path / "short").exists()


def test_the_latest_checkpoint_is_found_where_ray_lists_only_the_best(tmp_path):
    """With keep_checkpoints 1 Ray's result lists only a trial's best checkpoint and keeps its latest on
    disk beside it; the winner continues from the latest, found with the metrics that wrote it."""
    import tempfile

    import ray
    from ray import tune

    def falling(config):  # defined here so that Ray's worker gets it by value, not by module
        """val_psnr falls, a checkpoint with every report: the best checkpoint is the first."""
        for epoch in (1, 2, 3):
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "epoch").write_text(str(epoch))
                tune.report({"epoch": epoch, METRIC: 30.0 - epoch}, checkpoint=tune.Checkpoint.from_directory(d))

    started = not ray.is_initialized()
    try:
        (r,) = tune.Tuner(
            tune.with_resources(falling, {"cpu": 1}),
            tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=1),
            run_config=tune.RunConfig(name="falling", storage_path=str(tmp_path), verbose=0,
                                      checkpoint_config=tune.CheckpointConfig(
                                          num_to_keep=1, checkpoint_score_attribute=METRIC,
                                          checkpoint_score_order=MODE)),
        ).fit()
    finally:
        if started:
            ray.shutdown()
    assert [m["epoch"] for _, m in r.best_checkpoints] == [1]  # Ray lists the best only
    checkpoint, metrics = latest_checkpoint(r)
    assert checkpoint.path == r.checkpoint.path and metrics["epoch"] == 3 and metrics[METRIC] == 27.0
    assert Path(checkpoint.path, "epoch").read_text() == "3"


def test_the_winner_continues_from_the_study_trial_it_was(race_run):
    """The study (Optuna) holds the race's trials; the winner is one of them, COMPLETE at race_seconds."""
    import optuna

    result, spec = race_run
    run = Path(result.run_dir)
    study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{run / 'study.db'}")
    best = json.loads((Path(result.best_dir) / "metrics.json").read_text())
    (trial,) = [t for t in study.trials if t.user_attrs.get("ray_trial_id") == best["trial_id"]]
    assert trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    # Its race, epoch by epoch; the continuation trained on past it (and is not a trial of the study).
    raced = _rows(Path(result.run_dir) / f"trial_{best['trial_id']}" / "result.json")
    assert len(trial.intermediate_values) == len(raced)
    assert max(trial.intermediate_values.values()) < best[METRIC] and len(study.trials) == len(result.results)


def test_continue_best_false_is_the_old_search(tmp_path):
    """continue_best: false: no race and no winner folder; every trial's own budget is ASHA's max_t."""
    data = {**RACE_SPEC, "name": "norace", "budget": {**RACE_SPEC["budget"], "time_budget_s": 20,
                                                       "continue_best": False}}
    del data["budget"]["race_seconds"]
    path = tmp_path / "norace.yaml"
    path.write_text(yaml.safe_dump(data))
    spec = load_spec(path)
    assert spec.budget.race_seconds is None and spec.budget.max_t == spec.budget.max_train_seconds
    result = tuner.tune(spec, storage=str(tmp_path / "runs"), report=False, verbose=0)
    assert not (Path(result.run_dir) / WINNER).exists()
    best = json.loads((Path(result.best_dir) / "metrics.json").read_text())
    assert best["continued"] is False and best["test_psnr"] > best["noisy_test_psnr"]


# ---------------------------------------------------------------- killed while the winner trains

@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_search_killed_while_its_winner_trains_resumes_it(tmp_path, ray_tmp):
    """SIGKILL the whole search once the winner has a checkpoint of its own; --resume restores the
    finished race, then the winner's experiment, which continues from its newest checkpoint."""
    data = {**RACE_SPEC, "name": "killed", "budget": {**RACE_SPEC["budget"], "time_budget_s": 70}}
    spec_path = tmp_path / "killed.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    storage = tmp_path / "runs"
    run = storage / "killed"
    search = _Search(tmp_path, ray_tmp, spec_path)
    proc, log = search.start(storage, resume=False)

    def winner_checkpointed():
        return "the race is over" in log.read_text() and list((run / WINNER).glob(f"{WINNER}_*/checkpoint_*"))

    search.kill_when(proc, log, winner_checkpointed, "the winner's first checkpoint")
    (folder,) = (run / WINNER).glob(f"{WINNER}_*")
    before = _rows(folder / "result.json") if (folder / "result.json").exists() else []
    assert not (run / "best").exists()

    search.finish(storage)
    rows = _rows(folder / "result.json")
    assert len(rows) > len(before) and len({r["continued_from"] for r in rows}) == 1
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert best["continued"] is True and best["trial_id"] == rows[0]["continued_from"]
    assert best["test_psnr"] > best["noisy_test_psnr"] + 3
    assert (run / WINNER / "tuner.pkl").is_file() and len(list((run / WINNER).glob(f"{WINNER}_*"))) == 1


# The dense_notebook race, seed 1 with seed 0's study as its prior (bench_versus's spec, 2026-12-06 16:58;
# rungs 1.82, 7.28, 29.1 s, the race's end 58.2 s): trials scored at the first rung before seed 0's
# winner, the prior's best (20.13 dB at the end of seed 0's race), came to it with 10.85 dB.
DENSE_RUNGS = [1.82, 7.28, 29.1]
DENSE_FIRST = [13.04, 14.9, 11.2, 8.59, 6.48]
DENSE_PRIOR = [(1.9, 10.85), (7.3, 17.1), (29.1, 19.4), (58.2, 20.13)]


@pytest.mark.parametrize("proven", [False, True])
def test_a_prior_study_s_best_is_judged_at_the_race_end_only(proven):
    """ASHA's first rung ranks how fast a model starts: it stops the prior's best there; a configuration
    proven on the task (WarmStartASHA's proven) runs to the race's end instead, where it is judged."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from tuner.scheduler import WarmStartASHA

    spec_warm = {"arch": "dense", "optimizer": "adadelta", "lr": 1.0}
    prior_best = {"arch": "conv", "optimizer": "adam", "lr": 4.23e-3}
    scheduler = WarmStartASHA([spec_warm], DENSE_RUNGS, proven=[prior_best] if proven else [],
                              time_attr="train_seconds", metric=METRIC, mode="max", max_t=58.2, grace_period=1.82,
                              reduction_factor=4)
    for i, v in enumerate(DENSE_FIRST):
        trial = Trial("trainable", config={"arch": "conv", "optimizer": "sgd", "lr": 0.01 * (i + 1)}, stub=True)
        scheduler.on_trial_add(None, trial)
        scheduler.on_trial_result(None, trial, {"train_seconds": 1.85, METRIC: v})
    trial = Trial("trainable", config=dict(prior_best), stub=True)
    scheduler.on_trial_add(None, trial)
    actions = [scheduler.on_trial_result(None, trial, {"train_seconds": t, METRIC: v}) for t, v in DENSE_PRIOR]
    if proven:
        assert actions[:-1] == [TrialScheduler.CONTINUE] * 3 and actions[-1] == TrialScheduler.STOP  # max_t
    else:
        assert actions[0] == TrialScheduler.STOP
