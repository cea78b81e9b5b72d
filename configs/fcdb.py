r"""Supervised training on FCDB (Flickr Cropping Dataset): the GPU/TPU recipe.

Put the dataset in data/manual/fcdb (see data/README.md), then, on one accelerator host:

  python -m procrop_jax.main --config=configs/fcdb.py --workdir=workdirs/fcdb

What it runs: 320 px, the backbone fine-tuned (ImageNet Lite0), K = 10 references from the
professional-photo database (build it once with --mode=build_index, README "Scaling out"),
20,000 steps of a global batch of 16 with evaluation every 1,000.

Feeding: the first run decodes the training photos once into the canvas cache
(procrop_jax/canvas_cache.py, DATA_DIR/canvas_cache, 0.64 GB for FCDB at 320 px); training
batches are copies out of it and the augmentation runs on the devices (device_augment.py). On
this project's 2-core machine the host delivers 4,563 examples/s this way (tf.data: 322), above
the ~1,500 images/s one H200 trained at (experiments/README.md).

Batch per host and scaling: 16 photos per step fit any single GPU or TPU host; the whole batch
is split over the host's devices (`config.mesh.shape` = (-1, 1), data parallel). With more hosts
or devices, keep 16 photos per device and scale the learning rates by the square root of the
batch, in as many epochs: configs/fcdb_gpu8.py (one host, 8 GPUs, batch 128),
configs/fcdb_gpu_multihost.py (N GPU hosts, 256) and configs/fcdb_tpu_v5e.py (v5litepod-16,
256) do exactly that; each host reads its own slice of the photos.

From the shipped model rather than ImageNet (experiments/fcdb/RESULTS.md, run 21: the whole
model fine-tuned on one H200), the shipped model's fields come with its config:

  python -m procrop_jax.main --config=configs/fcdb_pro_cpu.py --workdir=workdirs/fcdb_ft \
      --config.train.init_from=fcdb_lite0 --config.optim.backbone_learning_rate=4e-5 \
      --config.data.feature_cache.views=0 --config.data.canvas_cache.enabled=True

Tuning uses a validation slice of the training split (train[85%:]); the official test split is
evaluated too when its annotation file is present, and is meant for the final, blind figure.
"""

import ml_collections

from configs import benchmark


def get_config() -> ml_collections.ConfigDict:
  config = benchmark.get_config()
  config.data.dataset = "fcdb"
  config.data.builder_config = ""
  config.data.manual_dir = "data/manual/fcdb"
  config.data.train_split = "train[:85%]"
  config.data.eval_split = "train[85%:]"
  config.data.max_boxes = 4  # FCDB has one expert crop per image.
  # Decode once, augment on the devices: a host cannot decode and augment photos as fast as its
  # accelerators train on them (the docstring has the figures).
  config.data.canvas_cache.enabled = True
  config.eval.best_benchmark = "fcdb_val"
  config.eval.best_metric = "iou"
  config.eval.benchmarks.fcdb_val = dict(
      dataset="fcdb", builder_config="", split="train[85%:]", manual_dir="data/manual/fcdb",
      protocols="iou", max_boxes=4)
  config.eval.benchmarks.fcdb_test = dict(
      dataset="fcdb", builder_config="", split="test", manual_dir="data/manual/fcdb",
      protocols="iou", max_boxes=4, optional=True)
  return config
