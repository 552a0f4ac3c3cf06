"""Orbax checkpoints of the train state together with its data position and the state's
content checksums (jepa_jax/checksums.py).

Saves are asynchronous and atomic (orbax writes to a temporary directory and renames);
only `keep` checkpoints are kept. Restoring gives back the state with the shardings of
the abstract tree passed in, and the data position: how many global batches the run
consumed. Global batches do not depend on the process count (data_pipelines/pipeline.py),
so any number of processes, on any number of devices, rebuilds its data iterators from
that position (elastic resume). A checkpoint that cannot be read or whose arrays do not
match their checksums (bit rot, a partial copy) is passed over for the newest one that
can, and moved aside, never deleted.
"""
import contextlib
import dataclasses
import errno
import json
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jepa_jax import checksums, export
from jepa_jax.parallel import distributed

CHECKSUMS = "checksums"  # the item beside 'state'; checkpoints before it lack it
POSITION = "data_position"  # the item beside 'state': DataPosition, as JSON
# The item of checkpoints written before POSITION: Grain's iterator state, one file per
# process (process_<i>-of-<n>.json), which only the same process count could restore.
GRAIN_STATE = "data"
CORRUPT = "corrupt"      # <workdir>/corrupt/<step>/: where unreadable checkpoints are moved


@dataclasses.dataclass(frozen=True)
class DataPosition:
  """Where a checkpoint's run stands in its data: `global_batches` consumed, of
  `global_batch_size` examples each (global batch b is positions b * G .. b * G + G - 1
  of the seeded stream, whichever processes read it)."""
  global_batches: int
  global_batch_size: int | None  # None: not recorded (a checkpoint before POSITION)


class NoIntactCheckpointError(RuntimeError):
  """Every checkpoint of the workdir failed to read or to verify; none was moved."""


class DiskFullError(RuntimeError):
  """A checkpoint could not be written for lack of space; the previous ones are intact."""


def disk_full(err: BaseException) -> bool:
  """Whether `err` (or what caused it) is a full disk or an exceeded quota. TensorStore
  reports it as text, not as an OSError."""
  while err is not None:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if any(text in str(err) for text in ("No space left on device", "Disk quota exceeded")):
      return True
    err = err.__cause__ or err.__context__
  return False


def abstract_with_shardings(abstract_tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)


class Checkpointer:
  def __init__(self, directory: Path, keep: int,
               before_save: Callable[[], None] | None = None):
    """`before_save`: called before every save, may raise to forbid it (the run lock's
    check that no other run took the workdir over)."""
    self.directory = Path(directory).absolute()
    self.before_save = before_save
    # A save fails in orbax's background threads first: they log it with tracebacks and
    # their late I/O callbacks print more, before the main thread raises it here.
    export.drop_closed_loop_callbacks()
    _quiet_background_disk_full()
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, position: DataPosition) -> None:
    """Start writing the checkpoint of `step`; an error of the previous asynchronous
    save surfaces here (a full disk as DiskFullError)."""
    if self.before_save is not None:
      self.before_save()
    with self._writing(step, state):
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data_position=ocp.args.JsonSave(dataclasses.asdict(position)),
          checksums=ocp.args.JsonSave(checksums.of_tree(state))))

  def restore(self, step: int, abstract_state) -> tuple[dict, DataPosition]:
    """The state of checkpoint `step`, its arrays checked against their checksums
    (checkpoints written before checksums existed are read unchecked), and its data
    position."""
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    checked = (self.directory / str(step) / CHECKSUMS).exists()
    if checked:
      items[CHECKSUMS] = ocp.args.JsonRestore()
    positioned = (self.directory / str(step) / POSITION).exists()
    if positioned:
      items[POSITION] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if checked:
      wrong = checksums.mismatches(restored.state, restored[CHECKSUMS])
      if wrong:
        raise ValueError(f"{len(wrong)} array(s) differ from their checksums, e.g. "
                         f"{', '.join(wrong[:3])}")
    position = (DataPosition(**restored[POSITION]) if positioned
                else self._grain_state_position(step))
    return restored.state, position

  def _grain_state_position(self, step: int) -> DataPosition:
    """The position of a checkpoint written before POSITION. The loop reads one global
    batch a step, so it is the step; Grain's state of a process without worker
    processes, {"next_index": n}, counts the same batches (its rows of each), and must
    agree. The batch size is that of the workdir's config (loop.check_workdir)."""
    for path in sorted((self.directory / str(step) / GRAIN_STATE).glob("process_*.json")):
      recorded = json.loads(path.read_text())
      if "next_index" in recorded and recorded["next_index"] != step:
        raise ValueError(f"{path} counts {recorded['next_index']} batches read, not one a "
                         f"step ({step})")
    return DataPosition(global_batches=step, global_batch_size=None)

  def restore_intact(self, abstract_state, warn: Callable[[str], None]
                     ) -> tuple[int, dict, DataPosition] | None:
    """(step, state, data position) of the newest checkpoint that reads and verifies, or
    None where there is none. Newer ones that failed are moved to
    <workdir>/corrupt/<step>/, one warning line each; where all fail,
    NoIntactCheckpointError and nothing is moved."""
    failed = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        with export.unlogged_io_errors():
          (state, position), problem = self.restore(step, abstract_state), None
      except Exception as err:  # noqa: BLE001 - any failure to read makes it unusable
        state, position, problem = None, None, export.error_line(err)
      if _everywhere(problem is None):
        for bad, why in failed:
          warn(f"warning: the checkpoint of step {bad} is unreadable or corrupt ({why}); "
               f"moved to {self._set_aside(bad)}, resuming from step {step}")
        return step, state, position
      failed.append((step, problem or "unreadable on another process"))
    if failed:
      raise NoIntactCheckpointError(
          f"no checkpoint in {self.directory} can be restored: "
          + "; ".join(f"step {s}: {why}" for s, why in failed)
          + ". Nothing was moved or deleted: restore the folder from a copy, or use a new "
            "--workdir")
    return None

  def _set_aside(self, step: int) -> Path:
    """Move checkpoint `step` out of the folder orbax scans (process 0 moves, all wait)."""
    target = self.directory.parent / CORRUPT / str(step)
    if distributed.is_primary():
      n = 1
      while target.exists():  # an earlier one of the same step stays as it was
        target, n = self.directory.parent / CORRUPT / f"{step}.{n}", n + 1
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.move(self.directory / str(step), target)
    distributed.barrier(f"checkpoint {step} set aside")
    self.manager.reload()
    return target

  def wait(self) -> None:
    """Wait for the last save; a full disk surfaces here as DiskFullError."""
    with self._writing(None, None):
      self.manager.wait_until_finished()

  @contextlib.contextmanager
  def _writing(self, step: int | None, state):
    """A full disk while saving (now or in the asynchronous part of an earlier save) as
    DiskFullError: which folder, what a checkpoint needs, what is free."""
    try:
      with export.unlogged_io_errors():
        yield
    except Exception as err:
      if not disk_full(err):
        raise
      raise DiskFullError(self._disk_full_message(step, state)) from err

  def close(self) -> None:
    self.manager.close()

  def _disk_full_message(self, step: int | None, state) -> str:
    free = shutil.disk_usage(self.directory).free
    size = (f"a checkpoint of this state needs about {_amount(_state_bytes(state))}, "
            if state is not None else "")
    intact = self.all_steps()
    return (f"no space left on the disk of {self.directory} while writing a checkpoint"
            + (f" (step {step} or the one before)" if step is not None else "")
            + f": {size}{_amount(free)} are free; "
            + (f"the checkpoint of step {intact[0]} is intact" if len(intact) == 1 else
               f"the checkpoints of steps {', '.join(map(str, intact))} are intact"
               if intact else "no checkpoint was written yet")
            + ". Free space (or move the workdir) and run the same command to resume")


class _BackgroundDiskFull(logging.Filter):
  """Drops orbax's error records of a full disk (three, with tracebacks, from its save
  threads): the save or wait that meets the error reports it in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR or "orbax" not in record.pathname:
      return True
    error = record.exc_info[1] if record.exc_info else None
    return not (disk_full(error) if error is not None else
                disk_full(RuntimeError(record.getMessage())))


def _quiet_background_disk_full() -> None:
  log = logging.getLogger("absl")
  if not any(isinstance(f, _BackgroundDiskFull) for f in log.filters):
    log.addFilter(_BackgroundDiskFull())


def _amount(nbytes: int) -> str:
  return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def _state_bytes(state) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes"))


def _everywhere(ok: bool) -> bool:
  """Whether `ok` holds on every process (each reads its own shards of a checkpoint)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _to_stderr(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def latest_entry(directory: Path, entry: str = "params",
                 warn: Callable[[str], None] = _to_stderr) -> dict | None:
  """One entry of the train state ('params', 'aux', ...) of the newest checkpoint in
  `directory` whose entry reads and matches its checksums, as numpy arrays, read without
  knowing the rest of the state's structure; None when there is no checkpoint. Newer
  ones that fail are named in one `warn` line each and left where they are (they belong
  to another run); where every one fails, NoIntactCheckpointError names them all."""
  directory = Path(directory).absolute()
  steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()] \
      if directory.is_dir() else []
  failed = []
  for step in sorted(steps, reverse=True):
    try:
      with export.unlogged_io_errors():
        tree = _verified_entry(directory / str(step), entry)
    except Exception as err:  # noqa: BLE001 - any failure to read makes it unusable
      failed.append((step, export.error_line(err)))
      continue
    for bad, why in failed:
      warn(f"warning: {entry} of the checkpoint {directory / str(bad)} is unreadable or "
           f"corrupt ({why}); using step {step}'s")
    return tree
  if failed:
    raise NoIntactCheckpointError(
        f"no checkpoint in {directory} has an intact {entry!r}: "
        + "; ".join(f"step {s}: {why}" for s, why in failed))
  return None


def _verified_entry(step_dir: Path, entry: str) -> dict:
  """Checkpoint `step_dir`'s `entry`, checked against the checksums recorded for it
  (unchecked where the checkpoint predates checksums)."""
  handler = ocp.PyTreeCheckpointHandler()  # the item alone: no step metadata to look for
  try:
    wanted = {entry: handler.metadata(step_dir / "state").tree[entry]}
    tree = handler.restore(step_dir / "state", args=ocp.args.PyTreeRestore(
        item=wanted, partial_restore=True,
        restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                  wanted)))[entry]
  finally:
    handler.close()
  recorded_path = step_dir / CHECKSUMS / "metadata"
  if recorded_path.exists():
    prefix = f"{entry}/"
    recorded = {name.removeprefix(prefix): value
                for name, value in json.loads(recorded_path.read_text()).items()
                if name.startswith(prefix)}
    wrong = checksums.mismatches(tree, recorded)
    if wrong:
      raise ValueError(f"{len(wrong)} array(s) differ from their checksums, e.g. "
                       f"{', '.join(wrong[:3])}")
  return tree
