r"""The `procrop serve` command: the cropper over HTTP (see app.py for the API).

  procrop serve [--host 127.0.0.1] [--port 8000] [--model NAME_OR_PATH | --workdir DIR [--best]]
                [--max-batch 16] [--max-wait-ms 5] [--max-pixels N] [--max-body-mb M]
                [--queue Q] [--timeout-s T] [--decode-workers W] [--warm-aspect W:H ...]
                [--canvas-size S]
                [--canvas-layout L] [--compile-cache DIR] [--quiet]

The model loads as `procrop crop` loads it (crop.load_cropper: the same flags and errors). The
server listens at once; /readyz turns 200 once every batch size's passes are prepared on every
canvas (from the compilation cache after the first run). SIGTERM or Ctrl-C stops accepting,
answers the requests in flight and exits 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Sequence

import uvicorn

from procrop_jax import crop
from procrop_jax import cropper as cropper_lib
from procrop_jax import faces as faces_lib
from procrop_jax import inference
from procrop_jax import model_zoo
from procrop_jax import photos
from procrop_jax.serve import app as app_lib
from procrop_jax.serve import limits as limits_lib


def build_parser(prog: str = "procrop serve") -> argparse.ArgumentParser:
  positive = crop.positive_int
  parser = crop.Parser(prog=prog, description="Serves a ProCrop model over HTTP (see "
                       "procrop_jax/serve/app.py).")
  parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: "
                      "%(default)s; 0.0.0.0 for every interface)")
  parser.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
  parser.add_argument("--model", default=None, help="a shipped model's name or an exported "
                      f"model folder (default: {model_zoo.DEFAULT_MODEL})")
  parser.add_argument("--workdir", help="a training run's folder: its latest checkpoint")
  parser.add_argument("--best", action="store_true", help="with --workdir: its best checkpoint")
  parser.add_argument("--max-batch", type=positive, default=16,
                      help="most photos in one model batch (default: %(default)s)")
  parser.add_argument("--max-wait-ms", type=float, default=5.0,
                      help="how long the model waits for more photos after the first of a "
                      "batch (default: %(default)s)")
  parser.add_argument("--max-pixels", type=positive, default=photos.DEFAULT_MAX_PIXELS,
                      help="photos with more pixels get 413, refused from the header "
                      "(default: %(default)s)")
  parser.add_argument("--max-body-mb", type=float, default=20.0,
                      help="bodies over this get 413 (default: %(default)s)")
  parser.add_argument("--queue", type=positive, default=64,
                      help="requests held beyond one batch on the model; more get 503 with "
                      "Retry-After (default: %(default)s)")
  parser.add_argument("--timeout-s", type=float, default=30.0,
                      help="time limit of a request, from arrival to answer (504; default: "
                      "%(default)s)")
  parser.add_argument("--decode-workers", type=positive, default=2,
                      help="threads decoding photos (default: %(default)s)")
  parser.add_argument("--warm-aspect", action="append", default=[],
                      type=crop.target_arg(cropper_lib.parse_aspect),
                      help="an aspect (16:9) whose passes are prepared before /readyz says "
                      "ready, beside free crops' (repeatable; others are prepared on first "
                      "use)")
  parser.add_argument("--canvas-size", type=positive, default=None,
                      help="the model's canvas side, a multiple of 32 (default: the model's)")
  parser.add_argument("--canvas-layout", choices=cropper_lib.CANVAS_LAYOUTS, default=None,
                      help="the canvases photos are put on (default: the model's)")
  parser.add_argument("--nms-iou", type=float, default=0.7,
                      help="free crops overlapping a better one more than this are dropped")
  parser.add_argument("--compile-cache", default=inference.default_compile_cache(),
                      help="JAX's persistent compilation cache folder ('' turns it off; "
                      "default: %(default)s)")
  parser.add_argument("--no-faces", action="store_true",
                      help="do not look for faces (by default crops keep the faces found whole)")
  parser.add_argument("--face-side", type=crop.face_side, default=faces_lib.DETECT_SIDE,
                      help="the long side of the canvas the face detector sees a photo on, a "
                      "multiple of 32: smaller is faster and misses small faces (default: "
                      "%(default)s)")
  parser.add_argument("--quiet", action="store_true", help="no start-up lines, no access log")
  return parser


def settings_from(args: argparse.Namespace) -> app_lib.Settings:
  return app_lib.Settings(
      limits=limits_lib.Limits(max_body_bytes=int(args.max_body_mb * 2**20),
                               max_pixels=args.max_pixels, timeout_s=args.timeout_s),
      max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue=args.queue,
      decode_workers=args.decode_workers, warm_aspects=tuple(args.warm_aspect))


def main(argv: Sequence[str] | None = None, *, prog: str = "procrop serve") -> int:
  """`procrop serve ...`; returns the exit status (0 after SIGTERM, 2 usage)."""
  parser = build_parser(prog)
  args = parser.parse_args(argv)
  if args.best and not args.workdir:
    parser.error("--best needs --workdir")
  if args.workdir and args.model:
    parser.error("give --workdir or --model, not both")
  if args.max_wait_ms < 0 or args.max_body_mb <= 0 or args.timeout_s <= 0:
    parser.error("--max-wait-ms must be >= 0, --max-body-mb and --timeout-s > 0")
  if not 0 <= args.nms_iou <= 1:
    parser.error(f"--nms-iou {args.nms_iou}: use a value in [0, 1]")
  args.batch_size = args.max_batch  # crop.load_cropper's name for it.
  inference.use_compile_cache(args.compile_cache)
  try:
    source = crop.model_source(args)
    if not args.quiet:
      inference.progress_to_stderr(f"Loading {source}")
    cropper = crop.load_cropper(args)
  except crop.UsageError as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    return 2
  app = app_lib.create_app(cropper, settings_from(args))
  if not args.quiet:
    inference.progress_to_stderr(f"Serving on http://{args.host}:{args.port}/ (ready when "
                                 "/readyz answers 200)")
  return run_server(app, host=args.host, port=args.port, quiet=args.quiet,
                    timeout_s=args.timeout_s)


def run_server(app, *, host: str, port: int, quiet: bool = False, timeout_s: float = 30.0
               ) -> int:
  """Runs `app` with Uvicorn until SIGTERM or SIGINT; returns 0 once the requests in flight
  are answered (each within its time limit) and the model thread has stopped."""
  config = uvicorn.Config(app, host=host, port=port, access_log=not quiet,
                          log_level="warning" if quiet else "info",
                          timeout_graceful_shutdown=int(timeout_s) + 5)
  # Uvicorn re-raises the signal it stopped on once it has shut down, to the handler that was
  # there before it; that handler is this no-op, so a drained server exits 0 (what process
  # managers and load balancers read as a clean stop) rather than dying of the signal.
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda signum, frame: None)
  uvicorn.Server(config).run()
  return 0


if __name__ == "__main__":
  sys.exit(main(prog="python -m procrop_jax.serve.cli"))
