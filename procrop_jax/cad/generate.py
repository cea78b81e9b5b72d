r"""Writes a CAD dataset (ProCrop's format) from professional photos.

Each photo is placed in several larger canvases: the photo covers a random fraction of
the canvas's area in [min_area_fraction, max_area_fraction], at a random position, in
a canvas of random aspect ratio; the margin is out-painted and the photo's frame is
written as the first (pseudo-label) line of the annotation:

  <out>/images/<id>_<k>.jpg
  <out>/annotations/<id>_<k>.txt     "y1 x1 y2 x2 5"  (pixels, GAIC's row/column order)

Each variant's randomness comes from (seed, photo id, k), so a variant is the same
whichever worker makes it and whenever. Existing outputs are kept: an interrupted run
is resumed by running it again (with the same parameters: a folder begun with others is
refused, never mixed). Files are written under temporary names and renamed, the annotation
last, so a variant exists only once it is complete.

Photos that fail (an unreadable file, a full disk) are reported: counted, the first few named,
and listed with their errors in `<out>/cad_failures.json`. The `procrop_cad` builder refuses a
set with failures unless they were allowed (`allow_failures`, `config.cad.allow_failures`,
`--allow_failures`); a later run in which every photo succeeds removes the file.

The processes of a multi-process run share the work (`process_index`, `process_count`): each
makes the variants of its slice of the sorted photos (`process_share`) in the same folder, and
writes its failures to a part file; once all have finished, one of them merges the parts into
`cad_failures.json` (`merge_failure_parts`).

  python -m procrop_jax.cad.generate --source=skimage --out=data/manual/procrop_cad_default
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import os
import pathlib
import sys
import time
import zlib
from typing import Sequence

from absl import logging
import numpy as np
from PIL import Image
import tqdm

from procrop_jax import artifacts
from procrop_jax import photos as photos_lib
from procrop_jax.cad import outpaint as outpaint_lib
from procrop_jax.cad import sources

MARKER = "cad_generation.json"  # Written by the generator: its parameters and sources.
FAILURES = "cad_failures.json"  # Written when photos failed: which, why, and if allowed.
FAILURE_PARTS = "cad_failures.part-*.json"  # One per process of a multi-process generation.
PSEUDO_LABEL_SCORE = 5


@dataclasses.dataclass(frozen=True)
class CanvasPlan:
  """Where a photo of (photo_h, photo_w) sits in a canvas of (canvas_h, canvas_w)."""
  canvas_h: int
  canvas_w: int
  top: int
  left: int
  photo_h: int
  photo_w: int

  @property
  def area_fraction(self) -> float:
    return self.photo_h * self.photo_w / (self.canvas_h * self.canvas_w)

  @property
  def box_yxyx(self) -> tuple[int, int, int, int]:
    return self.top, self.left, self.top + self.photo_h, self.left + self.photo_w


class IncompleteCADError(RuntimeError):
  """Photos failed during CAD generation and the set was not allowed to be incomplete."""


class GenerationMismatchError(ValueError):
  """The output folder holds variants generated with other parameters; completing it would mix
  them with new ones."""


@dataclasses.dataclass
class GenerationReport:
  photos: int = 0
  written: int = 0
  kept: int = 0  # Variants already present (a resumed run).
  failed_photos: list[str] = dataclasses.field(default_factory=list)
  errors: dict[str, str] = dataclasses.field(default_factory=dict)  # Failed photo -> error.
  seconds: float = 0.0

  @property
  def images_per_second(self) -> float:
    return self.written / self.seconds if self.seconds > 0 else 0.0

  def failure_summary(self, limit: int = 3) -> str:
    """"2 of 10 photos failed (a.jpg: <error>; b.jpg: <error>)", or "" when none did."""
    return summarize_failures(self.errors, self.photos, limit=limit)

  def add(self, photo: str, written: int, error: str | None) -> None:
    """Counts one photo's outcome (`VariantMaker`'s result)."""
    self.written += written
    if error is not None:
      self.failed_photos.append(photo)
      self.errors[photo] = error


def summarize_failures(errors: dict[str, str], photos: int, *, limit: int = 3) -> str:
  if not errors:
    return ""
  shown = "; ".join(f"{pathlib.Path(p).name}: {e}" for p, e in sorted(errors.items())[:limit])
  more = f"; and {len(errors) - limit} more" if len(errors) > limit else ""
  return f"{len(errors)} of {photos} photos failed ({shown}{more})"


def read_failures(out_dir: str | pathlib.Path) -> dict | None:
  """The failure record of a generated set (`FAILURES`), or None when every photo succeeded."""
  path = pathlib.Path(out_dir) / FAILURES
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise IncompleteCADError(f"{path} is unreadable ({e}): run the CAD generation again") from None


def process_share(paths: Sequence[str | pathlib.PurePath], process_index: int,
                  process_count: int) -> list[int]:
  """The positions in `paths` of the photos that process `process_index` of `process_count`
  generates: every `process_count`-th photo of the sorted list, from the `process_index`-th.

  The sorted list makes the split independent of the order the photos were listed in, so the
  processes agree on it without talking to each other.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got {process_index} of "
                     f"{process_count}")
  order = sorted(range(len(paths)), key=lambda i: str(paths[i]))
  return sorted(order[process_index::process_count])


def _failure_part(out_dir: pathlib.Path, process_index: int, process_count: int) -> pathlib.Path:
  return out_dir / f"cad_failures.part-{process_index:05d}-of-{process_count:05d}.json"


def _write_failures(out_dir: pathlib.Path, photos: int, errors: dict[str, str],
                    allow_failures: bool) -> None:
  """Writes `FAILURES`, or removes a stale one when no photo failed; parts are then spent."""
  if errors:
    artifacts.atomic_write_json(out_dir / FAILURES, {
        "photos": photos, "errors": errors, "allow_failures": allow_failures},
                                indent=1, sort_keys=True)
  else:
    (out_dir / FAILURES).unlink(missing_ok=True)
  for part in out_dir.glob(FAILURE_PARTS):  # Also those of an interrupted run.
    part.unlink(missing_ok=True)


def merge_failure_parts(out_dir: str | pathlib.Path, *, process_count: int,
                        allow_failures: bool) -> dict[str, str]:
  """Combines the failure parts of a multi-process generation into `FAILURES`.

  Run by one process once every process has finished its share (after a barrier).

  Returns:
    Every failed photo with its error.

  Raises:
    IncompleteCADError: a process's part is not there: it did not finish, or `out_dir` is not
      on storage that all the processes share (each then sees only its own files).
  """
  out_dir = pathlib.Path(out_dir)
  parts = [_failure_part(out_dir, p, process_count) for p in range(process_count)]
  missing = [part.name for part in parts if not part.exists()]
  if missing:
    raise IncompleteCADError(
        f"CAD generation into {out_dir} is incomplete: {len(missing)} of {process_count} "
        f"processes left no record of their photos here (missing: {', '.join(missing[:3])}"
        f"{', ...' if len(missing) > 3 else ''}). A multi-process run needs the manual_dir "
        "on storage shared by all hosts (each host generates only its share of the photos).")
  photos, errors = 0, {}
  for part in parts:
    record = json.loads(part.read_text())
    photos += record["photos"]
    errors.update(record["errors"])
  _write_failures(out_dir, photos, errors, allow_failures)
  return errors


def check_complete(out_dir: str | pathlib.Path) -> None:
  """Raises IncompleteCADError if photos failed in `out_dir` and that was not allowed."""
  record = read_failures(out_dir)
  if record is None or record.get("allow_failures"):
    return
  summary = summarize_failures(record.get("errors", {}), record.get("photos", 0))
  raise IncompleteCADError(
      f"CAD generation into {out_dir} is incomplete: {summary}; the full list is in "
      f"{pathlib.Path(out_dir) / FAILURES}. Fix or remove those photos and run again, or set "
      "config.cad.allow_failures=True (generate: --allow_failures) to build without them.")


# What shapes every variant: a set is completed only with the values it was begun with.
_SHAPING_PARAMETERS = ("seed", "min_area_fraction", "max_area_fraction", "max_side",
                       "outpainter")


def _check_same_parameters(out_dir: pathlib.Path, marker: dict) -> None:
  """Raises GenerationMismatchError unless completing `out_dir` with `marker`'s parameters
  gives what a fresh run would: the same shaping parameters and named source ("skimage" or a
  folder; a list of photos names none), and no fewer variants per photo (the surplus would
  stay and be built)."""
  path = out_dir / MARKER
  if not path.exists():
    return
  try:
    before = json.loads(path.read_text())
  except ValueError:
    before = {}
  keys = ("source", "variants_per_photo") + _SHAPING_PARAMETERS
  old = {k: before.get(k) for k in keys}
  new = {k: marker[k] for k in keys}
  other_source = old["source"] and new["source"] and old["source"] != new["source"]
  fewer = not isinstance(old["variants_per_photo"], int) or (
      new["variants_per_photo"] < old["variants_per_photo"])
  if other_source or fewer or any(old[k] != new[k] for k in _SHAPING_PARAMETERS):
    raise GenerationMismatchError(
        f"{out_dir} holds CAD generated with {json.dumps(old, sort_keys=True)}, not "
        f"{json.dumps(new, sort_keys=True)}: delete it or generate into another folder")


def plan_canvas(photo_hw: tuple[int, int], rng: np.random.Generator, *,
                min_area_fraction: float = 0.3, max_area_fraction: float = 0.8,
                aspect_range: tuple[float, float] = (0.5, 2.0)) -> CanvasPlan:
  """Picks a canvas size and the photo's position in it.

  The area fraction is uniform in [min, max]; the canvas's aspect ratio (W / H) is
  log-uniform over what `aspect_range` and the fraction allow (a canvas must contain
  the photo); the position is uniform over the canvas.
  """
  if not 0 < min_area_fraction <= max_area_fraction <= 1:
    raise ValueError(f"need 0 < min_area_fraction <= max_area_fraction <= 1, got "
                     f"{min_area_fraction}, {max_area_fraction}")
  h, w = photo_hw
  fraction = rng.uniform(min_area_fraction, max_area_fraction)
  area = h * w / fraction
  photo_aspect = w / h
  # W >= w and H >= h  <=>  photo_aspect * fraction <= W / H <= photo_aspect / fraction.
  low, high = photo_aspect * fraction, photo_aspect / fraction
  lo, hi = max(low, aspect_range[0]), min(high, aspect_range[1])
  if lo > hi:  # The photo itself is outside the aspect range: stay as close as allowed.
    lo, hi = (low, low) if low > aspect_range[1] else (high, high)
  aspect = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
  canvas_h = max(h, int(round(np.sqrt(area / aspect))))
  canvas_w = max(w, int(round(canvas_h * aspect)))
  top = int(rng.integers(0, canvas_h - h + 1))
  left = int(rng.integers(0, canvas_w - w + 1))
  return CanvasPlan(canvas_h, canvas_w, top, left, h, w)


def annotation_text(plan: CanvasPlan) -> str:
  y1, x1, y2, x2 = plan.box_yxyx
  return f"{y1} {x1} {y2} {x2} {PSEUDO_LABEL_SCORE}\n"


def variant_rng(seed: int, photo_id: str, k: int) -> np.random.Generator:
  return np.random.default_rng([seed, zlib.crc32(photo_id.encode()), k])


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_bytes(data)
  os.replace(tmp, path)


def _variant_done(out_dir: pathlib.Path, name: str) -> bool:
  return (out_dir / "annotations" / f"{name}.txt").exists() and (
      out_dir / "images" / f"{name}.jpg").exists()


def make_canvas(photo: np.ndarray, rng: np.random.Generator, *,
                outpainter: outpaint_lib.OutPainter, min_area_fraction: float = 0.3,
                max_area_fraction: float = 0.8) -> tuple[np.ndarray, CanvasPlan]:
  """One out-painted canvas around a uint8 photo, and where the photo sits in it."""
  plan = plan_canvas(photo.shape[:2], rng, min_area_fraction=min_area_fraction,
                     max_area_fraction=max_area_fraction)
  canvas = outpainter(photo, canvas_hw=(plan.canvas_h, plan.canvas_w),
                      offset_yx=(plan.top, plan.left), rng=rng)
  canvas = np.array(canvas, np.uint8, copy=True)
  # The pseudo-label must point at the original pixels whatever the out-painter did.
  canvas[plan.top:plan.top + plan.photo_h, plan.left:plan.left + plan.photo_w] = photo
  return canvas, plan


def _make_photo_variants(path: pathlib.Path, photo_id: str, variants: Sequence[int],
                         out_dir: pathlib.Path, *, seed: int, min_area_fraction: float,
                         max_area_fraction: float, max_side: int | None,
                         outpainter: outpaint_lib.OutPainter) -> int:
  """Writes the given variants of one photo; returns how many were written."""
  photo = photos_lib.load_photo(path, max_side=max_side)
  written = 0
  for k in variants:
    canvas, plan = make_canvas(photo, variant_rng(seed, photo_id, k), outpainter=outpainter,
                               min_area_fraction=min_area_fraction,
                               max_area_fraction=max_area_fraction)
    name = f"{photo_id}_{k}"
    buffer = encode_jpeg(canvas)
    _write_atomic(out_dir / "images" / f"{name}.jpg", buffer)
    _write_atomic(out_dir / "annotations" / f"{name}.txt", annotation_text(plan).encode())
    written += 1
  return written


def encode_jpeg(canvas: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  # 4:4:4 chroma keeps the photo's pixels close to the original inside the frame.
  Image.fromarray(canvas).save(buffer, format="JPEG", quality=photos_lib.JPEG_QUALITY,
                             subsampling=0)
  return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class PhotoTask:
  """One photo's share of a generation: the variants of it still missing."""
  path: str
  photo_id: str
  variants: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class VariantMaker:
  """Writes a photo's missing variants: what each worker runs, a thread or a Beam worker.

  Small and picklable (no list of photos), so that Beam ships it to its workers as it is.
  """
  out_dir: pathlib.Path
  seed: int
  min_area_fraction: float
  max_area_fraction: float
  max_side: int | None
  outpainter: outpaint_lib.OutPainter

  def __call__(self, task: PhotoTask) -> tuple[str, int, str | None]:
    """(photo path, variants written, error or None) of one photo."""
    try:
      written = _make_photo_variants(
          pathlib.Path(task.path), task.photo_id, task.variants, self.out_dir, seed=self.seed,
          min_area_fraction=self.min_area_fraction, max_area_fraction=self.max_area_fraction,
          max_side=self.max_side, outpainter=self.outpainter)
    except Exception as e:  # pylint: disable=broad-except
      # An unreadable photo is skipped, not fatal: it is counted and the rest go on.
      logging.warning("CAD: skipping %s: %s", task.path, e)
      return task.path, 0, f"{type(e).__name__}: {e}"
    return task.path, written, None


def begin_generation(photos: Sequence[str | pathlib.Path] | str, out_dir: str | pathlib.Path,
                     *, variants_per_photo: int, min_area_fraction: float,
                     max_area_fraction: float, seed: int, max_side: int | None,
                     outpainter: outpaint_lib.OutPainter | None,
                     process_index: int = 0, process_count: int = 1
                     ) -> tuple[VariantMaker, list[PhotoTask], GenerationReport]:
  """Checks and records the parameters in `out_dir` (`MARKER`) and finds what is missing.

  Returns the maker of variants, the photos of this process's share (`process_share`) that
  still miss variants, and a report of that share that counts the variants already there
  (`generate_cad` and the Beam pipeline then fill it in).
  """
  paths = [pathlib.Path(p) for p in (sources.photo_paths(photos) if isinstance(photos, str)
                                     else photos)]
  out_dir = pathlib.Path(out_dir)
  (out_dir / "images").mkdir(parents=True, exist_ok=True)
  (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
  outpainter = outpainter or outpaint_lib.ReflectBlurOutPainter()
  ids = photos_lib.photo_ids(paths)
  named = None
  if isinstance(photos, str):
    named = photos if photos == "skimage" else os.path.abspath(photos)
  marker = {
      "format": "procrop_cad", "source": named, "seed": seed, "variants_per_photo": variants_per_photo,
      "min_area_fraction": min_area_fraction, "max_area_fraction": max_area_fraction,
      "max_side": max_side, "outpainter": type(outpainter).__name__,
      "photos": {i: str(p) for i, p in zip(ids, paths)},
  }
  _check_same_parameters(out_dir, marker)
  # Every process writes the same marker, atomically: a reader sees one whole copy, and no
  # variant is written into a folder whose parameters are not recorded.
  artifacts.atomic_write_json(out_dir / MARKER, marker, indent=1)

  share = process_share(paths, process_index, process_count)
  report = GenerationReport(photos=len(share))
  tasks = []
  for path, photo_id in ((paths[i], ids[i]) for i in share):
    missing = tuple(k for k in range(variants_per_photo)
                    if not _variant_done(out_dir, f"{photo_id}_{k}"))
    report.kept += variants_per_photo - len(missing)
    if missing:
      tasks.append(PhotoTask(str(path), photo_id, missing))
  maker = VariantMaker(out_dir, seed=seed, min_area_fraction=min_area_fraction,
                       max_area_fraction=max_area_fraction, max_side=max_side,
                       outpainter=outpainter)
  return maker, tasks, report


def finish_generation(report: GenerationReport, out_dir: str | pathlib.Path, *,
                      allow_failures: bool, start: float, process_index: int = 0,
                      process_count: int = 1) -> GenerationReport:
  """Records the failures (`FAILURES`, or removes a stale record) and logs the totals.

  One of several processes writes its part instead (even with no failures: the part says that
  it finished); `merge_failure_parts` makes the record of them all.
  """
  out_dir = pathlib.Path(out_dir)
  report.failed_photos.sort()
  report.seconds = time.perf_counter() - start
  if process_count > 1:
    artifacts.atomic_write_json(_failure_part(out_dir, process_index, process_count), {
        "photos": report.photos, "errors": report.errors}, indent=1, sort_keys=True)
  else:
    _write_failures(out_dir, report.photos, report.errors, allow_failures)
  if report.errors:
    logging.warning("CAD: %s", report.failure_summary())
  logging.info("CAD: %d photos, %d variants written, %d kept, %d photos failed, %.1f s",
               report.photos, report.written, report.kept, len(report.failed_photos),
               report.seconds)
  return report


def generate_cad(photos: Sequence[str | pathlib.Path] | str, out_dir: str | pathlib.Path, *,
                 variants_per_photo: int = 8, min_area_fraction: float = 0.3,
                 max_area_fraction: float = 0.8, workers: int = 2, seed: int = 0,
                 max_side: int | None = 1024,
                 outpainter: outpaint_lib.OutPainter | None = None,
                 progress: bool = True, allow_failures: bool = False,
                 process_index: int = 0, process_count: int = 1) -> GenerationReport:
  """Generates (or completes) a CAD dataset in `out_dir`, on a few threads of this process.

  For a large set, `procrop_jax.cad.generate_beam.generate_cad_beam` writes the same files
  through Apache Beam.

  Args:
    photos: photo paths, or a source name for `sources.photo_paths` ("skimage" or a
      folder).
    out_dir: the dataset's root (the `procrop_cad` builder's manual directory).
    variants_per_photo: canvases per photo.
    min_area_fraction, max_area_fraction: range of the photo's share of the canvas.
    workers: parallel workers (threads: the heavy work is in PIL and NumPy, which
      release the GIL, and threads are safe beside JAX and TensorFlow).
    seed: the dataset's seed.
    max_side: photos are first downscaled to this longer side (None: never).
    outpainter: defaults to `ReflectBlurOutPainter()`.
    progress: show a progress bar.
    allow_failures: record in `FAILURES` that the set may be built without the photos that
      failed (they are reported either way).
    process_index, process_count: this process's place among the processes that share the
      work (`process_share`); with more than one, each writes a failure part, and one of them
      runs `merge_failure_parts` once all have finished.

  Returns:
    What was written, kept and failed in this process's share (with each failure's error),
    and how long it took.
  """
  start = time.perf_counter()
  maker, tasks, report = begin_generation(
      photos, out_dir, variants_per_photo=variants_per_photo,
      min_area_fraction=min_area_fraction, max_area_fraction=max_area_fraction, seed=seed,
      max_side=max_side, outpainter=outpainter, process_index=process_index,
      process_count=process_count)
  total = sum(len(task.variants) for task in tasks)
  with tqdm.tqdm(total=total, desc=f"CAD -> {out_dir}", unit="img",
                 disable=not progress or not total) as bar:
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
      futures = {pool.submit(maker, task): task for task in tasks}
      for future in concurrent.futures.as_completed(futures):
        report.add(*future.result())
        bar.update(len(futures[future].variants))
  return finish_generation(report, out_dir, allow_failures=allow_failures, start=start,
                           process_index=process_index, process_count=process_count)


def define_flags() -> None:
  """The command line's flags, shared with `generate_beam`'s."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("source", "skimage", "'skimage' or a folder of photos.")
  flags.DEFINE_string("out", None, "Output directory.", required=True)
  flags.DEFINE_integer("variants", 8, "Canvases per photo.")
  flags.DEFINE_float("min_area_fraction", 0.3, "Smallest share of the canvas.")
  flags.DEFINE_float("max_area_fraction", 0.8, "Largest share of the canvas.")
  flags.DEFINE_integer("seed", 0, "Seed.")
  flags.DEFINE_integer("max_side", 1024, "Downscale photos to this longer side (0: never).")
  flags.DEFINE_bool("allow_failures", False,
                    "Let the procrop_cad builder build the set without photos that failed.")


def print_report(report: GenerationReport, out: str, *, allow_failures: bool) -> None:
  """Prints a command's totals; exits with an error when photos failed and that is not allowed."""
  print(f"{report.written} written, {report.kept} kept, {len(report.failed_photos)} photos "
        f"failed, {report.images_per_second:.1f} images/s")
  if report.errors:
    print(report.failure_summary())
    if not allow_failures:
      sys.exit(f"Incomplete: the procrop_cad builder will refuse {out} until every photo "
               "succeeds (or run again with --allow_failures).")


def main(argv: Sequence[str]) -> None:
  del argv
  flags = FLAGS
  report = generate_cad(flags.source, flags.out, variants_per_photo=flags.variants,
                        min_area_fraction=flags.min_area_fraction,
                        max_area_fraction=flags.max_area_fraction, workers=flags.workers,
                        seed=flags.seed, max_side=flags.max_side or None,
                        allow_failures=flags.allow_failures)
  print_report(report, flags.out, allow_failures=flags.allow_failures)


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags as flags_lib  # pylint: disable=g-import-not-at-top
  define_flags()
  flags_lib.DEFINE_integer("workers", 2, "Parallel workers.")
  FLAGS = flags_lib.FLAGS
  app.run(main)
