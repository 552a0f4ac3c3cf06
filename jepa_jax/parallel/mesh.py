"""Device mesh and the logical-axis -> mesh-axis shardings of the train state.

One vocabulary: mesh axes ('data', 'fsdp', 'model'); parameters and activations carry
logical names that the config's `sharding_rules` map onto them, so data-parallel,
FSDP and tensor-parallel are config changes. At start-up, `check_replicated` names the
large train-state leaves that no rule splits although the mesh has fsdp or model > 1.
"""
import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jepa_jax.config import fields
from jepa_jax.parallel import distributed

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


def make_mesh(mesh_config: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """The config's mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_config, len(devices))
  # Auto axes: Linen's logical partitioning relies on the compiler propagating shardings.
  return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES),
                       devices=devices)


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


@dataclasses.dataclass(frozen=True)
class ReplicatedLeaf:
  path: str                # 'params/encoder/patch_embed/kernel'
  shape: tuple[int, ...]
  mib: float


def splits_parameters(mesh) -> bool:
  """Whether the mesh has an axis meant to split parameters (fsdp or model > 1)."""
  return mesh.shape["fsdp"] > 1 or mesh.shape["model"] > 1


def replicated_leaves(abstract_state, shardings, mesh, min_mib: float) -> list[ReplicatedLeaf]:
  """Leaves over `min_mib` MiB that every device holds whole although `mesh` splits
  parameters: memory FSDP / tensor parallelism does not save, usually a parameter whose
  logical axes no sharding rule maps to a mesh axis (or that has no logical names)."""
  if not splits_parameters(mesh):
    return []
  leaves = zip(jax.tree_util.tree_leaves_with_path(abstract_state), jax.tree.leaves(shardings),
               strict=True)
  found = (ReplicatedLeaf(jax.tree_util.keystr(path, simple=True, separator="/"),
                          tuple(leaf.shape),
                          int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize / 2**20)
           for (path, leaf), sharding in leaves if sharding.is_fully_replicated)
  return [x for x in found if x.mib > min_mib]


def _mesh_text(mesh) -> str:
  return " ".join(f"{a}={mesh.shape[a]}" for a in AXES)


def check_replicated(check: ml_collections.ConfigDict, abstract_state, shardings, mesh) -> None:
  """The config's `sharding_check` at start-up: one warning line (from process 0) per
  large replicated leaf, or a ConfigError naming them when `check.fail`."""
  leaves = replicated_leaves(abstract_state, shardings, mesh, check.replicated_mib)
  if not leaves:
    return
  fix = ("map one of its logical axes to 'fsdp' or 'model' in config.sharding_rules "
         "(or give the parameter logical names)")
  if check.fail:
    named = ", ".join(f"{x.path} {x.shape}" for x in leaves[:8])
    more = f" and {len(leaves) - 8} more" if len(leaves) > 8 else ""
    raise fields.ConfigError(
        f"sharding_check: {len(leaves)} leaves over sharding_check.replicated_mib="
        f"{check.replicated_mib} MiB are replicated on every device of mesh "
        f"{_mesh_text(mesh)}: {named}{more}; for each, {fix}, or set "
        f"sharding_check.fail=False")
  if not distributed.is_primary():
    return
  for x in leaves:
    print(f"warning: {x.path} {x.shape} ({x.mib:.1f} MiB) is replicated on every device of "
          f"mesh {_mesh_text(mesh)}; to split it, {fix}", flush=True)
