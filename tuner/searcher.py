"""The searcher: Optuna's sampler behind Ray Tune's ``Searcher`` hooks, telling the study each
trial's true outcome.

Ray Tune's stock ``OptunaSearch`` tells Optuna that a trial ASHA stopped at epoch 2 is
``COMPLETE`` with its epoch-2 ``val_psnr`` (ray/tune/search/optuna/optuna_search.py,
``on_trial_complete``). TPE then ranks 2-epoch scores against full-length ones and learns that
fast starters are best. :class:`StudySearch` tells Optuna what native Optuna pruning would
have recorded:

- a trial stopped early by the scheduler is ``PRUNED``, with its per-result ``val_psnr`` as
  intermediate values (TPE ranks pruned trials by how far they got, then by their last value);
- a trial that ran to ``max_t`` is ``COMPLETE`` with its best ``val_psnr`` (the checkpoint the
  search exports);
- a trial that diverged is ``COMPLETE`` with the worst score, :data:`tuner.metrics.DIVERGED_PSNR`;
- a trial that errored is ``FAIL``.

It is a plain ``ray.tune.search.Searcher`` (the documented hooks: ``set_search_properties``,
``suggest``, ``on_trial_result``, ``on_trial_complete``, ``save``, ``restore``) on Optuna's public
study API (``Study.ask`` with the space's distributions, ``Trial.report``, ``Study.tell``); the
study's database is :mod:`tuner.study`'s. The search space comes from Tune's ``param_space``,
converted by ``OptunaSearch.convert_search_space`` (the distributions Ray's own Optuna searcher
would use, so a study written by either is the same). Only the driver writes the study: the
searcher runs there.
"""
from __future__ import annotations

import logging
import pickle
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from tuner.metrics import DIVERGED_PSNR, METRIC, MODE
from tuner.storage import is_uri
from tuner.study import RAY_TRIAL_ID, default_storage_url, open_storage, url_of

log = logging.getLogger(__name__)

_run_dir: Optional[str] = None  # where the run folder of the search being resumed is now
_ray_trials: Optional[set[str]] = None  # the Ray trials that resume brings back


@contextmanager
def resuming_in(run_dir: str, ray_trials: Optional[set[str]] = None) -> Iterator[None]:
    """While Ray restores a search (``Tuner.restore`` and ``fit``), a :class:`StudySearch` whose
    study is its run folder's ``study.db`` reopens the one in ``run_dir``: the folder may have
    been moved or copied since it was pickled.

    ``ray_trials``: the ids of the trials in Ray's snapshot (:func:`tuner.resume.recorded_trials`).
    Ray saves the searcher apart from its snapshot, and a kill can leave the two from different
    saves: the restored searcher then maps exactly these trials to their study trials (by the study
    trial's ``ray_trial_id``), and treats a running study trial of any other Ray trial as asked
    after the snapshot (:meth:`StudySearch.suggest` hands it out again)."""
    global _run_dir, _ray_trials
    (_run_dir, _ray_trials), before = (run_dir, ray_trials), (_run_dir, _ray_trials)
    try:
        yield
    finally:
        _run_dir, _ray_trials = before


class StudySearch(Searcher):
    """Ray Tune's searcher for a tuner run: each Ray trial is a trial of the run's Optuna study.

    Args:
        max_t: a trial whose ``time_attr`` reached this ran to the end (ASHA's ``max_t``).
        time_attr: ``epoch``, or ``train_seconds`` for budgets in training seconds.
        storage: the study's database (:func:`tuner.study.open_storage`, or Optuna's
            ``InMemoryStorage``), the study already made (:func:`tuner.study.create_study`).
        study_name: the study (the run's name).
        sampler: the Optuna sampler (:func:`tuner.search.make_sampler`: TPE).
        run_dir: the run folder; a study in its ``study.db`` moves with it (:func:`resuming_in`).
        metric, mode: what the trials report and which way is better.
        space: the Tune search space (the Tuner's ``param_space``; its constants are ignored), as Ray's
            ``OptunaSearch(space=...)`` takes one. It is pickled with the searcher (``tuner.pkl``), so
            a searcher that Ray brings back without its saved state (a restore that found none)
            still knows it. Without it, :meth:`set_search_properties` sets it from ``param_space``.
    """

    def __init__(self, *, max_t: float, time_attr: str = "epoch", storage: Optional[optuna.storages.BaseStorage] = None,
                 study_name: Optional[str] = None, sampler: Optional[optuna.samplers.BaseSampler] = None,
                 run_dir: Optional[str] = None, metric: Optional[str] = METRIC, mode: Optional[str] = MODE,
                 space: Optional[dict[str, Any]] = None):
        super().__init__(metric=metric, mode=mode)
        self._max_t, self._time_attr = max_t, time_attr
        self._storage, self._study_name, self._sampler = storage, study_name, sampler
        # Optuna's distributions of the space (set_search_properties, when not given here)
        self._space: Optional[dict[str, optuna.distributions.BaseDistribution]] = distributions(space) if space else None
        self._numbers: dict[str, int] = {}  # Ray trial id -> its study trial's number
        self._best: dict[str, float] = {}  # Ray trial id -> best val_psnr reported so far
        self._ended: set[str] = set()  # Ray trials told their outcome
        self._study_in_run = bool(run_dir and storage is not None and url_of(storage) == default_storage_url(run_dir))
        # Only a searcher restored after an interruption can meet study trials it did not ask for
        # (suggest); a fresh one never reads the running trials back for them.
        self._may_have_orphans = False
        self._study: Optional[optuna.Study] = None  # opened on first use; never pickled
        self._trials: dict[str, optuna.trial.Trial] = {}  # Ray trial id -> its open study trial; never pickled

    # ------------------------------------------------------------ the study
    @property
    def study(self) -> optuna.Study:
        """The run's study, opened on first use with this searcher's sampler (pruning is ASHA's)."""
        if self._study is None:
            self._study = optuna.load_study(study_name=self._study_name, storage=self._storage,
                                            sampler=self._sampler, pruner=optuna.pruners.NopPruner())
        return self._study

    def _trial(self, trial_id: str) -> optuna.trial.Trial:
        """The study trial of Ray trial ``trial_id``: the one :meth:`suggest` asked, or after a
        restore, the one its number names."""
        if trial_id not in self._trials:
            if trial_id not in self._numbers:  # restored without Ray's snapshot's trials (resuming_in)
                self._match(set(self._numbers) | {trial_id})
            study_id = self._storage.get_study_id_from_name(self._study_name)
            optuna_id = self._storage.get_trial_id_from_study_id_trial_number(study_id, self._numbers[trial_id])
            self._trials[trial_id] = optuna.trial.Trial(self.study, optuna_id)
        return self._trials[trial_id]

    # ------------------------------------------------------------ Ray Tune's hooks
    def set_search_properties(self, metric: Optional[str], mode: Optional[str], config: dict, **spec: Any) -> bool:
        """Take the space from Tune's ``param_space`` (its domains; constants pass through Tune).
        False (Ray then says the searcher has a space already) for a space other than the one given."""
        space = distributions(config) if config else None
        if self._space is not None and space is not None and space != self._space:
            return False
        self._space = self._space or space
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        return True

    def suggest(self, trial_id: str) -> Optional[dict]:
        if self._space is None:
            raise RuntimeError("StudySearch.suggest before set_search_properties: give the Tuner a param_space")
        # After a driver crash, the study holds trials asked after Tune's last snapshot: Tune will
        # ask for that many again. Hand those out first, so the study gains no duplicates.
        orphan = self._orphan()
        if orphan is not None:
            log.info("resuming: trial %s takes over study trial #%d, asked before the interruption",
                     trial_id, orphan.number)
            self._numbers[trial_id] = orphan.number
            trial = self._trial(trial_id)
            for name, distribution in self._space.items():  # a kill inside Study.ask left some unset
                if name not in orphan.params:
                    _suggest(trial, name, distribution)
        else:
            # Enqueued trials (the spec's start_from) come first, completed by the sampler if partial.
            trial = self.study.ask(fixed_distributions=self._space)
            self._numbers[trial_id], self._trials[trial_id] = trial.number, trial
        # The study trial names its Ray trial: its folder is trial_<id>, and a resume finds the
        # study trial of a Ray trial by it (tuner.resume).
        trial.set_user_attr(RAY_TRIAL_ID, trial_id)
        return dict(trial.params)

    def _orphan(self) -> Optional[optuna.trial.FrozenTrial]:
        if not self._may_have_orphans:
            return None
        known = set(self._numbers.values())
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number not in known and set(t.params) <= set(self._space):
                return t
        self._may_have_orphans = False  # all taken over: every trial asked from now on is this searcher's
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value = result.get(self.metric)
        if value is None or trial_id in self._ended:
            return
        self._best[trial_id] = max(self._best.get(trial_id, value), value)
        try:
            with warnings.catch_warnings():
                # A trial resumed from a checkpoint repeats the epochs after it, which the study
                # recorded before the interruption: it keeps the values it has, without a word.
                warnings.filterwarnings("ignore", message="The reported value is ignored because this")
                self._trial(trial_id).report(value, step=result["training_iteration"])
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # a resumed trial repeats results the study recorded before the interruption

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id in self._ended:
            return
        if result and not error and result.get(self.metric) is not None:
            # Tune hands the result that ended a trial (its last epoch, or the one ASHA stopped
            # it at) to on_trial_complete alone: record it as the trial's last intermediate value.
            self.on_trial_result(trial_id, result)
        value: Optional[float] = None
        if error:
            state = TrialState.FAIL
        elif not result or result.get(self.metric) is None:
            state = TrialState.PRUNED  # ended before its first result: nothing to rank it by
        elif result.get("diverged"):
            state, value = TrialState.COMPLETE, DIVERGED_PSNR
        elif result.get(self._time_attr, 0) >= self._max_t:
            state, value = TrialState.COMPLETE, self._best.get(trial_id, result[self.metric])
        else:
            state = TrialState.PRUNED  # stopped by the scheduler at a rung
        # A trial told before an interruption (it ended just before the driver was killed, and the
        # resumed Ray ends it again from its last checkpoint) keeps what the study has.
        self.study.tell(self._trial(trial_id), value, state=state, skip_if_finished=True)
        self._ended.add(trial_id)
        self._trials.pop(trial_id, None)

    # ------------------------------------------------------------ pickling (tuner.pkl, searcher-state-*.pkl)
    # A database study is pickled as its URL, not as Optuna objects, and reopened from it. A run
    # folder copied to another machine would otherwise fail to resume (the old folder does not
    # exist), or worse, resume writing into the old folder's study. A study kept only in memory (a
    # run on a URI without --study-storage) is pickled whole: the pickle is all there is of it.

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_study"], state["_trials"] = None, {}
        url = url_of(self._storage) if self._storage is not None else None
        if url is not None:
            state["_storage"] = url
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = _from_optuna_search(state) or state
        old_ids = state.pop("_optuna_trial_ids", {})  # only in a state _from_optuna_search made
        self.__dict__.update(state)
        self._may_have_orphans = True
        if isinstance(self._storage, str):
            url = self._storage
            if self._study_in_run and _run_dir is not None and not is_uri(_run_dir):
                url = default_storage_url(_run_dir) or url
            if url != self._storage:
                log.info("the run folder moved: its study is now %s", url)
            self._storage = open_storage(url)
        self._numbers.update({k: self._storage.get_trial(i).number for k, i in old_ids.items()})
        if _ray_trials is not None:
            self._match(_ray_trials)

    def _match(self, ray_trials: set[str]) -> None:
        """Map exactly the Ray trials of Ray's snapshot to their study trials: one this state knows
        but the snapshot lost is forgotten (its study trial is handed out again), one the snapshot
        has but this older state lacks is found by its study trial's ``ray_trial_id``."""
        lost = set(self._numbers) - ray_trials
        if lost:
            log.info("resuming: Ray's snapshot lost trial(s) %s, which the searcher had asked for",
                     ", ".join(sorted(lost)))
        self._numbers = {k: n for k, n in self._numbers.items() if k in ray_trials}
        missing = ray_trials - set(self._numbers)
        if missing:
            for t in self.study.get_trials(deepcopy=False):
                if t.user_attrs.get(RAY_TRIAL_ID) in missing:
                    self._numbers[t.user_attrs[RAY_TRIAL_ID]] = t.number

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_bytes(pickle.dumps(self.__getstate__()))

    def restore(self, checkpoint_path: str) -> None:
        self.__setstate__(pickle.loads(Path(checkpoint_path).read_bytes()))


def distributions(space: dict[str, Any]) -> dict[str, optuna.distributions.BaseDistribution]:
    """Optuna's distributions of a Tune search space: ``OptunaSearch.convert_search_space``, the
    ones Ray's own Optuna searcher would ask with (so a study written by either is the same)."""
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch.convert_search_space(space)


def _suggest(trial: optuna.trial.Trial, name: str, distribution: optuna.distributions.BaseDistribution) -> None:
    """Sample parameter ``name`` of a study trial with the study's sampler, through Optuna's public
    ``suggest_*`` API (what ``Study.ask(fixed_distributions)`` does for each one)."""
    d = distribution
    if isinstance(d, optuna.distributions.FloatDistribution):
        trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    elif isinstance(d, optuna.distributions.IntDistribution):
        trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
    elif isinstance(d, optuna.distributions.CategoricalDistribution):
        trial.suggest_categorical(name, d.choices)
    else:
        raise TypeError(f"parameter {name!r}: no Optuna suggest_* call for {type(d).__name__}")


def _from_optuna_search(old: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The state of a searcher pickled by tuner when :class:`StudySearch` was a subclass of Ray's
    ``OptunaSearch``, so that a run started then resumes with this searcher; None for any other
    state. The one place that reads ``OptunaSearch``'s attribute names (``_ot_trials``: the study
    trials of a study kept in memory; ``_ot_trial_ids``: those of a database, by Optuna's trial id,
    made numbers in :meth:`StudySearch.__setstate__` once the database is open). Tested by the
    resume of the run recorded in that format (tests/test_contract.py); drop it when that run is
    recorded again."""
    if "_ot_trials" not in old:
        return None
    storage = old["_storage"]
    state = StudySearch(max_t=old["_max_t"]).__dict__
    state.update({k: old[k] for k in ("_metric", "_mode", "_time_attr", "_study_name", "_sampler", "_best") if k in old})
    state["_storage"] = getattr(storage, "url", storage)
    state["_study_in_run"] = old.get("_study_in_run", False)
    state["_space"] = old.get("_space")
    state["_ended"] = set(old.get("_completed_trials", ()))
    state["_numbers"] = {k: t.number for k, t in old["_ot_trials"].items()}
    state["_optuna_trial_ids"] = old.get("_ot_trial_ids", {})
    return state
