"""The cluster workflow on one machine: a real Ray head, a real job submitted through Ray's Jobs API.

``ray up`` needs a cloud, but what follows it does not: this starts a head the way
cluster.yaml's head_start_ray_commands do (dashboard on 127.0.0.1), submits ``tuner tune`` with
``ray job submit --working-dir``, as docs/cluster.md does, and waits for the search to export
its best model. The head gets its own ports and temp dir, and teardown stops only the processes
it started (never ``ray stop``, which would stop every Ray on the machine).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("aiohttp", reason="ray job submit needs the Ray dashboard: pip install 'ray[default]'")

ROOT = Path(__file__).resolve().parents[1]
JOB_TIMEOUT_S = 8 * 60
HEAD_TIMEOUT_S = 120
EXCLUDES = [".git", "data", "runs", ".venv", "*.pt", "__pycache__", "*.egg-info"]  # never uploaded


def ray_cli() -> list[str]:
    """The ``ray`` command of the Python running the tests."""
    script = Path(sys.executable).parent / "ray"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ray.scripts.scripts"]


def free_ports(n: int) -> list[int]:
    """n distinct ports that are free right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _session_pids(sid: int) -> list[int]:
    """Processes in session ``sid`` (Linux /proc); Ray's workers leave the process group, not the session."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid:  # after "pid (comm)": state ppid pgrp session
            pids.append(int(stat.parent.name))
    return pids


class LocalHead:
    """A Ray head started with ``ray start --head --block`` in a session of its own.

    Args:
        tmp: a short folder for Ray's sessions (Unix socket paths must stay under ~100 chars).
    """

    def __init__(self, tmp: Path):
        self.tmp = tmp
        gcs, self.dashboard_port, *agent = free_ports(7)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.token = secrets.token_hex(32)
        self.env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
        self.env.update(
            RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,  # Ray 2.60's default for a new head
            RAY_USAGE_STATS_ENABLED="0",
            # A private HOME: `ray start` would otherwise leave ~/.ray/auth_token in the user's home,
            # which turns on token auth (and its warning) for every later Ray on the machine.
            HOME=str(tmp / "home"),
            # The job's `python` must be this interpreter, whatever PATH the tests ran with.
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        (tmp / "home").mkdir(exist_ok=True)
        self.log = open(tmp / "ray-start.log", "w")
        self.proc = subprocess.Popen(
            [*ray_cli(), "start", "--head", "--block", "--num-cpus=2", "--num-gpus=0",
             "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--temp-dir={tmp / 'ray'}",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
             f"--dashboard-agent-listen-port={agent[0]}", f"--dashboard-agent-grpc-port={agent[1]}",
             f"--metrics-export-port={agent[2]}", f"--runtime-env-agent-port={agent[3]}",
             f"--ray-client-server-port={agent[4]}"],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self) -> float:
        """Block until the job API answers; returns the seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < HEAD_TIMEOUT_S:
            if self.proc.poll() is not None:
                pytest.fail(f"ray start exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.api("/api/version")
                return time.monotonic() - start
            except OSError:
                time.sleep(1)
        pytest.fail(f"the dashboard did not answer within {HEAD_TIMEOUT_S} s:\n{self.log_tail()}")

    def api(self, path: str) -> dict:
        """GET a Ray dashboard REST endpoint (Jobs API), authenticated with the head's token."""
        req = urllib.request.Request(self.address + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a ``ray`` CLI command against this head."""
        return subprocess.run([*ray_cli(), *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def log_tail(self, n: int = 4000) -> str:
        self.log.flush()
        return (self.tmp / "ray-start.log").read_text()[-n:]

    def stop(self) -> None:
        """SIGTERM ``ray start --block`` (it stops its children), then SIGKILL what is left of its session."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        if Path("/proc").is_dir():
            deadline = time.monotonic() + 10
            while (left := _session_pids(self.proc.pid)) and time.monotonic() < deadline:
                time.sleep(0.5)
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        else:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


@pytest.fixture
def head():
    tmp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp" if os.path.isdir("/tmp") else None))
    h = LocalHead(tmp)
    try:
        yield h
    finally:
        h.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_submitted_search_exports_its_best_model(head, tmp_path):
    ready_s = head.wait_ready()
    storage = tmp_path / "runs"
    job_id = f"tuner-{secrets.token_hex(4)}"
    submitted = time.monotonic()
    sub = head.ray(
        "job", "submit", "--address", head.address, "--working-dir", str(ROOT),
        "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--submission-id", job_id, "--no-wait",
        "--", "python", "-m", "tuner", "tune", "search_spaces/tiny.yaml",
        "--address", "auto", "--storage", str(storage), "--name", "job",
    )
    assert sub.returncode == 0, sub.stdout + sub.stderr

    status = None
    while time.monotonic() - submitted < JOB_TIMEOUT_S:
        status = head.api(f"/api/jobs/{job_id}")["status"]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(5)
    job_s = time.monotonic() - submitted
    logs = head.ray("job", "logs", "--address", head.address, job_id).stdout
    assert status == "SUCCEEDED", f"job {status} after {job_s:.0f} s; its log ends:\n{logs[-4000:]}"

    cli_status = head.ray("job", "status", "--address", head.address, job_id)
    assert f"job '{job_id}' succeeded" in cli_status.stdout.lower(), cli_status.stdout + cli_status.stderr
    best = storage / "job" / "best"
    for name in ("model.pt", "config.json", "metrics.json"):
        assert (best / name).is_file(), f"{name} missing from {best}"
    metrics = json.loads((best / "metrics.json").read_text())
    assert metrics["val_psnr"] > metrics["noisy_val_psnr"]  # the exported model denoises
    assert "best model:" in logs
    print(f"head ready in {ready_s:.1f} s; job {job_id} succeeded in {job_s:.1f} s")
