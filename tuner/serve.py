"""Serve an exported model over HTTP with Ray Serve: the last stage, after ``denoise``.

Endpoints of the application (one deployment, :class:`Denoiser`, with a FastAPI ingress):

- ``POST /denoise``: the body is one PNG/JPEG; the answer is the denoised PNG, same size, read and
  converted by the same code as ``tuner denoise`` (:func:`tuner.denoise.load_image`, ``to_pil``).
- ``GET /model``: ``config.json`` and ``metrics.json`` of the model folder, and this replica's
  counters (requests, batches, largest batch, infer requests and images, device).
- ``GET /healthz``: ``ok``.
- The Open Inference Protocol (KServe V2, Triton's HTTP API; :mod:`tuner.protocol` parses and
  answers it), for clients such as ``tritonclient.http``: ``GET /v2`` (server metadata),
  ``GET /v2/health/live`` and ``/v2/health/ready``, ``GET /v2/models/denoiser`` (names, datatypes,
  shapes, limits, device) and ``/v2/models/denoiser/ready``, ``POST /v2/models/denoiser/infer``
  (a batch ``[N, C, H, W]`` of ``UINT8`` or ``FP32`` in one tensor, JSON or binary), each also under
  ``/v2/models/denoiser/versions/1/``. Refusals there are ``{"error": "..."}``.

Requests to ``/denoise`` that arrive together are denoised together (``serve.batch``, up to
``max_batch_size``), grouped by image size inside the batch; an infer request is its own batch.
Images larger than 512x512 go through one overlapping tile at a time, as in ``tuner denoise``
(:func:`tuner.denoise.denoise`), and a replica runs one forward pass at a time, so its memory stays
bounded whatever the size of the images it is sent. Bad input to ``/denoise`` is refused with one
line of text: 400 for an empty body, a body that is not a PNG/JPEG or is truncated, or a size a
dense model does not take; 413 for a body over :data:`MAX_BODY_BYTES` (from ``Content-Length``
before reading, else while reading) or an image whose header claims more than
``tuner.data.MAX_IMAGE_PIXELS`` pixels (before any pixel is decoded). Wrong paths and methods get
FastAPI's own 404 / 405 (under ``/v2``, the protocol's 404).

The application is built by :func:`app_builder` from plain arguments, so Ray Serve's own tools run
it too::

    serve run tuner.serve:app_builder model_dir=runs/quickstart/best
    serve deploy serve.yaml      # import_path: tuner.serve:app_builder, args: {model_dir: ...}

``tuner serve`` runs it in a process of its own: :mod:`tuner.server`.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import struct
from typing import Any, Optional

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from tuner import protocol
from tuner.data import DatasetError, ImageTooLarge
from tuner.denoise import denoise, load_image, load_model, tile_size, to_pil
from tuner.protocol import ProtocolError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 2**20  # 16 MiB: a noisy 12-megapixel grayscale PNG fits; a bigger body is refused (413)
BODY_NAME = "request body"  # what error messages call the uploaded image
# A PNG of at most this many pixels is decoded, and its answer encoded, on the replica's event loop:
# a 28x28 digit takes ~0.05 ms each way, less than the hop to a worker thread and back
# (benchmarks/bench_serve.py); bigger images go to a thread, so requests keep arriving meanwhile.
SMALL_IMAGE_PIXELS = 128 * 128
class ServeArgs(BaseModel):
    """The application's arguments: ``tuner serve``'s flags, or ``args:`` of a Serve config file."""

    model_config = ConfigDict(extra="forbid")

    model_dir: str  # an exported model folder (local path or s3:// URI every node can read)
    replicas: int = Field(1, ge=1)  # copies of the model, each in its own Ray actor
    gpus_per_replica: float = Field(0.0, ge=0)  # fractions share a GPU, e.g. 0.25 packs four replicas
    max_batch_size: int = Field(16, ge=1, le=1024)  # most /denoise requests denoised in one forward pass
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=1)  # how long a /denoise batch waits to fill up
    max_infer_batch: int = Field(256, ge=1, le=65536)  # most images (N) in one infer request's tensor
    access_log: bool = True  # Ray Serve's line per request in each replica's log file (LoggingConfig)


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
        logging_config={"enable_access_log": a.access_log},
    ).bind(absolute(a.model_dir), a.max_batch_size, a.batch_wait_timeout_s, a.max_infer_batch,
           a.gpus_per_replica)


class Refused(Exception):
    """A request answered with ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


api = FastAPI(title="tuner", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(Refused)
async def _refused(request: Request, e: Refused) -> PlainTextResponse:
    return PlainTextResponse(f"{e}\n", status_code=e.status)


@api.exception_handler(ProtocolError)
async def _protocol_error(request: Request, e: ProtocolError) -> JSONResponse:
    return JSONResponse(protocol.error_body(str(e)), status_code=e.status)


class Denoiser:
    """One replica: the model, loaded once (weights only), on the GPU when it was given a share of one.

    A plain class, importable as ``tuner.serve.Denoiser``, so Ray ships it to replicas by name;
    :data:`deployment` is it wrapped for Serve.
    """

    def __init__(self, model_dir: str, max_batch_size: int = 16, batch_wait_timeout_s: float = 0.005,
                 max_infer_batch: int = 256, gpus: float = 0.0):
        # A replica with no GPU share stays on the CPU even on a GPU node: the GPU is someone else's.
        # With a share, Ray sets CUDA_VISIBLE_DEVICES to the replica's GPU, which is then cuda:0.
        self.device = "cuda:0" if gpus > 0 else "cpu"
        self.model = load_model(model_dir, self.device)
        self.info = {"model_dir": model_dir, "config": self.model.config, "metrics": model_metrics(model_dir)}
        self.max_batch_size = max_batch_size
        self.denoise_batch.set_max_batch_size(max_batch_size)
        self.denoise_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.stats = {"requests": 0, "images": 0, "batches": 0, "largest_batch": 0,
                      "infer_requests": 0, "infer_images": 0, "tiled_images": 0}
        self.lock = asyncio.Lock()  # one forward pass at a time: one CPU, and one tile's activations, per replica
        self.signature = protocol.Signature(self.model.channels, self.model.fixed_size, max_infer_batch)
        tiles = tile_size(self.model)
        self.tile = tiles[0] if tiles else None
        device_name = torch.cuda.get_device_name(0) if gpus > 0 else "cpu"
        self.server = protocol.server_metadata(_version())
        self.metadata = protocol.model_metadata(self.signature, {
            "device": self.device, "device_name": device_name, "experiment": self.model.config.get("experiment"),
            "tile": self.tile, "tile_overlap": tiles[1] if tiles else None})
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
        body = await _read_body(request, MAX_BODY_BYTES)
        if not body:
            raise Refused(400, f"{BODY_NAME}: empty; send one PNG or JPEG image as the body")
        pixels = _png_pixels(body)
        try:  # a big image decodes off the event loop, so requests keep arriving meanwhile
            if pixels is not None and pixels <= SMALL_IMAGE_PIXELS:
                x = load_image(body, self.model, BODY_NAME)  # (C, H, W)
            else:
                x = await asyncio.to_thread(load_image, body, self.model, BODY_NAME)
        except ImageTooLarge as e:
            raise Refused(413, str(e)) from None
        except (DatasetError, ValueError) as e:  # not an image, truncated, a size a dense model refuses
            raise Refused(400, str(e)) from None
        y = await self.denoise_batch(x)
        if isinstance(y, Exception):
            raise y  # Serve answers 500; the other requests of the batch were answered
        small = y.shape[-1] * y.shape[-2] <= SMALL_IMAGE_PIXELS
        return Response(_png(y) if small else await asyncio.to_thread(_png, y), media_type="image/png")

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
            self._count_tiled(batch)
            try:
                y = await self._locked(denoise, self.model, batch, len(idx))
            except Exception as e:  # e.g. out of GPU memory on one big image: fail only its size's requests
                y = [e] * len(idx)
            for i, yi in zip(idx, y):
                out[i] = yi
        return out  # type: ignore[return-value]

    async def _locked(self, fn, *args):
        """``fn(*args)`` off the event loop, one model call at a time in this replica."""
        async with self.lock:
            return await asyncio.to_thread(fn, *args)

    def _count_tiled(self, images) -> None:
        if self.tile and max(images.shape[-2:]) > self.tile:
            self.stats["tiled_images"] += len(images)

    def _parse(self, body: bytes, encoding: Optional[str], header_length: Optional[str]) -> protocol.InferRequest:
        return protocol.parse_infer(protocol.inflate(body, encoding), header_length, self.signature)

    def _infer_images(self, request: protocol.InferRequest):
        """The request's images denoised, in its datatype. Converted here, under the lock, so only
        one request's float copy exists at a time."""
        y = denoise(self.model, protocol.to_floats(request.images))  # (N, C, H, W) in [0, 1]
        return protocol.from_floats(y, request.datatype)

    # ------------------------------------------------------------ the Open Inference Protocol

    @api.get("/v2")
    def server_metadata(self) -> dict[str, Any]:
        return self.server

    @api.get("/v2/health/live")
    def live(self) -> dict[str, bool]:
        return {"live": True}

    @api.get("/v2/health/ready")
    def ready(self) -> dict[str, bool]:
        return {"ready": True}  # a replica answers only once its model is loaded

    @api.get("/v2/models/{name}")
    @api.get("/v2/models/{name}/versions/{version}")
    def model_metadata(self, name: str, version: Optional[str] = None) -> dict[str, Any]:
        protocol.check_model(name, version)
        return self.metadata

    @api.get("/v2/models/{name}/ready")
    @api.get("/v2/models/{name}/versions/{version}/ready")
    def model_ready(self, name: str, version: Optional[str] = None) -> dict[str, Any]:
        protocol.check_model(name, version)
        return {"name": name, "ready": True}

    @api.post("/v2/models/{name}/infer")
    @api.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(self, name: str, request: Request, version: Optional[str] = None) -> Response:
        protocol.check_model(name, version)
        self.stats["infer_requests"] += 1
        try:
            body = await _read_body(request, protocol.MAX_INFER_BYTES)
        except Refused as e:
            raise ProtocolError(e.status, str(e)) from None
        # Inflated, checked and read off the event loop (JSON can be megabytes), before any pixel is converted.
        req = await asyncio.to_thread(self._parse, body, request.headers.get("content-encoding"),
                                      request.headers.get(protocol.HEADER_LENGTH))
        self.stats["infer_images"] += len(req.images)
        self._count_tiled(req.images)
        try:
            y = await self._locked(self._infer_images, req)
        except Exception as e:  # e.g. out of GPU memory: this request fails, the replica keeps serving
            log.exception("infer failed")
            raise ProtocolError(500, f"inference failed: {type(e).__name__}: {str(e)[:200]}") from None
        content, headers = await asyncio.to_thread(protocol.encode_infer, req, y)
        return Response(content, headers=headers)

    @api.api_route("/v2/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
    def not_an_endpoint(self, path: str) -> None:
        raise ProtocolError(404, f"no endpoint /v2/{path[:100]}: this server answers GET /v2, /v2/health/live, "
                                 f"/v2/health/ready, /v2/models/{protocol.MODEL_NAME}[/ready] and POST "
                                 f"/v2/models/{protocol.MODEL_NAME}/infer")


# The Serve deployment (named "Denoiser" in config files) with the FastAPI routes above.
deployment = serve.deployment(name="Denoiser")(serve.ingress(api)(Denoiser))


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Refused(400, f"Content-Length {declared[:40]!r} is not a byte count")
        if int(declared) > limit:
            raise Refused(413, f"{BODY_NAME}: {int(declared):,} bytes, over the limit of {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():  # chunked uploads have no Content-Length: count as we go
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"{BODY_NAME}: over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tuner")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _png_pixels(body: bytes) -> Optional[int]:
    """Width x height from a PNG's header (its IHDR chunk) without decoding it; None if not a PNG."""
    if len(body) >= 24 and body[:8] == b"\x89PNG\r\n\x1a\n" and body[12:16] == b"IHDR":
        width, height = struct.unpack(">II", body[16:24])
        return width * height
    return None


def _png(x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    to_pil(x).save(buf, format="PNG")
    return buf.getvalue()


def model_metrics(model_dir: str) -> Optional[dict[str, Any]]:
    """The model folder's ``metrics.json``; None if it has none (a hand-made folder)."""
    from tuner.storage import METRICS_FILE, read_file

    try:
        return json.loads(read_file(model_dir, METRICS_FILE))
    except FileNotFoundError:  # a hand-made model folder may have none
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{model_dir}/{METRICS_FILE}: not valid JSON") from None
