"""One trial's configuration: every hyperparameter, its type, its range and its default.

:class:`TrialConfig` is what a trial trains (``tuner.train.fit`` takes one): the YAML key of a
spec's ``fixed`` and ``search`` sections, the dataclass field, the Ray Tune config key and the CLI
flag are the same word. :class:`Section` is the base of every section of a spec (``tuner.spec``,
``tuner.budget``): an unknown key is refused with the allowed ones.
"""
from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from tuner.noise import Noise, NoiseKind

_STRICT = ConfigDict(extra="forbid", strict=False)


def residual_mode(value: Any) -> Any:
    """``residual`` as :class:`TrialConfig` reads it: ``true`` and ``false``, the spelling of specs and
    models from before pixel space (and of spaces that still search it), mean ``logit`` and ``none``."""
    return {True: "logit", False: "none"}.get(value, value) if isinstance(value, bool) else value


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
        return residual_mode(v)

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


class Section(BaseModel):
    """A section of a spec: its keys are its fields, and an unknown key is a one-line error naming the allowed ones."""

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
