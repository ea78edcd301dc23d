"""Record a killed search for the contract tests (tests/test_contract.py): run it again after an
upgrade of Ray or Optuna, and commit the new folder if the tests then pass on it.

A tiny search (scikit-learn's digits, a width-4 model, 2 trials of 120 epochs, a checkpoint every
epoch, the best 2 kept) is SIGKILLed, driver and Ray at once, once Ray's snapshot
(``experiment_state-*.json``) shows the second trial running with two checkpoints. What is left is
what a user's interrupted run leaves: Ray's snapshot, the trial folders, the Optuna study
(``study.db``, SQLite) with that trial RUNNING. TensorBoard event files and ``progress.csv`` are
dropped (nothing reads them).

    python tests/recorded/record.py        # writes tests/recorded/killed/ (about 500 KB)
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
OUT = HERE / "killed"
SPEC = {
    "name": "killed",
    "seed": 0,
    "dataset": {"name": "digits"},
    "eval_noise": {"kind": "gaussian", "level": 0.3},
    "budget": {"num_samples": 2, "max_epochs": 120, "grace_period": 120, "max_concurrent": 1,
               "keep_checkpoints": 2, "checkpoint_every_s": 0},
    "resources": {"cpus_per_trial": 1},
    "fixed": {"width": 4, "depth": 1, "latent_dim": 4, "batch_size": 256},
    "search": {"lr": {"loguniform": [1.0e-3, 1.0e-2]}},
}


def snapshot(run: Path) -> dict:
    states = sorted(run.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        return json.loads(states[-1].read_text())
    except json.JSONDecodeError:  # being written
        return {}


def second_trial_checkpointed(run: Path) -> bool:
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    entries = snapshot(run).get("trial_data", [])
    if len(entries) < 2 or json.loads(entries[1][0])["status"] != "RUNNING":
        return False
    manager = _TrainingRunMetadata.from_json_state(entries[1][1]).checkpoint_manager
    if manager is None or manager.latest_checkpoint_result is None or len(manager.best_checkpoint_results) < 2:
        return False
    trial = json.loads(entries[1][0])["trial_id"]
    return len(list((run / f"trial_{trial}").glob("checkpoint_*"))) >= 2


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="rec-", dir="/tmp"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="rr-", dir="/tmp"))
    spec = work / "killed.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    storage = work / "runs"
    run = storage / "killed"
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    with open(work / "log.txt", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tuner", "tune", str(spec), "--storage", str(storage),
                                 "--no-report"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not second_trial_checkpointed(run):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the search ended before its second trial was checkpointed: {work / 'log.txt'}")
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(2)  # trial workers exit on their own once their raylet is gone
    shutil.rmtree(OUT, ignore_errors=True)
    shutil.copytree(run, OUT)
    for path in sorted(OUT.rglob("*")):
        if path.name.startswith("events.out.tfevents") or path.name == "progress.csv":
            path.unlink()
    import sqlite3  # the kill left the study's write-ahead log: fold it in (as SQLite's next open would)

    with sqlite3.connect(OUT / "study.db") as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("PRAGMA journal_mode=DELETE")
    for name in ("study.db-wal", "study.db-shm"):
        (OUT / name).unlink(missing_ok=True)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"recorded {OUT} ({size / 1e3:.0f} KB)")


if __name__ == "__main__":
    main()
