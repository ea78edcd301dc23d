"""A search whose trials no node can ever run ends at once with one line, instead of waiting forever."""
from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tuner.cli import main
from tuner.cluster import CapacityError, autoscaler_node_types, check_trial_fits

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "search_spaces" / "tiny.yaml"


def test_gpu_trial_on_a_machine_without_gpu_exits_2_quickly(tmp_path):
    """The issue's command: it used to hang ("No available node types can fulfill ...")."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tuner", "tune", str(TINY), "--gpus-per-trial", "0.5",
                           "--storage", str(tmp_path)], capture_output=True, text=True, timeout=120)
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tuner: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "0.5 GPU" in errors[0] and "0 GPU" in errors[0], errors[0]
    assert "drop --gpus-per-trial or join a cluster with GPU workers" in errors[0]
    assert not list(tmp_path.glob("tiny/trial_*"))  # no trial was queued
    print(f"exit 2 after {took:.1f} s")


def test_more_cpus_than_the_machine_has_exits_2(tmp_path, capsys):
    import os

    too_many = str((os.cpu_count() or 2) + 1)
    assert main(["tune", str(TINY), "--cpus-per-trial", too_many, "--storage", str(tmp_path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tuner: error:")]
    assert len(errors) == 1 and f"asks for {too_many} CPU" in errors[0], errors
    assert "lower --cpus-per-trial to at most" in errors[0]


@pytest.fixture(scope="module")
def local_ray():
    """A connected Ray (the check reads its live nodes); the one an earlier test started will do."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=1, num_gpus=0, include_dashboard=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture
def head_of_cluster_yaml(local_ray, tmp_path, monkeypatch):
    """HOME with ~/ray_bootstrap_config.yaml = cluster.yaml, as `ray up` leaves it on the head."""
    (tmp_path / "ray_bootstrap_config.yaml").write_text((ROOT / "cluster.yaml").read_text())
    monkeypatch.setenv("HOME", str(tmp_path))


def test_node_types_of_cluster_yaml(head_of_cluster_yaml):
    types = {t.name: t.resources for t in autoscaler_node_types()}
    assert types == {"gpu_worker": {"CPU": 4.0, "GPU": 1.0}}  # the head is not added by the autoscaler


def test_gpu_trial_that_fits_only_a_node_type_goes_on(head_of_cluster_yaml, caplog):
    with caplog.at_level(logging.INFO, logger="tuner.cluster"):
        check_trial_fits(1, 0.25, joined=True)  # no GPU is live: the autoscaler adds gpu_worker
    assert "the autoscaler adds gpu_worker (4 CPU, 1 GPU)" in caplog.text


def test_trial_bigger_than_every_node_type_fails(head_of_cluster_yaml):
    with pytest.raises(CapacityError) as e:
        check_trial_fits(1, 2, joined=True)
    msg = str(e.value)
    assert "asks for 1 CPU, 2 GPU" in msg and "largest node or node type has" in msg and "1 GPU" in msg, msg
    assert "lower --gpus-per-trial to at most 1" in msg
    with pytest.raises(CapacityError, match="lower --cpus-per-trial to at most 4"):
        check_trial_fits(8, 0, joined=True)


def test_node_types_of_the_local_provider_are_unknown(tmp_path, monkeypatch):
    """`ray up` with provider `local` leaves node types without resources: no verdict, no error."""
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["available_node_types"] = {"local.cluster.node": {"resources": {}, "node_config": {},
                                                             "min_workers": 1, "max_workers": 1}}
    config["head_node_type"] = "local.cluster.node"  # ray/autoscaler/_private/local/config.py
    (tmp_path / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert autoscaler_node_types() is None


def test_cluster_does_not_import_the_search():
    """No import circle (issue 20): tuner.search imports tuner.cluster, never the other way round,
    not even lazily inside a function."""
    import ast
    import inspect

    import tuner.cluster

    tree = ast.parse(inspect.getsource(tuner.cluster))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "tuner.search" not in imported
