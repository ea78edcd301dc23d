"""Shared fixtures: the real ``digits`` dataset and tiny configurations that train in well under a second."""
from __future__ import annotations

import collections
import re

import pytest

from tuner.data import Splits, load_dataset
from tuner.noise import Noise
from tuner.config import TrialConfig


def pytest_collection_modifyitems(config, items) -> None:
    """One Ray for the tests that share it: the first search run in this process starts a local Ray
    (``tuner.search._init_ray``) and every later one joins it. Tests marked ``own_ray`` shut that Ray
    down to start their own (a Serve service, a search whose worker they kill, a multi-node cluster),
    so they run after all the others, each module's tests still together, in file order."""
    items.sort(key=lambda item: item.get_closest_marker("own_ray") is not None)  # a stable sort


@pytest.fixture(scope="session")
def digits() -> Splits:
    """scikit-learn's 8x8 digits (offline): 1437 train / 180 val / 180 test images."""
    return load_dataset("digits")


@pytest.fixture
def eval_noise() -> Noise:
    """The evaluation noise the training tests score on (the spec's default level)."""
    return Noise("gaussian", 0.5)


@pytest.fixture
def tiny_config():
    """Factory of small :class:`TrialConfig` s: one epoch on digits takes ~0.2 s on one thread."""

    def make(**overrides) -> TrialConfig:
        base = dict(width=8, depth=1, latent_dim=8, batch_size=32, max_epochs=1)
        return TrialConfig(**{**base, **overrides})

    return make


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One real tiny search (search_spaces/tiny.yaml: real Ray Tune, Optuna TPE, ASHA) through the
    Python API, shared by the tests that read a finished run. Returns (SearchResult, spec)."""
    from pathlib import Path

    import tuner
    from tuner.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "search_spaces" / "tiny.yaml")
    return tuner.tune(spec, storage=str(tmp_path_factory.mktemp("runs")), report=False, verbose=0), spec


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server of the session's own (tests/pgserver.py: private data directory,
    loopback port, stopped by its PID): the SQLAlchemy URL of its empty ``optuna`` database."""
    import pgserver

    why = pgserver.cannot_run()
    if why:
        pytest.skip(why)
    with pgserver.postgres_server() as url:
        yield url


@pytest.fixture
def ray_tmp():
    """A private Ray temp dir (short: Ray's unix socket paths must fit in 107 bytes), for a search run
    in its own session whose processes a test may kill (tests/test_reliability.py, tests/test_race.py)."""
    import shutil
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp(prefix="tr-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# A line Ray forwards from a worker to the driver's stderr (``log_to_driver``): "(train_trial pid=2172) ...",
# coloured or not. The session's shared Ray keeps its workers after the test that started them, and one
# that Ray stops later may print (a dying worker's "Exception ignored in ...", fresh-clone run of
# 2026-12-08) while another test is capturing: those lines are not the command's under test.
_RAY_FORWARDED = re.compile(r"^(\x1b\[[0-9;]*m)?\(([\w.:-]+ )?pid=\d+(, ip=[\d.]+)?\)")
_Captured = collections.namedtuple("_Captured", "out err")


class _WithoutRayWorkers:
    """pytest's capsys whose ``readouterr()`` leaves out the lines Ray forwarded from its workers."""

    def __init__(self, capsys):
        self._capsys = capsys

    def readouterr(self):
        out, err = self._capsys.readouterr()
        return _Captured(out, "".join(line for line in err.splitlines(keepends=True)
                                      if not _RAY_FORWARDED.match(line)))

    def __getattr__(self, name):
        return getattr(self._capsys, name)


@pytest.fixture
def capsys(capsys):
    """pytest's ``capsys``, its stderr without the lines the session's Ray forwards from workers of
    earlier tests: a one-line error is asserted on the command's own output."""
    return _WithoutRayWorkers(capsys)
