"""The experiment spec: YAML in, typed and validated objects out, once, at the edge.

A spec file names the experiment, the dataset, the fixed evaluation noise, the budget, the
resources per trial, the ``fixed`` hyperparameters and the ``search``ed distributions. Every
hyperparameter is a field of :class:`TrialConfig`; the YAML key, the dataclass field, the Ray
Tune config key and the CLI flag are the same word.

Any mistake becomes a :class:`SpecError` whose message is one line naming the file, the key
and what is allowed.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from tuner.data import KNOWN_SHAPES, PHOTO_CHANNELS, PHOTO_DATASETS, DatasetName
from tuner.model import check_model
from tuner.noise import Noise, NoiseKind

Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]

_STRICT = ConfigDict(extra="forbid", strict=False)


@pydantic_dataclass(config=_STRICT, frozen=True)
class TrialConfig:
    """Everything one trial needs: the hyperparameters the search turns, and their defaults."""

    # --- model (tuner.model) ---
    arch: Literal["conv", "dense"] = "conv"  # conv: convolutional AE (seeds 000/001/004); dense: seed 003
    depth: Annotated[int, Field(ge=1, le=6)] = 2  # conv: down/up stages; dense: layers to the code
    width: Annotated[int, Field(ge=1, le=512)] = 32  # conv: channels of the first stage, doubled per stage
    latent_dim: Annotated[int, Field(ge=1, le=65536)] = 32  # bottleneck channels, or code length if dense
    bottleneck: Literal["conv", "dense"] = "conv"  # conv arch: channel bottleneck, or dense vector (seed 001)
    dropout: Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)] = 0.0  # decoder dropout
    batch_norm: bool = True  # batch norm after each conv (seed 004)
    skip: bool = False  # U-Net skip connections (conv arch)
    convs_per_stage: Literal[1, 2] = 1  # 3x3 convs per resolution level (conv arch); 2 as in a U-Net
    # none | logit | pixel: predict the corruption and subtract it (DnCNN): in logit space (digits,
    # bce; true means logit) or in pixel space (photos, mse/l1: output = input - net(input)); tuner.model
    residual: Literal["none", "logit", "pixel"] = "none"
    # --- training noise (tuner.noise); evaluation noise is fixed by the experiment ---
    noise_kind: NoiseKind = "gaussian"  # gaussian | impulse | mask
    noise_level: Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)] = 0.5  # std, or pixel fraction
    noise_level_max: Optional[Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)]] = None  # band top
    # --- training data (tuner.train) ---
    # each training image or crop in a random mode: none; flip (left-right, up-down, both: the picture
    # keeps its up axis); flip_rotate (also quarter turns: all 8, DnCNN's). Photos gain from it, images
    # with an orientation (digits: a rotated 6 is a 9) lose: a spec fixes or searches it.
    augment: Literal["none", "flip", "flip_rotate"] = "none"
    # --- optimisation (tuner.train) ---
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop", "adadelta"] = "adam"
    lr: Annotated[float, Field(gt=0.0, le=100.0, allow_inf_nan=False)] = 1e-3  # learning rate
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.0
    momentum: Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)] = 0.9  # sgd and rmsprop only
    nesterov: bool = False  # sgd only
    lr_schedule: Literal["constant", "cosine", "onecycle"] = "constant"  # per batch over max_epochs (tuner.train)
    plateau_patience: Annotated[int, Field(ge=0, le=1000)] = 0  # >0: ReduceLROnPlateau x0.2 (seed 001); constant only
    loss: Literal["mse", "bce", "l1"] = "mse"  # training loss; selection is always val_psnr
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 64
    max_epochs: Annotated[int, Field(ge=1, le=100000)] = 10  # epochs a trial may run (ASHA's max_t by epochs)
    max_train_seconds: Optional[Annotated[float, Field(gt=0.0, le=1e7)]] = None  # training seconds a trial may run
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0  # weights, batch order and training noise
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 autocast where native (CUDA, AVX512-BF16/AMX CPUs), else fp32

    @field_validator("residual", mode="before")
    @classmethod
    def _residual_bool(cls, v: Any) -> Any:  # specs and models from before pixel space said true / false
        return {True: "logit", False: "none"}.get(v, v) if isinstance(v, bool) else v

    def __post_init__(self) -> None:
        # Noise checks kind, level and level_max together: fail at load time, not in a trial.
        if self.noise_level_max is not None and self.noise_level_max < self.noise_level:
            raise ValueError(f"noise_level_max {self.noise_level_max} < noise_level {self.noise_level}")
        if self.arch != "conv" and self.convs_per_stage != 1:
            raise ValueError(f"convs_per_stage {self.convs_per_stage} needs arch conv (a dense model has no conv stages)")
        if self.plateau_patience > 0 and self.lr_schedule != "constant":
            raise ValueError(f"plateau_patience {self.plateau_patience} reduces a constant learning rate; "
                             f"lr_schedule {self.lr_schedule} sets it already (use one or the other)")
        if self.residual == "pixel" and self.loss == "bce":
            raise ValueError("loss bce needs outputs in (0, 1); residual pixel outputs input - net(input), "
                             "unbounded: use loss mse or l1 with it (or residual logit)")
        if self.noise_kind != "gaussian" and max(self.noise_level, self.noise_level_max or 0.0) > 1:
            raise ValueError(f"noise_kind {self.noise_kind} hits a fraction of pixels: "
                             f"noise_level and noise_level_max must be <= 1")

    def train_noise(self, eval_noise: Optional[Noise] = None) -> Noise:
        """The training noise: this trial's kind and level, clipped and quantized as the experiment's
        evaluation noise is (a model trained on unclipped noise is tested on unclipped noise)."""
        e = eval_noise or Noise()
        return Noise(self.noise_kind, self.noise_level, self.noise_level_max, e.clip, e.quantize)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


HYPERPARAMETERS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrialConfig))
# Pairs of fields that TrialConfig checks together: searched together, every combination must be valid.
_COUPLED = ("arch", "convs_per_stage", "lr_schedule", "plateau_patience", "residual", "loss")
# Set by the experiment, not by fixed/search: one seed and one budget per search.
_FROM_EXPERIMENT = ("max_epochs", "max_train_seconds", "seed")


class SpecError(Exception):
    """A bad spec; the message is one line naming the file, the key and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if data is None:
            return {}
        if isinstance(data, dict):
            unknown = [k for k in data if k not in cls.model_fields]
            if unknown:
                raise ValueError(f"unknown key {unknown[0]!r}; allowed: {', '.join(cls.model_fields)}")
        return data


class DatasetSpec(_Section):
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


class NoiseSpec(_Section):
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


# How budget.time_budget_s alone sizes a search (BudgetSpec._derive). A slot (one of max_concurrent)
# that trains one trial to the end also runs, in turn, ceil(num_samples / max_concurrent) - 1 other
# trials, each at least to ASHA's first rung before it may be stopped; so
#   max_train_seconds * (1 + (waves - 1) / reduction_factor**FIRST_RUNG_DEPTH) = TRAINING_SHARE * time_budget_s.
# Rungs promoted past the first are not reserved for: time_budget_s stops whatever is still running.
TRAINING_SHARE = 0.965  # of time_budget_s, spent in training steps (train_seconds); Tune's start-up
# (about 5 s to the first trial, docs/benchmarks.md "Orchestration overhead"), each trial's set-up and its
# validation every epoch take the rest. 0.965 gives the 1290 s bsd68.yaml set by hand for 1680 s, 5 trials, one at a time.
FIRST_RUNG_DEPTH = 2.5  # grace_period = max_train_seconds / reduction_factor**2.5: three rungs below max_t
# (grace, x rf, x rf^2), the top one half a rung (sqrt(rf)) under it, so a trial that survives every rung
# still trains sqrt(rf) times longer; bsd68.yaml's hand-set 80 s of 1290 is rf**2.53 at rf 3.
# The race (continue_best) pays fixed costs out of its wall time, measured on the 2-core CPU (bench_versus,
# impulse_bsd68): Ray Tune's start to the first trial's first step (Ray, a worker process, torch's import,
# the data from the object store) ~22 s, and each trial's set-up and first validation ~3 s.
RACE_START_S = 20.0
TRIAL_SETUP_S = 3.0
# The winner's continuation, a new Tune experiment in the same Ray: its trial function started 4 s after
# the race ended, then loaded the checkpoint and validated once before training (impulse_bsd68: ~8 s).
CONTINUE_START_S = 8.0
RACE_OVERRUN = 1.5  # the race may run over its plan by half (promotions vary) before Tune stops it
NO_EPOCH_CAP = 100_000  # max_epochs' largest value: with the budget in seconds, epochs do not end a trial


def _three_figures(x: float) -> float:
    """``x`` to 3 significant figures (1290.2 -> 1290, 82.77 -> 82.8): readable in the resolved spec, never 0."""
    return float(f"{x:.3g}")


class BudgetSpec(_Section):
    # One number is enough: time_budget_s alone (no max_train_seconds) puts ASHA's rungs in training
    # seconds and derives max_train_seconds, grace_period and max_epochs from it (_derive, the constants
    # above); a field given explicitly is kept. `--time-budget-s 600` shrinks such a search in one flag.
    num_samples: Annotated[int, Field(ge=1, le=100000)] = 8  # trials
    max_epochs: Annotated[int, Field(ge=1, le=100000)] = 10  # per trial (ASHA max_t when time_attr is epoch); derived from time_budget_s: no cap
    # What ASHA's rungs count (Ray's time_attr): epoch, or train_seconds, the seconds a trial has
    # trained, so trials of different cost meet at equal compute; then max_train_seconds is max_t.
    # Default: train_seconds when time_budget_s is given without max_epochs or max_train_seconds, else epoch.
    time_attr: Literal["epoch", "train_seconds"] = "epoch"
    max_train_seconds: Optional[Annotated[float, Field(gt=0.0, le=1e7)]] = None  # per trial, with time_attr train_seconds; default derived from time_budget_s
    grace_period: Annotated[float, Field(gt=0.0, le=1e7)] = 1  # ASHA: time_attr units before a trial may be stopped; derived with max_train_seconds
    reduction_factor: Annotated[float, Field(gt=1.0, le=100.0)] = 3.0  # ASHA: keep 1/rf at each rung
    max_concurrent: Annotated[int, Field(ge=1, le=10000)] = 2  # trials running at once
    keep_checkpoints: Annotated[int, Field(ge=1, le=100)] = 2  # best checkpoints kept per trial
    max_failures: Annotated[int, Field(ge=-1, le=100)] = 2  # retries of a crashed trial (-1: forever)
    # A trial checkpoints on a new best val_psnr (when writing costs <= ~2.5% of its time), at its end,
    # and at least every this many seconds: what a kill may lose (tuner.train.CheckpointCadence). 0: every epoch.
    checkpoint_every_s: Annotated[float, Field(ge=0.0, le=1e7)] = 60.0
    # Wall-clock limit of the search (Ray Tune's time_budget_s): when it is spent, running trials stop
    # where they are (told to Optuna as PRUNED), no new ones start, and the best model so far is exported.
    time_budget_s: Optional[Annotated[float, Field(gt=0.0, le=1e7)]] = None
    # The winner continues (a budget in seconds): the search is first a race, race_share of
    # time_budget_s, whose trials stop at race_seconds (ASHA's max_t, its rungs below it); then the
    # race's best trial continues from its checkpoint to the end of the budget, its schedules spanning
    # max_train_seconds from its first step, so the race costs only what the losers trained.
    # Default: on when time_budget_s alone sets the budget; race_seconds and max_train_seconds derived.
    continue_best: Optional[bool] = None
    race_share: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.3
    race_seconds: Optional[Annotated[float, Field(gt=0.0, le=1e7)]] = None

    @model_validator(mode="after")
    def _derive(self) -> "BudgetSpec":
        """Derive what time_budget_s implies, once, at load time; then check the budget is consistent."""
        given = set(self.model_fields_set)  # what the spec set, before the assignments below add to it
        in_seconds = (self.time_attr == "train_seconds" if "time_attr" in given else "max_epochs" not in given)
        derived = self.time_budget_s is not None and self.max_train_seconds is None and in_seconds
        if self.continue_best is None:  # on when time_budget_s alone sets the budget and a race fits in it
            self.continue_best = derived and self._race_training(math.ceil(self.num_samples / self.max_concurrent)) > 0
        if self.continue_best:
            self._derive_race(given)
        elif self.race_seconds is not None:
            raise ValueError("race_seconds needs continue_best: true (the race's end, where its winner continues)")
        elif derived:
            self.time_attr = "train_seconds"
            waves = math.ceil(self.num_samples / self.max_concurrent)  # trials a slot runs in turn
            first_rung = self.reduction_factor ** FIRST_RUNG_DEPTH  # max_t / grace_period
            max_t = TRAINING_SHARE * self.time_budget_s / (1 + (waves - 1) / first_rung)
            self.max_train_seconds = _three_figures(max_t)
            if "grace_period" not in given:
                self.grace_period = _three_figures(max_t / first_rung)
            if "max_epochs" not in given:
                self.max_epochs = NO_EPOCH_CAP
        if self.time_attr == "epoch":
            if self.max_train_seconds is not None:
                raise ValueError("max_train_seconds needs time_attr train_seconds (the budget is in epochs now)")
            if self.grace_period != int(self.grace_period):
                raise ValueError(f"grace_period {self.grace_period:g}: counts epochs under time_attr epoch, a whole number")
            self.grace_period = int(self.grace_period)
        elif self.max_train_seconds is None:
            raise ValueError("time_attr train_seconds needs max_train_seconds (the training seconds of a trial "
                             "that runs to the end) or time_budget_s (the search's seconds, to derive it from)")
        if self.continue_best and self.race_seconds > self.max_train_seconds:
            raise ValueError(f"race_seconds {self.race_seconds:g} > max_train_seconds {self.max_train_seconds:g} "
                             f"(the race ends before the winner's whole training)")
        if self.grace_period > self.max_t:
            source = f" (derived from time_budget_s {self.time_budget_s:g})" if derived else ""
            raise ValueError(f"grace_period {self.grace_period:g} > {self.max_t_key} {self.max_t:g}{source}")
        # model_fields_set stays what the spec set (pydantic's model_construct sets it the same way), so
        # that an override (ExperimentSpec.with_overrides) derives the other fields again.
        object.__setattr__(self, "__pydantic_fields_set__", given)
        return self

    def _derive_race(self, given: set[str]) -> None:
        """``continue_best``: the race's end (``race_seconds``, ASHA's ``max_t``), the winner's whole
        training (``max_train_seconds``: its race seconds and TRAINING_SHARE of the rest), the first
        rung, from ``time_budget_s``; fields the spec set are kept."""
        if self.time_budget_s is None or ("time_attr" in given and self.time_attr != "train_seconds"):
            raise ValueError("continue_best needs time_budget_s and a budget in training seconds (time_attr "
                             "train_seconds): the winner continues for what is left of the time budget")
        self.time_attr = "train_seconds"
        waves = math.ceil(self.num_samples / self.max_concurrent)
        rf = self.reduction_factor
        first_rung = rf ** FIRST_RUNG_DEPTH
        if self.race_seconds is None:
            # In a slot, the first trial races to the end (asynchronous ASHA lets it through every rung);
            # each later one trains to the first rung, and the best 1/rf of those to the next, and so on:
            # a challenger costs `challenger` first rungs on average.
            tops = [rf ** k for k in range(math.ceil(FIRST_RUNG_DEPTH))] + [first_rung]  # rungs / grace_period
            challenger = 1 + sum((tops[k] - tops[k - 1]) / rf ** k for k in range(1, len(tops)))
            training = self._race_training(waves)
            if training <= 0:
                raise ValueError(f"time_budget_s {self.time_budget_s:g} leaves the race ({self.race_share:g} of it) "
                                 f"no training time after Ray's start-up (~{RACE_START_S:g} s) and "
                                 f"{waves} trial set-ups; give more time, or continue_best: false")
            self.race_seconds = _three_figures(training / (1 + (waves - 1) * challenger / first_rung))
        if self.max_train_seconds is None:
            rest = TRAINING_SHARE * (self.time_budget_s - self.race_budget_s) - CONTINUE_START_S
            self.max_train_seconds = _three_figures(self.race_seconds + max(0.0, rest))
        if "grace_period" not in given:
            self.grace_period = _three_figures(self.race_seconds / first_rung)
        if "max_epochs" not in given:
            self.max_epochs = NO_EPOCH_CAP

    def _race_training(self, waves: int) -> float:
        """The race's training seconds in a slot: its wall time less Ray's start-up and trial set-ups."""
        if self.time_budget_s is None:
            return 0.0
        return TRAINING_SHARE * self.race_share * self.time_budget_s - RACE_START_S - waves * TRIAL_SETUP_S

    @property
    def race_budget_s(self) -> Optional[float]:
        """The race's planned wall seconds: ``race_share`` of ``time_budget_s`` when the winner
        continues (``race_seconds`` is sized to fit in it), else the whole of it."""
        if self.continue_best and self.time_budget_s is not None:
            return self.race_share * self.time_budget_s
        return self.time_budget_s

    @property
    def race_limit_s(self) -> Optional[float]:
        """Ray Tune's ``time_budget_s`` for the race: :data:`RACE_OVERRUN` times its plan, so that a
        challenger ASHA promotes past the plan is judged at its rungs rather than cut after the first
        (the winner then gets less); the whole budget when there is no race."""
        if self.continue_best and self.time_budget_s is not None:
            return min(RACE_OVERRUN * self.race_budget_s, self.time_budget_s)
        return self.time_budget_s

    @property
    def max_t(self) -> float:
        """ASHA's ``max_t``: a whole trial, in ``time_attr`` units (the race's end when the winner
        continues)."""
        if self.time_attr == "epoch":
            return self.max_epochs
        return self.race_seconds if self.continue_best else self.max_train_seconds

    @property
    def rungs(self) -> list[float]:
        """Where ASHA compares trials, in ``time_attr`` units: ``grace_period * reduction_factor**k``
        below ``max_t`` (Ray's ``_Bracket`` milestones, ray/tune/schedulers/async_hyperband.py)."""
        rungs, k = [], 0
        while self.grace_period * self.reduction_factor ** k < self.max_t:  # Ray's arithmetic, to the bit
            rungs.append(self.grace_period * self.reduction_factor ** k)
            k += 1
        return rungs

    @property
    def max_t_key(self) -> str:
        if self.time_attr == "epoch":
            return "max_epochs"
        return "race_seconds" if self.continue_best else "max_train_seconds"


class ResourcesSpec(_Section):
    cpus_per_trial: Annotated[float, Field(gt=0.0, le=1024)] = 1.0
    gpus_per_trial: Annotated[float, Field(ge=0.0, le=64)] = 0.0  # fractions pack trials on a GPU


class SearcherSpec(_Section):
    """Optuna's TPE sampler (``optuna.samplers.TPESampler``), by its own argument names."""

    n_startup_trials: Optional[Annotated[int, Field(ge=0, le=100000)]] = None  # random trials first; default a third of the budget, 2..10
    constant_liar: bool = True  # running trials count as poor, so parallel trials spread out (Optuna's advice)
    multivariate: bool = True  # model the hyperparameters jointly, not one at a time


StrictInt = Annotated[int, Field(strict=True)]  # a YAML 1.5 is not an integer bound
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int", "logint")


class Distribution(_Section):
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
                   "dataset": ("path", "train_path", "val_path", "test_path")}  # where the photos are, not dataset.name


class ExperimentSpec(_Section):
    """A whole search, as written in a ``search_spaces/*.yaml`` file."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")] = "search"  # run folder name
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
        ``time_budget_s``, ``cpus_per_trial``, ``gpus_per_trial``, ``max_failures``, and the photo
        folders ``path``, ``train_path``, ``val_path``, ``test_path``); None means keep. Budget fields
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
            if key in _FROM_EXPERIMENT:
                where = f"budget.{key}" if key.startswith("max_") else "seed (top level)"
                raise ValueError(f"{section}.{key}: set by the experiment's {where}, not here")
            if key not in HYPERPARAMETERS:
                allowed = ", ".join(h for h in HYPERPARAMETERS if h not in _FROM_EXPERIMENT)
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
