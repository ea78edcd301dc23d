"""The race's scheduler: Ray Tune's asynchronous ASHA, with the warm start's lead applied at its rungs.

In a race (``budget.continue_best``) the winner continues alone, and a warm start (the spec's
``start_from``, the user's prior) keeps its place unless a challenger leads it by more than it gained
since its previous rung (:func:`tuner.search.warm_start_margin`, :func:`tuner.search.race_winner`).
A challenger that does not clear that bar at a rung cannot become the winner the way it is going,
and ASHA alone would promote it rung after rung while it ties the warm start: :class:`WarmStartASHA`
stops it there, so its training seconds go to the winner instead.
"""
from __future__ import annotations

import logging
import math
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from tuner.search import is_warm_start, value_at, warm_start_margin

log = logging.getLogger(__name__)


class WarmStartASHA(AsyncHyperBandScheduler):
    """Asynchronous ASHA that also stops a challenger at a rung past the first where it leads the best
    warm start by no more than :func:`~tuner.search.warm_start_margin`, the lead
    :func:`~tuner.search.race_winner` asks of it at the race's end. Measured on the headline task
    (``bsd68.yaml``), ASHA alone promoted two challengers that tied the warm start to the race's end:
    456 of the search's 1754 training seconds, lost.

    Args:
        start_from: the spec's warm starts.
        rungs: ASHA's rungs (``BudgetSpec.rungs``), in ``time_attr`` units.
        **kwargs: :class:`~ray.tune.schedulers.AsyncHyperBandScheduler`'s.
    """

    def __init__(self, start_from: list[dict[str, Any]], rungs: list[float], **kwargs: Any):
        super().__init__(**kwargs)
        self._start_from = [dict(point) for point in start_from]
        self._rungs = sorted(rungs)
        self._histories: dict[str, list[tuple[float, float]]] = {}  # kept by save() / restore(): a resumed race
        self._warm: set[str] = set()

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        if is_warm_start(trial.config, self._start_from):
            self._warm.add(trial.trial_id)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        t, v = result.get(self._time_attr), result.get(self._metric)
        if t is None or v is None or not math.isfinite(v):
            return action
        history = self._histories.setdefault(trial.trial_id, [])
        before = history[-1][0] if history else -math.inf
        history.append((float(t), float(v)))
        if action != TrialScheduler.CONTINUE or trial.trial_id in self._warm:
            return action
        for rung in (r for r in self._rungs[1:] if before < r <= t):  # at the first, no gain to measure
            bars = []  # (the challenger's lead over a warm start there, the lead it needs)
            for key in self._warm & self._histories.keys():
                warm = self._histories[key]
                margin = warm_start_margin(warm, rung, self._rungs)
                if margin is not None:
                    bars.append((v - value_at(warm, rung), margin))
            if bars and min(bars)[0] <= min(bars)[1]:
                lead, margin = min(bars)
                log.info("trial %s stopped at %g %s: it leads the warm start by %.2f dB, no more than the warm "
                         "start gained since its previous rung (%.2f dB)", trial.trial_id, rung, self._time_attr,
                         lead, margin)
                return TrialScheduler.STOP
        return action
