"""The experiment spec: YAML in, typed and validated objects out, once, at the edge.

A spec file names the experiment, the dataset, the fixed evaluation noise, the budget
(:mod:`tuner.budget`), the resources per trial, the ``fixed`` hyperparameters and the ``search``ed
distributions. Every hyperparameter is a field of :class:`tuner.config.TrialConfig`; the YAML key,
the dataclass field, the Ray Tune config key and the CLI flag are the same word. This module holds
the sections, the checks across them, the conversion to Ray Tune's ``param_space`` and the loading.

Any mistake becomes a :class:`SpecError` whose message is one line naming the file, the key
and what is allowed.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import Field, ValidationError, model_validator

from tuner.budget import BudgetSpec
from tuner.config import HYPERPARAMETERS, Section, TrialConfig
from tuner.data import KNOWN_SHAPES, PHOTO_CHANNELS, PHOTO_DATASETS, DatasetName
from tuner.model import check_model
from tuner.noise import Noise, NoiseKind

Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]

# Pairs of fields that TrialConfig checks together: searched together, every combination must be valid.
_COUPLED = ("arch", "convs_per_stage", "lr_schedule", "plateau_patience", "residual", "loss")
# Set by the experiment, not by fixed/search: one seed and one budget per search.
FROM_EXPERIMENT = ("max_epochs", "max_train_seconds", "seed")


RunName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]  # a run's folder and its study's name


class SpecError(Exception):
    """A bad spec; the message is one line naming the file, the key and what is allowed."""


class DatasetSpec(Section):
    name: DatasetName = "mnist5k"  # which images
    data_dir: str = "./data"  # torchvision datasets are read from / downloaded to here
    # folder (photos, any size): one folder split by image, or a train folder with its own val/test folders
    path: Optional[str] = None  # one folder of PNG/JPEG images, split into train / val / test by image
    train_path: Optional[str] = None  # the training images (instead of path)
    val_path: Optional[str] = None  # with train_path: validation images (default: val_fraction of train's)
    test_path: Optional[str] = None  # with train_path: test images (default: test_fraction of train's)
    patch_size: Annotated[int, Field(ge=4, le=1024)] = 32  # photos: side of the random training crops
    patches_per_epoch: Optional[Annotated[int, Field(ge=1, le=10**9)]] = None  # photos: default, the crops tiling the train images once
    channels: Optional[Literal[1, 3]] = None  # photos: grayscale (1) or RGB (3); default what the images are
    val_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1
    test_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1
    split_seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0  # shuffle before splitting
    limit: Optional[Annotated[int, Field(ge=1)]] = None  # keep at most this many images per split

    @model_validator(mode="after")
    def _folders(self) -> "DatasetSpec":
        given = [k for k in ("path", "train_path", "val_path", "test_path") if getattr(self, k) is not None]
        if self.name != "folder" and given:
            raise ValueError(f"{given[0]}: only for name folder (this dataset is {self.name})")
        if self.name == "folder":
            if self.path is None and self.train_path is None:
                raise ValueError("name folder needs path (one folder, split by image) or train_path "
                                 "(with optional val_path and test_path)")
            if self.path is not None and len(given) > 1:
                raise ValueError(f"{given[1]}: give either path (one folder, split by image) or "
                                 f"train_path/val_path/test_path, not both")
        return self


class NoiseSpec(Section):
    kind: NoiseKind = "gaussian"
    level: Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)] = 0.5  # on the [0, 1] scale
    sigma: Optional[Annotated[float, Field(gt=0.0, le=510.0, allow_inf_nan=False)]] = None  # gaussian: the std on the 0-255 scale (level = sigma / 255)
    level_max: Optional[Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)]] = None
    clip: bool = True  # gaussian: clip noisy images to [0, 1]; false is the benchmarks' standard (DnCNN, KAIR)
    quantize: bool = False  # gaussian: also round them to 8 bits, as a real noisy photo is (needs clip)
    seed: Annotated[int, Field(ge=0, le=2**32 - 2)] = 1234  # the evaluation corruption is drawn once from this seed

    @model_validator(mode="after")
    def _consistent(self) -> "NoiseSpec":
        if self.sigma is not None:
            if self.kind != "gaussian":
                raise ValueError(f"sigma is the Gaussian std on the 0-255 scale; kind {self.kind} takes level (a fraction)")
            if "level" in self.model_fields_set and not math.isclose(self.level, self.sigma / 255, rel_tol=1e-9):
                raise ValueError(f"give level ({self.level:g}, 0-1 scale) or sigma ({self.sigma:g}, 0-255 scale), "
                                 f"not both (sigma {self.sigma:g} is level {self.sigma / 255:.6g})")
            self.level = self.sigma / 255
        self.noise()  # Noise checks kind, level, level_max, clip and quantize together
        return self

    def noise(self) -> Noise:
        return Noise(self.kind, self.level, self.level_max, self.clip, self.quantize)


class ResourcesSpec(Section):
    cpus_per_trial: Annotated[float, Field(gt=0.0, le=1024)] = 1.0
    gpus_per_trial: Annotated[float, Field(ge=0.0, le=64)] = 0.0  # fractions pack trials on a GPU


class SearcherSpec(Section):
    """Optuna's TPE sampler (``optuna.samplers.TPESampler``), by its own argument names."""

    n_startup_trials: Optional[Annotated[int, Field(ge=0, le=100000)]] = None  # random trials first, warm starts included; default len(start_from) + 10
    constant_liar: bool = True  # running trials count as poor, so parallel trials spread out (Optuna's advice)
    multivariate: bool = True  # model the hyperparameters jointly, not one at a time
    # Earlier searches (by run name) whose finished trials TPE learns from, as W&B Sweeps' prior runs:
    # those that are points of this search are copied into its study first (tuner.study.prior_trials),
    # their best runs after the warm starts, and n_startup_trials counts this search's own trials
    # (tuner.search.with_priors).
    prior_studies: list[RunName] = []


StrictInt = Annotated[int, Field(strict=True)]  # a YAML 1.5 is not an integer bound
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int", "logint")


class Distribution(Section):
    """Exactly one of: ``{choice: [..]}``, ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``,
    ``{int: [lo, hi]}`` or ``{logint: [lo, hi]}`` (integer bounds inclusive)."""

    choice: Optional[list[Any]] = None
    uniform: Optional[tuple[float, float]] = None
    loguniform: Optional[tuple[float, float]] = None
    int: Optional[tuple[StrictInt, StrictInt]] = None
    logint: Optional[tuple[StrictInt, StrictInt]] = None

    @model_validator(mode="before")
    @classmethod
    def _one(cls, data: Any) -> Any:
        if isinstance(data, dict):  # an unset kind (a model_dump's None) is the same as an absent one
            data = {k: v for k, v in data.items() if v is not None}
        if not isinstance(data, dict) or len(data) != 1:
            raise ValueError(f"must be one of {{{': [..]}, {'.join(DISTRIBUTIONS)}: [..]}}")
        return data

    @model_validator(mode="after")
    def _bounds(self) -> "Distribution":
        kind, value = self.kind, self.value
        if kind == "choice":
            if not value:
                raise ValueError("choice needs at least one value")
            return self
        lo, hi = value
        if not all(math.isfinite(v) for v in (lo, hi)):
            raise ValueError(f"{kind} bounds must be finite numbers")
        if lo > hi:
            raise ValueError(f"{kind}: low {lo} > high {hi} (need low <= high)")
        if kind.startswith("log") and lo <= 0:
            raise ValueError(f"{kind}: low {lo} must be > 0")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in DISTRIBUTIONS if getattr(self, k) is not None)

    @property
    def value(self) -> Any:
        return getattr(self, self.kind)

    def extremes(self) -> list[Any]:
        """Values that bound what this distribution can produce (for validation)."""
        return list(self.value) if self.kind == "choice" else [self.value[0], self.value[1]]

    def contains(self, value: Any) -> bool:
        """Whether this distribution can draw ``value`` (a ``start_from`` entry's)."""
        if self.kind == "choice":
            return any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in self.value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.kind in ("int", "logint") and not isinstance(value, int):
            return False
        lo, hi = self.value
        return lo <= value <= hi

    def describe(self) -> str:
        return f"{{{self.kind}: {list(self.value)}}}"

    def to_tune(self):
        """The Ray Tune search-space domain."""
        from ray import tune

        k, v = self.kind, self.value
        if k == "choice":
            return tune.choice(list(v))
        if k == "uniform":
            return tune.uniform(*v)
        if k == "loguniform":
            return tune.loguniform(*v)
        if k == "int":
            return tune.randint(v[0], v[1] + 1)  # Tune's upper bound is exclusive
        return tune.lograndint(v[0], v[1] + 1)


# Where a CLI override goes: a field of one of these sections, else a top-level key.
_SECTION_FIELDS = {"budget": BudgetSpec.model_fields, "resources": ResourcesSpec.model_fields,
                   "searcher": ("prior_studies",),
                   "dataset": ("path", "train_path", "val_path", "test_path")}  # where the photos are, not dataset.name


class ExperimentSpec(Section):
    """A whole search, as written in a ``search_spaces/*.yaml`` file."""

    name: RunName = "search"  # run folder name
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0  # the searcher's seed and every trial's seed
    dataset: DatasetSpec = DatasetSpec()
    eval_noise: NoiseSpec = NoiseSpec()  # every trial is scored on val/test images corrupted by this
    budget: BudgetSpec = BudgetSpec()
    resources: ResourcesSpec = ResourcesSpec()
    searcher: SearcherSpec = SearcherSpec()  # how TPE proposes trials
    study_storage: Optional[str] = None  # the Optuna study's SQLAlchemy URL or journal:///PATH; default sqlite:///<run>/study.db
    fixed: dict[str, Any] = {}  # hyperparameters held constant (TrialConfig fields)
    search: dict[str, Distribution] = {}  # hyperparameters searched
    start_from: list[dict[str, Any]] = []  # known-good (partial) configurations, tried first, in order

    @model_validator(mode="before")
    @classmethod
    def _dataset_augment(cls, data: Any) -> Any:
        """Specs (and saved runs) from before ``augment`` was a hyperparameter said
        ``dataset.augment: true/false``: that is ``fixed.augment: flip_rotate/none`` now."""
        if not (isinstance(data, dict) and isinstance(data.get("dataset"), dict) and "augment" in data["dataset"]):
            return data
        data = {**data, "dataset": dict(data["dataset"])}
        value = data["dataset"].pop("augment")
        if not isinstance(value, bool):
            raise ValueError(f"dataset.augment: {value!r}; augment is a hyperparameter now: "
                             f"fixed.augment or search.augment, one of none, flip, flip_rotate")
        if "augment" in (data.get("fixed") or {}) or "augment" in (data.get("search") or {}):
            raise ValueError("dataset.augment: give augment once, in fixed or search (none, flip, flip_rotate)")
        data["fixed"] = {**(data.get("fixed") or {}), "augment": "flip_rotate" if value else "none"}
        return data

    @model_validator(mode="after")
    def _prior_is_earlier(self) -> "ExperimentSpec":
        priors = self.searcher.prior_studies
        if self.name in priors:
            raise ValueError(f"searcher.prior_studies: {self.name!r} is this search's own name; "
                             f"a prior study is an earlier search's (its run name)")
        twice = sorted({p for p in priors if priors.count(p) > 1})
        if twice:
            raise ValueError(f"searcher.prior_studies: {twice[0]!r} is named twice; name each earlier search once")
        return self

    @property
    def image_shape(self) -> Optional[tuple[int, int, int]]:
        """(C, H, W) when known without reading data, else None."""
        if self.dataset.name in KNOWN_SHAPES:
            return KNOWN_SHAPES[self.dataset.name]
        if self.dataset.name in PHOTO_DATASETS:
            return (self.dataset.channels or PHOTO_CHANNELS.get(self.dataset.name, 0),
                    self.dataset.patch_size, self.dataset.patch_size)
        return None

    def base_config(self) -> dict[str, Any]:
        """The fixed part of every trial's config: defaults < experiment < fixed. Training noise
        defaults to the evaluation noise."""
        e = self.eval_noise
        base = {"noise_kind": e.kind, "noise_level": e.level, "noise_level_max": e.level_max,
                "max_epochs": self.budget.max_epochs, "max_train_seconds": self.budget.max_train_seconds,
                "seed": self.seed}
        base = {k: v for k, v in base.items() if v is not None}  # unset: TrialConfig's default
        base.update(self.fixed)
        return base

    def param_space(self) -> dict[str, Any]:
        """The Ray Tune ``param_space``: constants for fixed keys, domains for searched ones."""
        space: dict[str, Any] = self.base_config()
        space.update({k: d.to_tune() for k, d in self.search.items()})
        return space

    def to_yaml(self) -> str:
        """The resolved spec as YAML that :func:`load_spec` reads back: budget fields derived from
        ``time_budget_s`` are written as numbers, so a resumed run keeps them."""
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)

    def with_overrides(self, **overrides: Any) -> "ExperimentSpec":
        """A copy with CLI overrides applied (``name``, ``seed``, ``num_samples``, ``max_epochs``,
        ``time_budget_s``, ``cpus_per_trial``, ``gpus_per_trial``, ``max_failures``, ``prior_studies``,
        and the photo folders ``path``, ``train_path``, ``val_path``, ``test_path``); None means keep. Budget fields
        derived from ``time_budget_s`` are derived again from the overridden numbers."""
        data = self.model_dump(exclude_none=True)  # None is every optional field's default
        # Only what the spec set: derived fields, dumped too, would come back as explicit and not follow.
        data["budget"] = self.budget.model_dump(exclude_unset=True, exclude_none=True)
        for key, value in overrides.items():
            if value is None:
                continue
            section = next((s for s, fields in _SECTION_FIELDS.items() if key in fields), None)
            if section == "dataset" and key == "path":  # one folder replaces the separate ones
                for k in ("train_path", "val_path", "test_path"):
                    data["dataset"].pop(k, None)
            elif section == "dataset" and key == "train_path":
                data["dataset"].pop("path", None)
            if section:
                data[section][key] = value
            else:
                data[key] = value
        return _validate(data, "<command line>")


def _check_hyperparameters(spec: ExperimentSpec) -> None:
    """Every fixed/searched key is a TrialConfig field, and every value it can take is valid."""
    for section, keys in (("fixed", spec.fixed), ("search", spec.search)):
        for key in keys:
            if key in FROM_EXPERIMENT:
                where = f"budget.{key}" if key.startswith("max_") else "seed (top level)"
                raise ValueError(f"{section}.{key}: set by the experiment's {where}, not here")
            if key not in HYPERPARAMETERS:
                allowed = ", ".join(h for h in HYPERPARAMETERS if h not in FROM_EXPERIMENT)
                raise ValueError(f"{section}.{key}: unknown hyperparameter; allowed: {allowed}")
    both = set(spec.fixed) & set(spec.search)
    if both:
        raise ValueError(f"search.{sorted(both)[0]}: also in fixed; a hyperparameter is either fixed or searched")
    base = spec.base_config()
    _trial(base, "fixed")
    # Try each searched extreme on top of the fixed config; the most demanding depth is checked
    # against the image size below.
    for key, dist in spec.search.items():
        for v in dist.extremes():
            _trial({**base, key: v}, f"search.{key}")
    # Fields that constrain each other (TrialConfig.__post_init__): every combination the search
    # can draw must be valid, or a trial would fail mid-search.
    together = [k for k in _COUPLED if k in spec.search]
    if len(together) > 1:
        for values in itertools.product(*(spec.search[k].extremes() for k in together)):
            combo = dict(zip(together, values))
            try:
                TrialConfig(**{**base, **combo})
            except (ValidationError, ValueError) as e:
                msg = e.errors()[0]["msg"].removeprefix("Value error, ") if isinstance(e, ValidationError) else str(e)
                raise ValueError(f"search: {', '.join(f'{k}={v}' for k, v in combo.items())} can be drawn "
                                 f"together but is invalid ({msg}); fix one of them") from None
    for i, point in enumerate(spec.start_from):
        _check_start(spec, i, point, base)
    if spec.dataset.name in PHOTO_DATASETS:  # photos of any size are scored whole
        for key in ("arch", "bottleneck"):
            values = spec.search[key].extremes() if key in spec.search else [base.get(key, "conv")]
            if "dense" in values:
                where = "search" if key in spec.search else "fixed"
                raise ValueError(f"{where}.{key}: dense takes one image size only; photos of any size "
                                 f"(dataset {spec.dataset.name}) need arch conv with bottleneck conv")
    shape = spec.image_shape
    if shape and shape[0] in (0, 1, 3):
        c = shape[0] or 1
        arches = spec.search["arch"].extremes() if "arch" in spec.search else [base.get("arch", "conv")]
        depths = spec.search["depth"].extremes() if "depth" in spec.search else [base.get("depth", 2)]
        where = "search.depth" if "depth" in spec.search else "fixed.depth"
        for arch in arches:
            cfg = TrialConfig(**{**base, "arch": arch, "depth": max(depths)})
            try:
                check_model(cfg, c, shape[1], shape[2])
            except ValueError as e:
                raise ValueError(f"{where}: {e} (dataset {spec.dataset.name})") from None


def _check_start(spec: ExperimentSpec, i: int, point: dict[str, Any], base: dict[str, Any]) -> None:
    """A ``start_from`` entry names searched hyperparameters only, each with a value its distribution can draw."""
    where = f"start_from[{i}]"
    if not point:
        raise ValueError(f"{where}: empty; give some searched hyperparameters and their values")
    for key, value in point.items():
        if key not in spec.search:
            why = f"fixed to {spec.fixed[key]!r}" if key in spec.fixed else "not searched"
            raise ValueError(f"{where}.{key}: {why}; start_from sets searched hyperparameters only: "
                             f"{', '.join(spec.search) or '(none)'}")
        if not spec.search[key].contains(value):
            raise ValueError(f"{where}.{key}: {value!r} is outside the search space {spec.search[key].describe()}")
    _trial({**base, **point}, where)


def _trial(config: dict[str, Any], where: str) -> TrialConfig:
    try:
        return TrialConfig(**config)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) if err["loc"] else ""
        loc = where if where.startswith("search.") or not key else f"{where}.{key}"
        raise ValueError(f"{loc}: {_message(err)}") from None
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None


def _message(err: dict) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] not in ("value_error", "assertion_error", "missing") and "input" in err:
        inp = err["input"]
        shown = repr(inp) if not isinstance(inp, (dict, list)) else type(inp).__name__
        msg = f"{msg} (got {shown[:60]})"
    return msg


def _validate(data: Any, source: str) -> ExperimentSpec:
    if data is None:
        raise SpecError(f"{source}: empty spec; expected a mapping with keys: "
                        f"{', '.join(ExperimentSpec.model_fields)}")
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec must be a mapping of keys "
                        f"({', '.join(ExperimentSpec.model_fields)}), not {type(data).__name__}")
    try:
        spec = ExperimentSpec.model_validate(data)
        _check_hyperparameters(spec)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        raise SpecError(f"{source}: {loc + ': ' if loc else ''}{_message(err)}") from None
    except ValueError as e:
        raise SpecError(f"{source}: {e}") from None
    return spec


class DuplicateKey(yaml.YAMLError):
    """A mapping names one key twice (YAML leaves that undefined; PyYAML keeps the last)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, refusing a key given twice in one mapping (issue 20)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)):
                continue  # an unhashable key (a list): construct_mapping refuses it with its own message
            if key in seen:
                raise DuplicateKey(f"key {key!r} appears twice (lines {seen[key]} and {line}); "
                                   f"a spec may give each key once")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read and validate a spec file.

    Args:
        path: a YAML file.

    Returns:
        The validated spec.

    Raises:
        SpecError: one line naming the file, the key and what is allowed.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as e:
        raise SpecError(f"{path}: not a readable UTF-8 text file ({type(e).__name__})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # safe: YAML tags cannot construct Python objects
    except DuplicateKey as e:
        raise SpecError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise SpecError(f"{path}: not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise SpecError(f"{path}: not valid YAML: nested too deeply") from None
    except ValueError as e:  # PyYAML's int() of a number over 4300 digits
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    return _validate(data, str(path))
