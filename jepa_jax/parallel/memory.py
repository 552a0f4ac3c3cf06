"""Memory per device: what a compiled function needs (XLA's buffer assignment) and what a
device can give (a GPU's or TPU's own statistics; on a CPU, the host's available memory
shared by its devices). $JEPA_JAX_DEVICE_MEMORY_GB sets a budget per device instead."""
import os
from pathlib import Path

import jax

BUDGET_ENV = "JEPA_JAX_DEVICE_MEMORY_GB"
GIB = 2 ** 30


def needed_bytes(compiled) -> int:
  """Peak memory of a compiled function per device: arguments, temporaries and the
  outputs that do not reuse a donated argument's buffer."""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
             + m.temp_size_in_bytes)


def temporary_bytes(compiled) -> int:
  """The part of `needed_bytes` that is neither argument nor output (activations)."""
  return int(compiled.memory_analysis().temp_size_in_bytes)


def _host_available_bytes() -> int | None:
  """MemAvailable of /proc/meminfo, or less where a cgroup (a container) limits memory."""
  found = []
  meminfo = Path("/proc/meminfo")
  if meminfo.is_file():
    for line in meminfo.read_text().splitlines():
      if line.startswith("MemAvailable:"):
        found.append(int(line.split()[1]) * 1024)
  limit, used = Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")
  if limit.is_file() and used.is_file() and limit.read_text().strip() != "max":
    found.append(int(limit.read_text()) - int(used.read_text()))
  return min(found) if found else None


def available_bytes(devices) -> int | None:
  """What each of `devices` (of one kind) can give a step; None where it cannot be told."""
  if os.environ.get(BUDGET_ENV):
    return int(float(os.environ[BUDGET_ENV]) * GIB)
  devices = list(devices)
  if devices[0].platform == "cpu":  # simulated CPU devices share the host's memory
    host = _host_available_bytes()
    local = sum(d.process_index == jax.process_index() for d in devices)
    return None if host is None else host // max(local, 1)
  stats = devices[0].memory_stats() or {}
  if "bytes_limit" not in stats:
    return None
  return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))


def readable(n: int) -> str:
  """'805.0 GiB', '12.5 MiB'."""
  return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2 ** 20:.1f} MiB"
