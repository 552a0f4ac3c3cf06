"""One run per workdir (training/run_lock.py): a fresh heartbeat refuses a second run, a
stale one or a dead local pid is taken over with a warning, the lock is refreshed while
the run lives and given back when it ends."""
import json
import os
import subprocess
import sys
import time

import pytest

from jepa_jax import main
from jepa_jax.training import run_lock
from tests.tiny import TINY_FLAGS


class Clock:
  def __init__(self, now=1_000_000.0):
    self.now = now

  def __call__(self):
    return self.now


def _held_by(workdir, clock, **record):
  workdir.mkdir(parents=True, exist_ok=True)
  holder = {"run": "0123456789ab", "host": "other-host", "pid": 4242, "started": None,
            "heartbeat": clock(), **record}
  (workdir / run_lock.LOCK).write_text(json.dumps(holder))
  return holder


def test_a_fresh_heartbeat_refuses_and_a_stale_one_is_taken_over(tmp_path):
  clock, warnings = Clock(), []
  _held_by(tmp_path, clock)
  clock.now += run_lock.STALE_S - 1
  lock = run_lock.RunLock(tmp_path, clock=clock)
  with pytest.raises(run_lock.WorkdirInUseError,
                     match=r"in use by run 0123456789ab on other-host \(pid 4242, heartbeat "
                           r"299 s ago\)"):
    lock.acquire(warnings.append)
  assert json.loads((tmp_path / run_lock.LOCK).read_text())["run"] == "0123456789ab"
  clock.now += 1
  lock.acquire(warnings.append)
  try:
    assert len(warnings) == 1 and "heartbeat is 5 min old" in warnings[0]
    assert lock.holder()["run"] == lock.record["run"] != "0123456789ab"
  finally:
    lock.release()
  assert not (tmp_path / run_lock.LOCK).exists()


def test_a_dead_pid_on_this_host_frees_the_lock_at_once(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  clock, warnings = Clock(), []
  lock = run_lock.RunLock(tmp_path, clock=clock)
  _held_by(tmp_path, clock, host=lock.record["host"], pid=dead.pid)
  lock.acquire(warnings.append)
  lock.release()
  assert len(warnings) == 1 and f"pid {dead.pid} on this host no longer runs" in warnings[0]
  # A live process of this host (here: this one, started at the same tick) holds it.
  _held_by(tmp_path, clock, host=lock.record["host"], pid=os.getpid(),
           started=lock.record["started"])
  with pytest.raises(run_lock.WorkdirInUseError):
    run_lock.RunLock(tmp_path, clock=clock).acquire(warnings.append)
  # The same pid reused by another process (another start time) does not.
  _held_by(tmp_path, clock, host=lock.record["host"], pid=os.getpid(), started="1")
  other = run_lock.RunLock(tmp_path, clock=clock)
  other.acquire(warnings.append)
  other.release()


def test_the_heartbeat_is_refreshed_and_a_take_over_is_noticed(tmp_path):
  lock = run_lock.RunLock(tmp_path, refresh_s=0.05)
  lock.acquire(print)
  try:
    first = lock.holder()["heartbeat"]
    time.sleep(0.3)
    assert lock.holder()["heartbeat"] > first
    lock.check()
    taker = _held_by(tmp_path, Clock(time.time()))  # its heartbeat stalled: taken over
    time.sleep(0.3)
    assert lock.holder() == taker  # never written over
    with pytest.raises(run_lock.WorkdirInUseError, match="took over"):
      lock.check()
  finally:
    lock.release()
  assert lock.holder() == taker  # not ours to remove


def test_two_runs_starting_together_end_with_one_holder(tmp_path):
  first, second = run_lock.RunLock(tmp_path), run_lock.RunLock(tmp_path)
  first._write()
  second._write()  # both found no lock; the second write wins
  with pytest.raises(run_lock.WorkdirInUseError, match="starting at the same moment"):
    first._confirm()
  second._confirm()


def test_the_command_refuses_a_workdir_in_use_with_one_line_and_writes_nothing(tmp_path,
                                                                               capsys):
  workdir = tmp_path / "run"
  _held_by(workdir, Clock(time.time()))
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
  with pytest.raises(SystemExit) as stopped:
    main.main(["--config=configs/audio_jepa.py:demo", f"--workdir={workdir}", *TINY_FLAGS])
  assert stopped.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith(f"error: {workdir} is in use by run 0123456789ab"), err
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before
