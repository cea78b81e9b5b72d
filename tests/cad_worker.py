"""One process of the multi-process CAD test (run by tests/test_cad_processes.py).

  python tests/cad_worker.py PROCESS_ID NUM_PROCESSES PORT CONFIG.json OUT

CONFIG.json holds the test's data and cad sections of configs/testing.py. Each process joins the
others through jax.distributed and runs `prepare.ensure_dataset` as the trainer does: it
generates its share of the photos into the shared manual_dir, and process 0 builds the dataset.
A manual_dir that contains "{process}" is made per process (storage the hosts do not share).
Each writes OUT.p<PROCESS_ID>.json: its process index and count, the photos it generated
itself, whether it built the dataset, the ids and image digests of the examples it then reads,
or the error that stopped it.
"""

import hashlib
import json
import sys


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def main() -> None:
  process_id, num_processes, port = (int(a) for a in sys.argv[1:4])
  config_path, out = sys.argv[4:6]
  from tests import process_worker  # pylint: disable=g-import-not-at-top
  jax = process_worker.join(process_id, num_processes, port)
  from procrop_jax.cad import generate  # pylint: disable=g-import-not-at-top
  from procrop_jax.datasets import prepare  # pylint: disable=g-import-not-at-top

  config = process_worker.testing_config(config_path)
  config.data.manual_dir = config.data.manual_dir.format(process=process_id)
  # Records what this process generated and built itself; the work is left as it is.
  generated, built = [], []
  make = generate.VariantMaker.__call__

  def recording_make(self, task):
    generated.append(task.photo_id)
    return make(self, task)
  generate.VariantMaker.__call__ = recording_make
  build = prepare._build  # pylint: disable=protected-access

  def recording_build(*args, **kwargs):
    built.append(True)
    return build(*args, **kwargs)
  prepare._build = recording_build  # pylint: disable=protected-access

  result = {"process_index": jax.process_index(), "process_count": jax.process_count()}
  try:
    builder = prepare.ensure_dataset(config.data, config.cad, seed=config.seed)
    source = builder.as_data_source()["train"]
    result["examples"] = {
        _text(source[i]["image_id"]): hashlib.sha256(source[i]["image"].tobytes()).hexdigest()
        for i in range(len(source))}
  except Exception as e:  # pylint: disable=broad-except
    result["error"] = f"{type(e).__name__}: {e}"
  result.update(generated=generated, built=bool(built))
  with open(f"{out}.p{process_id}.json", "w") as f:
    json.dump(result, f)


if __name__ == "__main__":
  main()
