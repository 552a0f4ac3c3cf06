"""Memory per device: what a compiled function needs (XLA's buffer assignment) and what a
device can give (a GPU's or TPU's own statistics; on a CPU, the host's available memory
shared by its devices). $JEPA_JAX_DEVICE_MEMORY_GB sets a budget per device instead.
`fitted_batch` picks the largest batch of a batched function (embedding, evaluation)
that fits; the train step has its own fitting (training/fit.py)."""
import os
from collections.abc import Callable
from pathlib import Path

import jax

BUDGET_ENV = "JEPA_JAX_DEVICE_MEMORY_GB"
GIB = 2 ** 30
# The share of a device's memory a compiled function may plan on: the rest is for the
# runtime, the next batch and fragmentation.
MARGIN = 0.85


class OutOfMemoryError(RuntimeError):
  """A compiled function does not fit in the devices' memory with any allowed setting."""


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


def budget_of(available: int | None) -> int | None:
  """The memory a compiled function may plan on: MARGIN of what is available."""
  return None if available is None else int(MARGIN * available)


def budget_bytes(devices) -> int | None:
  """budget_of what each of `devices` can give."""
  return budget_of(available_bytes(devices))


def fitted_batch(compile_at: Callable[[int], object], batch: int, devices,
                 what: str) -> tuple[int, object]:
  """(b, compile_at(b)) for a large b <= `batch` whose compiled function fits each of
  `devices` (with MARGIN), for a function whose rows are independent (the result does not
  depend on b). From one compile the activations are scaled to the rows estimated to fit;
  once one fits, the line through the two last compiles may grant more rows (one more
  compile, kept if it fits). OutOfMemoryError, naming `what`, where not even one row
  fits."""
  budget = budget_bytes(devices)
  compiled = compile_at(batch)
  if budget is None or needed_bytes(compiled) <= budget:
    return batch, compiled
  b = batch
  while needed_bytes(compiled) > budget:
    if b == 1:
      raise OutOfMemoryError(
          f"{what} needs {readable(needed_bytes(compiled))} per device for a single row "
          f"(XLA's memory analysis) and a device has {readable(budget)} usable; free "
          f"memory, or run on a device with more")
    over, b_over = compiled, b
    b = max(1, min(b - 1, rows_estimated_to_fit(compiled, b, budget)))
    compiled = compile_at(b)
  per_row = (needed_bytes(over) - needed_bytes(compiled)) / (b_over - b)
  more = b + int((budget - needed_bytes(compiled)) // per_row) if per_row > 0 else b
  more = min(more, b_over - 1)
  if more > b:
    wider = compile_at(more)
    if needed_bytes(wider) <= budget:
      return more, wider
  return b, compiled


def rows_estimated_to_fit(compiled, rows: int, budget: int) -> int:
  """The most rows a function compiled for `rows` is estimated to take within `budget`:
  its activations (temporaries) scale with the rows, the rest does not. 0: none."""
  needed, temporary = needed_bytes(compiled), temporary_bytes(compiled)
  room = budget - (needed - temporary)
  return room * rows // temporary if temporary and room > 0 else 0
