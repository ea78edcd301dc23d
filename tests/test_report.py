"""The report on real runs: a real Ray Tune search of ``search_spaces/tiny.yaml`` (once per
module) and a small search built to diverge, then ``write_report`` and ``tuner report``."""
from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tuner.cli import main
from tuner.report import COMPLETED, DIVERGED, ERRORED, STOPPED, TIME_BUDGET, UNFINISHED, trial_status, write_report
from tuner.report.page import render
from tuner.report.run import (TrialSummary, asha_rungs, compute_saved, ended_by_time_budget, rung_decisions,
                              trial_outcome, write_trials_csv)
from tuner.search import SearchError, run_search
from tuner.budget import BudgetSpec
from tuner.spec import ExperimentSpec, load_spec
from tuner.metrics import METRIC

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("summary", "compute", "best-config", "learning-curves", "examples", "psnr-histogram",
            "noise-sweep", "importance", "latent", "trials")
FIGURES = {"learning-curves": 1, "examples": 1, "psnr-histogram": 1, "noise-sweep": 1, "importance": 2, "latent": 1}


class _Page(HTMLParser):
    """The ids, the figures per section and every local file a page refers to."""

    def __init__(self):
        super().__init__()
        self.ids: list[str] = []
        self.refs: list[str] = []
        self.images: dict[str, list[str]] = {}
        self.anchors: list[str] = []  # the page's own links, #id
        self.text: dict[str, str] = {}  # each section's text
        self._section = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "section":
            self._section = a.get("id")
        if tag == "img":
            self.refs.append(a["src"])
            self.images.setdefault(self._section, []).append(a["src"])
        if tag == "a" and a.get("href", "").startswith("#"):
            self.anchors.append(a["href"][1:])
        elif tag == "a":
            self.refs.append(a["href"])
        if tag in ("link", "script") and (a.get("href") or a.get("src")):
            self.refs.append(a.get("href") or a.get("src"))

    def handle_data(self, data):
        if self._section:
            self.text[self._section] = self.text.get(self._section, "") + data


def _parse(index: Path) -> _Page:
    page = _Page()
    page.feed(index.read_text(encoding="utf-8"))
    return page


def _rows(run_dir: str) -> list[dict[str, str]]:
    with open(Path(run_dir, "report", "trials.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _ray_status(result, max_epochs: int) -> str:
    """The outcome Ray Tune's ResultGrid records for a trial, in the report's words."""
    if result.error is not None:
        return ERRORED
    df = result.metrics_dataframe
    if int(df["diverged"].iloc[-1]):
        return DIVERGED
    return COMPLETED if int(df["epoch"].iloc[-1]) >= max_epochs else STOPPED


@pytest.fixture(scope="module")
def tiny(tiny_run):
    """tiny.yaml searched for real (4 trials, ASHA rf 2, 3 epochs; shared with test_search) and its report."""
    result, spec = tiny_run
    return spec, result, write_report(result.run_dir)


def _complete(spec, index: Path) -> int:
    """Trials the run's study database holds as COMPLETE (ran to the end): what importances rank.
    Asynchronous ASHA decides how many of tiny's 4 trials that is (1 to 3), by their timing."""
    import optuna

    study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{index.parent.parent / 'study.db'}")
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def _figures(spec, index: Path) -> dict[str, int]:
    return {**FIGURES, "importance": FIGURES["importance"] if _complete(spec, index) >= 2 else 0}


def test_page_has_every_section_with_its_figures(tiny):
    spec, result, index = tiny
    assert index == Path(result.run_dir, "report", "index.html")
    page = _parse(index)
    for section in SECTIONS:
        assert page.ids.count(section) == 1, section
    for section, n in _figures(spec, index).items():
        assert len(page.images.get(section, [])) == n, (section, page.images.get(section))
    text = index.read_text()
    assert f"{result.metrics['test_psnr']:.2f} dB" in text  # the headline is the search's own test PSNR
    assert "<style>" in text and "<script" not in text  # self-contained: inline CSS, nothing fetched


def test_every_referenced_file_exists(tiny):
    _, result, index = tiny
    page = _parse(index)
    assert page.refs
    for ref in page.refs:
        assert "://" not in ref and not ref.startswith("/"), ref  # relative: the folder can be moved or served
        path = index.parent / ref
        assert path.is_file() and path.stat().st_size > 0, ref
        if ref.endswith(".png"):
            with Image.open(path) as im:
                assert im.format == "PNG" and min(im.size) >= 100, (ref, im.size)
    assert "trials.csv" in page.refs


def test_every_anchor_has_its_section_and_every_figure_its_file(tiny):
    """The page comes from a template: the navigation and the sections it links must agree, and
    every figure the template names must be a PNG this report drew."""
    spec, _, index = tiny
    page = _parse(index)
    assert page.anchors == list(SECTIONS)  # the navigation, in page order
    assert [i for i in page.ids if i in SECTIONS] == list(SECTIONS)  # each anchor lands on its section
    figures = [src for srcs in page.images.values() for src in srcs]
    assert len(figures) == sum(_figures(spec, index).values())
    assert sorted(figures) == sorted(p.name for p in index.parent.glob("*.png"))  # none missing, none stale
    html = index.read_text()
    assert "tuner.load_model(&#39;" in html  # autoescaped: the quotes of a path are entities
    # The ranking comes from the study database's trials that ran to the end (ASHA's pruned ones are
    # left out: an early score is not comparable), too few for more than a rough ranking.
    complete = _complete(spec, index)
    assert 1 <= complete < spec.budget.num_samples
    assert f"{complete} trials that ran to the end" in page.text["importance"]
    assert ("rough" if complete >= 2 else "importances need at least 2") in page.text["importance"]


def test_trials_csv_agrees_with_ray_tune(tiny):
    spec, result, _ = tiny
    from ray.tune import ExperimentAnalysis

    rows = {r["trial_id"]: r for r in _rows(result.run_dir)}
    max_epochs = spec.budget.max_epochs
    assert len(rows) == len(result.results) == spec.budget.num_samples
    frames = ExperimentAnalysis(result.run_dir).trial_dataframes
    for r in result.results:
        trial_id = r.metrics["trial_id"]
        row = rows[trial_id]
        df = r.metrics_dataframe
        assert row["status"] == _ray_status(r, max_epochs)
        assert int(row["epochs"]) == int(df["epoch"].iloc[-1]) == len(frames[trial_id])
        assert float(row[f"best_{METRIC}"]) == pytest.approx(float(df[METRIC].max()), abs=1e-9)
        for key, value in r.config.items():  # every fixed and searched hyperparameter
            assert row[key] == str(value), key
    assert set(spec.search) | set(spec.fixed) <= set(next(iter(rows.values())))


def test_asha_stopped_a_trial_and_the_savings_add_up(tiny):
    spec, result, index = tiny
    rows = _rows(result.run_dir)
    statuses = [r["status"] for r in rows]
    assert STOPPED in statuses  # reduction_factor 2 over 4 trials: ASHA must cut someone
    # What tells ASHA's stops from the time budget's (ended_by_time_budget): Ray marks the result
    # its scheduler stopped a trial on `done`, and that result is one ASHA judged at a rung.
    for r in result.results:
        df = r.metrics_dataframe
        if int(df["epoch"].iloc[-1]) < spec.budget.max_epochs and not int(df["diverged"].iloc[-1]):
            assert bool(df["done"].iloc[-1]), r.metrics["trial_id"]
            assert rung_decisions(list(df["epoch"]), asha_rungs(spec.budget))[-1] is not None
    summary = json.loads((index.parent / "summary.json").read_text())
    c = summary["compute"]
    run = sum(int(r["epochs"]) for r in rows)
    assert c["epochs_run"] == run < c["epochs_full"] == len(rows) * spec.budget.max_epochs
    assert c["saved_by_asha"] == sum(spec.budget.max_epochs - int(r["epochs"]) for r in rows if r["status"] == STOPPED)
    assert c["saved_pct"] == pytest.approx(100 * (c["epochs_full"] - run) / c["epochs_full"])
    assert f"{c['saved_pct']:.0f}%" in index.read_text()
    assert summary["statuses"][STOPPED] == statuses.count(STOPPED)


def test_report_measures_the_exported_model_again(tiny):
    spec, result, index = tiny
    summary = json.loads((index.parent / "summary.json").read_text())
    # Same weights, same test split, same fixed noise (eval seed + TEST_SEED_OFFSET): the same score,
    # but for the export's rounding of the output to 8 bits (the report's recomputation keeps floats).
    assert summary["test_psnr_recomputed"] == pytest.approx(result.metrics["test_psnr"], abs=1e-2)
    assert summary["best_trial_id"] == result.metrics["trial_id"]
    sweep = summary["noise_sweep"]
    levels = [p["level"] for p in sweep]
    level = spec.eval_noise.level
    assert len(levels) == 7 and min(levels) == pytest.approx(level / 4) and max(levels) == pytest.approx(2 * level)
    at_eval = next(p for p in sweep if p["level"] == pytest.approx(level))
    assert at_eval["psnr"] == pytest.approx(result.metrics["test_psnr"], abs=1e-2)  # tiny's test split < 2000 images; 8-bit rounding aside
    assert at_eval["noisy_psnr"] == pytest.approx(result.metrics["noisy_test_psnr"], abs=1e-3)
    noisy = [p["noisy_psnr"] for p in sweep]
    assert noisy == sorted(noisy, reverse=True)  # more noise, worse input
    if _complete(spec, index) >= 2:
        assert set(summary["importances"]) == set(spec.search)
        assert sum(summary["importances"].values()) == pytest.approx(1.0)


def test_a_diverged_trial_is_reported_as_diverged(tmp_path, capsys):
    # SGD at lr 100 without batch norm sends the BCE loss to NaN in the first epoch on digits;
    # lr 0.1 trains normally. TPE (seeded) draws both.
    spec_file = tmp_path / "diverge.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "diverge", "seed": 0, "dataset": {"name": "digits"},
        "eval_noise": {"kind": "gaussian", "level": 0.3},
        "budget": {"num_samples": 3, "max_epochs": 2, "grace_period": 1, "reduction_factor": 2,
                   "max_concurrent": 2},
        "fixed": {"width": 8, "depth": 1, "latent_dim": 8, "batch_size": 64, "skip": True,
                  "optimizer": "sgd", "batch_norm": False, "loss": "bce"},
        "search": {"lr": {"choice": [0.1, 100.0]}},
    }))
    spec = load_spec(spec_file)
    storage = tmp_path / "runs"
    try:
        result = run_search(spec, storage=str(storage), verbose=0)
        exported = True
    except SearchError:  # every trial diverged: nothing to export, the report must still work
        result, exported = None, False
    run_dir = storage / "diverge"
    assert main(["report", str(run_dir)]) == 0
    assert str(run_dir / "report" / "index.html") in capsys.readouterr().out
    rows = _rows(str(run_dir))
    assert len(rows) == 3
    for row in rows:
        assert row["status"] == (DIVERGED if float(row["lr"]) == 100.0 else COMPLETED), row
    assert DIVERGED in {r["status"] for r in rows}
    if exported:
        statuses = {r.metrics["trial_id"]: _ray_status(r, 2) for r in result.results}
        assert statuses == {r["trial_id"]: r["status"] for r in rows}
    page = _parse(run_dir / "report" / "index.html")
    assert all(s in page.ids for s in SECTIONS)
    for ref in page.refs:
        assert (run_dir / "report" / ref).is_file(), ref
    assert "diverged" in (run_dir / "report" / "index.html").read_text()


def test_trial_status_rules():
    # The cases a tiny real run does not produce: errors and interrupted searches.
    assert trial_status("TERMINATED", 3, False, False, 3) == COMPLETED
    assert trial_status("TERMINATED", 1, False, False, 3) == STOPPED
    assert trial_status("TERMINATED", 2, True, False, 3) == DIVERGED
    assert trial_status("ERROR", 2, False, True, 3) == ERRORED
    assert trial_status("ERROR", 0, False, False, 3) == ERRORED
    assert trial_status("TERMINATED", 0, False, False, 3) == ERRORED  # ended without one result
    assert trial_status("TERMINATED", 3, False, True, 3) == COMPLETED  # crashed once, Ray restarted it
    assert trial_status("RUNNING", 1, False, False, 3) == UNFINISHED
    assert trial_status("PENDING", 1, False, True, 3) == ERRORED
    assert trial_status("TERMINATED", 1, False, False, 3, out_of_time=True) == TIME_BUDGET
    assert trial_status("TERMINATED", 3, False, False, 3, out_of_time=True) == COMPLETED  # it had reached max_t
    assert trial_status("TERMINATED", 2, True, False, 3, out_of_time=True) == DIVERGED


# ----------------------------------------------------------------------------- the time budget

# search_spaces/bsd68.yaml's budget: 28 minutes for the search, ASHA over training seconds.
BSD68_BUDGET = dict(time_budget_s=1680, time_attr="train_seconds", max_train_seconds=1290, grace_period=80,
                    reduction_factor=3, max_epochs=100000, num_samples=5, max_concurrent=1)


def _seconds(last: float, step: float = 31.0) -> list[float]:
    """A trial's train_seconds at the end of each epoch: one epoch every ``step`` s up to ``last``."""
    n = max(1, round(last / step))
    return [last * (i + 1) / n for i in range(n)]


def test_asha_rungs_and_where_asha_judges_a_trial():
    budget = BudgetSpec(**BSD68_BUDGET)
    rungs = asha_rungs(budget)
    assert rungs == [80, 240, 720]  # bsd68.yaml's comment: grace_period * reduction_factor**k < max_t
    assert rung_decisions([31, 62, 93, 124, 217, 248, 279], rungs) == [None, None, 80, None, None, 240, None]
    # One result past two rungs is judged at the higher; the next one at the lower (Ray's _Bracket).
    assert rung_decisions([50, 250, 260, 270], rungs) == [None, 240, 80, None]
    assert rung_decisions([], rungs) == []


def test_a_trial_the_time_budget_ended_is_not_one_asha_stopped():
    """The 30-minute bsd68 run: the first trial trained its 1,290 s; the second had passed the
    80-s and 240-s rungs and was at 310 s when the search's 1,680 s ran out."""
    budget = BudgetSpec(**BSD68_BUDGET)

    def status(progress, done, ray_status="TERMINATED", error=False, epochs=None, max_epochs=None):
        epochs = epochs or list(range(1, len(progress) + 1))  # one result per epoch
        return trial_outcome(budget, ray_status, epochs=epochs, progress=progress, done=done, diverged=False,
                             has_error=error, max_epochs=max_epochs)

    assert status(_seconds(1290), done=True) == COMPLETED
    assert status(_seconds(310), done=False) == TIME_BUDGET  # bsd68's second trial
    assert status(_seconds(248), done=True) == STOPPED  # ASHA cut it on reaching the 240-s rung
    # It reached the rung, ASHA let it go on, and the budget ran out before its next epoch.
    assert status(_seconds(248), done=False) == TIME_BUDGET
    assert status([], done=None) == TIME_BUDGET  # created, waiting for a CPU, when the time ran out
    assert status([], done=None, error=True) == ERRORED
    assert status(_seconds(310), done=False, ray_status="RUNNING") == UNFINISHED  # interrupted, resumable
    # A trial ends itself at its max_epochs too, whichever comes first (Ray logs no `done` then).
    assert status(_seconds(310), done=False, max_epochs=10) == COMPLETED
    assert status(_seconds(310), done=False, max_epochs=11) == TIME_BUDGET
    # Results that do not record `done`: only a stop where ASHA judged the trial can be ASHA's.
    assert status(_seconds(248), done=None) == STOPPED
    assert status(_seconds(310), done=None) == TIME_BUDGET
    # Without a time budget nothing is put down to it.
    no_budget = BudgetSpec(**{**BSD68_BUDGET, "time_budget_s": None})
    assert not ended_by_time_budget(no_budget, "TERMINATED", _seconds(310), False)
    assert not ended_by_time_budget(no_budget, "TERMINATED", [], None)


def _bsd68_like() -> tuple[ExperimentSpec, list[TrialSummary]]:
    """A spec with bsd68's budget and the two trials of its 30-minute run, written by hand."""
    spec = ExperimentSpec.model_validate({
        "name": "bsd68-like", "dataset": {"name": "digits"}, "eval_noise": {"kind": "gaussian", "level": 0.3},
        "budget": BSD68_BUDGET, "search": {"lr": {"loguniform": [5.0e-4, 2.0e-3]}, "loss": {"choice": ["mse", "l1"]}},
    })

    def trial(trial_id, last, status, lr, loss, psnr):
        progress = _seconds(last)
        curve = [(x, psnr - 2 + 2 * x / last, False) for x in progress]  # climbing to `psnr`
        return TrialSummary(trial_id=trial_id, config={"lr": lr, "loss": loss}, status=status,
                            ray_status="TERMINATED", epochs=len(curve), best_val_psnr=psnr, best_epoch=len(curve),
                            curve=curve, seconds=last * 1.05, progress=last, best_at=last)

    return spec, [trial("a", 1290.0, COMPLETED, 1.0e-3, "mse", 29.1), trial("b", 310.0, TIME_BUDGET, 1.6e-3, "l1", 27.9)]


def test_the_time_budget_is_counted_and_shown_as_such(tmp_path):
    spec, trials = _bsd68_like()
    c = compute_saved(trials, spec.budget.max_t)
    assert (c.epochs_run, c.epochs_full) == (1600, 2580)  # training seconds, as time_attr counts
    assert (c.saved_by_asha, c.saved_by_time_budget, c.saved_other) == (0, 980, 0)

    out = tmp_path / "report"
    out.mkdir()
    html, summary = render(str(tmp_path), spec, trials, None, out)
    page = _Page()
    page.feed(html)
    header = " ".join(html.split('<p class="sub">')[1].split("</p>")[0].split())
    assert "2 trials, up to 1,290 training seconds each" in header
    assert "epochs" not in header
    compute = " ".join(page.text["compute"].split())
    assert "0 because ASHA stopped trials early" in compute
    assert "980 because the search's time budget (1,680 s) ended trials that were still running" in compute
    assert "0 because trials diverged" in compute
    assert "ended by the time budget" in page.text["trials"] and "stopped early" not in page.text["trials"]
    assert summary["statuses"][TIME_BUDGET] == 1 and summary["statuses"][STOPPED] == 0
    assert summary["compute"]["saved_by_time_budget"] == 980 and summary["compute"]["saved_by_asha"] == 0
    assert any("time budget" in n and "3 of the 5 trials never started" in n for n in summary["checks"])
    write_trials_csv(trials, spec, out / "trials.csv")
    assert {r["trial_id"]: r["status"] for r in _rows(str(tmp_path))} == {"a": COMPLETED, "b": TIME_BUDGET}


def test_a_real_search_cut_by_its_time_budget(tmp_path):
    """Real Ray Tune: one trial with far more training seconds to go than the search has time, so
    the time budget, not ASHA, ends it; Ray's own records must say so to the report."""
    spec_file = tmp_path / "budget.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "budget", "seed": 0, "dataset": {"name": "digits"},
        "eval_noise": {"kind": "gaussian", "level": 0.3},
        "budget": {"num_samples": 2, "max_concurrent": 1, "time_attr": "train_seconds", "max_epochs": 100000,
                   "max_train_seconds": 3600, "grace_period": 1, "reduction_factor": 3, "time_budget_s": 30},
        "fixed": {"width": 8, "depth": 1, "latent_dim": 8, "batch_size": 64, "skip": True},
        "search": {"lr": {"loguniform": [1.0e-3, 1.0e-2]}},
    }))
    result = run_search(load_spec(spec_file), storage=str(tmp_path / "runs"), verbose=0)
    index = write_report(result.run_dir)
    rows = _rows(result.run_dir)
    assert [r["status"] for r in rows] == [TIME_BUDGET]  # the second trial never started
    summary = json.loads((index.parent / "summary.json").read_text())
    c = summary["compute"]
    assert c["saved_by_asha"] == 0 and c["saved_by_time_budget"] == pytest.approx(c["epochs_full"] - c["epochs_run"])
    assert "up to 3,600 training seconds each" in " ".join(index.read_text().split())


def test_not_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        write_report(str(tmp_path))
    assert main(["report", str(tmp_path)]) == 2
