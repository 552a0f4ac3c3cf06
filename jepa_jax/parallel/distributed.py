"""Several processes (hosts) training one model on JAX's distributed runtime.

`initialize(config)` runs before anything touches a device. Its arguments, first found:
  1. config.distributed: coordinator_address, num_processes, process_id;
  2. the environment: JAX_COORDINATOR_ADDRESS (jax itself reads it), JAX_NUM_PROCESSES,
     JAX_PROCESS_ID (ours: jax reads no process count or id from the environment);
  3. none of them set, in a cluster jax detects by itself (a Cloud TPU VM, a SLURM job of
     several tasks, an Open MPI job of several ranks): jax.distributed.initialize() with no
     arguments, which asks the cluster.
Nothing set and no cluster: a single process, and initialize is not called.
"""
import os
from collections.abc import Mapping

import jax
from jax.experimental import multihost_utils

from jepa_jax.config.fields import ConfigError

# Field of config.distributed -> (environment variable, value meaning "unset").
FIELDS = {"coordinator_address": ("JAX_COORDINATOR_ADDRESS", ""),
          "num_processes": ("JAX_NUM_PROCESSES", 0),
          "process_id": ("JAX_PROCESS_ID", -1)}
_MINIMUM = {"num_processes": 1, "process_id": 0}
# What jax's SLURM detection reads (jax/_src/clusters/slurm_cluster.py).
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")


def explicit_settings(settings: Mapping, environ: Mapping[str, str]) -> dict:
  """{field: value} of the fields set in `settings` (config.distributed) or, failing
  that, in the environment; raises ConfigError for a malformed value."""
  out = {}
  for field, (variable, unset) in FIELDS.items():
    value, origin = settings[field], f"distributed.{field}"
    if value == unset and environ.get(variable, "") != "":
      value, origin = environ[variable], f"${variable}"
      if field != "coordinator_address":
        try:
          value = int(value)
        except ValueError:
          raise ConfigError(f"{origin}={value!r} must be an integer") from None
    if value == unset:
      continue
    if field == "coordinator_address":
      host, _, port = str(value).rpartition(":")
      if not (host and port.isdigit()):
        raise ConfigError(f"{origin}={value!r} must be host:port, the address of process 0")
    elif not isinstance(value, int) or value < _MINIMUM[field]:
      raise ConfigError(f"{origin} must be an integer >= {_MINIMUM[field]} (or {unset!r}: "
                        f"unset), got {value!r}")
    out[field] = value
  return out


def config_errors(settings: Mapping, environ: Mapping[str, str]) -> list[str]:
  """Why config.distributed with this environment cannot start a run ([] when it can)."""
  try:
    given = explicit_settings(settings, environ)
  except ConfigError as err:
    return [str(err)]
  if not given:
    return []
  missing = [f for f in FIELDS if f not in given]
  if missing:
    return [f"distributed: {', '.join(given)} set but not {', '.join(missing)}: set all of "
            f"coordinator_address, num_processes and process_id (in the config or as "
            f"{', '.join(v for v, _ in FIELDS.values())}), or none to let jax detect a "
            f"TPU, SLURM or MPI cluster"]
  if given["process_id"] >= given["num_processes"]:
    return [f"distributed.process_id (or $JAX_PROCESS_ID) {given['process_id']} must be in "
            f"0..{given['num_processes'] - 1} for num_processes {given['num_processes']}"]
  return []


def in_detected_cluster(environ: Mapping[str, str], on_cloud_tpu: bool) -> bool:
  """Whether jax.distributed.initialize() finds its arguments by itself: on a Cloud TPU
  VM, in a SLURM job of several tasks or an Open MPI job of several ranks."""
  slurm = all(v in environ for v in _SLURM_VARS) and int(environ["SLURM_NTASKS"]) > 1
  open_mpi = ("OMPI_MCA_orte_hnp_uri" in environ
              and int(environ.get("OMPI_COMM_WORLD_SIZE", 1)) > 1)
  return on_cloud_tpu or slurm or open_mpi


def initialize_arguments(settings: Mapping, environ: Mapping[str, str],
                         on_cloud_tpu: bool) -> dict | None:
  """Keyword arguments of jax.distributed.initialize ({} to let jax detect the cluster),
  or None for a single process."""
  errors = config_errors(settings, environ)
  if errors:
    raise ConfigError(errors[0])
  given = explicit_settings(settings, environ)
  if given:
    return given
  return {} if in_detected_cluster(environ, on_cloud_tpu) else None


def _on_cloud_tpu() -> bool:
  # Set when jax is imported, from the TPU chips and libtpu it finds; no device is touched.
  from jax._src import cloud_tpu_init  # lazy: private module, read only where asked
  return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def initialize(config) -> None:
  """Join the other processes of this run; call before anything touches a device."""
  arguments = initialize_arguments(config.distributed, os.environ, _on_cloud_tpu())
  if arguments is None:
    return
  # Only the CPU backend reads this: gloo gives CPU processes cross-process collectives
  # (jax 0.10's default, made explicit so a CPU run never depends on that default).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**arguments)


def is_primary() -> bool:
  """Process 0 writes what is written once: config.json, the export's metadata, printed
  progress and the probe."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Wait until every process reaches `name` (nothing to wait for with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
