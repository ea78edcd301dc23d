"""Spec loading: a valid file round-trips; every mistake is one SpecError line naming file and key."""
from __future__ import annotations

import textwrap

import pytest
import yaml

from tuner.config import TrialConfig
from tuner.spec import ExperimentSpec, SpecError, load_spec

VALID = """\
# tuner tune this.yaml
name: digits-smoke
seed: 3
dataset:
  name: digits
  split_seed: 1
  limit: 64
eval_noise: {kind: gaussian, level: 0.4, seed: 99}
budget: {num_samples: 4, max_epochs: 3, grace_period: 1, reduction_factor: 2}
resources: {cpus_per_trial: 1}
fixed:
  arch: conv
  batch_size: 32
  noise_level: 0.3
search:
  depth: {int: [1, 2]}
  width: {logint: [8, 32]}
  lr: {loguniform: [1.0e-4, 1.0e-2]}
  dropout: {uniform: [0.0, 0.3]}
  optimizer: {choice: [adam, sgd, rmsprop]}
"""


def write(tmp_path, text: str, name: str = "spec.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def spec_error(path) -> str:
    """The SpecError message for ``path``, checked to be one line naming the file."""
    with pytest.raises(SpecError) as info:
        load_spec(path)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{path}: "), msg
    return msg


def test_valid_spec_loads_and_round_trips(tmp_path):
    spec = load_spec(write(tmp_path, VALID))
    assert spec.name == "digits-smoke" and spec.seed == 3
    assert (spec.dataset.name, spec.dataset.split_seed, spec.dataset.limit) == ("digits", 1, 64)
    assert spec.eval_noise.noise().describe() == "gaussian 0.4" and spec.eval_noise.seed == 99
    assert (spec.budget.num_samples, spec.budget.max_epochs, spec.budget.reduction_factor) == (4, 3, 2.0)
    assert spec.image_shape == (1, 8, 8)
    assert {k: d.kind for k, d in spec.search.items()} == {
        "depth": "int", "width": "logint", "lr": "loguniform", "dropout": "uniform", "optimizer": "choice"}
    assert spec.search["optimizer"].value == ["adam", "sgd", "rmsprop"]
    # Experiment-level values flow into every trial: seed, epoch budget, eval noise kind.
    base = spec.base_config()
    assert base == {"noise_kind": "gaussian", "max_epochs": 3, "seed": 3,
                    "arch": "conv", "batch_size": 32, "noise_level": 0.3}
    trial = TrialConfig(**base, depth=2, lr=1e-3)
    assert trial.to_dict()["max_epochs"] == 3 and trial.train_noise().level == 0.3

    # The resolved spec saved beside a run must load back to the same spec. exclude_none: a
    # distribution is the one kind that is set, and every optional field defaults to None.
    dumped = yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True))
    assert load_spec(write(tmp_path, dumped, "again.yaml")) == spec


def test_empty_sections_take_defaults(tmp_path):
    spec = load_spec(write(tmp_path, "name: defaults\ndataset:\nfixed: {}\n"))
    assert spec.dataset == ExperimentSpec().dataset and spec.search == {}


# (yaml text, fragments the message must contain: the key path and what is wrong or allowed)
BAD = {
    "unknown top-level key": ("nmae: x\n", ["'nmae'", "allowed: name, seed"]),
    "unknown nested key": ("dataset:\n  nmae: digits\n", ["dataset:", "'nmae'", "allowed: name, data_dir"]),
    "unknown budget key": ("budget: {num_sample: 3}\n", ["budget:", "'num_sample'", "num_samples"]),
    "unknown fixed hyperparameter": ("fixed: {lrr: 0.1}\n", ["fixed.lrr", "unknown hyperparameter", "lr,"]),
    "unknown searched hyperparameter": ("search:\n  lrr: {uniform: [0.0, 1.0]}\n",
                                        ["search.lrr", "unknown hyperparameter"]),
    "wrong type in fixed": ("fixed: {depth: deep}\n", ["fixed.depth", "integer", "'deep'"]),
    "wrong type in a section": ("budget: {num_samples: many}\n", ["budget.num_samples", "integer"]),
    "wrong bool": ("fixed: {skip: maybe}\n", ["fixed.skip", "boolean"]),
    "float bound of an int": ("search:\n  depth: {int: [1.5, 3]}\n", ["search.depth", "integer", "1.5"]),
    "section not a mapping": ("dataset: digits\n", ["dataset:", "dictionary"]),
    "low > high": ("search:\n  lr: {loguniform: [0.1, 0.001]}\n", ["search.lr", "low 0.1 > high 0.001"]),
    "int low > high": ("search:\n  width: {int: [32, 8]}\n", ["search.width", "low 32 > high 8"]),
    "log of zero": ("search:\n  lr: {loguniform: [0, 0.1]}\n", ["search.lr", "must be > 0"]),
    "not a distribution": ("search:\n  lr: 0.1\n", ["search.lr", "must be one of", "choice"]),
    "two distributions": ("search:\n  lr: {uniform: [0.1, 0.2], loguniform: [0.1, 0.2]}\n",
                          ["search.lr", "must be one of"]),
    "empty choice": ("search:\n  lr: {choice: []}\n", ["search.lr", "at least one"]),
    "searched value out of range": ("search:\n  dropout: {uniform: [0.0, 1.5]}\n", ["search.dropout", "1.5"]),
    "unknown dataset": ("dataset: {name: imagenet}\n", ["dataset.name", "'imagenet'", "'digits'"]),
    "unknown eval noise": ("eval_noise: {kind: salt}\n", ["eval_noise.kind", "'salt'", "'gaussian'"]),
    "unknown optimizer": ("fixed: {optimizer: lion}\n", ["fixed.optimizer", "'lion'", "'adam'"]),
    "unknown loss": ("fixed: {loss: huber}\n", ["fixed.loss", "'huber'", "'mse'"]),
    "unknown optimizer in choice": ("search:\n  optimizer: {choice: [adam, lion]}\n",
                                    ["search.optimizer", "'lion'", "'sgd'"]),
    "unknown loss in choice": ("search:\n  loss: {choice: [mse, huber]}\n", ["search.loss", "'huber'", "'bce'"]),
    "fixed depth too deep": ("dataset: {name: digits}\nfixed: {depth: 3}\n",
                             ["fixed.depth", "depth 3 is too deep for 8x8", "at most 2", "digits"]),
    "searched depth too deep": ("dataset: {name: digits}\nsearch:\n  depth: {int: [1, 4]}\n",
                                ["search.depth", "depth 4 is too deep for 8x8", "at most 2"]),
    "depth too deep in a choice": ("dataset: {name: digits}\nsearch:\n  depth: {choice: [3, 1]}\n",
                                   ["search.depth", "depth 3 is too deep"]),
    "max_epochs in fixed": ("fixed: {max_epochs: 5}\n", ["fixed.max_epochs", "budget.max_epochs"]),
    "seed in search": ("search:\n  seed: {int: [0, 5]}\n", ["search.seed", "seed (top level)"]),
    "fixed and searched": ("fixed: {lr: 0.01}\nsearch:\n  lr: {loguniform: [0.001, 0.1]}\n",
                           ["search.lr", "also in fixed"]),
    "convs_per_stage on a dense model": ("fixed: {arch: dense}\nsearch:\n  convs_per_stage: {choice: [1, 2]}\n",
                                         ["search.convs_per_stage", "needs arch conv"]),
    "plateau with a schedule": ("fixed: {plateau_patience: 2}\nsearch:\n  lr_schedule: {choice: [constant, cosine]}\n",
                                ["search.lr_schedule", "one or the other"]),
    "invalid combination drawn together": (
        "search:\n  arch: {choice: [conv, dense]}\n  convs_per_stage: {choice: [1, 2]}\n",
        ["search:", "arch=dense, convs_per_stage=2", "can be drawn together", "needs arch conv"]),
    "unknown searcher key": ("searcher: {liar: true}\n", ["searcher:", "'liar'", "constant_liar"]),
    "start_from unknown key": ("search:\n  lr: {loguniform: [0.001, 0.1]}\nstart_from:\n  - {lrr: 0.01}\n",
                               ["start_from[0].lrr", "not searched", "searched hyperparameters only: lr"]),
    "start_from fixed key": ("fixed: {depth: 1}\nsearch:\n  lr: {loguniform: [0.001, 0.1]}\nstart_from:\n  - {depth: 2}\n",
                             ["start_from[0].depth", "fixed to 1"]),
    "start_from outside a range": ("search:\n  lr: {loguniform: [0.001, 0.1]}\nstart_from:\n  - {lr: 0.01}\n  - {lr: 0.5}\n",
                                   ["start_from[1].lr", "0.5 is outside the search space", "loguniform: [0.001, 0.1]"]),
    "start_from not a choice": ("search:\n  width: {choice: [8, 16]}\nstart_from:\n  - {width: 12}\n",
                                ["start_from[0].width", "12 is outside", "choice: [8, 16]"]),
    "start_from float for an int": ("search:\n  depth: {int: [1, 2]}\nstart_from:\n  - {depth: 1.5}\n",
                                    ["start_from[0].depth", "1.5 is outside"]),
    "start_from empty entry": ("search:\n  depth: {int: [1, 2]}\nstart_from:\n  - {}\n", ["start_from[0]", "empty"]),
    "start_from not a list": ("start_from: {lr: 0.1}\n", ["start_from", "list"]),
    "grace period over budget": ("budget: {max_epochs: 2, grace_period: 3}\n", ["budget:", "grace_period 3"]),
    "time budget not positive": ("budget: {time_budget_s: 0}\n", ["budget.time_budget_s", "greater than 0"]),
    "bad name": ("name: 'a b/c'\n", ["name:", "'a b/c'"]),
    "list, not mapping": ("- a\n- b\n", ["must be a mapping", "not list"]),
    "scalar, not mapping": ("hello\n", ["must be a mapping", "not str"]),
    "empty file": ("", ["empty spec"]),
    "invalid YAML": ("name: [1, 2\n", ["not valid YAML at line 2"]),
    "invalid YAML mapping": ("a: b: c\n", ["not valid YAML at line 1", "mapping values"]),
    "python object tag": ("name: !!python/object:collections.OrderedDict {}\n",
                          ["not valid YAML at line 1", "python/object:collections.OrderedDict"]),
}


@pytest.mark.parametrize("text, fragments", BAD.values(), ids=BAD.keys())
def test_bad_spec_is_one_line_naming_file_and_key(tmp_path, text, fragments):
    msg = spec_error(write(tmp_path, text))
    for fragment in fragments:
        assert fragment in msg, msg


def test_python_tags_construct_nothing(tmp_path):
    # yaml.load with the full loader would run os.mkdir while parsing; safe_load refuses the tag.
    target = tmp_path / "created-by-yaml"
    path = write(tmp_path, f"!!python/object/apply:os.mkdir ['{target}']\n")
    assert "python/object/apply:os.mkdir" in spec_error(path)
    assert not target.exists()


def test_unreadable_files(tmp_path):
    assert "no such file" in spec_error(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    assert "not a readable UTF-8 text file" in spec_error(binary)


@pytest.mark.parametrize("text, key", [
    ("fixed: {noise_level: 0.5, noise_level_max: 0.2}\n", "noise_level_max"),
    ("fixed: {noise_kind: mask, noise_level: 1.5}\n", "noise_level"),
    ("eval_noise: {kind: mask, level: 1.5}\n", "eval_noise"),
    ("eval_noise: {level: 0.5, level_max: 0.2}\n", "eval_noise"),
], ids=["fixed band inverted", "fixed mask over 1", "eval mask over 1", "eval band inverted"])
def test_inconsistent_noise_is_rejected_at_load_time(tmp_path, text, key):
    assert key in spec_error(write(tmp_path, text))


def test_duplicate_key_is_refused_with_its_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: a\nbudget:\n  num_samples: 2\n  max_epochs: 3\n  num_samples: 5\n")
    with pytest.raises(SpecError, match=r"key 'num_samples' appears twice \(lines 3 and 5\)"):
        load_spec(path)
    path.write_text("name: a\nfixed: {width: 8}\nfixed: {width: 16}\n")
    with pytest.raises(SpecError, match=r"key 'fixed' appears twice \(lines 2 and 3\)"):
        load_spec(path)
