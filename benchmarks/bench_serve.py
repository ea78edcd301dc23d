"""Serving throughput and latency (issue 14): ``tuner serve``'s Ray Serve application on localhost
against the in-process floor.

The service is the real application (:func:`tuner.serve.app_builder`) on 127.0.0.1, behind Ray
Serve's HTTP proxy (``tuner serve``) and behind HAProxy (``tuner serve --haproxy``, Ray Serve's
high-throughput mode); the clients are threads of this process, each with its own keep-alive HTTP
connection, sending one PNG per request and reading the denoised PNG back. For 28x28 and 256x256
grayscale images, 1, 8 and 32 concurrent clients, 1 and 2 replicas: images per second and p50 /
p99 latency. Every cell is bounded by ``--requests`` and ``--seconds`` (whichever comes first),
after a warm-up of one request per client.

The floor is ``tuner.denoise`` in this process on the same images, already decoded, in batches
(the fastest of 1, 4 and ``--max-batch-size``) on one thread (a replica gets one CPU, so PyTorch
runs one thread there), timed in CPU seconds of that thread. Also timed in-process, per image:
reading the PNG (``tuner.denoise.load_image``) and writing the answer PNG, which a request costs on
top of the model. For the service, besides wall-clock images/s and latencies, the CPU time of every
process involved (this one with the clients, and the Ray it started) per request: on a machine
shared with other work, that is the number the load does not move, and the difference to the
in-process CPU per image is the per-request overhead of HTTP, Ray Serve's proxy and the replica call.

The model is the quickstart's best architecture (the two-level U-Net) with untrained weights (the
arithmetic, not the values, sets the speed), or ``--model runs/NAME/best``.

    python benchmarks/bench_serve.py                       # ~6 minutes on 2 cores
    python benchmarks/bench_serve.py --requests 600 --seconds 30 --write
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, describe_machine, table, write_section  # noqa: E402
import tuner  # noqa: E402
from tuner.denoise import load_image, to_pil  # noqa: E402
from tuner.model import build_model  # noqa: E402
from tuner.spec import TrialConfig  # noqa: E402

SECTION = "bench_serve"
SIZES = (28, 256)
CLIENTS = (1, 8, 32)
REPLICAS = (1, 2)
N_IMAGES = 16  # distinct images per size, sent round-robin
# The quickstart's best model in the README (2026-11-23): the two-level U-Net (depth 2, width 16, two
# convs per level, skips, batch norm, 64 latent channels).
QUICKSTART_BEST = TrialConfig(arch="conv", depth=2, width=16, latent_dim=64, convs_per_stage=2, skip=True,
                              batch_norm=True, loss="bce")
MODEL_WORDS = "a two-level U-Net: depth 2, width 16, two 3x3 convs per level, skips, batch norm"
INGRESSES = {"proxy": "Serve's HTTP proxy (default)", "haproxy": "HAProxy (`--haproxy`)"}


def export_untrained(folder: Path, size: int = 28) -> Path:
    """A ``best/`` folder holding QUICKSTART_BEST with its initial weights."""
    model = build_model(QUICKSTART_BEST, 1, size, size)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "config.json").write_text(json.dumps({
        "format": "tuner-model/1", "experiment": "bench-serve (untrained)", "metric": "val_psnr", "mode": "max",
        "image_shape": [1, size, size], "trial": QUICKSTART_BEST.to_dict(), "dataset": {"name": "mnist5k"},
        "eval_noise": {"kind": "gaussian", "level": 0.5, "level_max": None, "seed": 1234}}))
    return folder


def make_images(size: int, n: int = N_IMAGES) -> list[bytes]:
    """``n`` noisy grayscale PNGs of size x size: MNIST digits (28) or crops of skimage's camera (256)."""
    rng = np.random.default_rng(size)
    if size == 28:
        from tuner.data import load_dataset

        clean = load_dataset("mnist5k").test[:n, 0]  # (n, 28, 28) uint8
    else:
        from skimage import data

        cam = data.camera()  # (512, 512) uint8
        clean = np.stack([cam[i * 16:i * 16 + size, i * 8:i * 8 + size] for i in range(n)])
    noisy = np.clip(clean + rng.normal(0, 0.5 * 255 / 2, clean.shape), 0, 255).astype(np.uint8)
    out = []
    for a in noisy:
        buf = io.BytesIO()
        to_pil(torch.from_numpy(a[None]).float() / 255).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _clock(fn, min_seconds: float = 1.0) -> float:
    """CPU seconds of this thread per call of ``fn`` (after one warm-up call), over at least
    ``min_seconds`` of them. CPU time, not wall time: other users of the cores do not inflate it."""
    fn()
    n, t0 = 0, time.thread_time()
    while (elapsed := time.thread_time() - t0) < min_seconds:
        fn()
        n += 1
    return elapsed / n


def cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) used so far by ``root`` and every process below it (from /proc):
    here, this process (the clients) and the Ray it started (proxy, replicas, controller, raylet)."""
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
    total, todo = used.get(root, 0.0), [root]
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    while todo:
        for c in children.get(todo.pop(), []):
            total += used[c]
            todo.append(c)
    return total


def floor(model_dir: Path, images: list[bytes], batch_size: int) -> dict[str, float]:
    """In-process CPU costs on one thread: denoise in batches (the floor: the best of batch sizes 1,
    4 and ``batch_size``, each the best of 3 timings), and per image the batch-1 denoise, reading
    the PNG and writing the answer PNG."""
    torch.set_num_threads(1)
    model = tuner.load_model(model_dir)
    x = [load_image(b, model, "bench") for b in images]
    best = {}
    for b in sorted({1, 4, batch_size}):
        batch = torch.stack((x * -(-b // len(x)))[:b])  # (b, 1, H, W)
        best[b] = b / min(_clock(lambda: tuner.denoise(model, batch, b)) for _ in range(3))
    floor_batch = max(best, key=best.get)
    decode = min(_clock(lambda: [load_image(b, model, "bench") for b in images]) for _ in range(3)) / len(images)
    y = tuner.denoise(model, x[0])

    def encode():
        to_pil(y).save(io.BytesIO(), format="PNG")

    return {"floor_ips": best[floor_batch], "floor_batch": floor_batch, "single_ms": 1e3 / best[1],
            "decode_ms": 1e3 * decode, "encode_ms": 1e3 * min(_clock(encode, 0.5) for _ in range(3))}


def idle_cpu(seconds: float = 5.0) -> float:
    """CPU seconds per second the service and Ray use with no requests (health checks, polling)."""
    cpu0, t0 = cpu_seconds(os.getpid()), time.perf_counter()
    time.sleep(seconds)
    return (cpu_seconds(os.getpid()) - cpu0) / (time.perf_counter() - t0)


def load(port: int, images: list[bytes], clients: int, requests: int, seconds: float,
         idle: float = 0.0) -> dict[str, Any]:
    """``clients`` threads send POST /denoise until ``requests`` are answered or ``seconds`` pass.
    ``idle``: CPU seconds per second the service burns anyway, subtracted from the CPU per request."""
    lock = threading.Lock()
    state = {"next": 0}
    latencies: list[float] = []
    errors: list[str] = []
    deadline = [0.0]

    def client(i: int, warm: threading.Barrier, go: threading.Barrier) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

        def post(body: bytes) -> None:
            conn.request("POST", "/denoise", body=body, headers={"Content-Type": "image/png"})
            r = conn.getresponse()
            data = r.read()
            if r.status != 200 or not data.startswith(b"\x89PNG"):
                errors.append(f"{r.status} {data[:100]!r}")

        post(images[i % len(images)])  # warm-up: connection, replica, batch queue
        warm.wait()
        go.wait()
        while True:
            with lock:
                k = state["next"]
                state["next"] += 1
            if k >= requests or time.perf_counter() > deadline[0]:
                break
            t0 = time.perf_counter()
            post(images[k % len(images)])
            with lock:
                latencies.append(time.perf_counter() - t0)
        conn.close()

    warm, go = threading.Barrier(clients + 1), threading.Barrier(clients + 1)
    threads = [threading.Thread(target=client, args=(i, warm, go)) for i in range(clients)]
    for t in threads:
        t.start()
    warm.wait()
    deadline[0] = time.perf_counter() + seconds
    cpu0, t0 = cpu_seconds(os.getpid()), time.perf_counter()
    go.wait()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, cpu_seconds(os.getpid()) - cpu0
    lat = np.array(latencies) * 1e3
    return {"n": len(lat), "ips": len(lat) / wall, "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "cpu_ms": 1e3 * (cpu - idle * wall) / max(len(lat), 1),
            "errors": errors}


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


def serve_cells(model_dir: Path, images: dict[int, list[bytes]], args, ingress: str) -> list[dict[str, Any]]:
    """Every (replicas, size, clients) cell against one Ray Serve started here, behind ``ingress``."""
    import ray
    from ray import serve

    from tuner.serve import HAPROXY_ENV, app_builder

    os.environ.setdefault("RAY_enable_metrics_collection", "0")
    for k in HAPROXY_ENV:  # read by the processes ray.init starts, as `tuner serve --haproxy` sets them
        if ingress == "haproxy":
            os.environ[k] = HAPROXY_ENV[k]
        else:
            os.environ.pop(k, None)
    ray.init(address="local", num_cpus=max(REPLICAS), include_dashboard=False, log_to_driver=False)
    port = _free_port()
    rows = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for replicas in args.replicas:
            serve.run(app_builder({"model_dir": str(model_dir), "replicas": replicas,
                                   "max_batch_size": args.max_batch_size}), name="bench", route_prefix="/")
            idle = idle_cpu()
            print(f"{ingress} replicas {replicas}: idle service uses {idle:.3f} CPU-s per s", flush=True)
            for size in args.sizes:
                for clients in args.clients:
                    before = _get_json(port, "/model")["replica"]
                    r = load(port, images[size], clients, args.requests, args.seconds, idle)
                    after = _get_json(port, "/model")["replica"]
                    batches = after["batches"] - before["batches"]
                    r.update(ingress=ingress, replicas=replicas, size=size, clients=clients, idle=idle,
                             mean_batch=(after["images"] - before["images"]) / batches
                             if replicas == 1 and batches else None)
                    print(f"{ingress} replicas {replicas} {size}x{size} clients {clients:2d}: {r['ips']:7.1f} images/s, "
                          f"p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms ({r['n']} requests, "
                          f"{len(r['errors'])} errors; {r['cpu_ms']:.1f} CPU ms per request)", flush=True)
                    rows.append(r)
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def report(rows: list[dict[str, Any]], floors: dict[int, dict[str, float]], args, load_avg) -> str:
    busy = max(load_avg) > 2.5
    body = ["## Serving (`bench_serve.py`)", "",
            describe_machine(1) + f" Load average (1 min) {load_avg[0]:.2f} at the start, {load_avg[1]:.2f} at the "
            "end, on 2 cores" + (": other work ran beside it" if busy else "") + "; the clients run on the same "
            "cores as the service.", "",
            f"Command: `{command_line()}`", "",
            f"Model: {'`' + str(args.model) + '`' if args.model else 'the quickstart best model architecture (' + MODEL_WORDS + '), untrained weights: the arithmetic, not the values, sets the speed'}.", "",
            "In-process floor: `tuner.denoise` on decoded images on one thread, the best of batch sizes 1, 4 and "
            f"{args.max_batch_size}, in images per CPU-second of that thread (CPU time, which the machine's "
            "other load does not inflate); and the CPU a request adds in-process per image:", ""]
    frows = [[f"{s}x{s}", f"{f['floor_ips']:.0f}", f['floor_batch'], f"{f['single_ms']:.2f}", f"{f['decode_ms']:.2f}",
              f"{f['encode_ms']:.2f}"] for s, f in floors.items()]
    body += [table(["image", "floor images/CPU-s", "at batch", "denoise 1 image, CPU ms", "read PNG, CPU ms",
                    "write PNG, CPU ms"], frows), ""]
    idle = ", ".join(dict.fromkeys(f"{r['idle']:.3f}" for r in rows))
    srows = []
    for r in rows:
        f = floors[r["size"]]
        srows.append([r["ingress"], r["replicas"], f"{r['size']}x{r['size']}", r["clients"], f"{r['ips']:.0f}",
                      f"{r['p50']:.1f}", f"{r['p99']:.1f}", f"{r['ips'] / f['floor_ips']:.3f}", f"{r['cpu_ms']:.1f}",
                      f"{1e3 / r['cpu_ms'] / f['floor_ips']:.3f}",
                      "-" if r["mean_batch"] is None else f"{r['mean_batch']:.1f}", r["n"], len(r["errors"])])
    body += [f"Ray Serve on 127.0.0.1 (`tuner.serve`, `--max-batch-size {args.max_batch_size}`) behind "
             + " or ".join(f"*{k}*: {v}" for k, v in INGRESSES.items() if k in args.ingress)
             + f"; each cell at most {args.requests} requests or {args.seconds:g} s. *images/s* and latencies are "
             "wall-clock; *CPU ms / request* is the CPU time all processes of the service and the clients used per "
             "request (from /proc), less what the idle service uses anyway "
             f"({idle} CPU-s per s, measured for 5 s before each replica count's cells):", "",
             table(["ingress", "replicas", "image", "clients", "images/s", "p50 ms", "p99 ms", "images/s vs floor",
                    "CPU ms / request", "CPU vs floor", "mean batch", "requests", "errors"], srows), ""]
    one = {(r["ingress"], r["replicas"], r["size"], r["clients"]): r for r in rows}
    lines = []
    for ingress in dict.fromkeys(r["ingress"] for r in rows):
        for size, f in floors.items():
            inproc = 1e3 / f["floor_ips"] + f["decode_ms"] + f["encode_ms"]
            best = min((r for r in rows if r["size"] == size and r["ingress"] == ingress), key=lambda r: r["cpu_ms"],
                       default=None)
            if best:
                lines.append(f"- {ingress}, {size}x{size}: a request costs {best['cpu_ms']:.1f} CPU ms in all (at "
                             f"best: {best['replicas']} replica(s), {best['clients']} clients) against {inproc:.2f} "
                             f"CPU ms in-process (read + batched denoise + write): **{best['cpu_ms'] - inproc:.1f} CPU "
                             "ms of overhead per request** (HTTP client and server, "
                             + ("HAProxy, the replica's own HTTP server" if ingress == "haproxy"
                                else "Serve's proxy, the call to the replica") + ", FastAPI).")
            r1 = one.get((ingress, 1, size, 1))
            if r1:
                lines.append(f"  One client, one replica: p50 {r1['p50']:.1f} ms against "
                             f"{f['single_ms'] + f['decode_ms'] + f['encode_ms']:.2f} CPU ms of in-process work.")
    for r in (r for r in rows if r["size"] == 28 and r["clients"] == 32):
        ratio = r["ips"] / floors[28]["floor_ips"]
        lines.append(f"- Target (32 clients, 28x28, {r['ingress']}, {r['replicas']} replica(s)): {r['ips']:.0f} "
                     f"images/s = {ratio:.3f} of the in-process floor (p99 {r['p99']:.0f} ms); by CPU, "
                     f"{1e3 / r['cpu_ms'] / floors[28]['floor_ips']:.3f}; target 0.5: "
                     f"**{'met' if ratio >= 0.5 else 'missed'}**.")
    body += ["Summary:", "", *lines]
    return "\n".join(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a best/ folder (conv); default: QUICKSTART_BEST, untrained")
    parser.add_argument("--requests", type=int, default=300, help="most requests per cell (default 300)")
    parser.add_argument("--seconds", type=float, default=15, help="most seconds per cell (default 15)")
    parser.add_argument("--max-batch-size", type=int, default=16, help="the service's and the floor's batch size")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), choices=SIZES)
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    parser.add_argument("--replicas", type=int, nargs="+", default=list(REPLICAS), choices=REPLICAS)
    parser.add_argument("--ingress", nargs="+", default=list(INGRESSES), choices=list(INGRESSES),
                        help="proxy: Serve's HTTP proxy (tuner serve); haproxy: tuner serve --haproxy")
    parser.add_argument("--write", action="store_true", help="replace this section of docs/benchmarks.md")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or export_untrained(Path(tmp) / "best")
        images = {s: make_images(s) for s in args.sizes}
        floors = {s: floor(model_dir, images[s], args.max_batch_size) for s in args.sizes}
        for s, f in floors.items():
            print(f"floor {s}x{s}: {f['floor_ips']:.0f} images/s; per image: denoise alone {f['single_ms']:.2f} ms, "
                  f"read {f['decode_ms']:.2f} ms, write {f['encode_ms']:.2f} ms", flush=True)
        rows = [r for ingress in args.ingress for r in serve_cells(model_dir, images, args, ingress)]
    text = report(rows, floors, args, (load_before, os.getloadavg()[0]))
    print(text)
    if args.write:
        print(f"wrote {write_section(SECTION, text)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
