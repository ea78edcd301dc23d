"""Where the search driver's memory per finished trial goes (issue 22; docs/benchmarks.md, "The
driver at scale"): one arm of ``bench_scale.py`` part ``ray``, traced with ``tracemalloc``, and the
live Python objects that grew between two finished-trial counts, by allocation site.

    python benchmarks/scale_memory.py                       # study_sqlite, 400 trials of 0.3 s: ~8 minutes
    python benchmarks/scale_memory.py --arm random_fifo --trials 400 --first 100

tracemalloc slows the driver several-fold: the wall times of this run mean nothing; the bytes do.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scale as b  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arm", default="study_sqlite", choices=["random_fifo", "stock_optuna", "study_sqlite", "study_journal"])
    p.add_argument("--trials", type=int, default=400)
    p.add_argument("--first", type=int, default=100, help="the first snapshot, at this many finished trials")
    p.add_argument("--seconds", type=float, default=0.3, help="seconds a trial sleeps")
    p.add_argument("--top", type=int, default=15, help="allocation sites shown")
    args = p.parse_args(argv)
    import os

    import ray
    from ray import tune
    from ray.tune import Callback

    # The trial actors unpickle the sleeping trainable by its module name.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent),
                                                             str(b.REPO), os.environ.get("PYTHONPATH")]))
    snaps: dict[int, tracemalloc.Snapshot] = {}
    last = args.trials - 20

    class Snap(Callback):
        done = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            Snap.done += 1
            if Snap.done in (args.first, last):
                gc.collect()
                snaps[Snap.done] = tracemalloc.take_snapshot()

    folder = Path(tempfile.mkdtemp(prefix="scale_memory_")) / args.arm
    folder.mkdir()
    spec = b.make_spec(args.arm, args.trials, 16, 4, args.seconds, folder)
    alg, scheduler = b.search_alg(args.arm, spec, str(folder / spec.name))
    ray.init(address="local", num_cpus=16, include_dashboard=False, log_to_driver=False)
    try:
        trainable = tune.with_resources(tune.with_parameters(b.sleeper, seconds=args.seconds, results=4), {"cpu": 1})
        tuner = b.make_tuner(spec, trainable, storage=str(folder), search_alg=alg, scheduler=scheduler,
                             num_samples=args.trials, verbose=0, callbacks=[Snap()])
        tracemalloc.start(3)
        tuner.fit()
    finally:
        ray.shutdown()
    diff = snaps[last].compare_to(snaps[args.first], "traceback")
    n = last - args.first
    print(f"{args.arm}: between finished trials {args.first} and {last}, live Python objects grew "
          f"{sum(d.size_diff for d in diff) / 1024 / n:.1f} KB per finished trial")
    for d in diff[: args.top]:
        print(f"{d.size_diff / 1024 / n:7.2f} KB / trial {d.count_diff / n:6.1f} blocks / trial")
        for line in d.traceback.format()[-6:]:
            print("       ", line.strip()[:160])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
