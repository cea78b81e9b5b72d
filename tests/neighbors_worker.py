"""One process of the multi-process neighbour test (run by tests/test_retrieval_build.py).

  python tests/neighbors_worker.py PROCESS_ID NUM_PROCESSES PORT CONFIG.json CACHE_DIR OUT

CONFIG.json holds the test's data, retrieval and model sections of configs/testing.py (a photo
folder as the dataset, a reference database saved at retrieval.index_dir). Each process loads
that database and runs `precompute_neighbors` on the whole "train" split with the test's cheap
backbone, caching in CACHE_DIR: it computes its own slice, and the processes merge their parts
through the module's real barriers. Each writes OUT.p<PROCESS_ID>.npz (the table it returned)
and OUT.p<PROCESS_ID>.json (its process index and count, and the ids it computed itself).
"""

import json
import sys

# Two hosts of 4 devices: the extractor splits its batch of 8 over them like the test process's 8.
LOCAL_DEVICES = 4


def main() -> None:
  process_id, num_processes, port = (int(a) for a in sys.argv[1:4])
  config_path, cache_dir, out = sys.argv[4:7]
  from tests import process_worker  # pylint: disable=g-import-not-at-top
  jax = process_worker.join(process_id, num_processes, port, local_devices=LOCAL_DEVICES)
  from procrop_jax.retrieval import build  # pylint: disable=g-import-not-at-top
  from procrop_jax.retrieval import neighbors  # pylint: disable=g-import-not-at-top
  from tests.test_retrieval_build import patch_means  # pylint: disable=g-import-not-at-top

  config = process_worker.testing_config(config_path)
  # Records what this process embedded and searched itself; the merge is left as it is.
  computed = []
  compute = neighbors.compute_neighbors

  def recording_compute(*args, **kwargs):
    table = compute(*args, **kwargs)
    computed.extend(table.ids)
    return table
  neighbors.compute_neighbors = recording_compute

  db = build.load_database(config)
  table = neighbors.precompute_neighbors(
      config, db, split="train", cache_dir=cache_dir,
      extractor=build.create_extractor(config, backbone=patch_means))
  table.save(f"{out}.p{process_id}.npz")
  with open(f"{out}.p{process_id}.json", "w") as f:
    json.dump({"process_index": jax.process_index(), "process_count": jax.process_count(),
               "computed": computed}, f)


if __name__ == "__main__":
  main()
