"""The installed Ray and Optuna are the versions constraints.txt pins, and pyproject.toml agrees.

tuner/resume.py uses Ray Train internals, and a run's searcher state pickles Optuna's TPESampler;
the versions they were written against are pinned in constraints.txt,
which the README's install, CI (.ci/run) and cluster.yaml use. An environment that bypassed the
pins (``pip install -U ray``) fails here, by name, before a search meets a changed internal.
"""
from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
BUILT_ON_INTERNALS = ("ray", "optuna")  # see tuner/resume.py and tuner/study.py


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``PyYAML`` and ``pyyaml`` are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints() -> dict[str, str]:
    """constraints.txt as {canonical name: pinned version}; every line is ``name==version``."""
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, pinned = line.partition("==")
            assert sep and pinned, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[canonical(name)] = pinned
    return pins


def requirements() -> list[Requirement]:
    """pyproject.toml's dependencies and those of every extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(r) for r in lines]


@pytest.mark.parametrize("name", BUILT_ON_INTERNALS)
def test_installed_version_is_the_pinned_one(name):
    pinned = constraints()[name]
    assert version(name) == pinned, (
        f"{name} {version(name)} is installed, constraints.txt pins {pinned}: tuner uses {name}'s internals "
        f"as of {pinned}. Install with `pip install -c constraints.txt -e '.[test]'`, or move the pin "
        f"(constraints.txt's header says how)")


def test_pyproject_admits_the_pins_and_nothing_newer_for_the_internals():
    pins = constraints()
    for req in requirements():
        name = canonical(req.name)
        assert name in pins, f"pyproject.toml needs {req}, which constraints.txt does not pin: regenerate it"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject.toml's {req}")
        if name in BUILT_ON_INTERNALS:  # an upper bound below the next minor release
            v = Version(pins[name])
            assert not req.specifier.contains(f"{v.major}.{v.minor + 1}.0"), f"{req}: no upper bound below the next minor"
