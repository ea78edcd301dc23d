"""The Open Inference Protocol (KServe V2, Triton's HTTP/REST API) for one denoising model: pure
functions from a request's bytes to a tensor and from the denoised tensor to the answer's bytes.
No Ray and no HTTP server here, so each refusal is tested on its own (``tests/test_protocol.py``);
:mod:`tuner.serve` routes the endpoints to these functions.

Names, fixed whatever the model folder (the folder's experiment name can be any text; a second
model is a second Serve application under another route prefix, e.g. ``/dense/v2/...``):

- model :data:`MODEL_NAME` (``denoiser``), version :data:`MODEL_VERSION` (``1``);
- input :data:`INPUT` (``INPUT``): ``[N, C, H, W]``, ``UINT8`` (0-255) or ``FP32`` (0-1): N images of
  the model's C channels (1 grayscale, 3 RGB), any H and W for a convolutional model (``-1`` in the
  metadata), only the training size for a dense one;
- output :data:`OUTPUT` (``OUTPUT``): the denoised batch, same shape and datatype (``UINT8``
  rounded as ``tuner denoise`` rounds its PNGs).

A request is JSON (``data`` flat or nested, row-major) or uses the binary tensor data extension: the
body is the JSON header (``Inference-Header-Content-Length`` bytes) followed by the tensor's raw
little-endian bytes (``parameters.binary_data_size`` of them). The answer is binary when asked
(``outputs[].parameters.binary_data``, else the request's ``parameters.binary_data_output``, which
``tritonclient`` sets when it names no outputs), else JSON. Bodies compressed with
``Content-Encoding: gzip`` or ``deflate`` (``tritonclient``'s ``request_compression_algorithm``)
are inflated up to the byte limit and no further.

Every refusal is a :class:`ProtocolError`: a status (400 bad request, 404 unknown model or
endpoint, 413 over a size limit) and one line, answered as ``{"error": "..."}``. The limits are
checked from the header and shape, before anything the size of the tensor is allocated:
:data:`MAX_INFER_BYTES` per body (also after inflating), :data:`MAX_JSON_BYTES` of JSON, the
deployment's ``max_infer_batch`` images per request (``Signature.max_batch``, stated in the model
metadata) and ``tuner.data.MAX_IMAGE_PIXELS`` pixels per request; ``binary_data_size`` must be the
shape's size exactly, and the body must hold exactly the header and that many bytes. ``FP32``
values must be finite and in [0, 1].
"""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from tuner.data import MAX_IMAGE_PIXELS

MODEL_NAME = "denoiser"  # the model's name in every /v2/models/... path
MODEL_VERSION = "1"  # the one version; /v2/models/denoiser/versions/1/... is the same model
PLATFORM = "pytorch"
INPUT, OUTPUT = "INPUT", "OUTPUT"
DATATYPES = {"UINT8": np.dtype("u1"), "FP32": np.dtype("<f4")}  # the protocol's names -> little-endian dtypes
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data"]  # Triton's name for the binary data extension
# 32 MiB: a 32-megapixel grayscale photo as UINT8, 8 megapixels as FP32. A replica holds the body, the
# float input and output (4 bytes a value each) and the answer: about 10x this at most.
MAX_INFER_BYTES = 32 * 2**20
# JSON becomes Python objects, a few times its size: a JSON batch of 1,000 28x28 images fits (~3 MB)
MAX_JSON_BYTES = 8 * 2**20
COMPRESSED = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # Content-Encoding -> zlib wbits


class ProtocolError(Exception):
    """A request answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Signature:
    """What the served model takes."""

    channels: int  # C: 1 (grayscale) or 3 (RGB)
    size: Optional[tuple[int, int]]  # (H, W) a dense model takes; None: any size
    max_batch: int  # most images (N) in one infer request

    def shape(self) -> list[int]:
        """The metadata shape, ``-1`` where any size goes: ``[-1, C, -1, -1]`` for a conv model."""
        h, w = self.size or (-1, -1)
        return [-1, self.channels, h, w]


@dataclass(frozen=True)
class InferRequest:
    """A checked infer request."""

    images: np.ndarray  # (N, C, H, W) uint8 or float32; for binary data, a read-only view of the body
    datatype: str  # "UINT8" or "FP32", the answer's too
    binary_output: bool  # answer the tensor as binary data after a JSON header
    id: Optional[str] = None  # echoed in the answer


def server_metadata(version: str) -> dict[str, Any]:
    """``GET /v2``."""
    return {"name": "tuner", "version": version, "extensions": EXTENSIONS}


def model_metadata(signature: Signature, parameters: dict[str, Any]) -> dict[str, Any]:
    """``GET /v2/models/denoiser``: names, datatypes and shapes, and ``parameters`` (device, limits).

    The protocol gives a tensor one datatype: ``UINT8``, what images are; ``FP32`` is also taken,
    which the tensors' ``parameters.datatypes`` say."""
    tensor = {"datatype": "UINT8", "shape": signature.shape(), "parameters": {"datatypes": list(DATATYPES)}}
    return {"name": MODEL_NAME, "versions": [MODEL_VERSION], "platform": PLATFORM,
            "inputs": [{"name": INPUT, **tensor}], "outputs": [{"name": OUTPUT, **tensor}],
            "parameters": {"max_batch_size": signature.max_batch, "max_pixels": MAX_IMAGE_PIXELS,
                           "max_body_bytes": MAX_INFER_BYTES, **parameters}}


def check_model(name: str, version: Optional[str] = None) -> None:
    """Raises ProtocolError (404) unless ``name`` (and ``version``, if given) is the served model."""
    if name != MODEL_NAME:
        raise ProtocolError(404, f"unknown model {name[:100]!r}: this server serves {MODEL_NAME!r}")
    if version is not None and version != MODEL_VERSION:
        raise ProtocolError(404, f"unknown version {version[:20]!r} of {MODEL_NAME!r}: it has version {MODEL_VERSION!r}")


def inflate(body: bytes, encoding: Optional[str]) -> bytes:
    """The body as sent before ``Content-Encoding`` (gzip or deflate), refused (413) past
    :data:`MAX_INFER_BYTES` without inflating the rest: a small compressed body can claim gigabytes."""
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return body
    wbits = COMPRESSED.get(encoding.strip().lower())
    if wbits is None:
        raise ProtocolError(400, f"Content-Encoding {encoding[:40]!r}: send gzip, deflate or an uncompressed body")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, MAX_INFER_BYTES + 1)
    except zlib.error as e:
        raise ProtocolError(400, f"request body: not valid {encoding} data ({e})") from None
    if len(out) > MAX_INFER_BYTES:
        raise ProtocolError(413, f"request body: over {MAX_INFER_BYTES:,} bytes once inflated")
    if not inflater.eof:
        raise ProtocolError(400, f"request body: truncated {encoding} data")
    return out


def parse_infer(body: bytes, header_length: Optional[str], signature: Signature) -> InferRequest:
    """Check an infer request and read its tensor, without copying binary data.

    Args:
        body: the request body (inflated).
        header_length: the ``Inference-Header-Content-Length`` header, None if absent (all JSON).
        signature: what the model takes.

    Returns:
        The checked request.

    Raises:
        ProtocolError: 400 / 413 with one line saying what is wrong.
    """
    if header_length is None:
        n = len(body)
    else:
        if not header_length.strip().isdigit() or int(header_length) == 0:
            raise ProtocolError(400, f"{HEADER_LENGTH} {header_length[:40]!r} is not a positive byte count")
        n = int(header_length)
        if n > len(body):
            raise ProtocolError(400, f"{HEADER_LENGTH} is {n:,} bytes but the body has only {len(body):,}")
    if n > MAX_JSON_BYTES:
        raise ProtocolError(413, f"JSON of {n:,} bytes, over the limit of {MAX_JSON_BYTES:,}; "
                                 "send the tensor as binary data")
    doc = _json(body[:n])
    (datatype, shape, parameters, data), binary_output = _request(doc)
    _check_shape(shape, signature)
    dtype = DATATYPES[datatype]
    count = math.prod(shape)
    rest = memoryview(body)[n:]
    size = parameters.get("binary_data_size")
    if size is not None:
        if header_length is None:
            raise ProtocolError(400, f"{INPUT}: binary_data_size given without the {HEADER_LENGTH} header")
        if data is not None:
            raise ProtocolError(400, f"{INPUT}: both data and binary_data_size; send one")
        if type(size) is not int or size != count * dtype.itemsize:
            raise ProtocolError(400, f"{INPUT}: binary_data_size {str(size)[:20]} but shape {shape} of "
                                     f"{datatype} is {count * dtype.itemsize:,} bytes")
        if len(rest) < size:
            raise ProtocolError(400, f"{INPUT}: truncated: {len(rest):,} bytes of binary data after the "
                                     f"header, binary_data_size says {size:,}")
        if len(rest) > size:
            raise ProtocolError(400, f"{len(rest) - size:,} bytes after the binary data of {INPUT}")
        images = np.frombuffer(rest, dtype=dtype).reshape(shape)  # (N, C, H, W), no copy
    else:
        if len(rest):
            raise ProtocolError(400, f"{len(rest):,} bytes after the JSON header, but {INPUT} has no "
                                     "binary_data_size")
        if data is None:
            raise ProtocolError(400, f"{INPUT}: no data and no binary_data_size")
        images = _from_json(data, datatype, shape, count)
    if datatype == "FP32":
        _check_unit_range(images)
    return InferRequest(images, datatype, binary_output, doc.get("id"))


def _json(text: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(400, f"request header: not valid JSON ({str(e).splitlines()[0][:100]})") from None
    if not isinstance(doc, dict):
        raise ProtocolError(400, "request header: not a JSON object with \"inputs\"")
    return doc


def _request(doc: dict[str, Any]) -> tuple[tuple[str, Any, dict[str, Any], Any], bool]:
    """The one input's (datatype, shape, parameters, data), and whether to answer in binary."""
    if "id" in doc and not isinstance(doc["id"], str):
        raise ProtocolError(400, "id: must be a string")
    params = _object(doc.get("parameters"), "parameters")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(400, f"inputs: must be a list of one tensor, {INPUT}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT:
        raise ProtocolError(400, f"unknown input {str(tensor.get('name'))[:40]!r}: this model's input is {INPUT!r}")
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise ProtocolError(400, f"{INPUT}: datatype {str(datatype)[:20]!r}; this model takes "
                                 f"{' or '.join(DATATYPES)}")
    tparams = _object(tensor.get("parameters"), f"{INPUT}.parameters")
    if "shared_memory_region" in tparams:
        raise ProtocolError(400, f"{INPUT}: shared memory is not supported; send the tensor in the body")
    binary = params.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise ProtocolError(400, "parameters.binary_data_output: must be true or false")
    outputs = doc.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or len(outputs) > 1:
            raise ProtocolError(400, f"outputs: must be a list naming at most the one output, {OUTPUT}")
        for out in outputs:
            if not isinstance(out, dict) or out.get("name") != OUTPUT:
                name = out.get("name") if isinstance(out, dict) else out
                raise ProtocolError(400, f"unknown output {str(name)[:40]!r}: this model's output is {OUTPUT!r}")
            oparams = _object(out.get("parameters"), f"{OUTPUT}.parameters")
            for unsupported in ("classification", "shared_memory_region"):
                if unsupported in oparams:
                    raise ProtocolError(400, f"{OUTPUT}: {unsupported} is not supported")
            binary = oparams.get("binary_data", binary)
            if not isinstance(binary, bool):
                raise ProtocolError(400, f"{OUTPUT}.parameters.binary_data: must be true or false")
    return (datatype, tensor.get("shape"), tparams, tensor.get("data")), binary


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(400, f"{what}: must be a JSON object")
    return value


def _check_shape(shape: Any, signature: Signature) -> None:
    """[N, C, H, W] whole numbers as the model takes them, within the batch and pixel limits."""
    want = signature.shape()
    if not (isinstance(shape, list) and len(shape) == 4 and all(type(v) is int and v > 0 for v in shape)):
        raise ProtocolError(400, f"{INPUT}: shape {str(shape)[:60]}; expected [N, C, H, W] of positive "
                                 f"whole numbers, as in {want}")
    n, c, h, w = shape
    if c != signature.channels:
        raise ProtocolError(400, f"{INPUT}: {c} channels; this model takes {signature.channels} (shape {want})")
    if signature.size is not None and (h, w) != signature.size:
        raise ProtocolError(400, f"{INPUT}: {h}x{w} images, but this model (dense) takes only "
                                 f"{signature.size[0]}x{signature.size[1]} (shape {want})")
    if n > signature.max_batch:
        raise ProtocolError(400, f"{INPUT}: a batch of {n:,} images, over this server's max_batch_size of "
                                 f"{signature.max_batch:,}; split it into several requests")
    if n * h * w > MAX_IMAGE_PIXELS:
        raise ProtocolError(413, f"{INPUT}: {n * h * w:,} pixels, over the limit of {MAX_IMAGE_PIXELS:,} per request")


def _from_json(data: Any, datatype: str, shape: list[int], count: int) -> np.ndarray:
    """A JSON ``data`` list (flat or nested) as the tensor, its values checked for the datatype."""
    if not isinstance(data, list):
        raise ProtocolError(400, f"{INPUT}: data must be a list of numbers")
    try:
        a = np.asarray(data)
    except (ValueError, TypeError):  # ragged nesting
        raise ProtocolError(400, f"{INPUT}: data is not a list of numbers (ragged nesting?)") from None
    if a.dtype.kind not in "iuf":  # strings, booleans, null, objects, numbers too large for 64 bits
        raise ProtocolError(400, f"{INPUT}: data must hold numbers only")
    if a.size != count:
        raise ProtocolError(400, f"{INPUT}: data has {a.size:,} values but shape {shape} has {count:,}")
    a = a.reshape(shape)
    if datatype == "UINT8":
        if a.dtype.kind == "f" and not np.array_equal(a, np.floor(a)):  # NaN is not equal to itself
            raise ProtocolError(400, f"{INPUT}: UINT8 data must be whole numbers 0-255")
        if a.min() < 0 or a.max() > 255:
            raise ProtocolError(400, f"{INPUT}: UINT8 data must be whole numbers 0-255, not "
                                     f"{a.min():g} to {a.max():g}")
        return a.astype(np.uint8)
    with np.errstate(over="ignore"):  # 1e300 becomes inf, refused next
        return a.astype(np.float32)


def _check_unit_range(images: np.ndarray) -> None:
    """FP32 images must be finite and in [0, 1]. min / max propagate NaN: no mask is allocated."""
    lo, hi = float(images.min()), float(images.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ProtocolError(400, f"{INPUT}: NaN or infinite values; FP32 images are finite, in [0, 1]")
    if lo < 0 or hi > 1:
        raise ProtocolError(400, f"{INPUT}: FP32 values from {lo:g} to {hi:g}; FP32 images are in [0, 1] "
                                 "(send 0-255 values as UINT8)")


def to_floats(images: np.ndarray) -> torch.Tensor:
    """The request's images as the model's input: (N, C, H, W) float32 in [0, 1], a new tensor."""
    if images.dtype == np.uint8:
        return torch.from_numpy(images.astype(np.float32)).div_(255.0)
    return torch.from_numpy(images.copy())  # the body's bytes are read-only


def from_floats(y: torch.Tensor, datatype: str) -> np.ndarray:
    """Denoised (N, C, H, W) floats in [0, 1] as the answer's datatype: UINT8 rounded and clipped
    as :func:`tuner.denoise.to_pil` writes PNGs."""
    if datatype == "UINT8":
        return y.clamp(0, 1).mul_(255).round_().to(torch.uint8).numpy()
    return y.numpy().astype(DATATYPES["FP32"], copy=False)


def encode_infer(request: InferRequest, y: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The answer to ``request``, whose denoised images are ``y``: (body, headers).

    Binary: the JSON header, then the tensor's bytes; ``Inference-Header-Content-Length`` says where
    the header ends. Else all JSON, ``data`` flat and row-major."""
    out: dict[str, Any] = {"name": OUTPUT, "datatype": request.datatype, "shape": list(y.shape)}
    head: dict[str, Any] = {"model_name": MODEL_NAME, "model_version": MODEL_VERSION}
    if request.id is not None:
        head["id"] = request.id
    head["outputs"] = [out]
    if request.binary_output:
        raw = np.ascontiguousarray(y).tobytes()
        out["parameters"] = {"binary_data_size": len(raw)}
        header = json.dumps(head, separators=(",", ":")).encode()
        return header + raw, {HEADER_LENGTH: str(len(header)), "content-type": "application/octet-stream"}
    out["data"] = y.reshape(-1).tolist()
    return json.dumps(head, separators=(",", ":"), allow_nan=False).encode(), {"content-type": "application/json"}


def error_body(message: str) -> dict[str, str]:
    """The protocol's error answer."""
    return {"error": message}
