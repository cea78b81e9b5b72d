r"""Times building a reference database (main --mode=build_index); prints one JSON line.

  python -m experiments.embedding_benchmark                  # 256 photos, lite0 at 320 px
  python -m experiments.embedding_benchmark --num_photos=64 --image_size=224

Writes `num_photos` random JPEG photos (sides 400-900 px, mixed aspect ratios) to a temporary
folder, prepares the `photo_folder` dataset over them (not timed: that is the dataset build),
then times `retrieval.build.build_index` with the default config (EfficientNet-Lite0 with its
ImageNet weights, 4x4 tokens, 256-d embeddings). Reported:
  photos_per_second          end to end: decode + resize (tf.data), backbone, pooling, writing the
                             shard, PCA, embeddings and the index, per wall second;
  extract_photos_per_second  the jitted extraction pass alone on ready [B, S, S, 3] batches;
  cpu_seconds_per_photo      this process's CPU time per photo end to end (steadier than wall
                             time on a shared machine);
  bytes_per_photo            the database directory's size / photos (tokens, embedding, index, id);
  token_bytes_per_photo      the reference tokens alone (T * C * 2).
"""

import json
import os
import pathlib
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image

_NUM_PHOTOS = flags.DEFINE_integer("num_photos", 256, "Photos in the database.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 320, "config.data.image_size.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "config.retrieval.batch_size.")
_BACKBONE = flags.DEFINE_string("backbone", "lite0", "config.model.backbone.")
_PRETRAINED = flags.DEFINE_bool("pretrained", True, "Load ImageNet weights (speed is the same).")


def _write_photos(folder: pathlib.Path, num: int) -> None:
  rng = np.random.default_rng(0)
  folder.mkdir(parents=True)
  for i in range(num):
    h, w = rng.integers(400, 900, 2)
    small = (rng.random((h // 16 + 1, w // 16 + 1, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(small).resize((int(w), int(h)), Image.Resampling.BILINEAR)
    image.save(folder / f"photo_{i:05d}.jpg", quality=90)


def main(argv):
  del argv
  from configs import default  # pylint: disable=g-import-not-at-top
  from procrop_jax.datasets import prepare  # pylint: disable=g-import-not-at-top
  from procrop_jax.retrieval import build  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    _write_photos(tmp / "photos", _NUM_PHOTOS.value)
    config = default.get_config()
    config.model.backbone = _BACKBONE.value
    config.model.pretrained = _PRETRAINED.value
    config.data.image_size = _IMAGE_SIZE.value
    config.data.data_dir = str(tmp / "tfds")
    config.retrieval.index_dir = str(tmp / "db")
    config.retrieval.database_config = "default"
    config.retrieval.database_manual_dir = str(tmp / "photos")
    config.retrieval.batch_size = _BATCH_SIZE.value
    prepare.ensure_dataset(build.database_data_config(config))

    cpu0, start = time.process_time(), time.perf_counter()
    directory = build.build_index(config, str(tmp / "workdir"))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0

    extractor = build.create_extractor(config)
    s = _IMAGE_SIZE.value
    images = np.random.default_rng(1).random((extractor.batch_size, s, s, 3), np.float32)
    extractor(images)  # Compile.
    reps, t0 = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - t0 < 10.0:
      extractor(images)
      reps += 1
    extract_rate = reps * extractor.batch_size / (time.perf_counter() - t0)

    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    t, c = extractor.token_shape
    print(json.dumps({
        "num_photos": _NUM_PHOTOS.value,
        "backbone": _BACKBONE.value,
        "image_size": s,
        "cpus": os.cpu_count(),
        "photos_per_second": round(_NUM_PHOTOS.value / seconds, 2),
        "extract_photos_per_second": round(extract_rate, 2),
        "cpu_seconds_per_photo": round(cpu / _NUM_PHOTOS.value, 3),
        "bytes_per_photo": round(size / _NUM_PHOTOS.value),
        "token_bytes_per_photo": t * c * 2,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
  app.run(main)
