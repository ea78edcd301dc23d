"""``ray up`` itself, over SSH, on this machine: Ray's ``local`` node provider, a head and a GPU worker.

What AWS would do with cluster.yaml, done here with Ray's ``local`` provider, which drives
machines it is given by IP over SSH: ``ray up`` copies cluster.yaml's file mounts with rsync, runs
its setup commands and starts Ray on the head (127.0.0.1), whose autoscaler then sets up the
worker (127.0.0.2) over SSH the same way and starts it with one (fake) GPU. Then ``ray exec``,
``ray job submit`` of a real search that asks for half a GPU per trial, and ``ray down``.

It all runs in namespaces of its own (tests/isolated.py): its own sshd on its own loopback, its
own process table (``ray stop`` in the head's start commands, and ``ray down``, stop only what is
in there) and a private ``/root`` and ``/tmp/ray`` (the SSH sessions' home: the bootstrap config,
keys and Ray's session files stay out of the real ones).

Needs ``sshd`` and ``rsync`` (Debian: openssh-server, rsync); run as root, the test installs them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from isolated import cannot_isolate, isolated_env, run_isolated

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
HEAD_IP, WORKER_IP = "127.0.0.1", "127.0.0.2"
TIMEOUT_S = 9 * 60
PACKAGES = {"sshd": "openssh-server", "rsync": "rsync", "ssh": "openssh-client", "ssh-keygen": "openssh-client"}


def _which(tool: str):
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")


@pytest.fixture(scope="module")
def ssh_tools():
    """sshd, ssh and rsync: installed with apt-get when missing and running as root, else skip."""
    missing = sorted({pkg for tool, pkg in PACKAGES.items() if not _which(tool)})
    if missing:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip(f"needs {', '.join(missing)} (Debian packages); install them as root")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                                                  *missing]):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                pytest.skip(f"could not install {', '.join(missing)}: {proc.stderr.strip()[-300:]}")
    reason = cannot_isolate()
    if reason:
        pytest.skip(reason)


def local_cluster_config(key: Path) -> dict:
    """cluster.yaml for Ray's ``local`` provider on this machine.

    Kept from cluster.yaml: the file mounts, rsync excludes, the checks of its setup commands and
    the head's start commands. Changed: the provider (fixed IPs; it takes no
    available_node_types, so the head's ``CPU: 0`` and the worker's GPU go on the ``ray start``
    lines), no uv/pip installs (no network here: the nodes use this machine's environment), and
    the worker's start without ``ray stop`` (on one machine it would stop the head too) and without
    a fixed object manager port (the head holds 8076).
    """
    real = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    head_start = [c.replace("ray start --head", f"ray start --head --num-cpus=0 --node-ip-address={HEAD_IP}")
                  for c in real["head_start_ray_commands"]]
    assert any("--autoscaling-config=~/ray_bootstrap_config.yaml" in c for c in head_start), head_start
    return {
        "cluster_name": "tuner-local",
        "provider": {"type": "local", "head_ip": HEAD_IP, "worker_ips": [WORKER_IP]},
        "auth": {"ssh_user": "root", "ssh_private_key": str(key)},
        "max_workers": 1, "upscaling_speed": real["upscaling_speed"], "idle_timeout_minutes": 5,
        "file_mounts": {k: str(ROOT / v) for k, v in real["file_mounts"].items()},
        "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": real["rsync_exclude"], "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [c for c in real["setup_commands"] if c.startswith("tuner ")]
        + ["test -f ~/tuner/pyproject.toml && test -f ~/tuner/search_spaces/tiny.yaml"],
        "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": head_start,
        "worker_start_ray_commands": [f"ray start --address=$RAY_HEAD_IP:6379 --num-cpus=1 --num-gpus=1 "
                                      f"--node-ip-address={WORKER_IP}"],
    }


SSHD_CONFIG = """
ListenAddress {head}
ListenAddress {worker}
Port 22
HostKey {tmp}/ssh_host_key
PidFile {tmp}/sshd.pid
AuthorizedKeysFile /root/.ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
UsePAM no
StrictModes no
"""

# What the SSH sessions run first (Ray's command runner sources ~/.bashrc): this machine's Python
# environment in place of the nodes' ~/venv, and Ray's temp dir kept short and private.
BASHRC = """
export PATH={bin}:$PATH
export PYTHONPATH={pythonpath}
export RAY_TMPDIR={ray_tmp} RAY_USAGE_STATS_ENABLED=0
"""

SCRIPT = r"""
ip link set lo up
set -u
T="{tmp}"
# A private /root (the SSH sessions' home) that still shows this machine's Python environment.
{bind_venv}
mount --rbind "$T/home" /root
mkdir -p /tmp/ray "$T/ray-default" && mount --bind "$T/ray-default" /tmp/ray
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N "" -f "$T/ssh_host_key" || exit 10
ssh-keygen -q -t ed25519 -N "" -f /root/.ssh/id_ed25519 || exit 11
cp /root/.ssh/id_ed25519.pub /root/.ssh/authorized_keys
/usr/sbin/sshd -f "$T/sshd_config" -E "$T/sshd.log" || exit 12
export HOME=/root RAY_UP_enable_autoscaler_v2=0   # the worker comes up only with autoscaler v1
source /root/.bashrc
cd "$T"
step() {{ echo "== $1 $(date +%s.%N)" >> "$T/steps.log"; }}
step up
ray up -y --no-config-cache cluster.yaml > up.log 2>&1 || exit 20
step up-done
python probe.py > nodes.json 2> probe.log || exit 21   # waits for the worker
step worker-up
ray exec cluster.yaml 'tuner --help' > exec.log 2>&1 || exit 22
step submit
ray job submit --address http://127.0.0.1:8265 -- tuner tune /root/tuner/search_spaces/tiny.yaml \
    --address auto --gpus-per-trial 0.5 --storage "$T/shared" --name up --num-samples 2 --max-epochs 2 \
    --no-report > job.log 2>&1
echo $? > job.rc
step down
ray down -y cluster.yaml > down.log 2>&1 || exit 23
step down-done
sleep 2
pgrep -c -f 'raylet|gcs_server' > left.txt
exit 0
"""

PROBE = r"""
import json, time
import ray

ray.init("auto", logging_level="ERROR", log_to_driver=False)
start = time.monotonic()
while time.monotonic() - start < 240:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if any(n["Resources"].get("GPU", 0) >= 1 for n in nodes):
        break
    time.sleep(1)
print(json.dumps([{"ip": n["NodeManagerAddress"], "cpu": n["Resources"].get("CPU", 0),
                   "gpu": n["Resources"].get("GPU", 0), "head": "node:__internal_head__" in n["Resources"]}
                  for n in nodes]))
"""


def test_ray_up_job_submit_ray_down_over_ssh(ssh_tools, tmp_path):
    tmp = Path(tempfile.mkdtemp(prefix="rup", dir="/tmp"))  # short: Unix socket paths under it
    try:
        _run(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(tmp: Path) -> None:
    home = tmp / "home"
    (home / ".ssh").mkdir(parents=True)
    real_home = Path.home().resolve()
    # The private /root hides what was under the real one: bind this Python (its venv and the
    # interpreter the venv links to, e.g. pyenv's) and this checkout (an editable install) back in.
    binds = []
    for path in sorted({Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), ROOT.resolve()}):
        if path.is_relative_to(real_home):
            inner = home / path.relative_to(real_home)
            inner.mkdir(parents=True, exist_ok=True)
            binds.append(f'mount --bind "{path}" "{inner}"')
    (home / ".bashrc").write_text(BASHRC.format(
        bin=Path(sys.executable).parent, pythonpath=os.environ.get("PYTHONPATH", ""), ray_tmp=tmp / "r"))
    (home / ".profile").write_text("source ~/.bashrc\n")
    (tmp / "sshd_config").write_text(SSHD_CONFIG.format(head=HEAD_IP, worker=WORKER_IP, tmp=tmp))
    (tmp / "cluster.yaml").write_text(yaml.safe_dump(local_cluster_config(Path("/root/.ssh/id_ed25519"))))
    (tmp / "probe.py").write_text(PROBE)
    script = tmp / "run.sh"
    script.write_text(SCRIPT.format(tmp=tmp, bind_venv="\n".join(binds)))

    start = time.monotonic()
    rc = run_isolated(script, isolated_env(home), TIMEOUT_S, tmp / "run.log")
    took = time.monotonic() - start

    def log(name: str, n: int = 4000) -> str:
        path = tmp / name
        return f"--- {name}:\n" + (path.read_text()[-n:] if path.exists() else "(none)")

    assert rc == 0, f"rc {rc} after {took:.0f} s\n" + "\n".join(
        log(n) for n in ("run.log", "steps.log", "up.log", "probe.log", "exec.log", "sshd.log"))
    steps = {}
    for line in (tmp / "steps.log").read_text().splitlines():
        _, name, t = line.split()
        steps[name] = float(t)

    nodes = json.loads((tmp / "nodes.json").read_text())
    head = [n for n in nodes if n["head"]]
    workers = [n for n in nodes if not n["head"]]
    assert len(head) == 1 and head[0]["cpu"] == 0, nodes  # cluster.yaml's head runs no trial
    assert [(w["ip"], w["gpu"]) for w in workers] == [(WORKER_IP, 1)], nodes  # set up over SSH by the head
    assert "usage: tuner" in (tmp / "exec.log").read_text(), log("exec.log")
    assert (tmp / "job.rc").read_text().strip() == "0", log("job.log", 8000)
    job = (tmp / "job.log").read_text()
    assert "succeeded" in job.lower() and "best model:" in job, job[-4000:]
    best = tmp / "shared" / "up" / "best"
    assert all((best / f).is_file() for f in ("model.pt", "config.json", "metrics.json")), list(best.glob("*"))
    rows = [json.loads(line) for f in (tmp / "shared" / "up").glob("trial_*/result.json")
            for line in f.read_text().splitlines() if line.strip()]
    assert rows and {r["device"] for r in rows} == {"cpu"}  # the GPU Ray counts is not a CUDA device here
    assert (tmp / "left.txt").read_text().strip() == "0", "ray down left Ray processes running"
    print(f"ray up {steps['up-done'] - steps['up']:.0f} s, worker up {steps['worker-up'] - steps['up-done']:.0f} s "
          f"later, job {steps['down'] - steps['submit']:.0f} s, ray down {steps['down-done'] - steps['down']:.0f} s; "
          f"whole test {took:.0f} s")
