r"""Trivial and heuristic crops on the FCDB validation slice, scored by procrop_jax's metric code.

  python -m experiments.fcdb.baselines [--split='train[85%:]'] [--data_dir=data/tfds]

Prints one JSON line per method (IoU, BDE, photos/s): the whole image, a centred crop of 90% of
each side, the mean expert box of the training slice train[:85%] (a learned prior that looks at
no pixels), and the `smartcrop` package (pip install smartcrop) at 90% of each side. Methods told
the expert crop's size (the aspect-conditioned protocol's baselines): a centred box of that size,
the largest centred box of its ratio, and smartcrop asked for that width and height. And the rated crop pairs' baseline: prefer the
larger crop. These are the rows next to the model's in experiments/fcdb/RESULTS.md. Needs FCDB
built (data/README.md).
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

  # Told the expert crop's size (gt: its pixel box).
  def centred_true_size(image, h, w, gt):
    bw, bh = gt[2] - gt[0], gt[3] - gt[1]
    return np.array([(w - bw) / 2, (h - bh) / 2, (w + bw) / 2, (h + bh) / 2])
  methods["centred, told the true size"] = centred_true_size

  def centred_true_ratio(image, h, w, gt):  # The largest box of the expert crop's ratio.
    ratio = (gt[2] - gt[0]) / max(gt[3] - gt[1], 1e-9)
    bw = min(w, h * ratio)
    return centred_true_size(image, h, w, np.array([0, 0, bw, bw / ratio]))
  methods["centred, largest box of the true ratio"] = centred_true_ratio
  if _SMARTCROP.value:
    def smart_true_size(image, h, w, gt):
      box = cropper.crop(Image.fromarray(image), max(int(round(gt[2] - gt[0])), 1),
                         max(int(round(gt[3] - gt[1])), 1))["top_crop"]
      return np.array([box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"]],
                      np.float64)
    methods["smartcrop, told the true size"] = smart_true_size

  source = builder.as_data_source(_SPLIT.value)
  protocols = {name: metrics.IoUProtocol(top_ks=(1,)) for name in methods}
  pairs = metrics.PairwiseProtocol()
  seconds = dict.fromkeys(methods, 0.0)
  for i in range(len(source)):
    example = source[i]
    h, w = (int(v) for v in example["image_size"])
    gt = example["boxes_px"][0].astype(np.float64)
    for name, method in methods.items():
      start = time.perf_counter()
      told = "true" in name  # Told the expert crop's size or ratio.
      box = method(example["image"], h, w, gt) if told else method(example["image"], h, w)
      seconds[name] += time.perf_counter() - start
      protocols[name].add(example["image_id"], box[None], example["boxes_px"], (h, w))
    if "pair_boxes" in example and len(example["pair_boxes"]):
      votes = example["pair_votes"].astype(np.float64)
      boxes = example["pair_boxes"] * [w, h, w, h]
      first_wins = votes[:, 0] >= votes[:, 1]
      win = np.where(first_wins[:, None], boxes[:, 0], boxes[:, 1])
      lose = np.where(first_wins[:, None], boxes[:, 1], boxes[:, 0])
      area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
      margins = np.abs(votes[:, 0] - votes[:, 1]) / np.maximum(votes.sum(1), 1)
      pairs.add(example["image_id"], area(win), area(lose), margins)
  for name, protocol in protocols.items():
    result = protocol.result()
    print(json.dumps({"method": name, "split": _SPLIT.value, "iou": round(result["iou"], 4),
                      "bde": round(result["bde"], 4), "num_images": result["num_images"],
                      "photos_per_s": round(len(source) / max(seconds[name], 1e-9), 1)}))
  if pairs.per_image:
    result = pairs.result()
    print(json.dumps({"method": "prefer the larger crop", "split": _SPLIT.value,
                      **{k: round(result[k], 4) for k in ("pair_acc", "pair_acc_strong")},
                      "num_pairs": result["num_pairs"]}))


if __name__ == "__main__":
  app.run(main)
