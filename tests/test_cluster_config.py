"""cluster.yaml is a Ray cluster config that Ray accepts and whose commands exist in this repository.

Nothing here talks to AWS. The config goes through the steps ``ray up`` takes before it calls the
cloud (Ray's ``prepare_config``, then ``validate_config`` against ``ray/autoscaler/ray-schema.json``,
see ``ray/autoscaler/_private/commands.py:_bootstrap_config``); every ``tuner`` and ``ray`` command
in cluster.yaml and in docs/cluster.md is parsed by the real parsers (``tuner.cli.build_parser()``
and Ray's click CLI); every local path they name exists.
"""
from __future__ import annotations

import copy
import math
import re
import shlex
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import click
import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.scripts.scripts import cli as ray_cli

from tuner.cli import build_parser
from tuner.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster.yaml"
DOCS = ROOT / "docs" / "cluster.md"
REMOTE_ROOT = "~/tuner"  # where file_mounts put the project on every node
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands",
                "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
_OPERATORS = set("();<>|&")


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def cluster_commands(config: dict) -> list[str]:
    """Every shell command the cluster runs, in cluster.yaml's order."""
    commands = [c for key in COMMAND_KEYS for c in config.get(key, [])]
    for node_type in config["available_node_types"].values():
        commands += node_type.get("initialization_commands", []) + node_type.get("worker_setup_commands", [])
    return commands


def doc_shell_blocks(markdown: str) -> list[str]:
    """The fenced code blocks of a markdown file that hold shell commands."""
    blocks = re.findall(r"^```([\w-]*)[^\n]*\n(.*?)^```", markdown, flags=re.M | re.S)
    return [body for lang, body in blocks if lang in ("", "bash", "sh", "shell", "console")]


def commands_in(shell: str) -> list[list[str]]:
    """The argv of each ``ray``, ``tuner`` or ``python -m tuner`` command in a shell snippet.

    A command starts at the beginning of a line or of a pipeline segment (after ``;``, ``&&``, ``|``),
    after leading ``VAR=value`` assignments, or after the ``--`` that hands a command to
    ``ray job submit``; it ends at the next shell operator. Comments are dropped.

    Args:
        shell: shell text; backslash line continuations are allowed.

    Returns:
        One argv per command, starting with ``ray`` or ``tuner`` (``python -m tuner`` becomes ``tuner``).
    """
    found = []
    for line in shell.replace("\\\n", " ").splitlines():  # a newline ends a command too
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        found += _commands_in_tokens(list(lexer))
    return found


def _is_operator(token: str) -> bool:
    return bool(token) and set(token) <= _OPERATORS


def _commands_in_tokens(tokens: list[str]) -> list[list[str]]:
    found, start = [], True
    for i, tok in enumerate(tokens):
        if _is_operator(tok):
            start = True
            continue
        if start and re.fullmatch(r"[A-Za-z_]\w*=.*", tok):
            continue  # an environment assignment before the command
        argv = None
        if start or (i > 0 and tokens[i - 1] == "--"):
            if Path(tok).name in ("ray", "tuner"):
                argv = [Path(tok).name]
                rest = tokens[i + 1:]
            elif Path(tok).name.startswith("python") and tokens[i + 1:i + 3] == ["-m", "tuner"]:
                argv = ["tuner"]
                rest = tokens[i + 3:]
        if argv is not None:
            for t in rest:
                if _is_operator(t):
                    break
                argv.append(t)
            found.append(argv)
        start = False
    return found


def check_tuner_command(argv: list[str]) -> None:
    """Parse ``tuner ...`` with the real CLI parser; the spec file of ``tuner tune`` must exist."""
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as e:
        if e.code == 0:  # --help
            return
        pytest.fail(f"not a valid tuner command: {shlex.join(argv)}")
    if args.command == "tune":
        assert (ROOT / on_a_node(args.spec)).is_file(), f"{shlex.join(argv)}: no such spec file {args.spec}"


def on_a_node(path: str) -> str:
    """A repository path as cluster.yaml's file_mounts place it on each node (``~/tuner/...``)."""
    return path.removeprefix("~/tuner/")


def check_ray_command(argv: list[str]) -> None:
    """Parse ``ray ...`` with Ray's own click CLI (the installed version), without running it."""
    command, rest = ray_cli, argv[1:]
    while isinstance(command, click.Group):
        assert rest and rest[0] in command.commands, f"no such ray command: {shlex.join(argv)}"
        command, rest = command.commands[rest[0]], rest[1:]
    try:
        command.make_context(argv[1], list(rest))
    except click.ClickException as e:
        pytest.fail(f"ray rejects {shlex.join(argv)}: {e.format_message()}")


def option(argv: list[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value`` in argv, or None."""
    for i, tok in enumerate(argv):
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
        if tok == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


# ----------------------------------------------------------------------------- Ray accepts it


def test_ray_validates_the_cluster_config(config):
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)  # raises on any schema violation
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("break_it, error", [
    (lambda c: c["provider"]["security_group"].update(Ingress=[]), jsonschema.ValidationError),
    (lambda c: c.update(idle_timeout_minutes="ten"), jsonschema.ValidationError),
    (lambda c: c.update(head_node_type="nope"), ValueError),
])
def test_ray_validation_catches_a_broken_copy(config, break_it, error):
    """The validation above has teeth: the same calls reject a damaged copy of the file."""
    broken = copy.deepcopy(config)
    break_it(broken)
    with pytest.raises(error):
        validate_config(prepare_config(broken))


def test_every_command_list_is_explicit(config):
    """A missing list would be filled from Ray's AWS defaults (a nightly Ray wheel, system pip)."""
    missing = [key for key in COMMAND_KEYS if key not in config]
    assert not missing, f"cluster.yaml must set {missing} (even to [])"
    prepared = prepare_config(copy.deepcopy(config))
    ours = set(cluster_commands(config))
    for key in COMMAND_KEYS:
        assert set(prepared[key]) <= ours, f"{key} runs commands that are not in cluster.yaml"


def test_gpu_workers_autoscale_from_zero(config):
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    workers = {name: n for name, n in nodes.items() if name != config["head_node_type"]}
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0  # no trials on the head
    gpu = [n for n in workers.values() if n["resources"].get("GPU", 0) >= 1]
    assert gpu, "no worker type offers a GPU, so --gpus-per-trial trials could never be placed"
    for n in gpu:
        assert n["min_workers"] == 0 and 1 <= n["max_workers"] <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0


def test_the_documented_search_fills_a_gpu_worker(config):
    """Each ``tuner tune --gpus-per-trial g`` in the docs fits 1/g trials on a GPU worker.

    Trials also hold ``cpus_per_trial`` CPUs each; if those run out first, part of the GPU idles.
    """
    workers = [n["resources"] for name, n in config["available_node_types"].items()
               if name != config["head_node_type"] and n["resources"].get("GPU", 0) >= 1]
    tunes = [build_parser().parse_args(argv[1:]) for block in doc_shell_blocks(DOCS.read_text())
             for argv in commands_in(block) if argv[:2] == ["tuner", "tune"]]
    gpu_tunes = [a for a in tunes if a.gpus_per_trial]
    assert gpu_tunes, "docs/cluster.md shows no search with --gpus-per-trial"
    for args in gpu_tunes:
        cpus = args.cpus_per_trial or load_spec(ROOT / on_a_node(args.spec)).resources.cpus_per_trial
        for w in workers:
            by_gpu = math.floor(w["GPU"] / args.gpus_per_trial + 1e-9)
            by_cpu = math.floor(w["CPU"] / cpus + 1e-9)
            assert by_cpu >= by_gpu, (f"{args.spec} --gpus-per-trial {args.gpus_per_trial}: a worker with "
                                      f"{w} runs {by_cpu} trials of {cpus} CPUs, leaving GPU share idle")


# ----------------------------------------------------------------------------- security posture


def test_only_ssh_is_open_from_outside(config):
    """Ray's group opens intra-cluster traffic and SSH; cluster.yaml may add nothing but port 22."""
    extra = config["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in extra:
        assert rule.get("IpProtocol") == "tcp" and rule.get("FromPort") == rule.get("ToPort") == 22, rule
    for name, node in config["available_node_types"].items():
        # Own groups or interfaces would replace Ray's group, and this test could not see their rules.
        assert "SecurityGroupIds" not in node["node_config"], name
        assert "NetworkInterfaces" not in node["node_config"], name


def test_rays_inbound_rules_open_only_ssh_to_the_world(config):
    """The exact rules Ray authorizes on its group (needs boto3, which ``ray up`` on AWS needs too)."""
    pytest.importorskip("boto3", reason="Ray's AWS provider module imports boto3")
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    extra = config["provider"].get("security_group", {}).get("IpPermissions", [])
    rules = _create_default_inbound_rules({"sg-head", "sg-worker"}, extra)
    for rule in rules:
        from_outside = rule.get("IpRanges") or rule.get("Ipv6Ranges") or rule.get("PrefixListIds")
        if from_outside:
            assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 22, 22), rule
        else:
            assert {p["GroupId"] for p in rule["UserIdGroupPairs"]} == {"sg-head", "sg-worker"}, rule


def test_dashboard_listens_on_the_head_loopback_only(config):
    starts = [argv for c in config["head_start_ray_commands"] for argv in commands_in(c)
              if argv[:2] == ["ray", "start"]]
    assert len(starts) == 1
    head = starts[0]
    assert "--head" in head
    assert option(head, "--dashboard-host") == "127.0.0.1"
    assert option(head, "--include-dashboard") == "true"  # `ray job submit` needs the dashboard
    assert not any("0.0.0.0" in c for c in cluster_commands(config))
    workers = [argv for c in config["worker_start_ray_commands"] for argv in commands_in(c)
               if argv[:2] == ["ray", "start"]]
    assert [option(w, "--address") for w in workers] == [f"$RAY_HEAD_IP:{option(head, '--port')}"]


def test_no_node_runs_the_all_interfaces_metrics_exporter(config):
    """Ray's per-node Prometheus exporter has no bind address (it listens on every interface
    unless the node's IP is localhost), so every `ray start` turns metrics collection off."""
    lines = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in config[key]
             if any(argv[:2] == ["ray", "start"] for argv in commands_in(c))]
    assert len(lines) == 2
    for line in lines:
        assert "RAY_enable_metrics_collection=0 ray start" in line, line


# ----------------------------------------------------------------------------- what the nodes run


def test_file_mounts_exist_and_hold_what_the_install_needs(config):
    mounts = config["file_mounts"]
    for remote, local in mounts.items():
        assert remote.startswith(REMOTE_ROOT + "/"), remote
        assert (ROOT / local).exists(), f"file_mounts: {local} does not exist in the repository"
        # Same relative layout on the node as here, so `pip install -e ~/tuner` sees a project.
        assert (ROOT / remote[len(REMOTE_ROOT) + 1:]).resolve() == (ROOT / local).resolve(), remote
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    mounted = {remote[len(REMOTE_ROOT) + 1:] for remote in mounts}
    assert needed <= mounted, f"pip install -e {REMOTE_ROOT} also needs {sorted(needed - mounted)}"


def test_paths_in_setup_commands_are_mounted(config):
    mounted = {remote[len(REMOTE_ROOT) + 1:] for remote in config["file_mounts"]}
    for command in cluster_commands(config):
        for path in re.findall(re.escape(REMOTE_ROOT) + r"(/[^\s'\";|&)]*)?", command):
            rel = path.strip("/")
            if rel:  # ~/tuner itself is the parent of the mounts
                assert any(rel == m or rel.startswith(m + "/") for m in mounted), f"{command}: {path}"
                assert (ROOT / rel).exists(), f"{command}: {rel} not in the repository"
    assert any(f"-e {REMOTE_ROOT}" in c for c in config["setup_commands"]), "the project is never installed"


def test_nodes_install_the_ray_version_that_validated_this_file(config):
    pins = {m for c in config["setup_commands"] for m in re.findall(r"ray\[[\w,]*\]==([\w.]+)", c)}
    assert pins == {ray.__version__}, f"cluster installs Ray {pins}, this checkout runs {ray.__version__}"
    assert pins == {constraints()["ray"]}, f"cluster installs Ray {pins}, constraints.txt pins {constraints()['ray']}"
    assert any("ray[default" in c for c in config["setup_commands"])  # dashboard + job API


def test_every_install_on_the_nodes_uses_the_constraints(config):
    """The nodes get the versions the README's install and CI get: each ``pip install`` goes
    through the constraints.txt that file_mounts copies with the project."""
    assert config["file_mounts"].get(f"{REMOTE_ROOT}/constraints.txt") == "./constraints.txt"
    installs = [argv for c in cluster_commands(config) for argv in _pip_installs(c)]
    assert installs, "cluster.yaml installs nothing"
    for argv in installs:
        assert option(argv, "-c") == f"{REMOTE_ROOT}/constraints.txt", f"unconstrained: {shlex.join(argv)}"


def _pip_installs(command: str) -> list[list[str]]:
    """The arguments after ``pip install`` (pip's or uv's) in a shell command."""
    tokens = shlex.split(command, comments=True)
    return [tokens[i + 2:] for i, tok in enumerate(tokens)
            if Path(tok).name in ("pip", "pip3") and tokens[i + 1:i + 2] == ["install"]]


def constraints() -> dict[str, str]:
    """constraints.txt as {name: pinned version} (the file's lines are ``name==version``)."""
    lines = (line.split("#", 1)[0].strip() for line in (ROOT / "constraints.txt").read_text().splitlines())
    return dict(line.lower().split("==", 1) for line in lines if line)


def test_every_command_the_cluster_runs_exists(config):
    argvs = [argv for c in cluster_commands(config) for argv in commands_in(c)]
    assert {"ray", "tuner"} <= {a[0] for a in argvs}
    for argv in argvs:
        (check_tuner_command if argv[0] == "tuner" else check_ray_command)(argv)


# ----------------------------------------------------------------------------- docs/cluster.md


def test_every_command_in_the_docs_exists():
    argvs = [argv for block in doc_shell_blocks(DOCS.read_text()) for argv in commands_in(block)]
    tuner_subcommands = {a[1] for a in argvs if a[0] == "tuner" and len(a) > 1}
    assert {"tune", "report"} <= tuner_subcommands, "docs/cluster.md should show tuner tune and tuner report"
    ray_commands = {" ".join(a[1:3]) if a[1:2] == ["job"] else a[1] for a in argvs if a[0] == "ray"}
    assert {"up", "dashboard", "job submit", "job logs", "down"} <= ray_commands
    for argv in argvs:
        (check_tuner_command if argv[0] == "tuner" else check_ray_command)(argv)


def test_files_named_in_the_docs_exist():
    for block in doc_shell_blocks(DOCS.read_text()):
        for token in shlex.split(block.replace("\\\n", " "), comments=True):
            if token.endswith((".yaml", ".toml")) and "://" not in token and not token.startswith(("~", "/")):
                assert (ROOT / token).is_file(), f"docs/cluster.md names {token}, which does not exist"


def test_command_parsing_finds_submitted_and_chained_commands():
    """The helper the tests above rely on: commands after ``--``, ``;`` and ``&&``, but not arguments."""
    shell = ("ulimit -n 65536; ray start --head --port=6379 && FOO=1 tuner report runs/x\n"
             "ray job submit --working-dir . -- python -m tuner tune s.yaml --address auto \\\n"
             "    --gpus-per-trial 0.25  # four per GPU\n"
             "pip install ray tuner | tee log")
    assert commands_in(shell) == [
        ["ray", "start", "--head", "--port=6379"],
        ["tuner", "report", "runs/x"],
        ["ray", "job", "submit", "--working-dir", ".", "--", "python", "-m", "tuner", "tune", "s.yaml",
         "--address", "auto", "--gpus-per-trial", "0.25"],
        ["tuner", "tune", "s.yaml", "--address", "auto", "--gpus-per-trial", "0.25"],
    ]
    with pytest.raises(pytest.fail.Exception):
        check_tuner_command(["tuner", "tune", "search_spaces/tiny.yaml", "--gpus-per-trail", "1"])
    with pytest.raises(pytest.fail.Exception):
        check_ray_command(["ray", "start", "--head", "--dashbord-host=127.0.0.1"])
