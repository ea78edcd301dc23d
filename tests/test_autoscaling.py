"""Ray's autoscaler adds GPU workers of cluster.yaml's node type for a real search, and removes them.

Ray's fake multi-node provider (``RAY_FAKE_CLUSTER=1``) launches each "instance" as Ray processes
on this machine, so the real autoscaler (monitor, resource demand scheduler, idle scale-down)
runs against node types read from ``cluster.yaml``: the head with its ``CPU: 0``, and the
``gpu_worker`` type scaled down to this machine (1 CPU and 1 GPU each, at most 2, none at start,
a 15-second idle timeout). The GPU is a number Ray counts, not a device: the trials find no
CUDA and train on the CPU.

Everything runs in namespaces of its own (tests/isolated.py): a private process table and
loopback (the head takes port 6379 there), HOME and temp dir, so nothing here can touch
another Ray on this machine, nor they it.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml

from isolated import cannot_isolate, isolated_env, run_isolated

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
IDLE_TIMEOUT_MIN = 0.25
WORKER = {"CPU": 1, "GPU": 1}  # cluster.yaml's gpu_worker (4 CPU, 1 GPU) scaled down to 2 cores
TIMEOUT_S = 9 * 60


def fake_cluster_config() -> dict:
    """cluster.yaml's node types for Ray's fake multi-node provider (Ray 2.60's wheel lacks the
    example.yaml that ``AutoscalingCluster`` would start from, so the whole config is here)."""
    real = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    head, worker = real["available_node_types"]["head"], real["available_node_types"]["gpu_worker"]
    assert set(worker["resources"]) == set(WORKER), "cluster.yaml's gpu_worker changed its resource kinds"
    empty = {k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands",
                             "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
                             "cluster_synced_files", "rsync_exclude", "rsync_filter")}
    return {
        "cluster_name": "fake-tuner", "max_workers": 2, "upscaling_speed": real["upscaling_speed"],
        "idle_timeout_minutes": IDLE_TIMEOUT_MIN,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "auth": {"ssh_user": "ubuntu"}, "docker": {}, "file_mounts": {}, "file_mounts_sync_continuously": False,
        # The fake provider tags its head "ray.head.default".
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": dict(head["resources"]), "node_config": {}, "max_workers": 0},
            "gpu_worker": {"resources": dict(WORKER), "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        **empty,
    }


PROBE = r"""
import json, sys, time
import ray

ray.init("auto", logging_level="ERROR", log_to_driver=False)
def nodes():
    return [{"id": n["NodeID"], "alive": n["Alive"], "head": "node:__internal_head__" in n["Resources"],
             "cpu": n["Resources"].get("CPU", 0), "gpu": n["Resources"].get("GPU", 0)} for n in ray.nodes()]
out = {"nodes": nodes()}
if sys.argv[1] == "after":  # wait for the idle workers to go
    start = time.monotonic()
    while any(n["alive"] and not n["head"] for n in nodes()) and time.monotonic() - start < 120:
        time.sleep(1)
    out.update(gone_after_s=time.monotonic() - start, final=nodes())
print(json.dumps(out))
"""

SCRIPT = """
ip link set lo up
set -u
cd "{tmp}"
start=$(date +%s.%N)
ray start --head --port=6379 --num-cpus=0 --node-ip-address=127.0.0.1 --include-dashboard=false \\
    --temp-dir="$RAY_TMPDIR" --autoscaling-config="$HOME/ray_bootstrap_config.yaml" > ray-start.log 2>&1 || exit 3
python probe.py before > before.json || exit 4
python -m tuner tune "{spec}" --address auto --gpus-per-trial 0.5 --storage "{tmp}/shared" --name fake \\
    --num-samples 3 --max-epochs 2 --no-report > tune.log 2>&1
echo $? > tune.rc
python probe.py after > after.json
"""


@pytest.fixture
def isolation():
    reason = cannot_isolate()
    if reason:
        pytest.skip(reason)


def test_autoscaler_adds_gpu_workers_for_the_search_and_removes_them(isolation, tmp_path):
    import tempfile

    home = tmp_path / "home"
    home.mkdir()
    # The config where `ray up` leaves it on a head: tuner reads the node types from it.
    (home / "ray_bootstrap_config.yaml").write_text(json.dumps(fake_cluster_config()))
    (tmp_path / "probe.py").write_text(PROBE)
    script = tmp_path / "run.sh"
    script.write_text(SCRIPT.format(tmp=tmp_path, spec=ROOT / "search_spaces" / "tiny.yaml"))
    ray_tmp = tempfile.mkdtemp(prefix="ras", dir="/tmp")  # short: Unix socket paths
    env = isolated_env(home, RAY_TMPDIR=ray_tmp, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    start = time.monotonic()
    try:
        rc = run_isolated(script, env, TIMEOUT_S, tmp_path / "run.log")
        monitor = "".join(p.read_text() for p in Path(ray_tmp).glob("session_*/logs/monitor.log"))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    took = time.monotonic() - start
    log = lambda name: (tmp_path / name).read_text()[-4000:] if (tmp_path / name).exists() else "(none)"  # noqa: E731
    assert rc == 0, f"rc {rc} after {took:.0f} s\n{log('run.log')}\n{log('ray-start.log')}\n{log('tune.log')}"
    assert log("tune.rc").strip() == "0", log("tune.log")

    before = json.loads(log("before.json"))["nodes"]
    assert [n for n in before if n["alive"]] == [n for n in before if n["head"]], before  # no worker at start
    head = next(n for n in before if n["head"])
    assert head["cpu"] == 0 and head["gpu"] == 0  # cluster.yaml's head: no trial fits on it

    tune_log = (tmp_path / "tune.log").read_text()
    assert "the autoscaler adds gpu_worker (1 CPU, 1 GPU)" in tune_log, tune_log
    rows = [json.loads(line) for f in (tmp_path / "shared" / "fake").glob("trial_*/result.json")
            for line in f.read_text().splitlines() if line.strip()]
    assert rows and len({r["trial_id"] for r in rows}) == 3
    used = {r["node_id"] for r in rows}
    after = json.loads(log("after.json"))
    workers = {n["id"]: n for n in after["nodes"] if not n["head"]}
    assert used <= set(workers) and head["id"] not in used, (used, workers)  # every trial on a worker
    assert all(workers[n]["gpu"] == 1 and workers[n]["cpu"] == 1 for n in used if workers[n]["alive"])
    assert {r["device"] for r in rows} == {"cpu"}  # a fake GPU: torch has no CUDA, the trial uses the CPU
    assert "PyTorch has no usable CUDA device" in tune_log

    best = tmp_path / "shared" / "fake" / "best"
    assert all((best / f).is_file() for f in ("model.pt", "config.json", "metrics.json")), list(best.glob("*"))

    assert not [n for n in after["final"] if n["alive"] and not n["head"]], after  # idle workers removed
    # The autoscaler's own account (ray/autoscaler/_private/monitor.py event summary):
    assert re.search(r"Adding \d node\(s\) of type gpu_worker", monitor), monitor[-3000:]
    assert re.search(r"Terminating the node with id \w+ and ip \w+\. \(idle\)", monitor), monitor[-3000:]
    print(f"{len(workers)} GPU worker(s) used by {len(used)} node(s) of trials; workers removed "
          f"{after['gone_after_s']:.0f} s after the search; whole test {took:.0f} s")
