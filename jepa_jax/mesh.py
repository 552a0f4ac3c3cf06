"""Device mesh and the logical-axis -> mesh-axis shardings of the train state.

One vocabulary: mesh axes ('data', 'fsdp', 'model'); parameters and activations carry
logical names that the config's `sharding_rules` map onto them, so data-parallel,
FSDP and tensor-parallel are config changes.
"""
import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(sizes: dict, num_devices: int) -> tuple[int, ...]:
  """Resolve -1 (fill with the remaining devices) and check the product."""
  shape = [int(sizes[a]) for a in AXES]
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh {dict(zip(AXES, shape))} cannot fill {num_devices} devices")
    shape[shape.index(-1)] = num_devices // known
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f"mesh {dict(zip(AXES, shape))} needs {int(np.prod(shape))} devices, "
                     f"{num_devices} are available; set mesh sizes (or -1 to fill)")
  return tuple(shape)


def make_mesh(mesh_config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  shape = mesh_shape(mesh_config, jax.device_count())
  # Auto axes: Linen's logical partitioning relies on the compiler propagating shardings.
  return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def rules(config: ml_collections.ConfigDict) -> tuple:
  return tuple((name, tuple(m) if isinstance(m, list) else m)
               for name, m in config.sharding_rules)


def state_shardings(boxed_abstract_state, mesh, logical_rules):
  """NamedShardings for a state whose parameters (and their optimizer copies) are boxed
  with logical names; every other leaf (counters, step) is replicated."""
  specs = nn.get_partition_spec(boxed_abstract_state)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, logical_rules)
  return jax.tree.map(lambda s: s if isinstance(s, NamedSharding) else NamedSharding(mesh, P()),
                      shardings, is_leaf=lambda s: s is None or isinstance(s, NamedSharding))


def batch_sharding(mesh) -> NamedSharding:
  """Examples split over the data and fsdp axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def strip_boxes(tree):
  """Remove logical-axis boxes without applying sharding constraints (for abstract
  shapes outside a trace; inside jit, nn.unbox also constrains the values)."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree,
                      is_leaf=is_box)
