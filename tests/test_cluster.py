"""A real multi-node Ray cluster on one machine: a head and two worker nodes, shared storage."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

import tuner
from tuner.spec import load_spec

pytestmark = pytest.mark.own_ray  # it drives a multi-node cluster of its own

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


NODE_LOSS_SPEC = """
name: node-loss
dataset: {name: digits}
eval_noise: {kind: gaussian, level: 0.3}
budget: {num_samples: 2, max_epochs: 20, grace_period: 20, max_concurrent: 2, max_failures: 3, checkpoint_every_s: 0}
fixed: {width: 16, depth: 2, skip: true, batch_size: 32}
search:
  lr: {loguniform: [1.0e-3, 5.0e-3]}
"""


def _rows(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class _NodeRemover(threading.Thread):
    """Removes the worker node a trial runs on once that trial has checkpointed 2 epochs."""

    def __init__(self, cluster, run_dir: Path):
        super().__init__(daemon=True)
        self.cluster, self.run_dir = cluster, run_dir
        self.removed: dict = {}
        self.done = threading.Event()

    def run(self) -> None:
        workers = {n.node_id: n for n in self.cluster.worker_nodes}
        while not self.done.wait(0.2):
            for trial in self.run_dir.glob("trial_*"):
                rows = _rows(trial)
                if len(rows) >= 2 and rows[-1]["node_id"] in workers:
                    node = rows[-1]["node_id"]
                    self.removed = {"trial": trial.name, "node_id": node, "epoch": rows[-1]["epoch"]}
                    self.cluster.remove_node(workers[node], allow_graceful=False)
                    return


@pytest.mark.slow
def test_trials_survive_losing_a_worker_node(cluster, tmp_path):
    """Kill a worker node mid-search: its trial restarts from its checkpoint on the other node."""
    path = tmp_path / "node_loss.yaml"
    path.write_text(NODE_LOSS_SPEC)
    spec = load_spec(path)
    storage = tmp_path / "shared"
    remover = _NodeRemover(cluster, storage / spec.name)
    remover.start()
    try:
        result = tuner.tune(spec, storage=str(storage), address=cluster.address, report=False, verbose=0)
    finally:
        remover.done.set()
    assert remover.removed, "no trial reached a worker node in time"
    assert len(result.results) == 2
    assert all(int(r.metrics["epoch"]) == 20 and not r.error for r in result.results)
    rows = _rows(storage / spec.name / remover.removed["trial"])
    epochs = [r["epoch"] for r in rows]
    lost = remover.removed["node_id"]
    after = [r for r in rows if r["node_id"] != lost]
    assert after, "the trial never ran again after its node was lost"
    assert after[0]["epoch"] > 1, f"restarted from scratch: {epochs}"  # resumed from a checkpoint
    assert epochs[-1] == 20 and sorted(set(epochs)) == list(range(1, 21)), epochs
