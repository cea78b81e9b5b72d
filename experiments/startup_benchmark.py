r"""How fast the cropper answers cold: `procrop crop` and `Cropper.pretrained()` in fresh processes.

  python -m experiments.startup_benchmark [--photos DIR] [--limit 200] [--repeats 3]
      [--model NAME_OR_PATH] [--skip-folder]

Every figure comes from a new Python process (the way a user meets the tool), each with its own
cache folder ($PROCROP_CACHE_DIR: converted ImageNet weights, and jax/ for the compiled passes),
empty for a "first-ever" run and filled by the run before it for a "second" one. One JSON line per
measurement, then a summary line:

  one_photo_first_s / one_photo_second_s   wall time of `procrop crop ONE.jpg --quiet` (the
                                           installed script), with an empty cache folder / the
                                           one the first run filled; the median of --repeats
  one_photo_peak_rss_mb                    that command's peak resident memory (the largest
                                           of the runs)
  import_s / pretrained_s                  `from procrop_jax import Cropper`, then
                                           `Cropper.pretrained()` (caches warm), median
  first_crop_s / first_aspect_crop_s       the first `crop()` after loading (free; then with
                                           aspect="16:9"), caches warm (a process before
                                           filled them)
  crop_loop_photos_per_s                   `Cropper.crop(path)` called once per photo over the
                                           first 40 photos (free, top 1, decoding included),
                                           the second of two passes in that process
  folder_first_photos_per_s                `crop.run` over --limit photos (free crops, top 1) in
                                           a process with an empty cache folder, compilations
                                           included (the model loaded before the clock starts)
  folder_second_photos_per_s               the same in a new process with the filled cache
  folder_steady_photos_per_s               a second pass in that process (nothing compiles)
  smartcrop_photos_per_s                   the smartcrop package on the same photos (one 1:1
                                           crop, written), timed here between the passes;
                                           the *_vs_smartcrop figures are ratios to it
  compile_cache_mb / compile_cache_files   the cache folder's jax/ after the folder runs

smartcrop is the `bench` extra (pip install -e '.[bench]'). The photos default to FCDB's images in
../shared/data/fcdb/data; ONE.jpg is the first of them.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from experiments import crop_benchmark

REPO = pathlib.Path(__file__).resolve().parents[1]
LOOP_PHOTOS = 40  # Photos of the crop() loop.


def _run(command: list[str], cache: pathlib.Path, cwd: pathlib.Path) -> tuple[float, str]:
  """(wall seconds, stdout) of a command in a fresh process whose cache folder is `cache`."""
  env = {**os.environ, "PROCROP_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO),
         "TF_CPP_MIN_LOG_LEVEL": "2"}
  for name in ("PROCROP_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR"):
    env.pop(name, None)  # The default: $PROCROP_CACHE_DIR/jax.
  start = time.perf_counter()
  process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  stdout, stderr = process.communicate()
  seconds = time.perf_counter() - start
  if process.returncode != 0:
    raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{stderr[-3000:]}")
  return seconds, stdout


def _children_peak_mb() -> float:
  """The largest peak resident memory of the finished children so far (kB on Linux)."""
  return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _procrop() -> str:
  script = pathlib.Path(sys.executable).with_name("procrop")
  return str(script) if script.exists() else shutil.which("procrop") or "procrop"


def _emit(record: dict) -> None:
  print(json.dumps(record), flush=True)


# ----------------------------------------------------------------------------- child processes
def child_pretrained(model: str | None, photo: str, loop_photos: list[pathlib.Path]) -> None:
  """Prints the import, load and first-crop times of this (fresh) process, then the photos/s of
  a `crop()` loop over `loop_photos`."""
  start = time.perf_counter()
  from procrop_jax import Cropper  # pylint: disable=g-import-not-at-top
  imported = time.perf_counter()
  cropper = Cropper.pretrained(model)
  loaded = time.perf_counter()
  cropper.crop(photo, top_k=1)
  first = time.perf_counter()
  cropper.crop(photo, aspect="16:9", top_k=1)
  aspect = time.perf_counter()
  for path in loop_photos:  # The first pass compiles the canvases the photos need.
    cropper.crop(path, top_k=1)
  loop = time.perf_counter()
  for path in loop_photos:
    cropper.crop(path, top_k=1)
  loop_s = time.perf_counter() - loop
  print(json.dumps({"import_s": imported - start, "pretrained_s": loaded - imported,
                    "first_crop_s": first - loaded, "first_aspect_crop_s": aspect - first,
                    "crop_loop_photos_per_s": len(loop_photos) / loop_s,
                    "tensorflow_imported": "tensorflow" in sys.modules}))


def child_folder(model: str | None, photos_dir: str, limit: int, out: str) -> None:
  """Prints photos/s of a first and a second pass over the photos in this (fresh) process."""
  from procrop_jax import cropper as cropper_lib  # pylint: disable=g-import-not-at-top
  from procrop_jax import photos  # pylint: disable=g-import-not-at-top
  paths = sorted(p for p in pathlib.Path(photos_dir).rglob("*")
                 if p.suffix.lower() in photos.IMAGE_SUFFIXES)[:limit]
  cropper = cropper_lib.Cropper.pretrained(model)
  first = crop_benchmark.run_procrop(cropper, paths, pathlib.Path(out) / "first",
                                     [cropper_lib.FREE], 1)
  steady = crop_benchmark.run_procrop(cropper, paths, pathlib.Path(out) / "steady",
                                      [cropper_lib.FREE], 1)
  print(json.dumps({"first_photos_per_s": first, "steady_photos_per_s": steady,
                    "compilations": cropper.predictor.compilations(), "photos": len(paths)}))


# ------------------------------------------------------------------------------------ the parent
def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--photos", default=str(crop_benchmark.DEFAULT_PHOTOS))
  parser.add_argument("--limit", type=int, default=200)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--model", default=None)
  parser.add_argument("--skip-folder", action="store_true",
                      help="only the one-photo and start-up figures")
  parser.add_argument("--child", choices=("pretrained", "folder"), help=argparse.SUPPRESS)
  parser.add_argument("--out", help=argparse.SUPPRESS)
  parser.add_argument("--photo", help=argparse.SUPPRESS)
  args = parser.parse_args()
  paths = sorted(p for p in pathlib.Path(args.photos).rglob("*")
                 if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:args.limit]
  if args.child == "pretrained":
    return child_pretrained(args.model, args.photo, paths[:LOOP_PHOTOS])
  if args.child == "folder":
    return child_folder(args.model, args.photos, args.limit, args.out)

  if not paths:
    raise SystemExit(f"no photos in {args.photos}")
  for path in paths:  # Every process then reads the photos from the page cache.
    path.read_bytes()
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="startup_benchmark_"))
  model = ["--model", args.model] if args.model else []
  summary: dict = {"photos": len(paths), "cpu_count": os.cpu_count(),
                   "load_average": os.getloadavg()[0]}
  try:
    # One photo through the installed command: first-ever, then second, --repeats times.
    first, second = [], []
    for i in range(args.repeats):
      cache = tmp / f"cache_one_{i}"
      command = [_procrop(), "crop", str(paths[0]), "--out", str(tmp / f"one_{i}"), "--quiet",
                 *model]
      seconds, _ = _run(command, cache, tmp)
      first.append(seconds)
      seconds, _ = _run(command, cache, tmp)
      second.append(seconds)
      _emit({"what": "procrop crop ONE.jpg", "repeat": i, "first_s": round(first[-1], 2),
             "second_s": round(second[-1], 2)})
    summary.update(one_photo_first_s=round(statistics.median(first), 2),
                   one_photo_second_s=round(statistics.median(second), 2),
                   one_photo_peak_rss_mb=round(_children_peak_mb(), 1))
    # Cropper.pretrained() and the first crops, caches warm: the last one-photo cache, which a
    # first process (not counted) fills with the API's passes (one photo alone, and the
    # aspect's).
    loads = []
    child = [sys.executable, "-m", "experiments.startup_benchmark", "--child", "pretrained",
             "--photo", str(paths[0]), "--photos", args.photos, *model]
    _run(child, cache, tmp)
    for i in range(args.repeats):
      _, out = _run(child, cache, tmp)
      loads.append(json.loads(out.strip().splitlines()[-1]))
      _emit({"what": "Cropper.pretrained()", "repeat": i,
             **{k: round(v, 3) if isinstance(v, float) else v for k, v in loads[-1].items()}})
    for key in ("import_s", "pretrained_s", "first_crop_s", "first_aspect_crop_s",
                "crop_loop_photos_per_s"):
      summary[key] = round(statistics.median(r[key] for r in loads), 3)
    summary["tensorflow_imported"] = any(r["tensorflow_imported"] for r in loads)

    if not args.skip_folder:
      cache = tmp / "cache_folder"
      command = [sys.executable, "-m", "experiments.startup_benchmark", "--child", "folder",
                 "--photos", args.photos, "--limit", str(args.limit), *model]
      _, out = _run([*command, "--out", str(tmp / "folder_first")], cache, tmp)
      cold = json.loads(out.strip().splitlines()[-1])
      smart = crop_benchmark.run_smartcrop(paths, tmp / "smartcrop", 1.0)
      _, out = _run([*command, "--out", str(tmp / "folder_second")], cache, tmp)
      warm = json.loads(out.strip().splitlines()[-1])
      _emit({"what": "folder, empty cache", **cold})
      _emit({"what": "folder, filled cache", **warm})
      files = [p for p in (cache / "jax").rglob("*") if p.is_file()]
      summary.update(
          folder_first_photos_per_s=round(cold["first_photos_per_s"], 2),
          folder_second_photos_per_s=round(warm["first_photos_per_s"], 2),
          folder_steady_photos_per_s=round(warm["steady_photos_per_s"], 2),
          smartcrop_photos_per_s=round(smart, 2),
          folder_first_vs_smartcrop=round(cold["first_photos_per_s"] / smart, 2),
          folder_second_vs_smartcrop=round(warm["first_photos_per_s"] / smart, 2),
          folder_steady_vs_smartcrop=round(warm["steady_photos_per_s"] / smart, 2),
          compile_cache_files=len(files),
          compile_cache_mb=round(sum(p.stat().st_size for p in files) / 1e6, 1))
    summary["load_average_after"] = os.getloadavg()[0]
    _emit({"what": "summary", **summary})
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
