"""Pretrain, export and probe: the main job.

    python -m jepa_jax.main --config=configs/ajepa.py
    python -m jepa_jax.main --config=configs/audio_jepa.py:demo --workdir=runs/demo
    python -m jepa_jax.main --config=configs/audio_jepa.py --config.train.batch_size=256 ...
    python -m jepa_jax.main --config=configs/audio_jepa.py --dry_run

Without --workdir the run goes to runs/<config>[_<variant>][_<hash of the overrides>],
so the same command resumes it and a changed override never reuses another run's
workdir. A workdir holding a checkpoint resumes from it. SIGTERM or Ctrl-C saves a
checkpoint of the last completed step and exits with code 130 (run the same command to
resume). The last line printed is JSON: the probe accuracy of the trained encoder, of the
same encoder at initialisation and of a mean-log-mel baseline (task means; per-task
values, the lr each probe trained with and seed std beside them), under the protocol
named by `probe_protocol` (config.probe.protocol: `linear_validated` by default, EVAR's
linear evaluation with its lr chosen on the validation split; jepa_jax/evaluation/suite.py).
Before the probe, the loss and collapse monitors over steps are drawn to
WORKDIR/training.png.

A multi-host run starts the same command on every host (jepa_jax/parallel/distributed.py says how
the processes find each other); process 0 writes, prints and probes.
"""
from jepa_jax.parallel import allocator

if __name__ == "__main__":  # first, before jax loads: glibc reads its tunables at start
  allocator.use_caching_allocator()

import contextlib
import hashlib
import json
import re
import signal
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from data_pipelines import cli_flags as cli
from jepa_jax import objectives
from jepa_jax.config import fields, validation
from jepa_jax.evaluation import plots, suite
from jepa_jax.parallel import distributed, memory
from jepa_jax.training import checkpoint, datasets, loop, metric_writers, run_lock


def define_flags(values: flags.FlagValues, command_line: list[str]) -> None:
  config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/audio_jepa.py:demo",
                                  flag_values=values, lock_config=True,
                                  sys_argv=command_line)
  flags.DEFINE_string("workdir", None, "where checkpoints, metrics and the export go "
                      "(default: runs/<config>[_<variant>][_<hash of the overrides>])",
                      flag_values=values)
  flags.DEFINE_bool("dry_run", False, "build abstract shapes only; print parameter counts",
                    flag_values=values)
  flags.DEFINE_bool("probe", True, "run the linear probe after training", flag_values=values)


def default_workdir(config_spec: str, overrides: dict) -> Path:
  """runs/<config file's name>[_<variant>][_<hash of the --config.* overrides>]:
  'configs/ajepa.py:demo,sets=2' -> runs/ajepa_demo_sets-2."""
  path, _, variant = config_spec.partition(":")
  name = Path(path).stem + (f"_{variant}" if variant else "")
  name = re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace(",", "_").replace("=", "-"))
  if overrides:
    text = json.dumps(sorted(overrides.items()), default=str)
    name += "_" + hashlib.sha256(text.encode()).hexdigest()[:8]
  return Path("runs") / name


def workdir_of(args) -> str:
  """--workdir, or the default one (said on the first line); a run of several processes
  needs one they all reach, so it must name it."""
  if args.workdir:
    return args.workdir
  if jax.process_count() > 1:
    cli.fail("--workdir is required for a run of several processes (a folder every "
             "process reaches)")
  workdir = default_workdir(config_flags.get_config_filename(args["config"]),
                            config_flags.get_override_values(args["config"]))
  print(f"workdir: {workdir} (no --workdir given; the same command resumes there)",
        file=sys.stderr, flush=True)
  return str(workdir)


def parameter_counts(config) -> dict:
  """Parameters per module from abstract shapes: nothing is allocated."""
  objective = objectives.build(config)
  abstract = jax.eval_shape(lambda: nn.unbox(objective.init(jax.random.key(0))))
  return {name: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
          for name, tree in abstract.items()}


def main(argv: list[str] | None = None) -> None:
  """The command: argv holds the arguments after the program name (None: sys.argv[1:])."""
  args = cli.parse(argv, define_flags, __doc__)
  config = cli.config(args)
  if config is None:
    cli.fail("--config is required, e.g. --config=configs/audio_jepa.py:demo")
  try:
    if not args.dry_run:  # shapes only: nothing to coordinate
      # First: the processes of a multi-process run join before any device is touched.
      distributed.initialize(config)
    validation.validate(config)
  except fields.ConfigError as err:
    cli.fail(str(err))
  if args.dry_run:
    print(json.dumps({"params": parameter_counts(config)}))
    return
  workdir = workdir_of(args)
  try:
    result = loop.train(config, workdir)
  except (fields.ConfigError, datasets.DataError, loop.IncompatibleWorkdirError,
          loop.NonFiniteLossError, memory.OutOfMemoryError, checkpoint.NoIntactCheckpointError,
          checkpoint.DiskFullError, run_lock.WorkdirInUseError) as err:
    cli.fail(str(err))
  primary = distributed.is_primary()
  if result.interrupted:
    if primary:
      print(f"interrupted: the checkpoint of step {result.step} of {result.total_steps} is "
            f"saved in {workdir}; run the same command to resume", file=sys.stderr)
    sys.exit(cli.INTERRUPTED)
  if primary:
    with _stopped_by_signals(workdir):
      draw_training(workdir)
      try:
        print(json.dumps(summary(config, result, workdir, args.probe)), flush=True)
      except memory.OutOfMemoryError as err:  # the probe's embeddings; the run is saved
        cli.fail(f"{err} (training finished and is saved in {workdir})")
  # Process 0 alone probes, on its own devices; the others wait for it here rather than
  # leave the distributed runtime under it.
  distributed.barrier("probed")


def draw_training(workdir: str) -> None:
  """WORKDIR/training.png: the loss and collapse monitors the run logged (before the
  probe, so that a failing probe leaves it drawn); nothing logged, nothing drawn."""
  records = metric_writers.logged(workdir)
  if records:
    path = Path(workdir) / plots.TRAINING_PICTURE
    plots.training_curves(records, path)
    print(f"written: {path}", file=sys.stderr, flush=True)


class _Stopped(Exception):
  pass


@contextlib.contextmanager
def _stopped_by_signals(workdir):
  """SIGTERM / Ctrl-C after training (during the probe): exit 130 with one line, the
  trained run being saved. A multi-process run leaves SIGTERM to jax's preemption
  service."""
  if jax.process_count() > 1:
    yield
    return
  def stop(signum, frame):
    del frame
    raise _Stopped(signum)
  previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield
  except _Stopped as err:
    print(f"signal {err.args[0]}: stopped after training; the finished run is saved in "
          f"{workdir}: run the same command to probe it", file=sys.stderr)
    sys.exit(cli.INTERRUPTED)
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def summary(config, result, workdir: str, probe: bool) -> dict:
  """The last line: the run's steps, loss and timings, with the probe's accuracies. The
  loss is the run's last logged one, also when this process ran no step since its last
  log (a resume of a finished run): then it is read from the workdir's metrics log."""
  loss = result.last_metrics.get("loss")
  if loss is None:
    loss = metric_writers.last_logged(workdir).get("loss")
  out = {"steps": result.step, "final_loss": loss,
         "timings_s": {k: round(v, 1) for k, v in result.timings.items()},
         "input_wait_fraction": round(result.input_wait_fraction, 4)}
  if probe and not datasets.resolve(config).probe_tasks:
    print("prepared data has no probe tasks: run python -m jepa_jax.evaluate "
          "--workdir=... --task=DIR", file=sys.stderr)
  elif probe:
    t = time.perf_counter()
    out = {**suite.probe_workdir(workdir), **out}
    out["timings_s"]["probe"] = round(time.perf_counter() - t, 1)
  return out


if __name__ == "__main__":
  main()
