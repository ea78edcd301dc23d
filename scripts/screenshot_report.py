"""Screenshot a run's report page in a real headless Chromium, to check how it renders.

Usage:
    python scripts/screenshot_report.py RUN_DIR OUT.png [--width 1280] [--height 4000]

The screenshot covers the whole page: Chromium's ``--screenshot`` captures only the window, so
a page taller than ``--height`` is shot again in a taller window, and the empty background
below the page is trimmed off.

RUN_DIR is a run folder with ``report/index.html`` (``tuner report RUN_DIR`` writes it).
Needs Chromium: ``apt-get install -y chromium`` (Debian) puts it at /usr/bin/chromium.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> str:
    """The first Chromium-like browser on PATH."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit(f"no Chromium found (tried {', '.join(BROWSERS)}); install it: apt-get install -y chromium")


MAX_HEIGHT = 32000


def screenshot(index: Path, out: Path, width: int = 1280, height: int = 4000, timeout: float = 120.0) -> Path:
    """Render ``index`` headless and save a full-page screenshot to ``out``.

    Args:
        index: the report's ``index.html``.
        out: the PNG to write.
        width, height: the first window size tried; the height doubles until the page fits.
        timeout: seconds before giving up on the browser, per attempt.

    Returns:
        ``out``.
    """
    from PIL import Image, ImageChops

    while True:
        _shoot(index, out, width, height, timeout)
        with Image.open(out) as im:
            im = im.convert("RGB")
            background = im.getpixel((0, im.height - 1))
            content = ImageChops.difference(im, Image.new("RGB", im.size, background)).getbbox()
        bottom = content[3] if content else 0
        if bottom < im.height - 8 or height >= MAX_HEIGHT:  # the page ends above the window's bottom edge
            im.crop((0, 0, im.width, min(im.height, bottom + 24))).save(out)
            return out
        height = min(2 * height, MAX_HEIGHT)


def _shoot(index: Path, out: Path, width: int, height: int, timeout: float) -> None:
    out = out.resolve()
    out.unlink(missing_ok=True)
    # A fresh profile and no network services: nothing from an earlier run or the outside leaks in.
    with tempfile.TemporaryDirectory(prefix="report-chromium-") as profile:
        cmd = [find_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={out}",
               f"--window-size={width},{height}", index.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not out.exists():
        raise SystemExit(f"chromium wrote no screenshot (exit {proc.returncode}):\n{proc.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run folder with report/index.html, e.g. runs/tiny")
    parser.add_argument("out", help="the PNG to write, e.g. /tmp/report.png")
    parser.add_argument("--width", type=int, default=1280, help="window width in pixels (default 1280)")
    parser.add_argument("--height", type=int, default=4000, help="window height in pixels; make it cover the page")
    args = parser.parse_args(argv)
    index = Path(args.run_dir, "report", "index.html")
    if not index.exists():
        raise SystemExit(f"{index}: no report; write it first with: tuner report {args.run_dir}")
    print(screenshot(index, Path(args.out), args.width, args.height))
    return 0


if __name__ == "__main__":
    sys.exit(main())
