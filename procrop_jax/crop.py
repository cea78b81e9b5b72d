r"""The `procrop crop` command: photos, folders, globs or stdin in, crops and a contact sheet out.

  procrop crop PATH... [--out DIR] [--aspect W:H ...] [--size WxH ...] [--top-k K]
                       [--workdir DIR [--best] | --model NAME_OR_PATH] [--batch-size B]
                       [--canvas-size S] [--canvas-layout L] [--compile-cache DIR]
                       [--keep X1,Y1,X2,Y2 ...] [--focus X,Y] [--no-faces]
                       [--face-side PX]
                       [--format keep|jpg|png|webp] [--quiet]

(`python -m procrop_jax.crop ...` is the same.) PATH is any mix of files, folders (recursive),
globs and `-` (one image on stdin). Without --workdir the shipped model is used. Under OUT
(default `crops`) it writes, mirroring the input tree so that no two inputs collide:

  <relative path>/<stem>_<aspect>_<rank>.<ext>  the crops, best first (rank 1), in the input's
                                                format with its ICC profile and EXIF
  results.jsonl                                 one line per input: path, status ("ok" or
                                                "error"), error, width, height, faces (boxes
                                                found), keep (the user's regions), and per
                                                crop box [x1, y1, x2, y2] in pixels, score,
                                                aspect, file, not_kept (indices of keep
                                                regions it fails: the user's boxes, the focal
                                                point, then faces), cut_faces (indices of
                                                faces it cuts)
  index.html                                    a contact sheet: each photo with its crop boxes
                                                drawn over it, faces dashed, and the crops
                                                beside it (a crop that cuts a face is flagged)

Exit status: 0 all inputs cropped, 1 some failed (the others are still written), 2 usage error.

The crops themselves come from the `Cropper` (cropper.py: free crops, fixed aspects, canvas
buckets). Photos are decoded in threads while the model runs, and crops are written while the
model runs on the next batch; batches are formed per canvas bucket, and each canvas's passes
are prepared in the background from its first decoded photo on (the first photo's face pass
already while the model loads). Start-up costs are kept to
what the model needs: no TensorFlow is imported (unless the model uses retrieval), the
parameters are read into abstract shapes, and the compiled passes are kept in JAX's persistent
compilation cache (--compile-cache, default $PROCROP_COMPILE_CACHE, else
$PROCROP_CACHE_DIR/jax or ~/.cache/procrop_jax/jax; '' turns it off), so a later run loads them
instead of compiling. Each start-up step that can take a second prints a line (not with
--quiet). results.jsonl lists the inputs in the order they finish.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import gc
import html
import json
import os
import pathlib
import sys
import threading
import time
from typing import Any, Callable, Iterator, Sequence

from PIL import Image
import tqdm

from procrop_jax import cropper as cropper_lib
from procrop_jax import faces as faces_lib
from procrop_jax import html_pages
from procrop_jax import inference
from procrop_jax import model_zoo
from procrop_jax import photos
from procrop_jax import workdir as workdir_lib

DEFAULT_OUT = "crops"


# -------------------------------------------------------------------------------- the command
@dataclasses.dataclass
class RunSummary:
  total: int
  ok: int
  failed: int
  out_dir: pathlib.Path
  seconds: float

  @property
  def photos_per_second(self) -> float:
    return self.total / max(self.seconds, 1e-9)


def _output_bases(inputs: Sequence[photos.Input]) -> list[pathlib.PurePath]:
  """OUT-relative '<dir>/<stem>' per input, distinct (IMG.jpg and IMG.png -> IMG, IMG_png)."""
  bases, taken = [], set()
  for item in inputs:
    rel = item.relative
    base = rel.parent / (rel.stem or "photo")
    if str(base).lower() in taken:
      base = rel.parent / f"{rel.stem}_{rel.suffix.lstrip('.').lower() or 'file'}"
    n, candidate = 2, base
    while str(candidate).lower() in taken:  # Case-insensitive file systems too.
      candidate, n = base.parent / f"{base.name}-{n}", n + 1
    taken.add(str(candidate).lower())
    bases.append(candidate)
  return bases


def _decode(item: photos.Input, max_pixels: int, cropper: cropper_lib.Cropper,
            on_canvas: Callable[[tuple[int, ...]], Any] | None = None):
  """(Photo, prepared) or a PhotoError; runs in a worker thread."""
  try:
    photo = photos.read_photo(item.source, max_pixels=max_pixels)
    return photo, cropper.prepare(photo.image, on_canvas)
  except photos.PhotoError as e:
    return e
  except Exception as e:  # pylint: disable=broad-except  (one bad file must not stop the run)
    return photos.PhotoError(f"cannot decode ({type(e).__name__}: {e})")


def _ordered(executor, fn, items: Sequence[Any], lookahead: int) -> Iterator[Any]:
  """executor.map with at most `lookahead` results pending: memory stays bounded."""
  pending = []
  items = iter(items)
  for item in items:
    pending.append(executor.submit(fn, item))
    if len(pending) >= lookahead:
      yield pending.pop(0).result()
  for future in pending:
    yield future.result()


def run(inputs: Sequence[photos.Input], cropper: cropper_lib.Cropper, *,
        out_dir: str | os.PathLike[str],
        targets: Sequence[cropper_lib.Target] = (cropper_lib.FREE,), top_k: int = 3,
        fmt: str = "keep", quality: int = 92, problems: Sequence[tuple[str, str]] = (),
        workers: int = 2, progress: bool = True,
        keep: Sequence[Sequence[float]] = ()) -> RunSummary:
  """Crops `inputs` into `out_dir` (crops, results.jsonl, index.html); see the module docstring.

  `problems` are (argument, reason) pairs from `photos.list_inputs`, reported as errors. `keep`
  holds keep regions (pixel boxes) for every photo (`cropper.user_regions`).
  """
  keep = [list(map(float, box)) for box in keep]
  start = time.perf_counter()
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  bases = _output_bases(inputs)
  results_path = out / "results.jsonl"
  records: list[dict[str, Any]] = []
  ok = failed = 0
  bar = tqdm.tqdm(total=len(inputs), unit="photo", desc="Cropping", disable=not progress,
                  file=sys.stderr, dynamic_ncols=True)

  with open(results_path, "w") as results, \
      concurrent.futures.ThreadPoolExecutor(workers) as decoder, \
      concurrent.futures.ThreadPoolExecutor(workers) as writer, \
      concurrent.futures.ThreadPoolExecutor(2) as compiler:

    def emit(record: dict[str, Any]) -> None:
      results.write(json.dumps(record) + "\n")
      results.flush()
      records.append(record)

    for arg, reason in problems:
      emit({"path": arg, "status": "error", "error": reason, "width": None, "height": None,
            "crops": []})
      failed += 1

    Decoded = tuple[int, photos.Photo, cropper_lib.Prepared]  # (input index, photo, its canvas)
    written: list[tuple[list[Decoded], dict[int, dict[str, Any]], list]] = []

    def finish(batch: list[Decoded]) -> None:
      """Crops one batch (one canvas bucket) and starts writing its crops; the records of the
      previous batch are emitted once its writes are done, so writing overlaps the next
      batch's model pass."""
      crops = cropper.crop_batch([p for _, _, p in batch], targets, top_k=top_k,
                                 keep=[keep] * len(batch))
      records, writes = {}, []
      for (index, photo, prepared), by_target in zip(batch, crops):
        item, base = inputs[index], bases[index]
        fmt_name = photos.output_format(photo, fmt)
        record_crops = []
        for target in targets:
          for rank, c in enumerate(by_target[target.label], 1):
            rel = base.parent / f"{base.name}_{target.label}_{rank}{photos.suffix(fmt_name)}"
            record_crops.append({**c.record(), "file": rel.as_posix()})
            writes.append((writer.submit(photos.save_crop, photo, c.box, out / rel,
                                         fmt=fmt_name, size=target.size, quality=quality),
                           index))
        preview = out / "index_files" / f"{base.as_posix()}.jpg"
        writes.append((writer.submit(_save_preview, prepared, preview), index))
        width, height = photo.size
        records[index] = {"path": item.source, "status": "ok", "error": None,
                          "width": width, "height": height,
                          "faces": prepared.face_records(),
                          "keep": keep, "crops": record_crops,
                          "preview": preview.relative_to(out).as_posix()}
      written.append((batch, records, writes))
      if len(written) > 1:
        settle(*written.pop(0))

    def settle(batch: list[Decoded], records: dict[int, dict[str, Any]], writes: list) -> None:
      """Waits for a batch's writes and emits its records (an error where a write failed)."""
      nonlocal ok, failed
      write_errors = {}
      for future, index in writes:
        try:
          future.result()
        except (OSError, ValueError) as e:
          write_errors.setdefault(index, f"cannot write a crop ({type(e).__name__}: {e})")
      for index, _, _ in batch:
        record = records[index]
        if index in write_errors:
          record.update(status="error", error=write_errors[index])
          failed += 1
        else:
          ok += 1
        emit(record)
      bar.update(len(batch))

    # Decoded photos wait in their canvas bucket until it fills a batch. At most
    # `max_waiting` wait in all (the fullest bucket goes as a partial batch beyond that), so
    # memory stays bounded however the photos' shapes are mixed.
    buckets: dict[tuple[int, ...], list[Decoded]] = {}
    max_waiting = 3 * cropper.batch_size
    # Canvas shape -> its warm-up. A failed one is left alone: the batch fails on its own.
    warming: dict[tuple[int, ...], concurrent.futures.Future] = {}
    warming_lock = threading.Lock()

    def warm(shape: tuple[int, ...]) -> None:
      """A new canvas: its passes are prepared now, beside decoding, the face detector and the
      other canvases' batches, rather than when its first batch is full (called by the
      decoding threads as soon as a photo's canvas is made)."""
      with warming_lock:
        new = shape not in warming
        if new:
          warming[shape] = compiler.submit(cropper.warm_up, shape[:2], targets,
                                           keep=bool(keep))
      if new and cropper.face_detector is not None:
        # This thread looks for faces next. The model's pass is traced first (Cropper.lower):
        # it compiles the longest, and tracing both at once would delay both.
        cropper.lower(shape[:2], targets, keep=bool(keep))

    decoded = _ordered(
        decoder, lambda i: (i, _decode(inputs[i], cropper.max_pixels, cropper, warm)),
        range(len(inputs)), lookahead=2 * cropper.batch_size)
    for index, result in decoded:
      if isinstance(result, photos.PhotoError):
        emit({"path": inputs[index].source, "status": "error", "error": str(result),
              "width": None, "height": None, "crops": []})
        failed += 1
        bar.update(1)
        continue
      bucket = buckets.setdefault(result[1].canvas.shape, [])
      bucket.append((index, *result))
      if len(bucket) == cropper.batch_size:
        finish(buckets.pop(result[1].canvas.shape))
      elif sum(len(b) for b in buckets.values()) > max_waiting:
        finish(buckets.pop(max(buckets, key=lambda k: len(buckets[k]))))
    for shape in list(buckets):
      finish(buckets.pop(shape))
    while written:
      settle(*written.pop(0))
  bar.close()
  write_index(out, records)
  return RunSummary(len(inputs) + len(problems), ok, failed, out, time.perf_counter() - start)


def _save_preview(prepared: cropper_lib.Prepared, path: pathlib.Path) -> None:
  """The photo as the model saw it (its canvas, unpadded): a light image for the contact sheet."""
  pixels = photos.from_canvas(prepared.canvas, prepared.valid_hw)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).save(path, quality=85)


# ----------------------------------------------------------------------------- contact sheet
def write_index(out: pathlib.Path, records: Sequence[dict[str, Any]]) -> pathlib.Path:
  """OUT/index.html: every photo with its crop boxes drawn over it and its crops beside it."""
  ok = [r for r in records if r["status"] == "ok"]
  parts = [f"<h1>procrop crops: {len(ok)} of {len(records)} inputs cropped</h1>"]
  for r in records:
    path = html.escape(str(r["path"]))
    if r["status"] != "ok":
      parts.append(f"<div class=item><div class=path>{path}</div>"
                   f"<div class=error>error: {html.escape(str(r['error']))}</div></div>")
      continue
    width, height = r["width"], r["height"]
    faces = r.get("faces", [])
    boxes = [html_pages.box(f, (width, height), html_pages.FACE_COLOUR, f"face {n}",
                            dashed=True) for n, f in enumerate(faces)]
    crops = []
    for n, c in enumerate(r["crops"]):
      colour = html_pages.COLOURS[n % len(html_pages.COLOURS)]
      x1, y1, x2, y2 = c["box"]
      label = f"{c['aspect']} #{n + 1} {c['score']:.2f}"
      boxes.append(html_pages.box(c["box"], (width, height), colour, label))
      link = html_pages.url(c["file"])
      flags = "".join(f"<br><span class=error>cuts face {k}</span>"
                      for k in c.get("cut_faces", []))
      if c.get("not_kept"):
        flags += (f"<br><span class=error>leaves out keep region "
                  f"{', '.join(map(str, c['not_kept']))}</span>")
      crops.append(f"<figure><a href='{link}'><img loading=lazy src='{link}' "
                   f"style='border-color:{colour}'></a><figcaption>{html.escape(label)}<br>"
                   f"{x2 - x1}x{y2 - y1}{flags}</figcaption></figure>")
    found = f", {len(faces)} face{'s' * (len(faces) != 1)}" if faces else ""
    parts.append(f"<div class=item><div class=path>{path} ({width}x{height}{found})</div>"
                 f"{html_pages.photo(html_pages.url(r['preview']), boxes)}"
                 f"<div class=crops>{''.join(crops)}</div></div>")
  index = out / "index.html"
  index.write_text(html_pages.page(f"procrop: {len(ok)} photos", parts))
  return index


# ------------------------------------------------------------------------ command-line parsing
class Parser(argparse.ArgumentParser):
  """argparse that reports a usage error in one line (exit status 2; `procrop serve`'s too)."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def target_arg(parse):
  """An argparse type from a Target parser (parse_aspect, parse_size): its ValueError is a
  usage error."""
  def convert(text: str) -> cropper_lib.Target:
    try:
      return parse(text)
    except ValueError as e:
      raise argparse.ArgumentTypeError(str(e)) from e
  return convert


def positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
  return value


def face_side(text: str) -> int:
  value = positive_int(text)
  try:
    faces_lib.check_side(value)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from e
  return value


def _numbers(count: int, form: str):
  def convert(text: str) -> tuple[float, ...]:
    try:
      values = tuple(float(v) for v in text.split(","))
    except ValueError:
      values = ()
    if len(values) != count or not all(v >= 0 for v in values):
      raise argparse.ArgumentTypeError(f"{text!r}: use {form}, pixels >= 0")
    if count == 4 and (values[2] <= values[0] or values[3] <= values[1]):
      raise argparse.ArgumentTypeError(f"{text!r}: X2 must exceed X1 and Y2 exceed Y1")
    return values
  return convert


def build_parser(prog: str = "procrop crop") -> argparse.ArgumentParser:
  parser = Parser(prog=prog, description="Crops photos with a ProCrop model (see "
                   "procrop_jax/crop.py).")
  parser.add_argument("paths", nargs="*", metavar="PATH",
                      help="files, folders (recursive), globs, or - for one image on stdin")
  parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
  parser.add_argument("--aspect", action="append", default=[],
                      type=target_arg(cropper_lib.parse_aspect),
                      help="width:height (16:9) or a number (1.5) of every crop; repeatable; "
                      "default: free crops")
  parser.add_argument("--size", action="append", default=[],
                      type=target_arg(cropper_lib.parse_size),
                      help="WIDTHxHEIGHT: crops of that ratio resized to exactly that size; "
                      "repeatable")
  parser.add_argument("--top-k", type=positive_int, default=3,
                      help="crops per photo and aspect (default: %(default)s)")
  parser.add_argument("--workdir", help="a training run's folder: its latest checkpoint")
  parser.add_argument("--best", action="store_true",
                      help="with --workdir: its best checkpoint (checkpoints_best)")
  parser.add_argument("--model", default=None,
                      help="a shipped model's name or an exported model folder (default: "
                      f"{model_zoo.DEFAULT_MODEL})")
  parser.add_argument("--batch-size", type=positive_int, default=8,
                      help="photos per model call (default: %(default)s; fewer inputs: the "
                      "smallest power of two that holds them)")
  parser.add_argument("--canvas-size", type=positive_int, default=None,
                      help="pixels of the photo's longer side as the model sees it, a multiple "
                      "of 32 (default: the model's config.crop.canvas_size, else its "
                      "training size); smaller is faster "
                      "(experiments/README.md measures speed and quality)")
  parser.add_argument("--canvas-layout", choices=cropper_lib.CANVAS_LAYOUTS, default=None,
                      help="the canvases photos are put on (default: the model's "
                      "config.crop.canvas_layout, else buckets): buckets (fewest pixels, up to "
                      "5 shapes to compile), orientation (2 shapes), square (1)")
  parser.add_argument("--format", choices=photos.FORMAT_CHOICES, default="keep",
                      help="format of the crops (default: the input's)")
  parser.add_argument("--quality", type=int, default=92, choices=range(1, 101),
                      metavar="1..100", help="JPEG/WebP quality (default: %(default)s)")
  parser.add_argument("--nms-iou", type=float, default=0.7,
                      help="crops overlapping a better one more than this are dropped")
  parser.add_argument("--max-pixels", type=positive_int, default=photos.DEFAULT_MAX_PIXELS,
                      help="photos with more pixels are refused unread (default: %(default)s)")
  parser.add_argument("--workers", type=positive_int, default=2,
                      help="threads decoding and writing photos (default: %(default)s)")
  parser.add_argument("--compile-cache", default=inference.default_compile_cache(),
                      help="folder of JAX's persistent compilation cache: later runs load the "
                      "compiled model instead of compiling it; '' turns it off (default: "
                      f"%(default)s; ${inference.COMPILE_CACHE_ENV} sets another)")
  parser.add_argument("--keep", action="append", default=[], type=_numbers(4, "X1,Y1,X2,Y2"),
                      metavar="X1,Y1,X2,Y2",
                      help="a box (pixels of the upright photo) every crop must contain, or "
                      "the most of them a crop of the shape can; repeatable")
  parser.add_argument("--focus", type=_numbers(2, "X,Y"), default=None, metavar="X,Y",
                      help="a point (pixels) every crop must contain")
  parser.add_argument("--no-faces", action="store_true",
                      help="do not look for faces (by default crops keep the faces found whole)")
  parser.add_argument("--face-side", type=face_side, default=faces_lib.DETECT_SIDE,
                      help="the long side of the canvas the face detector sees the photo on, a "
                      "multiple of 32: 192 is about 4x faster and misses faces under ~10%% of "
                      "the photo's short side (default: %(default)s)")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")
  return parser


def model_source(args: argparse.Namespace) -> str:
  """What --workdir / --model name as the model (checked quickly, before the slow load); a
  problem is one line and exit status 2."""
  try:
    if args.workdir:
      workdir_lib.resolve_config(args.workdir)  # A training run's folder?
      return args.workdir
    name = args.model or model_zoo.DEFAULT_MODEL
    if args.model is None and name not in model_zoo.available():
      raise FileNotFoundError(
          f"the default model {name!r} is not installed (models in this installation: "
          f"{', '.join(model_zoo.available()) or 'none'}); pass --workdir DIR (a training run) "
          "or --model PATH (an exported model)")
    return str(model_zoo.model_dir(name)) if args.model else name
  except (FileNotFoundError, ValueError) as e:
    raise UsageError(str(e).splitlines()[0] if str(e) else type(e).__name__) from e


def face_detector(args: argparse.Namespace) -> faces_lib.FaceDetector | None:
  """The face detector the flags ask for (None with --no-faces)."""
  return None if args.no_faces else faces_lib.FaceDetector(detect_side=args.face_side)


def load_cropper(args: argparse.Namespace, *, faces: faces_lib.FaceDetector | None = None
                 ) -> cropper_lib.Cropper:
  """The cropper the flags ask for, with the face detector `faces` if given (else the one the
  flags ask for); a problem is one line and exit status 2."""
  kwargs = dict(nms_iou=args.nms_iou, max_pixels=args.max_pixels, batch_size=args.batch_size,
                canvas_size=args.canvas_size, layout=args.canvas_layout,
                faces=faces or face_detector(args) or False,
                progress=None if args.quiet else inference.progress_to_stderr)
  try:
    if args.workdir:
      return cropper_lib.Cropper.from_workdir(args.workdir, best=args.best, **kwargs)
    return cropper_lib.Cropper.pretrained(args.model or model_zoo.DEFAULT_MODEL, **kwargs)
  except (FileNotFoundError, ValueError) as e:
    raise UsageError(str(e).splitlines()[0] if str(e) else type(e).__name__) from e


def _warm_up_faces_for(detector: faces_lib.FaceDetector, source: str) -> None:
  """Prepares the face pass of the canvas `source`'s photo is detected on, if its header can
  be read (otherwise its decoding says why, later). An error here is left to the photo's own
  face detection, which prepares the pass again and reports it."""
  size = photos.upright_size(source)
  if size is not None:
    detector.warm_up(shapes=[detector.canvas_shape(size)])


class UsageError(Exception):
  """A flag or model problem, reported in one line (`procrop serve` loads models here too)."""


def main(argv: Sequence[str] | None = None, *, prog: str = "procrop crop") -> int:
  """`procrop crop ...`; returns the exit status (0 ok, 1 some inputs failed, 2 usage)."""
  parser = build_parser(prog)
  args = parser.parse_args(argv)
  if not args.paths:
    parser.error("no inputs: give photos, folders, globs or - (stdin)")
  if args.best and not args.workdir:
    parser.error("--best needs --workdir")
  if args.workdir and args.model:
    parser.error("give --workdir or --model, not both")
  if args.canvas_size is not None and args.canvas_size % cropper_lib.CANVAS_MULTIPLE:
    parser.error(f"--canvas-size {args.canvas_size}: use a multiple of "
                 f"{cropper_lib.CANVAS_MULTIPLE}")
  if not 0 <= args.nms_iou <= 1:
    parser.error(f"--nms-iou {args.nms_iou}: use a value in [0, 1]")
  if args.paths.count(photos.STDIN) > 1:
    parser.error("- (stdin) can be given once")
  targets = [*args.aspect, *args.size] or [cropper_lib.FREE]
  if len({t.label for t in targets}) != len(targets):
    parser.error("the same --aspect or --size is given twice")
  inference.use_compile_cache(args.compile_cache)
  inputs, problems = photos.list_inputs(args.paths, exclude=args.out)
  # Fewer photos than a batch: the smallest power of two that holds them (one photo runs alone).
  args.batch_size = cropper_lib.calls_batch_size(len(inputs), args.batch_size)
  try:
    source = model_source(args)
  except UsageError as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    return 2
  detector = face_detector(args)
  with concurrent.futures.ThreadPoolExecutor(1) as early:
    if detector is not None and inputs:
      # The first photo's face pass is prepared while the model loads: loading is Python on
      # one core, and compiling the face pass (seconds on a first-ever run) needs the other.
      early.submit(_warm_up_faces_for, detector, inputs[0].source)
    try:
      if not args.quiet:
        inference.progress_to_stderr(f"Loading {source} (compiled passes: "
                                     f"{args.compile_cache or 'not kept'})")
      start = time.perf_counter()
      cropper = load_cropper(args, faces=detector)
    except UsageError as e:
      print(f"{prog}: error: {e}", file=sys.stderr)
      return 2
    if not args.quiet:
      inference.progress_to_stderr(f"  loaded in {time.perf_counter() - start:.1f} s")
    summary = run(inputs, cropper, out_dir=args.out, targets=targets, top_k=args.top_k,
                  fmt=args.format, quality=args.quality, problems=problems,
                  workers=args.workers, progress=not args.quiet,
                  keep=cropper_lib.user_regions(args.keep, args.focus))
  print(f"Cropped {summary.ok} of {summary.total} inputs into {summary.out_dir} "
        f"({summary.photos_per_second:.2f} photos/s)"
        + (f"; {summary.failed} failed (see {summary.out_dir / 'results.jsonl'})"
           if summary.failed else "") + f". Contact sheet: {summary.out_dir / 'index.html'}",
        file=sys.stderr)
  return 1 if summary.failed else 0


if __name__ == "__main__":
  try:
    status = main(prog="python -m procrop_jax.crop")
  finally:
    gc.freeze()  # Spares the exit's collections the objects JAX left, as `procrop` (main.run).
  sys.exit(status)
