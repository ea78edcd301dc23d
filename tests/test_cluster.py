"""A real multi-node Ray cluster on one machine: a head and two worker nodes, shared storage."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import tuner
from tuner.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # this test drives its own cluster, not the session's local Ray
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head schedules, workers train
    for _ in range(2):
        c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.mark.slow
def test_search_spreads_over_two_worker_nodes(cluster, tmp_path):
    """tiny.yaml against a 3-node cluster: trials land on both workers, best/ loads."""
    spec = load_spec(ROOT / "search_spaces" / "tiny.yaml").with_overrides(name="multi", num_samples=4)
    storage = tmp_path / "shared"  # one filesystem path every node writes to
    result = tuner.tune(spec, storage=str(storage), address=cluster.address, report=False, verbose=0)
    nodes = {r.metrics["node_id"] for r in result.results}
    workers = {n.node_id for n in cluster.worker_nodes}
    assert len(nodes) >= 2 and nodes <= workers, (nodes, workers)
    assert len(result.results) == 4
    model = tuner.load_model(result.best_dir)
    assert sum(p.numel() for p in model.parameters()) > 0
    metrics = json.loads((Path(result.best_dir) / "metrics.json").read_text())
    assert metrics["val_psnr"] > metrics["noisy_val_psnr"]
