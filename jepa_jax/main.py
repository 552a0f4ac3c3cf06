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
from absl import flags
from ml_collections import config_flags

from data_pipelines import cli_flags as cli
from jepa_jax import objectives
from jepa_jax.config import fields, validation
from jepa_jax.evaluation import suite
from jepa_jax.parallel import distributed
from jepa_jax.training import datasets, loop


def define_flags(values: flags.FlagValues, command_line: list[str]) -> None:
  config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/audio_jepa.py:demo",
                                  flag_values=values, lock_config=True,
                                  sys_argv=command_line)
  flags.DEFINE_string("workdir", None, "where checkpoints, metrics and the export go",
                      flag_values=values)
  flags.DEFINE_bool("dry_run", False, "build abstract shapes only; print parameter counts",
                    flag_values=values)
  flags.DEFINE_bool("probe", True, "run the linear probe after training", flag_values=values)


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
  if not args.workdir:
    cli.fail("--workdir is required (a folder for checkpoints, metrics and the export)")

  try:
    result = loop.train(config, args.workdir)
  except (fields.ConfigError, datasets.DataError, loop.IncompatibleWorkdirError,
          loop.NonFiniteLossError) as err:
    cli.fail(str(err))
  primary = distributed.is_primary()
  if result.interrupted:
    if primary:
      print(f"stopped at step {result.step} of {result.total_steps}; run the same command "
            f"to resume", file=sys.stderr)
    sys.exit(1)
  if primary:
    print(json.dumps(summary(config, result, args.workdir, args.probe)))
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


if __name__ == "__main__":
  main()
