"""Where a photo trial's time goes, and whether packed trials add up (issue 30).

The same script runs on this CPU machine and, unchanged, on a GPU (the trainer's device is CUDA
when there is one). Three parts:

- ``share``: one trial as the search runs it (``tuner.fit`` with the search's checkpoint cadence,
  each checkpoint written with ``torch.save`` as ``tuner.search.train_trial`` does) for
  ``--seconds`` of training: the share of its wall time in training steps (``train_seconds`` /
  wall, target >= 90%), the validations' and the checkpoints' shares, and how many of each.
- ``sampler``: the cost of drawing a batch of crops (``PatchSampler``) against a training step on
  that batch, both timed with the device synced, the median of ``--steps``.
- ``packing``: 1, 2, 4 and 8 trials at once, each a separate process training for ``--seconds``
  after a common start (as Ray packs trials with fractional ``gpus_per_trial``, or shares the
  cores): the crops per second of all of them together against one alone. On a CPU each process
  gets ``cores // k`` threads (at least 1).

Usage::

    python benchmarks/bench_gpu.py                      # all parts; defaults sized for the device
    python benchmarks/bench_gpu.py --parts packing --width 16 --batch 16 --packs 1 2 4 8
    python benchmarks/bench_gpu.py --write              # also docs/benchmarks.md and benchmarks/results/

The photos are Train400 (``--train``, default ``../shared/datasets/gray/Train400``); results go
to ``benchmarks/out/gpu/<device>.json``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, describe_machine, machine, table, write_section  # noqa: E402

from tuner.data import Splits, load_dataset  # noqa: E402
from tuner.noise import Noise  # noqa: E402
from tuner.config import TrialConfig  # noqa: E402
from tuner.train import CheckpointCadence, Trainer, _synchronize, fit, pick_device  # noqa: E402

SIGMA25 = Noise("gaussian", 25 / 255, clip=False)
OUT = REPO / "benchmarks" / "out" / "gpu"
RESULTS = REPO / "benchmarks" / "results" / "bench_gpu.json"


def load(train: Path, patches_per_epoch: int) -> Splits:
    """Train400 split as ``bsd68.yaml`` splits it (8 validation images), 64x64 crops."""
    return load_dataset("folder", train_path=train, channels=1, patch_size=64, val_fraction=0.02,
                        test_fraction=0.02, patches_per_epoch=patches_per_epoch)


def config(width: int, batch: int, seconds: float) -> TrialConfig:
    """The photo specs' U-Net (bsd68.yaml's fixed part) at ``width`` and ``batch``, trained ``seconds``."""
    return TrialConfig(arch="conv", depth=3, convs_per_stage=2, skip=True, residual="pixel", batch_norm=False,
                       optimizer="adamw", lr_schedule="cosine", width=width, latent_dim=8 * width,
                       batch_size=batch, augment="flip_rotate", max_epochs=100000, max_train_seconds=seconds)


def part_share(data: Splits, cfg: TrialConfig, threads: int, every_s: float) -> dict[str, Any]:
    """One trial as the search runs it: how its wall time divides."""
    start = time.perf_counter()
    cadence = CheckpointCadence(every_s)
    ckpt_seconds, ckpt_count, ckpt_bytes, val_seconds, reports = 0.0, 0, 0, 0.0, 0
    last: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        for epoch in fit(cfg, data, SIGMA25, threads=threads):
            reports += 1
            val_seconds += epoch.metrics["val_seconds"]
            last = epoch.metrics
            if cadence.due(epoch):
                t = time.perf_counter()
                torch.save(epoch.checkpoint(), Path(d) / "state.pt")
                cadence.written(time.perf_counter() - t)
                ckpt_seconds += cadence.cost
                ckpt_count += 1
                ckpt_bytes = (Path(d) / "state.pt").stat().st_size
    wall = time.perf_counter() - start
    steps = last["samples_seen"] / cfg.batch_size
    return {"wall_seconds": wall, "train_seconds": last["train_seconds"], "train_share": last["train_seconds"] / wall,
            "validation_share": val_seconds / wall, "checkpoint_share": ckpt_seconds / wall,
            "other_seconds": wall - last["train_seconds"] - val_seconds - ckpt_seconds,  # start-up, the loop's Python
            "validations": reports, "epochs": last["epoch"], "checkpoints": ckpt_count,
            "checkpoint_mb": ckpt_bytes / 1e6, "checkpoint_seconds_per_step": ckpt_seconds / max(steps, 1),
            "crops_per_second": last["samples_seen"] / last["train_seconds"], "steps": steps}


def part_sampler(data: Splits, cfg: TrialConfig, threads: int, steps: int) -> dict[str, Any]:
    """A batch's crops against a training step on it, each synced, median of ``steps``."""
    trainer = Trainer(cfg, data, SIGMA25, threads=threads)
    sampler, gen, dev = trainer.sampler, trainer.order_gen, trainer.device

    def timed(fn) -> float:
        _synchronize(dev)
        t = time.perf_counter()
        fn()
        _synchronize(dev)
        return time.perf_counter() - t

    for _ in range(5):  # warm-up: kernels, allocator, oneDNN primitives
        sampler(cfg.batch_size, gen)
    draw = [timed(lambda: sampler(cfg.batch_size, gen)) for _ in range(steps)]
    trainer.epoch_samples = cfg.batch_size * steps  # one epoch of ``steps`` batches, without validation
    trainer.config = trainer.config.__class__(**{**cfg.to_dict(), "max_train_seconds": None})
    trainer.train_epoch()  # warm-up epoch
    per_step = []
    for _ in range(3):
        before = trainer.train_seconds
        trainer.train_epoch()
        per_step.append((trainer.train_seconds - before) / steps)
    step = statistics.median(per_step)
    sample = statistics.median(draw)
    return {"sampler_ms": 1e3 * sample, "step_ms": 1e3 * step, "sampler_share_of_step": sample / step}


def _pack_worker(train: str, width: int, batch: int, seconds: float, threads: int, start_at: float, queue) -> None:
    data = load(Path(train), 1 << 30)  # one endless epoch: no validation inside the window
    cfg = config(width, batch, 1e7)
    trainer = Trainer(cfg, data, SIGMA25, threads=threads)
    for _ in range(3):  # warm-up steps before the common start
        trainer.sampler(batch, trainer.order_gen)
    while time.time() < start_at:
        time.sleep(0.01)
    crops, t0 = 0, time.perf_counter()
    model, opt = trainer.model, trainer.optimizer
    while time.perf_counter() - t0 < seconds:
        clean = trainer.sampler(batch, trainer.order_gen).float().div_(255.0)
        noisy = clean + SIGMA25.level * torch.randn(clean.shape, generator=trainer.noise_gen, device=clean.device)
        with torch.autocast(trainer.device.type, dtype=trainer.amp_dtype or torch.float32,
                            enabled=trainer.amp_dtype is not None):
            loss = torch.nn.functional.mse_loss(model(noisy), clean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        crops += batch
    _synchronize(trainer.device)
    queue.put(crops / (time.perf_counter() - t0))


def part_packing(train: Path, width: int, batch: int, seconds: float, packs: list[int]) -> list[dict[str, Any]]:
    """k trials at once, each its own process: crops per second together, against one alone."""
    ctx = mp.get_context("spawn")
    cores = os.cpu_count() or 1
    rows, alone = [], None
    for k in packs:
        threads = max(1, cores // k) if pick_device().type == "cpu" else 1
        queue = ctx.Queue()
        start_at = time.time() + 30 + 3 * k  # after every process has loaded and warmed up
        procs = [ctx.Process(target=_pack_worker, args=(str(train), width, batch, seconds, threads, start_at, queue))
                 for _ in range(k)]
        for p in procs:
            p.start()
        rates = [queue.get(timeout=start_at - time.time() + seconds + 300) for _ in procs]
        for p in procs:
            p.join()
        total = sum(rates)
        alone = alone or total
        rows.append({"trials": k, "threads_each": threads, "crops_per_second": total,
                     "per_trial": total / k, "scaling": total / alone})
        print(f"  {k} trial(s) of width {width}, batch {batch}: {total:,.0f} crops/s together "
              f"({total / alone:.2f}x one)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", default=["share", "sampler", "packing"], choices=["share", "sampler", "packing"])
    p.add_argument("--train", type=Path, default=REPO.parent / "shared" / "datasets" / "gray" / "Train400")
    p.add_argument("--width", type=int, default=64 if gpu else 16, help="U-Net width (default: 64 on a GPU, 16 on a CPU)")
    p.add_argument("--batch", type=int, default=64 if gpu else 16, help="crops per batch")
    p.add_argument("--seconds", type=float, default=60.0, help="training seconds of the share part; each packing run's seconds")
    p.add_argument("--steps", type=int, default=30, help="batches timed by the sampler part")
    p.add_argument("--packs", type=int, nargs="+", default=[1, 2, 4, 8], help="trials at once in the packing part")
    p.add_argument("--pack-seconds", type=float, default=30.0, help="seconds each packing run trains")
    p.add_argument("--checkpoint-every-s", type=float, default=60.0, help="budget.checkpoint_every_s of the share part")
    p.add_argument("--write", action="store_true", help="write docs/benchmarks.md's section and benchmarks/results/bench_gpu.json")
    args = p.parse_args(argv)

    device = pick_device()
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    out: dict[str, Any] = {"machine": machine(), "device": str(device), "width": args.width, "batch": args.batch,
                           "date": time.strftime("%Y-%m-%d")}
    # An epoch of ~8 s of training on this device's throughput is sized by the share part itself.
    data = load(args.train, 2048)
    cfg = config(args.width, args.batch, args.seconds)
    if "share" in args.parts:
        print(f"share: one trial, width {args.width}, batch {args.batch}, {args.seconds:g} training seconds on {device}",
              flush=True)
        out["share"] = part_share(data, cfg, threads, args.checkpoint_every_s)
        print("  " + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out["share"].items()}))
    if "sampler" in args.parts:
        out["sampler"] = part_sampler(data, cfg, threads, args.steps)
        print("sampler: " + json.dumps({k: round(v, 4) for k, v in out["sampler"].items()}), flush=True)
    if "packing" in args.parts:
        print(f"packing: {args.packs} trials at once, {args.pack_seconds:g} s each", flush=True)
        out["packing"] = part_packing(args.train, args.width, args.batch, args.pack_seconds, args.packs)
    OUT.mkdir(parents=True, exist_ok=True)
    name = "cuda" if device.type == "cuda" else "cpu"
    (OUT / f"{name}.json").write_text(json.dumps(out, indent=2))
    body = render(out)
    print(body)
    if args.write:
        write_section(f"bench_gpu_{name}", body)
        if "share" in out:
            _write_result(out)
    return 0


def render(out: dict[str, Any]) -> str:
    """The markdown section of one run."""
    lines = [f"### {out['device']}: width {out['width']}, batch {out['batch']}", "", describe_machine(), ""]
    if "share" in out:
        s = out["share"]
        lines += [table(["wall s", "training share", "validation share", "checkpoint share", "other s",
                         "validations / epochs", "checkpoints (MB each)", "checkpoint ms / step", "crops/s"],
                        [[f"{s['wall_seconds']:.1f}", f"{100 * s['train_share']:.1f}%",
                          f"{100 * s['validation_share']:.1f}%", f"{100 * s['checkpoint_share']:.1f}%",
                          f"{s['other_seconds']:.1f}", f"{s['validations']} / {s['epochs']}",
                          f"{s['checkpoints']} ({s['checkpoint_mb']:.1f})",
                          f"{1e3 * s['checkpoint_seconds_per_step']:.2f}", f"{s['crops_per_second']:,.0f}"]]), ""]
    if "sampler" in out:
        s = out["sampler"]
        lines += [f"Sampler: {s['sampler_ms']:.2f} ms a batch against {s['step_ms']:.2f} ms a training step "
                  f"({100 * s['sampler_share_of_step']:.1f}% of a step).", ""]
    if "packing" in out:
        lines += [table(["trials at once", "threads each", "crops/s together", "per trial", "x one alone"],
                        [[r["trials"], r["threads_each"], f"{r['crops_per_second']:,.0f}", f"{r['per_trial']:,.0f}",
                          f"{r['scaling']:.2f}"] for r in out["packing"]]), ""]
    return "\n".join(lines)


def _write_result(out: dict[str, Any]) -> None:
    s, m = out["share"], out["machine"]
    share = round(100 * s["train_share"], 1)
    where = m["gpu"] if out["device"].startswith("cuda") else f"{m['cpu']}, {m['cores']} cores, no GPU"
    RESULTS.write_text(json.dumps({
        "title": "A photo trial's time in training steps",
        "figure": f"share of one trial's wall time in training steps (width {out['width']}, batch {out['batch']}, "
                  f"{s['train_seconds']:.0f} training seconds, {out['device']}), validation and checkpoints included",
        "unit": "%", "tuner": share, "baseline": None, "baseline_name": "none (an absolute target); before the change, on a GPU: 31 s counted of 90 s",
        "target": ">= 90% of the wall time in training steps", "met": share >= 90.0,
        "machine": where, "date": out["date"], "runs": 1, "section": "where-a-trials-time-goes-bench_gpupy",
    }, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
