"""The autoencoder family: every allowed shape builds, maps images to same-shaped logits, and
configurations that cannot work are rejected before training."""
from __future__ import annotations

import math

import pytest
import torch

from tuner.model import build_model, check_model, max_depth
from tuner.config import TrialConfig

SIZES = [(8, 8), (28, 28), (32, 32)]
CONV_CASES = [(c, h, w, d) for c in (1, 3) for h, w in SIZES for d in range(1, max_depth(h, w) + 1)]
DENSE_CASES = [(c, h, w, d) for c in (1, 3) for h, w in SIZES for d in range(1, 7)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny forward passes: spinning up a second intra-op thread costs more than it saves, and
    # the CPU is shared with other tests.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(**overrides) -> TrialConfig:
    return TrialConfig(**{"width": 4, "latent_dim": 8, **overrides})


def test_max_depth_keeps_a_2x2_bottleneck():
    assert [max_depth(h, w) for h, w in SIZES] == [2, 3, 4]
    assert max_depth(20, 36) == 3  # the smaller side decides
    assert max_depth(3, 3) == 0


@pytest.mark.parametrize("c, h, w, depth", CONV_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("skip", [False, True], ids=["noskip", "skip"])
@pytest.mark.parametrize("bottleneck", ["conv", "dense"])
def test_conv_model_output_shape_equals_input(c, h, w, depth, skip, bottleneck):
    cfg = config(depth=depth, skip=skip, bottleneck=bottleneck, dropout=0.1)
    model = build_model(cfg, c, h, w)
    x = torch.rand(2, c, h, w)  # (B, C, H, W)
    logits = model(x)
    assert logits.shape == x.shape
    out = model.denoise(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    side = math.ceil(h / 2 ** depth)  # the bottleneck after ``depth`` halvings of the padded image
    code = cfg.latent_dim if bottleneck == "dense" else cfg.latent_dim * side * side
    assert model.latent(x).shape == (2, code)


@pytest.mark.parametrize("c, h, w, depth", DENSE_CASES, ids=lambda v: str(v))
def test_dense_model_output_shape_equals_input(c, h, w, depth):
    model = build_model(config(arch="dense", depth=depth), c, h, w)
    x = torch.rand(2, c, h, w)
    assert model(x).shape == x.shape
    assert model.latent(x).shape == (2, 8)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 * depth  # depth layers down to the code, depth back up


@pytest.mark.parametrize("skip", [False, True])
def test_every_parameter_gets_a_gradient(skip):
    # An unused layer (say a skip branch not wired in) would be dead weight the search pays for.
    model = build_model(config(depth=2, skip=skip, dropout=0.2), 3, 32, 32)
    model(torch.rand(2, 3, 32, 32)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("shape", [(20, 36), (21, 37), (64, 48)])
def test_conv_bottleneck_model_takes_other_image_sizes(shape, skip):
    model = build_model(config(depth=3, skip=skip), 1, 28, 28)
    assert model.fixed_size is None
    x = torch.rand(2, 1, *shape)
    assert model(x).shape == x.shape  # padded to a multiple of 2**depth inside, cropped back


@pytest.mark.parametrize("overrides", [dict(bottleneck="dense"), dict(arch="dense")])
def test_fixed_size_models_reject_other_sizes(overrides):
    model = build_model(config(depth=2, **overrides), 1, 28, 28)
    assert model.fixed_size == (28, 28)
    with pytest.raises(ValueError, match="only 28x28 images, not 20x36"):
        model(torch.rand(2, 1, 20, 36))


@pytest.mark.parametrize("h, w, depth", [(8, 8, 3), (8, 8, 4), (28, 28, 4), (32, 32, 5)])
def test_too_deep_conv_config_is_rejected(h, w, depth):
    cfg = config(depth=depth)
    with pytest.raises(ValueError, match=f"depth {depth} is too deep for {h}x{w} images "
                                         f"\\(at most {max_depth(h, w)}"):
        check_model(cfg, 1, h, w)
    with pytest.raises(ValueError, match="too deep"):
        build_model(cfg, 1, h, w)
    check_model(config(arch="dense", depth=depth), 1, h, w)  # depth limits only the conv arch


def test_unsupported_channel_count_is_rejected():
    with pytest.raises(ValueError, match="2 channels"):
        check_model(config(), 2, 28, 28)


def test_batch_norm_and_dropout_follow_the_config():
    def count(model, kind):
        return sum(isinstance(m, kind) for m in model.modules())

    plain = build_model(config(depth=2, batch_norm=False, dropout=0.0), 1, 28, 28)
    assert count(plain, torch.nn.BatchNorm2d) == 0 and count(plain, torch.nn.Dropout2d) == 0
    full = build_model(config(depth=2, batch_norm=True, dropout=0.3), 1, 28, 28)
    assert count(full, torch.nn.BatchNorm2d) > 0 and count(full, torch.nn.Dropout2d) > 0


# ---------------------------------------------------------------- what experts use (issue 11)

@pytest.mark.parametrize("c, h, w", [(1, 13, 17), (3, 21, 9), (3, 28, 28)], ids=lambda v: str(v))
@pytest.mark.parametrize("convs_per_stage", [1, 2])
@pytest.mark.parametrize("residual", [False, True], ids=["direct", "residual"])
def test_unet_stages_and_residual_keep_the_image_shape(c, h, w, convs_per_stage, residual):
    cfg = config(depth=2, skip=True, convs_per_stage=convs_per_stage, residual=residual)
    model = build_model(cfg, c, h, w)
    x = torch.rand(2, c, h, w)  # (B, C, H, W): odd sizes are padded, then cropped
    assert model(x).shape == x.shape
    out = model.denoise(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
             and m.stride == (1, 1)]
    assert len(convs) == convs_per_stage * (2 * 2 + 2)  # encoder and decoder stages, bottleneck in and out


def test_residual_model_removes_a_predicted_corruption_in_logit_space():
    torch.manual_seed(0)
    model = build_model(config(depth=1, residual=True), 1, 8, 8)
    x = torch.rand(4, 1, 8, 8)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 0.0, 1.0  # saturated pixels: the logit of the input stays finite
    logits = model(x)
    assert torch.isfinite(logits).all()
    corruption = torch.logit(x.clamp(1e-3, 1 - 1e-3)) - logits
    assert torch.allclose(corruption, model.net(x), atol=1e-5)  # the network predicts what is removed
    # Whatever the network predicts, the output image stays in [0, 1].
    for p in model.net.parameters():
        p.data.mul_(1000.0)
    out = model.denoise(x)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_a_zero_residual_returns_the_input():
    model = build_model(config(depth=1, residual=True), 1, 8, 8)
    for p in model.net.head.parameters():
        torch.nn.init.zeros_(p)  # the network predicts no corruption at all
    x = torch.rand(2, 1, 8, 8).clamp(0.01, 0.99)
    assert torch.allclose(model.denoise(x), x, atol=1e-5)


@pytest.mark.parametrize("overrides, fragment", [
    (dict(arch="dense", convs_per_stage=2), "needs arch conv"),
    (dict(lr_schedule="cosine", plateau_patience=2), "use one or the other"),
    (dict(lr_schedule="warmup"), "lr_schedule"),
    (dict(convs_per_stage=3), "convs_per_stage"),
])
def test_invalid_combinations_are_refused(overrides, fragment):
    with pytest.raises(ValueError, match=fragment):
        config(**overrides)
