r"""Train-step figures: parameters, FLOPs per image, compile time, images/s, peak memory.

  python -m experiments.train_benchmark [--image_size=320] [--batch_size=8] [--steps=5]
      [--train_backbone]

Prints one JSON line. Synthetic batches (the input pipeline is measured by data_benchmark.py)
and no retrieval (K = 0: the fusion adds about 5% FLOPs, see experiments/model_stats.py); the
default config's model otherwise.
"""

import json
import resource
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

from configs import default
from procrop_jax import train
from procrop_jax.models import procrop

_IMAGE_SIZE = flags.DEFINE_integer("image_size", 320, "Canvas side S.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps after the first.")
_TRAIN_BACKBONE = flags.DEFINE_bool("train_backbone", False, "Differentiate the backbone too.")


def main(argv):
  del argv
  config = default.get_config()
  config.data.image_size = _IMAGE_SIZE.value
  config.train.batch_size = _BATCH.value
  config.model.num_references = 0
  config.optim.backbone_learning_rate = 1e-5 if _TRAIN_BACKBONE.value else 0.0
  config.model.pretrained = False  # Weights do not change the timing.
  with tempfile.TemporaryDirectory() as workdir:
    trainer = train.Trainer(config, workdir)
    model = trainer.model()
    b, s, m = _BATCH.value, _IMAGE_SIZE.value, config.data.max_boxes
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 0.4, (b, m, 2))
    batch = {"image": rng.random((b, s, s, 3), dtype=np.float32),
             "image_valid_hw": np.ones((b, 2), np.float32),
             "boxes": np.concatenate([xy, xy + 0.5], -1).astype(np.float32),
             "box_scores": np.full((b, m), 5.0, np.float32), "box_mask": np.ones((b, m), bool)}
    device_batch = trainer.device_batch(batch)
    start = time.perf_counter()
    compiled = trainer.train_step.lower(trainer.state, device_batch).compile()
    compile_s = time.perf_counter() - start
    state, metrics = compiled(trainer.state, device_batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(_STEPS.value):
      state, metrics = compiled(state, device_batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / _STEPS.value
    print(json.dumps({
        "image_size": s, "batch_size": b, "train_backbone": _TRAIN_BACKBONE.value,
        "num_references": 0, "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "params_millions": round(procrop.param_count(model) / 1e6, 3),
        "gflops_per_image_inference": round(procrop.flops_per_image(model) / 1e9, 3),
        "compile_seconds": round(compile_s, 1), "step_seconds": round(step_s, 3),
        "images_per_second": round(b / step_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }), flush=True)


if __name__ == "__main__":
  app.run(main)
