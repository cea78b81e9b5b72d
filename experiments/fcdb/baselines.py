r"""Trivial and heuristic crops on the FCDB validation slice, scored by procrop_jax's metric code.

  python -m experiments.fcdb.baselines [--split='train[85%:]'] [--data_dir=data/tfds]

Prints one JSON line per method (IoU, BDE, photos/s): the whole image, a centred crop of 90% of
each side, the mean expert box of the training slice train[:85%] (a learned prior that looks at
no pixels), and the `smartcrop` package (pip install smartcrop) at 90% of each side. These are
the rows next to the model's in experiments/fcdb/RESULTS.md. Needs FCDB built (data/README.md).
"""

import json
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

import procrop_jax.datasets  # pylint: disable=unused-import  (registers the builders)
from procrop_jax import metrics

_SPLIT = flags.DEFINE_string("split", "train[85%:]", "Split to score (never the test split "
                             "while tuning).")
_PRIOR_SPLIT = flags.DEFINE_string("prior_split", "train[:85%]", "Split the mean box comes from.")
_DATA_DIR = flags.DEFINE_string("data_dir", "data/tfds", "TFDS data directory.")
_SMARTCROP = flags.DEFINE_bool("smartcrop", True, "Also score the smartcrop package.")


def _mean_box(builder, split: str) -> np.ndarray:
  source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
  return np.mean([source[i]["boxes"][0] for i in range(len(source))], axis=0)


def main(argv):
  del argv
  builder = tfds.builder("fcdb", data_dir=_DATA_DIR.value)
  prior = _mean_box(builder, _PRIOR_SPLIT.value)
  methods = {
      "whole image": lambda image, h, w: np.array([0, 0, w, h], np.float64),
      "centred 90%": lambda image, h, w: np.array([0.05 * w, 0.05 * h, 0.95 * w, 0.95 * h]),
      f"mean box of {_PRIOR_SPLIT.value}": lambda image, h, w: prior * [w, h, w, h],
  }
  if _SMARTCROP.value:
    import smartcrop  # pylint: disable=g-import-not-at-top  (a benchmark-only dependency)
    cropper = smartcrop.SmartCrop()

    def smart(image, h, w):
      box = cropper.crop(Image.fromarray(image), int(0.9 * w), int(0.9 * h))["top_crop"]
      return np.array([box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"]],
                      np.float64)
    methods["smartcrop 90%"] = smart

  source = builder.as_data_source(_SPLIT.value)
  protocols = {name: metrics.IoUProtocol(top_ks=(1,)) for name in methods}
  seconds = dict.fromkeys(methods, 0.0)
  for i in range(len(source)):
    example = source[i]
    h, w = (int(v) for v in example["image_size"])
    for name, method in methods.items():
      start = time.perf_counter()
      box = method(example["image"], h, w)
      seconds[name] += time.perf_counter() - start
      protocols[name].add(example["image_id"], box[None], example["boxes_px"], (h, w))
  for name, protocol in protocols.items():
    result = protocol.result()
    print(json.dumps({"method": name, "split": _SPLIT.value, "iou": round(result["iou"], 4),
                      "bde": round(result["bde"], 4), "num_images": result["num_images"],
                      "photos_per_s": round(len(source) / max(seconds[name], 1e-9), 1)}))


if __name__ == "__main__":
  app.run(main)
