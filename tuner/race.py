"""The race's rules: how a race of trials is judged, with no Ray in it.

A search with ``budget.continue_best`` is first a race (:func:`tuner.search.run_search`): ASHA stops
trials at its rungs (:class:`tuner.scheduler.WarmStartASHA`, which applies the rules below at each
rung), and at the race's end its winner continues alone (:func:`tuner.search.continue_winner`). This
module holds what both judge by, as plain functions of the trials' validation histories
(``(train_seconds, val_psnr)`` per report): the warm start's margin and the tie rule
(:func:`warm_start_margin`, :func:`is_tie`, :func:`is_tie_in_mid_race`), the winner
(:func:`race_winner`), residual models still at the noisy input (:func:`at_noisy_input`,
:func:`not_past_noisy_input`), the late starter (:func:`late_starter`, :func:`late_start_bar`) and the
winner's training seconds (:func:`continuation_seconds`). docs/search-spaces.md explains the race;
docs/benchmarks.md has the measurements behind each constant.
"""
from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any, Optional

from tuner.budget import CONTINUE_START_S, TRAINING_SHARE
from tuner.config import residual_mode

IDENTITY_DB = 1.0  # a val_psnr within this of the noisy input's: the model has not left the identity yet
TIE_DB = 0.6  # a lead over a warm start within this (and its margin): a tie (ties measured: 0.05-0.55 dB; a 0.75 lead, a better model)
STEEP_DB = 2.0  # a warm start that gained more than this over a rung interval still climbs steeply: a lead there is no tie in mid-race


def is_warm_start(config: dict[str, Any], start_from: list[dict[str, Any]]) -> bool:
    """Whether a trial's ``config`` is one of the spec's ``start_from`` points (every value it names)."""
    return any(all(config.get(k) == v for k, v in point.items()) for point in start_from)


def value_at(history: list[tuple[float, float]], rung: float) -> Optional[float]:
    """The first ``val_psnr`` at or past ``rung`` training seconds, or None if it never got there."""
    return next((v for t, v in history if t >= rung), None)


def warm_start_margin(warm: list[tuple[float, float]], rung: float, rungs: Collection[float]) -> Optional[float]:
    """How far a challenger must lead a warm start at ``rung`` to take its place: what the warm start
    gained there since the highest lower rung it reached (0 if it lost ground); None if it has not
    reached ``rung`` or reached no rung below it. A lead that one more rung interval of the warm
    start's own progress would close is within what a short race cannot tell: a smaller or faster-
    starting configuration leads early, and a validation in mid-schedule swings by a few tenths of a
    dB (docs/benchmarks.md, "The warm start's lead").

    Args:
        warm: the warm start's validations, ``(train_seconds, val_psnr)`` in order, finite.
        rung: where it is compared, in training seconds.
        rungs: ASHA's rungs and the race's end.
    """
    here = value_at(warm, rung)
    below = [v for v in (value_at(warm, r) for r in sorted(rungs, reverse=True) if r < rung) if v is not None]
    if here is None or not below:
        return None
    return max(0.0, here - below[0])


def is_tie(lead: float, margin: float) -> bool:
    """Whether a challenger's ``lead`` over a warm start is a tie: within the warm start's ``margin``
    (:func:`warm_start_margin`) and within :data:`TIE_DB`. A tie keeps the warm start's place at the
    race's end (:func:`race_winner`), and stops the challenger at a rung where the warm start is near
    its plateau (:func:`is_tie_in_mid_race`)."""
    return lead <= min(margin, TIE_DB)


def is_tie_in_mid_race(lead: float, margin: float) -> bool:
    """Whether a challenger's ``lead`` over a warm start at a rung in mid-race is a tie
    (:class:`tuner.scheduler.WarmStartASHA` stops it there): :func:`is_tie`, and, for a challenger
    ahead, only where the warm start gained no more than :data:`STEEP_DB` since its previous rung.

    Where the warm start still gains several dB per rung interval, where the curves stand says little
    of where they end: a lead there is ASHA's to judge, as any other, and the race's end judges it
    with the whole tie rule. Measured: the ties stopped at the headline's rungs were judged where the
    warm start had gained 1.1-1.4 dB; on ``benchmarks/versus/conv_notebook.yaml`` (seed 1, 2026-12-06)
    a challenger ahead by 0.59 dB at 7.2 training seconds, where the warm start had gained 5.18, was
    stopped as a tie, and trained on alone to the race's end it scored 25.71 dB against the race's
    winner's 24.36 (docs/benchmarks.md, "A lead on a steep curve"). A challenger behind the warm start
    is a tie wherever it stands."""
    return is_tie(lead, margin) and (lead <= 0 or margin <= STEEP_DB)


def is_residual(config: dict[str, Any]) -> bool:
    """Whether a configuration is a residual model (``residual: pixel`` or ``logit``, or ``true``, the
    spelling ``search_spaces/quickstart.yaml`` searches: :func:`tuner.config.residual_mode`): it starts
    as the identity."""
    return residual_mode(config.get("residual", "none")) != "none"


def at_noisy_input(config: dict[str, Any], value: float, identity: Optional[float]) -> bool:
    """Whether a residual model (``residual: pixel`` or ``logit``, which starts as the identity) still
    scores within :data:`IDENTITY_DB` of the noisy input's ``val_psnr`` (``identity``; None: unknown)."""
    return (identity is not None and is_residual(config)
            and abs(value - identity) <= IDENTITY_DB)


def not_past_noisy_input(config: dict[str, Any], value: float, identity: Optional[float]) -> bool:
    """Whether a residual model scores no more than :data:`IDENTITY_DB` above the noisy input's
    ``val_psnr`` (``identity``; None: unknown), below it included: at the first rung a residual model
    with batch norm starts under the identity (its normalised features do not yet pass the input
    through; measured on ``benchmarks/versus/photos_notebook.yaml``, seed 1: 16.2 dB at 4.5 s against
    the noisy input's 18.3, then a model that scored 32.0 at 130 s)."""
    return (identity is not None and is_residual(config)
            and value <= identity + IDENTITY_DB)


def race_winner(histories: dict[str, list[tuple[float, float]]], rungs: list[float],
                incumbents: Collection[str] = ()) -> Optional[str]:
    """The race's best trial, judged as ASHA judges: at the highest rung that two or more trials
    reached, by the first ``val_psnr`` at or past it (so a trial that ran further is not preferred
    for its extra training); with no such rung (one trial), the best ``val_psnr``. The best warm
    start there (``incumbents``: the spec's ``start_from``, the user's prior) keeps the lead against
    a tie: a challenger that leads it by no more than :func:`warm_start_margin` and no more than
    :data:`TIE_DB` (of the four challengers measured that won a race by 0.05-0.55 dB, none finished
    more than 0.01 dB above the warm start trained alone, three below; the one measured ahead by more,
    0.75 dB on ``benchmarks/versus/conv_notebook.yaml``'s seed 1 where the warm start had gained 2.16,
    scored 0.69 dB above it, each trained alone for the whole budget). A larger lead wins even where the warm
    start is still climbing faster: a recipe far from the task's best can gain several dB per rung
    interval on its way to a plateau under the challenger's (``benchmarks/versus/digits_bn_notebook.yaml``,
    2026-12-06: a residual U-Net at 30.62 dB at the race's end against seed 004's recipe at 27.56,
    which had gained 3.86 since the last rung).

    Args:
        histories: each trial's validations, ``(train_seconds, val_psnr)`` in order.
        rungs: ASHA's rungs and the race's end, in training seconds.
        incumbents: the keys of the warm-start trials.

    Returns:
        The winner's key, or None when no trial has a finite validation.
    """
    histories = {k: [(t, v) for t, v in h if math.isfinite(v)] for k, h in histories.items()}
    histories = {k: h for k, h in histories.items() if h}
    if not histories:
        return None
    rung = judged_rung(histories, rungs)
    if rung is not None:
        here = {k: v for k, v in ((k, value_at(h, rung)) for k, h in histories.items()) if v is not None}
        best = max(here, key=here.get)
        warm = [k for k in here if k in incumbents]
        if best in incumbents or not warm:
            return best
        prior = max(warm, key=here.get)
        margin = warm_start_margin(histories[prior], rung, rungs) or 0.0
        return prior if is_tie(here[best] - here[prior], margin) else best
    return max(histories, key=lambda k: max(v for _, v in histories[k]))


def judged_rung(histories: dict[str, list[tuple[float, float]]], rungs: list[float]) -> Optional[float]:
    """The highest of ``rungs`` that two or more trials reached (:func:`value_at`), where the race is
    judged; None when no rung was reached by two."""
    return max((r for r in rungs if sum(value_at(h, r) is not None for h in histories.values()) >= 2), default=None)


def race_lead(histories: dict[str, list[tuple[float, float]]], rungs: list[float], challenger: str,
              warm: str) -> tuple[float, float, float]:
    """Where :func:`race_winner` compared ``challenger`` with the warm start ``warm`` (the highest rung
    two or more trials reached), the challenger's lead there and the warm start's margin
    (:func:`warm_start_margin`, 0 without one): what the race's end log says of a tie.

    Args:
        histories: each trial's validations, ``(train_seconds, val_psnr)`` in order, finite; both
            trials reached the rung (``race_winner`` compared them there).
        rungs: ASHA's rungs and the race's end, in training seconds.
        challenger: the key of the trial that led.
        warm: the key of the warm start.
    """
    rung = judged_rung(histories, rungs)
    lead = value_at(histories[challenger], rung) - value_at(histories[warm], rung)
    return rung, lead, warm_start_margin(histories[warm], rung, rungs) or 0.0


def late_starter(histories: dict[str, list[tuple[float, float]]], configs: dict[str, dict[str, Any]],
                 rungs: list[float], winner: str, identity: Optional[float]) -> Optional[str]:
    """The race's late starter, or None: a residual challenger that had not left the noisy input at
    the second rung (:func:`not_past_noisy_input`: what :class:`tuner.scheduler.WarmStartASHA`
    hedges, at that rung or the first), ran to the race's end, lost it to ``winner``, and had left
    the noisy input by then (by more than :data:`IDENTITY_DB`). Under impulse noise such a model can
    sit at the identity for 40-60 training seconds before it learns which pixels are corrupted, then
    overtake every plain autoencoder (docs/search-spaces.md, "Late starters"); one still there at the
    race's end shows no sign of leaving it (the photo recipe's seed 3, 2026-12-06: a residual
    autoencoder without skips, hedged at the first rung, at 17.7 dB from 13 to 68 s under the noisy
    input's 18.3, against the winner's 27.5). Of several, the best at the race's end.

    Args:
        histories: each race trial's validations, ``(train_seconds, val_psnr)`` in order, finite.
        configs: each race trial's configuration.
        rungs: ASHA's rungs and the race's end (last), in training seconds.
        winner: the race's winner (:func:`race_winner`).
        identity: the noisy validation images' own ``val_psnr``; None: no late starter.
    """
    if identity is None or len(rungs) < 3:
        return None
    second, end = sorted(rungs)[1], max(rungs)
    late = {}
    for key, history in histories.items():
        early, last = value_at(history, second), value_at(history, end)
        if (key != winner and early is not None and last is not None and last > identity + IDENTITY_DB
                and not_past_noisy_input(configs[key], early, identity)):
            late[key] = last
    return max(late, key=late.get) if late else None


def late_start_bar(winner: list[tuple[float, float]], rungs: list[float], until: float) -> float:
    """What a late starter must score at ``until`` training seconds to take the race's winner's place:
    the winner's ``val_psnr`` at the race's end (the last of ``rungs``) plus its gain since the highest
    lower rung it reached, extrapolated in log-time to ``until`` (learning curves rise about evenly
    per doubling of training; the winner's measured gain from there on was smaller: a lenient bar
    for the winner, a strict one for the late starter).

    Args:
        winner: the winner's validations in the race, ``(train_seconds, val_psnr)`` in order, finite.
        rungs: ASHA's rungs and the race's end (last), in training seconds.
        until: where the late starter's second interval ends, in training seconds.
    """
    end = max(rungs)
    here = value_at(winner, end)
    if here is None:
        return winner[-1][1]
    below = [r for r in sorted(rungs, reverse=True) if r < end and value_at(winner, r) is not None]
    if not below or until <= end:
        return here
    gain = max(0.0, here - value_at(winner, below[0]))
    return here + gain * math.log(until / end) / math.log(end / below[0])


def continuation_seconds(trained: float, left_s: float, race_clock: list[tuple[float, float]],
                         val_s: float = 0.0) -> float:
    """Where the winner's training ends (its ``max_train_seconds``): what it trained in the race plus
    what fits in the ``left_s`` wall seconds left, at the share of its wall time it spent training in
    the race (measured between its first and last report, so its start-up is not counted; at most
    TRAINING_SHARE), after its start-up (CONTINUE_START_S) and one last validation (``val_s``). The
    winner then ends by itself, validated and checkpointed, before Ray Tune's time budget would stop
    it and lose its last stretch, where the schedule's learning rate is lowest (a colour search
    planned at TRAINING_SHARE alone was stopped 40 of its 320 training seconds short).

    Args:
        trained: the winner's training seconds at its checkpoint.
        left_s: wall seconds left of the search's time budget.
        race_clock: the winner's reports in the race, ``(time_total_s, train_seconds)`` in order.
        val_s: the wall seconds of one validation.
    """
    return trained + training_share(race_clock) * max(0.0, left_s - CONTINUE_START_S - val_s)


def training_share(clock: list[tuple[float, float]]) -> float:
    """The share of a trial's wall time it spent training, between its first and last report
    (``clock``: ``(time_total_s, train_seconds)`` per report), within [0.5, TRAINING_SHARE];
    TRAINING_SHARE when there is nothing to measure."""
    if len(clock) >= 2:
        (w0, t0), (w1, t1) = clock[0], clock[-1]
        if w1 > w0:
            return min(TRAINING_SHARE, max(0.5, (t1 - t0) / (w1 - w0)))
    return TRAINING_SHARE
