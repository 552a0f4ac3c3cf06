import json
import sys

from jepa_jax.evaluation import embeddings, features


def main(argv: list[str] | None = None) -> None:
  import argparse

  from absl import logging
  logging.set_verbosity(logging.WARNING)  # orbax logs several INFO lines per restore
  p = argparse.ArgumentParser(prog="python -m jepa_jax.embed", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="training workdir holding export/")
  p.add_argument("--task", required=True,
                 help="a task folder (audio + meta.csv) or labelled mel shards")
  p.add_argument("--freq_pool", choices=features.FREQ_POOLS, default="concat",
                 help="concatenate (EVAR) or average the frequency tokens of a time step")
  p.add_argument("--random_init", action="store_true",
                 help="embed with the encoder as its training started")
  p.add_argument("--unit_sec", type=float, default=None,
                 help="clip length in seconds (default: the task's task.json, else whole)")
  args = p.parse_args(argv)
  try:
    config, frontend_meta, sets = embeddings.load_feature_sets(
        args.workdir, ("random_init",) if args.random_init else ("trained",))
    (task, x), = embeddings.embed_tasks(args.workdir, [args.task], sets, frontend_meta,
                             freq_pool=args.freq_pool, unit_sec=args.unit_sec,
                             chunk_batch=config.probe.chunk_batch)
  except (FileNotFoundError, ValueError) as err:
    sys.exit(f"error: {err}")
  path = embeddings.cache_path(args.workdir, task, sets[0], frontend_meta, args.freq_pool)
  print(json.dumps({"task": task.name, "clips": len(task), "dim": int(x[sets[0].name].shape[1]),
                    "features": str(path)}))


if __name__ == "__main__":
  main()
