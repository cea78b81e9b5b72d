r"""Times the EfficientNet-Lite backbone's forward pass; prints one JSON line per setting.

  python -m experiments.backbone_benchmark                          # lite0, 224/320, batch 1/8
  python -m experiments.backbone_benchmark --variants=lite0,lite2 --sizes=320 --batches=8

Each setting jits the feature extractor (stride8/16/32 outputs, inference mode, no classifier),
compiles and runs it `warmup` times, then times repeated calls (each waited on with
block_until_ready) until `min_seconds` have passed and at least `min_iters` calls were made.
Reported: the median and minimum wall milliseconds per batch, the median per image, images/s,
the CPU time per image summed over this process's threads (the steadier figure when other
processes share the CPU), the compile time, the device, and the 1-minute load average.
Weights are random: speed does not depend on them.
"""

import json
import os
import time

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from procrop_jax.models import efficientnet_lite

_VARIANTS = flags.DEFINE_list("variants", ["lite0"], "Backbone variants.")
_SIZES = flags.DEFINE_list("sizes", ["224", "320"], "Square input sizes in pixels.")
_BATCHES = flags.DEFINE_list("batches", ["1", "8"], "Batch sizes.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls after compilation.")
_MIN_ITERS = flags.DEFINE_integer("min_iters", 5, "Fewest timed calls per setting.")
_MIN_SECONDS = flags.DEFINE_float("min_seconds", 3.0, "Least timed seconds per setting.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Computation dtype.")


def benchmark(variant: str, size: int, batch: int) -> dict:
  """Times one (variant, size, batch) setting."""
  model = efficientnet_lite.EfficientNetLite(variant, rngs=nnx.Rngs(0),
                                             dtype=jnp.dtype(_DTYPE.value))
  graphdef, state = nnx.split(model)

  # A pure function of the state: no NNX graph traversal in the timed Python path.
  @jax.jit
  def forward(state, images):
    return nnx.merge(graphdef, state)(images, train=False)

  images = jax.random.uniform(jax.random.key(0), (batch, size, size, 3), jnp.float32)
  start = time.perf_counter()
  compiled = forward.lower(state, images).compile()
  compile_s = time.perf_counter() - start
  for _ in range(_WARMUP.value):
    jax.block_until_ready(compiled(state, images))
  times = []
  start, cpu_start = time.perf_counter(), time.process_time()
  while len(times) < _MIN_ITERS.value or time.perf_counter() - start < _MIN_SECONDS.value:
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(state, images))
    times.append(time.perf_counter() - t0)
  cpu_per_call = (time.process_time() - cpu_start) / len(times)
  median = float(np.median(times))
  return {
      "variant": variant, "image_size": size, "batch": batch, "dtype": _DTYPE.value,
      "ms_per_batch": round(1000 * median, 2),
      "ms_per_batch_min": round(1000 * min(times), 2),
      "ms_per_image": round(1000 * median / batch, 2),
      "images_per_s": round(batch / median, 1),
      "cpu_ms_per_image": round(1000 * cpu_per_call / batch, 2),
      "iters": len(times), "compile_s": round(compile_s, 1),
      "device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
      "load_avg_1m": round(os.getloadavg()[0], 2),
  }


def main(argv):
  del argv
  for variant in _VARIANTS.value:
    for size in map(int, _SIZES.value):
      for batch in map(int, _BATCHES.value):
        print(json.dumps(benchmark(variant, size, batch)), flush=True)


if __name__ == "__main__":
  app.run(main)
