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
trial folders are the ground truth, and Ray's own record of a trial can always be rebuilt from
them. A checkpoint is complete once the trial's ``result.json`` names it. The worker persists a
checkpoint before it reports the result, and the driver logs that result before it registers the
checkpoint, and so before it deletes any older one. :func:`repair` therefore rewrites, in the
newest snapshot, the checkpoint bookkeeping of every unfinished trial from its folder:

- its tracked checkpoints are the complete ones still on storage, its latest the newest of
  them, and its last result and checkpoint index those of that checkpoint;
- a checkpoint folder that no result names was being written when the driver died: it is
  removed, since the trial writes that index again;
- a trial with no complete checkpoint left restarts from scratch, and the log says so.

Keeping every checkpoint the snapshot names would mean second-guessing when Ray writes its
snapshot, in Ray's own loop. The repair only reads Ray's documented on-disk formats, and it
leaves a snapshot that agrees with storage untouched.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Optional

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint_"


def repair(run_dir: str) -> list[str]:
    """Make the newest experiment snapshot in ``run_dir`` agree with the trial folders.

    Args:
        run_dir: the run folder (a local path or a URI), wherever it is now.

    Returns:
        One line per trial that was repaired (also logged); empty when the snapshot agreed.
    """
    import pyarrow.fs as pafs
    from ray.train._internal.storage import get_fs_and_path
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint

    fs, run_path = get_fs_and_path(run_dir)
    newest = _find_newest_experiment_checkpoint(run_path, fs=fs)
    if newest is None:
        return []
    with fs.open_input_stream(newest) as f:
        state = json.loads(f.readall())
    said = []
    for entry in state["trial_data"]:
        line = _repair_trial(entry, fs, run_path)
        if line:
            log.warning("%s", line)
            said.append(line)
    if said:  # written beside, then moved over: a kill now leaves the old snapshot, not half a new one
        with fs.open_output_stream(newest + ".tmp") as f:
            f.write(json.dumps(state, indent=2).encode())
        if isinstance(fs, pafs.LocalFileSystem):
            import os

            os.replace(newest + ".tmp", newest)
        else:
            fs.move(newest + ".tmp", newest)
    return said


def _repair_trial(entry: list, fs, run_path: str) -> Optional[str]:
    """Repair one ``[trial_json, run_metadata_json]`` pair of a snapshot in place; the line to log."""
    from ray.train import Checkpoint
    from ray.train._internal.checkpoint_manager import _CheckpointManager, _insert_into_sorted_list
    from ray.train._internal.session import _TrainingResult
    from ray.train._internal.storage import _delete_fs_path, _list_at_fs_path
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
    try:
        on_disk = sorted(n for n in _list_at_fs_path(fs, folder) if n.startswith(CHECKPOINT_PREFIX))
    except OSError:  # no folder: the trial never started
        on_disk = []
    complete = [n for n in on_disk if n in rows]
    partial = [n for n in on_disk if n not in rows]
    latest = manager.latest_checkpoint_result if manager else None
    named = latest.checkpoint.path.rstrip("/").rsplit("/", 1)[-1] if latest else None
    if not partial and (complete[-1] if complete else None) == named:
        return None  # the snapshot names the newest checkpoint on storage: nothing to repair

    for name in partial:
        _delete_fs_path(fs, f"{folder}/{name}")
    fresh = _CheckpointManager(manager.checkpoint_config if manager else None)
    results = [_TrainingResult(checkpoint=Checkpoint(path=f"{storage.trial_fs_path}/{n}", filesystem=fs),
                               metrics=rows[n]) for n in complete]
    for result in results:  # kept in Ray's own order (worst first); Ray prunes them at its next checkpoint
        if manager and manager.checkpoint_config.checkpoint_score_attribute:
            _insert_into_sorted_list(fresh._checkpoint_results, result, key=fresh._get_checkpoint_score)
        else:
            fresh._checkpoint_results.append(result)
    fresh._latest_checkpoint_result = results[-1] if results else None
    meta.checkpoint_manager = fresh
    trial_id = trial["trial_id"]
    half = f"; removed {len(partial)} half-written checkpoint(s)" if partial else ""
    if results:
        newest = complete[-1]
        meta.last_result = rows[newest]
        storage.current_checkpoint_index = int(newest.removeprefix(CHECKPOINT_PREFIX))
        was = f"named {named}, which is gone" if named and named not in complete else f"named {named}"
        line = (f"trial {trial_id}: Ray's last snapshot {was}; it resumes from its newest checkpoint "
                f"on storage, {newest} (iteration {rows[newest].get('training_iteration')}){half}")
    else:
        meta.last_result = {}
        line = f"trial {trial_id}: no checkpoint of it is left on storage; it restarts from scratch{half}"
    trial["storage"] = TuneFunctionEncoder().default(storage)
    entry[0] = json.dumps(trial, indent=2, cls=TuneFunctionEncoder)
    entry[1] = meta.get_json_state()
    return line


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
