"""``tuner serve`` for real: Ray Serve on 127.0.0.1 (a free port), real HTTP clients (``requests``,
and ``tritonclient.http`` for the Open Inference Protocol), tiny models trained with ``tuner.fit``
on digits and exported in the ``best/`` format. Outputs are compared with ``tuner denoise``'s and
``tuner.denoise``'s; every hostile request is followed by a good one; the Ray processes the tests
start are gone at the end (checked by PID)."""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import tritonclient.http as httpclient
import yaml
from oip_requests import HOSTILE_INFER
from ports import free_port
from PIL import Image
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

import tuner
from tuner.cli import main
from tuner.denoise import load_image, to_pil
from tuner.noise import Noise
from tuner import protocol
from tuner.serve import MAX_BODY_BYTES, ServeArgs, app_builder
from tuner.config import TrialConfig

pytestmark = pytest.mark.own_ray  # its service starts Ray and Serve of its own

TIMEOUT = 60  # seconds per HTTP request: generous for a loaded 2-core machine


# ---------------------------------------------------------------- models, images, processes

def _export(model: torch.nn.Module, trial, folder: Path, metrics: dict) -> Path:
    """The ``best/`` folder format ``tuner.export.export_best`` writes."""
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "config.json").write_text(json.dumps({
        "format": "tuner-model/1", "experiment": "serve-test", "metric": "val_psnr", "mode": "max",
        "image_shape": [1, 8, 8], "trial": trial.to_dict(), "dataset": {"name": "digits"},
        "eval_noise": {"kind": "gaussian", "level": 0.3, "level_max": None, "seed": 1234}}))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory, digits) -> dict[str, Path]:
    """A conv model (any image size) and a dense one (8x8 only), each one epoch of ``tuner.fit``."""
    root = tmp_path_factory.mktemp("serve-models")
    out = {}
    for arch in ("conv", "dense"):
        config = TrialConfig(arch=arch, width=8, depth=1, latent_dim=8, batch_size=32, max_epochs=1)
        *_, last = tuner.fit(config, digits, Noise("gaussian", 0.3))
        out[arch] = _export(last.trainer.model.cpu(), config, root / arch / "best",
                            {"val_psnr": last.metrics["val_psnr"]})
    return out


def _encode(a: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def images(digits) -> dict[str, bytes]:
    """PNG/JPEG files of two sizes, grayscale and RGB, from real digits plus noise."""
    rng = np.random.default_rng(0)
    noisy = lambda a: np.clip(a + rng.normal(0, 40, a.shape), 0, 255).astype(np.uint8)  # noqa: E731
    d = digits.test[:, 0]  # (N, 8, 8) uint8
    big = np.kron(d[1], np.ones((3, 2), np.uint8))[:, :13]  # 24x13: not a multiple of anything
    rgb = np.stack([d[2], d[3], d[4]], -1)  # (8, 8, 3)
    return {"8x8.png": _encode(noisy(d[0])), "24x13.png": _encode(noisy(big)),
            "rgb.png": _encode(noisy(rgb)), "rgb-16x16.jpg": _encode(noisy(np.kron(rgb, np.ones((2, 2, 1), np.uint8))), "JPEG")}


def _decode(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)))


def _expected(model_dir: Path, data: bytes) -> np.ndarray:
    """What the in-process API makes of the same bytes."""
    model = tuner.load_model(model_dir)
    return np.asarray(to_pil(tuner.denoise(model, load_image(data, model, "expected"))))


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1  # 1/255


def _client(url: str) -> httpclient.InferenceServerClient:
    """tritonclient's HTTP client for a service at ``url`` (a route prefix included)."""
    return httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=TIMEOUT)


def _infer(client: httpclient.InferenceServerClient, a: np.ndarray, binary: bool = True) -> np.ndarray:
    """The service's OUTPUT for INPUT ``a``, sent and answered as binary data or as JSON."""
    x = httpclient.InferInput("INPUT", list(a.shape), np_to_triton_dtype(a.dtype))
    x.set_data_from_numpy(a, binary_data=binary)
    result = client.infer("denoiser", [x], outputs=[httpclient.InferRequestedOutput("OUTPUT", binary_data=binary)])
    return result.as_numpy("OUTPUT")


def _expected_tensor(model_dir: Path, a: np.ndarray) -> np.ndarray:
    """``tuner.denoise`` in-process on the (N, C, H, W) batch ``a``, in its datatype (UINT8 0-255 or FP32 0-1)."""
    model = tuner.load_model(model_dir)
    y = tuner.denoise(model, torch.from_numpy(a).float() / 255 if a.dtype == np.uint8 else torch.from_numpy(a))
    return np.stack([np.asarray(to_pil(i)) for i in y])[:, None] if a.dtype == np.uint8 else y.numpy()


def _within(got: np.ndarray, want: np.ndarray) -> bool:
    """Same shape and datatype, equal to 1/255."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return False
    if got.dtype == np.uint8:
        return int(np.abs(got.astype(int) - want.astype(int)).max()) <= 1
    return float(np.abs(got - want).max()) <= 1 / 255


def _descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` (from /proc), as {pid: start time}, to tell a reused PID apart."""
    children: dict[int, list[int]] = {}
    start: dict[int, str] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(p.name))
        start[int(p.name)] = fields[19]
    out, todo = {}, [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out[c] = start[c]
            todo.append(c)
    return out


def _alive(procs: dict[int, str]) -> list[int]:
    """The PIDs of ``procs`` still running (zombies count as gone: they run nothing)."""
    alive = []
    for pid, started in procs.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[19] == started and fields[0] != "Z":
            alive.append(pid)
    return alive


def _wait_gone(procs: dict[int, str], seconds: float = 30) -> list[int]:
    deadline = time.monotonic() + seconds
    while _alive(procs) and time.monotonic() < deadline:
        time.sleep(0.5)
    return _alive(procs)


def _wait_healthy(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=5).text == "ok\n":
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not healthy after {seconds} s")


# ---------------------------------------------------------------- the command line

def _one_line(err: str) -> None:
    assert err.startswith("tuner: error: ") and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("case", ["missing", "empty folder", "bad config", "bad weights", "bad metrics"])
def test_serve_refuses_a_bad_model_folder_before_ray_starts(case, models, tmp_path, capsys):
    import ray

    folder = tmp_path / "best"
    if case != "missing":
        folder.mkdir()
    if case in ("bad weights", "bad metrics"):
        for name in ("config.json", "metrics.json", "model.pt"):
            (folder / name).write_bytes((models["conv"] / name).read_bytes())
    if case == "bad config":
        (folder / "config.json").write_text("{not json")
    if case == "bad weights":
        (folder / "model.pt").write_bytes(b"not a torch file")
    if case == "bad metrics":
        (folder / "metrics.json").write_text("{not json")
    was_running = ray.is_initialized()
    assert main(["serve", str(folder), "--port", str(free_port())]) == 2
    _one_line(capsys.readouterr().err)
    assert ray.is_initialized() == was_running  # no Ray was started


def test_serve_refuses_a_port_in_use_before_ray_starts(models, capsys):
    import ray

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        was_running = ray.is_initialized()
        assert main(["serve", str(models["conv"]), "--port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    _one_line(err)
    assert "cannot listen on 127.0.0.1:" in err
    assert ray.is_initialized() == was_running


@pytest.mark.parametrize("flags", [["--port", "0"], ["--port", "70000"], ["--replicas", "0"],
                                   ["--max-batch-size", "0"], ["--gpus-per-replica", "-1"],
                                   ["--max-infer-batch", "0"]])
def test_serve_flags_are_checked(flags, models, capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", str(models["conv"]), *flags])
    assert e.value.code == 2
    _one_line(capsys.readouterr().err)


@contextlib.contextmanager
def _tuner_serve(model_dir: Path, *flags: str):
    """``tuner serve MODEL --port P FLAGS`` in a subprocess, yielded once it says it serves, as
    {"url", "proc", "lines", "started"}; the body ends it with SIGINT. Afterwards: it exited 0 and
    every process it started is gone. Runs before the module's service exists (one Ray at a time)."""
    import threading

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "-q", "serve", str(model_dir), "--port", str(port), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "RAY_enable_metrics_collection": "0"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not any(f"at {url}" in line for line in lines):  # printed once the app runs
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.5)
        started = _descendants(proc.pid)
        assert started, "tuner serve started no Ray processes?"
        yield {"url": url, "proc": proc, "lines": lines, "started": started}
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)
    assert proc.returncode == 0, "".join(lines)[-3000:]
    assert _wait_gone(started) == [], f"processes left running after tuner serve {' '.join(flags)} stopped"


def test_tuner_serve_serves_until_interrupted(models, images, digits):
    """The real command: it says where it serves, answers PNGs and tritonclient's infer requests
    (JSON and binary, UINT8 and FP32) as ``tuner.denoise`` in-process, and Ctrl-C (SIGINT) ends it
    and every Ray process it started."""
    with _tuner_serve(models["conv"]) as s:
        assert requests.get(f"{s['url']}/healthz", timeout=TIMEOUT).text == "ok\n"
        r = requests.post(f"{s['url']}/denoise", data=images["8x8.png"], timeout=TIMEOUT)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert _close(_decode(r.content), _expected(models["conv"], images["8x8.png"]))
        client = _client(s["url"])
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("denoiser")
        batch = digits.test[:6]  # (6, 1, 8, 8) uint8
        for a in (batch, batch.astype(np.float32) / 255):
            for binary in (False, True):
                got = _infer(client, a, binary)
                assert _within(got, _expected_tensor(models["conv"], a)), (a.dtype, binary)
        client.close()
        s["proc"].send_signal(signal.SIGINT)


def test_serve_haproxy_is_refused_on_a_cluster_before_ray_starts(models, capsys):
    import ray

    was_running = ray.is_initialized()
    assert main(["serve", str(models["conv"]), "--haproxy", "--address", "auto"]) == 2
    err = capsys.readouterr().err
    _one_line(err)
    assert "RAY_SERVE_ENABLE_HA_PROXY=1" in err and ray.is_initialized() == was_running


@pytest.mark.slow  # a second Serve service with HAProxy (~45 s): the slow lane; plain `tuner serve` is in the default one
def test_tuner_serve_haproxy_answers_refuses_and_stops(models, images):
    """``--haproxy`` (Ray Serve's high-throughput mode): HAProxy in front, requests straight to the
    replica. Same answers, same refusals, and Ctrl-C ends every process it started."""
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("tuner-haproxy-*"))
    shared = set(Path("/tmp/haproxy-serve").glob("*"))  # Ray's default folder, which we do not use
    with _tuner_serve(models["conv"], "--haproxy") as s:
        mine = set(Path(tempfile.gettempdir()).glob("tuner-haproxy-*")) - before
        assert len(mine) == 1 and list(mine.pop().rglob("haproxy.cfg")), "HAProxy's state is not in its own folder"
        url = s["url"]
        assert "HAProxy" in "".join(s["lines"])
        _wait_healthy(url, 60)
        names = []
        for pid in _alive(_descendants(s["proc"].pid)):
            with contextlib.suppress(OSError):  # gone in between
                names.append(Path(f"/proc/{pid}/comm").read_text().strip())
        assert "haproxy" in names, names  # HAProxy, not Serve's Python proxy, takes the connections
        for name in ("8x8.png", "24x13.png"):
            r = requests.post(f"{url}/denoise", data=images[name], timeout=TIMEOUT)
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            assert _close(_decode(r.content), _expected(models["conv"], images[name]))
        for name in ("not an image", "empty", "too many bytes", "wrong method", "wrong path"):
            method, path, body, status, words = HOSTILE[name]
            r = requests.request(method, url + path, data=body, timeout=TIMEOUT)
            assert r.status_code == status and words in r.text, (name, r.status_code, r.text[:300])
        assert requests.get(f"{url}/model", timeout=TIMEOUT).json()["config"]["trial"]["arch"] == "conv"
        client = _client(url)  # the binary data extension's header passes through HAProxy both ways
        a = np.random.default_rng(0).integers(0, 256, (3, 1, 9, 11), dtype=np.uint8)
        assert _within(_infer(client, a, binary=True), _expected_tensor(models["conv"], a))
        client.close()
        s["proc"].send_signal(signal.SIGINT)
    assert set(Path(tempfile.gettempdir()).glob("tuner-haproxy-*")) == before  # removed at the stop
    assert set(Path("/tmp/haproxy-serve").glob("*")) <= shared


def test_serve_yaml_is_a_serve_config_for_this_app(models):
    """serve.yaml (the README's `serve run` / `serve deploy` file) passes Ray's own schema, imports
    app_builder, and its args are ServeArgs that build the deployment it describes."""
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "serve.yaml").read_text())
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    module, _, name = app["import_path"].partition(":")
    assert getattr(importlib.import_module(module), name) is app_builder
    args = ServeArgs.model_validate(app["args"])
    deployment = app_builder({**app["args"], "model_dir": str(models["conv"])})._bound_deployment
    assert deployment.name == "Denoiser" and deployment.num_replicas == args.replicas
    assert deployment.ray_actor_options["num_gpus"] == args.gpus_per_replica
    with pytest.raises(ValueError, match="replica"):  # a misspelt key is refused, not ignored
        ServeArgs.model_validate({**app["args"], "replica": 2})


# ---------------------------------------------------------------- one service for the rest of the module

@pytest.fixture(scope="module")
def service(models):
    """Ray started in this process, Serve on a free port: the conv model at /, the dense one at /dense
    (without Serve's access log, as ``tuner serve --no-access-log``)."""
    import ray
    from ray import serve

    if ray.is_initialized():  # another module's search; its results are on disk already
        ray.shutdown()
    before = _descendants(os.getpid())
    os.environ.setdefault("RAY_enable_metrics_collection", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # A 50 ms window, so the concurrent requests below reliably land in one batch on a loaded machine.
    serve.run(app_builder({"model_dir": str(models["conv"]), "max_batch_size": 8, "batch_wait_timeout_s": 0.05,
                           "max_infer_batch": 8}), name="conv", route_prefix="/")
    serve.run(app_builder({"model_dir": str(models["dense"]), "access_log": False}), name="dense", route_prefix="/dense")
    started = {p: s for p, s in _descendants(os.getpid()).items() if p not in before}

    def stop() -> list[int]:
        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
        return _wait_gone(started)

    url = f"http://127.0.0.1:{port}"
    _wait_healthy(url, 60)
    yield {"url": url, "stop": stop, "started": started}
    stop()


def _denoise(url: str, body: bytes) -> requests.Response:
    return requests.post(f"{url}/denoise", data=body, timeout=TIMEOUT)


def test_denoise_matches_tuner_denoise(service, models, images, tmp_path):
    """Two sizes, RGB input to a grayscale model, a JPEG: the PNG that comes back is what
    `tuner denoise` writes for the same file, to 1/255."""
    src = tmp_path / "in"
    src.mkdir()
    for name, data in images.items():
        (src / name).write_bytes(data)
    assert main(["denoise", str(src), "--model", str(models["conv"]), "--out", str(tmp_path / "out")]) == 0
    for name, data in images.items():
        r = _denoise(service["url"], data)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", (name, r.text[:200])
        got = _decode(r.content)
        want = np.asarray(Image.open(tmp_path / "out" / (Path(name).stem + ".png")))
        assert got.shape == want.shape == Image.open(io.BytesIO(data)).size[::-1], name
        assert _close(got, want), name


def test_model_and_healthz(service, models):
    assert requests.get(f"{service['url']}/healthz", timeout=TIMEOUT).text == "ok\n"
    info = requests.get(f"{service['url']}/model", timeout=TIMEOUT).json()
    assert info["config"] == json.loads((models["conv"] / "config.json").read_text())
    assert info["metrics"] == json.loads((models["conv"] / "metrics.json").read_text())
    assert info["replica"]["device"] == "cpu"  # no --gpus-per-replica: the CPU, even on a GPU machine
    assert info["replica"]["max_batch_size"] == 8
    dense = requests.get(f"{service['url']}/dense/model", timeout=TIMEOUT).json()
    assert dense["config"]["trial"]["arch"] == "dense"


def test_the_access_log_is_on_unless_turned_off(service, images):
    """Each replica writes Ray Serve's line per request in its log file, as Serve users expect;
    ``access_log: false`` (``tuner serve --no-access-log``; the dense application here) writes none."""
    import ray

    for prefix in ("", "/dense"):
        for _ in range(3):
            assert requests.get(f"{service['url']}{prefix}/healthz", timeout=TIMEOUT).status_code == 200
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    deadline = time.monotonic() + 30
    while True:  # a replica's log handler may flush a moment after it answers
        text = {app: "".join(f.read_text(errors="replace") for f in logs.glob(f"replica_{app}_*.log"))
                for app in ("conv", "dense")}
        if "GET /healthz 200" in text["conv"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "GET /healthz 200" in text["conv"], text["conv"][-2000:]
    assert text["dense"] and "/healthz" not in text["dense"], text["dense"][-2000:]


def test_concurrent_requests_are_batched_and_all_correct(service, models, images):
    """24 requests from 12 threads, two image sizes mixed: every answer is its own image's
    denoised version, and the replica ran batches of more than one request."""
    url = service["url"]
    before = requests.get(f"{url}/model", timeout=TIMEOUT).json()["replica"]
    bodies = [images["8x8.png"], images["24x13.png"]] * 12
    want = {b: _expected(models["conv"], b) for b in set(bodies)}
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda b: _denoise(url, b), bodies))
    for body, r in zip(bodies, answers):
        assert r.status_code == 200, r.text[:200]
        assert _close(_decode(r.content), want[body])
    after = requests.get(f"{url}/model", timeout=TIMEOUT).json()["replica"]
    assert after["images"] - before["images"] == len(bodies)
    assert after["largest_batch"] > 1, after
    assert after["batches"] - before["batches"] < len(bodies), after
    assert after["largest_batch"] <= 8  # --max-batch-size holds


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _huge_png_header(side: int) -> bytes:
    """A 100-byte PNG whose header claims side x side pixels: refused without decoding."""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


def _chunks(total: int, size: int = 2**20):
    """A chunked upload (no Content-Length) of ``total`` zero bytes."""
    while total > 0:
        yield b"\x00" * min(size, total)
        total -= size


HOSTILE = {  # name: (method, path, body, status, words the one-line answer holds)
    "not an image": ("POST", "/denoise", b"hello, not an image", 400, "not a readable PNG/JPEG"),
    "truncated": ("POST", "/denoise", "8x8.png:60", 400, "not a readable PNG/JPEG"),
    "empty": ("POST", "/denoise", b"", 400, "empty"),
    "too many pixels": ("POST", "/denoise", _huge_png_header(8000), 413, "over 50,000,000 pixels"),
    "too many bytes": ("POST", "/denoise", b"\x00" * (MAX_BODY_BYTES + 1), 413, "over the limit"),
    "too many bytes, chunked": ("POST", "/denoise", "chunked", 413, "over the limit"),
    "dense, wrong size": ("POST", "/dense/denoise", "24x13.png", 400, "takes only 8x8 images"),
    "wrong method": ("GET", "/denoise", None, 405, "Method Not Allowed"),
    "wrong method on /model": ("POST", "/model", b"x", 405, "Method Not Allowed"),
    "wrong path": ("POST", "/denoise/x", b"x", 404, "Not Found"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_request_is_refused_and_the_service_still_answers(name, service, models, images):
    method, path, body, status, words = HOSTILE[name]
    if body == "chunked":
        body = _chunks(MAX_BODY_BYTES + 2**20)
    elif isinstance(body, str):
        file, _, cut = body.partition(":")
        body = images[file][:int(cut)] if cut else images[file]
    r = requests.request(method, service["url"] + path, data=body, timeout=TIMEOUT)
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert words in r.text
    if status in (400, 413):
        assert r.text.count("\n") == 1 and r.headers["content-type"].startswith("text/plain"), r.text
    for prefix in ("", "/dense"):  # both applications still denoise correctly
        good = _denoise(service["url"] + prefix, images["8x8.png"])
        assert good.status_code == 200
        assert _close(_decode(good.content), _expected(models["dense" if prefix else "conv"], images["8x8.png"]))


# ---------------------------------------------------------------- the Open Inference Protocol, with tritonclient

@pytest.mark.parametrize("dtype", ["UINT8", "FP32"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "JSON"])
def test_infer_matches_tuner_denoise(dtype, binary, service, models, digits):
    """A batch of digits and an odd-sized image, through tritonclient: what ``tuner.denoise`` makes of
    the same tensors in-process, to 1/255, in the datatype sent."""
    client = _client(service["url"])
    big = np.kron(digits.test[:2], np.ones((1, 1, 3, 2), np.uint8))[..., :13]  # (2, 1, 24, 13)
    for a in (digits.test[:8], big):
        a = a if dtype == "UINT8" else a.astype(np.float32) / 255
        assert _within(_infer(client, a, binary), _expected_tensor(models["conv"], a))
    client.close()


def test_protocol_metadata_matches_the_model(service, models):
    """Server and model metadata through tritonclient, for the conv model (any size) and the dense
    one (8x8 only, at /dense); an unknown model or version is the protocol's 404."""
    client = _client(service["url"])
    server = client.get_server_metadata()
    assert server["name"] == "tuner" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("denoiser")
    assert meta == client.get_model_metadata("denoiser", model_version="1")
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"] + meta["outputs"]] == [
        ("INPUT", "UINT8", [-1, 1, -1, -1]), ("OUTPUT", "UINT8", [-1, 1, -1, -1])]
    config = json.loads((models["conv"] / "config.json").read_text())
    p = meta["parameters"]
    assert p["device"] == "cpu" and p["experiment"] == config["experiment"] and p["max_batch_size"] == 8
    assert (p["tile"], p["tile_overlap"]) == (512, 32)
    dense = _client(service["url"] + "/dense")
    assert dense.get_model_metadata("denoiser")["inputs"][0]["shape"] == [-1, 1] + config["image_shape"][1:]
    assert dense.is_model_ready("denoiser") and not client.is_model_ready("resnet")
    for name, version in (("resnet", ""), ("denoiser", "2")):
        with pytest.raises(InferenceServerException) as e:
            client.get_model_metadata(name, model_version=version)
        assert e.value.status() == "404" and "unknown" in e.value.message()
    x = httpclient.InferInput("INPUT", [1, 1, 8, 8], "UINT8").set_data_from_numpy(np.zeros((1, 1, 8, 8), np.uint8))
    answer = client.infer("denoiser", [x], model_version="1", request_id="req-7").get_response()
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("denoiser", "1", "req-7")
    with pytest.raises(InferenceServerException) as e:  # the stated batch limit, as tritonclient reports it
        _infer(client, np.zeros((9, 1, 8, 8), np.uint8))
    assert e.value.status() == "400" and "max_batch_size of 8" in e.value.message()
    client.close()
    dense.close()


def test_photo_is_denoised_in_tiles_as_in_process(service, models):
    """A grayscale photo wider than one 512-px tile goes through the replica in tiles, and the
    answer is ``tuner.denoise``'s (which tiles the same way) to 1/255."""
    from skimage import data

    cam = data.camera()  # (512, 512) uint8
    photo = np.hstack([cam[:48], cam[48:96, :120]])[None, None]  # (1, 1, 48, 632): two tiles across
    client = _client(service["url"])
    before = requests.get(f"{service['url']}/model", timeout=TIMEOUT).json()["replica"]["tiled_images"]
    assert _within(_infer(client, photo), _expected_tensor(models["conv"], photo))
    assert requests.get(f"{service['url']}/model", timeout=TIMEOUT).json()["replica"]["tiled_images"] == before + 1
    client.close()


HOSTILE_HTTP = {  # name: (path under /v2/models, body, headers, status, words): what only a server sees
    "unknown model": ("resnet/infer", b"{}", {}, 404, "unknown model 'resnet'"),
    "unknown version": ("denoiser/versions/7/infer", b"{}", {}, 404, "unknown version '7'"),
    "unknown endpoint": ("denoiser/config", None, {}, 404, "no endpoint /v2/models/denoiser/config"),
    "body over the limit": ("denoiser/infer", b" " * (protocol.MAX_INFER_BYTES + 1), {}, 413, "over the limit"),
}


@pytest.mark.parametrize("name", list(HOSTILE_INFER) + list(HOSTILE_HTTP))
def test_hostile_infer_is_refused_and_the_service_still_answers(name, service, models, digits):
    """Each hostile request gets its status and the protocol's ``{"error": ...}``; then the service
    is ready and answers a good request correctly."""
    if name in HOSTILE_INFER:
        make, status, words = HOSTILE_INFER[name]
        (body, headers), path = make(), "denoiser/infer"
    else:
        path, body, headers, status, words = HOSTILE_HTTP[name]
    url = f"{service['url']}/v2/models/{path}"
    r = requests.post(url, data=body, headers=headers, timeout=TIMEOUT) if body is not None else \
        requests.get(url, timeout=TIMEOUT)
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"] == "application/json" and words in r.json()["error"], r.text[:300]
    client = _client(service["url"])
    assert client.is_server_ready() and client.is_model_ready("denoiser")
    good = digits.test[:2]
    assert _within(_infer(client, good), _expected_tensor(models["conv"], good))
    client.close()


def test_shutdown_leaves_no_ray_process(service):
    """Last in the module: Serve and Ray shut down, and every process they started is gone."""
    assert service["started"], "Ray started no processes?"
    assert service["stop"]() == [], "Ray processes left running after ray.shutdown()"
