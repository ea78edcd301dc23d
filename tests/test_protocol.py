"""``tuner.protocol`` on its own: requests as ``tritonclient.http`` writes them are read back to the
same tensors, answers are what its ``InferResult`` reads, and every hostile request is refused with
its status before the tensor it claims is allocated. No server: ``test_serve.py`` sends the same
requests over HTTP."""
from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from oip_requests import HOSTILE_INFER, digits_batch, infer_request

from tuner import protocol
from tuner.denoise import to_pil
from tuner.protocol import HEADER_LENGTH, ProtocolError, Signature

CONV = Signature(channels=1, size=None, max_batch=8)
DENSE = Signature(channels=1, size=(8, 8), max_batch=8)


def _parse(request, signature: Signature = CONV) -> protocol.InferRequest:
    body, headers = request
    return protocol.parse_infer(protocol.inflate(body, headers.get("Content-Encoding")),
                                headers.get(HEADER_LENGTH), signature)


def _answer(req: protocol.InferRequest, y: np.ndarray) -> httpclient.InferResult:
    """What tritonclient reads from our answer."""
    body, headers = protocol.encode_infer(req, y)
    return httpclient.InferResult.from_response_body(body, header_length=headers.get(HEADER_LENGTH) and
                                                     int(headers[HEADER_LENGTH]))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("binary, binary_output", [(True, None), (True, False), (False, True), (False, False)])
def test_tritonclient_requests_and_answers_round_trip(dtype, binary, binary_output):
    a = digits_batch(3, dtype, size=(5, 7))
    req = _parse(infer_request(a, binary=binary, binary_output=binary_output, request_id="r-1"))
    assert req.images.dtype == a.dtype and np.array_equal(req.images, a)
    assert req.datatype == ("UINT8" if dtype == np.uint8 else "FP32") and req.id == "r-1"
    assert req.binary_output == (binary_output is not False)  # no outputs named: tritonclient asks for binary
    y = a[:, :, ::-1].copy()  # any (N, C, H, W) answer of the request's datatype
    result = _answer(req, y)
    got = result.as_numpy("OUTPUT")
    assert got.dtype == a.dtype and np.array_equal(got, y)
    response = result.get_response()
    assert response["model_name"] == "denoiser" and response["id"] == "r-1"
    assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) == req.binary_output


def test_json_data_may_be_nested_and_binary_input_is_not_copied():
    a = digits_batch(2)
    doc = {"inputs": [{"name": "INPUT", "datatype": "UINT8", "shape": [2, 1, 8, 8], "data": a.tolist()}]}
    assert np.array_equal(_parse((json.dumps(doc).encode(), {})).images, a)
    body, headers = infer_request(a)
    req = _parse((body, headers))
    assert not req.images.flags.writeable  # a view of the body's bytes, converted only under the replica's lock


def test_dense_model_takes_only_its_size():
    assert np.array_equal(_parse(infer_request(digits_batch()), DENSE).images, digits_batch())
    with pytest.raises(ProtocolError, match="takes only 8x8") as e:
        _parse(infer_request(digits_batch(size=(8, 9))), DENSE)
    assert e.value.status == 400


@pytest.mark.parametrize("name", list(HOSTILE_INFER))
def test_hostile_infer_request_is_refused(name):
    make, status, words = HOSTILE_INFER[name]
    with pytest.raises(ProtocolError) as e:
        _parse(make())
    assert e.value.status == status and words in str(e.value), (e.value.status, str(e.value))
    assert "\n" not in str(e.value)


def test_compressed_requests_are_inflated():
    a = digits_batch()
    body, headers = infer_request(a)
    for encoding, compress in (("gzip", gzip.compress), ("deflate", zlib.compress)):
        assert np.array_equal(_parse((compress(body), {**headers, "Content-Encoding": encoding})).images, a)
    with pytest.raises(ProtocolError, match="truncated gzip"):
        protocol.inflate(gzip.compress(body)[:-12], "gzip")


def test_metadata_names_the_tensors_and_limits():
    meta = protocol.model_metadata(CONV, {"device": "cpu"})
    assert meta["name"] == "denoiser" and meta["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"] + meta["outputs"]] == [
        ("INPUT", "UINT8", [-1, 1, -1, -1]), ("OUTPUT", "UINT8", [-1, 1, -1, -1])]
    assert meta["inputs"][0]["parameters"]["datatypes"] == ["UINT8", "FP32"]
    assert meta["parameters"]["max_batch_size"] == 8 and meta["parameters"]["device"] == "cpu"
    assert protocol.model_metadata(DENSE, {})["inputs"][0]["shape"] == [-1, 1, 8, 8]
    assert protocol.server_metadata("0.1.0") == {"name": "tuner", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
    protocol.check_model("denoiser", "1")
    for name, version in (("resnet", None), ("denoiser", "2")):
        with pytest.raises(ProtocolError) as e:
            protocol.check_model(name, version)
        assert e.value.status == 404


def test_uint8_answers_round_as_tuner_denoise_writes_pngs():
    y = torch.rand(3, 1, 6, 5)
    y[0, 0, 0, :3] = torch.tensor([-0.1, 1.2, 0.5 / 255])  # clipped; rounded half to even as to_pil
    out = protocol.from_floats(y.clone(), "UINT8")
    assert out.dtype == np.uint8
    for i in range(3):
        assert np.array_equal(out[i, 0], np.asarray(to_pil(y[i].clone())))
    assert np.array_equal(protocol.to_floats(out), torch.from_numpy(out).float() / 255)
    assert protocol.from_floats(y, "FP32").dtype == np.float32
