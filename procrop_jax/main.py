r"""Command-line entry point.

  python -m procrop_jax.main --config=configs/default.py --workdir=workdirs/default [--mode=train]
  procrop crop PATH... [options]        (the installed script; see procrop_jax/crop.py)
  procrop serve [options]               (an HTTP service; the [serve] extra, procrop_jax/serve)

Kept short on purpose: flags, device set-up, and one call into the library. `--mode=eval`,
`crop`, `export` and `refine_cad` may leave out --config: the run's own WORKDIR/config.json is used.
"""

import gc
import os
import shlex
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from procrop_jax import lazy

# The commands' modules load only when their command runs: `procrop crop` defines no absl flags
# and imports no TensorFlow; `procrop serve` needs the [serve] extra.
crop = lazy.module("procrop_jax.crop")
serve_cli = lazy.module("procrop_jax.serve.cli")

# mode -> (module, function); imported lazily so that `--help` and flag errors are instant.
MODES = {
    "train": ("procrop_jax.train", "train_and_evaluate"),
    "eval": ("procrop_jax.modes", "evaluate_checkpoint"),
    "build_index": ("procrop_jax.retrieval.build", "build_index"),
    "crop": ("procrop_jax.modes", "crop_folder"),
    "export": ("procrop_jax.export", "export_run"),
    "refine_cad": ("procrop_jax.refine_cad", "refine_cad"),
}

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")
flags.DEFINE_enum("mode", "train", list(MODES), "What to run.")
config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file (configs/NAME.py).",
    lock_config=True)


def _hide_gpus_from_tensorflow() -> None:
  # TensorFlow only feeds data here; left alone it reserves all GPU memory that JAX needs.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")


def _maybe_initialize_distributed() -> None:
  """Joins a multi-process run when the launcher says there is one.

  Cluster managers that JAX detects (SLURM, Open MPI, TPU pod slices) need no arguments;
  a manual launch sets PROCROP_COORDINATOR, PROCROP_NUM_PROCESSES and PROCROP_PROCESS_ID.
  """
  import jax  # pylint: disable=g-import-not-at-top  (after TensorFlow has let go of the GPUs)
  coordinator = os.environ.get("PROCROP_COORDINATOR")
  if coordinator:
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=int(os.environ["PROCROP_NUM_PROCESSES"]),
        process_id=int(os.environ["PROCROP_PROCESS_ID"]))
  elif any(k in os.environ for k in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_ID")):
    jax.distributed.initialize()


def _available_configs() -> str:
  configs_dir = os.path.join(os.getcwd(), "configs")
  names = sorted(f for f in os.listdir(configs_dir) if f.endswith(".py") and f != "__init__.py"
                ) if os.path.isdir(configs_dir) else []
  return ", ".join(f"configs/{n}" for n in names) or "(no configs/ folder in this directory)"


def _run_has_config() -> bool:
  """True where eval/crop can use the run's own config (training wrote WORKDIR/config.json)."""
  return (FLAGS.mode in ("eval", "crop", "export", "refine_cad") and bool(FLAGS.workdir)
          and os.path.isfile(os.path.join(FLAGS.workdir, "config.json")))


def _parse_flags(argv: list[str]) -> list[str]:
  """Parses flags, turning every user mistake into one line naming the valid choices."""
  try:
    remaining = FLAGS(argv)
    if FLAGS.config is None and not _run_has_config():
      sys.exit(f"error: --config is required. Available configs: {_available_configs()}")
    if FLAGS.config is not None:
      FLAGS.config.get("seed")  # A config that failed to load raises here.
  except flags.UnrecognizedFlagError as e:
    if e.flagname.startswith("config."):
      sys.exit(f"error: --{e.flagname}: the config has no field '{e.flagname[7:]}'.")
    sys.exit(f"error: {e}")
  except flags.Error as e:
    sys.exit(f"error: {e}")
  except (AttributeError, KeyError) as e:
    sys.exit(f"error: a --config.* override names a field the config does not have: {e}")
  except (OSError, ImportError, SyntaxError) as e:
    sys.exit(f"error: could not load --config: {str(e).splitlines()[-1].strip()}\n"
             f"Available configs: {_available_configs()}")
  if not FLAGS.workdir:
    sys.exit("error: --workdir is required (a directory for checkpoints and outputs).")
  return remaining


def _record_command(workdir: str) -> None:
  """Writes the training command to WORKDIR/command.txt (exported models record it)."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "command.txt"), "w") as f:
    f.write(shlex.join(["python", "-m", "procrop_jax.main", *sys.argv[1:]]) + "\n")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  _hide_gpus_from_tensorflow()
  _maybe_initialize_distributed()
  import jax  # pylint: disable=g-import-not-at-top  (after TensorFlow has let go of the GPUs)
  logging.info("JAX process %d/%d, local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  config = FLAGS.config
  if config is None:  # eval/crop of a run that wrote its config (checked in _parse_flags).
    # Each mode imports only its own module (below); this one reads the run's config.
    from procrop_jax import workdir  # pylint: disable=g-import-not-at-top
    config = workdir.read_config(FLAGS.workdir)
  if FLAGS.mode == "train" and jax.process_index() == 0:
    _record_command(FLAGS.workdir)
  module_name, function_name = MODES[FLAGS.mode]
  module = __import__(module_name, fromlist=[function_name])
  try:
    getattr(module, function_name)(config, FLAGS.workdir)
  except getattr(module, "ConfigChangedError", ()) as e:  # Resumed with another model.
    sys.exit(f"error: {e}")


def run() -> None:
  """Console-script entry point (`procrop`; `procrop crop ...` is the cropping command)."""
  try:
    _run()
  finally:
    # The process is ending: the collections at interpreter shutdown walked every object JAX
    # left, 0.15-0.25 s of a warm 1.6 s `procrop crop ONE.jpg`. Frozen (the collector's
    # permanent generation), they are skipped (experiments/README.md, "Start-up").
    gc.freeze()


def _run() -> None:
  if len(sys.argv) > 1 and sys.argv[1] == "crop":
    if "--quiet" not in sys.argv and not {"-h", "--help"} & set(sys.argv):
      print("Starting procrop (JAX) ...", file=sys.stderr, flush=True)  # About a second.
    try:
      sys.exit(crop.main(sys.argv[2:]))
    except KeyboardInterrupt:
      sys.exit("Interrupted.")
  if len(sys.argv) > 1 and sys.argv[1] == "serve":
    try:
      serve_main = serve_cli.main  # Imports the service: Starlette and Uvicorn.
    except ModuleNotFoundError as e:
      sys.exit(f"error: procrop serve needs the [serve] extra ({e}): "
               "pip install 'procrop_jax[serve]'")
    try:
      sys.exit(serve_main(sys.argv[2:]))
    except KeyboardInterrupt:
      sys.exit(0)
  try:
    app.run(main, flags_parser=_parse_flags)
  except KeyboardInterrupt:
    sys.exit("Interrupted.")


if __name__ == "__main__":
  run()
