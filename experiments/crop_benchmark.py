r"""`procrop crop` against smartcrop on the same photos, in the same run: photos/s end to end.

  python -m experiments.crop_benchmark [--photos DIR] [--limit N] [--aspect 1:1]
      [--workdir DIR | --model NAME_OR_PATH | --config configs/fcdb_cpu.py]

Measures, on the first N photos of DIR (default: the FCDB images in ../shared/data/fcdb/data):

  procrop_free_photos_per_s    `procrop crop` free crops, decode to written results (crops,
                               results.jsonl, index.html), after a warm-up that compiles
  procrop_aspect_photos_per_s  the same with one --aspect
  smartcrop_photos_per_s       the smartcrop package (pip install -e '.[bench]'): decode, crop of
                               that aspect, write the crop
  model_gflops_per_photo       XLA's FLOP count of one forward pass (free; and with the aspect's
                               candidates), retrieval not included
  model_gflops_per_s           FLOP/s of the model alone on full batches, against
  matmul_gflops_per_s          a 2048 x 2048 float32 matrix product timed in the same run

--config builds the model of a config with its ImageNet backbone and a random head: the timing
is that of a trained model of that config, the crops are meaningless. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import tempfile
import time

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


def build_cropper(args):
  from procrop_jax import crop  # pylint: disable=g-import-not-at-top
  from procrop_jax import inference  # pylint: disable=g-import-not-at-top
  if args.workdir:
    return crop.Cropper.from_workdir(args.workdir, batch_size=args.batch_size)
  if args.config:
    import importlib.util  # pylint: disable=g-import-not-at-top
    from procrop_jax import model_zoo  # pylint: disable=g-import-not-at-top
    spec = importlib.util.spec_from_file_location("bench_config", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    predictor = inference.Predictor(model_zoo.create_model(config), config, source=args.config)
    return crop.Cropper(predictor, batch_size=args.batch_size)
  return crop.Cropper.pretrained(args.model, batch_size=args.batch_size)


def run_procrop(cropper, paths, out: pathlib.Path, targets) -> float:
  from procrop_jax import crop  # pylint: disable=g-import-not-at-top
  from procrop_jax import photos  # pylint: disable=g-import-not-at-top
  inputs, problems = photos.list_inputs([str(p) for p in paths])
  shutil.rmtree(out, ignore_errors=True)
  summary = crop.run(inputs, cropper, out_dir=out, targets=targets, top_k=3, problems=problems,
                     progress=False)
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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--photos", default=str(DEFAULT_PHOTOS))
  parser.add_argument("--limit", type=int, default=50)
  parser.add_argument("--aspect", default="1:1")
  parser.add_argument("--batch-size", type=int, default=8)
  source = parser.add_mutually_exclusive_group()
  source.add_argument("--workdir")
  source.add_argument("--model")
  source.add_argument("--config")
  args = parser.parse_args()

  import numpy as np  # pylint: disable=g-import-not-at-top
  from procrop_jax import aspect  # pylint: disable=g-import-not-at-top
  from procrop_jax import crop  # pylint: disable=g-import-not-at-top
  from procrop_jax import photos  # pylint: disable=g-import-not-at-top
  from procrop_jax.models import procrop  # pylint: disable=g-import-not-at-top
  paths = sorted(p for p in pathlib.Path(args.photos).rglob("*")
                 if p.suffix.lower() in photos.IMAGE_SUFFIXES)[:args.limit]
  if not paths:
    raise SystemExit(f"no photos in {args.photos}")
  target = crop.parse_aspect(args.aspect)
  cropper = build_cropper(args)
  predictor = cropper.predictor
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="crop_benchmark_"))
  try:
    # Warm-up: compiles both forward passes (and builds any reference database).
    for targets in ([crop.FREE], [target]):
      run_procrop(cropper, paths[:2], tmp / "warmup", targets)
    free = run_procrop(cropper, paths, tmp / "free", [crop.FREE])
    aspect = run_procrop(cropper, paths, tmp / "aspect", [target])
    smart = run_smartcrop(paths, tmp / "smartcrop", target.ratio)

    model = predictor.model()
    flops_free = procrop.flops_per_image(model)
    flops_aspect = procrop.flops_per_image(model, num_query_boxes=aspect.first_pass_count(model.num_queries))
    s, b = predictor.image_size, cropper.batch_size
    images = np.random.default_rng(0).uniform(0, 1, (b, s, s, 3)).astype(np.float32)
    valid = np.ones((b, 2), np.float32)
    predictor.predict(images, valid)
    model_seconds = _timed(lambda: predictor.predict(images, valid), repeats=3) / b
    matmul = matmul_flops_per_second()
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  figures = {
      "photos": len(paths), "model": predictor.source, "image_size": predictor.image_size,
      "batch_size": b, "aspect": target.label, "cpu_count": os.cpu_count(),
      "procrop_free_photos_per_s": round(free, 3),
      "procrop_aspect_photos_per_s": round(aspect, 3),
      "smartcrop_photos_per_s": round(smart, 3),
      "speedup_free_vs_smartcrop": round(free / smart, 2),
      "speedup_aspect_vs_smartcrop": round(aspect / smart, 2),
      "model_gflops_per_photo": round(flops_free / 1e9, 3),
      "model_gflops_per_photo_aspect": round(flops_aspect / 1e9, 3),
      "model_only_photos_per_s": round(1 / model_seconds, 3),
      "model_gflops_per_s": round(flops_free / model_seconds / 1e9, 2),
      "matmul_gflops_per_s": round(matmul / 1e9, 2),
      "model_fraction_of_matmul": round(flops_free / model_seconds / matmul, 3),
  }
  print(json.dumps(figures), flush=True)


if __name__ == "__main__":
  main()
