"""Can the Ray cluster ever run one trial? Checked before the search starts.

Ray queues a trial whose resources no node has and waits for the autoscaler to add one; when no
node type the autoscaler knows could fit it either, the search waits forever (the autoscaler
only logs "No available node types can fulfill resource request"). :func:`check_trial_fits`
compares what a trial asks with the live nodes and with the autoscaler's node types, and turns
the hopeless case into a :class:`CapacityError` before any trial is queued.

Where the node types come from (Ray 2.60):
- the cluster config the GCS holds (``ray._private.state.state.get_cluster_config()``), when
  the autoscaler has reported one;
- otherwise ``~/ray_bootstrap_config.yaml``: ``ray up`` writes the cluster file there on the
  head and starts the autoscaler with it, and Ray Tune takes the same file as the sign of an
  autoscaling cluster (``ray/tune/execution/cluster_info.py``). A driver on the head (``ray job
  submit ... --address auto``) reads it.
A local Ray (no ``--address``) has no autoscaler: its one node is all there is.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml


class CapacityError(Exception):
    """No node of the cluster, nor any node type its autoscaler can add, can run one trial; the
    message is one line for the user. (Defined here, where it is raised: ``tuner.search`` imports
    this module, never the other way round.)"""


log = logging.getLogger(__name__)

BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # the autoscaler config `ray up` leaves on the head
RESOURCES = ("CPU", "GPU")  # what a trial asks for (ResourcesSpec)


@dataclass(frozen=True)
class NodeShape:
    """A live node or an autoscaler node type: its name and total resources."""

    name: str
    resources: dict[str, float]

    def fits(self, need: dict[str, float]) -> bool:
        return all(self.resources.get(k, 0.0) >= v - 1e-9 for k, v in need.items())

    def describe(self) -> str:
        return f"{self.name} ({_format(self.resources)})"


def check_trial_fits(cpus: float, gpus: float, *, joined: bool) -> None:
    """Raise :class:`CapacityError` when no node, now or added later, can run a trial.

    Args:
        cpus: ``cpus_per_trial``.
        gpus: ``gpus_per_trial``.
        joined: True when the search joined a cluster (``--address``), False for a local Ray.
    """
    import ray

    need = {"CPU": cpus, "GPU": gpus}
    need = {k: v for k, v in need.items() if v > 0}
    live = [NodeShape(f"node {n['NodeManagerAddress']} ({n['NodeID'][:8]})", n["Resources"])
            for n in ray.nodes() if n["Alive"]]
    if any(node.fits(need) for node in live):
        return
    types = autoscaler_node_types() if joined else []
    if types is None:  # an autoscaler whose node types are not known (e.g. the local provider)
        log.warning("no live node can run a trial (%s) and the autoscaler's node types are unknown; "
                    "the trials wait until a node that fits joins", _format(need))
        return
    fitting = [t for t in types if t.fits(need)]
    if fitting:
        log.info("no live node can run a trial (%s) yet; the autoscaler adds %s for them",
                 _format(need), " or ".join(t.describe() for t in fitting))
        return
    raise _infeasible(need, live, types, joined)


def largest_node_cpus() -> float:
    """The most CPUs one live node of the Ray cluster has (0 with none): where one trial can be given
    more than ``cpus_per_trial`` (:func:`tuner.search.solo_resources`)."""
    import ray

    return max((float(n["Resources"].get("CPU", 0.0)) for n in ray.nodes() if n["Alive"]), default=0.0)


def autoscaler_node_types() -> Optional[list[NodeShape]]:
    """Worker node types the cluster's autoscaler may add: [] if none, None if it cannot tell."""
    from ray._private import state

    try:
        config = state.state.get_cluster_config()  # a private API: its absence is "not reported"
    except Exception:  # noqa: BLE001
        config = None
    if config is not None and config.node_group_configs:
        return [NodeShape(g.name, {k: float(v) for k, v in g.resources.items()})
                for g in config.node_group_configs if g.max_count != 0]
    path = Path(BOOTSTRAP_CONFIG).expanduser()
    if not path.is_file():
        return []  # no autoscaler config: nodes join only by hand (`ray start --address`)
    cfg = yaml.safe_load(path.read_text()) or {}
    if cfg.get("max_workers", 1) == 0:
        return []
    types = []
    for name, t in (cfg.get("available_node_types") or {}).items():
        if name == cfg.get("head_node_type") and not t.get("max_workers"):
            continue  # the head is live already (the `local` provider's one type is head and worker)
        if t.get("max_workers", 1) == 0:
            continue
        if not t.get("resources"):
            return None  # resources detected when the node starts (the `local` provider): unknown
        types.append(NodeShape(name, {k: float(v) for k, v in t["resources"].items()}))
    return types


def _infeasible(need: dict[str, float], live: list[NodeShape], types: list[NodeShape], joined: bool):
    shapes = live + types
    largest = {k: max((s.resources.get(k, 0.0) for s in shapes), default=0.0) for k in RESOURCES}
    where = "the largest node or node type has" if types else (
        "the largest node of the cluster has" if joined else "this machine has")
    if need.get("GPU", 0) > largest["GPU"]:
        if largest["GPU"] == 0:
            fix = ("no GPU on this machine: drop --gpus-per-trial or join a cluster with GPU workers "
                   "(--address)" if not joined else
                   "no node or node type of this cluster has a GPU: drop --gpus-per-trial or add GPU workers")
        else:
            fix = f"lower --gpus-per-trial to at most {largest['GPU']:g}"
    else:
        fix = f"lower --cpus-per-trial to at most {largest['CPU']:g}"
    return CapacityError(f"a trial asks for {_format(need)} but {where} {_format(largest)}, "
                       f"so no trial could ever start; {fix}")


def _format(resources: dict[str, float]) -> str:
    return ", ".join(f"{resources.get(k, 0.0):g} {k}" for k in RESOURCES)
