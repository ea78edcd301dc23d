"""The baseline ``bench_serve.py`` measures ``tuner serve`` against: what a user would write
instead of Ray Serve. One process, FastAPI on uvicorn, the same model and the same image code as
``tuner serve``'s ``POST /denoise`` (``tuner.load_model``, ``load_image``, ``tuner.denoise``,
``to_pil``), one PNG per request, denoised on the event loop as it arrives (no batching, no
replicas, no refusals of bad input beyond what the image code raises).

PyTorch gets one thread (``--threads``), as a ``tuner serve`` replica gets one CPU, so both are
measured per CPU on the same terms.

    python benchmarks/serve_baseline_fastapi.py runs/quickstart/best --port 8001
    curl --data-binary @digit.png http://127.0.0.1:8001/denoise -o denoised.png
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tuner  # noqa: E402
from tuner.denoise import load_image, to_pil  # noqa: E402


def build_app(model_dir: str) -> FastAPI:
    """The app: ``POST /denoise`` (one PNG/JPEG in, the denoised PNG out) and ``GET /healthz``."""
    model = tuner.load_model(model_dir)
    app = FastAPI()

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok\n"

    @app.post("/denoise")
    async def denoise(request: Request) -> Response:
        x = load_image(await request.body(), model, "request body")  # (C, H, W) in [0, 1]
        buf = io.BytesIO()
        to_pil(tuner.denoise(model, x)).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", help="an exported model folder, e.g. runs/quickstart/best")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8001, help="HTTP port (default 8001)")
    p.add_argument("--threads", type=int, default=1, help="PyTorch threads (default 1, as a tuner serve replica)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    # Log level warning: no access log line per request, which makes the baseline faster (Ray Serve's proxy
    # and replicas write one per request to their log files).
    uvicorn.run(build_app(args.model_dir), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
