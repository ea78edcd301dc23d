"""Contract tests: the formats tuner reads and edits behind Ray's and Optuna's public APIs.

``tuner/resume.py`` repairs Ray Tune's experiment snapshot (``experiment_state-*.json``, the
search generator's ``search_gen_state-*.json``) before ``Tuner.restore``, through Ray's private
loaders, and tells the Optuna study the epochs it missed. Those formats are not versioned: an
upgrade of Ray or Optuna can change them without a word. These tests run the repair, and a real
resume, on a search recorded on disk as a kill left it (``tests/recorded/killed``, made by
``tests/recorded/record.py`` with the pinned versions: re-record after an upgrade). They are
deterministic: the test makes each case (a snapshot naming a deleted checkpoint, a half-written
checkpoint, a snapshot that agrees) from the recorded folder, instead of racing a kill against
Ray's snapshot clock (tests/test_reliability.py keeps one end-to-end kill).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tuner.metrics import METRIC
from tuner.resume import STATE_COPY, STATE_FILES, repair

RECORDED = Path(__file__).resolve().parent / "recorded" / "killed"


def _snapshot_path(run: Path) -> Path:
    return sorted(run.glob("experiment_state-*.json"))[-1]


def _trials(run: Path) -> list[tuple[dict, str]]:
    """(trial json, run metadata json) of each trial in the newest snapshot."""
    return [(json.loads(t), m) for t, m in json.loads(_snapshot_path(run).read_text())["trial_data"]]


def _named_latest(meta_json: str) -> str:
    """The checkpoint folder the snapshot names as a trial's latest, read by Ray's own loader."""
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    latest = _TrainingRunMetadata.from_json_state(meta_json).checkpoint_manager.latest_checkpoint_result
    return latest.checkpoint.path.rstrip("/").rsplit("/", 1)[-1]


def _trial_lines(lines: list[str]) -> list[str]:
    """The repair's lines about trials (the recorded folder also moved: that line is left out)."""
    return [line for line in lines if line.startswith("trial ")]


def _study(run: Path) -> optuna.Study:
    return optuna.load_study(study_name=run.name, storage=f"sqlite:///{run / 'study.db'}")


@pytest.fixture
def run(tmp_path) -> Path:
    if not RECORDED.is_dir():
        pytest.fail(f"{RECORDED} is missing: python tests/recorded/record.py")
    dest = tmp_path / "runs" / RECORDED.name
    shutil.copytree(RECORDED, dest)
    return dest


@pytest.fixture
def running(run) -> tuple[Path, dict, Path, list[str]]:
    """The recorded run, its running trial, that trial's folder and its checkpoints on disk (oldest first)."""
    (trial, meta), = [(t, m) for t, m in _trials(run) if t["status"] == "RUNNING"]
    folder = run / f"trial_{trial['trial_id']}"
    on_disk = sorted(p.name for p in folder.glob("checkpoint_*"))
    assert len(on_disk) >= 2, on_disk
    return run, trial, folder, on_disk


def test_ray_reads_the_recorded_snapshot(run):
    """What tuner.resume parses with Ray's private loaders still parses: each trial's status, its
    storage (cloudpickled), its checkpoint manager and last result."""
    from ray.tune.trainable.metadata import _TrainingRunMetadata
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    trials = _trials(run)
    assert [t["status"] for t, _ in trials] == ["TERMINATED", "RUNNING"]
    for trial, meta_json in trials:
        storage = _loads_with_cloudpickle(json.dumps(trial["storage"]))
        assert storage.trial_dir_name == f"trial_{trial['trial_id']}" and storage.experiment_dir_name == run.name
        meta = _TrainingRunMetadata.from_json_state(meta_json)
        assert meta.checkpoint_manager.checkpoint_config.num_to_keep == 2
        assert isinstance(meta.last_result.get(METRIC), float) and meta.last_result["training_iteration"] >= 1
        assert _named_latest(meta_json).startswith("checkpoint_")


def test_the_recorded_study_has_the_running_trial(run):
    """The Optuna side, by its public API: the first trial COMPLETE, the second RUNNING, each naming
    its Ray trial (tuner.study.RAY_TRIAL_ID)."""
    from tuner.study import RAY_TRIAL_ID

    study = _study(run)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING]
    assert [t.user_attrs[RAY_TRIAL_ID] for t in study.trials] == [t["trial_id"] for t, _ in _trials(run)]


def test_a_snapshot_naming_a_deleted_checkpoint_resumes_from_the_newest_on_storage(running):
    """Kill between Ray's deleting a checkpoint and its next snapshot: the snapshot names a folder
    that is gone. The repair points the trial at the newest complete checkpoint on storage, its
    last result that checkpoint's, and tells the study that epoch's value if it lacked it."""
    run, trial, folder, on_disk = running
    named = _named_latest(dict((t["trial_id"], m) for t, m in _trials(run))[trial["trial_id"]])
    for name in on_disk:  # what Ray deleted: the named checkpoint and any after it
        if name >= named:
            shutil.rmtree(folder / name)
    left = sorted(p.name for p in folder.glob("checkpoint_*"))
    assert left, "the recorded trial has no checkpoint older than the one its snapshot names"
    lines = _trial_lines(repair(str(run), f"sqlite:///{run / 'study.db'}", run.name))
    assert len(lines) == 1 and f"named {named}, which is gone" in lines[0] and left[-1] in lines[0], lines
    meta = dict((t["trial_id"], m) for t, m in _trials(run))[trial["trial_id"]]
    assert _named_latest(meta) == left[-1]
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    last = _TrainingRunMetadata.from_json_state(meta).last_result
    state = json.loads((folder / left[-1] / "metrics.json").read_text())
    assert last["training_iteration"] == state["epoch"] and last[METRIC] == pytest.approx(state[METRIC])
    study_trial = _study(run).trials[1]
    assert study_trial.intermediate_values[state["epoch"]] == pytest.approx(state[METRIC], abs=1e-6)


def test_a_half_written_checkpoint_is_removed(running):
    """Kill while a checkpoint is written: its state.pt is cut short. The repair removes the folder
    (the trial writes that index again) and resumes from the newest complete one."""
    run, trial, folder, on_disk = running
    newest = folder / on_disk[-1] / "state.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    lines = _trial_lines(repair(str(run)))
    assert len(lines) == 1 and "removed 1 half-written checkpoint" in lines[0], lines
    assert not (folder / on_disk[-1]).exists()
    meta = dict((t["trial_id"], m) for t, m in _trials(run))[trial["trial_id"]]
    assert _named_latest(meta) == on_disk[-2]


def test_a_snapshot_that_agrees_with_storage_is_left_alone(running):
    run, trial, folder, on_disk = running
    named = _named_latest(dict((t["trial_id"], m) for t, m in _trials(run))[trial["trial_id"]])
    for name in on_disk:  # storage as the snapshot says: nothing newer than the checkpoint it names
        if name > named:
            shutil.rmtree(folder / name)
    before = _snapshot_path(run).read_bytes()
    assert _trial_lines(repair(str(run))) == []  # only "the run folder moved": it was recorded elsewhere
    assert _snapshot_path(run).read_bytes() == before


def _search_gen_state(run: Path) -> dict:
    import ray.cloudpickle as cloudpickle

    return cloudpickle.loads(sorted(run.glob("search_gen_state-*.json"))[-1].read_bytes())


@pytest.mark.parametrize("counter, live", [(3, {"c2b1bcfe", "lost0001"}), (1, set())],
                         ids=["search state newer than the snapshot", "older"])
def test_the_search_state_is_matched_to_the_snapshot(running, counter, live):
    """Ray copies its snapshot and the search generator's state to the run folder in the background,
    one file after the other: a kill between them leaves the two from different saves. The repair
    sets the generator's trial count and the concurrency limiter's running trials from the snapshot,
    so Tune asks for exactly the trials the snapshot lacks and waits for none it lost."""
    import ray.cloudpickle as cloudpickle

    run, trial, folder, on_disk = running
    path = sorted(run.glob("search_gen_state-*.json"))[-1]
    state = _search_gen_state(run)
    state["counter"] = counter
    state["name:ConcurrencyLimiter"].update(live_trials=live, num_unfinished_live_trials=len(live))
    path.write_bytes(cloudpickle.dumps(state))
    lines = repair(str(run))
    assert any("trial count" in line for line in lines) and any("concurrency limiter" in line for line in lines), lines
    state = _search_gen_state(run)
    assert state["counter"] == 2  # the snapshot's two trials (one ended, one running)
    assert state["name:ConcurrencyLimiter"]["live_trials"] == {trial["trial_id"]}
    assert state["name:ConcurrencyLimiter"]["num_unfinished_live_trials"] == 1
    assert not any("trial count" in line or "concurrency" in line for line in repair(str(run)))  # agrees now


@pytest.mark.parametrize("kind", ["experiment_state", "search_gen_state", "searcher-state"])
def test_a_state_file_cut_short_by_the_kill_is_set_aside(run, kind):
    """Each driver session writes its own state files, and Ray restores the newest by name: a kill
    while Ray copied one into the run folder leaves it cut short, and Ray would fail on it. The
    repair renames it, so that Ray restores the one saved before it."""
    old = sorted(run.glob(f"{kind}-*"))[-1]
    cut = old.with_name(old.name.replace("2026-12-04_22-25-42", "2026-12-05_09-00-00"))  # a later session
    cut.write_bytes(old.read_bytes()[: len(old.read_bytes()) // 2])
    lines = repair(str(run))
    assert any(line.startswith(f"{cut.name} was cut short") for line in lines), lines
    assert f"Ray restores {old.name}, saved before it" in lines, lines
    assert not cut.exists() and cut.with_name(cut.name + ".cut").exists() and old.exists()


def _keep_state_copy(run: Path) -> Path:
    """The run folder's ``.state-copy/`` as KeepStateCopy leaves it: each of Ray's state files, whole."""
    copies = run / STATE_COPY
    copies.mkdir()
    for pattern in STATE_FILES:
        for path in run.glob(pattern):
            shutil.copy(path, copies / path.name)
    return copies


@pytest.mark.parametrize("kind", ["experiment_state", "search_gen_state", "searcher-state"])
def test_the_only_state_file_of_its_kind_cut_short_is_put_back_from_tuners_copy(run, kind):
    """In a search's first session no older state file stands behind a cut one: Ray's restore
    would fail on it and start the experiment over (losing every trial), or wait for ever on a trial
    the concurrency limiter remembers. The repair puts back the copy KeepStateCopy kept."""
    copies = _keep_state_copy(run)
    (only,) = run.glob(f"{kind}-*")
    only.write_bytes(only.read_bytes()[: len(only.read_bytes()) // 2])
    lines = repair(str(run))
    assert any(line.startswith(f"{only.name} was cut short") for line in lines), lines
    assert f"{only.name}: put back from the whole copy tuner kept in {STATE_COPY}/" in lines, lines
    # Put back whole, then repaired as the recorded files are (the snapshot's running trial, the
    # generator's run folder, which moved): the same trials, the same searcher.
    if kind == "experiment_state":
        assert [t["trial_id"] for t, _ in _trials(run)] == ["bc0f1764", "c2b1bcfe"]
    elif kind == "search_gen_state":
        assert _search_gen_state(run)["counter"] == 2
    else:
        assert only.read_bytes() == (copies / only.name).read_bytes()
    assert only.with_name(only.name + ".cut").exists()
    assert not any("put back" in line for line in repair(str(run)))  # whole now: left alone


def test_a_cut_state_file_with_nothing_to_put_back_is_said(run):
    """A run recorded before tuner kept copies (this one): the repair says what Ray may do."""
    (only,) = run.glob("searcher-state-*")
    only.write_bytes(only.read_bytes()[:100])
    lines = repair(str(run))
    assert ("no whole searcher-state-*.pkl is left, nor a copy (a run started before tuner kept them): "
            "Ray may start the search over") in lines, lines


# The repair of a cut state file is checked without a search above; resuming after one, end to end
# (~40 s), is in the slow lane.
@pytest.mark.parametrize("cut", [None, pytest.param("searcher-state", marks=pytest.mark.slow)],
                         ids=["as recorded", "its only searcher state cut short"])
def test_the_recorded_run_resumes_to_the_end(running, cut):
    """`tuner tune --resume` on the recorded folder (moved here from where it was recorded): the
    running trial continues from its newest checkpoint, both trials end, the best is exported. So
    too when the kill cut the searcher's only state file short (Ray hung on it, waiting for the trial
    its concurrency limiter remembered), from the copy KeepStateCopy kept."""
    run, trial, folder, on_disk = running
    if cut:
        _keep_state_copy(run)
        (only,) = run.glob(f"{cut}-*")
        only.write_bytes(only.read_bytes()[: len(only.read_bytes()) // 2])
    spec = run / "spec.yaml"
    out = subprocess.run([sys.executable, "-m", "tuner", "tune", str(spec), "--storage", str(run.parent), "--resume",
                          "--no-report"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "Could not recover from checkpoint" not in out.stdout + out.stderr
    assert [t["status"] for t, _ in _trials(run)] == ["TERMINATED", "TERMINATED"]
    rows = [json.loads(line) for line in (folder / "result.json").read_text().splitlines() if line.strip()]
    assert rows[-1]["epoch"] == 120
    assert [t.state for t in _study(run).trials] == [optuna.trial.TrialState.COMPLETE] * 2
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert best["test_psnr"] > best["noisy_test_psnr"]
