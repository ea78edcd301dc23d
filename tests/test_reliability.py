"""Failure and recovery, with real Ray, real processes and real signals.

- A driver killed with SIGKILL (its whole process group) anywhere (in an epoch while Ray's
  snapshot names a deleted checkpoint, after a half-written checkpoint, between trials, in the
  export) resumes with ``--resume``: running trials continue from their newest checkpoint on
  storage, every trial ends, the Optuna searcher continues its own study, and a copied run
  folder resumes where it now is.
- A trial whose worker process is SIGKILLed restarts from its last checkpoint and finishes.
- A diverging configuration ends as a diverged trial with the worst score; the rest of the
  search goes on, and ``best/`` is a healthy trial.
- Only the best ``keep_checkpoints`` checkpoints per trial (plus the latest) stay on disk.
- A local search's Ray serves no dashboard beyond localhost.

The driver-kill test runs the CLI in its own session with a private ``RAY_TMPDIR``, so the
processes it kills and the Ray it checks are its own, never another user's.
"""
from __future__ import annotations

import glob
import ipaddress
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from tuner.cli import main
from tuner.search import run_search
from tuner.spec import load_spec
from tuner.storage import STUDY_FILE
from tuner.metrics import DIVERGED_PSNR, METRIC

pytestmark = pytest.mark.own_ray  # its faulty search kills workers of a Ray of its own

# sgd with lr 100 on a net without batch norm reaches a NaN loss in its first epoch on digits
# (checked: tuner.train.fit reports diverged=1, val_psnr 0.0); 0.05 and 0.2 train fine. With seed
# 2 the TPE sampler's random start-up draws lr 100 for one of the four trials.
FAULTS_SPEC = """\
name: faults
seed: 2
dataset: {name: digits}
eval_noise: {kind: gaussian, level: 0.3}
budget: {num_samples: 4, max_epochs: 8, grace_period: 8, max_concurrent: 2, keep_checkpoints: 2,
         max_failures: 2, checkpoint_every_s: 0}
resources: {cpus_per_trial: 1}
fixed: {width: 16, depth: 2, latent_dim: 8, batch_size: 64, skip: true, optimizer: sgd,
        batch_norm: false, loss: bce}
search:
  lr: {choice: [0.05, 0.2, 100.0]}
"""
HUGE_LR = 100.0


# ---------------------------------------------------------------- processes

def _procs() -> dict[int, tuple[int, int, str, str]]:
    """pid -> (ppid, pgid, state, cmdline) for every process, from /proc."""
    out = {}
    for d in glob.glob("/proc/[0-9]*"):
        try:
            stat = Path(d, "stat").read_text()
            cmd = Path(d, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        out[int(d[6:])] = (int(fields[1]), int(fields[2]), fields[0], cmd)
    return out


def _descendants(root: int, procs: Optional[dict] = None) -> set[int]:
    procs = procs if procs is not None else _procs()
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    """The pids still running (zombies are dead: nothing reaps orphans in some containers)."""
    procs = _procs()
    return {p for p in pids if p in procs and procs[p][2] != "Z"}


def _group(pgid: int) -> set[int]:
    return {pid for pid, (_, g, state, _) in _procs().items() if g == pgid and state != "Z"}


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_until(predicate: Callable[[], Any], timeout: float, what: str,
                proc: Optional[subprocess.Popen] = None, log: Optional[Path] = None) -> Any:
    """Poll until ``predicate()`` is truthy; fail with the process's log when it ends or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            pytest.fail(f"the driver exited ({proc.returncode}) before {what}:\n{tail}")
        time.sleep(0.3)
    tail = log.read_text()[-3000:] if log else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


# ---------------------------------------------------------------- what a run leaves on disk

def _rows(result_json: Path) -> list[dict]:
    """The complete lines of a trial's result.json (a line being written is not one yet)."""
    try:
        text = result_json.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n") and line.strip()]


def _trial_dirs(run: Path) -> dict[str, Path]:
    return {p.name.removeprefix("trial_"): p for p in run.glob("trial_*") if p.is_dir()}


def _experiment_state(run: Path) -> Optional[dict[str, dict]]:
    """trial id -> {status, last_result, num_failures} from the newest experiment_state-*.json
    (Ray's own record, the one Tuner.restore reads); None while it is missing or half-written."""
    files = sorted(run.glob("experiment_state-*.json"))  # named by session start time
    if not files:
        return None
    try:
        data = json.loads(files[-1].read_text())
    except (json.JSONDecodeError, OSError):
        return None
    state = {}
    for trial_json, meta_json in data["trial_data"]:
        trial, meta = json.loads(trial_json), json.loads(meta_json)
        state[trial["trial_id"]] = {"status": trial["status"], "last_result": meta.get("last_result") or {},
                                    "num_failures": int(meta.get("num_failures", 0))}
    return state


def _ray_env(ray_tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": str(ray_tmp)}


# ---------------------------------------------------------------- 1. a driver killed anywhere resumes

KILL_SPEC = """\
# Five trials of 12 epochs of about half a second, one at a time; ASHA may stop the later ones at 4 or 8 epochs.
# keep_checkpoints 2: Ray forces its experiment snapshot only every 2 checkpoints of a trial, and
# deletes at once a checkpoint that is neither among the best 2 nor the latest. The warm start's
# constant high lr makes its val_psnr jump about, so its snapshot often names a checkpoint that is
# gone: the state that lost the best trial in issue 20.
name: resume
seed: 0
dataset: {name: digits}
eval_noise: {kind: gaussian, level: 0.3}
budget: {num_samples: 5, max_epochs: 12, grace_period: 4, reduction_factor: 2, max_concurrent: 1,
         keep_checkpoints: 2, checkpoint_every_s: 0}
resources: {cpus_per_trial: 1}
fixed: {width: 16, depth: 2, batch_size: 32, skip: true}
search:
  lr: {loguniform: [1.0e-3, 3.0e-2]}
  latent_dim: {choice: [8, 16]}
start_from:
  - {lr: 0.02, latent_dim: 16}
"""


def _newest_complete(folder: Path) -> Optional[tuple[str, int]]:
    """The newest checkpoint of a trial that reads back whole, with its epoch. (Workers write
    checkpoints straight into the run folder; result.json is copied there only with Ray's snapshot.)"""
    import torch

    for path in sorted(folder.glob("checkpoint_*"), reverse=True):
        try:
            return path.name, int(torch.load(path / "state.pt", map_location="cpu", weights_only=True)["epoch"])
        except Exception:  # half-written, or deleted under our feet
            continue
    return None


def _stale(run: Path, before_epoch: int, newest_below: Optional[int] = None) -> Optional[dict]:
    """A running trial, at an epoch before ``before_epoch``, whose checkpoint in Ray's snapshot is
    gone from disk (so a newer one is there: Ray keeps the latest). Quick, to kill while it holds:
    it lasts until Ray's next snapshot, a few epochs. With ``newest_below``, also the newest
    checkpoint that reads back whole, which must be of an epoch below it (slower: after the kill).
    ``started``: the trials Ray has started so far."""
    state = _experiment_state(run)
    for trial_id, s in (state or {}).items():
        named = s["last_result"].get("checkpoint_dir_name")
        folder = run / f"trial_{trial_id}"
        if (s["status"] == "RUNNING" and named and s["last_result"].get("epoch", 0) < before_epoch - 1
                and not (folder / named).exists()):
            found = {"trial": trial_id, "named": named, "started": len(state), "newest": None}
            if newest_below is None:
                return found
            newest = _newest_complete(folder)
            if newest and newest[1] < newest_below:
                return {**found, "newest": newest}
    return None


def _study_trials(run: Path) -> list:
    import optuna

    try:
        study = optuna.load_study(study_name="resume", storage=f"sqlite:///{run / STUDY_FILE}")
        return study.get_trials(deepcopy=False)
    except Exception:  # created, or locked, at this very moment
        return []


def _with_env(var: str, value: str) -> set[int]:
    """The live processes whose environment sets ``var=value``: a search's driver, its Ray and its
    workers all inherit the private RAY_TMPDIR, whatever process group or parent they end up in."""
    found, needle = set(), f"{var}={value}".encode()
    for pid in _alive(set(_procs())):
        try:
            if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.add(pid)
        except OSError:
            continue
    return found


class _Search:
    """The CLI's search, started and SIGKILLed (its whole session: driver, Ray, workers) at will."""

    def __init__(self, tmp_path: Path, ray_tmp: Path, spec_path: Path):
        self.tmp, self.env, self.spec_path, self.ray_tmp = tmp_path, _ray_env(ray_tmp), spec_path, str(ray_tmp)
        self.runs = 0

    def start(self, storage: Path, resume: bool) -> tuple[subprocess.Popen, Path]:
        self.runs += 1
        log = self.tmp / f"run{self.runs}.log"
        cmd = [sys.executable, "-m", "tuner", "tune", str(self.spec_path), "--storage", str(storage), "--no-report"]
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd + (["--resume"] if resume else []), stdout=f, stderr=subprocess.STDOUT,
                                    env=self.env, start_new_session=True)
        return proc, log

    def finish(self, storage: Path) -> str:
        """Resume the search and let it end; its log, once it exited 0."""
        proc, log = self.start(storage, resume=True)
        try:
            proc.wait(timeout=300)
        finally:
            _kill_group(proc.pid)
        out = log.read_text()
        assert proc.returncode == 0, out[-4000:]
        return out

    def kill_when(self, proc: subprocess.Popen, log: Path, predicate: Callable[[], Any], what: str,
                  timeout: float = 300, may_finish: bool = False) -> Any:
        """Poll (every 20 ms) until ``predicate()``; then SIGKILL the search at once and wait for all
        of it to end. ``may_finish``: a search that ends first (exit 0) returns None instead of failing."""
        try:
            deadline = time.monotonic() + timeout
            while not (value := predicate()):
                if proc.poll() is not None:
                    if may_finish and proc.returncode == 0:
                        return None
                    pytest.fail(f"the search exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{log.read_text()[-3000:]}")
                time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Ray at once: no clean shutdown
            proc.wait(timeout=60)
            # Trial workers run in their own process groups; without their raylet they exit on their own.
            _wait_until(lambda: not _with_env("RAY_TMPDIR", self.ray_tmp), 60, "the killed search's processes to exit")
            return value
        finally:
            _kill_group(proc.pid)
            for pid in _with_env("RAY_TMPDIR", self.ray_tmp):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_search_killed_anywhere_resumes_every_trial(tmp_path, ray_tmp):
    """One search, SIGKILLed four times and resumed after each (issue 20): in an epoch while Ray's
    snapshot names a checkpoint deleted since; after a half-written checkpoint; between two trials;
    in the export. Between two of the resumes the run folder is copied elsewhere, and resumes there."""
    import optuna

    spec_path = tmp_path / "resume.yaml"
    spec_path.write_text(KILL_SPEC)
    spec = load_spec(spec_path)
    n, max_epochs = spec.budget.num_samples, spec.budget.max_epochs
    storage, elsewhere = tmp_path / "runs", tmp_path / "copied"
    run = storage / "resume"
    search = _Search(tmp_path, ray_tmp, spec_path)

    # 1. In an epoch, while Ray's snapshot names a checkpoint of a running trial that is gone from disk.
    # Ray may write a newer snapshot between the poll that sees that and the kill: then look again.
    # The trial's newest checkpoint must leave it epochs to go: steps 1 and 2 need two more of them
    # (one trained on below, one half-written), and step 3 one more after that.
    # A search can also run to its end without Ray ever naming a deleted checkpoint in time (seen
    # once in CI, 2026-12-06: 5 trials in 22 s): then it starts over, a fresh run.
    # Step 3 needs a trial still to start after the stale one (one trial at a time: the study holds the
    # trials started so far), so a stale trial that is the search's last does not count (CI, 2026-12-07:
    # step 3's resume ran to the end without a new trial). Counted in Ray's snapshot: the test opens no
    # connection to the study before copying it (closing the last one folds the study's -wal file in).
    started = False

    def stale_with_a_trial_to_come() -> Optional[dict]:
        stale = _stale(run, max_epochs - 2)
        return stale if stale and stale["started"] < n else None

    # A kill that misses starts over too, never a resume: what it left on disk can still read as stale
    # to the poll (a snapshot naming a deleted checkpoint while the trial's newest is too far on), so a
    # resume would be killed at once on it, before writing anything (CI, 2026-12-08: attempts 2-4 so).
    for attempt in range(4):
        if started:
            shutil.rmtree(run)
        proc, log = search.start(storage, resume=False)
        started = True
        if search.kill_when(proc, log, stale_with_a_trial_to_come, "a snapshot naming a deleted checkpoint",
                            timeout=420, may_finish=True) is None:
            continue
        stale = _stale(run, max_epochs, newest_below=max_epochs - 2)  # what Tuner.restore would read
        if stale:
            break
    else:
        pytest.fail("four kills in a row came just after Ray had snapshotted its state, or too late in a trial, "
                    "or the searches ended first")
    trial, (newest, epoch) = stale["trial"], stale["newest"]
    folder = run / f"trial_{trial}"

    proc, log = search.start(storage, resume=True)
    on = lambda: (_newest_complete(folder) or ("", 0))[1] > epoch  # noqa: E731  (it trained on)
    search.kill_when(proc, log, on, "the repaired trial's next epoch")
    out = log.read_text()
    assert "Could not recover from checkpoint" not in out, out[-3000:]
    assert f"trial {trial}: Ray's last snapshot named {stale['named']}, which is gone" in out, out[-3000:]
    assert f"trial_{trial}/{newest})" in out, out[-3000:]  # "Restored on ... from checkpoint: ..."

    # 2. During a checkpoint write. Ray copies a checkpoint into the trial folder in milliseconds, too
    # short to hit from outside on purpose; what a kill there leaves is a checkpoint folder holding a
    # truncated file. Leave exactly that behind the kill.
    name, epoch = _newest_complete(folder)
    assert epoch < max_epochs, epoch
    half = folder / f"checkpoint_{int(name.removeprefix('checkpoint_')) + 1:06d}"
    shutil.rmtree(half, ignore_errors=True)
    half.mkdir()
    state_pt = (folder / name / "state.pt").read_bytes()
    (half / "state.pt").write_bytes(state_pt[: len(state_pt) // 2])
    # ...and copy the run folder to another place, as one copies a cluster's run to a laptop: the
    # resume must find its study, checkpoints and export there, and leave the original alone.
    elsewhere.mkdir()
    shutil.copytree(run, elsewhere / "resume", symlinks=True)
    original = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    run = elsewhere / "resume"
    folder, half = run / folder.name, run / folder.name / half.name
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = sum(t.state in ended for t in _study_trials(run))

    # 3. Between two trials: one more has ended, and the study's next trial has no epoch yet.
    assert len(_study_trials(run)) < n, "no trial left to start for step 3"
    proc, log = search.start(elsewhere, resume=True)

    def between() -> bool:
        trials = _study_trials(run)
        return (sum(t.state in ended for t in trials) > finished
                and any(t.state == optuna.trial.TrialState.RUNNING and not t.intermediate_values for t in trials))

    search.kill_when(proc, log, between, "a new trial before its first epoch")
    out = log.read_text()
    assert "removed 1 half-written checkpoint" in out and f"trial_{trial}/{name})" in out, out[-3000:]
    assert "new trials go to" in out, out[-3000:]  # the search's own record moved too
    if half.exists():  # the trial wrote that index again, whole this time
        import torch

        assert torch.load(half / "state.pt", weights_only=True)["epoch"] == epoch + 1

    # 4. In the export, after every trial has ended.
    proc, log = search.start(elsewhere, resume=True)
    search.kill_when(proc, log, lambda: "exporting the best model" in log.read_text(), "the export")

    # The last resume ends the search.
    out = search.finish(elsewhere)
    assert "Could not recover from checkpoint" not in out
    assert (run / "best" / "model.pt").is_file()
    best = json.loads((run / "best" / "metrics.json").read_text())

    # Ray's view: num_samples trials (plus at most one folder per kill of a trial that Ray never
    # recorded, each replaced by a fresh suggestion), all ended normally, none errored.
    final = _experiment_state(run)
    assert len(final) == n and all(s["status"] == "TERMINATED" for s in final.values()), final
    assert all(s["num_failures"] == 0 for s in final.values()), final
    # The study's view, in the copied folder's database: num_samples trials, COMPLETE or PRUNED.
    study = _study_trials(run)
    assert len(study) == n and all(t.state in ended for t in study), [t.state for t in study]
    # The warm start ran to max_epochs, every epoch once in the study: an epoch whose result the
    # killed driver never received was told to the study from its checkpoint by the resume.
    warm = study[0]
    assert warm.params == {"lr": 0.02, "latent_dim": 16} and warm.state == optuna.trial.TrialState.COMPLETE
    assert sorted(warm.intermediate_values) == list(range(1, max_epochs + 1))
    assert all(t.user_attrs["ray_trial_id"] in final for t in study)  # each names its Ray trial
    # The export is the best val_psnr any trial reached (each keeps its best checkpoints on disk).
    best_seen = max(v for t in study for v in t.intermediate_values.values())
    assert best[METRIC] == pytest.approx(best_seen, abs=1e-4) and best["trial_id"] in final
    # The searcher restores from the copied folder with its TPE sampler, every Ray trial an Optuna one.
    from tuner.searcher import StudySearch, resuming_in

    with resuming_in(str(run)):
        searcher = StudySearch(max_t=max_epochs)
        searcher.restore_from_dir(str(run))
    assert searcher._storage.url == f"sqlite:///{run / STUDY_FILE}"
    assert isinstance(searcher.study.sampler, optuna.samplers.TPESampler)
    assert set(searcher._numbers) == set(final)
    # The original folder was left as it was copied.
    for p, content in original.items():
        assert p.read_bytes() == content, p
    assert {p for p in (storage / "resume").rglob("*") if p.is_file()} == set(original)


def test_resume_of_an_unknown_run_is_one_line(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(KILL_SPEC)
    assert main(["tune", str(spec), "--name", "never-ran", "--storage", str(tmp_path / "runs"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tuner: error: ") and err.count("\n") == 1, err
    assert "nothing to resume" in err and "never-ran" in err
    assert not (tmp_path / "runs" / "never-ran").exists()


# ---------------------------------------------------------------- 2-6. one search with a crash and a divergence

class _WorkerKiller(threading.Thread):
    """SIGKILLs the worker process of the first healthy trial seen mid-run (pid from its result.json)."""

    def __init__(self, run: Path, max_epochs: int):
        super().__init__(daemon=True)
        self.run_dir, self.max_epochs = run, max_epochs
        self.victim: Optional[dict] = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            for result_json in self.run_dir.glob("trial_*/result.json"):
                rows = _rows(result_json)
                if not rows:
                    continue
                last = rows[-1]
                if last["diverged"] or last.get("done") or not 2 <= last["epoch"] <= self.max_epochs - 3:
                    continue
                pid = int(last["pid"])
                if pid not in _descendants(os.getpid()):  # only a worker of the Ray this test started
                    continue
                os.kill(pid, signal.SIGKILL)
                self.victim = {"trial_id": last["trial_id"], "pid": pid, "epoch": last["epoch"]}
                return


def _listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets ``pid`` listens on, from /proc (no ss/netstat needed)."""
    inodes = set()
    for fd in glob.glob(f"/proc/{pid}/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            addr, port = cols[1].split(":")
            raw = bytes.fromhex(addr)  # 32-bit words in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((str(ipaddress.ip_address(raw)), int(port, 16)))
    return found


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


@pytest.fixture(scope="module")
def faulty_search(tmp_path_factory):
    """One real search (in this process) in which one trial diverges and one trial's worker is
    killed mid-run; also records what the local Ray exposes while it is up."""
    import ray

    if ray.is_initialized():  # another module's Ray: this search must start its own
        ray.shutdown()
    root = tmp_path_factory.mktemp("faults")
    spec_path = root / "faults.yaml"
    spec_path.write_text(FAULTS_SPEC)
    spec = load_spec(spec_path)
    storage = root / "runs"
    killer = _WorkerKiller(storage / spec.name, spec.budget.max_epochs)
    killer.start()
    try:
        result = run_search(spec, storage=str(storage), verbose=0)
        procs = _procs()
        mine = _descendants(os.getpid(), procs)  # the local Ray this search started, and its workers
        info = dict(ray._private.worker.global_worker.node.address_info)
        exposure = {"address_info": info,
                    "commands": {pid: procs[pid][3] for pid in mine},
                    "listening": {pid: _listening(pid) for pid in mine},
                    "agent_job_api": _unauthenticated_status(info)}
    finally:
        killer.done.set()
        ray.shutdown()
    return {"spec": spec, "result": result, "run": Path(result.run_dir), "victim": killer.victim,
            "exposure": exposure}


def _unauthenticated_status(info: dict) -> Optional[int]:
    """HTTP status of a token-less request to the dashboard agent's job API, None if it is off."""
    import urllib.error
    import urllib.request

    port = info.get("dashboard_agent_listen_port") or -1
    if port <= 0:
        return None
    url = f"http://{info['node_ip_address']}:{port}/api/job_agent/jobs/"
    try:
        return urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def _trial_rows(run: Path) -> dict[str, list[dict]]:
    return {t: _rows(d / "result.json") for t, d in _trial_dirs(run).items()}


def _no_epoch_lost(epochs: list[int], cut: int, max_epochs: int) -> bool:
    """Whether a trial whose worker died before its row ``cut`` reported every epoch once, but for at
    most the epoch at the cut: each epoch is checkpointed, and the restart begins right after the last
    checkpoint Ray Tune registered. The worker writes a checkpoint before it reports, but the driver
    logs the report's row first and registers the checkpoint as the trial's latest only when a second
    call to the worker (its ``save``, ray/tune/execution/tune_controller.py) returns: a kill in between
    redoes that one epoch and loses none (a CI run of 2026-12-07: epochs 1, 2, 3, 3, 4, ...)."""
    before, after = epochs[:cut], epochs[cut:]
    once = list(range(1, max_epochs + 1))
    return before + after == once or (bool(before and after) and after[0] == before[-1]
                                      and before + after[1:] == once)


def _first_restarted_row(rows: list[dict], pid: int) -> int:
    """The index of a killed worker's trial's first row from its new worker (``pid``: the killed one)."""
    pids = [r["pid"] for r in rows]
    return pids.index(next(p for p in pids if p != pid))


def test_killed_trial_worker_restarts_from_its_checkpoint(faulty_search):
    run, spec, victim = faulty_search["run"], faulty_search["spec"], faulty_search["victim"]
    assert victim, "no trial was seen mid-run, so no worker was killed"
    rows = _trial_rows(run)[victim["trial_id"]]
    epochs = [r["epoch"] for r in rows]
    pids = [r["pid"] for r in rows]
    cut = _first_restarted_row(rows, victim["pid"])
    assert set(pids[:cut]) == {victim["pid"]} and victim["pid"] not in pids[cut:]
    assert cut in (victim["epoch"], victim["epoch"] + 1)  # it may have reported one more epoch before dying
    assert _no_epoch_lost(epochs, cut, spec.budget.max_epochs), epochs
    assert rows[cut]["iterations_since_restore"] == 1  # a restore, not a continuation
    state = _experiment_state(run)[victim["trial_id"]]
    assert state["status"] == "TERMINATED" and state["num_failures"] == 1, state
    by_id = {r.metrics["trial_id"]: r for r in faulty_search["result"].results}
    assert by_id[victim["trial_id"]].error is None


def test_diverged_trial_ends_with_worst_score_and_search_goes_on(faulty_search):
    run, spec, result = faulty_search["run"], faulty_search["spec"], faulty_search["result"]
    rows = _trial_rows(run)
    params = {t: json.loads((run / f"trial_{t}" / "params.json").read_text()) for t in rows}
    diverged = {t for t, p in params.items() if p["lr"] == HUGE_LR}
    healthy = set(rows) - diverged
    assert diverged and len(healthy) >= 2, f"seed {spec.seed} did not draw both kinds of lr: {params}"
    for t in diverged:
        assert len(rows[t]) == 1 and rows[t][0]["diverged"] == 1, rows[t]  # stopped after the bad epoch
        assert rows[t][0][METRIC] == DIVERGED_PSNR
        assert math.isnan(rows[t][0]["train_loss"]) or math.isinf(rows[t][0]["train_loss"])
    worst_healthy = min(max(r[METRIC] for r in rows[t]) for t in healthy)
    assert all(rows[t][0][METRIC] < worst_healthy for t in diverged)
    victim = faulty_search["victim"] or {}
    for t in healthy:  # unaffected: every epoch ran, none diverged (the killed worker's trial: once, but the cut)
        epochs = [r["epoch"] for r in rows[t]]
        if t == victim.get("trial_id"):
            assert _no_epoch_lost(epochs, _first_restarted_row(rows[t], victim["pid"]), spec.budget.max_epochs), epochs
        else:
            assert epochs == list(range(1, spec.budget.max_epochs + 1)), epochs
        assert not any(r["diverged"] for r in rows[t]) and all(r[METRIC] > 0 for r in rows[t])
    state = _experiment_state(run)
    assert all(state[t]["status"] == "TERMINATED" for t in rows)  # a divergence is a result, not an error
    assert len(result.results) == spec.budget.num_samples and not result.results.errors
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert best["trial_id"] in healthy and result.best_config["lr"] != HUGE_LR
    assert best[METRIC] == pytest.approx(max(max(r[METRIC] for r in rows[t]) for t in healthy), abs=1e-4)


def test_report_marks_the_diverged_trial(faulty_search):
    report = pytest.importorskip("tuner.report")
    import csv

    run = faulty_search["run"]
    report.write_report(str(run))
    with open(run / "report" / "trials.csv", newline="") as f:
        table = {row["trial_id"]: row for row in csv.DictReader(f)}
    params = {t: json.loads((run / f"trial_{t}" / "params.json").read_text()) for t in _trial_dirs(run)}
    assert set(table) == set(params)
    for t, p in params.items():
        assert table[t]["status"] == ("diverged" if p["lr"] == HUGE_LR else "completed"), table[t]


def test_only_the_best_checkpoints_stay_on_disk(faulty_search):
    """Ray keeps the ``num_to_keep`` best checkpoints by val_psnr and never deletes the latest one
    (ray/train/_internal/checkpoint_manager.py, _CheckpointManager.register_checkpoint): at most
    keep_checkpoints + 1 folders per trial, and exactly top-k by score plus the latest."""
    run, keep = faulty_search["run"], faulty_search["spec"].budget.keep_checkpoints
    total_reported = 0
    for t, rows in _trial_rows(run).items():
        on_disk = {p.name for p in (run / f"trial_{t}").glob("checkpoint_*")}
        ranked = sorted(range(len(rows)), key=lambda i: (rows[i][METRIC], i))  # ties: later ranks higher
        expected = {rows[i]["checkpoint_dir_name"] for i in ranked[-keep:]} | {rows[-1]["checkpoint_dir_name"]}
        assert on_disk == expected, (t, sorted(on_disk), sorted(expected))
        assert 1 <= len(on_disk) <= keep + 1
        total_reported += len(rows)
    assert total_reported > 3 * (keep + 1)  # a real bound: far more checkpoints were written than kept


def test_local_ray_serves_no_dashboard_beyond_localhost(faulty_search):
    """The dashboard's HTTP servers - the web UI / REST API of the head and the per-node agent's
    HTTP API - are off or bound to 127.0.0.1 (tuner.search._init_ray). Ray's own gRPC ports are
    not the dashboard: they listen on the node's address and need Ray's token (on by default)."""
    exposure = faulty_search["exposure"]
    info, commands, listening = exposure["address_info"], exposure["commands"], exposure["listening"]
    url = info.get("webui_url") or ""
    assert url == "" or url.startswith("127.0.0.1:"), url
    heads = [pid for pid, cmd in commands.items() if "dashboard/dashboard.py" in cmd]
    for pid in heads:
        assert "--host=127.0.0.1" in commands[pid], commands[pid]
        # The web UI / job API port (8265 and up) is loopback only. The head also runs a
        # read-only Prometheus exporter (ray/dashboard/head.py, DASHBOARD_METRIC_PORT) that
        # prometheus_client binds to all interfaces unless the node IP is localhost: known,
        # documented in the README, not a control surface.
        http = [(ip, port) for ip, port in listening[pid] if 8265 <= port < 8265 + 50]
        assert all(_loopback(ip) for ip, _ in http), http
    agent_http = info.get("dashboard_agent_listen_port") or -1
    if agent_http > 0:
        exposed = [(ip, port) for sockets in listening.values() for ip, port in sockets
                   if port == agent_http and not _loopback(ip)]
        # With ray[default] installed the per-node agent serves its HTTP API on the node's
        # address; it must refuse a request without Ray's auth token (on by default in Ray 2.60).
        assert not exposed or exposure["agent_job_api"] == 401, (exposed, exposure["agent_job_api"])
