"""Pretrain, export and probe: the main job.

    python -m jepa_jax.main --config=configs/audio_jepa.py:demo --workdir=runs/demo
    python -m jepa_jax.main --config=configs/audio_jepa.py --config.train.batch_size=256 ...
    python -m jepa_jax.main --config=configs/audio_jepa.py --dry_run

A workdir holding a checkpoint resumes from it. The last line printed is JSON: the
probe accuracy of the trained encoder, of the same encoder at initialisation and of a
mean-log-mel baseline (task means; per-task values and seed std beside them).

A multi-host run starts the same command on every host (jepa_jax/parallel/distributed.py says how
the processes find each other); process 0 writes, prints and probes.
"""
import json
import sys
import time

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from jepa_jax import objectives
from jepa_jax.config import fields, validation
from jepa_jax.evaluation import suite
from jepa_jax.parallel import distributed
from jepa_jax.training import datasets, loop

config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/audio_jepa.py:demo",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "where checkpoints, metrics and the export go")
flags.DEFINE_bool("dry_run", False, "build abstract shapes only; print parameter counts")
flags.DEFINE_bool("probe", True, "run the linear probe after training")
FLAGS = flags.FLAGS


def parameter_counts(config) -> dict:
  """Parameters per module from abstract shapes: nothing is allocated."""
  objective = objectives.build(config)
  abstract = jax.eval_shape(lambda: nn.unbox(objective.init(jax.random.key(0))))
  return {name: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
          for name, tree in abstract.items()}


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _last_line(message: str) -> str:
  """The exception line of a message that may embed a traceback (config_flags does)."""
  lines = [ln.strip() for ln in message.splitlines()
           if ln.strip() and not ln.strip().startswith("Pass --help")]
  line = lines[-1] if lines else message
  head, sep, tail = line.partition(": ")
  return tail if sep and head.rsplit(".", 1)[-1].endswith(("Error", "Exception")) else line


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, with config-file and override errors turned into one clear line."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as err:  # an override names a field that is not there
    name = str(err).strip("\"'")
    culprit = [a for a in argv if a.startswith("--config.") and name in a.split("=")[0]]
    _fail(f"unknown config field {name!r} in {culprit[0] if culprit else 'an override'}; "
          f"overrides must name existing fields of the config file")
  except (flags.Error, TypeError, ValueError, OSError) as err:
    _fail(f"bad command line: {_last_line(str(err))}")


def run(argv) -> None:
  if not FLAGS["verbosity"].present:
    # Library INFO logs (orbax writes several per checkpoint) drown the progress line;
    # --verbosity=0 brings them back.
    logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; flags are written --name=value")
  config = FLAGS.config
  if config is None:
    _fail("--config is required, e.g. --config=configs/audio_jepa.py:demo")
  try:
    config.to_dict()  # config_flags defers a failed load to the first use
  except OSError as err:
    _fail(f"cannot load --config: {_last_line(str(err))}")
  try:
    if not FLAGS.dry_run:  # shapes only: nothing to coordinate
      # First: the processes of a multi-process run join before any device is touched.
      distributed.initialize(config)
    validation.validate(config)
  except fields.ConfigError as err:
    _fail(str(err))
  if FLAGS.dry_run:
    print(json.dumps({"params": parameter_counts(config)}))
    return
  if not FLAGS.workdir:
    _fail("--workdir is required (a folder for checkpoints, metrics and the export)")

  try:
    result = loop.train(config, FLAGS.workdir)
  except (fields.ConfigError, datasets.DataError, loop.IncompatibleWorkdirError,
          loop.NonFiniteLossError) as err:
    _fail(str(err))
  primary = distributed.is_primary()
  if result.interrupted:
    if primary:
      print(f"stopped at step {result.step} of {result.total_steps}; run the same command "
            f"to resume", file=sys.stderr)
    sys.exit(1)
  if primary:
    print(json.dumps(summary(config, result, FLAGS.workdir, FLAGS.probe)))
  # Process 0 alone probes, on its own devices; the others wait for it here rather than
  # leave the distributed runtime under it.
  distributed.barrier("probed")


def summary(config, result, workdir: str, probe: bool) -> dict:
  """The last line: the run's steps, loss and timings, with the probe's accuracies."""
  out = {"steps": result.step, "final_loss": result.last_metrics.get("loss"),
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


def main() -> None:
  app.run(run, flags_parser=parse_flags)


if __name__ == "__main__":
  main()
