"""The Optuna study of a search: what its trials are told, and the database that keeps them.

Ray Tune's stock ``OptunaSearch`` tells Optuna that a trial ASHA stopped at epoch 2 is
``COMPLETE`` with its epoch-2 ``val_psnr`` (ray/tune/search/optuna/optuna_search.py,
``on_trial_complete``). TPE then ranks 2-epoch scores against full-length ones and learns that
fast starters are best. :class:`StudySearch` tells Optuna what native Optuna pruning would
have recorded:

- a trial stopped early by the scheduler is ``PRUNED``, with its per-epoch ``val_psnr`` as
  intermediate values (TPE ranks pruned trials by how far they got, then by their last value);
- a trial that ran to ``max_epochs`` is ``COMPLETE`` with its best ``val_psnr`` (the checkpoint
  the search exports);
- a trial that diverged is ``COMPLETE`` with the worst score, :data:`tuner.train.DIVERGED_PSNR`;
- a trial that errored is ``FAIL``.

The study lives in a database through Optuna's own RDB storage (SQLAlchemy): by default the
SQLite file ``<run>/study.db``, or any URL given with ``--study-storage`` (PostgreSQL on a
cluster's head, say), one study per run, named after it. Only the driver writes to it: the
searcher runs there. ``optuna-dashboard``, the ``optuna`` CLI and ``optuna.load_study`` read it.
"""
from __future__ import annotations

import logging
import pickle
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch
from ray.tune.utils.util import unflatten_dict

from tuner.storage import STUDY_FILE, is_uri
from tuner.train import DIVERGED_PSNR, METRIC

if TYPE_CHECKING:
    from tuner.spec import ExperimentSpec

log = logging.getLogger(__name__)


class StudyError(Exception):
    """The study's database cannot be used; the message is one line for the user."""


def default_storage_url(run_dir: str) -> Optional[str]:
    """``sqlite:///<run_dir>/study.db`` for a local run folder; None for a URI (no SQLite there)."""
    if is_uri(run_dir):
        return None
    return f"sqlite:///{Path(run_dir).resolve() / STUDY_FILE}"


def storage_url(spec: "ExperimentSpec", run_dir: str) -> Optional[str]:
    """The run's study database: the spec's ``study_storage``, else :func:`default_storage_url`."""
    return spec.study_storage or default_storage_url(run_dir)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Open (and create the tables of) an Optuna RDB storage.

    Raises:
        StudyError: a bad URL, an unreachable server, a missing database driver, or a file that is
            not a database.
    """
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except Exception as e:  # SQLAlchemy's and the drivers' errors have no common base worth naming
        reason = " ".join(str(e).split("\n")[0].split())[:200]
        if isinstance(e, ImportError) and url.startswith("postgresql"):
            reason += " (PostgreSQL needs its driver: pip install 'tuner[postgres]')"
        raise StudyError(f"cannot open the study storage {shown_url(url)!r}: {type(e).__name__}: {reason} "
                         f"(expected an SQLAlchemy URL such as sqlite:///runs/NAME/study.db or "
                         f"postgresql://user:pass@host/db)") from None


def shown_url(url: str) -> str:
    """``url`` with its password masked (``***``), for logs and error messages."""
    import sqlalchemy

    try:
        return sqlalchemy.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: nothing in it is a password field
        return url


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # Wait for a reader (optuna-dashboard) rather than fail on a locked file.
        return {"connect_args": {"timeout": 30}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True}  # a search outlives a server restart or an idle cut-off
    if url.startswith("postgresql"):
        # A firewalled or powered-off head is a one-line error in seconds, not a TCP timeout of minutes.
        kwargs["connect_args"] = {"connect_timeout": 10}
    return kwargs


def study_exists(storage: optuna.storages.RDBStorage, name: str) -> bool:
    return any(s.study_name == name for s in storage.get_all_studies())


def create_study(storage: optuna.storages.RDBStorage, name: str, user_attrs: dict[str, Any]) -> None:
    """Create the run's study, refusing a name a shared database already holds (an empty study,
    left by a search that stopped before its first trial, is replaced)."""
    if study_exists(storage, name):
        begun = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        if optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False, states=begun):
            raise StudyError(f"a study named {name!r} exists in the study storage already; "
                             f"add --resume to continue it, or pick another --name")
        optuna.delete_study(study_name=name, storage=storage)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    # The objective's name: optuna-dashboard's plots and trials_dataframe() say val_psnr, not "Objective 0".
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable since Optuna 3.2 in practice
        study.set_metric_names([METRIC])
    for key, value in user_attrs.items():
        study.set_user_attr(key, value)


def load_study(url: str, name: str) -> optuna.Study:
    """The study of run ``name`` in the database at ``url`` (what a notebook would call)."""
    return optuna.load_study(study_name=name, storage=open_storage(url))


def end_running(storage: optuna.storages.BaseStorage, name: str, max_epochs: int) -> int:
    """Tell the study how trials that were still running when the search's time budget ran out
    ended: Ray Tune stops them without telling the searcher. A trial that reached ``max_epochs``
    is ``COMPLETE`` with its best value, any other ``PRUNED`` at its last reported epoch.

    Returns:
        How many trials were told.
    """
    study = optuna.load_study(study_name=name, storage=storage)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in running:
        values = t.intermediate_values
        if values and max(values) >= max_epochs:
            study.tell(t.number, max(values.values()), state=TrialState.COMPLETE)
        else:
            study.tell(t.number, state=TrialState.PRUNED)
    return len(running)


_run_dir: Optional[str] = None  # where the run folder of the search being resumed is now


@contextmanager
def resuming_in(run_dir: str) -> Iterator[None]:
    """While Ray restores a search (``Tuner.restore`` and ``fit``), a :class:`StudySearch` whose
    study is its run folder's ``study.db`` reopens the one in ``run_dir``: the folder may have
    been moved or copied since it was pickled."""
    global _run_dir
    _run_dir, before = run_dir, _run_dir
    try:
        yield
    finally:
        _run_dir = before


class _StudyURL:
    """A pickled :class:`StudySearch`'s database, by URL."""

    def __init__(self, url: str):
        self.url = url


class StudySearch(OptunaSearch):
    """Ray Tune's ``OptunaSearch``, telling the study each trial's true outcome.

    Args:
        max_t: a trial whose ``time_attr`` reached this ran to the end (ASHA's ``max_t``).
        time_attr: ``epoch``, or ``train_seconds`` for budgets in training seconds.
        run_dir: the run folder; a study in its ``study.db`` moves with it (:func:`resuming_in`).
        **kwargs: as ``OptunaSearch`` (``storage``, ``study_name``, ``sampler``,
            ``points_to_evaluate``, ``metric``, ``mode``).
    """

    def __init__(self, *, max_t: float, time_attr: str = "epoch", run_dir: Optional[str] = None, **kwargs: Any):
        super().__init__(**kwargs)
        self._max_t, self._time_attr = max_t, time_attr
        self._best: dict[str, float] = {}  # trial id -> best val_psnr reported so far
        storage = kwargs.get("storage")
        self._study_in_run = bool(run_dir and isinstance(storage, optuna.storages.RDBStorage)
                                  and storage.url == default_storage_url(run_dir))

    # ------------------------------------------------------------ pickling (tuner.pkl, searcher-state-*.pkl)
    # A database study is pickled as its URL, not as Optuna objects. Optuna's RDBStorage reconnects
    # to the URL it was made with when it is unpickled, and creates its tables there. A run folder
    # copied to another machine would otherwise fail to resume (the old folder does not exist), or
    # worse, resume writing into the old folder's study. A study kept only in memory (a run on a URI
    # without --study-storage) is pickled whole: the pickle is all there is of it.

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if isinstance(state.get("_storage"), optuna.storages.RDBStorage):
            state["_storage"] = _StudyURL(state["_storage"].url)
            study = state.pop("_ot_study", None)
            state["_ot_study"] = None
            state["_ot_trial_ids"] = {k: t._trial_id for k, t in state.pop("_ot_trials", {}).items()}
            state["_ot_trials"] = {}
            state["_study_was_open"] = study is not None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_study_in_run", False)
        if not isinstance(self._storage, _StudyURL):
            return
        url = self._storage.url
        if self._study_in_run and _run_dir is not None and not is_uri(_run_dir):
            url = default_storage_url(_run_dir) or url
        if url != self._storage.url:
            log.info("the run folder moved: its study is now %s", url)
        self._storage = open_storage(url)
        trial_ids = self.__dict__.pop("_ot_trial_ids", {})
        if self.__dict__.pop("_study_was_open", False):
            self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage,
                                               sampler=self._sampler, pruner=optuna.pruners.NopPruner())
            self._ot_trials = {k: optuna.trial.Trial(self._ot_study, i) for k, i in trial_ids.items()}

    def save(self, checkpoint_path: str) -> None:  # OptunaSearch pickles its __dict__ directly
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))

    def suggest(self, trial_id: str) -> Optional[dict]:
        if self._space == {} and self._ot_study is not None:
            # A spec with nothing to search (set_search_properties found no domain): its one trial
            # is still a study trial, told its outcome like any other. OptunaSearch refuses here.
            if trial_id not in self._ot_trials:
                self._ot_trials[trial_id] = self._orphan_or_ask()
            return {}
        # After a driver crash, the study holds trials asked after Tune's last snapshot: Tune will
        # ask for that many again. Hand those out first, so the study gains no duplicates.
        if trial_id not in self._ot_trials and self._ot_study is not None:
            orphan = self._orphan()
            if orphan is not None:
                log.info("resuming: trial %s takes over study trial #%d, asked before the interruption",
                         trial_id, orphan.number)
                self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, orphan._trial_id)
                return unflatten_dict(orphan.params)
        return super().suggest(trial_id)

    def _orphan_or_ask(self) -> optuna.trial.Trial:
        orphan = self._orphan()
        return optuna.trial.Trial(self._ot_study, orphan._trial_id) if orphan else self._ot_study.ask()

    def _orphan(self) -> Optional[optuna.trial.FrozenTrial]:
        known = {t._trial_id for t in self._ot_trials.values()}
        for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t._trial_id not in known and set(t.params) == set(self._space):
                return t
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value = result.get(self.metric)
        if value is not None:
            self._best[trial_id] = max(self._best.get(trial_id, value), value)
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # a resumed trial repeats epochs the study recorded before the interruption

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        if result and not error and result.get(self.metric) is not None:
            # Tune hands the result that ended a trial (its last epoch, or the one ASHA stopped
            # it at) to on_trial_complete alone: record it as the trial's last intermediate value.
            self.on_trial_result(trial_id, result)
        value: Optional[float] = None
        if error:
            state = TrialState.FAIL
        elif not result or result.get(self.metric) is None:
            state = TrialState.PRUNED  # ended before its first epoch: nothing to rank it by
        elif result.get("diverged"):
            state, value = TrialState.COMPLETE, DIVERGED_PSNR
        elif result.get(self._time_attr, 0) >= self._max_t:
            state, value = TrialState.COMPLETE, self._best.get(trial_id, result[self.metric])
        else:
            state = TrialState.PRUNED  # stopped by the scheduler at a rung
        try:
            self._ot_study.tell(ot_trial, value, state=state)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # told before the interruption; the study already has it
        self._completed_trials.add(trial_id)

