"""Device meshes and parameter shardings, both from config.

The mesh has a "data" axis (the batch is split over it) and a "model" axis (large parameter
matrices are split over it). Which parameters are split, and how, is a small table of rules in
`config.mesh.param_rules`: `(regex over the parameter path, partition spec)`, first match wins.
A spec names the *trailing* dimensions of a parameter (it is padded with None on the left), so
`(None, "model")` splits the output features of a Dense kernel and of an HWIO conv kernel alike.
A rule whose split does not divide the dimension falls back to replication for that parameter.

`put` places host values on the mesh, also across processes; `to_global_arrays` assembles each
host's local batch into global arrays split over the data axis.
"""

from collections.abc import Mapping, Sequence
import math
import re
from typing import Any

from absl import logging
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
# Batch keys that stay on the host (strings): never placed on the mesh.
HOST_ONLY_KEYS = frozenset({"image_id"})


def create_mesh(shape: Sequence[int], axes: Sequence[str],
                devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a mesh over all devices (of all processes); one -1 in `shape` takes the rest."""
  devices = list(devices if devices is not None else jax.devices())
  shape = list(shape)
  if len(shape) != len(axes):
    raise ValueError(f"config.mesh.shape {tuple(shape)} and config.mesh.axes {tuple(axes)} "
                     "must have the same length.")
  if DATA_AXIS not in axes:
    raise ValueError(f"config.mesh.axes {tuple(axes)} must include {DATA_AXIS!r}.")
  if shape.count(-1) > 1:
    raise ValueError(f"config.mesh.shape {tuple(shape)} may hold at most one -1.")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"config.mesh.shape {tuple(shape)}: {len(devices)} devices are not "
                       f"divisible by {known}.")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(f"config.mesh.shape {tuple(shape)} needs {math.prod(shape)} devices; "
                     f"{len(devices)} are available.")
  # Auto axes: shardings are given at jit boundaries and XLA propagates them inside.
  return jax.make_mesh(tuple(shape), tuple(axes), axis_types=(AxisType.Auto,) * len(axes),
                       devices=devices)


def path_to_string(path: tuple[Any, ...]) -> str:
  """`('head', 'layers', 0, 'kernel')`-style key paths as 'head/layers/0/kernel'.

  The `.value` attribute that NNX Variables add at the end of a path is left out.
  """
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    path = path[:-1]
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        key = getattr(key, attr)
        break
    parts.append(str(key))
  return "/".join(parts)


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh,
             rules: Sequence[tuple[str, Sequence[str | None]]]) -> P:
  """The partition spec of one parameter: the first matching rule that fits its shape."""
  for pattern, trailing_spec in rules:
    if not re.fullmatch(pattern, path):
      continue
    trailing_spec = tuple(trailing_spec)
    if all(axis is None for axis in trailing_spec) or len(trailing_spec) > len(shape):
      return P()
    spec = (None,) * (len(shape) - len(trailing_spec)) + trailing_spec
    for dim, axis in zip(shape, spec):
      if axis is not None and dim % mesh.shape[axis]:
        return P()
    return P(*spec)
  return P()


def param_shardings(tree: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, Sequence[str | None]]]) -> Any:
  """NamedShardings for every array leaf of `tree` (arrays or ShapeDtypeStructs)."""
  def one(path, leaf):
    return NamedSharding(mesh, spec_for(path_to_string(path), tuple(leaf.shape), mesh, rules))
  shardings = jax.tree_util.tree_map_with_path(one, tree)
  num_split = sum(s.spec != P() for s in jax.tree.leaves(shardings))
  logging.info("Parameter sharding: %d of %d arrays split over the mesh %s.", num_split,
               len(jax.tree.leaves(shardings)), dict(mesh.shape))
  return shardings


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis, the rest replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def _put_leaf(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  # Across processes device_put cannot target other hosts' devices: every process holds the
  # same host value (same seed, same weights) and contributes its own shards of it.
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = _put_leaf(jax.random.key_data(x), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put(tree: Any, shardings: Any) -> Any:
  """Places a host-identical pytree on the mesh (one sharding, or a tree of them)."""
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x: _put_leaf(x, shardings), tree)
  return jax.tree.map(_put_leaf, tree, shardings)


def on_mesh(tree: Any, mesh: Mesh, fallback: NamedSharding) -> Any:
  """Leaves whose sharding XLA did not tie to `mesh` (e.g. step counts) get `fallback`."""
  def place(x):
    placed = isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh
    return x if placed else put(x, fallback)
  return jax.tree.map(place, tree)


def to_global_arrays(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each host's local batch into global arrays split over the mesh's data axis.

  Host-only keys (`HOST_ONLY_KEYS`, e.g. image_id) are dropped.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items() if k not in HOST_ONLY_KEYS}
