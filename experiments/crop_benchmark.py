r"""`procrop crop` against smartcrop on the same photos, in the same run: photos/s end to end.

  python -m experiments.crop_benchmark [--photos DIR] [--limit N] [--aspect 1:1] [--top-k 1]
      [--canvas-sizes 320,192] [--layout buckets|orientation|square] [--rounds 3]
      [--workdir DIR | --model NAME_OR_PATH | --config configs/fcdb_cpu.py]

Measures, on the first N photos of DIR (default: the FCDB images in ../shared/data/fcdb/data),
for each canvas size S of --canvas-sizes (default: the Cropper's for that model; photos on
canvas buckets, see procrop_jax/cropper.py):

  procrop_free_photos_per_s    `procrop crop` free crops (--top-k per photo), decode to written
                               results (crops, results.jsonl, index.html), after a first pass
                               over the same photos that compiled every bucket
  procrop_free_cold_photos_per_s  that first pass, compilations included
  procrop_aspect_photos_per_s  the same with one --aspect (warm)
  model_only_photos_per_s      the model's passes alone on those photos' canvases, full batches
  model_gflops_per_photo       XLA's FLOP count of one forward pass, averaged over the photos'
                               buckets (free; and _aspect: an aspect request's three passes,
                               the proposals' and its candidates' decoder rows)
  model_gflops_per_s           FLOP/s of the model alone, against
  matmul_gflops_per_s          a 2048 x 2048 float32 matrix product timed in the same run
  smartcrop_photos_per_s       the smartcrop package (pip install -e '.[bench]'): decode, one
                               crop of that aspect, write the crop
  speedup_*_vs_smartcrop       the median over --rounds rounds (default 3) of each round's
                               ratio; each round times smartcrop, free and aspect crops back to
                               back, since the machine's speed drifts; photos/s are medians too

smartcrop writes one crop per photo, hence --top-k 1 by default. --config builds the model of a
config with its ImageNet backbone and a random head: the timing is that of a trained model of
that config, the crops are meaningless. Prints one JSON line per canvas size.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = REPO.parent / "shared" / "data" / "fcdb" / "data"


def _timed(fn, repeats: int = 1) -> float:
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def matmul_flops_per_second(n: int = 2048) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  return 2 * n ** 3 / _timed(lambda: matmul(a).block_until_ready(), repeats=5)


def build_predictor(args):
  from procrop_jax import cropper as cropper_lib  # pylint: disable=g-import-not-at-top
  from procrop_jax import inference  # pylint: disable=g-import-not-at-top
  if args.workdir:
    return inference.Predictor.from_workdir(args.workdir)
  if args.config:
    import importlib.util  # pylint: disable=g-import-not-at-top
    from procrop_jax import model_zoo  # pylint: disable=g-import-not-at-top
    spec = importlib.util.spec_from_file_location("bench_config", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    return inference.Predictor(model_zoo.create_model(config), config, source=args.config)
  return cropper_lib.Cropper.pretrained(args.model).predictor


def run_procrop(cropper, paths, out: pathlib.Path, targets, top_k: int) -> float:
  from procrop_jax import crop  # pylint: disable=g-import-not-at-top
  from procrop_jax import photos  # pylint: disable=g-import-not-at-top
  inputs, problems = photos.list_inputs([str(p) for p in paths])
  shutil.rmtree(out, ignore_errors=True)
  summary = crop.run(inputs, cropper, out_dir=out, targets=targets, top_k=top_k,
                     problems=problems, progress=False)
  return summary.photos_per_second


def run_smartcrop(paths, out: pathlib.Path, ratio: float) -> float:
  import smartcrop  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top
  out.mkdir(parents=True, exist_ok=True)
  cropper = smartcrop.SmartCrop()
  start = time.perf_counter()
  for i, path in enumerate(paths):
    with Image.open(path) as image:
      image = ImageOps.exif_transpose(image).convert("RGB")
      width, height = image.size
      w = min(width, round(height * ratio))
      h = min(height, round(w / ratio))
      box = cropper.crop(image, w, h)["top_crop"]
      image.crop((box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"])).save(
          out / f"{i}.jpg", quality=92)
  return len(paths) / (time.perf_counter() - start)


def model_figures(cropper, paths) -> dict[str, float]:
  """The model alone on the photos' canvases (full batches per bucket), and its FLOPs."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from procrop_jax.models import procrop  # pylint: disable=g-import-not-at-top
  prepared = [cropper.prepare(Image.open(p)) for p in paths]
  buckets = {}
  for p in prepared:
    buckets.setdefault(p.canvas.shape[:2], []).append(p)
  model = cropper.predictor.model()
  flops, flops_aspect, seconds = 0.0, 0.0, 0.0
  for shape, members in buckets.items():
    share = len(members) / len(prepared)
    flops += share * procrop.flops_per_image(model, canvas_hw=shape)
    # An aspect request: the proposals' pass, then its candidates' decoder rows (two passes).
    candidates = cropper.aspect_candidates
    flops_aspect += share * (procrop.flops_per_image(model, canvas_hw=shape) + sum(
        procrop.flops_per_image(model, canvas_hw=shape, num_query_boxes=count,
                                from_encoding=True)
        for count in (candidates.first_pass_count(model.num_queries),
                      candidates.refine_count)))
    batch = (members * cropper.batch_size)[:cropper.batch_size]
    cropper._predict(batch)  # pylint: disable=protected-access  (compiles)
    seconds += share * _timed(lambda: cropper._predict(batch),  # pylint: disable=protected-access
                              repeats=3) / cropper.batch_size
  return {"flops": flops, "flops_aspect": flops_aspect, "seconds": seconds,
          "buckets": len(buckets)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--photos", default=str(DEFAULT_PHOTOS))
  parser.add_argument("--limit", type=int, default=50)
  parser.add_argument("--aspect", default="1:1")
  parser.add_argument("--top-k", type=int, default=1)
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--rounds", type=int, default=3,
                      help="times smartcrop, free and aspect crops back to back this many "
                      "times; figures are medians")
  parser.add_argument("--canvas-sizes", default="",
                      help="comma-separated canvas sizes (default: the Cropper's default for "
                      "the model)")
  parser.add_argument("--layout", default=None, choices=("buckets", "orientation", "square"),
                      help="the Cropper's canvas layout (default: the model's)")
  source = parser.add_mutually_exclusive_group()
  source.add_argument("--workdir")
  source.add_argument("--model")
  source.add_argument("--config")
  args = parser.parse_args()

  from procrop_jax import cropper as cropper_lib  # pylint: disable=g-import-not-at-top
  from procrop_jax import photos  # pylint: disable=g-import-not-at-top
  paths = sorted(p for p in pathlib.Path(args.photos).rglob("*")
                 if p.suffix.lower() in photos.IMAGE_SUFFIXES)[:args.limit]
  if not paths:
    raise SystemExit(f"no photos in {args.photos}")
  target = cropper_lib.parse_aspect(args.aspect)
  predictor = build_predictor(args)
  sizes = ([int(v) for v in args.canvas_sizes.split(",") if v]
           or [cropper_lib.Cropper(predictor).canvas_size])
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="crop_benchmark_"))
  try:
    for path in paths:  # Every tool then reads the photos from the page cache.
      path.read_bytes()
    matmul = matmul_flops_per_second()
    for size in sizes:
      cropper = cropper_lib.Cropper(predictor, batch_size=args.batch_size, canvas_size=size,
                             layout=args.layout)
      cold = run_procrop(cropper, paths, tmp / "cold", [cropper_lib.FREE], args.top_k)
      run_procrop(cropper, paths, tmp / "warmup", [target], args.top_k)  # Compiles the rest.
      # The machine's speed drifts (other tenants): each round times the three back to back,
      # and the speed-ups are the medians of the rounds' own ratios.
      rounds = []
      for _ in range(args.rounds):
        smart = run_smartcrop(paths, tmp / "smartcrop", target.ratio)
        free = run_procrop(cropper, paths, tmp / "free", [cropper_lib.FREE], args.top_k)
        fixed = run_procrop(cropper, paths, tmp / "aspect", [target], args.top_k)
        rounds.append((smart, free, fixed))
      smart, free, fixed = np.median(rounds, axis=0)
      model = model_figures(cropper, paths)
      print(json.dumps({
          "photos": len(paths), "model": predictor.source, "canvas_size": size,
          "canvas_layout": cropper.layout, "canvas_shapes": model["buckets"],
          "batch_size": args.batch_size,
          "top_k": args.top_k, "aspect": target.label, "cpu_count": os.cpu_count(),
          "rounds": args.rounds,
          "procrop_free_photos_per_s": round(free, 3),
          "procrop_free_cold_photos_per_s": round(cold, 3),
          "procrop_aspect_photos_per_s": round(fixed, 3),
          "smartcrop_photos_per_s": round(smart, 3),
          "speedup_free_vs_smartcrop": round(float(np.median([f / s for s, f, _ in rounds])), 2),
          "speedup_aspect_vs_smartcrop": round(
              float(np.median([a / s for s, _, a in rounds])), 2),
          "speedups_aspect_by_round": [round(a / s, 2) for s, _, a in rounds],
          "model_gflops_per_photo": round(model["flops"] / 1e9, 3),
          "model_gflops_per_photo_aspect": round(model["flops_aspect"] / 1e9, 3),
          "model_only_photos_per_s": round(1 / model["seconds"], 3),
          "model_gflops_per_s": round(model["flops"] / model["seconds"] / 1e9, 2),
          "matmul_gflops_per_s": round(matmul / 1e9, 2),
          "model_fraction_of_matmul": round(model["flops"] / model["seconds"] / matmul, 3),
      }), flush=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
