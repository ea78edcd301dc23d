"""Bad input never crashes: hostile specs, flags, images and model folders end in one line and exit 2.

Everything here goes through the real entry points (``load_spec``, ``tuner.cli.main``, the
argument parser, ``tuner denoise``) with inputs that hypothesis generates or that an attacker
would write by hand. No generated input can start a search: every ``tuner tune`` call gets a
spec that fails validation, and valid specs built from fuzzed flags are only validated, never run.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from tuner.cli import build_parser, main
from tuner.data import read_image
from tuner.model import build_model
from tuner.config import TrialConfig
from tuner.spec import ExperimentSpec, SpecError, load_spec

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.function_scoped_fixture])
FUZZ_IMAGES = settings(FUZZ, max_examples=40)  # each example runs a model: keep the file under ~30 s

VALID = {
    "name": "fuzz",
    "seed": 0,
    "dataset": {"name": "digits"},
    "eval_noise": {"kind": "gaussian", "level": 0.3},
    "budget": {"num_samples": 2, "max_epochs": 2, "grace_period": 1, "reduction_factor": 2, "max_concurrent": 1},
    "resources": {"cpus_per_trial": 1},
    "fixed": {"width": 8, "batch_size": 64},
    "search": {"lr": {"loguniform": [1.0e-4, 1.0e-2]}, "depth": {"int": [1, 2]},
               "loss": {"choice": ["mse", "bce"]}},
}
INVALID_SPEC = "bogus_key: 1\n"  # fails validation: a `tuner tune` given it can never start a search
SEED_MAX = 2**32 - 1  # numpy/Optuna's seed range; torch's generators take the same values


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One folder for the whole module: hypothesis reruns a test body many times per tmp_path."""
    return tmp_path_factory.mktemp("fuzz")


def _one_line_error(text: str) -> None:
    assert text.startswith("tuner: error: "), text
    assert text.count("\n") == 1 and text.endswith("\n"), text
    assert "Traceback" not in text, text


def _check_spec_outcome(path: Path) -> None:
    """load_spec either returns a spec the search can use, or raises a one-line SpecError."""
    try:
        spec = load_spec(path)
    except SpecError as e:
        msg = str(e)
        assert "\n" not in msg and "\r" not in msg, msg
        assert msg.startswith(str(path)), msg
        return
    _check_usable(spec)


def _check_usable(spec: ExperimentSpec) -> None:
    """What validation lets through must not fail later, inside the search (after Ray started)."""
    assert isinstance(spec, ExperimentSpec)
    # The searcher seed goes to Optuna's TPESampler (numpy RandomState) and every trial's seed to torch.
    assert 0 <= spec.seed <= SEED_MAX, f"seed {spec.seed} passes validation but TPESampler rejects it"
    for seed in (spec.eval_noise.seed, spec.dataset.split_seed):
        assert 0 <= seed <= SEED_MAX, f"seed {seed} passes validation but numpy/torch reject it"
    space = spec.param_space()  # the Ray Tune domains the searcher receives
    assert set(spec.search) <= set(space)
    TrialConfig(**spec.base_config())


# ---------------------------------------------------------------- specs

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=10**18, max_value=10**300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["1e400", "-1e400", ".nan", "0x10", "0o17", "yes", "no", "~", "", "1_000", "2**64",
                     "../../etc/passwd", "${HOME}", "conv", "dense", "adam", "mse", "gaussian", "digits"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=4)),
    max_leaves=12)
KEYS = sorted({*VALID, *VALID["budget"], *VALID["dataset"], *VALID["eval_noise"], "choice", "uniform",
               "loguniform", "int", "logint", "width", "depth", "lr", "arch", "optimizer", "unknown", "limit",
               "patch_size", "path", "channels", "level_max", "keep_checkpoints", "max_failures", "gpus_per_trial"})


@st.composite
def mutated_specs(draw) -> dict:
    """A valid spec with a few hostile edits: wrong types, huge or non-finite numbers, lost keys."""
    data = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from([None, *[k for k, v in VALID.items() if isinstance(v, dict)]]))
        target = data if section is None or not isinstance(data.get(section), dict) else data[section]
        key = draw(st.sampled_from(KEYS))
        action = draw(st.sampled_from(["set", "set", "delete", "nest"]))
        if action == "delete":
            target.pop(key, None)
        elif action == "nest":  # a search distribution with a hostile payload
            target[key] = {draw(st.sampled_from(["choice", "uniform", "loguniform", "int", "logint", "x"])):
                           draw(values)}
        else:
            target[key] = draw(values)
    return data


@FUZZ
@given(data=mutated_specs())
def test_mutated_specs_are_rejected_in_one_line_or_usable(data, scratch):
    path = scratch / "mutated.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    _check_spec_outcome(path)


@FUZZ
@given(data=values)
def test_random_documents(data, scratch):
    path = scratch / "random.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    _check_spec_outcome(path)


@FUZZ
@given(text=st.text(max_size=300))
def test_random_text(text, scratch):
    path = scratch / "text.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _check_spec_outcome(path)


@FUZZ
@given(blob=st.binary(max_size=300))
def test_random_bytes(blob, scratch):
    path = scratch / "bytes.yaml"
    path.write_bytes(blob)
    _check_spec_outcome(path)


def _deep(n: int) -> str:
    return "fixed: {width: " + "[" * n + "]" * n + "}\n"


HOSTILE_SPECS = {
    "empty file": "",
    "only a comment": "# nothing\n",
    "a list": "- 1\n- 2\n",
    "a string": "hello\n",
    "tabs": "name:\tx\n\tseed: 1\n",
    "two documents": "name: a\n---\nname: b\n",
    "duplicate unhashable key": "? [1, 2]\n: 3\n",
    "merge key": "base: &b {num_samples: 2}\nbudget: {<<: *b, bogus: 1}\n",
    "nested 500 deep": _deep(500),
    "nested 50000 deep": _deep(50_000),
    "deep mappings": "fixed: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n",
    "billion laughs": "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    + "search: {lr: {choice: *i}}\n",
    "huge float": "eval_noise: {level: 1e999999}\n",
    "huge int": "budget: {num_samples: " + "9" * 5000 + "}\n",  # beyond int("...")'s digit limit
    "nan bounds": "search: {lr: {uniform: [.nan, .nan]}}\n",
    "inf bound": "search: {lr: {loguniform: [1.0e-4, .inf]}}\n",
    "nan level": "eval_noise: {level: .nan}\n",
    "nan reduction factor": "budget: {reduction_factor: .nan}\n",
    "nan cpus": "resources: {cpus_per_trial: .nan}\n",
    "negative seed": "seed: -1\n",
    "seed beyond numpy": f"seed: {2**32}\n",
    "huge seed": "seed: 1.0e+30\n",
    "huge eval seed": f"eval_noise: {{seed: {2**64}}}\n",
    "NUL byte": "name: a\x00b\n",
    "BOM and CRLF": "\ufeffname: x\r\nbogus: 1\r\n",
    "binary tag": "name: !!binary aGVsbG8=\n",
    "set tag": "search: {lr: !!set {1: null}}\n",
    "timestamp": "seed: 2001-12-14t21:59:43.10-05:00\n",
    "long key": "k" * 100_000 + ": 1\n",
    "key with newline": '"bad\\nkey": 1\n',
    "path traversal name": "name: ../../etc\n",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_SPECS))
def test_hostile_spec_files(case, tmp_path, capsys):
    path = tmp_path / "hostile.yaml"
    path.write_text(HOSTILE_SPECS[case], encoding="utf-8")
    _check_spec_outcome(path)
    if case in ("empty file", "only a comment") or "seed" in case:
        # These must be rejected: an empty spec is a mistake, and a seed outside numpy's range
        # would pass here and only fail once Ray is up and the searcher is built.
        with pytest.raises(SpecError):
            load_spec(path)


PYTHON_TAGS = [
    '!!python/object/apply:os.system ["touch {f}"]\n',
    'name: !!python/object/apply:os.system ["touch {f}"]\n',
    'search: {{lr: {{choice: [!!python/object/apply:os.system ["touch {f}"]]}}}}\n',
    '!!python/object/apply:subprocess.check_call [["touch", "{f}"]]\n',
    '!!python/object/new:subprocess.Popen [["touch", "{f}"]]\n',
    'x: !!python/name:os.system\n',
    'x: !!python/module:os\n',
    '!<tag:yaml.org,2002:python/object/apply:os.system> ["touch {f}"]\n',
    "%TAG !p! tag:yaml.org,2002:python/object/apply:\n---\n!p!os.system [\"touch {f}\"]\n",
]


@pytest.mark.parametrize("template", PYTHON_TAGS)
def test_yaml_python_tags_never_run_code(template, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.yaml"
    path.write_text(template.format(f=marker))
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert "\n" not in str(e.value)
    assert main(["tune", str(path), "--storage", str(tmp_path / "runs")]) == 2
    _one_line_error(capsys.readouterr().err)
    assert not marker.exists(), "a YAML tag ran code"
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- command-line arguments

FLAGS = ["--name", "--storage", "--num-samples", "--max-epochs", "--cpus-per-trial", "--gpus-per-trial",
         "--max-concurrent", "--max-failures", "--address", "--seed", "--resume", "--no-report", "--quiet",
         "--model", "--out", "--add-noise", "-q", "--", "--max", "--num", "--res", "tune", "report", "denoise"]
arg_values = st.one_of(
    st.sampled_from(FLAGS),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.text(max_size=12),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "0", "-1", "0.5", "1024.1", "auto", "", " ", "=",
                     "--seed=1", "--num-samples=-3", "--cpus-per-trial=nan", "--name=../x", "-", "s3://b/p"]),
)


def _asks_for_help(argv: list[str]) -> bool:
    """-h/--help (or an abbreviation, or -h bundled with -q) prints help and exits 0, by design."""
    return any(a.startswith("--h") or (a.startswith("-") and not a.startswith("--") and "h" in a) for a in argv)


@FUZZ
@given(argv=st.lists(arg_values, max_size=8))
def test_parser_fuzz(argv, capsys):
    """Any argv parses or ends in one line and exit 2; no argv reaches a traceback."""
    argv = ["tune", "spec.yaml", *argv] if argv[:1] != ["denoise"] else argv
    assume(not _asks_for_help(argv))
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        assert e.code == 2
        _one_line_error(capsys.readouterr().err)
        return
    assert args.command in ("tune", "report", "denoise")


@FUZZ
@given(flags=st.lists(arg_values, max_size=8))
def test_tune_with_fuzzed_flags_never_starts_a_search(flags, scratch, capsys):
    """Through main(): the spec is invalid, so every flag combination ends in exit 2 and one line."""
    import ray

    spec = scratch / "invalid.yaml"
    spec.write_text(INVALID_SPEC)
    argv = ["tune", str(spec), "--storage", str(scratch / "runs"), *flags]
    assume(not _asks_for_help(argv))
    ray_before = ray.is_initialized()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2
    _one_line_error(capsys.readouterr().err)
    assert ray.is_initialized() == ray_before and not (scratch / "runs").exists()  # no Ray, no run folder


@FUZZ
@given(flags=st.lists(st.sampled_from([
    "--name", "--seed", "--num-samples", "--max-epochs", "--cpus-per-trial", "--gpus-per-trial",
    "--max-concurrent", "--max-failures"]), max_size=4, unique=True), vals=st.lists(arg_values, min_size=4, max_size=4))
def test_flag_overrides_validate_or_fail_in_one_line(flags, vals, scratch):
    """What `tuner tune` does with its flags before the search: parse, then apply to the spec."""
    spec_path = scratch / "valid.yaml"
    spec_path.write_text(yaml.safe_dump(VALID))
    argv = ["tune", str(spec_path)]
    for flag, value in zip(flags, vals):
        argv += [f"{flag}={value}"]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        assert e.code == 2
        return
    try:
        spec = load_spec(args.spec).with_overrides(
            name=args.name, seed=args.seed, num_samples=args.num_samples, max_epochs=args.max_epochs,
            cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
            max_concurrent=args.max_concurrent, max_failures=args.max_failures)
    except SpecError as e:
        assert "\n" not in str(e) and str(e).startswith("<command line>"), str(e)
        return
    _check_usable(spec)


# ---------------------------------------------------------------- images and model folders for `tuner denoise`

def _model_folder(path: Path, channels: int = 1, **overrides) -> Path:
    """An exported model folder in tuner's own format (what tuner.export.export_best writes), built by hand."""
    trial = TrialConfig(**{"width": 4, "depth": 1, "latent_dim": 4, **overrides})
    model = build_model(trial, channels, 8, 8)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path / "model.pt")
    (path / "config.json").write_text(json.dumps({
        "format": "tuner-model/1", "experiment": "hand-built", "metric": "val_psnr", "mode": "max",
        "image_shape": [channels, 8, 8], "trial": trial.to_dict(), "dataset": {"name": "digits"},
        "eval_noise": {"kind": "gaussian", "level": 0.3, "level_max": None, "seed": 1234}}))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"gray": _model_folder(root / "gray", 1), "rgb": _model_folder(root / "rgb", 3),
            "dense": _model_folder(root / "dense", 1, arch="dense")}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, idat: bytes | None = None, color_type: int = 0) -> bytes:
    """A PNG whose header claims width x height (8-bit); the pixel data need not match."""
    if idat is None:
        idat = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))
            + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def _zero_png(width: int, height: int) -> bytes:
    """A real, complete all-black PNG of width x height, compressed without ever holding it in memory."""
    z = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return _png(width, height, body)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


GRADIENT = (np.arange(12 * 10).reshape(12, 10) * 2).astype(np.uint8)  # (H=12, W=10)
RGB = np.stack([GRADIENT, 255 - GRADIENT, GRADIENT // 2], -1)
GOOD_IMAGES = {  # converted and denoised: the output is a PNG of the same size
    "L.png": lambda: _save(Image.fromarray(GRADIENT), "PNG"),
    "RGB.png": lambda: _save(Image.fromarray(RGB), "PNG"),
    "RGBA.png": lambda: _save(Image.fromarray(np.dstack([RGB, GRADIENT])), "PNG"),
    "LA.png": lambda: _save(Image.fromarray(np.dstack([GRADIENT, GRADIENT]), "LA"), "PNG"),
    "P.png": lambda: _save(Image.fromarray(RGB).convert("P"), "PNG"),
    "1bit.png": lambda: _save(Image.fromarray(GRADIENT).convert("1"), "PNG"),
    "I16.png": lambda: _save(Image.fromarray(GRADIENT.astype(np.uint16) * 257), "PNG"),
    "CMYK.jpg": lambda: _save(Image.fromarray(RGB).convert("CMYK"), "JPEG"),
    "L.jpg": lambda: _save(Image.fromarray(GRADIENT), "JPEG"),
    "progressive.jpg": lambda: _save(Image.fromarray(RGB), "JPEG", progressive=True),
    "gif-named.png": lambda: _save(Image.fromarray(GRADIENT), "GIF"),
    "1x1.png": lambda: _save(Image.new("L", (1, 1), 128), "PNG"),
    "thin.png": lambda: _save(Image.new("L", (3000, 1), 7), "PNG"),
}
BAD_IMAGES = {  # one line, exit 2
    "empty.png": lambda: b"",
    "text.png": lambda: b"not an image at all\n",
    "truncated.png": lambda: _save(Image.fromarray(RGB), "PNG")[:60],
    "truncated.jpg": lambda: _save(Image.fromarray(np.tile(RGB, (20, 20, 1))), "JPEG")[:300],
    "zero-size.png": lambda: _png(0, 0),
    "bomb 30000x30000.png": lambda: _png(30000, 30000),
    "bomb 60M pixels.png": lambda: _zero_png(10000, 6000),  # a real, decodable bomb of 60 kB
    "header only.png": lambda: b"\x89PNG\r\n\x1a\n",
    "jpeg header only.jpg": lambda: b"\xff\xd8\xff\xe0",
}


@pytest.mark.parametrize("name", sorted(GOOD_IMAGES))
@pytest.mark.parametrize("model", ["gray", "rgb"])
def test_image_modes_are_converted_and_denoised(name, model, models, tmp_path, capsys):
    src = tmp_path / name
    src.write_bytes(GOOD_IMAGES[name]())
    out = tmp_path / "out"
    assert main(["-q", "denoise", str(src), "--model", str(models[model]), "--out", str(out)]) == 0, \
        capsys.readouterr().err
    with Image.open(src) as im:
        size = im.size
    with Image.open(out / (src.stem + ".png")) as result:
        assert result.size == size
        assert result.mode == ("L" if model == "gray" else "RGB")


def test_sixteen_bit_png_keeps_its_content(tmp_path):
    """A 16-bit grayscale PNG is scaled to 8 bits, not clipped at 255 (which would make it all white)."""
    path = tmp_path / "i16.png"
    path.write_bytes(GOOD_IMAGES["I16.png"]())
    a = read_image(path)  # (1, H, W)
    assert np.abs(a[0].astype(int) - GRADIENT.astype(int)).max() <= 1


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_images_are_one_line_errors(name, models, tmp_path, capsys):
    src = tmp_path / name.replace(" ", "_")
    src.write_bytes(BAD_IMAGES[name]())
    assert main(["denoise", str(src), "--model", str(models["gray"]), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    _one_line_error(err)
    assert str(src) in err
    if "bomb" in name:
        assert "too large" in err


def test_dense_model_rejects_other_sizes(models, tmp_path, capsys):
    src = tmp_path / "big.png"
    src.write_bytes(GOOD_IMAGES["L.png"]())
    assert main(["denoise", str(src), "--model", str(models["dense"]), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys.readouterr().err)


def test_denoise_never_overwrites_silently(models, tmp_path, capsys):
    """Two inputs that would share an output, or an output that exists, are one line and nothing is
    written; --overwrite replaces existing outputs (issue 20)."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "a.png").write_bytes(GOOD_IMAGES["L.png"]())
    (src / "sub" / "a.png").write_bytes(GOOD_IMAGES["L.png"]())  # keeps its path: out/sub/a.png
    out = tmp_path / "out"
    (tmp_path / "a.jpg").write_bytes(_save(Image.open(src / "a.png").convert("RGB"), "JPEG"))
    model = ["--model", str(models["gray"]), "--out", str(out)]

    assert main(["denoise", str(src / "a.png"), str(tmp_path / "a.jpg"), *model]) == 2  # both -> out/a.png
    err = capsys.readouterr().err
    _one_line_error(err)
    assert "a.png" in err and "a.jpg" in err and "would both be written to" in err and not out.exists()

    assert main(["-q", "denoise", str(src), str(src / "a.png"), *model]) == 0  # a file and its folder: once
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["a.png", "sub/a.png"]
    before = (out / "a.png").read_bytes()
    (out / "a.png").write_bytes(b"mine")

    assert main(["denoise", str(src), *model]) == 2
    err = capsys.readouterr().err
    _one_line_error(err)
    assert "exists" in err and "--overwrite" in err and (out / "a.png").read_bytes() == b"mine"

    assert main(["-q", "denoise", str(src), *model, "--overwrite"]) == 0
    assert (out / "a.png").read_bytes() == before
    usage = " ".join(_denoise_help().split())
    assert "are refused" in usage and "--overwrite" in usage  # --help says which


def _denoise_help() -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["denoise"].format_help()


@FUZZ_IMAGES
@given(prefix=st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b""]),
       blob=st.binary(max_size=400))
def test_fuzzed_image_bytes(prefix, blob, models, scratch, capsys):
    src = scratch / "fuzzed.png"
    src.write_bytes(prefix + blob)
    code = main(["-q", "denoise", str(src), "--model", str(models["gray"]), "--out", str(scratch / "fuzz-out"),
                 "--overwrite"])
    assert code in (0, 2)
    if code == 2:
        _one_line_error(capsys.readouterr().err)


@FUZZ_IMAGES
@given(mode=st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "CMYK"]),
       width=st.integers(1, 40), height=st.integers(1, 40), seed=st.integers(0, 2**16),
       fmt=st.sampled_from(["PNG", "JPEG"]))
def test_fuzzed_images_denoise_to_same_size(mode, width, height, seed, fmt, models, scratch):
    assume(not (fmt == "JPEG" and mode in ("LA", "P", "RGBA", "I;16", "1")))
    assume(not (fmt == "PNG" and mode == "CMYK"))
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    im = (Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16)) if mode == "I;16"
          else base.convert(mode))
    src = scratch / f"img.{fmt.lower()}"
    src.write_bytes(_save(im, fmt))
    out = scratch / "img-out"
    assert main(["-q", "denoise", str(src), "--model", str(models["rgb"]), "--out", str(out), "--overwrite"]) == 0
    with Image.open(out / "img.png") as result:
        assert result.size == (width, height) and result.mode == "RGB"


class _Evil:
    """Unpickling this would run ``touch <path>``."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("how", ["torch.save", "raw pickle", "inside a state dict"])
def test_malicious_model_pt_never_runs(how, models, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    folder = tmp_path / "evil-model"
    folder.mkdir()
    (folder / "config.json").write_text((models["gray"] / "config.json").read_text())
    if how == "torch.save":
        torch.save(_Evil(marker), folder / "model.pt")
    elif how == "raw pickle":
        (folder / "model.pt").write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    else:
        state = torch.load(models["gray"] / "model.pt", weights_only=True)
        state["extra"] = _Evil(marker)
        torch.save(state, folder / "model.pt")
    src = tmp_path / "in.png"
    src.write_bytes(GOOD_IMAGES["L.png"]())
    assert main(["denoise", str(src), "--model", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    _one_line_error(err)
    assert "model.pt" in err
    assert not marker.exists(), "loading model.pt ran code"


def _config(models, **changes) -> str:
    config = json.loads((models["gray"] / "config.json").read_text())
    for key, value in changes.items():
        if value is _DROP:
            config.pop(key)
        else:
            config[key] = value
    return json.dumps(config)


_DROP = object()
HOSTILE_CONFIGS = {
    "not json": lambda m: "{oops",
    "a list": lambda m: "[1, 2]",
    "wrong format": lambda m: _config(m, format="tuner-model/99"),
    "no image_shape": lambda m: _config(m, image_shape=_DROP),
    "image_shape a string": lambda m: _config(m, image_shape="1x8x8"),
    "image_shape too short": lambda m: _config(m, image_shape=[1, 8]),
    "image_shape nulls": lambda m: _config(m, image_shape=[None, None, None]),
    "five channels": lambda m: _config(m, image_shape=[5, 8, 8]),
    "negative size": lambda m: _config(m, image_shape=[1, -8, 8]),
    "huge dense model": lambda m: _config(m, image_shape=[1, 100000, 100000],
                                          trial={**TrialConfig(arch="dense", depth=1, latent_dim=64).to_dict()}),
    "no trial": lambda m: _config(m, trial=_DROP),
    "trial a list": lambda m: _config(m, trial=[1, 2]),
    "trial unknown key": lambda m: _config(m, trial={"width": 4, "bogus": 1}),
    "trial wrong width": lambda m: _config(m, trial={**json.loads(_config(m))["trial"], "width": 64}),
    "trial wrong type": lambda m: _config(m, trial={"width": "wide"}),
    "no eval_noise": lambda m: _config(m, eval_noise=_DROP),
    "eval_noise nonsense": lambda m: _config(m, eval_noise={"kind": "laser", "level": "high"}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CONFIGS))
def test_hostile_config_json(case, models, tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.pt").write_bytes((models["gray"] / "model.pt").read_bytes())
    (folder / "config.json").write_text(HOSTILE_CONFIGS[case](models))
    src = tmp_path / "in.png"
    src.write_bytes(GOOD_IMAGES["L.png"]())
    assert main(["denoise", str(src), "--model", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    _one_line_error(err)
    assert "config.json" in err or "model.pt" in err


@pytest.mark.parametrize("case", ["missing input", "empty folder", "out is a file", "model folder missing",
                                  "model is a file"])
def test_denoise_paths(case, models, tmp_path, capsys):
    src = tmp_path / "in.png"
    src.write_bytes(GOOD_IMAGES["L.png"]())
    model, out = str(models["gray"]), str(tmp_path / "out")
    if case == "missing input":
        src = tmp_path / "nope.png"
    elif case == "empty folder":
        src = tmp_path / "empty"
        src.mkdir()
    elif case == "out is a file":
        (tmp_path / "out").write_text("x")
    elif case == "model folder missing":
        model = str(tmp_path / "no-model")
    else:
        model = str(models["gray"] / "model.pt")
    assert main(["denoise", str(src), "--model", model, "--out", out]) == 2
    _one_line_error(capsys.readouterr().err)
