"""Open Inference Protocol requests as ``tritonclient.http`` writes them, and hostile ones made
from them, shared by ``test_protocol.py`` (the parser alone) and ``test_serve.py`` (over HTTP)."""
from __future__ import annotations

import gzip
import json
from typing import Callable, Optional

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import np_to_triton_dtype

from tuner.protocol import HEADER_LENGTH, MAX_INFER_BYTES, MAX_JSON_BYTES

Request = tuple[bytes, dict[str, str]]  # (body, headers)


def infer_request(a: np.ndarray, binary: bool = True, binary_output: Optional[bool] = None,
                  request_id: str = "") -> Request:
    """What ``InferenceServerClient.infer`` sends for the tensor ``a`` as INPUT (``binary_output``
    None: no outputs named, so the client asks for binary outputs)."""
    x = httpclient.InferInput("INPUT", list(a.shape), np_to_triton_dtype(a.dtype))
    x.set_data_from_numpy(a, binary_data=binary)
    outputs = None if binary_output is None else [httpclient.InferRequestedOutput("OUTPUT", binary_data=binary_output)]
    body, json_size = httpclient.InferenceServerClient.generate_request_body([x], outputs=outputs,
                                                                             request_id=request_id)
    return body, {} if json_size is None else {HEADER_LENGTH: str(json_size)}


def digits_batch(n: int = 2, dtype=np.uint8, size: tuple[int, int] = (8, 8), seed: int = 0) -> np.ndarray:
    """(n, 1, H, W) noise-like images, UINT8 0-255 or FP32 0-1."""
    a = np.random.default_rng(seed).integers(0, 256, (n, 1, *size), dtype=np.uint8)
    return a if dtype == np.uint8 else (a / 255).astype(np.float32)


def _edit(body_and_headers: Request, edit: Callable[[dict], None]) -> Request:
    """The request with its JSON header changed by ``edit`` (lengths kept consistent)."""
    body, headers = body_and_headers
    n = int(headers.get(HEADER_LENGTH, len(body)))
    doc = json.loads(body[:n])
    edit(doc)
    head = json.dumps(doc).encode()
    return head + body[n:], ({HEADER_LENGTH: str(len(head))} if HEADER_LENGTH in headers else {})


def _set(path: str, value) -> Callable[[dict], None]:
    """An edit setting e.g. ``inputs.0.datatype`` to ``value``."""
    def edit(doc: dict) -> None:
        *keys, last = [int(k) if k.isdigit() else k for k in path.split(".")]
        node = doc
        for k in keys:
            node = node[k]
        node[last] = value
    return edit


def _raw(text: str, headers: Optional[dict[str, str]] = None) -> Callable[[], Request]:
    return lambda: (text.encode(), headers or {})


def _binary(a: np.ndarray) -> Request:
    return infer_request(a, binary=True)


def _truncated() -> Request:
    body, headers = _binary(digits_batch())
    return body[:-10], headers


def _trailing() -> Request:
    body, headers = _binary(digits_batch())
    return body + b"\x00" * 3, headers


def _header_past_body() -> Request:
    body, headers = _binary(digits_batch())
    return body, {HEADER_LENGTH: str(len(body) + 1)}


def _nan(binary: bool) -> Callable[[], Request]:
    def make() -> Request:
        a = digits_batch(dtype=np.float32)
        a[1, 0, 3, 3] = np.nan
        if binary:
            return _binary(a)
        body = json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": list(a.shape),
                                       "data": a.ravel().tolist()}]})  # Python writes NaN as NaN
        return body.encode(), {}
    return make


def _infinite_json() -> Request:
    a = digits_batch(dtype=np.float32).ravel().tolist()
    a[5] = float("inf")
    return json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [2, 1, 8, 8], "data": a}]}).encode(), {}


def _gzip_bomb() -> Request:
    """32 KiB of gzip that inflates past the byte limit."""
    body, headers = infer_request(digits_batch(), binary=False)
    return gzip.compress(body + b" " * MAX_INFER_BYTES), {**headers, "Content-Encoding": "gzip"}


# name: (request maker, status, words the {"error": ...} message holds). Made for a 1-channel model
# of any size (8x8 for a dense one) whose server takes at most 8 images per request.
HOSTILE_INFER: dict[str, tuple[Callable[[], Request], int, str]] = {
    "not JSON": (_raw("hello"), 400, "not valid JSON"),
    "not an object": (_raw("[1, 2]"), 400, "not a JSON object"),
    "no inputs": (_raw('{"outputs": []}'), 400, "a list of one tensor"),
    "two inputs": (lambda: _edit(infer_request(digits_batch(), binary=False), lambda d: d["inputs"].append(d["inputs"][0])),
                   400, "a list of one tensor"),
    "unknown input": (lambda: _edit(_binary(digits_batch()), _set("inputs.0.name", "IMAGE")), 400, "unknown input 'IMAGE'"),
    "unknown output": (lambda: _edit(infer_request(digits_batch(), binary_output=True), _set("outputs.0.name", "X")),
                       400, "unknown output 'X'"),
    "classification": (lambda: _edit(infer_request(digits_batch(), binary_output=True),
                                     _set("outputs.0.parameters.classification", 3)), 400, "classification is not supported"),
    "wrong datatype": (lambda: _binary(digits_batch().astype(np.int32)), 400, "datatype 'INT32'"),
    "wrong datatype, FP64": (lambda: _binary(digits_batch(dtype=np.float32).astype(np.float64)), 400, "datatype 'FP64'"),
    "wrong shape, 3 dims": (lambda: _binary(digits_batch()[0]), 400, "expected [N, C, H, W]"),
    "wrong shape, channels": (lambda: _binary(np.repeat(digits_batch(), 3, axis=1)), 400, "3 channels"),
    "wrong shape, zero": (lambda: _edit(_binary(digits_batch()), _set("inputs.0.shape", [0, 1, 8, 8])),
                          400, "expected [N, C, H, W]"),
    "wrong shape, not numbers": (lambda: _edit(_binary(digits_batch()), _set("inputs.0.shape", [2, 1, "8", 8])),
                                 400, "expected [N, C, H, W]"),
    "batch over the limit": (lambda: _binary(digits_batch(9)), 400, "over this server's max_batch_size of 8"),
    "too many pixels": (lambda: _edit(_binary(digits_batch()), _set("inputs.0.shape", [8, 1, 10_000, 1_000])),
                        413, "over the limit of 50,000,000"),
    "binary_data_size not the shape's": (lambda: _edit(_binary(digits_batch()), _set("inputs.0.shape", [1, 1, 8, 8])),
                                         400, "binary_data_size 128 but shape [1, 1, 8, 8] of UINT8 is 64 bytes"),
    "header longer than the body": (_header_past_body, 400, "but the body has only"),
    "header length not a number": (lambda: (_binary(digits_batch())[0], {HEADER_LENGTH: "12x"}), 400,
                                   "is not a positive byte count"),
    "binary data without the header": (lambda: (_binary(digits_batch())[0], {}), 400, "not valid JSON"),
    "truncated binary data": (_truncated, 400, "truncated: 118 bytes of binary data"),
    "bytes after the binary data": (_trailing, 400, "3 bytes after the binary data"),
    "JSON data count": (lambda: _edit(infer_request(digits_batch(), binary=False), _set("inputs.0.shape", [1, 1, 8, 8])),
                        400, "data has 128 values but shape [1, 1, 8, 8] has 64"),
    "JSON data ragged": (lambda: _edit(infer_request(digits_batch(1), binary=False), _set("inputs.0.data", [[1, 2], [3]])),
                         400, "not a list of numbers"),
    "JSON data strings": (lambda: _edit(infer_request(digits_batch(1), binary=False), _set("inputs.0.data", ["1"] * 64)),
                          400, "numbers only"),
    "UINT8 over 255": (lambda: _edit(infer_request(digits_batch(1), binary=False), _set("inputs.0.data", [300] * 64)),
                       400, "whole numbers 0-255"),
    "UINT8 not whole": (lambda: _edit(infer_request(digits_batch(1), binary=False), _set("inputs.0.data", [1.5] * 64)),
                        400, "whole numbers 0-255"),
    "FP32 NaN, binary": (_nan(True), 400, "NaN or infinite"),
    "FP32 NaN, JSON": (_nan(False), 400, "NaN or infinite"),
    "FP32 infinite, JSON": (_infinite_json, 400, "NaN or infinite"),
    "FP32 over 1": (lambda: _binary(digits_batch(dtype=np.float32) * 255), 400, "FP32 images are in [0, 1]"),
    "JSON over the limit": (_raw(" " * (MAX_JSON_BYTES + 1)), 413, "over the limit of 8,388,608"),
    "shared memory": (lambda: _edit(_binary(digits_batch()), _set("inputs.0.parameters.shared_memory_region", "r")),
                      400, "shared memory is not supported"),
    "gzip bomb": (_gzip_bomb, 413, "once inflated"),
    "not gzip": (_raw("hello", {"Content-Encoding": "gzip"}), 400, "not valid gzip data"),
    "unknown encoding": (_raw("hello", {"Content-Encoding": "br"}), 400, "send gzip, deflate"),
}
