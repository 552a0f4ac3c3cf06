"""One run per workdir: process 0 holds `<workdir>/run.lock` (a run id, host, pid and a
heartbeat it refreshes), so a second run started on the same workdir (a resubmitted job
while the first still runs) stops at once instead of writing checkpoints over the first's.

Shared storage (NFS, GCS fuse) has no usable pids or advisory locks across hosts, hence
the heartbeat: a lock whose heartbeat is older than `stale_s` is taken over with a
warning. On the lock's own host a dead pid frees it at once (a run killed with SIGKILL and
restarted need not wait). The processes of one multi-host run share the workdir
legitimately: only process 0 takes the lock.
"""
import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from jepa_jax.parallel import distributed

LOCK = "run.lock"
REFRESH_S = 30.0
STALE_S = 300.0  # ten missed refreshes: a slow shared file system, never a live run


class WorkdirInUseError(RuntimeError):
  """Another run holds the workdir's lock and its heartbeat is fresh."""


def _start_time(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (Linux), which tells a reused pid
  from the process that wrote the lock; None where /proc does not say."""
  try:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(holder: dict) -> bool:
  """Whether the holder's process still runs, asked only on its own host."""
  try:
    os.kill(holder["pid"], 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return holder.get("started") in (None, _start_time(holder["pid"]))


class RunLock:
  def __init__(self, workdir: Path, refresh_s: float = REFRESH_S, stale_s: float = STALE_S,
               clock: Callable[[], float] = time.time):
    self.path = Path(workdir) / LOCK
    self.refresh_s, self.stale_s, self.clock = refresh_s, stale_s, clock
    self.record = {"run": uuid.uuid4().hex[:12], "host": socket.gethostname(),
                   "pid": os.getpid(), "started": _start_time(os.getpid())}
    self.lost: dict | None = None  # the record of a run that took the lock over
    self.made_workdir = not self.path.parent.exists()  # then an empty one goes at release
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def holder(self) -> dict | None:
    try:
      return json.loads(self.path.read_text())
    except (OSError, ValueError):  # absent, or half-written by a concurrent writer
      return None

  def acquire(self, warn: Callable[[str], None]) -> None:
    """Take the lock or raise WorkdirInUseError naming its live holder."""
    held = self.holder()
    if held is not None and held.get("run") != self.record["run"]:
      age = self.clock() - held.get("heartbeat", 0.0)
      local = held.get("host") == self.record["host"]
      if local and not _alive(held):
        warn(f"warning: taking over {self.path} from run {held['run']} (pid {held['pid']} "
             f"on this host no longer runs)")
      elif age >= self.stale_s:
        warn(f"warning: taking over {self.path} from run {held['run']} on {held['host']} "
             f"(pid {held['pid']}): its last heartbeat is {age / 60:.0f} min old")
      else:
        raise WorkdirInUseError(
            f"{self.path.parent} is in use by run {held['run']} on {held['host']} (pid "
            f"{held['pid']}, heartbeat {max(age, 0):.0f} s ago): wait for it to end or stop "
            f"it, or use another --workdir. If it is dead, its lock goes stale "
            f"{self.stale_s / 60:.0f} min after its last heartbeat. Nothing was changed.")
    self._write()
    time.sleep(min(0.2, self.refresh_s))
    self._confirm()
    self._thread = threading.Thread(target=self._beat, daemon=True, name="run-lock")
    self._thread.start()

  def _confirm(self) -> None:
    """Two runs started together both found no lock and both wrote: the last writer wins,
    the other reads its id back here and stops."""
    winner = self.holder()
    if winner is None or winner.get("run") != self.record["run"]:
      raise WorkdirInUseError(
          f"{self.path.parent} was taken by run {(winner or {}).get('run')} starting at the "
          f"same moment; use another --workdir. Nothing was changed.")

  def _write(self) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = self.path.with_name(f"{LOCK}.{self.record['run']}.tmp")
    tmp.write_text(json.dumps({**self.record, "heartbeat": self.clock()}))
    os.replace(tmp, self.path)  # readers see the old record or the new, never half

  def _beat(self) -> None:
    while not self._stop.wait(self.refresh_s):
      held = self.holder()
      if held is not None and held.get("run") != self.record["run"]:
        self.lost = held  # taken over as stale: never write over the new holder
        return
      self._write()

  def check(self) -> None:
    """Raise WorkdirInUseError if another run took the lock over (this one's heartbeat
    stalled past stale_s): its checkpoints must not be overwritten."""
    if self.lost is not None:
      raise WorkdirInUseError(
          f"run {self.lost['run']} on {self.lost['host']} took over {self.path.parent} after "
          f"this run's heartbeat stalled; this run stops without saving over it")

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    held = self.holder()
    if held is not None and held.get("run") == self.record["run"]:
      self.path.unlink(missing_ok=True)
    if self.made_workdir and self.path.parent.is_dir() and not any(self.path.parent.iterdir()):
      self.path.parent.rmdir()  # a run stopped before writing anything leaves nothing


@contextlib.contextmanager
def held(workdir: Path, warn: Callable[[str], None]):
  """The workdir's lock for the duration of a run: process 0 takes it (the others learn
  whether it could) and gives it back at the end, interrupted or not. Yields the lock
  (None on the other processes)."""
  lock, refused = None, None
  if distributed.is_primary():
    lock = RunLock(workdir)
    try:
      lock.acquire(warn)
    except WorkdirInUseError as err:
      refused = err
  if jax.process_count() > 1 and bool(
      multihost_utils.broadcast_one_to_all(np.int32(refused is not None))) and refused is None:
    refused = WorkdirInUseError(f"process 0 found {workdir} in use by another run")
  if refused is not None:
    raise refused
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()
