"""Serving throughput, latency and CPU per image (issues 14 and 21): ``tuner serve``'s Ray Serve
application on localhost against two baselines, the in-process floor and a minimal FastAPI + uvicorn
app (``serve_baseline_fastapi.py``).

Workloads (:data:`WORKLOADS`), each answered and checked by the clients:

- ``png28``: one noisy 28x28 MNIST PNG per ``POST /denoise``, 1, 8 and 32 clients;
- ``infer28``: 64 such digits per Open Inference Protocol request (``POST /v2/models/denoiser/infer``,
  one ``UINT8`` tensor ``[64, 1, 28, 28]`` in the binary data extension, answered in binary), 8 clients;
- ``photo``: one noisy 481x321 grayscale BSD68 photo per binary infer request, 8 clients.

Services: *baseline* (``serve_baseline_fastapi.py``: one process, FastAPI on uvicorn, one PNG per
request, no batching; ``png28`` only), *proxy* (``tuner.serve.app_builder`` behind Serve's HTTP proxy,
as ``tuner serve``) and *haproxy* (behind HAProxy, as ``tuner serve --haproxy``), each Ray service with
1 and 2 replicas. The clients are threads of this process with a keep-alive HTTP connection each;
every cell is bounded by ``--requests`` and ``--seconds`` (whichever comes first), after a warm-up
of one request per client.

What is measured, per cell: images/s and p50 / p99 latency per request (wall clock), and the CPU
time of every service process per image (from /proc: the baseline's process, or every process of
the Ray this script starts: proxy or HAProxy, replicas, controller, raylet, GCS), less what the idle
service uses anyway; the clients' CPU (this process) apart. On a machine shared with other work,
CPU per image is the number the load does not move.

The floor is ``tuner.denoise`` in this process on the same images already decoded, on one thread (a
replica gets one CPU, so PyTorch runs one thread there), in images per CPU-second of that thread:
28x28 at the best of batch sizes 1, 4, 16 and 64, the photo whole (it fits one 512-px tile). Also
timed in-process, per request: reading and writing the PNG, and reading and answering the infer
request (:mod:`tuner.protocol`), which a request costs on top of the model.

Models, untrained (the arithmetic, not the values, sets the speed), or ``--model`` / ``--photo-model``:
digits use the quickstart's best architecture (the two-level U-Net), photos ``search_spaces/bsd68.yaml``'s
best (the three-level residual U-Net of width 16).

    python benchmarks/bench_serve.py                       # about 10 minutes on 2 cores
    python benchmarks/bench_serve.py --requests 600 --seconds 30 --write
    python benchmarks/bench_serve.py --requests 8 --seconds 2 --floor-seconds 0.05 --replicas 1   # a smoke test
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, command_line, describe_machine, table, write_section  # noqa: E402
import tuner  # noqa: E402
from tuner import protocol  # noqa: E402
from tuner.denoise import load_image, to_pil  # noqa: E402
from tuner.model import build_model  # noqa: E402
from tuner.config import TrialConfig  # noqa: E402

SECTION = "bench_serve"
REPLICAS = (1, 2)
N_IMAGES = 16  # distinct images per workload, sent round-robin
INFER_BATCH = 64  # digits per infer request
PHOTO_SHAPE = (321, 481)  # (H, W): BSD68's landscape photos
PHOTOS = REPO.parent / "shared" / "datasets" / "gray" / "BSD68"
# The quickstart's best model in the README (2026-11-23): the two-level U-Net (depth 2, width 16, two
# convs per level, skips, batch norm, 64 latent channels).
QUICKSTART_BEST = TrialConfig(arch="conv", depth=2, width=16, latent_dim=64, convs_per_stage=2, skip=True,
                              batch_norm=True, loss="bce")
# search_spaces/bsd68.yaml's best (docs/benchmarks.md, photos, 2026-12-01): a three-level residual
# U-Net of width 16, 128 latent channels, batch norm.
BSD68_BEST = TrialConfig(arch="conv", depth=3, width=16, latent_dim=128, convs_per_stage=2, skip=True,
                         residual="pixel", batch_norm=True, loss="mse")
MODELS = {"digits": (QUICKSTART_BEST, "the quickstart's best architecture (a two-level U-Net: depth 2, width 16, "
                                      "two 3x3 convs per level, skips, batch norm)"),
          "photos": (BSD68_BEST, "`search_spaces/bsd68.yaml`'s best architecture (a three-level residual U-Net: "
                                 "depth 3, width 16, two 3x3 convs per level, skips, batch norm)")}
SERVICES = {"baseline": "FastAPI + uvicorn, one process (`benchmarks/serve_baseline_fastapi.py`)",
            "proxy": "Ray Serve behind Serve's HTTP proxy (`tuner serve`)",
            "haproxy": "Ray Serve behind HAProxy (`tuner serve --haproxy`)"}


@dataclass(frozen=True)
class Workload:
    """One kind of request the clients send."""

    words: str  # what the report calls it
    model: str  # a key of MODELS
    infer: bool  # an infer request (binary UINT8 [N, 1, H, W]); else one PNG per POST /denoise
    per_request: int  # images per request
    clients: tuple[int, ...]  # concurrent clients, one cell each


WORKLOADS = {
    "png28": Workload("one 28x28 PNG per `POST /denoise`", "digits", False, 1, (1, 8, 32)),
    "infer28": Workload(f"28x28, {INFER_BATCH} per binary `infer` request", "digits", True, INFER_BATCH, (8,)),
    "photo": Workload("one 481x321 grayscale photo per binary `infer` request", "photos", True, 1, (8,)),
}
# The targets: (workload, clients, replicas or None for any, against, least ratio).
TARGETS = [("infer28", 8, None, "floor", 0.5), ("photo", 8, None, "floor", 0.8), ("png28", 32, 2, "baseline", 1.0)]


# ---------------------------------------------------------------- models, images, requests

def export_untrained(folder: Path, config: TrialConfig = QUICKSTART_BEST, size: int = 28) -> Path:
    """A ``best/`` folder holding ``config`` with its initial weights."""
    model = build_model(config, 1, size, size)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "config.json").write_text(json.dumps({
        "format": "tuner-model/1", "experiment": "bench-serve (untrained)", "metric": "val_psnr", "mode": "max",
        "image_shape": [1, size, size], "trial": config.to_dict(), "dataset": {"name": "mnist5k"},
        "eval_noise": {"kind": "gaussian", "level": 0.5, "level_max": None, "seed": 1234}}))
    return folder


def make_images(workload: str, n: int = N_IMAGES) -> np.ndarray:
    """``n`` noisy grayscale images (n, 1, H, W) uint8: MNIST digits, or BSD68's landscape photos at
    sigma 25 (skimage's camera, cropped to 481x321, where BSD68 is not on this machine)."""
    rng = np.random.default_rng(0)
    if WORKLOADS[workload].model == "digits":
        from tuner.data import load_dataset

        clean = load_dataset("mnist5k").test[:n, 0].astype(float)  # (n, 28, 28)
        sigma = 0.5 * 255 / 2
    else:
        from tuner.data import image_files, read_image

        files = image_files(PHOTOS) if PHOTOS.is_dir() else []
        photos = [a[0] for a in (read_image(f, 1) for f in files) if a.shape[1:] == PHOTO_SHAPE][:n]
        if not photos:
            from skimage import data

            photos = [data.camera()[:PHOTO_SHAPE[0], :PHOTO_SHAPE[1]]]
        clean = np.stack([photos[i % len(photos)] for i in range(n)]).astype(float)  # (n, 321, 481)
        sigma = 25
    return np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 255).astype(np.uint8)[:, None]


def png(a: np.ndarray) -> bytes:
    """(1, H, W) uint8 -> PNG bytes."""
    buf = io.BytesIO()
    to_pil(torch.from_numpy(a).float() / 255).save(buf, format="PNG")
    return buf.getvalue()


def infer_body(a: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A binary infer request for the UINT8 tensor ``a``, with the fields ``tritonclient.http`` writes."""
    head = json.dumps({"inputs": [{"name": protocol.INPUT, "shape": list(a.shape), "datatype": "UINT8",
                                   "parameters": {"binary_data_size": a.nbytes}}],
                       "outputs": [{"name": protocol.OUTPUT, "parameters": {"binary_data": True}}]}).encode()
    return head + a.tobytes(), {protocol.HEADER_LENGTH: str(len(head))}


Request = tuple[str, bytes, dict[str, str], Callable[[http.client.HTTPResponse, bytes], bool]]  # path, body, headers, ok


def requests_for(workload: str, images: np.ndarray) -> list[Request]:
    """The requests the clients send round-robin, each with the check of its answer."""
    w = WORKLOADS[workload]
    if not w.infer:
        def ok_png(r, data) -> bool:
            return r.status == 200 and data.startswith(b"\x89PNG")
        return [("/denoise", png(a), {"Content-Type": "image/png"}, ok_png) for a in images]
    out = []
    for i in range(len(images)):
        batch = np.concatenate([images[(i + k) % len(images)][None] for k in range(w.per_request)])  # (N, 1, H, W)
        body, headers = infer_body(batch)

        def ok_infer(r, data, size=batch.nbytes) -> bool:
            n = r.getheader(protocol.HEADER_LENGTH)
            return r.status == 200 and n is not None and len(data) == int(n) + size
        out.append((f"/v2/models/{protocol.MODEL_NAME}/infer", body, headers, ok_infer))
    return out


# ---------------------------------------------------------------- the floor: in-process costs

def _clock(fn, min_seconds: float = 1.0) -> float:
    """CPU seconds of this thread per call of ``fn`` (after one warm-up call), over at least
    ``min_seconds`` of them. CPU time, not wall time: other users of the cores do not inflate it."""
    fn()
    n, t0 = 0, time.thread_time()
    while (elapsed := time.thread_time() - t0) < min_seconds:
        fn()
        n += 1
    return elapsed / n


def _best(fn, seconds: float) -> float:
    """The best of 3 timings of ``fn``, each at least ``seconds`` of CPU time."""
    return min(_clock(fn, seconds) for _ in range(3))


def floor(model_dir: Path, workload: str, images: np.ndarray, seconds: float = 1.0) -> dict[str, Any]:
    """In-process CPU costs on one thread: denoising (the floor: images per CPU-second at the best
    batch size, each the best of 3 timings), and per request the work around the model: the PNGs of
    ``POST /denoise``, or reading, converting and answering an infer request. ``seconds``: the
    least CPU time of each timing."""
    torch.set_num_threads(1)
    model = tuner.load_model(model_dir)
    w = WORKLOADS[workload]
    x = torch.from_numpy(images).float() / 255  # (n, 1, H, W)
    sizes = sorted({1, 4, 16, INFER_BATCH}) if w.model == "digits" else [1]
    best = {}
    for b in sizes:
        batch = torch.cat([x] * -(-b // len(x)))[:b]
        best[b] = b / _best(lambda: tuner.denoise(model, batch, b), seconds)
    at = max(best, key=best.get)
    out = {"floor_ips": best[at], "floor_batch": at, "single_ms": 1e3 / best[1]}
    if w.infer:
        body, headers = requests_for(workload, images[:w.per_request])[0][1:3]
        y = tuner.denoise(model, protocol.to_floats(images[:w.per_request]))
        sig = protocol.Signature(1, None, 4096)

        def around() -> None:  # everything an infer request costs in the replica but the model and HTTP
            req = protocol.parse_infer(body, headers[protocol.HEADER_LENGTH], sig)
            protocol.to_floats(req.images)
            protocol.encode_infer(req, protocol.from_floats(y, req.datatype))
        out["around_ms"] = 1e3 * _best(around, seconds / 2)
    else:
        pngs = [png(a) for a in images]
        decode = _best(lambda: [load_image(b, model, "bench") for b in pngs], seconds) / len(pngs)
        y = tuner.denoise(model, x[0])
        encode = _best(lambda: to_pil(y).save(io.BytesIO(), format="PNG"), seconds / 2)
        out.update(decode_ms=1e3 * decode, encode_ms=1e3 * encode, around_ms=1e3 * (decode + encode))
    return out


# ---------------------------------------------------------------- the services and the load

def cpu_seconds(root: int) -> tuple[float, float]:
    """CPU seconds (user + system) used so far by ``root`` itself and by every process below it
    (from /proc): here, this process (the clients) and the service it started."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, used = {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                f = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(d.name)] = int(f[1])
            used[int(d.name)] = (int(f[11]) + int(f[12])) / tick  # utime, stime
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    below, todo = 0.0, [root]
    while todo:
        for c in children.get(todo.pop(), []):
            below += used[c]
            todo.append(c)
    return used.get(root, 0.0), below


def idle_cpu(seconds: float = 5.0) -> float:
    """CPU seconds per second the service uses with no requests (health checks, polling)."""
    cpu0, t0 = cpu_seconds(os.getpid())[1], time.perf_counter()
    time.sleep(seconds)
    return (cpu_seconds(os.getpid())[1] - cpu0) / (time.perf_counter() - t0)


def load(port: int, requests: list[Request], clients: int, most: int, seconds: float,
         idle: float = 0.0) -> dict[str, Any]:
    """``clients`` threads send ``requests`` round-robin until ``most`` are answered or ``seconds``
    pass. ``idle``: CPU seconds per second the service burns anyway, subtracted from its CPU."""
    lock = threading.Lock()
    state = {"next": 0}
    latencies: list[float] = []
    errors: list[str] = []
    deadline = [0.0]

    def client(i: int, warm: threading.Barrier, go: threading.Barrier) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

        def post(k: int) -> None:
            path, body, headers, ok = requests[k % len(requests)]
            conn.request("POST", path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            if not ok(r, data):
                errors.append(f"{r.status} {data[:100]!r}")

        post(i)  # warm-up: connection, replica, batch queue
        warm.wait()
        go.wait()
        while True:
            with lock:
                k = state["next"]
                state["next"] += 1
            if k >= most or time.perf_counter() > deadline[0]:
                break
            t0 = time.perf_counter()
            post(k)
            with lock:
                latencies.append(time.perf_counter() - t0)
        conn.close()

    warm, go = threading.Barrier(clients + 1), threading.Barrier(clients + 1)
    threads = [threading.Thread(target=client, args=(i, warm, go)) for i in range(clients)]
    for t in threads:
        t.start()
    warm.wait()
    deadline[0] = time.perf_counter() + seconds
    (own0, svc0), t0 = cpu_seconds(os.getpid()), time.perf_counter()
    go.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    own1, svc1 = cpu_seconds(os.getpid())
    lat = np.array(latencies) * 1e3
    n = max(len(lat), 1)
    return {"n": len(lat), "rps": len(lat) / wall, "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "svc_ms": 1e3 * (svc1 - svc0 - idle * wall) / n, "client_ms": 1e3 * (own1 - own0) / n, "errors": errors}


def _get_json(port: int, path: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path)
    out = json.loads(conn.getresponse().read())
    conn.close()
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cell(port: int, service: str, replicas: int, workload: str, clients: int, reqs: list[Request], idle: float,
          args) -> dict[str, Any]:
    ray = service != "baseline"
    before = _get_json(port, "/model")["replica"] if ray else None
    r = load(port, reqs, clients, args.requests, args.seconds, idle)
    w = WORKLOADS[workload]
    mean_batch = None
    if ray and replicas == 1 and not w.infer:
        after = _get_json(port, "/model")["replica"]
        batches = after["batches"] - before["batches"]
        mean_batch = (after["images"] - before["images"]) / batches if batches else None
    per = w.per_request
    r.update(service=service, replicas=replicas, workload=workload, clients=clients, idle=idle, mean_batch=mean_batch,
             ips=r["rps"] * per, svc_ms_image=r["svc_ms"] / per, client_ms_image=r["client_ms"] / per)
    print(f"{service} replicas {replicas} {workload} clients {clients:2d}: {r['ips']:7.1f} images/s, p50 "
          f"{r['p50']:.1f} ms, p99 {r['p99']:.1f} ms ({r['n']} requests, {len(r['errors'])} errors; service "
          f"{r['svc_ms_image']:.2f} CPU ms per image, clients {r['client_ms_image']:.2f})", flush=True)
    return r


def baseline_cells(model_dirs: dict[str, Path], reqs: dict[str, list[Request]], args) -> list[dict[str, Any]]:
    """The FastAPI + uvicorn baseline in a subprocess (the only process below this one while it runs),
    on the PNG workloads (it has no infer endpoint)."""
    workloads = [w for w in args.workloads if not WORKLOADS[w].infer]
    if not workloads:
        return []
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("serve_baseline_fastapi.py")),
                             str(model_dirs["digits"]), "--port", str(port)])
    rows = []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the FastAPI baseline did not start") from None
                time.sleep(0.5)
        idle = idle_cpu()
        print(f"baseline: idle service uses {idle:.3f} CPU-s per s", flush=True)
        for workload in workloads:
            for clients in WORKLOADS[workload].clients:
                rows.append(_cell(port, "baseline", 1, workload, clients, reqs[workload], idle, args))
    finally:
        proc.terminate()
        proc.wait(30)
    return rows


def serve_cells(model_dirs: dict[str, Path], reqs: dict[str, list[Request]], args, ingress: str) -> list[dict[str, Any]]:
    """Every (replicas, workload, clients) cell against one Ray Serve started here, behind ``ingress``;
    the application is re-deployed with each model and replica count."""
    import ray
    from ray import serve

    from tuner.serve import app_builder
    from tuner.server import HAPROXY_ENV

    os.environ.setdefault("RAY_enable_metrics_collection", "0")
    for k in HAPROXY_ENV:  # read by the processes ray.init starts, as `tuner serve --haproxy` sets them
        if ingress == "haproxy":
            os.environ[k] = HAPROXY_ENV[k]
        else:
            os.environ.pop(k, None)
    ray.init(address="local", num_cpus=max(args.replicas), include_dashboard=False, log_to_driver=False)
    port = _free_port()
    rows = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for replicas in args.replicas:
            for model in dict.fromkeys(WORKLOADS[w].model for w in args.workloads):
                serve.run(app_builder({"model_dir": str(model_dirs[model]), "replicas": replicas,
                                       "max_batch_size": args.max_batch_size, "access_log": args.access_log}),
                          name="bench", route_prefix="/")
                idle = idle_cpu()
                print(f"{ingress} replicas {replicas} ({model}): idle service uses {idle:.3f} CPU-s per s", flush=True)
                for workload in (w for w in args.workloads if WORKLOADS[w].model == model):
                    for clients in WORKLOADS[workload].clients:
                        rows.append(_cell(port, ingress, replicas, workload, clients, reqs[workload], idle, args))
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


# ---------------------------------------------------------------- the report

def report(rows: list[dict[str, Any]], floors: dict[str, dict[str, Any]], args, load_avg) -> str:
    busy = max(load_avg) > 2.5
    given = {"digits": args.model, "photos": args.photo_model}
    models = {m: f"`{given[m]}`" if given[m] else f"{words}, untrained weights" for m, (_, words) in MODELS.items()}
    body = ["## Serving (`bench_serve.py`)", "",
            describe_machine(1) + f" Load average (1 min) {load_avg[0]:.2f} at the start, {load_avg[1]:.2f} at the "
            "end, on 2 cores" + (": other work ran beside it" if busy else "") + "; the clients run on the same "
            "cores as the service.", "",
            f"Command: `{command_line()}`", "",
            "Models: digits, " + models["digits"] + "; photos, " + models["photos"] + " (untrained: the "
            "arithmetic, not the values, sets the speed).", "",
            "In-process floor: `tuner.denoise` on decoded images on one thread, in images per CPU-second of that "
            "thread (CPU time, which the machine's other load does not inflate), at the best batch size; and the "
            "CPU a request adds in-process around the model (the PNGs of `POST /denoise`; reading, converting and "
            "answering an infer request, `tuner.protocol`), per request:", ""]
    frows = [[w, WORKLOADS[w].words, f"{f['floor_ips']:.1f}", f["floor_batch"], f"{f['single_ms']:.2f}",
              f"{f['around_ms']:.3f}"] for w, f in floors.items()]
    body += [table(["workload", "requests", "floor images/CPU-s", "at batch", "denoise 1 image, CPU ms",
                    "around the model, CPU ms / request"], frows), ""]
    base = {r["clients"]: r for r in rows if r["service"] == "baseline" and r["workload"] == "png28"}
    srows = []
    for r in rows:
        f = floors[r["workload"]]
        per_cpu = 1e3 / r["svc_ms_image"] if r["svc_ms_image"] > 0 else float("inf")
        b = base.get(r["clients"]) if r["workload"] == "png28" else None
        srows.append([r["service"], r["replicas"], r["workload"], r["clients"], f"{r['ips']:.1f}", f"{r['p50']:.1f}",
                      f"{r['p99']:.1f}", f"{r['svc_ms_image']:.3f}", f"{per_cpu:.0f}", f"{per_cpu / f['floor_ips']:.3f}",
                      f"{per_cpu * b['svc_ms_image'] / 1e3:.2f}" if b else "-", f"{r['client_ms_image']:.3f}",
                      "-" if r["mean_batch"] is None else f"{r['mean_batch']:.1f}", r["n"], len(r["errors"])])
    idle = ", ".join(dict.fromkeys(f"{r['idle']:.3f}" for r in rows))
    body += ["Services: " + "; ".join(f"*{k}*: {v}" for k, v in SERVICES.items() if k in args.services)
             + f". Ray Serve with `--max-batch-size {args.max_batch_size}`"
             + ("" if args.access_log else " and `--no-access-log` (no line per request in its log files; the "
                "baseline writes none either)") + f". Each cell at most {args.requests} "
             f"requests or {args.seconds:g} s. *images/s* and the latencies (per request) are wall-clock; *service "
             "CPU ms / image* is the CPU time of all the service's processes per image (from /proc), less what the "
             f"idle service uses anyway ({idle} CPU-s per s, measured for 5 s before each service's cells); "
             "*images / CPU-s* is its inverse, against the floor's and against the FastAPI baseline's at the same "
             "clients; the clients' own CPU is apart:", "",
             table(["service", "replicas", "workload", "clients", "images/s", "p50 ms", "p99 ms",
                    "service CPU ms / image", "images / CPU-s", "vs floor", "vs baseline", "clients CPU ms / image",
                    "mean batch", "requests", "errors"], srows), ""]
    lines = []
    for workload, clients, replicas, against, least in TARGETS:
        f = floors.get(workload)
        for r in rows:
            if (r["workload"], r["clients"]) != (workload, clients) or (replicas and r["replicas"] != replicas) \
                    or r["service"] == "baseline" or f is None:
                continue
            per_cpu = 1e3 / r["svc_ms_image"] if r["svc_ms_image"] > 0 else float("inf")
            if against == "floor":
                ratio, of = per_cpu / f["floor_ips"], f"the in-process floor's {f['floor_ips']:.0f}"
            elif clients in base:
                b = 1e3 / base[clients]["svc_ms_image"]
                ratio, of = per_cpu / b, f"the FastAPI baseline's {b:.0f} (p50 {base[clients]['p50']:.1f} ms, p99 {base[clients]['p99']:.1f} ms)"
            else:
                continue
            request_ms = r["svc_ms_image"] * WORKLOADS[workload].per_request
            model_ms = 1e3 * WORKLOADS[workload].per_request / f["floor_ips"]
            lines.append(f"- Target {WORKLOADS[workload].words}, {clients} clients, {r['service']}, {r['replicas']} "
                         f"replica(s): {per_cpu:.0f} images per service CPU-second = **{ratio:.2f}** of {of} "
                         f"(target {least}: **{'met' if ratio >= least else 'missed'}**); {r['ips']:.0f} images/s, "
                         f"p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms per request. Where a request's "
                         f"{request_ms:.2f} service CPU ms go: {model_ms:.2f} model at the floor, {f['around_ms']:.2f} "
                         f"around it in-process, **{request_ms - model_ms - f['around_ms']:.2f} HTTP, "
                         + ("HAProxy and the replica's own HTTP server" if r["service"] == "haproxy"
                            else "Serve's proxy and the call into the replica") + ", FastAPI and Serve**.")
    body += ["Targets (issue 21), and where the time goes:", "", *lines]
    return "\n".join(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a best/ folder for the digits (conv, 1 channel); "
                        "default: QUICKSTART_BEST, untrained")
    parser.add_argument("--photo-model", type=Path, help="a best/ folder for the photos (conv, 1 channel); "
                        "default: BSD68_BEST, untrained")
    parser.add_argument("--requests", type=int, default=300, help="most requests per cell (default 300)")
    parser.add_argument("--seconds", type=float, default=15, help="most seconds per cell (default 15)")
    parser.add_argument("--max-batch-size", type=int, default=16, help="the Ray service's /denoise batch size")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--replicas", type=int, nargs="+", default=list(REPLICAS), choices=REPLICAS)
    parser.add_argument("--services", nargs="+", default=list(SERVICES), choices=list(SERVICES),
                        help="baseline: the FastAPI app; proxy: tuner serve; haproxy: tuner serve --haproxy")
    parser.add_argument("--floor-seconds", type=float, default=1.0,
                        help="least CPU seconds of each in-process timing (default 1; 0.05 for a smoke test)")
    parser.add_argument("--no-access-log", dest="access_log", action="store_false",
                        help="Ray Serve without its access log (tuner serve --no-access-log), as the baseline runs")
    parser.add_argument("--write", action="store_true", help="replace this section of docs/benchmarks.md")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        model_dirs = {"digits": args.model or export_untrained(Path(tmp) / "digits", QUICKSTART_BEST),
                      "photos": args.photo_model or export_untrained(Path(tmp) / "photos", BSD68_BEST, 64)}
        images = {w: make_images(w) for w in args.workloads}
        reqs = {w: requests_for(w, images[w]) for w in args.workloads}
        floors = {w: floor(model_dirs[WORKLOADS[w].model], w, images[w], args.floor_seconds) for w in args.workloads}
        for w, f in floors.items():
            print(f"floor {w}: {f['floor_ips']:.1f} images/CPU-s at batch {f['floor_batch']}; around the model "
                  f"{f['around_ms']:.3f} CPU ms per request", flush=True)
        rows = []
        for service in args.services:
            if service == "baseline":
                rows += baseline_cells(model_dirs, reqs, args)
            else:
                rows += serve_cells(model_dirs, reqs, args, service)
    text = report(rows, floors, args, (load_before, os.getloadavg()[0]))
    print(text)
    if args.write:
        print(f"wrote {write_section(SECTION, text)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
