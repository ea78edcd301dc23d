"""The budget of a search: how many trials, how long each, how ASHA cuts them, and what
``time_budget_s`` alone derives.

A user may say only how long (``budget.time_budget_s``, or ``--time-budget-s``): the trials'
``max_train_seconds``, ASHA's rungs (``grace_period``) and, by default, the race whose winner
continues (``continue_best``, ``race_seconds``) follow from it and from how many trials run at once
(:class:`BudgetSpec`, validated once when the spec is loaded). Fields a spec sets are kept.
docs/search-spaces.md explains the derivation.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal, Optional

from pydantic import Field, model_validator

from tuner.config import Section

# How budget.time_budget_s alone sizes a search (BudgetSpec._derive). A slot (one of max_concurrent)
# that trains one trial to the end also runs, in turn, ceil(num_samples / max_concurrent) - 1 other
# trials, each at least to ASHA's first rung before it may be stopped; so
#   max_train_seconds * (1 + (waves - 1) / reduction_factor**FIRST_RUNG_DEPTH) = TRAINING_SHARE * time_budget_s.
# Rungs promoted past the first are not reserved for: time_budget_s stops whatever is still running.
TRAINING_SHARE = 0.965  # of time_budget_s, spent in training steps (train_seconds); Tune's start-up
# (about 5 s to the first trial, docs/benchmarks.md "Orchestration overhead"), each trial's set-up and its
# validation every epoch take the rest. 0.965 gives the 1290 s bsd68.yaml set by hand for 1680 s, 5 trials, one at a time.
FIRST_RUNG_DEPTH = 2.5  # grace_period = max_train_seconds / reduction_factor**2.5: three rungs below max_t
# (grace, x rf, x rf^2), the top one half a rung (sqrt(rf)) under it, so a trial that survives every rung
# still trains sqrt(rf) times longer; bsd68.yaml's hand-set 80 s of 1290 is rf**2.53 at rf 3.
# The race (continue_best) pays fixed costs out of its wall time, measured on the 2-core CPU (bench_versus,
# impulse_bsd68): Ray Tune's start to the first trial's first step (Ray, a worker process, torch's import,
# the data from the object store) ~22 s, and each trial's set-up and first validation ~3 s.
RACE_START_S = 20.0
TRIAL_SETUP_S = 3.0
# The winner's continuation, a new Tune experiment in the same Ray: its trial function started 4 s after
# the race ended, then loaded the checkpoint and validated once before training (impulse_bsd68: ~8 s).
CONTINUE_START_S = 8.0
# ...and it ends by itself this long before Ray Tune's time_budget_s would stop it: its last checkpoint
# written and reported, the trial closed (tuner.train: end_by).
CONTINUE_END_S = 4.0
RACE_OVERRUN = 1.5  # the race may run over its plan by half (promotions vary) before Tune stops it
NO_EPOCH_CAP = 100_000  # max_epochs' largest value: with the budget in seconds, epochs do not end a trial


def _three_figures(x: float) -> float:
    """``x`` to 3 significant figures (1290.2 -> 1290, 82.77 -> 82.8): readable in the resolved spec, never 0."""
    return float(f"{x:.3g}")


class BudgetSpec(Section):
    # One number is enough: time_budget_s alone (no max_train_seconds) puts ASHA's rungs in training
    # seconds and derives max_train_seconds, grace_period and max_epochs from it (_derive, the constants
    # above); a field given explicitly is kept. `--time-budget-s 600` shrinks such a search in one flag.
    num_samples: Annotated[int, Field(ge=1, le=100000)] = 8  # trials
    max_epochs: Annotated[int, Field(ge=1, le=100000)] = 10  # per trial (ASHA max_t when time_attr is epoch); derived from time_budget_s: no cap
    # What ASHA's rungs count (Ray's time_attr): epoch, or train_seconds, the seconds a trial has
    # trained, so trials of different cost meet at equal compute; then max_train_seconds is max_t.
    # Default: train_seconds when time_budget_s is given without max_epochs or max_train_seconds, else epoch.
    time_attr: Literal["epoch", "train_seconds"] = "epoch"
    max_train_seconds: Optional[Annotated[float, Field(gt=0.0, le=1e7)]] = None  # per trial, with time_attr train_seconds; default derived from time_budget_s
    grace_period: Annotated[float, Field(gt=0.0, le=1e7)] = 1  # ASHA: time_attr units before a trial may be stopped; derived with max_train_seconds
    reduction_factor: Annotated[float, Field(gt=1.0, le=100.0)] = 3.0  # ASHA: keep 1/rf at each rung
    max_concurrent: Annotated[int, Field(ge=1, le=10000)] = 2  # trials running at once
    keep_checkpoints: Annotated[int, Field(ge=1, le=100)] = 2  # best checkpoints kept per trial
    max_failures: Annotated[int, Field(ge=-1, le=100)] = 2  # retries of a crashed trial (-1: forever)
    # A trial checkpoints on a new best val_psnr (when writing costs <= ~2.5% of its time), at its end,
    # and at least every this many seconds: what a kill may lose (tuner.train.CheckpointCadence). 0: every epoch.
    checkpoint_every_s: Annotated[float, Field(ge=0.0, le=1e7)] = 60.0
    # Wall-clock limit of the search (Ray Tune's time_budget_s): when it is spent, running trials stop
    # where they are (told to Optuna as PRUNED), no new ones start, and the best model so far is exported.
    time_budget_s: Optional[Annotated[float, Field(gt=0.0, le=1e7)]] = None
    # The winner continues (a budget in seconds): the search is first a race, race_share of
    # time_budget_s, whose trials stop at race_seconds (ASHA's max_t, its rungs below it); then the
    # race's best trial continues from its checkpoint to the end of the budget, its schedules spanning
    # max_train_seconds from its first step, so the race costs only what the losers trained.
    # Default: on when time_budget_s alone sets the budget for more than one trial; race_seconds and
    # max_train_seconds derived.
    continue_best: Optional[bool] = None
    race_share: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.3
    race_seconds: Optional[Annotated[float, Field(gt=0.0, le=1e7)]] = None

    @model_validator(mode="after")
    def _derive(self) -> "BudgetSpec":
        """Derive what time_budget_s implies, once, at load time; then check the budget is consistent."""
        given = set(self.model_fields_set)  # what the spec set, before the assignments below add to it
        in_seconds = (self.time_attr == "train_seconds" if "time_attr" in given else "max_epochs" not in given)
        derived = self.time_budget_s is not None and self.max_train_seconds is None and in_seconds
        if self.continue_best is None:  # on when time_budget_s alone sets the budget, a race fits in it, and
            # there is more than one trial to race (one trial trains the whole budget in one go, not in two)
            self.continue_best = (derived and self.num_samples > 1
                                  and self._race_training(math.ceil(self.num_samples / self.max_concurrent)) > 0)
        if self.continue_best:
            self._derive_race(given)
        elif self.race_seconds is not None:
            raise ValueError("race_seconds needs continue_best: true (the race's end, where its winner continues)")
        elif derived:
            self.time_attr = "train_seconds"
            waves = math.ceil(self.num_samples / self.max_concurrent)  # trials a slot runs in turn
            first_rung = self.reduction_factor ** FIRST_RUNG_DEPTH  # max_t / grace_period
            max_t = TRAINING_SHARE * self.time_budget_s / (1 + (waves - 1) / first_rung)
            self.max_train_seconds = _three_figures(max_t)
            if "grace_period" not in given:
                self.grace_period = _three_figures(max_t / first_rung)
            if "max_epochs" not in given:
                self.max_epochs = NO_EPOCH_CAP
        if self.time_attr == "epoch":
            if self.max_train_seconds is not None:
                raise ValueError("max_train_seconds needs time_attr train_seconds (the budget is in epochs now)")
            if self.grace_period != int(self.grace_period):
                raise ValueError(f"grace_period {self.grace_period:g}: counts epochs under time_attr epoch, a whole number")
            self.grace_period = int(self.grace_period)
        elif self.max_train_seconds is None:
            raise ValueError("time_attr train_seconds needs max_train_seconds (the training seconds of a trial "
                             "that runs to the end) or time_budget_s (the search's seconds, to derive it from)")
        if self.continue_best and self.race_seconds > self.max_train_seconds:
            raise ValueError(f"race_seconds {self.race_seconds:g} > max_train_seconds {self.max_train_seconds:g} "
                             f"(the race ends before the winner's whole training)")
        if self.grace_period > self.max_t:
            source = f" (derived from time_budget_s {self.time_budget_s:g})" if derived else ""
            raise ValueError(f"grace_period {self.grace_period:g} > {self.max_t_key} {self.max_t:g}{source}")
        # model_fields_set stays what the spec set (pydantic's model_construct sets it the same way), so
        # that an override (ExperimentSpec.with_overrides) derives the other fields again.
        object.__setattr__(self, "__pydantic_fields_set__", given)
        return self

    def _derive_race(self, given: set[str]) -> None:
        """``continue_best``: the race's end (``race_seconds``, ASHA's ``max_t``), the winner's whole
        training (``max_train_seconds``: its race seconds and TRAINING_SHARE of the rest), the first
        rung, from ``time_budget_s``; fields the spec set are kept."""
        if self.time_budget_s is None or ("time_attr" in given and self.time_attr != "train_seconds"):
            raise ValueError("continue_best needs time_budget_s and a budget in training seconds (time_attr "
                             "train_seconds): the winner continues for what is left of the time budget")
        self.time_attr = "train_seconds"
        waves = math.ceil(self.num_samples / self.max_concurrent)
        rf = self.reduction_factor
        first_rung = rf ** FIRST_RUNG_DEPTH
        if self.race_seconds is None:
            # In a slot, the first trial races to the end (asynchronous ASHA lets it through every rung);
            # each later one trains to the first rung, and the best 1/rf of those to the next, and so on:
            # a challenger costs `challenger` first rungs on average.
            tops = [rf ** k for k in range(math.ceil(FIRST_RUNG_DEPTH))] + [first_rung]  # rungs / grace_period
            challenger = 1 + sum((tops[k] - tops[k - 1]) / rf ** k for k in range(1, len(tops)))
            training = self._race_training(waves)
            if training <= 0:
                raise ValueError(f"time_budget_s {self.time_budget_s:g} leaves the race ({self.race_share:g} of it) "
                                 f"no training time after Ray's start-up (~{RACE_START_S:g} s) and "
                                 f"{waves} trial set-ups; give more time, or continue_best: false")
            self.race_seconds = _three_figures(training / (1 + (waves - 1) * challenger / first_rung))
        if self.max_train_seconds is None:
            rest = TRAINING_SHARE * (self.time_budget_s - self.race_budget_s) - CONTINUE_START_S
            self.max_train_seconds = _three_figures(self.race_seconds + max(0.0, rest))
        if "grace_period" not in given:
            self.grace_period = _three_figures(self.race_seconds / first_rung)
        if "max_epochs" not in given:
            self.max_epochs = NO_EPOCH_CAP

    def _race_training(self, waves: int) -> float:
        """The race's training seconds in a slot: its wall time less Ray's start-up and trial set-ups."""
        if self.time_budget_s is None:
            return 0.0
        return TRAINING_SHARE * self.race_share * self.time_budget_s - RACE_START_S - waves * TRIAL_SETUP_S

    @property
    def race_budget_s(self) -> Optional[float]:
        """The race's planned wall seconds: ``race_share`` of ``time_budget_s`` when the winner
        continues (``race_seconds`` is sized to fit in it), else the whole of it."""
        if self.continue_best and self.time_budget_s is not None:
            return self.race_share * self.time_budget_s
        return self.time_budget_s

    @property
    def race_train_s(self) -> Optional[float]:
        """The race's planned training seconds, its slots together: what its wall time (``race_budget_s``)
        leaves after Ray's start-up and the trials' set-ups, which ``race_seconds`` is sized to fill with
        the first trial run to the end and the others screened by ASHA (None without a race)."""
        if not self.continue_best:
            return None
        return self.max_concurrent * max(0.0, self._race_training(math.ceil(self.num_samples / self.max_concurrent)))

    @property
    def race_limit_s(self) -> Optional[float]:
        """Ray Tune's ``time_budget_s`` for the race: :data:`RACE_OVERRUN` times its plan, so that a
        challenger ASHA promotes past the plan is judged at its rungs rather than cut after the first
        (the winner then gets less); the whole budget when there is no race."""
        if self.continue_best and self.time_budget_s is not None:
            return min(RACE_OVERRUN * self.race_budget_s, self.time_budget_s)
        return self.time_budget_s

    @property
    def max_t(self) -> float:
        """ASHA's ``max_t``: a whole trial, in ``time_attr`` units (the race's end when the winner
        continues)."""
        if self.time_attr == "epoch":
            return self.max_epochs
        return self.race_seconds if self.continue_best else self.max_train_seconds

    @property
    def rungs(self) -> list[float]:
        """Where ASHA compares trials, in ``time_attr`` units: ``grace_period * reduction_factor**k``
        below ``max_t`` (Ray's ``_Bracket`` milestones, ray/tune/schedulers/async_hyperband.py)."""
        rungs, k = [], 0
        while self.grace_period * self.reduction_factor ** k < self.max_t:  # Ray's arithmetic, to the bit
            rungs.append(self.grace_period * self.reduction_factor ** k)
            k += 1
        return rungs

    @property
    def max_t_key(self) -> str:
        if self.time_attr == "epoch":
            return "max_epochs"
        return "race_seconds" if self.continue_best else "max_train_seconds"
