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

The study lives in a database through Optuna's own storages: by default the SQLite file
``<run>/study.db`` (in write-ahead-log mode), or any SQLAlchemy URL given with ``--study-storage``
(PostgreSQL on a cluster's head, say), or ``journal:///PATH`` (Optuna's JournalStorage file); one
study per run, named after it, its objective named ``val_psnr``. Only the driver writes to it: the
searcher runs there, writing through to the database as it goes and reading its trials from its
own copy (:class:`DriverStorage`). ``optuna-dashboard``, the ``optuna`` CLI and
``optuna.load_study`` read it.
"""
from __future__ import annotations

import copy
import logging
import pickle
import threading
import warnings
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch
from ray.tune.utils.util import unflatten_dict

from tuner.storage import STUDY_FILE, is_uri
from tuner.metrics import DIVERGED_PSNR, METRIC

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


JOURNAL = "journal:///"  # Optuna's JournalStorage on a file: journal:///PATH (journal:////abs/path.log)


class JournalStudyStorage(optuna.storages.JournalStorage):
    """Optuna's ``JournalStorage`` on a file (``JournalFileBackend``), keeping the ``journal:///``
    URL it was opened from, as ``RDBStorage.url`` does: a pickled :class:`StudySearch` reopens it."""

    def __init__(self, url: str):
        self.url = url
        super().__init__(optuna.storages.journal.JournalFileBackend(url.removeprefix(JOURNAL)))

    def write_trial(self, trial_id: int, params: list[tuple], user_attrs: dict[str, Any],
                    system_attrs: dict[str, Any]) -> None:
        """Append a trial's new parameters (``(name, internal value, distribution, previous)``) and
        attributes to the journal in one write (one lock and one fsync, not one each), in the
        operations ``set_trial_param`` and ``set_trial_*_attr`` append."""
        from optuna.distributions import distribution_to_json
        from optuna.storages.journal._storage import JournalOperation

        logs = [(JournalOperation.SET_TRIAL_PARAM, {"trial_id": trial_id, "param_name": name, "param_value_internal": value,
                                                    "distribution": distribution_to_json(distribution)})
                for name, value, distribution, _ in params]
        logs += [(JournalOperation.SET_TRIAL_USER_ATTR, {"trial_id": trial_id, "user_attr": {k: v}}) for k, v in user_attrs.items()]
        logs += [(JournalOperation.SET_TRIAL_SYSTEM_ATTR, {"trial_id": trial_id, "system_attr": {k: v}})
                 for k, v in system_attrs.items()]
        with self._thread_lock:
            worker_id = self._replay_result.worker_id
            self._backend.append_logs([{"op_code": op, "worker_id": worker_id, **fields} for op, fields in logs])
            self._sync_with_backend()


class RDBStudyStorage(optuna.storages.RDBStorage):
    """Optuna's ``RDBStorage`` (SQLite, PostgreSQL, MySQL), with :meth:`create_trial` and
    :meth:`write_trial` for :class:`DriverStorage`."""

    def create_trial(self, study_id: int, template_trial=None) -> optuna.trial.FrozenTrial:
        """``create_new_trial``, answering the trial as it was written (its number and start time)
        rather than its id alone, which a caller then reads back."""
        return self._create_new_trial(study_id, template_trial)

    def write_trial(self, trial_id: int, params: list[tuple], user_attrs: dict[str, Any],
                    system_attrs: dict[str, Any]) -> None:
        """Write a trial's new parameters (``(name, internal value, distribution, previous)``;
        ``previous``: the study's distribution of that name, None if not known) and attributes in
        one transaction, with the checks ``set_trial_param`` and ``set_trial_*_attr`` make. Optuna
        commits each on its own: 13 commits for a 13-hyperparameter trial, each a round trip to a
        server (benchmarks/bench_scale.py). A clash with a row written meanwhile (the unique
        trial-and-name keys) writes them one by one instead, as Optuna would."""
        import sqlalchemy.exc
        from optuna.distributions import check_distribution_compatibility, distribution_to_json
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        try:
            with _create_scoped_session(self.scoped_session) as session:
                if params:
                    trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
                    self.check_trial_is_updatable(trial_id, trial.state)
                for name, value, distribution, previous in params:
                    if previous is None:  # the study's first of that name, as far as the caller knows
                        self._set_trial_param_without_commit(session, trial_id, name, value, distribution)
                        continue
                    check_distribution_compatibility(previous, distribution)
                    # One INSERT for them all when the session flushes (SQLAlchemy's insertmanyvalues),
                    # where Optuna's set_trial_param reads the trial and the study's first parameter
                    # of that name, and commits, for each.
                    session.add(models.TrialParamModel(trial_id=trial_id, param_name=name, param_value=value,
                                                       distribution_json=distribution_to_json(distribution)))
                for model, attrs in ((models.TrialUserAttributeModel, user_attrs),
                                     (models.TrialSystemAttributeModel, system_attrs)):
                    for key, value in attrs.items():
                        self._set_trial_attr_without_commit(session, model, trial_id, key, value)
        except sqlalchemy.exc.IntegrityError:
            write_one_by_one(self, trial_id, params, user_attrs, system_attrs)


def write_one_by_one(storage: optuna.storages.BaseStorage, trial_id: int, params: list[tuple],
                     user_attrs: dict[str, Any], system_attrs: dict[str, Any]) -> None:
    """What ``write_trial`` writes, through Optuna's own calls: a write (and a commit) each."""
    for name, value, distribution, _ in params:
        storage.set_trial_param(trial_id, name, value, distribution)
    for key, value in user_attrs.items():
        storage.set_trial_user_attr(trial_id, key, value)
    for key, value in system_attrs.items():
        storage.set_trial_system_attr(trial_id, key, value)


StudyStorage = Union[RDBStudyStorage, JournalStudyStorage]


def open_storage(url: str) -> StudyStorage:
    """Open the study storage at ``url``: an SQLAlchemy URL (Optuna's RDB storage; its tables are
    created), or ``journal:///PATH`` (Optuna's JournalStorage on a file, made if missing).

    Raises:
        StudyError: a bad URL, an unreachable server, a missing database driver, or a file that is
            not a database (or not a journal).
    """
    if url.startswith(("sqlite:///", JOURNAL)):
        Path(url.removeprefix("sqlite:///").removeprefix(JOURNAL)).parent.mkdir(parents=True, exist_ok=True)
    try:
        if url.startswith(JOURNAL):
            try:
                return JournalStudyStorage(url)
            except ValueError as e:  # json.JSONDecodeError and Optuna's "Invalid log format."
                raise ValueError(f"not a journal (a file of Optuna's JSON lines): {e}") from None
        storage = RDBStudyStorage(url, engine_kwargs=_engine_kwargs(url))
        if url.startswith("sqlite"):
            _write_ahead(storage)
        return storage
    except Exception as e:  # SQLAlchemy's and the drivers' errors have no common base worth naming
        reason = " ".join(str(e).split("\n")[0].split())[:200]
        if isinstance(e, ImportError) and url.startswith("postgresql"):
            reason += " (PostgreSQL needs its driver: pip install 'tuner[postgres]')"
        raise StudyError(f"cannot open the study storage {shown_url(url)!r}: {type(e).__name__}: {reason} "
                         f"(expected an SQLAlchemy URL such as sqlite:///runs/NAME/study.db or "
                         f"postgresql://user:pass@host/db, or journal:///runs/NAME/study.log)") from None


def url_of(storage: optuna.storages.BaseStorage) -> Optional[str]:
    """The URL a storage from :func:`open_storage` was opened from; None for one in memory."""
    return storage.url if isinstance(storage, (optuna.storages.RDBStorage, JournalStudyStorage, DriverStorage)) else None


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
        # connect_timeout: a firewalled or powered-off head is a one-line error in seconds, not a TCP
        # timeout of minutes. synchronous_commit off (this session only): a commit returns without
        # waiting for the server's disk flush. Optuna commits every parameter, value and state of a
        # trial on its own, some 25 per trial; waiting for a flush each time made the study the
        # driver's bottleneck (benchmarks/bench_scale.py). A server crash can lose the last fraction of
        # a second of writes, never corrupt the study (PostgreSQL's "Asynchronous Commit").
        kwargs["connect_args"] = {"connect_timeout": 10, "options": "-c synchronous_commit=off"}
    return kwargs


def _write_ahead(storage: optuna.storages.RDBStorage) -> None:
    """SQLite in write-ahead-log mode, synchronous NORMAL, on every connection of ``storage``.

    In SQLite's default mode each of Optuna's ~25 commits per trial waits for an fsync, and a reader
    (optuna-dashboard) blocks the writer. In WAL mode commits append to ``study.db-wal`` with no
    fsync (checkpoints flush it), and readers never block the writer. A power cut can lose the last
    commits, never corrupt the file; a crash of the driver loses nothing (sqlite.org/wal.html).
    WAL needs a local filesystem, not NFS: there, use JournalStorage or a server.
    """
    import sqlalchemy

    def pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # kept in the file; readers open it in WAL mode too
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # the connections made before the listener (Optuna's table set-up) go


def study_exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    return any(s.study_name == name for s in storage.get_all_studies())


def create_study(storage: optuna.storages.BaseStorage, name: str, user_attrs: dict[str, Any]) -> None:
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


class DriverStorage(optuna.storages.BaseStorage):
    """The searcher's view of its study database: every write goes to the database as it happens,
    every read of a trial is answered from this process's copy.

    Only the driver writes a search's trials (the searcher runs there). Optuna's own cache
    (``_CachedStorage``) cannot know that: it keeps finished trials only and reads every running
    trial back from the database on each look, and TPE with ``constant_liar`` looks several times
    per suggestion (``use_cache = not constant_liar``, samplers/_tpe/sampler.py): with 16 trials in
    flight that was most of a suggestion's time (benchmarks/bench_scale.py, part searcher). Here
    the trials are read from the database once, when the study is first used (a resumed search's
    included), and kept up to date by the writes that pass through. Study-level calls (names,
    directions, attributes: what optuna-dashboard's notes write) go to the database.

    A new trial's parameters and attributes (what ``Study.ask`` and the searcher's link to its Ray
    trial write) are checked here as they come, as the database would check them, and written
    together when the searcher calls :meth:`flush` after the suggestion, in one transaction where
    the database has them (``write_trial`` of :class:`RDBStudyStorage` and
    :class:`JournalStudyStorage`): Optuna writes each parameter in its own. Any other write to the
    trial (an intermediate value, its state) flushes it first.

    Args:
        backend: the study database, from :func:`open_storage`.
    """

    def __init__(self, backend: StudyStorage):
        self.url = backend.url
        self._backend = backend
        self._trials: dict[int, optuna.trial.FrozenTrial] = {}  # trial id -> its current state
        self._study_trials: dict[int, list[int]] = {}  # study id -> its trial ids by number
        self._study_of: dict[int, int] = {}  # trial id -> its study's
        self._distributions: dict[int, dict[str, Any]] = {}  # study id -> parameter name -> its distribution
        self._unwritten: dict[int, _Unwritten] = {}  # trial id -> what flush will write
        self._lock = threading.RLock()

    def _ids(self, study_id: int) -> list[int]:
        if study_id not in self._study_trials:  # the one full read
            trials = self._backend.get_all_trials(study_id, deepcopy=False)  # never changed in place: _update
            self._trials.update({t._trial_id: t for t in trials})
            self._study_trials[study_id] = [t._trial_id for t in sorted(trials, key=lambda t: t.number)]
            self._study_of.update({t._trial_id: study_id for t in trials})
            self._distributions[study_id] = {name: d for t in trials for name, d in t.distributions.items()}
        return self._study_trials[study_id]

    def _reread(self, trial_id: int) -> None:
        self._trials[trial_id] = self._backend.get_trial(trial_id)

    def _update(self, trial_id: int, **fields: Any) -> None:
        """Replace the trial by a copy with ``fields`` (name -> (key, value)) set: a trial handed out
        earlier is never changed under its holder, as in Optuna's InMemoryStorage."""
        if trial_id not in self._trials:
            self._reread(trial_id)
        trial = copy.copy(self._trials[trial_id])
        for name, (key, value) in fields.items():
            setattr(trial, name, {**getattr(trial, name), key: value})
        self._trials[trial_id] = trial

    # ---------------------------------------------------------------- study level: the database's
    def create_new_study(self, directions, study_name=None):
        return self._backend.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self._backend.delete_study(study_id)
        with self._lock:
            for trial_id in self._study_trials.pop(study_id, []):
                self._trials.pop(trial_id, None)
                self._unwritten.pop(trial_id, None)
                self._study_of.pop(trial_id, None)
            self._distributions.pop(study_id, None)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._backend.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._backend.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._backend.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._backend.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int):
        return self._backend.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._backend.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._backend.get_study_system_attrs(study_id)

    def get_all_studies(self):
        return self._backend.get_all_studies()

    # ---------------------------------------------------------------- trials: written through, read here
    def create_new_trial(self, study_id: int, template_trial=None) -> int:
        with self._lock:
            ids = self._ids(study_id)
            if hasattr(self._backend, "create_trial"):
                trial = self._backend.create_trial(study_id, template_trial)
                trial_id = trial._trial_id
                self._trials[trial_id] = trial
            else:
                trial_id = self._backend.create_new_trial(study_id, template_trial)
                self._reread(trial_id)  # its number and start time as the database set them
            ids.append(trial_id)
            self._study_of[trial_id] = study_id
            self._distributions[study_id].update(self._trials[trial_id].distributions)
            return trial_id

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float, distribution) -> None:
        with self._lock:
            self._check_updatable(trial_id)
            known = self._distributions.get(self._study_of.get(trial_id, -1))
            previous = known.get(param_name) if known is not None else None
            if previous is not None:  # the database's check, made here: it raises ValueError
                optuna.distributions.check_distribution_compatibility(previous, distribution)
            if known is not None:
                known.setdefault(param_name, distribution)
            self._unwritten.setdefault(trial_id, _Unwritten()).params.append(
                (param_name, param_value_internal, distribution, previous))
            self._update(trial_id, params=(param_name, distribution.to_external_repr(param_value_internal)),
                         distributions=(param_name, distribution))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        with self._lock:
            self._check_updatable(trial_id)
            self._unwritten.setdefault(trial_id, _Unwritten()).user_attrs[key] = value
            self._update(trial_id, user_attrs=(key, value))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        with self._lock:
            self._check_updatable(trial_id)
            self._unwritten.setdefault(trial_id, _Unwritten()).system_attrs[key] = value
            self._update(trial_id, system_attrs=(key, value))

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        with self._lock:
            self.flush(trial_id)
            changed = self._backend.set_trial_state_values(trial_id, state, values)
            self._reread(trial_id)  # state, values and the database's timestamps
            return changed

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        with self._lock:
            self.flush(trial_id)
            self._backend.set_trial_intermediate_value(trial_id, step, intermediate_value)
            self._update(trial_id, intermediate_values=(step, intermediate_value))

    def flush(self, trial_id: Optional[int] = None) -> None:
        """Write what the trial (every trial, if None) was given since its last write."""
        with self._lock:
            for i in [trial_id] if trial_id is not None else list(self._unwritten):
                todo = self._unwritten.pop(i, None)
                if todo is None:
                    continue
                write = getattr(self._backend, "write_trial", None) or partial(write_one_by_one, self._backend)
                write(i, todo.params, todo.user_attrs, todo.system_attrs)

    def _check_updatable(self, trial_id: int) -> None:
        if trial_id not in self._trials:
            self._reread(trial_id)
        state = self._trials[trial_id].state
        if state.is_finished():
            raise optuna.exceptions.UpdateFinishedTrialError(
                f"Trial#{self._trials[trial_id].number} has already finished and can not be updated.")

    def get_trial(self, trial_id: int) -> optuna.trial.FrozenTrial:
        with self._lock:
            if trial_id not in self._trials:
                self._reread(trial_id)
            return copy.deepcopy(self._trials[trial_id])

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states=None) -> list[optuna.trial.FrozenTrial]:
        with self._lock:
            trials = [self._trials[i] for i in self._ids(study_id)]
        if states is not None:
            trials = [t for t in trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def remove_session(self) -> None:
        self.flush()
        self._backend.remove_session()


class _Unwritten:
    """What :class:`DriverStorage` holds of a trial for its next :meth:`DriverStorage.flush`."""

    def __init__(self) -> None:
        self.params: list[tuple] = []  # (name, internal value, distribution, the study's distribution or None)
        self.user_attrs: dict[str, Any] = {}
        self.system_attrs: dict[str, Any] = {}


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


RAY_TRIAL_ID = "ray_trial_id"  # the user attribute of a study trial that names its Ray trial


class _StudyURL:
    """A pickled :class:`StudySearch`'s database, by URL."""

    def __init__(self, url: str):
        self.url = url


class TPESampler(optuna.samplers.TPESampler):
    """Optuna's ``TPESampler``, keeping each finished trial's parameters in TPE's internal numbers
    from one suggestion to the next.

    Each suggestion turns every trial's parameters into arrays twice (the good and the bad Parzen
    estimator; ``_get_internal_repr``), a Python call per trial and parameter: at 1,000 trials of 13
    hyperparameters, half of TPE's time (benchmarks/bench_scale.py, part searcher). A finished trial
    never changes, so its row is made once per search space; running trials (``constant_liar``'s
    lies) are read fresh each time. The arrays, hence every suggestion, are the same as Optuna's
    (tests/test_study.py).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._rows: dict[int, Optional[tuple]] = {}  # finished trial id -> its internal values, None: not in the space
        self._rows_space: Optional[tuple] = None  # the search space the rows are for

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_rows"], state["_rows_space"] = {}, None  # a cache: rebuilt after a restore
        return state

    def _get_internal_repr(self, trials, search_space, study) -> dict[str, Any]:
        import numpy as np
        from optuna.distributions import distribution_to_json

        space = tuple((name, distribution_to_json(d)) for name, d in search_space.items())
        if space != self._rows_space:
            self._rows, self._rows_space = {}, space
        items = list(search_space.items())
        names = search_space.keys()
        rows = []
        for trial in trials:
            finished = trial.state.is_finished()
            if finished and trial._trial_id in self._rows:
                row = self._rows[trial._trial_id]
            else:
                params = self._get_params(trial, study)
                row = tuple(d.to_internal_repr(params[name]) for name, d in items) if names <= params.keys() else None
                if finished:
                    self._rows[trial._trial_id] = row
            if row is not None:
                rows.append(row)
        columns = list(zip(*rows)) if rows else [() for _ in items]
        return {name: np.asarray(column) for (name, _), column in zip(items, columns)}


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
        if url_of(kwargs.get("storage")) is not None and not isinstance(kwargs["storage"], DriverStorage):
            kwargs["storage"] = DriverStorage(kwargs["storage"])  # the driver is the study's one writer
        super().__init__(**kwargs)
        self._max_t, self._time_attr = max_t, time_attr
        self._best: dict[str, float] = {}  # trial id -> best val_psnr reported so far
        storage = kwargs.get("storage")
        self._study_in_run = bool(run_dir and storage is not None and url_of(storage) == default_storage_url(run_dir))
        # Only a searcher restored after an interruption can meet study trials it did not ask for
        # (suggest); a fresh one never reads the running trials back for them.
        self._may_have_orphans = False

    # ------------------------------------------------------------ pickling (tuner.pkl, searcher-state-*.pkl)
    # A database study is pickled as its URL, not as Optuna objects. Optuna's RDBStorage reconnects
    # to the URL it was made with when it is unpickled, and creates its tables there. A run folder
    # copied to another machine would otherwise fail to resume (the old folder does not exist), or
    # worse, resume writing into the old folder's study. A study kept only in memory (a run on a URI
    # without --study-storage) is pickled whole: the pickle is all there is of it.

    def __getstate__(self) -> dict[str, Any]:
        self._flush()  # a snapshot (Tune's, or save) never runs ahead of the database
        state = self.__dict__.copy()
        url = url_of(state["_storage"]) if state.get("_storage") is not None else None
        if url is not None:
            state["_storage"] = _StudyURL(url)
            study = state.pop("_ot_study", None)
            state["_ot_study"] = None
            state["_ot_trial_ids"] = {k: t._trial_id for k, t in state.pop("_ot_trials", {}).items()}
            state["_ot_trials"] = {}
            state["_study_was_open"] = study is not None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_study_in_run", False)
        self._may_have_orphans = True
        if not isinstance(self._storage, _StudyURL):
            return
        url = self._storage.url
        if self._study_in_run and _run_dir is not None and not is_uri(_run_dir):
            url = default_storage_url(_run_dir) or url
        if url != self._storage.url:
            log.info("the run folder moved: its study is now %s", url)
        self._storage = DriverStorage(open_storage(url))
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
                self._link(trial_id)
            return {}
        # After a driver crash, the study holds trials asked after Tune's last snapshot: Tune will
        # ask for that many again. Hand those out first, so the study gains no duplicates.
        if trial_id not in self._ot_trials and self._ot_study is not None and self._may_have_orphans:
            orphan = self._orphan()
            if orphan is not None:
                log.info("resuming: trial %s takes over study trial #%d, asked before the interruption",
                         trial_id, orphan.number)
                self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, orphan._trial_id)
                self._link(trial_id)
                return unflatten_dict(orphan.params)
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._link(trial_id)
        return config

    def _link(self, trial_id: str) -> None:
        """Name the Ray trial in its study trial (user attribute ``ray_trial_id``): its folder is
        ``trial_<id>``, and a resume finds the study trial of a Ray trial by it (tuner.resume).
        The last write of a suggestion: the trial's parameters and this go to the database together."""
        self._ot_trials[trial_id].set_user_attr(RAY_TRIAL_ID, trial_id)
        self._flush()

    def _flush(self) -> None:
        study = getattr(self, "_ot_study", None)
        storage = study._storage if study is not None else None
        if isinstance(storage, DriverStorage):
            storage.flush()

    def _orphan_or_ask(self) -> optuna.trial.Trial:
        orphan = self._orphan()
        return optuna.trial.Trial(self._ot_study, orphan._trial_id) if orphan else self._ot_study.ask()

    def _orphan(self) -> Optional[optuna.trial.FrozenTrial]:
        if not self._may_have_orphans:
            return None
        known = {t._trial_id for t in self._ot_trials.values()}
        for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t._trial_id not in known and set(t.params) == set(self._space):
                return t
        self._may_have_orphans = False  # all taken over: every trial asked from now on is this searcher's
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
        # A trial told before an interruption (it ended just before the driver was killed, and the
        # resumed Ray ends it again from its last checkpoint) keeps what the study has.
        if not self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished():
            self._ot_study.tell(ot_trial, value, state=state)
        self._completed_trials.add(trial_id)

