"""The race's scheduler: Ray Tune's asynchronous ASHA, with the warm start's lead applied at its rungs.

In a race (``budget.continue_best``) the winner continues alone, and a warm start (the spec's
``start_from``, the user's prior) keeps its place at the race's end against a tie: a challenger that
leads it by no more than it gained since its previous rung (:func:`tuner.race.warm_start_margin`)
and no more than :data:`~tuner.race.TIE_DB` (:func:`tuner.race.race_winner`). ASHA alone would
promote a challenger that ties the warm start rung after rung, to lose there: :class:`WarmStartASHA`
stops it at the first rung past the first where it ties, so its training seconds go to the winner
instead. A larger lead is not judged by the margin alone: while the warm start is still climbing
steeply, its gain over one rung interval is several dB, and a challenger ahead by less may be a
better model rather than a faster start (measured on ``benchmarks/versus/photos_notebook.yaml``, seed
2: a U-Net that led the warm start by 2.13 dB at 13 training seconds, where the warm start had gained
4.13 since the first rung, was stopped; trained alone on the race's schedule it led by 3.2 dB at the
race's end). For the same reason a lead of any size is no tie in mid-race where the warm start
gained more than :data:`~tuner.race.STEEP_DB` over the interval
(:func:`tuner.race.is_tie_in_mid_race`). ASHA's own screening still applies at every rung.

A residual model (``residual: pixel`` or ``logit``) starts as the identity: its first validations
score the noisy input itself. Under impulse noise it can sit there for tens of training seconds
before it learns which pixels are corrupted, then overtake every plain autoencoder (measured on
``benchmarks/versus/photos_notebook.yaml``, 10% impulse noise: a residual U-Net scored 18.6 dB at 13
training seconds, the noisy input's 18.3, then 22.1 at 39 s and 30.4 at 68 s, where the warm start, a
plain autoencoder, scored 20.5, 24.2 and 25.0). Its score at a rung then says when it will start,
not where it will end: a challenger still within :data:`tuner.race.IDENTITY_DB` of the noisy input
at a rung past the first is not stopped there but **hedged**, judged only at the race's end
(Hyperband's bracket without early stopping), for at most :data:`HEDGED_PER_SLOT` challengers per
trial running at once. At the first rung no residual model has trained long enough to leave the
noisy input, and one with batch norm starts under it (the photo recipe's seed-1 U-Net: 16.2 dB at
4.5 s against the noisy input's 18.3, stopped there by ASHA; trained on alone, 32.0 at 130 s): where
the race's warm starts are all plain models, one not yet past the noisy input there is hedged too, if
it scores at least what the warm start does there (a plain model a few seconds into its own start).
Beside a residual warm start none is hedged at the first rung (the warm start is at the identity
there as well, and shows by the next rung how soon the family leaves it); and where that
warm start has left the noisy input by a later rung, a residual challenger still there is slow for
reasons of its own, and ASHA's screening stands too. A hedged challenger that scores less at a rung
than at the one before (by more than :data:`FALLBACK_DB`) has not begun to leave the noisy input, and is stopped there
(:meth:`WarmStartASHA._fell_back`). One that loses the race, having left the noisy
input by its end, may still be on its way up: it trains on for one more race interval before the
winner is named (:func:`tuner.search.continue_winner`).

Any model, plain or residual, can start slowly: where the warm start has not reached the noisy
input's ``val_psnr`` at the first rung, no model in the race denoises yet, and the rung ranks how
fast each begins, not where it goes. A challenger under the noisy input there is judged at the next
rung instead (one rung interval more each; there a residual one still at the noisy input may be
hedged); where the warm start has passed it, ASHA's first rung stands (:meth:`WarmStartASHA._defer`).
Each such deferral is paid out of the race's plan (``budget.race_train_s``, the training seconds its
trials were sized for): once the race has trained that long, ASHA's first rung stands again, so that
the trials TPE has not started yet are drawn and screened before the race's limit rather than cut by it.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from tuner.race import (IDENTITY_DB, TIE_DB, at_noisy_input, is_residual, is_tie_in_mid_race, is_warm_start,
                        not_past_noisy_input, value_at, warm_start_margin)

log = logging.getLogger(__name__)

HEDGED_PER_SLOT = 1  # hedged challengers per race, per trial running at once: each may cost a whole race_seconds
FALLBACK_DB = 0.1  # a hedged challenger that loses more than this from one rung to the next is stopped (_fell_back)


class WarmStartASHA(AsyncHyperBandScheduler):
    """Asynchronous ASHA that also stops a challenger at a rung past the first where it ties the best
    warm start: leads it by no more than :func:`~tuner.race.warm_start_margin` (the lead
    :func:`~tuner.race.race_winner` asks of it at the race's end) and no more than
    :data:`~tuner.race.TIE_DB`.
    Measured on the headline task (``bsd68.yaml``), ASHA alone promoted two challengers that tied the
    warm start to the race's end (ahead by 0.20-0.44 dB at 55 s): 456 of the search's 1754 training
    seconds, lost.

    A residual challenger still at the noisy input's ``val_psnr`` at a rung past the first is hedged
    instead of stopped (the module's docstring).

    Args:
        start_from: the spec's warm starts.
        rungs: ASHA's rungs (``BudgetSpec.rungs``), in ``time_attr`` units.
        identity_psnr: the noisy validation images' own ``val_psnr`` (:func:`tuner.train.noisy_baseline`);
            None: no challenger is hedged.
        max_hedged: how many challengers may be hedged in the race (default: :data:`HEDGED_PER_SLOT`).
        plan_train_s: the race's planned training seconds, its slots together
            (:attr:`~tuner.budget.BudgetSpec.race_train_s`): a challenger is judged past the first rung
            (:meth:`_defer`) only while the race's training so far and that rung interval fit in it; None: no bound.
        proven: configurations measured on this task already (a prior study's best,
            :func:`tuner.search.with_priors`): never stopped, judged at the race's end only, where
            they hold no lead against a tie (they are not warm starts). ASHA's
            first rung ranks how fast a model starts, not where it goes: on
            ``benchmarks/versus/dense_notebook.yaml`` (2026-12-06, seed 1 with seed 0's study as its
            prior) it stopped seed 0's winner at 1.9 training seconds, 10.85 dB, where the trials it
            kept scored 13.0 or less there (seed 0's race had ended with it at 20.13 dB, ahead of all).
        **kwargs: :class:`~ray.tune.schedulers.AsyncHyperBandScheduler`'s.
    """

    # A race pickled before proven configurations existed has none.
    _proven_points: tuple = ()
    _proven: frozenset = frozenset()
    _plan_train_s: Optional[float] = None  # nor a plan

    def __init__(self, start_from: list[dict[str, Any]], rungs: list[float], identity_psnr: Optional[float] = None,
                 max_hedged: int = HEDGED_PER_SLOT, proven: list[dict[str, Any]] = (),
                 plan_train_s: Optional[float] = None, **kwargs: Any):
        super().__init__(**kwargs)
        self._start_from = [dict(point) for point in start_from]
        self._proven_points = [dict(point) for point in proven]
        self._proven = set()
        self._rungs = sorted(rungs)
        self._histories: dict[str, list[tuple[float, float]]] = {}  # kept by save() / restore(): a resumed race
        self._warm: set[str] = set()
        self._residual_warm: set[str] = set()  # the warm starts that are residual models themselves
        self._identity = identity_psnr
        self._max_hedged = max_hedged
        self._hedged: set[str] = set()
        self._plan_train_s = plan_train_s

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        if self._proven_points and is_warm_start(trial.config, self._proven_points):
            self._proven.add(trial.trial_id)
        if is_warm_start(trial.config, self._start_from):
            self._warm.add(trial.trial_id)
            if is_residual(trial.config):
                self._residual_warm.add(trial.trial_id)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        t, v = result.get(self._time_attr), result.get(self._metric)
        if t is None or v is None or not math.isfinite(v):
            return action
        history = self._histories.setdefault(trial.trial_id, [])
        before = history[-1][0] if history else -math.inf
        history.append((float(t), float(v)))
        if trial.trial_id in self._hedged and self._fell_back(trial, before, t, v):
            return TrialScheduler.STOP
        if trial.trial_id in self._proven or trial.trial_id in self._hedged:  # judged at the race's end only
            return TrialScheduler.CONTINUE if t < self._max_t else action
        if trial.trial_id in self._warm:
            return action
        if action != TrialScheduler.CONTINUE:
            return self._defer(trial, before, t, v, self._hedge(trial, before, t, v, action))
        for rung in (r for r in self._rungs[1:] if before < r <= t):  # at the first, no gain to measure
            bars = []  # (the challenger's lead over a warm start there, the lead it needs)
            for key in self._warm & self._histories.keys():
                warm = self._histories[key]
                margin = warm_start_margin(warm, rung, self._rungs)
                if margin is not None:
                    bars.append((v - value_at(warm, rung), margin))
            lead, margin = min(bars, default=(math.inf, 0.0))  # against the best warm start there
            if is_tie_in_mid_race(lead, margin):
                action = self._hedge(trial, before, t, v, TrialScheduler.STOP)
                if action == TrialScheduler.STOP:
                    log.info("trial %s stopped at %g %s: %+.2f dB against the warm start, no lead past a tie (more "
                             "than %.2f: the warm start's gain since its previous rung, %.2f dB, within %g)",
                             trial.trial_id, rung, self._time_attr, lead, min(margin, TIE_DB), margin, TIE_DB)
                return action
        return action

    def _hedge(self, trial, before: float, t: float, v: float, action: str) -> str:
        """``action`` (a stop), or CONTINUE for a residual challenger that has not left the noisy
        input's ``val_psnr`` at the rung crossed since ``before``, while hedges are left: at a rung
        past the first, one still within :data:`~tuner.race.IDENTITY_DB` of it; at the first, where
        the race's warm starts are all plain models, one at most that far above it and at least where
        the warm start is (below the noisy input too: a residual model with batch norm starts there).
        With a residual warm start, ASHA's screening stands at the first rung: the warm start is there
        too, and shows by the next how soon this family leaves."""
        if len(self._hedged) >= self._max_hedged or t >= self._max_t or self._identity is None:
            return action
        rung = self._rung_crossed(before, t)
        if rung is None:
            return action
        if rung == self._rungs[0]:
            floor = self._plain_warm_start_at(rung)
            if floor is None or v < floor or not not_past_noisy_input(trial.config, v, self._identity):
                return action
        elif not at_noisy_input(trial.config, v, self._identity):
            return action
        elif self._warm_start_left_identity(rung):
            log.info("trial %s not hedged at %g %s: %.2f dB, still at the noisy input's %.2f, where the warm "
                     "start, a residual model too, had left it", trial.trial_id, rung, self._time_attr, v, self._identity)
            return action
        self._hedged.add(trial.trial_id)
        log.info("trial %s hedged at %g %s: %.2f dB, still at the noisy input's %.2f; it is judged at the "
                 "race's end", trial.trial_id, rung, self._time_attr, v, self._identity)
        return TrialScheduler.CONTINUE

    def _fell_back(self, trial, before: float, t: float, v: float) -> bool:
        """Whether a hedged challenger scores more than :data:`FALLBACK_DB` less at the rung crossed since
        ``before`` than at the rung before it: a hedge bets that a model at the noisy input is about to
        leave it, and one losing ground over a whole rung interval has not begun to. Measured on
        ``benchmarks/versus/photos_notebook.yaml``, seed 3 (2026-12-07, a 2-core AMD EPYC, twice): a
        residual model judged at the second rung (10.35 and 10.47 dB at the first), hedged there at 17.48
        and 17.35, scored 17.19 and 15.91 at the third and sat under the noisy input's 18.33 to the race's
        end, 53 of its 66 training seconds, while the race's limit cut its last trials. One still at the
        noisy input that later left it changed by -0.04 dB over a rung interval (``impulse_bsd68``, l1,
        15.72 then 15.68, then 21.99 at the next); those that left it gained several dB a rung. One that
        has left it (by more than :data:`~tuner.race.IDENTITY_DB`) is a model on its way, judged at the
        race's end whatever a rung's noise."""
        rung = self._rung_crossed(before, t)
        if rung is None or rung == self._rungs[0]:
            return False
        previous = value_at(self._histories[trial.trial_id], self._rungs[self._rungs.index(rung) - 1])
        if previous is None or v >= previous - FALLBACK_DB or not not_past_noisy_input(trial.config, v, self._identity):
            return False  # one past the noisy input has left it: the race's end judges it
        log.info("trial %s stopped at %g %s, hedged: %.2f dB, %.2f less than at the rung before; it is not leaving "
                 "the noisy input's %.2f", trial.trial_id, rung, self._time_attr, v, previous - v, self._identity)
        return True

    def _defer(self, trial, before: float, t: float, v: float, action: str) -> str:
        """``action``, or CONTINUE (to be judged at the next rung) for a challenger stopped at the
        first rung where neither it nor any warm start has reached the noisy input's ``val_psnr``
        there: no model in the race denoises yet, and the rung ranks how fast each begins, not where
        it goes. Measured on ``benchmarks/versus/conv_notebook.yaml``, seed 1: at 1.8 training seconds
        11 of 12 models scored under the noisy input's 12.03 dB, the warm start 8.60 (2026-12-07), and
        ASHA stopped a skip + batch-norm l1 model there at 8.13; the same model, trained alone on the
        race's schedule, scored 25.71 at 54 s, where the race's winner scored 24.36 (2026-12-06). It
        costs each such challenger one more rung interval (reduction_factor times the first rung). At
        the next rung a residual one still at the noisy input may be hedged, as at any rung past the
        first: on ``benchmarks/versus/photos_notebook.yaml``, seed 1 (2026-12-07), the U-Net that wins
        that task as a late starter scored 15.54 at the first rung, under the warm start's 17.11 (so
        not hedged there), and 17.95 at the second, where the noisy input scores 18.33.

        The race's plan pays for it (``plan_train_s``): a challenger is judged at the next rung only while
        the race's training so far, and the interval to that rung, fit in it. Without that bound the
        deferrals and the hedges they led to ran 7 of 9 races of 2026-12-07 to the race's limit
        (1.5 times its plan), and on the photo recipe's seed 3 the limit cut the sixth trial, which had
        won the race of the code before (37.18 dB against 33.69)."""
        first = self._rungs[0]
        if (action == TrialScheduler.CONTINUE or self._identity is None or t >= self._max_t
                or self._rung_crossed(before, t) != first or v >= self._identity):
            return action
        warm = self._warm_start_at(first)
        if warm is None or warm >= self._identity:
            return action
        spent = sum(history[-1][0] for history in self._histories.values())  # the race's training so far
        interval = next((r for r in self._rungs if r > t), self._max_t) - t
        if self._plan_train_s is not None and spent + interval > self._plan_train_s:
            log.info("trial %s stopped at %g %s, under the noisy input's %.2f as the warm start was: the race has "
                     "trained %.0f of the %.0f s it planned, too little left to judge it at the next rung",
                     trial.trial_id, first, self._time_attr, self._identity, spent, self._plan_train_s)
            return action
        log.info("trial %s judged at the next rung, not at %g %s: %.2f dB, where the warm start scored %.2f, "
                 "both under the noisy input's %.2f", trial.trial_id, first, self._time_attr, v, warm, self._identity)
        return TrialScheduler.CONTINUE

    def _rung_crossed(self, before: float, t: float) -> Optional[float]:
        """The lowest rung a trial crossed between its report at ``before`` and this one at ``t`` (None: none)."""
        return next((r for r in self._rungs if before < r <= t), None)

    def _plain_warm_start_at(self, rung: float) -> Optional[float]:
        """The best warm start's ``val_psnr`` at ``rung`` where every warm start is a plain model (None
        where one is residual, or none has reached it): what a model that starts from nothing scores
        there. A residual challenger under it has not even begun to learn the identity back (the photo
        recipe's seeds 3 and 4, 2026-12-06: two at 13.9 and 13.4 dB at the first rung, under the warm
        start's 16.8 and 13.8, were hedged and sat at the noisy input to the race's end: seed 4's winner
        trained 272 s instead of 418), where the seed-1 U-Net that won after the race (16.2 dB) was
        above the warm start's 15.9."""
        return None if self._residual_warm else self._warm_start_at(rung)

    def _warm_start_at(self, rung: float) -> Optional[float]:
        """The best warm start's ``val_psnr`` at ``rung`` (None where none has reached it)."""
        here = [value_at(self._histories[key], rung) for key in self._warm & self._histories.keys()]
        return max((v for v in here if v is not None), default=None)

    def _warm_start_left_identity(self, rung: float) -> bool:
        """Whether a residual warm start scored above the noisy input (by more than
        :data:`~tuner.race.IDENTITY_DB`) at ``rung``: how long a residual model takes to leave the
        identity is then measured on this task, and a residual challenger still there is slow for
        reasons of its own (an l1 loss under impulse noise, which the identity already scores zero
        on every clean pixel; a low learning rate), not for its family's start. Measured on
        ``benchmarks/versus/impulse_bsd68.yaml`` (2026-12-06): an l1 U-Net hedged at 14.5 s, where the
        warm start (a U-Net of the same family, mse) scored 22.5 dB, trained on to 151 s as a late
        starter and scored 26.8, under the 27.3 the winner's curve asked: 145 of the search's 554 s, lost."""
        for key in self._residual_warm & self._histories.keys():
            v = value_at(self._histories[key], rung)
            if v is not None and self._identity is not None and v > self._identity + IDENTITY_DB:
                return True
        return False
