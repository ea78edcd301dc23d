"""Failure and recovery, with real Ray, real processes and real signals.

- A driver killed with SIGKILL (its whole process group) resumes with ``--resume``: finished
  trials are not rerun, running ones continue from their last checkpoint, and the Optuna
  searcher continues its own study (it does not start over or fall back to random search).
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
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from tuner.cli import main
from tuner.search import run_search
from tuner.spec import load_spec
from tuner.storage import STUDY_FILE
from tuner.train import DIVERGED_PSNR, METRIC

RESUME_SPEC = """\
# Trials of ~10 epochs of ~1 s each; ASHA's grace period is the whole budget, so no trial is
# stopped early and every trial's epoch sequence is predictable. keep_checkpoints 1: Ray saves its
# experiment state every num_to_keep trial checkpoints, so it records each epoch's checkpoint.
name: resume
seed: 0
dataset: {name: digits}
eval_noise: {kind: gaussian, level: 0.3}
budget: {num_samples: 4, max_epochs: 10, grace_period: 10, max_concurrent: 2, keep_checkpoints: 1}
resources: {cpus_per_trial: 1}
fixed: {width: 16, depth: 2, batch_size: 64, skip: true}
search:
  lr: {loguniform: [1.0e-3, 1.0e-2]}
  latent_dim: {choice: [8, 16]}
"""

# sgd with lr 100 on a net without batch norm reaches a NaN loss in its first epoch on digits
# (checked: tuner.train.fit reports diverged=1, val_psnr 0.0); 0.05 and 0.2 train fine. With seed
# 2 the TPE sampler's random start-up draws lr 100 for one of the four trials.
FAULTS_SPEC = """\
name: faults
seed: 2
dataset: {name: digits}
eval_noise: {kind: gaussian, level: 0.3}
budget: {num_samples: 4, max_epochs: 8, grace_period: 8, max_concurrent: 2, keep_checkpoints: 2,
         max_failures: 2}
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


@pytest.fixture
def ray_tmp():
    """A private Ray temp dir (short: Ray's unix socket paths must fit in 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="tr-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- 1. resume after the driver is killed

@pytest.mark.slow
@pytest.mark.timeout(960)  # two searches; the waits inside bound each phase
def test_resume_after_driver_is_killed(tmp_path, ray_tmp):
    spec_path = tmp_path / "resume.yaml"
    spec_path.write_text(RESUME_SPEC)
    spec = load_spec(spec_path)
    n, max_epochs, keep = spec.budget.num_samples, spec.budget.max_epochs, spec.budget.keep_checkpoints
    storage = tmp_path / "runs"
    run = storage / "resume"
    cmd = [sys.executable, "-m", "tuner", "-q", "tune", str(spec_path), "--name", "resume",
           "--storage", str(storage), "--no-report"]
    env = _ray_env(ray_tmp)

    def ready_to_kill() -> Optional[dict]:
        """A finished trial, and another running with a checkpoint of epoch >= 2 that Ray recorded."""
        state = _experiment_state(run)
        if not state:
            return None
        done = [t for t, s in state.items() if s["status"] == "TERMINATED"]
        mid = [t for t, s in state.items() if s["status"] == "RUNNING"
               and 2 <= s["last_result"].get("epoch", 0) <= max_epochs - 2]
        return state if done and mid else None

    log1 = tmp_path / "first.log"
    ours: set[int] = set()
    with open(log1, "w") as log:
        driver = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_until(ready_to_kill, 420, "a finished trial and a running one with checkpoints", driver, log1)
        procs = _procs()
        ours = _descendants(driver.pid, procs) | {driver.pid}  # the driver, its local Ray, the trial workers
        commands = " ".join(procs[p][3] for p in ours if p in procs)
        gcs = re.search(r"--gcs-address=(\S+)", commands)
        assert gcs and "raylet" in commands and "ray::ImplicitFunc" in commands, commands[:2000]
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its Ray, at once: no clean shutdown
        driver.wait(timeout=60)
        # Trial workers run in their own process groups; without their raylet they exit on their own.
        _wait_until(lambda: not _alive(ours), 60, "the killed search's Ray processes to exit")
    finally:
        _kill_group(driver.pid)
        for pid in _alive(ours):
            os.kill(pid, signal.SIGKILL)

    state = _experiment_state(run)  # what Ray recorded before dying: what it resumes from
    finished = {t for t, s in state.items() if s["status"] == "TERMINATED"}
    # Unfinished trials, with the last epoch Ray recorded for them (0: none, they start over).
    running = {t: s["last_result"].get("epoch", 0) for t, s in state.items() if s["status"] != "TERMINATED"}
    assert finished and running and max(running.values()) >= 2, state
    trials = _trial_dirs(run)
    before = {t: (trials[t] / "result.json").read_bytes() for t in trials if (trials[t] / "result.json").exists()}
    progress_before = {t: (trials[t] / "progress.csv").read_bytes() for t in finished}
    rows_before = {t: _rows(trials[t] / "result.json") for t in running}
    searcher_files_before = sorted(run.glob("searcher-state-*.pkl"))

    # A stale `ray start` record pointing at the dead Ray: a local search must not try to join it.
    (ray_tmp / "ray").mkdir(exist_ok=True)
    (ray_tmp / "ray" / "ray_current_cluster").write_text(gcs.group(1))

    log2 = tmp_path / "resume.log"
    with open(log2, "w") as log:
        resumed = subprocess.Popen(cmd + ["--resume"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    try:
        resumed.wait(timeout=480)
    finally:
        _kill_group(resumed.pid)
    out = log2.read_text()
    assert resumed.returncode == 0, out[-4000:]
    assert "Connecting to existing Ray cluster" not in out  # it started its own Ray
    assert "best val_psnr" in out and (run / "best" / "model.pt").is_file()

    # Exactly num_samples trials, all finished; none was created twice.
    final = _experiment_state(run)
    # A trial the killed driver had just started, before Ray recorded it anywhere, leaves a folder
    # with at most its first checkpoint and no result: Ray never knew it, so the resumed searcher
    # suggests another in its place. That first epoch is the only work lost.
    orphans = set(_trial_dirs(run)) - set(final)
    for t in orphans:
        folder = _trial_dirs(run)[t]
        assert not (folder / "result.json").exists() and len(list(folder.glob("checkpoint_*"))) <= 1, t
    assert len(final) == n and len(_trial_dirs(run)) - len(orphans) == n, final
    assert all(s["status"] == "TERMINATED" for s in final.values()), final
    assert set(before) <= set(final)

    # Finished trials were not rerun: their progress rows are byte for byte what they were.
    for t in finished:
        assert (trials[t] / "result.json").read_bytes() == before[t], f"finished trial {t} was rerun"
        assert (trials[t] / "progress.csv").read_bytes() == progress_before[t]

    # Running trials continued from the checkpoint Ray had recorded, not from epoch 1.
    for t, recorded in running.items():
        rows = _rows(_trial_dirs(run)[t] / "result.json")
        old = rows_before[t]
        assert rows[:len(old)] == old  # nothing rewritten
        new = rows[len(old):]
        epochs = [r["epoch"] for r in new]
        assert epochs == list(range(recorded + 1, max_epochs + 1)), (t, [r["epoch"] for r in old], epochs)
        # Redone: at most the epochs Ray had not yet recorded (it saves its state at least every
        # keep_checkpoints checkpoints, ray.tune.execution.experiment_state) plus the one in flight.
        assert len(old) - recorded <= keep, (len(old), recorded)
        if new:  # (a trial whose last epoch was recorded just before the kill has nothing left to do)
            assert new[0]["iterations_since_restore"] == 1 and new[0]["training_iteration"] == recorded + 1
            assert not old or new[0]["pid"] != old[-1]["pid"]
    # Trials the searcher suggested after the resume ran in full, once.
    for t in set(final) - set(state):
        assert [r["epoch"] for r in _rows(_trial_dirs(run)[t] / "result.json")] == list(range(1, max_epochs + 1))

    _check_searcher_restored(run, n, max_epochs, searcher_files_before, finished | set(running))


def _check_searcher_restored(run: Path, n: int, max_epochs: int, files_before: list[Path], pre_kill: set[str]) -> None:
    """The resumed search's Optuna study is the pre-kill study, continued, with its TPE sampler."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    files_after = sorted(run.glob("searcher-state-*.pkl"))
    assert len(files_after) == len(files_before) + 1  # one per session (Searcher.CKPT_FILE_TMPL)

    def restore(path: Optional[Path] = None) -> OptunaSearch:
        searcher = OptunaSearch()
        if path is None:
            searcher.restore_from_dir(str(run))  # what Tuner.restore does: the newest file
        else:
            searcher.restore(str(path))
        return searcher

    before, after = restore(files_before[-1]), restore()
    study = after._ot_study
    assert isinstance(study.sampler, optuna.samplers.TPESampler)
    assert len(study.trials) == n
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials), study.trials
    recorded = {t for t, d in _trial_dirs(run).items() if (d / "result.json").exists()}
    assert set(after._ot_trials) == recorded  # Tune trial id -> Optuna trial, every trial Ray recorded
    assert pre_kill <= set(before._ot_trials) <= set(after._ot_trials)
    for trial_id, ot_trial in after._ot_trials.items():
        params = json.loads((run / f"trial_{trial_id}" / "params.json").read_text())
        assert ot_trial.params == {k: params[k] for k in ot_trial.params}  # Optuna suggested what ran
    for trial_id in before._ot_trials:  # the same Optuna trials, not re-asked
        assert after._ot_trials[trial_id].number == before._ot_trials[trial_id].number
        assert after._ot_trials[trial_id].params == before._ot_trials[trial_id].params
    # Every trial ran to the end, told to the study as COMPLETE with its best val_psnr (the TPE's
    # observations) and every epoch as an intermediate value.
    values = sorted(t.value for t in study.trials)
    best = sorted(max(r[METRIC] for r in _rows(run / f"trial_{t}" / "result.json")) for t in after._ot_trials)
    assert values == pytest.approx(best)
    # The database the driver wrote, read as a notebook would: exactly num_samples finished trials,
    # none duplicated by the resume, each with its full curve.
    stored = optuna.load_study(study_name="resume", storage=f"sqlite:///{run / STUDY_FILE}")
    assert len(stored.trials) == n, [(t.number, t.state) for t in stored.trials]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in stored.trials)
    assert sorted(len(t.intermediate_values) for t in stored.trials) == [max_epochs] * n


def test_resume_of_an_unknown_run_is_one_line(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(RESUME_SPEC)
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


def test_killed_trial_worker_restarts_from_its_checkpoint(faulty_search):
    run, spec, victim = faulty_search["run"], faulty_search["spec"], faulty_search["victim"]
    assert victim, "no trial was seen mid-run, so no worker was killed"
    rows = _trial_rows(run)[victim["trial_id"]]
    epochs = [r["epoch"] for r in rows]
    # Every epoch reported exactly once: the restart began right after the last checkpoint
    # (each epoch is checkpointed), so no finished epoch was lost or redone.
    assert epochs == list(range(1, spec.budget.max_epochs + 1)), epochs
    pids = [r["pid"] for r in rows]
    cut = pids.index(next(p for p in pids if p != victim["pid"]))  # first row from the new worker
    assert set(pids[:cut]) == {victim["pid"]} and victim["pid"] not in pids[cut:]
    assert cut in (victim["epoch"], victim["epoch"] + 1)  # it may have reported one more epoch before dying
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
    for t in healthy:  # unaffected: every epoch ran, none diverged
        assert [r["epoch"] for r in rows[t]] == list(range(1, spec.budget.max_epochs + 1))
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
