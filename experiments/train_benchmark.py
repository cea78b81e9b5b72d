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

def define_flags():
  """The command's flags (not at import: step_profile.py imports the helpers below)."""
  flags.DEFINE_integer("image_size", 320, "Canvas side S.")
  flags.DEFINE_integer("batch_size", 8, "Global batch size.")
  flags.DEFINE_integer("steps", 5, "Timed steps after the first.")
  flags.DEFINE_bool("train_backbone", False, "Differentiate the backbone too.")


def timing_config(image_size: int, batch_size: int, train_backbone: bool):
  """The default config's model at a canvas size and batch, without retrieval or pretrained
  weights (weights do not change the timing), the backbone frozen or trained."""
  config = default.get_config()
  config.data.image_size = image_size
  config.train.batch_size = batch_size
  config.model.num_references = 0
  config.optim.backbone_learning_rate = 1e-5 if train_backbone else 0.0
  config.model.pretrained = False
  return config


def synthetic_batch(config, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """A training batch of random images with one valid box per slot."""
  b, s, m = config.train.batch_size, config.data.image_size, config.data.max_boxes
  xy = rng.uniform(0, 0.4, (b, m, 2))
  return {"image": rng.random((b, s, s, 3), dtype=np.float32),
          "image_valid_hw": np.ones((b, 2), np.float32),
          "boxes": np.concatenate([xy, xy + 0.5], -1).astype(np.float32),
          "box_scores": np.full((b, m), 5.0, np.float32), "box_mask": np.ones((b, m), bool)}


def main(argv):
  del argv
  f = flags.FLAGS
  config = timing_config(f.image_size, f.batch_size, f.train_backbone)
  with tempfile.TemporaryDirectory() as workdir:
    trainer = train.Trainer(config, workdir)
    model = trainer.model()
    b, s = f.batch_size, f.image_size
    batch = synthetic_batch(config, np.random.default_rng(0))
    device_batch = trainer.device_batch(batch)
    start = time.perf_counter()
    compiled = trainer.train_step.lower(trainer.state, device_batch).compile()
    compile_s = time.perf_counter() - start
    state, metrics = compiled(trainer.state, device_batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(f.steps):
      state, metrics = compiled(state, device_batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / f.steps
    print(json.dumps({
        "image_size": s, "batch_size": b, "train_backbone": f.train_backbone,
        "num_references": 0, "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "params_millions": round(procrop.param_count(model) / 1e6, 3),
        "gflops_per_image_inference": round(procrop.flops_per_image(model) / 1e9, 3),
        "compile_seconds": round(compile_s, 1), "step_seconds": round(step_s, 3),
        "images_per_second": round(b / step_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }), flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
