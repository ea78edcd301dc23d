"""Search efficiency (issue 7): does ASHA + Optuna TPE find a good model with fewer epochs?

Two searches over the same space with the same trial budget, the same dataset and the same
trainable (:func:`tuner.search.train_trial` through ``tune.with_parameters``), 2 trials at a time
on 1 CPU each. The space is ``search_spaces/mnist5k_wide.yaml`` (``--space`` for another): the
quickstart's data and noise with the wide ranges of a first search - four optimizers, learning
rates from 1e-4 to 3e-2, three losses, depth, width, latent size, skips, dropout, training noise,
batch size - so that, as in a user's first search, many configurations are poor.

- **ASHA + TPE**: :func:`tuner.search.run_search` as ``tuner tune`` runs it, with the space file's
  scheduler settings (its ASHA grace period and reduction factor; TPE after a third of the budget
  sampled at random).
- **random, to the end** (the baseline): Ray Tune's default ``BasicVariantGenerator`` drawing from
  the same ``spec.param_space()``, FIFO scheduler: every trial trains all ``max_epochs``.

Per seed, the reference is the best ``val_psnr`` either method found; for each method its
results (one per epoch, every trial) are walked in the order they finished, counting epochs and
wall-clock seconds until its running best first comes within 0.5 dB of the reference. Target:
ASHA + TPE gets there with at most a third of the random search's epochs.

The default run scales the budget down to minutes on 2 cores (1,000 images per split, 16 trials
of at most 12 epochs, 2 seeds); ``--full`` is the space file's own budget on all of mnist5k over
5 seeds. ``--save DIR`` keeps every epoch of every trial (with its config) as CSV.

    python benchmarks/bench_search.py                  # 2 seeds: ~15 minutes on 2 cores
    python benchmarks/bench_search.py --full --write   # 5 seeds, the file's budget: hours on 2 cores
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
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
SPACE = REPO / "search_spaces" / "mnist5k_wide.yaml"
WITHIN_DB = 0.5  # "as good as the best" means within this many dB of it
TARGET = 1 / 3  # ASHA + TPE may use at most this share of random search's epochs


def make_spec(space: Path, seed: int, trials: Optional[int], epochs: Optional[int], limit: Optional[int],
              folder: Path) -> ExperimentSpec:
    """A search space file with this benchmark's budget, validated by ``load_spec``.

    Args:
        space: the YAML spec whose space and scheduler are measured.
        seed: the searcher's and every trial's seed.
        trials: trial budget; None keeps the file's.
        epochs: max epochs per trial; None keeps the file's.
        limit: images per split kept from mnist5k (keeps a trial short on 2 cores); None for all.
        folder: where the YAML is written.

    Returns:
        The spec.
    """
    data = yaml.safe_load(space.read_text())
    data["name"] = f"search_s{seed}"
    data["seed"] = seed
    if limit:
        data["dataset"]["limit"] = limit
    # The scheduler keeps the file's grace_period and reduction_factor: what users get.
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


@dataclass
class Seen:
    """One trial as the report needs it."""

    what: str  # its optimizer, learning rate, loss and depth
    epochs: int  # epochs it ran
    best: float  # its best val_psnr
    at_grace: float  # its val_psnr at the first rung (or its last epoch, if it ended sooner)


def _describe(config: dict) -> str:
    return (f"{config.get('optimizer')} lr {config.get('lr', 0):.0e}, {config.get('loss')}, "
            f"depth {config.get('depth')}")


def time_to_target(rows: pd.DataFrame, target: float) -> tuple[Optional[int], Optional[float]]:
    """Epochs and seconds until the running best first reaches ``target`` (None when never)."""
    best = rows[METRIC].cummax()
    hit = best.index[best >= target]
    if len(hit) == 0:
        return None, None
    i = int(hit[0])
    return i + 1, float(rows["finished"].iloc[i])


def summarize(frame: pd.DataFrame, wall: float, grace: int, max_epochs: int) -> dict:
    """One search's figures from its epoch rows (:func:`epoch_rows` joined with each trial's config)."""
    trials_seen = []
    for _, f in frame.groupby("trial", sort=False):
        f = f.sort_values("epoch")
        trials_seen.append(Seen(_describe(f.iloc[0].to_dict()), len(f), float(f[METRIC].max()),
                                float(f[METRIC].iloc[min(grace, len(f)) - 1])))
    return {"rows": frame, "wall": wall, "epochs": len(frame), "best": float(frame[METRIC].max()),
            "trials": trials_seen, "best_trial": max(trials_seen, key=lambda t: t.best).what,
            "stopped_early": sum(1 for t in trials_seen if t.epochs < max_epochs)}


def compare(out: dict) -> dict:
    """Add the reference (the better best) and where each method first came within 0.5 dB of it."""
    out["reference"] = max(out["asha_tpe"]["best"], out["random"]["best"])
    for method in ("asha_tpe", "random"):
        m = out[method]
        m["epochs_to"], m["seconds_to"] = time_to_target(m["rows"], out["reference"] - WITHIN_DB)
    return out


def run_seed(space: Path, seed: int, trials: Optional[int], epochs: Optional[int], limit: Optional[int],
             storage: Path, save: Optional[Path] = None) -> dict:
    """Both searches with one seed, and where each reached within 0.5 dB of the better best."""
    from tuner.search import run_search

    spec = make_spec(space, seed, trials, epochs, limit, storage)
    b = spec.budget
    out = {"seed": seed, "grace": b.grace_period, "rf": b.reduction_factor, "trials_budget": b.num_samples,
           "max_epochs": b.max_epochs}
    for method in ("asha_tpe", "random"):
        clock, t = time.time(), time.perf_counter()
        if method == "asha_tpe":
            results = run_search(spec, storage=str(storage), verbose=0).results
        else:
            results = random_search(spec, storage, seed)
        wall = time.perf_counter() - t
        configs = pd.DataFrame([{"trial": r.metrics["trial_id"], **r.config} for r in results if r.metrics])
        frame = epoch_rows(results, clock).merge(configs, on="trial", how="left")
        if save:  # every epoch of every trial, with its config, to re-read without rerunning (--from-saved)
            save.mkdir(parents=True, exist_ok=True)
            frame.assign(search_wall=wall).to_csv(save / f"{method}_s{seed}.csv", index=False)
        out[method] = summarize(frame, wall, b.grace_period, b.max_epochs)
        print(f"seed {seed} {method}: best {out[method]['best']:.2f} dB, {len(frame)} epochs, {wall:.0f} s",
              flush=True)
    return compare(out)


def load_saved(folder: Path, seed: int, space: Path, trials: Optional[int], epochs: Optional[int]) -> dict:
    """One seed's comparison from the CSVs ``--save`` wrote (no searches run)."""
    spec = yaml.safe_load(space.read_text())["budget"]
    out = {"seed": seed, "grace": spec["grace_period"], "rf": spec["reduction_factor"]}
    for method in ("asha_tpe", "random"):
        frame = pd.read_csv(folder / f"{method}_s{seed}.csv")
        out["trials_budget"] = trials or frame["trial"].nunique()
        out["max_epochs"] = epochs or int(frame["epoch"].max())
        out["grace"] = min(out["grace"], out["max_epochs"])
        wall = float(frame["search_wall"].iloc[0]) if "search_wall" in frame else float(frame["finished"].max())
        out[method] = summarize(frame, wall, out["grace"], out["max_epochs"])
    return compare(out)


def _fmt(v: Optional[float], spec: str) -> str:
    return "not reached" if v is None else format(v, spec)


def _rungs(run: dict) -> str:
    """Where ASHA stopped ASHA + TPE's trials: 'at 2: 7, at 6: 4, ran 12: 5'."""
    counts: dict[int, int] = {}
    for t in run["asha_tpe"]["trials"]:
        counts[t.epochs] = counts.get(t.epochs, 0) + 1
    last = run["max_epochs"]
    return ", ".join(f"{'ran' if e == last else 'at'} {e}: {n}" for e, n in sorted(counts.items()))


def _early_rank(run: dict) -> str:
    """Where random search's eventual best trial stood at ASHA's first rung (all its trials ran on)."""
    trials = run["random"]["trials"]
    best = max(trials, key=lambda t: t.best)
    rank = 1 + sum(1 for t in trials if t.at_grace > best.at_grace)
    return f"#{rank} of {len(trials)}"


def _good_share(run: dict) -> str:
    """How many of random search's trials (a sample of the space) ended within 0.5 dB of the reference."""
    trials = run["random"]["trials"]
    good = sum(1 for t in trials if t.best >= run["reference"] - WITHIN_DB)
    return f"{good} of {len(trials)}"


def _ratio_cell(run: dict) -> str:
    a, r = run["asha_tpe"], run["random"]
    if a["epochs_to"] is None:
        return "ASHA + TPE not there"
    if r["epochs_to"] is None:
        return f"< {a['epochs_to'] / r['epochs']:.2f} (random never got there in its {r['epochs']})"
    return f"{a['epochs_to'] / r['epochs_to']:.2f}"


def report(runs: list[dict], trials: int, epochs: int, load: tuple) -> str:
    """The markdown: a row per seed and method, the pooled ratio, and what it means."""
    g, rf = runs[0]["grace"], runs[0]["rf"]
    head = ["seed", "method", "best val_psnr (dB)", "best trial",
            f"epochs to within {WITHIN_DB} dB of the better best", "wall s to there", "epochs spent in all",
            "search wall (s)", "trials stopped before max_epochs"]
    body = []
    for run in runs:
        for method, label in (("asha_tpe", "ASHA + TPE"), ("random", "random, to the end")):
            m = run[method]
            body.append([run["seed"], label, f"{m['best']:.2f}", m["best_trial"], _fmt(m["epochs_to"], "d"),
                         _fmt(m["seconds_to"], ".0f"), m["epochs"], f"{m['wall']:.0f}", m["stopped_early"]])
    parts = [table(head, body), ""]
    # Pooled over seeds: epochs ASHA + TPE needed in all / epochs random needed in all. A random search
    # that never got there is charged its whole budget: less than it would have needed, so the pooled
    # ratio can only flatter random search. A seed where ASHA + TPE never got there fails the target.
    asha_lost = [r for r in runs if r["asha_tpe"]["epochs_to"] is None]
    pooled_a = sum(r["asha_tpe"]["epochs_to"] or r["asha_tpe"]["epochs"] for r in runs)
    pooled_r = sum(r["random"]["epochs_to"] or r["random"]["epochs"] for r in runs)
    pooled = pooled_a / pooled_r
    sec_a = sum(r["asha_tpe"]["seconds_to"] or r["asha_tpe"]["wall"] for r in runs)
    sec_r = sum(r["random"]["seconds_to"] or r["random"]["wall"] for r in runs)
    met = pooled <= TARGET and not asha_lost
    never = sum(1 for r in runs if r["random"]["epochs_to"] is None)
    lines = [
        ["per seed: epochs to target", "; ".join(_ratio_cell(r) for r in runs)],
        ["all seeds: epochs to target (sum / sum)",
         f"**{pooled:.2f}** ({pooled_a} / {pooled_r}{f'; random charged its whole budget on {never} of {len(runs)} seeds' if never else ''})"
         f"; target <= {TARGET:.2f}: {'met' if met else 'missed'}"],
        ["all seeds: wall seconds to target (sum / sum)", f"{sec_a / sec_r:.2f}"],
        ["all seeds: epochs spent in all", f"{sum(r['asha_tpe']['epochs'] for r in runs) / sum(r['random']['epochs'] for r in runs):.2f}"],
        ["mean: best val_psnr difference (dB)",
         f"{statistics.mean(r['asha_tpe']['best'] - r['random']['best'] for r in runs):+.2f}"],
    ]
    parts += [table(["", "ASHA + TPE / random"], lines), ""]
    diag_head = ["seed", "random's trials within 0.5 dB of the reference", f"random's eventual best, ranked at epoch {g}",
                 "where ASHA stopped ASHA + TPE's trials (epochs: trials)"]
    parts += [table(diag_head, [[r["seed"], _good_share(r), _early_rank(r), _rungs(r)] for r in runs]), ""]
    parts.append(
        f"What it means: *epochs to within {WITHIN_DB} dB* is the compute a user pays before the search holds a "
        f"model about as good as it will find (the better of the two methods' best, per seed); a ratio of 0.33 "
        f"means ASHA + TPE got there on a third of the epochs random search needed. The seeds are pooled (epochs "
        f"summed over seeds, then divided) so one lucky early draw of random search does not decide the figure; "
        f"where random search never got there it is charged only the epochs it spent, which flatters it. "
        f"*Epochs spent in all* is the whole budget's cost: ASHA keeps the best 1/{rf:g} at each rung ({g} epochs, "
        f"then x{rf:g}), so the same {trials} trials cost fewer epochs than {trials} x {epochs}. *Wall s* counts "
        f"from the search's start, Ray's per-trial start-up included. The last table says how rare good "
        f"configurations are in this space (random search samples it), whether stopping at the first rung is safe "
        f"(the rank random's eventual winner held at epoch {g}, which is what ASHA judges by) and how much ASHA "
        f"cut.")
    parts.append("")
    if met:
        parts.append(f"Target met: {pooled:.2f} <= {TARGET:.2f} over {len(runs)} seeds.")
    else:
        why = "".join(f" Seed {r['seed']}: ASHA + TPE never came within {WITHIN_DB} dB of random's best "
                      f"({r['random']['best']:.2f} dB)." for r in asha_lost)
        parts.append(
            f"Target missed ({pooled:.2f} > {TARGET:.2f}" + (f", and {len(asha_lost)} seed(s) lost" if asha_lost else "")
            + f").{why} ASHA let {', '.join(str(sum(t.epochs == epochs for t in r['asha_tpe']['trials'])) for r in runs)} "
            f"of {trials} trials run all {epochs} epochs, where synchronous successive halving at reduction factor "
            f"{rf:g} would keep about {trials / rf ** max(1, round(math.log(epochs / g, rf))):.0f}: asynchronous ASHA "
            f"decides each trial against the trials that reached the rung before it, so the first trial passes every "
            f"rung unopposed and the next few face little competition, whatever they are; and TPE samples the first "
            f"third of the budget at random. In a budget of {trials} trials those early full runs are a large share of "
            f"the epochs; they shrink as a share as budgets grow. Random search's epochs-to-target depends on where "
            f"in its order a good trial falls.")
    if load[0] > 0.5 * (os.cpu_count() or 1):  # others kept half the cores busy before we started
        parts.append("")
        parts.append(f"Taken under load (load average {load[0]:.1f} before, {load[1]:.1f} after on "
                     f"{os.cpu_count()} cores): epoch counts do not depend on load, wall seconds do.")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", type=Path, default=SPACE,
                        help=f"search space file (default {SPACE.relative_to(REPO)})")
    parser.add_argument("--save", type=Path, help="folder for every epoch's row of every trial, as CSV")
    parser.add_argument("--from-saved", type=Path, metavar="DIR",
                        help="report on the searches a --save run left in DIR instead of running them")
    parser.add_argument("--full", action="store_true",
                        help="the space file's own budget and all of mnist5k, 5 seeds")
    parser.add_argument("--seeds", type=int, nargs="+", help="searcher seeds (default 0 1; --full 0..4)")
    parser.add_argument("--trials", type=int, help="trials per search (default 16; --full the file's)")
    parser.add_argument("--epochs", type=int, help="max epochs per trial (default 12; --full the file's)")
    parser.add_argument("--limit", type=int, help="mnist5k images per split, 0 for all (default 1000; --full 0)")
    parser.add_argument("--write", action="store_true", help="replace this section of docs/benchmarks.md")
    parser.add_argument("--section", default=SECTION,
                        help=f"which marked section --write replaces (default {SECTION}; the doc keeps two runs)")
    args = parser.parse_args(argv)
    seeds = args.seeds or (list(range(5)) if args.full else [0, 1])
    trials = args.trials or (None if args.full else 16)
    epochs = args.epochs or (None if args.full else 12)
    limit = (args.limit if args.limit is not None else (0 if args.full else 1000)) or None
    logging.basicConfig(level=logging.WARNING)
    # A checkpoint per epoch of a seconds-long trial is by design; Ray's hint about it is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    load_before = os.getloadavg()[0]
    command = command_line()
    if args.from_saved:  # the report of an earlier --save run, as that run would have written it
        meta = json.loads((args.from_saved / "run.json").read_text())
        runs = [load_saved(args.from_saved, seed, args.space, trials, epochs) for seed in meta["seeds"]]
        seeds, limit, load, command = meta["seeds"], meta["limit"], tuple(meta["load"]), meta["command"]
    else:
        from tuner import search

        search._init_ray(None)  # one Ray for every search, started the way run_search starts it
        runs = []
        with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
            for seed in seeds:
                runs.append(run_seed(args.space, seed, trials, epochs, limit, Path(tmp), args.save))
        import ray

        ray.shutdown()
        load = (load_before, os.getloadavg()[0])
        if args.save:
            (args.save / "run.json").write_text(json.dumps(
                {"command": command, "seeds": seeds, "limit": limit, "load": load}))
    trials, epochs = runs[0]["trials_budget"], runs[0]["max_epochs"]
    body = report(runs, trials, epochs, load)
    print(body)
    if args.write:
        text = "\n\n".join([
            f"## Search efficiency (`bench_search.py`), {f'{limit:,} images per split' if limit else 'all of mnist5k'}",
            describe_machine(threads=1) + f" Load average {load[0]:.1f} / {load[1]:.1f} (before / after).",
            f"Command: `{command}`" + (f" (report re-read with `{command_line()}`)" if args.from_saved else ""),
            f"`{args.space.resolve().relative_to(REPO) if args.space.resolve().is_relative_to(REPO) else args.space}`'s space and scheduler (ASHA grace period {runs[0]['grace']}, "
            f"reduction factor {runs[0]['rf']:g}) on `mnist5k` "
            f"({f'limit {limit} images per split' if limit else 'all of it'}), {trials} trials of at most "
            f"{epochs} epochs, 2 at a time, seeds {', '.join(map(str, seeds))}. "
            f"ASHA + TPE is `tuner.search.run_search` as is; the baseline is random search "
            f"(`BasicVariantGenerator`, FIFO) over the same `spec.param_space()` with the same trainable, "
            f"every trial trained to the end.",
            body,
        ])
        print(f"wrote {write_section(args.section, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
