"""Meshes, the rule table that shards parameters, and batches placed on the mesh."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P
import pytest

from procrop_jax import sharding

RULES = ((r"backbone/.*", ()), (r".*kernel", (None, "model")))


def test_mesh_fills_the_minus_one_axis_with_the_remaining_devices():
  mesh = sharding.create_mesh((-1, 2), ("data", "model"))
  assert dict(mesh.shape) == {"data": jax.device_count() // 2, "model": 2}


@pytest.mark.parametrize("shape, axes, message", [
    ((3, 1), ("data", "model"), "needs 3 devices"),
    ((-1, -1), ("data", "model"), "at most one -1"),
    ((-1,), ("batch",), "must include 'data'"),
    ((-1, 3), ("data", "model"), "not divisible by 3"),
])
def test_bad_mesh_configs_are_refused_clearly(shape, axes, message):
  with pytest.raises(ValueError, match=message):
    sharding.create_mesh(shape, axes)


def test_rules_split_head_kernels_and_replicate_the_rest():
  mesh = sharding.create_mesh((4, 2), ("data", "model"))
  params = {
      "backbone": {"conv": {"kernel": jnp.zeros((3, 3, 8, 16))}},
      "head": {"dense": {"kernel": jnp.zeros((8, 16)), "bias": jnp.zeros((16,))},
               "odd": {"kernel": jnp.zeros((8, 5))}},  # 5 does not divide by 2: replicated.
  }
  shardings = sharding.param_shardings(params, mesh, RULES)
  assert shardings["backbone"]["conv"]["kernel"].spec == P()
  assert shardings["head"]["dense"]["kernel"].spec == P(None, "model")
  assert shardings["head"]["dense"]["bias"].spec == P()
  assert shardings["head"]["odd"]["kernel"].spec == P()
  placed = jax.device_put(params["head"]["dense"]["kernel"], shardings["head"]["dense"]["kernel"])
  assert placed.addressable_shards[0].data.shape == (8, 8)


def test_trailing_spec_applies_to_conv_output_channels():
  mesh = sharding.create_mesh((4, 2), ("data", "model"))
  spec = sharding.spec_for("head/conv/kernel", (1, 1, 8, 16), mesh, RULES)
  assert spec == P(None, None, None, "model")


def test_to_global_arrays_shards_the_batch():
  mesh = jax.make_mesh((8,), ("data",))
  batch = {
      "image": np.zeros((8, 4, 4, 3), np.float32),
      "box_mask": np.ones((8, 2), bool),
      "image_id": np.array([b"a"] * 8, object),
  }
  arrays = sharding.to_global_arrays(batch, mesh)
  assert set(arrays) == {"image", "box_mask"}
  assert arrays["image"].shape == (8, 4, 4, 3)
  assert arrays["image"].sharding.spec == jax.sharding.PartitionSpec("data")
  assert len(arrays["image"].addressable_shards) == 8
