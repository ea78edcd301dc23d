"""Resuming a killed search: Ray's last snapshot of it, repaired from what is on storage.

Ray Tune saves its experiment state (``experiment_state-*.json``: every trial's status, last
result and tracked checkpoints) every few seconds. Between two saves the trials go on reporting
checkpoints, and the checkpoint manager (``CheckpointConfig.num_to_keep``, the spec's
``budget.keep_checkpoints``) deletes those that fall out of the kept set at once. A driver killed
between two saves leaves a snapshot that can name, as a running trial's latest checkpoint, one
deleted since. ``Tuner.restore`` then fails to restore that trial ("Could not recover from
checkpoint as it does not exist on storage anymore"), retries it ``max_failures`` times and ends
it ``ERROR``: the search loses the trial, however good it was. Ray 1.x fell back to the latest
checkpoint available (ray-project/ray#29099); Ray 2.x's storage code path has no fallback.

Why the repair is done here, before ``Tuner.restore``, and not by keeping more checkpoints: the
trial folders are the ground truth, and Ray's own record of a trial can be rebuilt from them.
Workers write checkpoints straight into the run folder, while the driver's logs of the trials
(``result.json``) are copied there together with the snapshot, so they lag as much as it does.
A checkpoint is complete when its files are: ``state.pt`` reads back whole (a zip archive, as
``torch.save`` writes it, checked entry by entry) and its metrics are known, from ``result.json``
or from the ``metrics.json`` that tuner writes into every checkpoint. :func:`repair` therefore
rewrites, in the newest snapshot, the checkpoint bookkeeping of every unfinished trial from its
folder:

- its tracked checkpoints are the complete ones on storage, and its latest is the newest of
  them. Its last result and checkpoint index are those of that checkpoint, so it continues
  from there;
- a checkpoint folder that is not complete was being written when the driver died: it is
  removed, since the trial writes that index again;
- a trial with no complete checkpoint left restarts from scratch, and the log says so.

Ray writes its state files (the snapshot, the search generator's ``search_gen_state-*.json``, the
searcher's ``searcher-state-*.pkl``) whole into the driver's staging folder, then copies them into
the run folder in the background, over the ones there: a kill during that copy leaves a file cut
short. Ray restores the newest of each kind by name, one per driver session; when a later
session's file is cut, the one before it serves. In a search's first session there is no file
before it, and Ray's restore then fails and, without a word, starts the experiment over
("Restarting experiment"): every trial would be lost. :class:`KeepStateCopy` (a Tune callback of
every search) therefore copies each state file whole into the run folder's ``.state-copy/``
after each step of Tune's loop that changed it, written beside and moved over; :func:`repair`
puts the newest whole copy back where the kill left no whole file of its kind.

Keeping every checkpoint the snapshot names would mean second-guessing when Ray writes its
snapshot, in Ray's own loop. The repair only reads Ray's on-disk formats and tuner's own
checkpoint files, and it leaves a snapshot that agrees with storage untouched. Epochs that the
driver had logged but not yet copied are missing from the trial's ``result.json``. The study
(written at each result) and the checkpoints still have them.

This module is the one place tuner uses Ray's private code (``ray.train._internal``: its storage
paths and deletion, the checkpoint manager's sorted list, the training result; Tune's newest
snapshot finder and its cloudpickle loader): Ray has no public API that reads or edits an
experiment snapshot, and ``Tuner.restore`` is the public API that consumes the repaired one. The
formats are pinned with Ray (``constraints.txt``) and checked by contract tests on a recorded
killed search (``tests/test_contract.py``), which fail loudly when an upgrade changes them. The
rest of tuner uses Ray's and Optuna's public APIs, but for one guarded read: ``tuner.cluster`` asks
Ray's GCS for the autoscaler's node types (``ray._private.state``) and falls back to the cluster
file ``ray up`` leaves on the head when that fails.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Optional

from ray.tune import Callback

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint_"
STATE_COPY = ".state-copy"  # in the run folder: tuner's whole copies of Ray's state files (KeepStateCopy)
STATE_FILES = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl")  # Ray's, per session


class KeepStateCopy(Callback):
    """A Tune callback: after each step of Tune's loop, copy Ray's state files that changed in the
    driver's staging folder, where Ray writes them whole, into the run folder's ``.state-copy/``,
    written beside and moved over (a kill leaves the copy before). :func:`repair` falls back on
    them. Every path comes from the trials' storage (``Trial.storage``), which Ray points at the
    run folder wherever it is restored, so the callback pickled in ``tuner.pkl`` serves a moved
    run folder too."""

    def __init__(self) -> None:
        self._copied: dict[str, tuple[int, int]] = {}  # file name -> (mtime_ns, size) copied

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        import os
        from fnmatch import fnmatch

        if not trials:
            return
        storage = trials[0].storage
        staging = storage.experiment_driver_staging_path
        try:
            names = [n for n in os.listdir(staging) if any(fnmatch(n, p) for p in STATE_FILES)]
        except FileNotFoundError:
            return  # no snapshot yet
        for name in names:
            try:
                stat = os.stat(os.path.join(staging, name))
                if self._copied.get(name) == (stat.st_mtime_ns, stat.st_size):
                    continue
                with open(os.path.join(staging, name), "rb") as f:
                    content = f.read()
            except FileNotFoundError:
                continue  # replaced at this moment (Ray writes beside and moves over): next step
            fs, folder = storage.storage_filesystem, f"{storage.experiment_fs_path}/{STATE_COPY}"
            fs.create_dir(folder, recursive=True)
            _replace(fs, f"{folder}/{name}", content)
            self._copied[name] = (stat.st_mtime_ns, stat.st_size)


def repair(run_dir: str, study_url: Optional[str] = None, study_name: Optional[str] = None) -> list[str]:
    """Make the newest experiment snapshot in ``run_dir`` agree with the trial folders.

    Args:
        run_dir: the run folder (a local path or a URI), wherever it is now.
        study_url, study_name: the run's study. A trial continues from a checkpoint whose result the
            killed driver may never have received; its value is then written into the study's
            trial as that epoch's intermediate value, so that the study misses no epoch.

    Returns:
        One line per trial that was repaired (also logged); empty when the snapshot agreed.
    """
    fs, run_path = _fs_and_path(run_dir)
    said = _whole_state_files(fs, run_path)
    for line in said:
        log.warning("%s", line)
    newest = _newest_snapshot(fs, run_path)
    if newest is None:
        return said
    with fs.open_input_stream(newest) as f:
        state = json.loads(f.readall())
    trials = {json.loads(t)["trial_id"]: json.loads(t)["status"] for t, _ in state["trial_data"]}
    search_lines = _fix_search_state(fs, run_path, trials)
    for line in search_lines:
        log.info("%s", line)
    said.extend(search_lines)
    recovered: dict[str, list[dict[str, Any]]] = {}  # trial id -> metrics of its complete checkpoints
    for entry in state["trial_data"]:
        line = _repair_trial(entry, fs, run_path, recovered)
        if line:
            log.warning("%s", line)
            said.append(line)
    if recovered and study_url and study_name:
        _tell_study(study_url, study_name, recovered)
    if any(line.startswith("trial ") for line in said):
        _replace(fs, newest, json.dumps(state, indent=2).encode())
    return said


CUT_SUFFIX = ".cut"  # what a state file the kill cut short is renamed to (kept for a post-mortem)


def _whole_state_files(fs, run_path: str) -> list[str]:
    """Leave the run folder a whole state file of each kind Ray restores; the lines to log. Ray's
    loaders take the newest by name (each driver session writes its own, named by its start) and
    fail on one the kill cut short while Ray copied it into the run folder: that one is renamed
    (``.cut``, kept for a post-mortem), so that the one before it serves. Where the newest whole
    copy in ``.state-copy/`` (:class:`KeepStateCopy`) is of a later session than any whole file
    left, or none is left (a search's first session), that copy is put back."""
    import pickle
    from fnmatch import fnmatch

    import ray.cloudpickle as cloudpickle

    cut_pickle = (EOFError, pickle.UnpicklingError)  # what a pickle cut short raises
    readers = dict(zip(STATE_FILES, ((json.loads, json.JSONDecodeError), (cloudpickle.loads, cut_pickle),
                                     (pickle.loads, cut_pickle))))
    lines: list[str] = []

    def newest_whole(folder: str, pattern: str, set_aside: bool) -> Optional[tuple[str, bytes]]:
        read, cut = readers[pattern]
        for name in sorted((n for n in _names(fs, folder) if fnmatch(n, pattern)), reverse=True):
            path = f"{folder}/{name}"
            with fs.open_input_stream(path) as f:
                content = f.readall()
            try:
                read(content)
                return name, content
            except cut:
                if set_aside:
                    fs.move(path, path + CUT_SUFFIX)
                    lines.append(f"{name} was cut short by the kill (renamed {name}{CUT_SUFFIX})")
        return None

    for pattern in STATE_FILES:
        before = len(lines)
        kept = newest_whole(run_path, pattern, set_aside=True)  # the one Ray restores
        copy = newest_whole(f"{run_path}/{STATE_COPY}", pattern, set_aside=False)
        if copy and (kept is None or copy[0] > kept[0]):
            _replace(fs, f"{run_path}/{copy[0]}", copy[1])
            lines.append(f"{copy[0]}: put back from the whole copy tuner kept in {STATE_COPY}/")
        elif len(lines) > before:
            lines.append(f"Ray restores {kept[0]}, saved before it" if kept else
                         f"no whole {pattern} is left, nor a copy (a run started before tuner kept them): "
                         f"Ray may start the search over")
    return lines


def recorded_trials(run_dir: str) -> Optional[set[str]]:
    """The ids of the trials in the newest experiment snapshot in ``run_dir``: those
    ``Tuner.restore`` brings back (None when there is no snapshot). The searcher, restored from
    a state that may be newer or older than the snapshot, maps exactly these to study trials
    (:func:`tuner.searcher.resuming_in`)."""
    fs, run_path = _fs_and_path(run_dir)
    newest = _newest_snapshot(fs, run_path)
    if newest is None:
        return None
    with fs.open_input_stream(newest) as f:
        return {json.loads(t)["trial_id"] for t, _ in json.loads(f.readall())["trial_data"]}


def _fs_and_path(run_dir: str):
    """The run folder's pyarrow filesystem and path in it, as Ray resolves a local path or a URI."""
    from ray.train._internal.storage import get_fs_and_path

    return get_fs_and_path(run_dir)


def _newest_snapshot(fs, run_path: str) -> Optional[str]:
    """The newest experiment snapshot in the run folder (None if none), as ``Tuner.restore`` finds it."""
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint

    return _find_newest_experiment_checkpoint(run_path, fs=fs)


def _names(fs, path: str) -> list[str]:
    """The names in a folder (none if it does not exist), through pyarrow's public listing."""
    import pyarrow.fs as pafs

    return [i.base_name for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))]


def _replace(fs, path: str, content: bytes) -> None:
    """Write beside, then move over: a kill now leaves the old file, not half a new one."""
    import pyarrow.fs as pafs

    with fs.open_output_stream(path + ".tmp") as f:
        f.write(content)
    if isinstance(fs, pafs.LocalFileSystem):
        import os

        os.replace(path + ".tmp", path)
    else:
        fs.move(path + ".tmp", path)


def _fix_search_state(fs, run_path: str, trials: dict[str, str]) -> list[str]:
    """Make the search generator's state (``search_gen_state-*.json``) agree with the snapshot
    and with where the run folder is now; the lines to log.

    - **The snapshot's trials.** Ray writes the experiment snapshot, the search generator's state
      and the searcher's (``searcher-state-*.pkl``) into a staging folder, then copies them to the
      run folder in the background: a kill during the copy leaves files of two different saves.
      The generator's trial count (``counter``: ``num_samples`` minus it is how many trials Tune
      still asks for) and the ``ConcurrencyLimiter``'s running trials are set from the snapshot's
      trials, the ones ``Tuner.restore`` brings back: a count newer than the snapshot would skip a
      trial the snapshot lost, an older one would add a trial too many, and a limiter holding a
      trial the snapshot lost would wait for it forever. (The searcher's own state is matched to
      the snapshot by :class:`tuner.searcher.StudySearch` itself.)
    - **The run folder moved.** Ray's ``Tuner.restore`` moves the restored trials to the restored
      folder (``Trial.set_storage``), but its search generator then restores the pickled
      ``Experiment`` of the run's first session and creates every new trial with that experiment's
      storage. In a copied run folder, those trials would write their checkpoints into the original
      folder, and their results would be looked for there.
    """
    from fnmatch import fnmatch

    import ray.cloudpickle as cloudpickle
    names = sorted(n for n in _names(fs, run_path) if fnmatch(n, "search_gen_state-*.json"))
    if not names:
        return []
    path = f"{run_path}/{names[-1]}"  # the one Ray restores: the newest by name (_load_newest_checkpoint)
    with fs.open_input_stream(path) as f:
        state = cloudpickle.loads(f.readall())
    lines = []
    if state.get("counter") != len(trials):
        lines.append(f"the search's trial count ({state.get('counter')}) is set to the {len(trials)} trials of Ray's "
                     f"last snapshot (the two were saved at different times)")
        state["counter"] = len(trials)
    live = {t for t, status in trials.items() if status not in ("TERMINATED", "ERROR")}
    limiter = state.get("name:ConcurrencyLimiter")
    if limiter is not None and not limiter.get("batch") and limiter.get("live_trials") != live:
        lines.append(f"the concurrency limiter's running trials are set to those of Ray's last snapshot "
                     f"({', '.join(sorted(live)) or 'none'})")
        limiter["live_trials"], limiter["num_unfinished_live_trials"] = live, len(live)
    experiment = state.get("experiment")
    storages = [s for s in (getattr(experiment, "storage", None), getattr(experiment, "spec", {}).get("storage"))
                if s is not None]
    parent, name = run_path.rstrip("/").rsplit("/", 1)
    if storages and not all(s.storage_fs_path.rstrip("/") == parent and s.experiment_dir_name == name
                            for s in storages):
        was = f"{storages[0].storage_fs_path.rstrip('/')}/{storages[0].experiment_dir_name}"
        for storage in storages:
            storage.storage_fs_path, storage.experiment_dir_name, storage.storage_filesystem = parent, name, fs
        lines.append(f"the run folder moved from {was}: new trials go to {run_path}")
    if lines:
        _replace(fs, path, cloudpickle.dumps(state))
    return lines


def _tell_study(url: str, name: str, recovered: dict[str, list[dict[str, Any]]]) -> None:
    """Write the epochs of the repaired trials' checkpoints that their study trials lack."""
    from tuner.study import RAY_TRIAL_ID, open_storage
    from tuner.metrics import METRIC

    storage = open_storage(url)
    study_id = storage.get_study_id_from_name(name)
    trials = storage.get_all_trials(study_id, deepcopy=False)
    by_ray_id = {t.user_attrs.get(RAY_TRIAL_ID): t for t in trials if not t.state.is_finished()}
    for trial_id, checkpoints in recovered.items():
        study_trial = by_ray_id.get(trial_id)
        if study_trial is None:
            continue
        for metrics in checkpoints:
            step, value = metrics.get("training_iteration"), metrics.get(METRIC)
            if isinstance(step, int) and isinstance(value, (int, float)) and step not in study_trial.intermediate_values:
                optuna_id = storage.get_trial_id_from_study_id_trial_number(study_id, study_trial.number)
                storage.set_trial_intermediate_value(optuna_id, step, float(value))
                log.info("trial %s: epoch %d's %s (%.4f), from its checkpoint, told to the study",
                         trial_id, step, METRIC, value)


def _repair_trial(entry: list, fs, run_path: str, recovered: dict[str, list[dict[str, Any]]]) -> Optional[str]:
    """Repair one ``[trial_json, run_metadata_json]`` pair of a snapshot in place; the line to log.
    The metrics of the trial's complete checkpoints go into ``recovered``."""
    from ray.train import Checkpoint
    from ray.train._internal.checkpoint_manager import _CheckpointManager, _insert_into_sorted_list
    from ray.train._internal.session import _TrainingResult
    from ray.train._internal.storage import _delete_fs_path
    from ray.train.constants import CHECKPOINT_DIR_NAME
    from ray.tune.trainable.metadata import _TrainingRunMetadata
    from ray.tune.utils.serialization import TuneFunctionEncoder, _loads_with_cloudpickle

    trial = json.loads(entry[0])
    if trial["status"] == "TERMINATED":  # a finished trial registers no checkpoint after its snapshot
        return None
    storage = _loads_with_cloudpickle(json.dumps(trial["storage"]))
    meta = _TrainingRunMetadata.from_json_state(entry[1])
    manager = meta.checkpoint_manager
    folder = f"{run_path}/{storage.trial_dir_name}"  # where the trial is now, even if the run moved
    rows = {r[CHECKPOINT_DIR_NAME]: r for r in _rows(fs, f"{folder}/result.json") if r.get(CHECKPOINT_DIR_NAME)}
    on_disk = sorted(n for n in _names(fs, folder) if n.startswith(CHECKPOINT_PREFIX))  # none: never started
    latest = manager.latest_checkpoint_result if manager else None
    named = latest.checkpoint.path.rstrip("/").rsplit("/", 1)[-1] if latest else None
    if (on_disk[-1] if on_disk else None) == named:
        return None  # the snapshot names the newest checkpoint on storage (or none, and none is there)
    metrics = {n: _checkpoint_metrics(fs, f"{folder}/{n}", rows.get(n)) for n in on_disk}
    complete = [n for n in on_disk if metrics[n] is not None]
    partial = [n for n in on_disk if metrics[n] is None]

    for name in partial:
        _delete_fs_path(fs, f"{folder}/{name}")
    fresh = _CheckpointManager(manager.checkpoint_config if manager else None)
    results = [_TrainingResult(checkpoint=Checkpoint(path=f"{storage.trial_fs_path}/{n}", filesystem=fs),
                               metrics=metrics[n]) for n in complete]
    for result in results:  # kept in Ray's own order (worst first); Ray prunes them at its next checkpoint
        if manager and manager.checkpoint_config.checkpoint_score_attribute:
            _insert_into_sorted_list(fresh._checkpoint_results, result, key=fresh._get_checkpoint_score)
        else:
            fresh._checkpoint_results.append(result)
    fresh._latest_checkpoint_result = results[-1] if results else None
    keep = fresh.checkpoint_config.num_to_keep
    if keep is not None:  # Ray's own policy (register_checkpoint): the best num_to_keep and the latest.
        # Ray moves only those to a moved run folder (Trial.set_storage), and would delete any other
        # at its old path.
        dropped = [r for r in fresh._checkpoint_results[:-keep] if r is not fresh._latest_checkpoint_result]
        fresh._checkpoint_results = [r for r in fresh._checkpoint_results if r not in dropped]
        for r in dropped:
            _delete_fs_path(fs, f"{folder}/{r.checkpoint.path.rstrip('/').rsplit('/', 1)[-1]}")
    meta.checkpoint_manager = fresh
    trial_id = trial["trial_id"]
    recovered[trial_id] = [r.metrics for r in results]
    half = f"; removed {len(partial)} half-written checkpoint(s)" if partial else ""
    if results:
        newest = complete[-1]
        meta.last_result = metrics[newest]
        storage.current_checkpoint_index = int(newest.removeprefix(CHECKPOINT_PREFIX))
        was = f"named {named}, which is gone" if named and named not in complete else f"named {named}"
        line = (f"trial {trial_id}: Ray's last snapshot {was}; it resumes from its newest checkpoint "
                f"on storage, {newest} (iteration {metrics[newest].get('training_iteration')}){half}")
    else:
        meta.last_result = {}
        line = f"trial {trial_id}: no checkpoint of it is left on storage; it restarts from scratch{half}"
    trial["storage"] = TuneFunctionEncoder().default(storage)
    entry[0] = json.dumps(trial, indent=2, cls=TuneFunctionEncoder)
    entry[1] = meta.get_json_state()
    return line


def _checkpoint_metrics(fs, path: str, row: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The metrics of a complete tuner checkpoint (its result.json row, else its own metrics.json);
    None for a folder that a kill left half-written."""
    import zipfile

    from tuner.storage import METRICS_FILE, STATE_FILE

    try:
        with fs.open_input_file(f"{path}/{STATE_FILE}") as f, zipfile.ZipFile(f) as archive:
            if archive.testzip() is not None:  # an entry whose bytes fail their CRC
                return None
        if row is not None:
            return row
        with fs.open_input_stream(f"{path}/{METRICS_FILE}") as f:
            metrics = json.loads(f.readall())
    except (OSError, zipfile.BadZipFile, json.JSONDecodeError, EOFError):
        return None
    name = path.rstrip("/").rsplit("/", 1)[-1]
    # Ray's own fields that a restore reads: one result per epoch (tuner.search.train_trial).
    return {**metrics, "training_iteration": metrics.get("epoch"), "checkpoint_dir_name": name}


def _rows(fs, path: str) -> list[dict[str, Any]]:
    """The complete lines of a trial's ``result.json`` (a line cut by the kill is not one)."""
    try:
        with fs.open_input_stream(path) as f:
            text = f.readall().decode(errors="replace")
    except (FileNotFoundError, OSError):
        return []
    rows = []
    for line in text.splitlines(keepends=True):
        if line.endswith("\n") and line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
