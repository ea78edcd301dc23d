"""Run a shell script in Linux namespaces of its own: its own process table and its own loopback.

`ray stop`, `ray down` and ``AutoscalingCluster.start()/shutdown()`` kill every Ray process they
can see, by name. Inside ``unshare --pid --net`` they see only the processes the script started,
so the other Ray clusters and searches on this machine are safe; when the script's shell
(process 1 of the namespace) exits, the kernel ends whatever it left behind. ``--kill-child``
does the same when the test gives up on it (a timeout).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

UNSHARE = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--mount"]


def cannot_isolate() -> Optional[str]:
    """Why namespaces are not available here, or None when they are."""
    if not sys.platform.startswith("linux"):
        return "Linux namespaces only"
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (util-linux, iproute2)"
    probe = subprocess.run([*UNSHARE, "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create namespaces here (needs root): {probe.stderr.strip()[:200]}"
    return None


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment for the script: this Python's tools first on PATH, a private HOME (no
    ~/.ray/auth_token, so no token auth; no user's ~/ray_bootstrap_config.yaml), no outside Ray address."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra)
    return env


def run_isolated(script: Path, env: dict[str, str], timeout: float, log: Path) -> int:
    """Run ``bash script`` as process 1 of new PID, network and mount namespaces; returns its exit code.

    The script should start with ``ip link set lo up``: the new network namespace's loopback is down.
    """
    with open(log, "w") as out:
        try:
            return subprocess.run([*UNSHARE, "bash", str(script)], env=env, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return 124
