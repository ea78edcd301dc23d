"""The search's Optuna study: the true state of every trial, in a real database, and warm starts.

Real Ray Tune searches (search_spaces/tiny.yaml and a variant with ``start_from``), real Optuna
RDB storage on SQLite, read back with ``optuna.load_study`` as a user's notebook would.
"""
from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from ports import free_port

import tuner
from tuner.cli import main
from tuner.spec import load_spec
from tuner.storage import STUDY_FILE
from tuner.metrics import METRIC

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "search_spaces" / "tiny.yaml"


def _study(run_dir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir / STUDY_FILE}")


def _epochs(result) -> list[float]:
    """A Tune trial's val_psnr, one per epoch, in epoch order."""
    frame = result.metrics_dataframe.sort_values("epoch")
    return list(frame[METRIC])


def _tiny_variant(tmp_path: Path, budget: dict | None = None, **top) -> Path:
    """search_spaces/tiny.yaml with top-level keys and budget fields replaced, written to tmp_path."""
    data = yaml.safe_load(TINY.read_text())
    data.update(top)
    data["budget"].update(budget or {})
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_study_holds_every_trial_in_its_true_state(tiny_run):
    """ASHA-stopped trials are PRUNED with their per-epoch values; trials run to the end are
    COMPLETE with their best val_psnr; the study records the run folder and the spec."""
    result, spec = tiny_run
    run_dir = Path(result.run_dir)
    study = _study(run_dir, spec.name)
    assert study.user_attrs["run_dir"] == result.run_dir
    assert yaml.safe_load(study.user_attrs["spec"])["name"] == spec.name
    assert len(study.trials) == spec.budget.num_samples
    by_params = {json.dumps(t.params, sort_keys=True): t for t in study.trials}
    states = set()
    for r in result.results:
        searched = {k: r.config[k] for k in spec.search}
        t = by_params[json.dumps(searched, sort_keys=True)]  # Optuna suggested what ran
        curve = _epochs(r)
        assert [t.intermediate_values[e] for e in sorted(t.intermediate_values)] == pytest.approx(curve)
        if len(curve) < spec.budget.max_epochs:  # stopped by ASHA at a rung
            assert t.state == TrialState.PRUNED, (t.number, curve)
            assert t.value == pytest.approx(curve[-1])  # Optuna's value of a pruned trial: its last
        else:
            assert t.state == TrialState.COMPLETE, (t.number, curve)
            assert t.value == pytest.approx(max(curve))
        states.add(t.state)
    assert states == {TrialState.PRUNED, TrialState.COMPLETE}


START_FROM = [
    {"latent_dim": 16, "depth": 2, "lr": 0.004, "noise_level": 0.25, "loss": "bce"},
    {"lr": 0.0002},  # partial: TPE draws the rest
]


def test_start_from_runs_first_with_exactly_the_given_values(tmp_path):
    spec = load_spec(_tiny_variant(tmp_path, {"num_samples": 3, "max_epochs": 2}, name="warm", start_from=START_FROM))
    result = tuner.tune(spec, storage=str(tmp_path / "runs"), report=False, verbose=0)
    study = _study(Path(result.run_dir), "warm")
    first = sorted(study.trials, key=lambda t: t.number)[:2]
    assert first[0].params == START_FROM[0]
    assert first[1].params["lr"] == START_FROM[1]["lr"] and set(first[1].params) == set(spec.search)
    ran = [r.config for r in result.results]
    for point in START_FROM:  # Tune trained exactly those values
        assert any(all(c[k] == v for k, v in point.items()) for c in ran), (point, ran)
    assert len(study.trials) == 3 and all(t.state.is_finished() for t in study.trials)


@pytest.mark.parametrize("entry, fragment", [
    ({"lrr": 0.01}, "start_from[0].lrr: not searched"),
    ({"lr": 0.5}, "start_from[0].lr: 0.5 is outside the search space"),
])
def test_bad_start_from_is_one_line_before_ray_starts(tmp_path, capsys, entry, fragment):
    path = _tiny_variant(tmp_path, start_from=[entry])
    code = main(["tune", str(path), "--storage", str(tmp_path / "runs")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and fragment in lines[0], lines
    assert not (tmp_path / "runs").exists()  # refused when the spec loads: nothing started


@pytest.mark.parametrize("make_url, fragment", [
    (lambda tmp: "nosuchdb://x", "cannot open the study storage 'nosuchdb://x'"),
    (lambda tmp: f"sqlite:///{tmp / 'text.db'}", "file is not a database"),
    (lambda tmp: "postgresql://u:p@127.0.0.1:9/db", "Connection refused"),
    (lambda tmp: f"journal:///{tmp / 'text.db'}", "not a journal"),
], ids=["bad URL", "not a database", "unreachable server", "not a journal"])
def test_bad_study_storage_is_one_line_exit_2(tmp_path, capsys, make_url, fragment):
    (tmp_path / "text.db").write_text("this is not SQLite\n" * 100)
    code = main(["tune", str(TINY), "--storage", str(tmp_path / "runs"), "--study-storage", make_url(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err


def test_a_team_study_server_is_the_default_from_the_environment(tmp_path, capsys, monkeypatch):
    """$TUNER_STUDY_STORAGE (a team's server, set once on a cluster's head) is where a run's study goes
    when neither --study-storage nor the spec names one: here an unreachable one, refused in one line."""
    monkeypatch.setenv("TUNER_STUDY_STORAGE", "postgresql://team:secret@127.0.0.1:9/optuna")
    code = main(["tune", str(TINY), "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot open the study storage 'postgresql://team:***@127.0.0.1:9/optuna'" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "runs" / "tiny").exists()


def test_a_study_name_taken_in_a_shared_database_is_refused(tiny_run, tmp_path, capsys):
    result, spec = tiny_run
    shared = f"sqlite:///{Path(result.run_dir) / STUDY_FILE}"  # holds the finished study 'tiny'
    code = main(["tune", str(TINY), "--storage", str(tmp_path / "elsewhere"), "--study-storage", shared])
    err = capsys.readouterr().err
    assert code == 2 and "a study named 'tiny' exists" in err and "--resume" in err, err


@contextmanager
def _dashboard(storage_url: str, log: Path) -> Iterator[str]:
    """optuna-dashboard, started as the README says, on ``storage_url``; yields its base URL once it answers."""
    import shutil
    import time
    import urllib.request

    exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).with_name("optuna-dashboard"))
    base = f"http://127.0.0.1:{free_port()}"
    with open(log, "w") as out:
        proc = subprocess.Popen([exe, storage_url, "--host", "127.0.0.1", "--port", base.rsplit(":", 1)[1]],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/studies", timeout=5).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _dashboard_study(base: str, name: str) -> dict:
    """The dashboard API's detail of study ``name`` (what its pages draw)."""
    import urllib.request

    with urllib.request.urlopen(f"{base}/api/studies", timeout=10) as r:
        ours = [s for s in json.loads(r.read())["study_summaries"] if s["study_name"] == name]
    assert len(ours) == 1, ours
    with urllib.request.urlopen(f"{base}/api/studies/{ours[0]['study_id']}", timeout=10) as r:
        return json.loads(r.read())


def test_the_study_names_its_objective(tiny_run):
    """The study's one objective is named val_psnr (Optuna's set_metric_names), so optuna-dashboard's
    plots and trials_dataframe() say val_psnr rather than "Objective 0"."""
    result, spec = tiny_run
    study = _study(Path(result.run_dir), spec.name)
    assert study.metric_names == [METRIC]
    assert f"value_{METRIC}" in study.trials_dataframe().columns


def test_optuna_dashboard_serves_the_study(tiny_run, tmp_path):
    """optuna-dashboard, started as the README says, lists the search's study and its trials, and
    names its objective val_psnr."""
    result, spec = tiny_run
    with _dashboard(f"sqlite:///{Path(result.run_dir) / STUDY_FILE}", tmp_path / "dashboard.log") as base:
        detail = _dashboard_study(base, spec.name)
    trials = detail["trials"]
    assert len(trials) == spec.budget.num_samples
    assert {t["state"] for t in trials} == {"Complete", "Pruned"}
    assert all(t["intermediate_values"] for t in trials) and detail["has_intermediate_values"]
    assert detail["objective_names"] == [METRIC]


def test_time_budget_stops_the_search_and_keeps_the_best_model(tmp_path):
    """budget.time_budget_s (Ray Tune's time_budget_s): trials that would run 1,000 epochs are stopped
    where they are when it is spent, told to Optuna as PRUNED with their curves, and the best model
    so far is exported."""
    path = _tiny_variant(tmp_path, {"num_samples": 4, "max_epochs": 1000, "grace_period": 1000, "time_budget_s": 15},
                         name="timed")
    result = tuner.tune(load_spec(path), storage=str(tmp_path / "runs"), report=False, verbose=0)
    # A trial that started just before the budget ran out has no epoch: that is not a curve.
    curves = [_epochs(r) for r in result.results if r.metrics_dataframe is not None and "epoch" in r.metrics_dataframe]
    assert curves and all(0 < len(c) < 1000 for c in curves)
    study = _study(Path(result.run_dir), "timed")
    assert {t.state for t in study.trials} <= {TrialState.PRUNED, TrialState.WAITING}, \
        [(t.number, t.state) for t in study.trials]
    assert any(t.state == TrialState.PRUNED and t.intermediate_values for t in study.trials)
    assert (Path(result.best_dir) / "model.pt").exists()
    assert result.metrics[METRIC] > 0


def test_a_searcher_brought_back_without_its_saved_state_still_knows_its_space(tmp_path):
    """Ray restores a searcher from ``tuner.pkl`` (pickled before the search began) and then from
    its saved state; a restore that finds no saved state leaves the first. Made with its space (as
    make_searcher makes it), that searcher asks the study for trials all the same: without it, the
    CI run of 2026-12-05 died in ``suggest`` after a kill cut Ray's state files short."""
    import pickle

    from ray import tune

    from tuner.searcher import StudySearch
    from tuner.study import create_study, default_storage_url, open_storage

    storage = open_storage(default_storage_url(str(tmp_path)))
    create_study(storage, "run", {})
    space = {"lr": tune.loguniform(1e-3, 1e-1), "width": 16}  # a domain and a constant, as spec.param_space()
    in_tuner_pkl = pickle.dumps(StudySearch(max_t=3, storage=storage, study_name="run", space=space,
                                            sampler=optuna.samplers.TPESampler(seed=0)))
    unpickled = pickle.loads(in_tuner_pkl)  # no set_search_properties: Ray restores with no param_space
    config = unpickled.suggest("t1")
    assert set(config) == {"lr"} and 1e-3 <= config["lr"] <= 1e-1
    (trial,) = optuna.load_study(study_name="run", storage=default_storage_url(str(tmp_path))).trials
    assert trial.params == config and trial.state == TrialState.RUNNING
    # Tune's param_space, the same space, is taken; another one is refused (Ray then raises its own error).
    assert unpickled.set_search_properties(METRIC, "max", space)
    assert not unpickled.set_search_properties(METRIC, "max", {"lr": tune.uniform(0.0, 1.0)})


@pytest.mark.parametrize("how", ["moved", "copied"])
def test_a_study_in_the_run_folder_goes_where_the_folder_goes(tmp_path, how):
    """The searcher, pickled as Tune pickles it (tuner.pkl, searcher-state-*.pkl), reopens the study
    of the run folder where the folder is now: a moved one would not resume, a copied one would
    write into the original's study (issue 20)."""
    import pickle
    import shutil

    from ray import tune

    from tuner.searcher import StudySearch, resuming_in
    from tuner.study import create_study, default_storage_url, open_storage

    old, new = tmp_path / "cluster" / "run", tmp_path / "laptop" / "run"
    old.mkdir(parents=True)
    storage = open_storage(default_storage_url(str(old)))
    create_study(storage, "run", {})
    searcher = StudySearch(max_t=3, metric=METRIC, mode="max", storage=storage, study_name="run", run_dir=str(old),
                           sampler=optuna.samplers.TPESampler(seed=0))
    searcher.set_search_properties(METRIC, "max", {"lr": tune.loguniform(1e-3, 1e-1)})
    suggested = searcher.suggest("t1")
    searcher.on_trial_result("t1", {METRIC: 10.0, "epoch": 1, "training_iteration": 1})
    searcher.save(str(tmp_path / "searcher.pkl"))
    in_tuner_pkl = pickle.dumps(searcher)
    del searcher, storage
    new.parent.mkdir()
    (shutil.move if how == "moved" else shutil.copytree)(old, new)
    def trials(run: Path) -> list:
        return [(t.number, t.state, t.intermediate_values) for t in
                optuna.load_study(study_name="run", storage=default_storage_url(str(run))).trials]

    original = trials(old) if how == "copied" else None

    with resuming_in(str(new)):
        restored = StudySearch(max_t=3)
        restored.restore(str(tmp_path / "searcher.pkl"))
        unpickled = pickle.loads(in_tuner_pkl)
    assert restored._storage.url == unpickled._storage.url == default_storage_url(str(new))
    assert isinstance(restored.study.sampler, optuna.samplers.TPESampler)
    restored.on_trial_result("t1", {METRIC: 11.0, "epoch": 2, "training_iteration": 2})
    restored.on_trial_complete("t1", {METRIC: 12.0, "epoch": 3, "training_iteration": 3})
    (trial,) = optuna.load_study(study_name="run", storage=default_storage_url(str(new))).trials
    assert trial.state == TrialState.COMPLETE and trial.value == 12.0 and trial.params == suggested
    assert trial.intermediate_values == {1: 10.0, 2: 11.0, 3: 12.0}
    if how == "moved":
        assert not old.exists()
    else:
        # The original's study untouched (compared as a study: SQLite moves its write-ahead log into
        # study.db when the last connection closes, so the file's bytes may change, its content not).
        assert trials(old) == original == [(0, TrialState.RUNNING, {1: 10.0})]


# ---------------------------------------------------------------- the study on a PostgreSQL server

def _killed_and_reaped(proc: subprocess.Popen) -> None:
    """SIGKILL a CLI search started in its own session (driver, Ray's GCS and raylet at once), then
    wait for its trial workers, which have process groups of their own, to exit without their raylet."""
    import os
    import signal

    import psutil

    ours = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    _, alive = psutil.wait_procs(ours, timeout=60)
    for p in alive:  # by the PIDs this search started, never by name
        p.kill()


@pytest.mark.slow  # two CLI searches, each with its own Ray (~50 s): the slow lane; SQLite's resume is in the default one
def test_a_search_on_a_postgresql_server_resumes_reports_and_serves(postgres_url, tmp_path, request):
    """``--study-storage postgresql://...`` end to end on a real server: the CLI's search writes its
    study there, is killed mid-trial, resumes (the searcher reopens the server's study from its URL),
    ``tuner report`` ranks hyperparameters from the server's study, and ``optuna.load_study`` and
    optuna-dashboard read it with its objective named."""
    import os
    import shutil
    import tempfile
    import time

    # 2 trials x 3 epochs, one at a time; grace period = max_epochs: both run to the end.
    spec_path = _tiny_variant(tmp_path, {"num_samples": 2, "max_epochs": 3, "grace_period": 3, "max_concurrent": 1},
                              name="pg_e2e")
    runs = tmp_path / "runs"
    run = runs / "pg_e2e"
    cmd = [sys.executable, "-m", "tuner", "tune", str(spec_path), "--storage", str(runs),
           "--study-storage", postgres_url, "--no-report"]
    ray_tmp = tempfile.mkdtemp(prefix="tp-", dir="/tmp")  # this search's own Ray (short: socket paths)
    request.addfinalizer(lambda: shutil.rmtree(ray_tmp, ignore_errors=True))
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": ray_tmp}

    server = optuna.storages.RDBStorage(postgres_url)  # one connection pool for all the polling below

    def study() -> optuna.Study:
        return optuna.load_study(study_name="pg_e2e", storage=server)

    def started() -> bool:  # the first trial has reported an epoch to the server and Ray has its snapshot
        try:
            return (run / "tuner.pkl").exists() and any(t.intermediate_values for t in study().trials)
        except KeyError:  # the study does not exist yet
            return False

    with open(tmp_path / "first.log", "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not started():
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.1)
    finally:
        _killed_and_reaped(proc)
    assert sum(t.state.is_finished() for t in study().trials) < 2  # killed with the search unfinished

    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "resuming search pg_e2e" in resumed.stderr
    final = study()
    assert len(final.trials) == 2, [(t.number, t.state) for t in final.trials]  # no duplicate of the killed one
    assert all(t.state == TrialState.COMPLETE and sorted(t.intermediate_values) == [1, 2, 3] for t in final.trials)
    assert final.metric_names == [METRIC] and final.user_attrs["run_dir"] == str(run)
    assert final.best_value == pytest.approx(max(max(t.intermediate_values.values()) for t in final.trials))
    assert (run / "best" / "model.pt").exists()

    assert main(["report", str(run)]) == 0
    page = (run / "report" / "index.html").read_text()
    assert "2 trials that ran to the end" in page  # importances from the server's COMPLETE trials

    with _dashboard(postgres_url, tmp_path / "dashboard.log") as base:
        detail = _dashboard_study(base, "pg_e2e")
    assert detail["objective_names"] == [METRIC]
    assert [t["state"] for t in detail["trials"]] == ["Complete", "Complete"]


@pytest.mark.parametrize("spoil, fragment", [
    (lambda url: url.replace(":tuner-test@", ":wrong@"), "password authentication failed"),
    (lambda url: url.rsplit("/", 1)[0] + "/nosuchdb", 'database "nosuchdb" does not exist'),
    (lambda url: url.rsplit(":", 1)[0] + ":9/optuna", "Connection refused"),
], ids=["wrong password", "no such database", "nothing listening"])
def test_a_postgresql_server_that_cannot_be_used_is_one_line_exit_2(postgres_url, tmp_path, capsys, spoil, fragment):
    url = spoil(postgres_url)
    code = main(["tune", str(TINY), "--storage", str(tmp_path / "runs"), "--study-storage", url])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert "tuner-test" not in err and ":wrong@" not in err  # the password is masked
    assert not (tmp_path / "runs" / "tiny").exists()  # refused before the run folder, the study or Ray


def test_a_study_in_a_journal_file_is_pickled_by_url_and_read_back(tmp_path):
    """``journal:///PATH`` (Optuna's JournalStorage on a file): the searcher writes its trials there,
    is pickled as Tune pickles it and carries on in the same file; tuner.study.load_study reads it."""
    import pickle

    from ray import tune

    from tuner.searcher import StudySearch
    from tuner.study import create_study, load_study, open_storage

    url = f"journal:///{tmp_path / 'runs' / 'study.log'}"
    storage = open_storage(url)
    create_study(storage, "journal", {})
    searcher = StudySearch(max_t=2, metric=METRIC, mode="max", storage=storage, study_name="journal",
                           sampler=optuna.samplers.TPESampler(seed=0))
    searcher.set_search_properties(METRIC, "max", {"lr": tune.loguniform(1e-3, 1e-1)})
    suggested = searcher.suggest("t1")
    searcher.on_trial_result("t1", {METRIC: 10.0, "epoch": 1, "training_iteration": 1})
    restored = pickle.loads(pickle.dumps(searcher))
    assert restored._storage is not storage and restored._storage.url == url
    restored.on_trial_complete("t1", {METRIC: 12.0, "epoch": 2, "training_iteration": 2})
    (trial,) = load_study(url, "journal").trials
    assert trial.state == TrialState.COMPLETE and trial.value == 12.0 and trial.params == suggested
    assert trial.intermediate_values == {1: 10.0, 2: 12.0}
    assert load_study(url, "journal").metric_names == [METRIC]




def test_a_searcher_restored_after_a_crash_takes_over_the_trials_asked_since_its_snapshot(tmp_path):
    """Tune snapshots its searcher now and then; a driver killed after a suggestion but before the
    next snapshot leaves a study trial RUNNING that the restored searcher never asked. Tune asks
    again for that many trials: the restored searcher hands those out first (same parameters), so
    the study gains no duplicate, and then asks new ones. Each trial is told its true state."""
    import pickle

    from ray import tune

    from tuner.searcher import StudySearch
    from tuner.study import create_study, default_storage_url, load_study, open_storage

    url = default_storage_url(str(tmp_path / "run"))
    create_study(open_storage(url), "crash", {})
    searcher = StudySearch(max_t=3, storage=open_storage(url), study_name="crash",
                           sampler=optuna.samplers.TPESampler(seed=0))
    searcher.set_search_properties(METRIC, "max", {"lr": tune.loguniform(1e-3, 1e-1), "depth": tune.randint(1, 4),
                                                  "loss": "mse"})
    searcher.suggest("a")
    snapshot = pickle.dumps(searcher)  # Tune's last snapshot before the kill
    lost = searcher.suggest("b")  # asked, and written to the study, after it
    searcher.on_trial_result("b", {METRIC: 9.0, "epoch": 1, "training_iteration": 1})
    del searcher  # the driver dies

    restored = pickle.loads(snapshot)
    assert restored.suggest("b2") == lost  # the study's trial #1, taken over
    assert set(restored.suggest("c")) == {"lr", "depth"}  # a new study trial, #2
    restored.on_trial_result("a", {METRIC: 10.0, "epoch": 1, "training_iteration": 1})
    restored.on_trial_complete("a", {METRIC: 11.0, "epoch": 3, "training_iteration": 3})  # ran to max_t
    restored.on_trial_complete("b2", {METRIC: 8.0, "epoch": 2, "training_iteration": 2})  # stopped at a rung
    restored.on_trial_complete("c", error=True)
    restored.on_trial_complete("c", error=False)  # told once: Tune's second word changes nothing
    trials = load_study(url, "crash").trials
    assert [(t.number, t.state, t.value) for t in trials] == [
        (0, TrialState.COMPLETE, 11.0), (1, TrialState.PRUNED, 8.0), (2, TrialState.FAIL, None)]  # pruned: its last value
    assert [t.user_attrs["ray_trial_id"] for t in trials] == ["a", "b2", "c"]
    assert trials[1].intermediate_values == {1: 9.0, 2: 8.0}


@pytest.mark.parametrize("had", [(), ("lr",)], ids=["no parameter yet", "one of two"])
def test_a_study_trial_cut_short_inside_ask_is_completed_and_handed_out(tmp_path, had):
    """A kill inside Study.ask leaves a study trial RUNNING with some of its parameters or none
    (Optuna creates the trial, then samples them one by one). The restored searcher hands it out
    like any trial asked after the snapshot, its missing parameters sampled then: the study ends
    with one trial per Ray trial, none left running."""
    import pickle

    from ray import tune

    from tuner.searcher import StudySearch
    from tuner.study import create_study, default_storage_url, load_study, open_storage

    url = default_storage_url(str(tmp_path / "run"))
    create_study(open_storage(url), "cut", {})
    searcher = StudySearch(max_t=2, storage=open_storage(url), study_name="cut",
                           sampler=optuna.samplers.TPESampler(seed=0))
    space = {"lr": tune.loguniform(1e-3, 1e-1), "depth": tune.randint(1, 4)}
    searcher.set_search_properties(METRIC, "max", space)
    searcher.suggest("a")
    snapshot = pickle.dumps(searcher)
    cut = searcher.study.ask()  # what the kill left: the trial, without (all of) its parameters
    for name in had:
        cut.suggest_float(name, 1e-3, 1e-1, log=True)
    del searcher

    restored = pickle.loads(snapshot)
    config = restored.suggest("b")
    assert set(config) == {"lr", "depth"} and 1 <= config["depth"] < 4
    if had:
        assert config["lr"] == cut.params["lr"]
    for trial in ("a", "b"):
        restored.on_trial_complete(trial, {METRIC: 10.0, "epoch": 2, "training_iteration": 2})
    trials = load_study(url, "cut").trials
    assert [(t.state, t.user_attrs["ray_trial_id"]) for t in trials] == [(TrialState.COMPLETE, "a"),
                                                                         (TrialState.COMPLETE, "b")]
    assert trials[1].params == config


@pytest.mark.parametrize("snapshot_has", [{"a"}, {"a", "b"}], ids=["searcher newer than Ray's snapshot", "older"])
def test_a_restored_searcher_maps_exactly_the_trials_of_ray_s_snapshot(tmp_path, snapshot_has):
    """Ray saves the searcher apart from its experiment snapshot, and a kill can leave the two from
    different saves. A searcher that knows a trial the snapshot lost hands that trial's study trial
    out again (the study gains no duplicate, none is left running); one that lacks a trial the
    snapshot has finds its study trial by the trial's ray_trial_id (and does not hand it out)."""
    import pickle

    from ray import tune

    from tuner.searcher import StudySearch, resuming_in
    from tuner.study import create_study, default_storage_url, load_study, open_storage

    url = default_storage_url(str(tmp_path / "run"))
    create_study(open_storage(url), "crash", {})
    searcher = StudySearch(max_t=2, storage=open_storage(url), study_name="crash",
                           sampler=optuna.samplers.TPESampler(seed=0))
    searcher.set_search_properties(METRIC, "max", {"lr": tune.loguniform(1e-3, 1e-1)})
    searcher.suggest("a")
    older = pickle.dumps(searcher)
    b = searcher.suggest("b")
    newer = pickle.dumps(searcher)
    del searcher  # the driver dies

    with resuming_in(str(tmp_path / "run"), snapshot_has):
        restored = pickle.loads(newer if snapshot_has == {"a"} else older)
    for trial in sorted(snapshot_has):
        restored.on_trial_complete(trial, {METRIC: 10.0, "epoch": 2, "training_iteration": 2})
    if "b" not in snapshot_has:  # Tune asks again for the trial its snapshot lost
        assert restored.suggest("b2") == b
        restored.on_trial_complete("b2", {METRIC: 9.0, "epoch": 1, "training_iteration": 1})
    assert set(restored.suggest("c")) == {"lr"}
    restored.on_trial_complete("c", {METRIC: 8.0, "epoch": 1, "training_iteration": 1})
    trials = load_study(url, "crash").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE if snapshot_has == {"a", "b"}
                                         else TrialState.PRUNED, TrialState.PRUNED]
    assert [t.user_attrs["ray_trial_id"] for t in trials] == ["a", "b" if "b" in snapshot_has else "b2", "c"]


def test_an_epoch_repeated_after_a_resume_keeps_the_study_s_value_without_a_warning(tmp_path):
    """A trial resumed from a checkpoint trains again the epochs after it, which the study recorded
    before the kill: the study keeps its values, and Optuna's "already reported" warning, noise in a
    resumed search's log, is not shown."""
    import warnings

    from ray import tune

    from tuner.searcher import StudySearch
    from tuner.study import create_study, default_storage_url, load_study, open_storage

    url = default_storage_url(str(tmp_path / "run"))
    create_study(open_storage(url), "again", {})
    searcher = StudySearch(max_t=3, storage=open_storage(url), study_name="again")
    searcher.set_search_properties(METRIC, "max", {"lr": tune.loguniform(1e-3, 1e-1)})
    searcher.suggest("a")
    searcher.on_trial_result("a", {METRIC: 10.0, "training_iteration": 1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        searcher.on_trial_result("a", {METRIC: 10.5, "training_iteration": 1})  # epoch 1 again
        searcher.on_trial_result("a", {METRIC: 11.0, "training_iteration": 2})
    assert not [w for w in caught if "already reported" in str(w.message)], [str(w.message) for w in caught]
    assert load_study(url, "again").trials[0].intermediate_values == {1: 10.0, 2: 11.0}


def test_a_spec_with_nothing_to_search_is_still_one_study_trial(tmp_path):
    from tuner.searcher import StudySearch
    from tuner.study import create_study, default_storage_url, load_study, open_storage

    url = default_storage_url(str(tmp_path / "run"))
    create_study(open_storage(url), "fixed", {})
    searcher = StudySearch(max_t=1, storage=open_storage(url), study_name="fixed",
                           sampler=optuna.samplers.TPESampler(seed=0))
    searcher.set_search_properties(METRIC, "max", {"lr": 0.01})
    assert searcher.suggest("only") == {}
    searcher.on_trial_complete("only", {METRIC: 12.5, "epoch": 1, "training_iteration": 1})
    (trial,) = load_study(url, "fixed").trials
    assert trial.state == TrialState.COMPLETE and trial.value == 12.5


# ---------------------------------------------------------------- a prior study (searcher.prior_studies)

def _prior_spec(tmp_path: Path, name: str, **top) -> Path:
    """tiny.yaml as a second search after tiny_run: 2 trials of 2 epochs, no warm starts (TPE
    proposes them), the earlier search named as its prior."""
    searcher = {"n_startup_trials": 2, "prior_studies": ["tiny"], **top.pop("searcher", {})}
    return _tiny_variant(tmp_path, {"num_samples": 2, "max_epochs": 2}, name=name, start_from=[],
                         searcher=searcher, **top)


def test_a_prior_study_s_trials_open_the_next_search_s_study(tiny_run, tmp_path):
    """The earlier search's finished trials join the new study before its own, as they were (state,
    value, per-epoch values), naming where they came from and no Ray trial; the new search runs its
    own trials; the earlier study is left as it was."""
    from tuner.study import PRIOR_STUDY, RAY_TRIAL_ID

    earlier_result, earlier_spec = tiny_run
    runs = Path(earlier_result.run_dir).parent
    before = {t.number: t for t in _study(Path(earlier_result.run_dir), "tiny").trials}
    spec = load_spec(_prior_spec(tmp_path, "tiny-again"))
    result = tuner.tune(spec, storage=str(runs), report=False, verbose=0)
    assert len(result.results) == 2
    trials = _study(Path(result.run_dir), "tiny-again").trials
    copied = [t for t in trials if PRIOR_STUDY in t.user_attrs]
    own = [t for t in trials if PRIOR_STUDY not in t.user_attrs]
    assert [t.number for t in copied] == [0, 1, 2, 3] and len(own) == 2
    for t in copied:
        was = before[t.user_attrs["prior_number"]]
        assert t.user_attrs[PRIOR_STUDY] == "tiny" and RAY_TRIAL_ID not in t.user_attrs
        assert (t.state, t.value, t.params, t.intermediate_values) == (was.state, was.value, was.params,
                                                                       was.intermediate_values)
    assert all(RAY_TRIAL_ID in t.user_attrs and t.state.is_finished() for t in own)
    assert len(_study(Path(earlier_result.run_dir), "tiny").trials) == len(before)
    # The earlier best runs first (no warm starts here); TPE's start-up counts this search's own trials.
    best = max((t for t in before.values() if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert own[0].params == best.params
    ran = load_spec(Path(result.run_dir) / "spec.yaml")
    assert ran.start_from == [] and ran.searcher.n_startup_trials == 2 + 1 + len(copied)


def test_a_prior_s_best_trial_runs_after_the_warm_starts(tmp_path):
    """with_priors: the priors' best COMPLETE trial is queued after the spec's warm starts (not when it
    is one of them, nor when no prior trial completed); TPE's start-up grows by the prior trials, and
    by that one."""
    from optuna.distributions import CategoricalDistribution

    from tuner.search import startup_trials, with_priors

    dists = {"latent_dim": CategoricalDistribution([4, 8, 16])}

    def trial(latent, value, state=TrialState.COMPLETE):
        return optuna.trial.create_trial(params={"latent_dim": latent}, distributions=dists, state=state,
                                         value=value, intermediate_values={1: value})

    spec = load_spec(_tiny_variant(tmp_path, name="now", start_from=[{"latent_dim": 4}], searcher={},
                                   search={"latent_dim": {"choice": [4, 8, 16]}}))
    assert startup_trials(spec) == 1 + 10
    priors = [trial(8, 20.0), trial(16, 21.0), trial(4, 25.0, TrialState.PRUNED)]
    now, proven = with_priors(spec, priors)
    assert proven == [{"latent_dim": 16}] and now.start_from == spec.start_from  # the best COMPLETE one
    assert now.searcher.n_startup_trials == 1 + 10 + 1 + 3
    again, proven = with_priors(spec, [trial(4, 22.0), trial(8, 20.0)])  # the best is the spec's warm start
    assert proven == [] and again.searcher.n_startup_trials == 1 + 10 + 2
    pruned, proven = with_priors(spec, [trial(8, 20.0, TrialState.PRUNED)])
    assert proven == [] and pruned.searcher.n_startup_trials == 1 + 10 + 1
    explicit = spec.model_copy(update={"searcher": spec.searcher.model_copy(update={"n_startup_trials": 3})})
    assert with_priors(explicit, priors)[0].searcher.n_startup_trials == 3 + 1 + 3
    assert with_priors(spec, []) == (spec, [])


def test_a_prior_keeps_only_the_points_of_this_search(tmp_path):
    """An earlier trial joins when, with the earlier spec's fixed values filled in, it agrees with
    every value this spec fixes and lies in this spec's space (real Optuna trials, in memory)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from tuner.searcher import distributions
    from tuner.study import PRIOR_STUDY, create_study, prior_trials

    earlier = load_spec(_tiny_variant(tmp_path, name="before", start_from=[],
                                      search={"latent_dim": {"choice": [4, 16]}, "lr": {"loguniform": [1e-4, 1e-2]}}))
    storage = optuna.storages.InMemoryStorage()
    create_study(storage, "before", {"spec": earlier.to_yaml()})
    study = optuna.load_study(study_name="before", storage=storage)
    dists = {"latent_dim": CategoricalDistribution([4, 16]), "lr": FloatDistribution(1e-4, 1e-2, log=True)}
    for latent, lr, state in [(16, 1e-3, TrialState.COMPLETE), (4, 2e-3, TrialState.PRUNED), (16, 5e-3, TrialState.FAIL)]:
        study.add_trial(optuna.trial.create_trial(params={"latent_dim": latent, "lr": lr}, distributions=dists,
                                                  state=state, value=None if state == TrialState.FAIL else 20.0,
                                                  intermediate_values={1: 19.0, 2: 20.0}))
    # This search: skip searched (the earlier one fixed it true), latent_dim 4 outside its space.
    data = yaml.safe_load(_tiny_variant(tmp_path, name="now", start_from=[]).read_text())
    data["fixed"].pop("skip")
    data["search"] = {"latent_dim": {"choice": [16, 32]}, "lr": {"loguniform": [1e-4, 1e-2]},
                      "skip": {"choice": [False, True]}}
    now = load_spec(_write(tmp_path / "now.yaml", data))
    trials, left_out = prior_trials(study, now, distributions(now.param_space()))
    assert left_out == 1  # latent_dim 4; the failed trial is not a finished one
    (t,) = trials
    assert t.params == {"latent_dim": 16, "lr": 1e-3, "skip": True} and t.state == TrialState.COMPLETE
    assert t.user_attrs == {PRIOR_STUDY: "before", "prior_number": 0}
    # Fixing a value the earlier trials did not have leaves them all out.
    data["fixed"]["width"] = 16
    trials, left_out = prior_trials(study, load_spec(_write(tmp_path / "now.yaml", data)),
                                    distributions(now.param_space()))
    assert (trials, left_out) == ([], 2)


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("args, top, fragment", [
    (["--prior-study", "nope"], {}, "searcher.prior_studies: no earlier search 'nope' in the run folder"),
    ([], {"eval_noise": {"kind": "gaussian", "level": 0.5}},
     "prior study 'tiny' scored its trials on eval_noise {kind: gaussian, level: 0.3"),
    ([], {"name": "tiny", "searcher": {"prior_studies": ["tiny"]}}, "'tiny' is this search's own name"),
    (["--prior-study", "tiny", "--prior-study", "tiny"], {}, "'tiny' is named twice"),
])
def test_a_prior_that_cannot_be_used_is_one_line_exit_2_and_leaves_no_run(tiny_run, tmp_path, capsys, args, top, fragment):
    runs = Path(tiny_run[0].run_dir).parent
    path = _prior_spec(tmp_path, top.pop("name", "after-bad"), **top)
    code = main(["tune", str(path), "--storage", str(runs), *args])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and not (runs / "after-bad" / "tuner.pkl").exists()
