"""Search efficiency (issue 11), as an ablation: which part of ASHA + TPE earns its keep?

Every arm searches the same space (``search_spaces/mnist5k_wide.yaml``: the quickstart's data and
noise with the wide ranges of a first search, U-Net stages, residual learning and learning-rate
schedules included) with the same trial budget, the same trainable
(:func:`tuner.search.train_trial` through ``tune.with_parameters``), 2 trials at a time on 1 CPU
each, and the same searcher seed:

- ``random_end``: random search (``BasicVariantGenerator``), every trial to ``max_epochs`` (FIFO);
- ``random_asha``: the same random draws, ASHA stopping poor trials;
- ``stock_tpe``: Ray's stock ``OptunaSearch`` + ASHA: what ``tuner tune`` did before issue 11
  (a trial ASHA stops is told to TPE as ``COMPLETE`` with its early score);
- ``tpe_pruned``: :class:`tuner.searcher.StudySearch` + ASHA: stopped trials told as ``PRUNED``;
- ``tpe_liar_mv``: that plus ``constant_liar`` and ``multivariate`` TPE (``searcher:`` defaults);
- ``tpe_warm``: that plus the space file's ``start_from`` (the hand-tuned U-Net recipe first):
  ``tuner tune`` as shipped.

Per seed the reference is the best ``val_psnr`` any arm found; each arm's epochs (one per
reported epoch of any trial, in the order they finished) are counted until its running best first
comes within 0.25 dB of it. The figure plots each arm's anytime curve (best so far against epochs
spent), mean and spread over seeds. Target for ``tpe_warm``: random-to-the-end's final quality in
at most half its epochs, pooled over seeds, and the better final model on at least 4 of 5 seeds.

    python benchmarks/bench_search.py --seeds 0 1 2 3 4 --save /tmp/bs --write   # ~1 h on 2 free cores
    python benchmarks/bench_search.py --from-saved /tmp/bs --write                # re-report only
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
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, command_line, describe_machine, table, write_section  # noqa: E402
from tuner.data import load_dataset  # noqa: E402
from tuner.spec import ExperimentSpec, load_spec  # noqa: E402
from tuner.metrics import METRIC, MODE  # noqa: E402

SECTION = "bench_search"
SPACE = REPO / "search_spaces" / "mnist5k_wide.yaml"
FIGURE = REPO / "docs" / "figures" / "bench_search_anytime.png"
WITHIN_DB = 0.25  # "as good as the best" means within this many dB of it
ARMS = {  # name -> what the report calls it
    "random_end": "random, every trial to the end",
    "random_asha": "random + ASHA",
    "stock_tpe": "Ray's stock OptunaSearch (TPE) + ASHA",
    "tpe_pruned": "TPE + ASHA, stopped trials told as PRUNED",
    "tpe_liar_mv": "... + constant_liar + multivariate",
    "tpe_warm": "... + warm start (tuner tune as shipped)",
}
FINAL, BASELINE = "tpe_warm", "random_end"


def make_spec(space: Path, seed: int, trials: Optional[int], epochs: Optional[int], limit: Optional[int],
              folder: Path) -> ExperimentSpec:
    """The space file with this benchmark's budget (its scheduler kept), validated by ``load_spec``."""
    data = yaml.safe_load(space.read_text())
    data.update(name=f"search_s{seed}", seed=seed)
    if limit:
        data["dataset"]["limit"] = limit
    b = data["budget"]
    b.update(num_samples=trials or b["num_samples"], max_epochs=epochs or b["max_epochs"],
             max_concurrent=2, max_failures=0)
    b["grace_period"] = min(b["grace_period"], b["max_epochs"])
    path = folder / f"search_s{seed}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_spec(path)


def search_alg(arm: str, spec: ExperimentSpec):
    """The arm's searcher, under the concurrency limit every arm shares."""
    import optuna
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from tuner import search, study
    from tuner.searcher import StudySearch

    b = spec.budget
    if arm.startswith("random"):
        return BasicVariantGenerator(max_concurrent=b.max_concurrent, random_state=spec.seed)
    if arm == "stock_tpe":  # tuner.search.run_search before issue 11, exactly
        sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=max(2, min(10, b.num_samples // 3)))
        return ConcurrencyLimiter(OptunaSearch(metric=METRIC, mode=MODE, sampler=sampler), b.max_concurrent)
    liar = arm != "tpe_pruned"
    arm_spec = spec.model_copy(update={
        "searcher": spec.searcher.model_copy(update={"constant_liar": liar, "multivariate": liar}),
        "start_from": spec.start_from if arm == "tpe_warm" else []})
    storage = optuna.storages.InMemoryStorage()
    study.create_study(storage, spec.name, {})
    for point in arm_spec.start_from:
        optuna.load_study(study_name=spec.name, storage=storage).enqueue_trial(point)
    searcher = StudySearch(max_t=b.max_epochs, metric=METRIC, mode=MODE,
                           sampler=search.make_sampler(arm_spec), storage=storage, study_name=spec.name)
    return ConcurrencyLimiter(searcher, b.max_concurrent)


def run_arm(arm: str, spec: ExperimentSpec, data, storage: Path):
    """One search; returns Ray Tune's ``ResultGrid``."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from tuner.search import train_trial

    b = spec.budget
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data=data, eval_noise=spec.eval_noise.model_dump(), threads=1),
        {"cpu": spec.resources.cpus_per_trial})
    scheduler = FIFOScheduler() if arm == "random_end" else ASHAScheduler(
        time_attr="epoch", max_t=b.max_epochs, grace_period=b.grace_period, reduction_factor=b.reduction_factor)
    tuner = tune.Tuner(
        trainable, param_space=spec.param_space(),
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=b.num_samples,
                                    search_alg=search_alg(arm, spec), scheduler=scheduler, reuse_actors=True),
        run_config=tune.RunConfig(name=f"{arm}_s{spec.seed}", storage_path=str(storage), verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    return tuner.fit()


def epoch_rows(results, start_clock: float) -> pd.DataFrame:
    """Every reported epoch of every trial, in the order they finished, with the trial's config.

    Returns:
        Columns ``trial``, ``epoch``, ``val_psnr``, ``finished`` (seconds since the search started)
        and the trial's hyperparameters.
    """
    frames = []
    for r in results:
        f = r.metrics_dataframe
        if f is None or f.empty:
            continue
        # Ray's `timestamp` is whole seconds: the latest (timestamp - time_total_s) over a trial's
        # rows is its start to within a second, and start + time_total_s orders rows finely.
        start = float((f["timestamp"] - f["time_total_s"]).max())
        frames.append(pd.DataFrame({"trial": f["trial_id"], "epoch": f["epoch"], METRIC: f[METRIC],
                                    "finished": start + f["time_total_s"] - start_clock}).assign(**{
            k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.config.items()}))
    return pd.concat(frames).sort_values("finished", ignore_index=True)


def anytime(rows: pd.DataFrame, epochs: int) -> np.ndarray:
    """Best val_psnr so far after 1..epochs epochs spent (the last value carried on)."""
    best = rows[METRIC].cummax().to_numpy()
    return np.concatenate([best, np.full(max(0, epochs - len(best)), best[-1])])[:epochs]


def epochs_to(rows: pd.DataFrame, target: float) -> Optional[int]:
    """Epochs spent until the running best first reaches ``target`` (None when never)."""
    hit = np.nonzero(rows[METRIC].cummax().to_numpy() >= target)[0]
    return int(hit[0]) + 1 if len(hit) else None


def run_seed(space: Path, seed: int, trials, epochs, limit, storage: Path, save: Optional[Path]) -> dict:
    """Every arm with one seed; returns {arm: epoch rows}."""
    spec = make_spec(space, seed, trials, epochs, limit, storage)
    data = load_dataset(**spec.dataset.model_dump())
    out = {}
    for arm in ARMS:
        clock, t = time.time(), time.perf_counter()
        frame = epoch_rows(run_arm(arm, spec, data, storage), clock)
        wall = time.perf_counter() - t
        frame = frame.assign(search_wall=wall)
        if save:
            save.mkdir(parents=True, exist_ok=True)
            frame.to_csv(save / f"{arm}_s{seed}.csv", index=False)
        out[arm] = frame
        print(f"seed {seed} {arm}: best {frame[METRIC].max():.2f} dB, {len(frame)} epochs, {wall:.0f} s", flush=True)
    return out


def plot(runs: dict[int, dict[str, pd.DataFrame]], path: Path, floor: float) -> None:
    """Anytime curves: mean best-so-far over seeds against epochs spent, with the min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    longest = max(len(f) for arms in runs.values() for f in arms.values())
    fig = Figure(figsize=(8, 4.6), dpi=100)
    ax = fig.subplots()
    for arm, label in ARMS.items():
        have = [arms[arm] for arms in runs.values() if arm in arms]
        if not have:
            continue
        curves = np.stack([anytime(f, longest) for f in have])  # (seeds with this arm, epochs)
        spent = max(len(f) for f in have)
        x = np.arange(1, spent + 1)
        mean = curves.mean(0)[:spent]
        line, = ax.plot(x, mean, label=label, lw=2.2 if arm == FINAL else 1.4,
                        ls="--" if arm == BASELINE else "-")
        ax.fill_between(x, curves.min(0)[:spent], curves.max(0)[:spent], color=line.get_color(), alpha=0.12)
    random_epochs = statistics.mean(len(arms[BASELINE]) for arms in runs.values())
    ax.axvline(floor * random_epochs, color="0.4", lw=0.8, ls=":",
               label=f"perfect-ASHA floor ({floor:.2f} of random_end's epochs)")
    lo = np.percentile([anytime(arms[BASELINE], longest)[len(arms[BASELINE]) // 4] for arms in runs.values()], 0)
    ax.set_ylim(bottom=lo - 1.0)
    ax.set_xlabel("epochs spent (all trials)")
    ax.set_ylabel("best val_psnr so far (dB)")
    counts = sorted({sum(arm in arms for arms in runs.values()) for arm in ARMS} - {0})
    ax.set_title(f"Anytime search quality, mean and min-max over {' or '.join(map(str, counts))} seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.subplots_adjust(left=0.09, right=0.98, top=0.93, bottom=0.11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def asha_floor(grace: int, rf: float, max_epochs: int) -> float:
    """The share of random-to-the-end's epochs a perfect (synchronous) successive halving spends:
    every trial runs to the first rung, 1/rf of them to the next, ... (a model of the bracket)."""
    rungs, r = [], grace
    while r < max_epochs:
        rungs.append(r)
        r = int(round(r * rf))
    rungs.append(max_epochs)
    spent = sum((rungs[i] - (rungs[i - 1] if i else 0)) / rf ** i for i in range(len(rungs)))
    return spent / max_epochs


def report(runs: dict[int, dict[str, pd.DataFrame]], spec_budget: dict, load: tuple) -> str:
    """The markdown: per arm the final quality, epochs spent and epochs to within 0.25 dB; the target."""
    seeds = sorted(s for s in runs if FINAL in runs[s] and BASELINE in runs[s])  # the target's seeds
    refs = {s: max(f[METRIC].max() for f in runs[s].values()) for s in runs}
    head = ["arm", "seeds run", "best val_psnr, mean (min-max) dB", "epochs spent, mean", f"epochs to within "
            f"{WITHIN_DB} dB of the best any arm found, per seed", "reached on",
            "pooled epochs to there / random_end's (same seeds)"]
    body = []
    for arm, label in ARMS.items():
        mine = [s for s in sorted(runs) if arm in runs[s] and BASELINE in runs[s]]
        if not mine:
            continue
        best = [runs[s][arm][METRIC].max() for s in mine]
        to = [epochs_to(runs[s][arm], refs[s] - WITHIN_DB) for s in mine]
        pooled = sum(t if t is not None else len(runs[s][arm]) for s, t in zip(mine, to))
        pooled_base = sum((epochs_to(runs[s][BASELINE], refs[s] - WITHIN_DB) or len(runs[s][BASELINE]))
                          for s in mine)
        body.append([f"`{arm}`: {label}", ", ".join(map(str, mine)),
                     f"{statistics.mean(best):.2f} ({min(best):.2f}-{max(best):.2f})",
                     f"{statistics.mean(len(runs[s][arm]) for s in mine):.0f}",
                     ", ".join("-" if t is None else str(t) for t in to),
                     f"{sum(t is not None for t in to)} of {len(mine)}", f"{pooled / pooled_base:.2f}"])
    parts = [table(head, body), ""]
    partial = [s for s in sorted(runs) if len(runs[s]) < len(ARMS)]
    if partial:
        parts += [f"Seeds {', '.join(map(str, partial))} ran only "
                  + "; ".join(f"{s}: {', '.join(f'`{a}`' for a in runs[s])}" for s in partial)
                  + ": their 'best any arm found' is the best of those arms.", ""]
    # The target: tpe_warm reaches random_end's final best in at most half random_end's epochs, pooled.
    need = [(epochs_to(runs[s][FINAL], runs[s][BASELINE][METRIC].max()), len(runs[s][FINAL]), len(runs[s][BASELINE]))
            for s in seeds]
    used = sum(t if t is not None else spent for t, spent, _ in need)
    base = sum(b for _, _, b in need)
    wins = sum(runs[s][FINAL][METRIC].max() > runs[s][BASELINE][METRIC].max() for s in seeds)
    never = sum(t is None for t, _, _ in need)
    ratio = used / base  # a seed where tpe_warm never got there is charged every epoch it spent
    # The same on the mean curves: epochs until tpe_warm's mean best-so-far over seeds reaches
    # random_end's mean final best, against random_end's epochs.
    longest = max(len(runs[s][a]) for s in seeds for a in (FINAL, BASELINE))
    mean_final = np.stack([anytime(runs[s][FINAL], longest) for s in seeds]).mean(0)
    mean_target = statistics.mean(runs[s][BASELINE][METRIC].max() for s in seeds)
    hit = np.nonzero(mean_final >= mean_target)[0]
    mean_ratio = (int(hit[0]) + 1) / statistics.mean(len(runs[s][BASELINE]) for s in seeds) if len(hit) else None
    met = ratio <= 0.5 and wins >= math.ceil(0.8 * len(seeds))
    g, rf, e = spec_budget["grace_period"], spec_budget["reduction_factor"], spec_budget["max_epochs"]
    floor = asha_floor(g, rf, e)
    parts += [table(["target (tpe_warm against random_end)", "measured", "target", "verdict"], [
        ["epochs to random_end's final best, pooled over seeds / random_end's epochs",
         f"**{ratio:.2f}** ({used} / {base}" + (f"; never reached on {never} seed(s), charged all its epochs" if never else "")
         + ")", "<= 0.50", "met" if ratio <= 0.5 else "missed"],
        ["the same on the mean curves: epochs until tpe_warm's mean best-so-far reaches random_end's mean final "
         f"best ({mean_target:.2f} dB) / random_end's epochs",
         "never" if mean_ratio is None else f"**{mean_ratio:.2f}**", "<= 0.50",
         "met" if mean_ratio is not None and mean_ratio <= 0.5 else "missed"],
        ["seeds where tpe_warm's best beats random_end's", f"**{wins} of {len(seeds)}** (mean "
         f"{statistics.mean(runs[s][FINAL][METRIC].max() - runs[s][BASELINE][METRIC].max() for s in seeds):+.2f} dB)",
         f">= {math.ceil(0.8 * len(seeds))} of {len(seeds)}", "met" if wins >= math.ceil(0.8 * len(seeds)) else "missed"],
        ["perfect-ASHA floor (the least any ASHA arm can spend, as a share of random_end's epochs)",
         f"{floor:.2f}", "", ""],
    ]), ""]
    parts.append(
        f"What it means: each arm's search spent the epochs in the *epochs spent* column on the same budget "
        f"of trials. "
        f"*Epochs to within {WITHIN_DB} dB* is the compute a user pays before the search holds a model about as good "
        f"as any arm found with that seed ('-': never). The floor: with max_epochs {e}, grace period {g} and reduction "
        f"factor {rf:g}, even a perfect successive halving trains every trial to epoch {g} and a 1/{rf:g} share on, "
        f"so it spends about {floor:.2f} of random-to-the-end's epochs; asynchronous ASHA spends more, because the "
        f"first trials pass every rung unopposed. Verdict: {'target met' if met else 'target missed'}.")
    if load[0] > 0.5 * (os.cpu_count() or 1):
        parts += ["", f"Taken under load (load average {load[0]:.1f} before, {load[1]:.1f} after on {os.cpu_count()} "
                      f"cores): epoch counts do not depend on load, wall seconds do."]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", type=Path, default=SPACE, help="search space file (default mnist5k_wide.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="searcher seeds")
    parser.add_argument("--trials", type=int, default=32, help="trials per search (default 32)")
    parser.add_argument("--epochs", type=int, default=12, help="max epochs per trial (default 12)")
    parser.add_argument("--limit", type=int, default=1000, help="mnist5k images per split, 0 for all (default 1000)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), help="run only these arms (default all)")
    parser.add_argument("--save", type=Path, help="folder for every epoch of every trial, as CSV per arm and seed")
    parser.add_argument("--from-saved", type=Path, nargs="+", metavar="DIR",
                        help="report on --save folders without searching (a later folder's arm and seed "
                             "replaces an earlier one's)")
    parser.add_argument("--write", action="store_true", help="replace this section of docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.arms:
        for arm in list(ARMS):
            if arm not in args.arms:
                ARMS.pop(arm)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    budget = dict(yaml.safe_load(args.space.read_text())["budget"], max_epochs=args.epochs)
    if args.from_saved:
        runs, metas = {}, []
        for folder in args.from_saved:
            if (folder / "run.json").exists():
                metas.append(json.loads((folder / "run.json").read_text()))
            for arm in ARMS:
                for csv in sorted(folder.glob(f"{arm}_s*.csv")):
                    runs.setdefault(int(csv.stem.rsplit("_s", 1)[1]), {})[arm] = pd.read_csv(csv)
        runs = dict(sorted(runs.items()))
        meta = metas[0]
        load = (max(m["load"][0] for m in metas), max(m["load"][1] for m in metas))
        command = "; ".join(dict.fromkeys(m["command"] for m in metas))
        limit, trials = meta["limit"], meta["trials"]
    else:
        from tuner import search

        load_before, command, limit, trials = os.getloadavg()[0], command_line(), args.limit or None, args.trials
        search._init_ray(None)  # one Ray for every search, started the way run_search starts it
        runs = {}
        with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
            for s in args.seeds:
                runs[s] = run_seed(args.space, s, args.trials, args.epochs, limit, Path(tmp), args.save)
                load = (load_before, os.getloadavg()[0])
                if args.save:  # after every seed: an interrupted run still reports what it finished
                    (args.save / "run.json").write_text(json.dumps(
                        {"command": command, "seeds": sorted(runs), "limit": limit, "load": load, "trials": trials}))
        import ray

        ray.shutdown()
    body = report(runs, budget, load)
    plot(runs, FIGURE, asha_floor(budget["grace_period"], budget["reduction_factor"], budget["max_epochs"]))
    print(body)
    if args.write:
        text = "\n\n".join([
            f"## Search efficiency (`bench_search.py`): an ablation, {f'{limit:,} images per split' if limit else 'all of mnist5k'}",
            describe_machine(threads=1) + f" Load average {load[0]:.1f} / {load[1]:.1f} (before / after).",
            f"Command: `{command}`" + (f" (report re-read with `{command_line()}`)" if args.from_saved else ""),
            f"`{args.space.resolve().relative_to(REPO)}`'s space and scheduler (ASHA grace period "
            f"{budget['grace_period']}, reduction factor {budget['reduction_factor']:g}) on `mnist5k` "
            f"({f'limit {limit} images per split' if limit else 'all of it'}), {trials} trials of at most "
            f"{args.epochs} epochs per search, 2 at a time, seeds {', '.join(map(str, sorted(runs)))}"
            f"{' (not every arm on every seed: see below)' if any(len(a) < len(ARMS) for a in runs.values()) else ''}.",
            f"![anytime curves](figures/{FIGURE.name})",
            body,
        ])
        print(f"wrote {write_section(SECTION, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
