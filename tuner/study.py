"""The Optuna study of a search: the database that keeps its trials.

The study lives in a database through Optuna's own storages: by default the SQLite file
``<run>/study.db`` (in write-ahead-log mode), or any SQLAlchemy URL given with ``--study-storage``
(PostgreSQL on a cluster's head, say), or ``journal:///PATH`` (Optuna's JournalStorage file); one
study per run, named after it, its objective named ``val_psnr``. Only the driver writes to it (the
searcher, :mod:`tuner.searcher`, runs there). ``optuna-dashboard``, the ``optuna`` CLI and
``optuna.load_study`` read it.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import optuna
import yaml
from optuna.trial import TrialState

from tuner.metrics import METRIC
from tuner.storage import STUDY_FILE, is_uri

if TYPE_CHECKING:
    from tuner.spec import ExperimentSpec

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
    URL it was opened from, as ``RDBStorage.url`` does: a pickled :class:`tuner.searcher.StudySearch` reopens it."""

    def __init__(self, url: str):
        self.url = url
        super().__init__(optuna.storages.journal.JournalFileBackend(url.removeprefix(JOURNAL)))


StudyStorage = Union[optuna.storages.RDBStorage, JournalStudyStorage]


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
        storage = optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
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
    return storage.url if isinstance(storage, (optuna.storages.RDBStorage, JournalStudyStorage)) else None


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
    left by a search that stopped before its first trial, is replaced; so is one that holds only
    a prior study's trials)."""
    if study_exists(storage, name):
        begun = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False, states=begun)
        if any(PRIOR_STUDY not in t.user_attrs for t in trials):
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


RAY_TRIAL_ID = "ray_trial_id"  # the user attribute of a study trial that names its Ray trial
PRIOR_STUDY = "prior_study"  # the user attribute of a trial copied from an earlier study: that study's name


def prior_trials(prior: optuna.Study, spec: "ExperimentSpec",
                 distributions: dict[str, optuna.distributions.BaseDistribution]) -> tuple[list[optuna.trial.FrozenTrial], int]:
    """The finished trials of an earlier search's study that are points of ``spec``'s search, as
    trials of its study, for ``Study.add_trials``: TPE then learns from them as from its own (they
    count towards its start-up trials), as W&B Sweeps' prior runs do.

    A trial is a point of this search when, with the earlier spec's fixed hyperparameters filled in,
    every hyperparameter this spec fixes has this spec's value (the seed and budget aside) and every
    one it searches lies in its space. Its state, value and per-result values are kept; it names
    the study and trial it came from (:data:`PRIOR_STUDY`, ``prior_number``), never a Ray trial.

    Args:
        prior: the earlier study (one made by :func:`create_study`: it keeps its spec).
        spec: this search's spec.
        distributions: this search's Optuna distributions (its searcher's).

    Returns:
        The trials, and how many finished ones were left out (not points of this search).

    Raises:
        StudyError: the earlier study has no spec, or scored its trials on other data or noise
            (its ``val_psnr`` cannot rank this search's trials).
    """
    from pydantic import ValidationError

    from tuner.config import TrialConfig
    from tuner.spec import FROM_EXPERIMENT, ExperimentSpec

    name = prior.study_name
    if "spec" not in prior.user_attrs:
        raise StudyError(f"prior study {name!r} was not made by tuner tune (it keeps no spec)")
    try:
        earlier = ExperimentSpec.model_validate(yaml.safe_load(prior.user_attrs["spec"]))
    except (ValidationError, ValueError, yaml.YAMLError) as e:
        raise StudyError(f"prior study {name!r}: its spec no longer reads ({type(e).__name__})") from None
    for section in ("dataset", "eval_noise"):
        was, now = getattr(earlier, section), getattr(spec, section)
        if was != now:
            raise StudyError(f"prior study {name!r} scored its trials on {section} {_shown(was)}, this search on "
                             f"{_shown(now)}: its val_psnr cannot rank this search's trials (a prior must "
                             f"share the dataset and eval_noise)")
    this = TrialConfig(**spec.base_config()).to_dict()
    fixed = [k for k in this if k not in distributions and k not in FROM_EXPERIMENT]
    trials, left_out = [], 0
    for t in prior.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        try:
            config = TrialConfig(**{**earlier.base_config(), **t.params}).to_dict()
        except (ValueError, TypeError):
            config = None
        if (config is None or any(config[k] != this[k] for k in fixed)
                or not all(k in spec.search and spec.search[k].contains(config[k]) for k in distributions)):
            left_out += 1
            continue
        trials.append(optuna.trial.create_trial(
            state=t.state, value=t.value, params={k: config[k] for k in distributions}, distributions=distributions,
            intermediate_values=dict(t.intermediate_values),
            user_attrs={PRIOR_STUDY: name, "prior_number": t.number}))
    return trials, left_out


def _shown(section) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in section.model_dump(exclude_none=True).items()) + "}"


class _StudyURL:
    """The database URL in a searcher pickled before :mod:`tuner.searcher` (runs started then still
    resume: :func:`tuner.searcher._from_optuna_search`)."""

    def __init__(self, url: str):
        self.url = url


def __getattr__(name: str) -> Any:
    """Where a run pickled before :mod:`tuner.searcher` finds its searcher's classes: its
    ``tuner.study.StudySearch`` and ``tuner.study.TPESampler`` (Optuna's, with a cache since dropped)."""
    if name == "StudySearch":
        from tuner.searcher import StudySearch

        return StudySearch
    if name == "TPESampler":
        return optuna.samplers.TPESampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
