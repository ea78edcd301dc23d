"""Search efficiency (issue 7): does ASHA + Optuna TPE find a good model with fewer epochs?

Two searches over the same space (``search_spaces/quickstart.yaml``'s: conv/dense, depth, width,
latent size, dropout, training noise, optimizer, learning rate, loss, batch size) with the same
trial budget, the same dataset and the same trainable (:func:`tuner.search.train_trial` through
``tune.with_parameters``), 2 trials at a time on 1 CPU each:

- **ASHA + TPE**: :func:`tuner.search.run_search` as ``tuner tune`` runs it, with quickstart.yaml's
  scheduler settings (its ASHA grace period and reduction factor; TPE after a third of the budget
  sampled at random).
- **random, to the end** (the baseline): Ray Tune's default ``BasicVariantGenerator`` drawing from
  the same ``spec.param_space()``, FIFO scheduler: every trial trains all ``max_epochs``.

Per seed, the reference is the best ``val_psnr`` either method found; for each method its
results (one per epoch, every trial) are walked in the order they finished, counting epochs and
wall-clock seconds until its running best first comes within 0.5 dB of the reference. Target:
ASHA + TPE gets there with at most a third of the random search's epochs.

The default run scales quickstart's budget down to minutes on 2 cores (1,000 images per split,
9 trials of at most 6 epochs); ``--full`` is quickstart's own budget (all of mnist5k, its
``num_samples`` and ``max_epochs``) over 5 seeds.

    python benchmarks/bench_search.py                  # 2 seeds: ~10 minutes on 2 busy cores
    python benchmarks/bench_search.py --full --write   # 5 seeds, quickstart's budget: hours on 2 cores
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, describe_machine, table, write_section  # noqa: E402
from tuner.data import load_dataset  # noqa: E402
from tuner.spec import ExperimentSpec, load_spec  # noqa: E402
from tuner.train import METRIC, MODE  # noqa: E402

SECTION = "bench_search"
REPO = Path(__file__).resolve().parent.parent
SPACE = REPO / "search_spaces" / "quickstart.yaml"
WITHIN_DB = 0.5  # "as good as the best" means within this many dB of it
TARGET = 1 / 3  # ASHA + TPE may use at most this share of random search's epochs


def make_spec(seed: int, trials: Optional[int], epochs: Optional[int], limit: Optional[int],
              folder: Path) -> ExperimentSpec:
    """quickstart.yaml's space with this benchmark's budget, validated by ``load_spec``.

    Args:
        seed: the searcher's and every trial's seed.
        trials: trial budget; None keeps quickstart's.
        epochs: max epochs per trial; None keeps quickstart's.
        limit: images per split kept from mnist5k (keeps a trial short on 2 cores); None for all.
        folder: where the YAML is written.

    Returns:
        The spec.
    """
    data = yaml.safe_load(SPACE.read_text())
    data["name"] = f"search_s{seed}"
    data["seed"] = seed
    if limit:
        data["dataset"]["limit"] = limit
    # The scheduler keeps quickstart's grace_period and reduction_factor: what users get.
    b = data["budget"]
    b.update(num_samples=trials or b["num_samples"], max_epochs=epochs or b["max_epochs"],
             max_concurrent=2, max_failures=0)
    b["grace_period"] = min(b["grace_period"], b["max_epochs"])
    path = folder / f"search_s{seed}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_spec(path)


def random_search(spec: ExperimentSpec, storage: Path, seed: int):
    """The baseline: random search, every trial to ``max_epochs``, same trainable and space.

    Returns:
        Ray Tune's ``ResultGrid``.
    """
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from tuner.search import train_trial

    data = load_dataset(**spec.dataset.model_dump())
    threads = max(1, int(spec.resources.cpus_per_trial))
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data=data, eval_noise=spec.eval_noise.model_dump(), threads=threads),
        {"cpu": spec.resources.cpus_per_trial},
    )
    b = spec.budget
    tuner = tune.Tuner(
        trainable,
        param_space=spec.param_space(),
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, num_samples=b.num_samples,
            # Tune ignores max_concurrent_trials when given a generator: the generator limits it.
            search_alg=BasicVariantGenerator(max_concurrent=b.max_concurrent, random_state=seed),
            scheduler=FIFOScheduler()),
        run_config=tune.RunConfig(
            name=f"random_s{seed}", storage_path=str(storage), verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=b.keep_checkpoints,
                                                    checkpoint_score_attribute=METRIC,
                                                    checkpoint_score_order=MODE)),
    )
    return tuner.fit()


def epoch_rows(results, start_clock: float) -> pd.DataFrame:
    """Every reported epoch of every trial, in the order they finished.

    Args:
        results: a ``ResultGrid``.
        start_clock: ``time.time()`` when the search was started.

    Returns:
        Columns ``trial``, ``epoch``, ``val_psnr``, ``finished`` (seconds since the search started).
    """
    frames = []
    for r in results:
        f = r.metrics_dataframe
        if f is None or f.empty:
            continue
        # Ray's `timestamp` is whole seconds: the latest (timestamp - time_total_s) over a trial's
        # rows is its start to within a second, and start + time_total_s orders rows finely.
        start = float((f["timestamp"] - f["time_total_s"]).max())
        frames.append(pd.DataFrame({
            "trial": f["trial_id"], "epoch": f["epoch"], METRIC: f[METRIC],
            "finished": start + f["time_total_s"] - start_clock}))
    return pd.concat(frames).sort_values("finished", ignore_index=True)


def time_to_target(rows: pd.DataFrame, target: float) -> tuple[Optional[int], Optional[float]]:
    """Epochs and seconds until the running best first reaches ``target`` (None when never)."""
    best = rows[METRIC].cummax()
    hit = best.index[best >= target]
    if len(hit) == 0:
        return None, None
    i = int(hit[0])
    return i + 1, float(rows["finished"].iloc[i])


def run_seed(seed: int, trials: Optional[int], epochs: Optional[int], limit: Optional[int],
             storage: Path) -> dict:
    """Both searches with one seed, and where each reached within 0.5 dB of the better best."""
    from tuner.search import run_search

    spec = make_spec(seed, trials, epochs, limit, storage)
    out = {"seed": seed, "grace": spec.budget.grace_period, "rf": spec.budget.reduction_factor,
           "trials_budget": spec.budget.num_samples, "max_epochs": spec.budget.max_epochs}
    epochs = spec.budget.max_epochs
    for method in ("asha_tpe", "random"):
        clock, t = time.time(), time.perf_counter()
        if method == "asha_tpe":
            results = run_search(spec, storage=str(storage), verbose=0).results
        else:
            results = random_search(spec, storage, seed)
        wall = time.perf_counter() - t
        rows = epoch_rows(results, clock)
        # Per trial: its architecture, epochs run and best score, to see what early stopping kept.
        grace = spec.budget.grace_period
        trials_seen = [(r.config.get("arch"), len(f), float(f[METRIC].max()),
                        float(f[METRIC].iloc[min(grace, len(f)) - 1]))
                       for r in results if (f := r.metrics_dataframe) is not None and not f.empty]
        best_arch = max(trials_seen, key=lambda t: t[2])[0]
        out[method] = {"rows": rows, "wall": wall, "epochs": len(rows), "best": float(rows[METRIC].max()),
                       "trials": trials_seen, "best_arch": best_arch,
                       "stopped_early": sum(1 for t in trials_seen if t[1] < epochs)}
        print(f"seed {seed} {method}: best {out[method]['best']:.2f} dB, {len(rows)} epochs, {wall:.0f} s",
              flush=True)
    reference = max(out["asha_tpe"]["best"], out["random"]["best"])
    out["reference"] = reference
    for method in ("asha_tpe", "random"):
        m = out[method]
        m["epochs_to"], m["seconds_to"] = time_to_target(m["rows"], reference - WITHIN_DB)
    return out


def _fmt(v: Optional[float], spec: str) -> str:
    return "not reached" if v is None else format(v, spec)


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a / b


def _first_rung(run: dict) -> str:
    """What ASHA let past its first rung, per architecture: 'conv 1/4, dense 3/5'."""
    g, out = run["grace"], []
    for arch in sorted({t[0] for t in run["asha_tpe"]["trials"]}):
        mine = [t for t in run["asha_tpe"]["trials"] if t[0] == arch]
        out.append(f"{arch} {sum(1 for t in mine if t[1] > g)}/{len(mine)}")
    return ", ".join(out)


def _early_rank(run: dict) -> str:
    """Where random search's eventual best trial stood at ASHA's first rung (all its trials ran on)."""
    trials = run["random"]["trials"]
    best = max(trials, key=lambda t: t[2])
    rank = 1 + sum(1 for t in trials if t[3] > best[3])
    return f"#{rank} of {len(trials)} ({best[0]})"


def _why_lost(run: dict) -> str:
    """One sentence on why ASHA + TPE never came near the reference on this seed, from the data."""
    g, rf = run["grace"], run["rf"]
    trials = run["random"]["trials"]
    best = max(trials, key=lambda t: t[2])
    rank = 1 + sum(1 for t in trials if t[3] > best[3])
    kept = max(1, math.ceil(len(trials) / rf))
    if rank > kept:
        return (f" Seed {run['seed']}: ASHA + TPE never came within {WITHIN_DB} dB; random search's winner "
                f"({best[0]}, {best[2]:.1f} dB at the end) ranked #{rank} of {len(trials)} after {g} epochs, "
                f"outside the best 1/{rf:g} that ASHA keeps: in this space early scores mislead "
                f"(ASHA + TPE's own best was {run['asha_tpe']['best_arch']}), so ASHA stops the eventual winners "
                f"and TPE then samples near the early leaders.")
    return (f" Seed {run['seed']}: ASHA + TPE never came within {WITHIN_DB} dB although random's winner led "
            f"early (#{rank} after {g} epochs): TPE did not draw a configuration like it.")


def report(runs: list[dict], trials: int, epochs: int, load: tuple) -> str:
    """The markdown: a row per seed and method, the mean, and what it means."""
    g, rf = runs[0]["grace"], runs[0]["rf"]
    head = ["seed", "method", "best val_psnr (dB)", "best trial's arch",
            f"epochs to within {WITHIN_DB} dB of the better best", "wall s to there", "epochs spent in all",
            "search wall (s)", "trials stopped before max_epochs"]
    body = []
    ratios, wall_ratios = [], []
    for run in runs:
        for method, label in (("asha_tpe", "ASHA + TPE"), ("random", "random, to the end")):
            m = run[method]
            body.append([run["seed"], label, f"{m['best']:.2f}", m["best_arch"], _fmt(m["epochs_to"], "d"),
                         _fmt(m["seconds_to"], ".0f"), m["epochs"], f"{m['wall']:.0f}", m["stopped_early"]])
        a, r = run["asha_tpe"], run["random"]
        ratio = _ratio(a["epochs_to"], r["epochs_to"])
        if ratio is not None:
            ratios.append(ratio)
            wall_ratios.append(a["seconds_to"] / r["seconds_to"])
        run["ratio"] = ratio
    parts = [table(head, body), ""]
    summary = ["", "ASHA + TPE / random"]
    lines = [["per seed: epochs to target", ", ".join(_fmt(r["ratio"], ".2f") for r in runs)]]
    mean = statistics.mean(ratios) if ratios else math.nan
    reached = f" ({len(ratios)} of {len(runs)} seeds where both reached it)" if len(ratios) < len(runs) else ""
    lines.append(["mean: epochs to target", f"**{mean:.2f}**{reached}; target <= {TARGET:.2f}: "
                                            f"{'met' if ratios and mean <= TARGET and len(ratios) == len(runs) else 'missed'}"])
    if wall_ratios:
        lines.append(["mean: wall seconds to target", f"{statistics.mean(wall_ratios):.2f}"])
    lines.append(["mean: epochs spent in all",
                  f"{statistics.mean(r['asha_tpe']['epochs'] / r['random']['epochs'] for r in runs):.2f}"])
    lines.append(["mean: best val_psnr difference (dB)",
                  f"{statistics.mean(r['asha_tpe']['best'] - r['random']['best'] for r in runs):+.2f}"])
    parts += [table(summary, lines), ""]
    diag_head = ["seed", f"ASHA + TPE trials past the first rung ({g} epochs), by arch",
                 f"random's eventual best, ranked at epoch {g}"]
    parts += [table(diag_head, [[r["seed"], _first_rung(r), _early_rank(r)] for r in runs]), ""]
    parts.append(
        f"What it means: *epochs to within {WITHIN_DB} dB* is the compute a user pays before the search holds a "
        f"model about as good as it will find (the better of the two methods' best, per seed); a ratio of 0.33 "
        f"means ASHA + TPE got there on a third of the epochs random search needed. *Epochs spent in all* is the "
        f"whole budget's cost: ASHA keeps the best 1/{rf:g} at each rung ({g} epochs, then x{rf:g}), so the same "
        f"{trials} trials cost fewer epochs than {trials} x {epochs}. *Wall s* counts from the search's start, "
        f"Ray's per-trial start-up included. The last table shows whether stopping at the first rung is safe "
        f"here: random search trains every trial to the end, so the rank its eventual best held at epoch {g} is "
        f"the rank ASHA would have judged it by.")
    parts.append("")
    if ratios and mean <= TARGET and len(ratios) == len(runs):
        parts.append(f"Target met on average ({mean:.2f} <= {TARGET:.2f}).")
    else:
        missed = [r for r in runs if r["ratio"] is None or r["ratio"] > TARGET]
        lost = [r for r in runs if r["asha_tpe"]["epochs_to"] is None]
        why = "".join(_why_lost(r) for r in lost)
        floor = g / epochs
        bound = (f" With a grace period of {g} of {epochs} epochs, a trial ASHA stops at its first rung still costs "
                 f"{floor:.2f} of a full one, so a ratio under {TARGET:.2f} needs most of the trials stopped there "
                 f"and a good one drawn early." if floor > TARGET / 2 else "")
        parts.append(
            f"Target missed on {len(missed)} of {len(runs)} seeds.{why}{bound} With a budget this small ({trials} trials, "
            f"{epochs} epochs) a third of ASHA + TPE's trials are random (TPE's start-up) and asynchronous ASHA "
            f"lets the first trials of each rung through unopposed, so the saving is bounded; random search's "
            f"epochs-to-target depends on where in its order a good trial falls. The per-seed spread is the honest "
            f"picture; `--full` (quickstart's own budget, 5 seeds) gives the figure for real use.")
    if load[0] > 0.5 * (os.cpu_count() or 1):  # others kept half the cores busy before we started
        parts.append("")
        parts.append(f"Taken under load (load average {load[0]:.1f} before, {load[1]:.1f} after on "
                     f"{os.cpu_count()} cores): epoch counts do not depend on load, wall seconds do.")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true",
                        help="quickstart's own budget and all of mnist5k, 5 seeds")
    parser.add_argument("--seeds", type=int, nargs="+", help="searcher seeds (default 0 1; --full 0..4)")
    parser.add_argument("--trials", type=int, help="trials per search (default 9; --full quickstart's)")
    parser.add_argument("--epochs", type=int, help="max epochs per trial (default 6; --full quickstart's)")
    parser.add_argument("--limit", type=int, help="mnist5k images per split, 0 for all (default 1000; --full 0)")
    parser.add_argument("--write", action="store_true", help="replace this section of docs/benchmarks.md")
    args = parser.parse_args(argv)
    seeds = args.seeds or (list(range(5)) if args.full else [0, 1])
    trials = args.trials or (None if args.full else 9)
    epochs = args.epochs or (None if args.full else 6)
    limit = (args.limit if args.limit is not None else (0 if args.full else 1000)) or None
    logging.basicConfig(level=logging.WARNING)
    # A checkpoint per epoch of a seconds-long trial is by design; Ray's hint about it is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    load_before = os.getloadavg()[0]

    from tuner import search

    search._init_ray(None)  # one Ray for every search, started the way run_search starts it
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        for seed in seeds:
            runs.append(run_seed(seed, trials, epochs, limit, Path(tmp)))
    import ray

    ray.shutdown()
    load = (load_before, os.getloadavg()[0])
    trials, epochs = runs[0]["trials_budget"], runs[0]["max_epochs"]
    body = report(runs, trials, epochs, load)
    print(body)
    if args.write:
        text = "\n\n".join([
            "## Search efficiency (`bench_search.py`)",
            describe_machine(threads=1) + f" Load average {load[0]:.1f} / {load[1]:.1f} (before / after).",
            f"Command: `{command_line()}`",
            f"`search_spaces/quickstart.yaml`'s space and scheduler (ASHA grace period {runs[0]['grace']}, "
            f"reduction factor {runs[0]['rf']:g}) on `mnist5k` "
            f"({f'limit {limit} images per split' if limit else 'all of it'}), {trials} trials of at most "
            f"{epochs} epochs, 2 at a time, seeds {', '.join(map(str, seeds))}. "
            f"ASHA + TPE is `tuner.search.run_search` as is; the baseline is random search "
            f"(`BasicVariantGenerator`, FIFO) over the same `spec.param_space()` with the same trainable, "
            f"every trial trained to the end.",
            body,
        ])
        print(f"wrote {write_section(SECTION, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
