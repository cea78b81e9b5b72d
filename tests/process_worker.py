"""What every worker process of a multi-process test does first (tests/*_worker.py)."""

import json
import os


def join(process_id: int, num_processes: int, port: int, local_devices: int | None = None):
  """Joins the test's jax.distributed run on CPU (gloo collectives); returns the jax module.

  Call before anything imports JAX: the device count is read when its backend starts.
  """
  if local_devices:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
  os.environ["CUDA_VISIBLE_DEVICES"] = ""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"localhost:{port}", num_processes=num_processes,
                             process_id=process_id)
  return jax


def testing_config(config_path: str):
  """configs/testing.py with the sections the test wrote to CONFIG.json."""
  from configs import testing  # pylint: disable=g-import-not-at-top
  config = testing.get_config()
  with open(config_path) as f:
    for section, values in json.load(f).items():
      config[section].update(values)
  return config
