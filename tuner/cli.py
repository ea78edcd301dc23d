"""The ``tuner`` command: a thin shell over spec -> search -> report -> denoise -> serve.

Flags choose where and how big (storage, address, resources, sample count); the YAML spec
says what is searched. Bad input ends in one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

EXIT_BAD_INPUT = 2
# A team's or a cluster's study server, for every run that names none (docs/cluster.md); set it on the head.
STUDY_STORAGE_ENV = "TUNER_STUDY_STORAGE"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (``tuner: error: ...``), exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = " ".join(message.split())
        sys.stderr.write(f"tuner: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _whole(text: str, least: int, what: str, allowed: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} must be {allowed}")
    return value


def _positive_int(text: str) -> int:
    return _whole(text, 1, "a whole number", "at least 1")


def _tile(text: str) -> int:
    return _whole(text, 0, "a whole number of pixels", "0 (no tiling) or a tile side in pixels")


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (1-65535)")
    return value


def _float(text: str, what: str = "a number") -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def _seconds(text: str) -> float:
    value = _float(text, "a number of seconds")
    if not (0 < value <= 1e7):
        raise argparse.ArgumentTypeError(f"{text} must be more than 0 seconds")
    return value


def _resource(text: str) -> float:
    value = _float(text)
    if not (0 <= value <= 1024):
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 1024")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``tuner`` argument parser with its ``tune``, ``report``, ``denoise`` and ``serve`` subcommands."""
    parser = _Parser(prog="tuner", description="Find the best denoising autoencoder for a set of images.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and the final result")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("tune", help="run a hyperparameter search described by a YAML spec",
                       description="Run a search; the best model is exported to STORAGE/NAME/best/.")
    t.add_argument("spec", help="search space YAML, e.g. search_spaces/quickstart.yaml")
    t.add_argument("--name", help="run name (folder under --storage); default: the spec's name")
    t.add_argument("--storage", default="./runs", help="where runs live: a folder or a URI such as "
                   "s3://bucket/path (shared by every node on a cluster); default ./runs")
    t.add_argument("--num-samples", type=_positive_int, help="number of trials (overrides budget.num_samples)")
    t.add_argument("--max-epochs", type=_positive_int, help="epochs per trial (overrides budget.max_epochs)")
    t.add_argument("--cpus-per-trial", type=_resource, help="CPUs per trial (overrides resources.cpus_per_trial)")
    t.add_argument("--gpus-per-trial", type=_resource,
                   help="GPUs per trial; fractions pack trials on one GPU, e.g. 0.25 runs four per GPU")
    t.add_argument("--max-concurrent", type=_positive_int, help="trials at once (overrides budget.max_concurrent)")
    t.add_argument("--time-budget-s", type=_seconds, metavar="SECONDS",
                   help="stop the search after this many seconds, keeping the best model so far; a spec "
                        "without max_train_seconds derives each trial's training seconds and ASHA's rungs "
                        "from it (overrides budget.time_budget_s)")
    t.add_argument("--max-failures", type=int, help="retries of a crashed trial from its last checkpoint "
                   "(overrides budget.max_failures; -1 retries forever)")
    t.add_argument("--address", help="Ray cluster to join: 'auto' for the one started by 'ray start' or "
                   "'ray up'; default: start a local Ray")
    t.add_argument("--seed", type=int, help="searcher and trial seed (overrides the spec's seed)")
    t.add_argument("--prior-study", metavar="NAME", action="append", dest="prior_studies",
                   help="an earlier search (its run name, under the same --storage or in the same "
                        "--study-storage) whose finished trials TPE learns from, its best tried first; repeatable "
                        "(overrides searcher.prior_studies)")
    t.add_argument("--study-storage", metavar="URL",
                   help="where the Optuna study is kept: an SQLAlchemy URL such as "
                        "postgresql://user@head/optuna (a server every run writes to), or "
                        "journal:///PATH (Optuna's JournalStorage file); overrides study_storage; "
                        f"default: the spec's, else ${STUDY_STORAGE_ENV} (a team's server), else "
                        "sqlite:///STORAGE/NAME/study.db")
    for key, what in (("path", "one folder of photos, split into train / val / test by image"),
                      ("train-path", "the folder of training photos"),
                      ("val-path", "the folder of validation photos (default: some of the training folder's)"),
                      ("test-path", "the folder of test photos (default: some of the training folder's)")):
        t.add_argument(f"--{key}", metavar="FOLDER", help=f"dataset name folder: {what} "
                       f"(overrides dataset.{key.replace('-', '_')})")
    t.add_argument("--resume", action="store_true", help="continue the interrupted run STORAGE/NAME")
    t.add_argument("--no-report", action="store_true", help="skip writing the HTML report at the end")

    r = sub.add_parser("report", help="write RUN_DIR/report/index.html and trials.csv for a finished run")
    r.add_argument("run_dir", help="a run folder, e.g. runs/quickstart")

    d = sub.add_parser("denoise", help="denoise PNG/JPEG images with an exported model")
    d.add_argument("inputs", nargs="+", help="image files or folders of images")
    d.add_argument("--model", required=True, help="an exported model folder, e.g. runs/quickstart/best")
    d.add_argument("--out", required=True,
                   help="folder for the denoised images: NAME.png for an input NAME.png or NAME.jpg (a "
                        "folder's images keep their paths inside it). Two inputs that would share an "
                        "output (a.png and a.jpg) are refused, and so is an output file that exists, "
                        "unless --overwrite; nothing is written then")
    d.add_argument("--overwrite", action="store_true", help="replace output files that exist")
    d.add_argument("--add-noise", action="store_true",
                   help="corrupt the inputs with the model's evaluation noise first (a demo); "
                        "writes the noisy inputs beside the outputs")
    d.add_argument("--seed", type=int, default=0, help="seed of --add-noise")
    d.add_argument("--tile", type=_tile, metavar="PIXELS",
                   help="denoise images larger than PIXELS x PIXELS in overlapping tiles of that side, so "
                        "memory stays bounded (default 512: about 0.3 GB for a width-32 U-Net); larger "
                        "tiles are a little faster, smaller ones need less memory; 0 denoises each image "
                        "whole, in memory that grows with the image")

    s = sub.add_parser("serve", help="serve an exported model over HTTP with Ray Serve (blocks until Ctrl-C)",
                       description="POST /denoise (one PNG/JPEG in, the denoised PNG out), GET /model, "
                                   "GET /healthz, and the Open Inference Protocol (KServe V2 / Triton HTTP): "
                                   "GET /v2, /v2/health/live|ready, /v2/models/denoiser[/ready], "
                                   "POST /v2/models/denoiser/infer.")
    s.add_argument("model_dir", help="an exported model folder, e.g. runs/quickstart/best")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on; default 127.0.0.1 (this "
                   "machine only); 0.0.0.0 exposes the service to the network")
    s.add_argument("--port", type=_port, default=8000, help="HTTP port; default 8000")
    s.add_argument("--replicas", type=_positive_int, default=1, help="copies of the model, one Ray actor "
                   "(and one CPU) each; default 1")
    s.add_argument("--gpus-per-replica", type=_resource, default=0.0,
                   help="GPUs per replica; fractions pack replicas on one GPU, e.g. 0.25; default 0")
    s.add_argument("--max-batch-size", type=_positive_int, default=16,
                   help="most concurrent POST /denoise requests denoised in one forward pass; default 16")
    s.add_argument("--max-infer-batch", type=_positive_int, default=256,
                   help="most images (N of [N, C, H, W]) in one /v2 infer request; a larger batch is refused "
                        "(400); default 256")
    s.add_argument("--no-access-log", dest="access_log", action="store_false",
                   help="no line per request in the replicas' log files (Ray Serve's access log; on by default)")
    s.add_argument("--address", help="Ray cluster to join: 'auto' for the one started by 'ray start' or "
                   "'ray up'; default: start a local Ray")
    s.add_argument("--haproxy", action="store_true",
                   help="Ray Serve's high-throughput mode: HAProxy takes the connections and hands requests "
                        "straight to the replicas (2-5x the images/s on small images); the replicas' own "
                        "ports (30000-31000) then listen on all interfaces. Local Ray only")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``tuner`` console script and ``python -m tuner``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from tuner.data import DatasetError
    from tuner.spec import SpecError

    try:
        return {"tune": _tune, "report": _report, "denoise": _denoise, "serve": _serve}[args.command](args)
    except (SpecError, DatasetError, ValueError, OSError) as e:  # OSError: a missing, unreadable or clashing path
        msg = " ".join(str(e).split())
        sys.stderr.write(f"tuner: error: {msg}\n")
        return EXIT_BAD_INPUT
    except Exception as e:  # errors we raise for the user carry a one-line message
        from tuner.cluster import CapacityError
        from tuner.search import SearchError
        from tuner.study import StudyError

        if isinstance(e, (SearchError, StudyError, CapacityError)):
            sys.stderr.write(f"tuner: error: {' '.join(str(e).split())}\n")
            return EXIT_BAD_INPUT
        raise


def _tune(args: argparse.Namespace) -> int:
    from tuner.search import run_search
    from tuner.spec import load_spec

    spec = load_spec(args.spec)
    team_default = None if spec.study_storage else os.environ.get(STUDY_STORAGE_ENV) or None
    spec = spec.with_overrides(
        name=args.name, seed=args.seed, num_samples=args.num_samples, max_epochs=args.max_epochs,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent, max_failures=args.max_failures, study_storage=args.study_storage or team_default,
        time_budget_s=args.time_budget_s, prior_studies=args.prior_studies, path=args.path,
        train_path=args.train_path, val_path=args.val_path, test_path=args.test_path)
    result = run_search(spec, storage=args.storage, address=args.address, resume=args.resume,
                        verbose=0 if args.quiet else 1)
    if not args.no_report:
        from tuner.report import write_report

        write_report(result.run_dir)
    m = result.metrics
    print(f"best config: {_format_config(result.best_config)}")
    print(f"best val_psnr {m['val_psnr']:.2f} dB (noisy input {m['noisy_val_psnr']:.2f} dB); "
          f"test_psnr {m['test_psnr']:.2f} dB, test_ssim {m['test_ssim']:.3f} "
          f"(noisy input {m['noisy_test_psnr']:.2f} dB)")
    print(f"best model: {result.best_dir}")
    return 0


def _format_config(config: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


def _report(args: argparse.Namespace) -> int:
    from tuner.report import write_report

    index = write_report(args.run_dir)
    print(f"report: {index}")
    return 0


def _denoise(args: argparse.Namespace) -> int:
    from tuner.denoise import denoise_files

    written = denoise_files(args.model, args.inputs, args.out, add_noise=args.add_noise, seed=args.seed,
                            tile=args.tile, overwrite=args.overwrite)
    print(f"denoised {len(written)} image(s) into {args.out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from tuner.serve import ServeArgs
    from tuner.server import serve_forever

    serve_forever(ServeArgs(model_dir=args.model_dir, replicas=args.replicas,
                            gpus_per_replica=args.gpus_per_replica, max_batch_size=args.max_batch_size,
                            max_infer_batch=args.max_infer_batch, access_log=args.access_log),
                  host=args.host, port=args.port, address=args.address, haproxy=args.haproxy)
    return 0
