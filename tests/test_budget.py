"""One budget, the rest derived (issue 31): ``budget.time_budget_s`` alone sizes a search in training
seconds, a race whose winner continues; explicit fields win; ``--time-budget-s`` derives again; the
resolved spec keeps the numbers. Spec loading only: no Ray, no training (tests/test_search.py runs
a race and its winner's continuation)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from tuner.cli import build_parser
from tuner.budget import CONTINUE_START_S, FIRST_RUNG_DEPTH, NO_EPOCH_CAP, RACE_START_S, TRAINING_SHARE, TRIAL_SETUP_S
from tuner.config import TrialConfig
from tuner.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"
KEYS = ("num_samples", "max_epochs", "time_attr", "max_train_seconds", "grace_period", "reduction_factor",
        "max_concurrent", "keep_checkpoints", "max_failures", "time_budget_s")

# Every shipped spec's budget, in KEYS order: as before issue 31 (commit c38ab70) for those that set it
# field by field. bsd68 and cbsd68 (1290 s a trial, first rung 80 s, then) now give time_budget_s alone:
# a race of ~504 s whose trials stop at RACE seconds, then the winner continues to 1400 training seconds.
BEFORE = {
    "bsd68": (5, 100000, "train_seconds", 1400.0, 17.4, 3.0, 1, 1, 2, 1680.0),
    "cbsd68": (5, 100000, "train_seconds", 1400.0, 17.4, 3.0, 1, 1, 2, 1680.0),
    "cifar10": (64, 30, "epoch", None, 2, 3.0, 8, 2, 2, None),
    "fashion_mnist": (64, 30, "epoch", None, 2, 3.0, 8, 2, 2, None),
    "mnist": (64, 30, "epoch", None, 2, 3.0, 8, 2, 2, None),
    "mnist5k_wide": (24, 12, "epoch", None, 2, 3.0, 2, 2, 2, None),
    "photos": (4, 100000, "train_seconds", 90.0, 20.0, 3.0, 1, 2, 2, None),
    "quickstart": (4, 36, "epoch", None, 4, 4.0, 1, 2, 2, None),
    "tiny": (4, 3, "epoch", None, 1, 2.0, 2, 2, 2, None),
    # New with issue 30, derived from time_budget_s from the start: 2 waves of 8 trials.
    "bsd68_gpu": (16, 100000, "train_seconds", 469.0, 7.18, 3.0, 8, 1, 2, 540.0),
    "cbsd68_gpu": (16, 100000, "train_seconds", 469.0, 7.18, 3.0, 8, 1, 2, 540.0),
}
RACE = {"bsd68": 272.0, "cbsd68": 272.0, "bsd68_gpu": 112.0, "cbsd68_gpu": 112.0}  # race_seconds; others: no race

# bsd68.yaml's budget as it was: every field explicit, and what it loaded to (no race).
EXPLICIT_BSD68 = {"time_budget_s": 1680, "time_attr": "train_seconds", "max_train_seconds": 1290, "grace_period": 80,
                  "reduction_factor": 3, "max_epochs": 100000, "num_samples": 5, "max_concurrent": 1,
                  "keep_checkpoints": 1}
OLD_BSD68 = (5, 100000, "train_seconds", 1290.0, 80.0, 3.0, 1, 1, 2, 1680.0)
ONE_NUMBER = {"time_budget_s": 1680, "reduction_factor": 3, "num_samples": 5, "max_concurrent": 1}


def budget_of(spec) -> dict:
    return {k: getattr(spec.budget, k) for k in KEYS}


def spec_file(tmp_path: Path, budget: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"name": "budget", "budget": budget}))
    return path


def load_budget(tmp_path: Path, **budget):
    return load_spec(spec_file(tmp_path, budget)).budget


def spec_error(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    return msg


def test_every_shipped_spec_keeps_its_budget():
    assert sorted(p.stem for p in SPACES.glob("*.yaml")) == sorted(BEFORE), "a new spec: add its budget here"
    for name, values in BEFORE.items():
        now, before = budget_of(load_spec(SPACES / f"{name}.yaml")), dict(zip(KEYS, values))
        for key in KEYS:
            assert now[key] == before[key] and type(now[key]) is type(before[key]), (name, key, now[key])
        b = load_spec(SPACES / f"{name}.yaml").budget
        assert (b.continue_best, b.race_seconds) == ((True, RACE[name]) if name in RACE else (False, None)), name


def test_the_old_explicit_budget_loads_exactly_as_before(tmp_path):
    b = load_spec(spec_file(tmp_path, EXPLICIT_BSD68)).budget
    assert budget_of(load_spec(spec_file(tmp_path, EXPLICIT_BSD68))) == dict(zip(KEYS, OLD_BSD68))
    assert (b.continue_best, b.race_seconds, b.max_t, b.race_budget_s) == (False, None, 1290.0, 1680.0)


@pytest.mark.parametrize("seconds, max_train_seconds, race_seconds, grace", [(1680, 1400.0, 272.0, 17.4),
                                                                            (600, 481.0, 83.5, 5.36)])
def test_one_number_derives_the_rest(tmp_path, seconds, max_train_seconds, race_seconds, grace):
    """time_budget_s alone: a race of 30% of it whose trials stop at race_seconds (ASHA's max_t), then
    the winner continues: its schedules span max_train_seconds, its race seconds and 96.5% of the rest
    less the winner's start."""
    b = load_budget(tmp_path, **{**ONE_NUMBER, "time_budget_s": seconds})
    assert (b.time_attr, b.max_train_seconds, b.grace_period, b.max_epochs) == \
        ("train_seconds", max_train_seconds, grace, NO_EPOCH_CAP)
    assert (b.continue_best, b.race_seconds, b.max_t) == (True, race_seconds, race_seconds)
    assert (b.race_budget_s, b.race_limit_s) == pytest.approx((0.3 * seconds, 1.5 * 0.3 * seconds))
    assert b.model_fields_set == set(ONE_NUMBER)
    # Three rungs below the race's end; its start-up, one trial to the end, 4 others to the first rung and
    # the expected promotions fit in the race.
    assert grace * 3 ** 2 < race_seconds < grace * 3 ** 3 and b.rungs == pytest.approx([grace, 3 * grace, 9 * grace])
    promoted = 4 * (grace * 2 / 3 + 6 * grace / 9 + (race_seconds - 9 * grace) / 27)
    assert RACE_START_S + 5 * TRIAL_SETUP_S + race_seconds + 4 * grace + promoted <= TRAINING_SHARE * 0.3 * seconds * 1.001
    assert max_train_seconds == pytest.approx(race_seconds + TRAINING_SHARE * 0.7 * seconds - CONTINUE_START_S, rel=5e-3)


def _race(time_budget_s: float, num_samples: int, max_concurrent: int, reduction_factor: float, race_share: float):
    """race_seconds by the rule, written out: a slot's race training is its wall time (race_share of
    time_budget_s) at 96.5%, less Ray's start-up and a set-up per trial; one trial to the end, each
    other to the first rung (race / rf**2.5) and on, the best 1/rf at each rung."""
    rf, waves = reduction_factor, math.ceil(num_samples / max_concurrent)
    rungs = [1, rf, rf ** 2, rf ** FIRST_RUNG_DEPTH]  # in first rungs
    challenger = 1 + sum((rungs[k] - rungs[k - 1]) / rf ** k for k in (1, 2, 3))
    training = TRAINING_SHARE * race_share * time_budget_s - RACE_START_S - waves * TRIAL_SETUP_S
    return training / (1 + (waves - 1) * challenger / rf ** FIRST_RUNG_DEPTH)


@pytest.mark.parametrize("num_samples, max_concurrent, reduction_factor",
                         [(5, 1, 3), (5, 2, 3), (5, 5, 3), (5, 8, 3), (64, 8, 3), (4, 1, 2), (24, 2, 4), (1, 1, 3)])
@pytest.mark.parametrize("race_share", [0.3, 0.5])
def test_the_rule(tmp_path, num_samples, max_concurrent, reduction_factor, race_share):
    """race_seconds as :func:`_race`, grace = race / rf**2.5, max_train_seconds = race + 0.965
    (1 - race_share) time_budget_s - the winner's start, 3 significant figures (one trial races when
    asked to: ``continue_best: true``)."""
    b = load_budget(tmp_path, time_budget_s=1000, num_samples=num_samples, max_concurrent=max_concurrent,
                    reduction_factor=reduction_factor, race_share=race_share,
                    **({"continue_best": True} if num_samples == 1 else {}))
    race = _race(1000, num_samples, max_concurrent, reduction_factor, race_share)
    assert b.race_seconds == pytest.approx(race, rel=5e-3)
    assert b.grace_period == pytest.approx(race / reduction_factor ** FIRST_RUNG_DEPTH, rel=5e-3)
    assert b.max_train_seconds == pytest.approx(race + TRAINING_SHARE * (1 - race_share) * 1000 - CONTINUE_START_S,
                                                rel=5e-3)
    if num_samples <= max_concurrent:  # every trial runs at once: each may race the whole race
        assert b.race_seconds == pytest.approx(TRAINING_SHARE * race_share * 1000 - RACE_START_S - TRIAL_SETUP_S,
                                               rel=5e-3)


def test_no_room_for_a_race_is_the_search_without_one(tmp_path):
    """A budget too short for a race (Ray's start-up and the trials' set-ups would take it all)
    derives as before the winner continued; asked for one, it is a one-line error."""
    b = load_budget(tmp_path, **{**ONE_NUMBER, "time_budget_s": 60})
    assert (b.continue_best, b.race_seconds, b.max_train_seconds, b.max_t) == (False, None, 46.1, 46.1)
    msg = spec_error(spec_file(tmp_path, {**ONE_NUMBER, "time_budget_s": 60, "continue_best": True}))
    assert "budget: time_budget_s 60 leaves the race (0.3 of it) no training time" in msg, msg


def test_one_trial_trains_the_whole_budget_without_a_race(tmp_path):
    """One trial has no one to race: time_budget_s alone gives it the whole budget in one go (a race
    of one, then its continuation in a new Tune experiment, would only add the continuation's start)."""
    b = load_budget(tmp_path, **{**ONE_NUMBER, "num_samples": 1})
    assert (b.continue_best, b.race_seconds, b.max_train_seconds, b.max_t) == (False, None, 1620.0, 1620.0)
    assert b.time_attr == "train_seconds" and b.grace_period == pytest.approx(1620 / 3 ** FIRST_RUNG_DEPTH, rel=5e-3)
    assert load_budget(tmp_path, **{**ONE_NUMBER, "num_samples": 2}).continue_best


@pytest.mark.parametrize("num_samples, max_concurrent, reduction_factor",
                         [(5, 1, 3), (5, 2, 3), (5, 5, 3), (64, 8, 3), (4, 1, 2), (1, 1, 3)])
def test_the_rule_without_a_race(tmp_path, num_samples, max_concurrent, reduction_factor):
    """continue_best: false: every trial's own budget, max_t (1 + (waves - 1) / rf**2.5) = 0.965
    time_budget_s, grace = max_t / rf**2.5 (as before the winner continued)."""
    b = load_budget(tmp_path, time_budget_s=1000, num_samples=num_samples, max_concurrent=max_concurrent,
                    reduction_factor=reduction_factor, continue_best=False)
    waves = math.ceil(num_samples / max_concurrent)
    max_t = TRAINING_SHARE * 1000 / (1 + (waves - 1) / reduction_factor ** FIRST_RUNG_DEPTH)
    assert (b.continue_best, b.race_seconds, b.race_budget_s) == (False, None, 1000.0)
    assert b.max_train_seconds == pytest.approx(max_t, rel=5e-3) and b.max_t == b.max_train_seconds
    assert b.grace_period == pytest.approx(max_t / reduction_factor ** FIRST_RUNG_DEPTH, rel=5e-3)
    if waves == 1:  # every trial runs at once: each may use nearly the whole budget
        assert b.max_train_seconds == 965.0


def test_more_trials_at_once_give_each_more_seconds(tmp_path):
    budgets = [load_budget(tmp_path, **{**ONE_NUMBER, "max_concurrent": c}) for c in (1, 2, 5)]
    assert [b.race_seconds for b in budgets] == [272.0, 344.0, 463.0]
    assert [b.max_train_seconds for b in budgets] == [1400.0, 1470.0, 1590.0]


def test_the_trials_and_their_schedules_get_the_derived_seconds(tmp_path):
    """The derived max_train_seconds is every trial's: the cosine / one-cycle schedules span it from the
    first step (tuner.train), though the race stops them at race_seconds; the winner trains to it."""
    spec = load_spec(SPACES / "bsd68.yaml")
    base = spec.base_config()
    assert (base["max_train_seconds"], base["max_epochs"]) == (1400.0, NO_EPOCH_CAP)
    trial = TrialConfig(**{**base, "width": 16, "latent_dim": 128, "lr": 1e-3, "loss": "mse"})
    assert trial.max_train_seconds == 1400.0 and trial.lr_schedule == "cosine"


@pytest.mark.parametrize("extra, expect", [
    ({"grace_period": 50}, {"grace_period": 50.0, "max_train_seconds": 1400.0, "race_seconds": 272.0}),
    ({"max_epochs": 400, "time_attr": "train_seconds"}, {"max_epochs": 400, "max_train_seconds": 1400.0}),
    ({"race_seconds": 600}, {"race_seconds": 600.0, "max_train_seconds": 1730.0, "grace_period": 38.5}),
    ({"race_share": 0.5}, {"race_seconds": 467.0, "max_train_seconds": 1270.0, "race_budget_s": 840.0}),
    ({"continue_best": False}, {"continue_best": False, "race_seconds": None, "max_train_seconds": 1290.0,
                                "grace_period": 82.8}),
    ({"max_train_seconds": 1000, "time_attr": "train_seconds"}, {"max_train_seconds": 1000.0, "grace_period": 1.0,
                                                                 "max_epochs": 10}),
    # The budget in epochs, said (time_attr) or implied (max_epochs): time_budget_s is only the wall-clock limit.
    ({"time_attr": "epoch"}, {"time_attr": "epoch", "max_epochs": 10, "max_train_seconds": None, "grace_period": 1}),
    ({"max_epochs": 1000, "grace_period": 1000}, {"time_attr": "epoch", "max_epochs": 1000, "grace_period": 1000,
                                                  "max_train_seconds": None}),
])
def test_explicit_fields_win(tmp_path, extra, expect):
    b = load_budget(tmp_path, **{**ONE_NUMBER, **extra})
    assert {k: getattr(b, k) for k in expect} == expect


def test_no_time_budget_no_derivation(tmp_path):
    b = load_budget(tmp_path, num_samples=5)
    assert (b.time_attr, b.max_epochs, b.max_train_seconds, b.grace_period, b.time_budget_s) == ("epoch", 10, None, 1, None)


def _cli_spec(path: Path, *flags: str):
    """What `tuner tune` makes of its spec and budget flags before the search (tuner.cli._tune)."""
    args = build_parser().parse_args(["tune", str(path), *flags])
    return load_spec(args.spec).with_overrides(num_samples=args.num_samples, max_epochs=args.max_epochs,
                                               max_concurrent=args.max_concurrent, time_budget_s=args.time_budget_s)


def test_time_budget_flag_derives_again():
    """bsd68.yaml at 10 minutes is one flag: the derived fields follow it, not the 30-minute values."""
    spec = _cli_spec(SPACES / "bsd68.yaml", "--time-budget-s", "600")
    assert (spec.budget.time_budget_s, spec.budget.max_train_seconds, spec.budget.grace_period,
            spec.budget.race_seconds) == (600.0, 481.0, 5.36, 83.5)
    assert spec.base_config()["max_train_seconds"] == 481.0
    assert "max_train_seconds" not in spec.budget.model_fields_set  # still derived: a second override follows too
    back = spec.with_overrides(time_budget_s=1680)
    assert budget_of(back) == budget_of(load_spec(SPACES / "bsd68.yaml"))
    wider = _cli_spec(SPACES / "bsd68.yaml", "--max-concurrent", "5")
    assert (wider.budget.max_train_seconds, wider.budget.grace_period) == (1590.0, 29.7)


def test_an_override_keeps_what_the_spec_set(tmp_path):
    path = spec_file(tmp_path, {**ONE_NUMBER, "grace_period": 20})
    b = _cli_spec(path, "--time-budget-s", "600").budget
    assert (b.max_train_seconds, b.grace_period) == (481.0, 20.0)
    old = _cli_spec(spec_file(tmp_path, EXPLICIT_BSD68, "old.yaml"), "--time-budget-s", "600").budget
    assert (old.time_budget_s, old.max_train_seconds, old.grace_period) == (600.0, 1290.0, 80.0)  # as before issue 31


@pytest.mark.parametrize("flags", [(), ("--time-budget-s", "600"), ("--max-concurrent", "2", "--num-samples", "9")])
def test_resolved_spec_loads_to_the_same_budget(tmp_path, flags):
    """The spec a run saves (spec.yaml, read back on --resume and by the report) states the derived
    numbers, and loads to the same budget."""
    spec = _cli_spec(SPACES / "bsd68.yaml", *flags)
    text = spec.to_yaml()
    saved = yaml.safe_load(text)["budget"]
    assert saved["max_train_seconds"] == spec.budget.max_train_seconds and saved["time_attr"] == "train_seconds"
    (tmp_path / "spec.yaml").write_text(text)
    again = load_spec(tmp_path / "spec.yaml")
    assert budget_of(again) == budget_of(spec) and again.base_config() == spec.base_config()
    assert again.to_yaml() == text


@pytest.mark.parametrize("budget, fragments", [
    ({"time_attr": "train_seconds"}, ["budget: time_attr train_seconds needs max_train_seconds", "or time_budget_s"]),
    ({"time_budget_s": 60, "num_samples": 5, "max_concurrent": 1, "grace_period": 100},
     ["budget: grace_period 100 > max_train_seconds 46.1 (derived from time_budget_s 60)"]),
    ({"time_budget_s": 60, "time_attr": "epoch", "continue_best": True},
     ["budget: continue_best needs time_budget_s and a budget in training seconds"]),
    ({"max_epochs": 5, "continue_best": True}, ["budget: continue_best needs time_budget_s"]),
    ({"time_budget_s": 60, "continue_best": False, "race_seconds": 10}, ["budget: race_seconds needs continue_best: true"]),
    ({"time_budget_s": 60, "race_seconds": 100, "max_train_seconds": 50, "time_attr": "train_seconds",
      "continue_best": True}, ["budget: race_seconds 100 > max_train_seconds 50"]),
    ({"time_budget_s": 60, "race_share": 1}, ["budget.race_share", "less than 1"]),
    ({"time_budget_s": 60, "time_attr": "epoch", "max_train_seconds": 30}, ["budget: max_train_seconds needs time_attr train_seconds"]),
    ({"time_budget_s": 0}, ["budget.time_budget_s", "greater than 0"]),
    ({"time_budget_s": "long"}, ["budget.time_budget_s", "number"]),
])
def test_budget_errors_are_one_line(tmp_path, budget, fragments):
    msg = spec_error(spec_file(tmp_path, budget))
    for fragment in fragments:
        assert fragment in msg, msg


def test_an_override_that_leaves_no_room_is_one_line(tmp_path):
    path = spec_file(tmp_path, {**ONE_NUMBER, "grace_period": 80})
    with pytest.raises(SpecError) as info:
        _cli_spec(path, "--time-budget-s", "60")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("<command line>: budget: grace_period 80 > max_train_seconds 46.1"), msg


def test_max_epochs_flag_puts_the_budget_in_epochs():
    """bsd68.yaml says time_budget_s only: --max-epochs (a smoke run) makes the budget epochs, so ASHA's
    rungs and the schedules span those epochs; time_budget_s stays the wall-clock limit."""
    b = _cli_spec(SPACES / "bsd68.yaml", "--max-epochs", "4").budget
    assert (b.time_attr, b.max_epochs, b.max_t, b.grace_period, b.max_train_seconds, b.time_budget_s) == \
        ("epoch", 4, 4, 1, None, 1680.0)
