"""Worker processes: running the pending units in a process pool (or in this process
with one worker), and warming up the decode and mel path the workers inherit."""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import signal
import sys

import numpy as np

from data_pipelines import audio_io
from data_pipelines.frontends import FrontEnd
from data_pipelines.prepare.errors import PrepareError
from data_pipelines.prepare.plan import Unit
from data_pipelines.prepare.sources import forget_open_tfds
from data_pipelines.prepare.units import UnitContext, run_unit

_WORKER: dict = {}


def _init_worker(ctx: UnitContext, stop) -> None:
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
  signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler (fork copies it)
  forget_open_tfds()  # a forked copy of the parent's reader may share its threads' state
  _WORKER.update(ctx=ctx, stop=stop)


def _run_unit_in_worker(unit: Unit) -> dict:
  return run_unit(_WORKER["ctx"], unit, _WORKER["stop"])


def warm_up(frontend: FrontEnd) -> None:
  """Runs the decode -> resample -> mel path once on a quarter second of silence: librosa
  imports its parts lazily (seconds), and forked workers then inherit them all."""
  reader = audio_io.AudioReader("warm-up", frontend.sample_rate,
                                samples=np.zeros(11025, np.float32), samples_rate=44100)
  with reader:
    for wave in reader.segments():
      frontend.logmel(wave)


def _mp_context():
  """fork starts workers in milliseconds with everything imported and warmed up. A parent
  that holds jax (threads, device state) must not fork: a fork server, started clean,
  imports the decode and mel modules once and the workers fork from it."""
  if "jax" not in sys.modules and sys.platform == "linux":
    return multiprocessing.get_context("fork")
  context = multiprocessing.get_context("forkserver")
  context.set_forkserver_preload(
      ["data_pipelines.prepare", "librosa.core.spectrum", "librosa.core.audio"])
  return context


def run_units(ctx: UnitContext, pending: list[Unit], workers: int, make_bar) -> list[dict]:
  """Runs the pending units; returns their sidecars in completion order. Raises ItemFailed
  (fail policy) or KeyboardInterrupt after stopping every worker."""
  finished = []
  if not pending:
    return finished
  warm_up(ctx.frontend)
  if workers == 1:
    with make_bar() as bar:
      for unit in pending:
        finished.append(run_unit(ctx, unit))
        bar.update(len(unit.items))
    return finished
  mp = _mp_context()
  stop = mp.Event()
  pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=mp,
                                                initializer=_init_worker, initargs=(ctx, stop))
  try:
    # Submitting starts the workers, before the bar starts its monitor thread.
    futures = {pool.submit(_run_unit_in_worker, unit): unit for unit in pending}
    with make_bar() as bar:
      for future in concurrent.futures.as_completed(futures):
        finished.append(future.result())
        bar.update(len(futures[future].items))
  except (concurrent.futures.process.BrokenProcessPool, BrokenPipeError) as e:
    raise PrepareError(f"a worker process died or could not start ({e}; killed, or out of "
                       f"memory on a huge file?); finished units are kept: run the same "
                       f"command again to resume, with fewer --workers if memory is short"
                       ) from None
  finally:
    stop.set()  # a no-op after success; otherwise running units stop at their next file
    pool.shutdown(wait=True, cancel_futures=True)
  return finished
