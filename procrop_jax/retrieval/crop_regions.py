r"""Professional compositions from a labelled split: its expert crop regions as a photo folder.

  python -m procrop_jax.retrieval.crop_regions --config=configs/fcdb_cpu.py \
      --split='train[:85%]' --out=data/manual/fcdb_crops

An expert's crop of a photo is a professionally composed photo. This writes the best-scored box
of every example of `split` (FCDB: the one expert crop) as `<image_id>` (same file name as its
source photo), the layout `photo_folder` reads as a retrieval database
(config.retrieval.database_manual_dir). Because a crop keeps its photo's id, a training example
never retrieves its own crop (`database.exclusion_ids`). Use only the training slice: crops of
the validation slice would hand the model its answers.

Existing files are kept (a re-run writes only what is missing); each file is written to a
temporary name and renamed, so an interrupted run leaves no half-written JPEG.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds
import tqdm

from procrop_jax import input_pipeline
from procrop_jax import photos
from procrop_jax.datasets import prepare



def export_crop_regions(data_config: ml_collections.ConfigDict, split: str,
                        out_dir: str | os.PathLike[str]) -> dict[str, int]:
  """Writes the best crop of every example of `split` into `out_dir`; returns counts."""
  builder = input_pipeline.load_builder(input_pipeline.DataSettings.from_config(data_config))
  source = builder.as_data_source(split)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  counts = {"written": 0, "kept": 0, "no_box": 0}
  for i in tqdm.trange(len(source), desc=f"crop regions -> {out}", unit="photo"):
    example = source[i]
    image_id = example["image_id"]
    image_id = image_id.decode() if isinstance(image_id, bytes) else str(image_id)
    name = pathlib.PurePosixPath(image_id).name
    target = (out / name).with_suffix(".jpg")
    if target.exists():
      counts["kept"] += 1
      continue
    boxes, scores = np.asarray(example["boxes_px"]), np.asarray(example["box_scores"])
    if not len(boxes):
      counts["no_box"] += 1
      continue
    x1, y1, x2, y2 = np.round(boxes[int(np.argmax(scores))]).astype(int)
    crop = example["image"][max(y1, 0):max(y2, y1 + 1), max(x1, 0):max(x2, x1 + 1)]
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{target.name}.", suffix=".jpg")
    os.close(fd)
    try:
      Image.fromarray(crop).save(tmp, format="JPEG", quality=photos.JPEG_QUALITY)
      os.replace(tmp, target)
    finally:
      if os.path.exists(tmp):
        os.unlink(tmp)
    counts["written"] += 1
  logging.info("Crop regions of %s %s in %s: %s", builder.name, split, out, counts)
  return counts


def define_flags():
  """The command's flags (not at import: tests import this module beside other commands)."""
  config_flags.DEFINE_config_file("config", None, "The experiment config (its data.*).")
  flags.DEFINE_string("split", None, "Split whose crops to write (a training slice).")
  flags.DEFINE_string("out", None, "Output folder.")


def main(argv):
  del argv
  f = flags.FLAGS
  if f.config is None or not f.split or not f.out:
    raise app.UsageError("--config, --split and --out are required.")
  prepare.ensure_dataset(f.config.data, f.config.cad, seed=f.config.seed)
  print(export_crop_regions(f.config.data, f.split, f.out))


if __name__ == "__main__":
  define_flags()
  app.run(main)
