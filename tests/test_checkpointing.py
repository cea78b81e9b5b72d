"""Checkpoints of a run (checkpointing.py): how Orbax writes them from one process."""

import jax
from jax.sharding import NamedSharding, PartitionSpec
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from procrop_jax import checkpointing

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def test_one_process_saves_a_replicated_array_without_compiling_and_restores_it(tmp_path):
  assert jax.device_count() == 8  # conftest's host devices: the array has 8 replicas.
  replicated = NamedSharding(jax.make_mesh((8,), ("data",)), PartitionSpec())
  # A shape Orbax would cut into 8 slices (sides divisible as it asks), used by no other test:
  # a compiled slice of it could not come from another test's save.
  state = {"w": jax.device_put(np.arange(40 * 384, dtype=np.float32).reshape(40, 384), replicated)}
  config = ml_collections.ConfigDict({"train": {"keep_checkpoints": 1, "checkpoint_every": 1}})
  manager = checkpointing.create_checkpoint_manager(str(tmp_path), config)
  compiled = []
  def listen(event, seconds, **kwargs):
    del seconds, kwargs
    compiled.append(event)
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave({"step": 1})))
    manager.wait_until_finished()
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert _COMPILE_EVENT not in compiled

  abstract = {"w": jax.ShapeDtypeStruct((40, 384), np.float32, sharding=replicated)}
  restored, meta = checkpointing.restore_state(manager, abstract)
  np.testing.assert_array_equal(restored["w"], state["w"])
  assert restored["w"].sharding == replicated and meta == {"step": 1}
