"""`python -m jepa_jax.embed`: the command line over jepa_jax/evaluation/embeddings.py, whose
docstring (printed by --help) says what is embedded and where the cache goes."""
from jepa_jax.parallel import allocator

if __name__ == "__main__":  # first, before jax loads: glibc reads its tunables at start
  allocator.use_caching_allocator()

import json

from absl import flags

from data_pipelines import cli_flags as cli
from jepa_jax import export
from jepa_jax.evaluation import embeddings, features, task_data
from jepa_jax.parallel import memory


def define_flags(values: flags.FlagValues, command_line: list[str]) -> None:
  flags.DEFINE_string("workdir", None, "training workdir holding export/", flag_values=values)
  flags.DEFINE_string("task", None, "a task folder (audio + meta.csv), a HEAR task folder "
                      "(task_metadata.json), an EVAR metadata .csv or labelled mel shards",
                      flag_values=values)
  flags.DEFINE_enum("freq_pool", "concat", features.FREQ_POOLS, "concatenate (EVAR) or "
                    "average the frequency tokens of a time step", flag_values=values)
  flags.DEFINE_enum("time_pool", "mean", features.TIME_POOLS, "pool a clip's time steps by "
                    "their mean (EVAR), or their mean and standard deviation (as the "
                    "real-audio benchmark's log-mel baseline)", flag_values=values)
  flags.DEFINE_list("layers", [], "embed with the mean of these blocks' outputs (numbers "
                    "from 1, or 'all'), each through the encoder's final LayerNorm (default: "
                    "the encoder's output, its last block)", flag_values=values)
  flags.DEFINE_bool("random_init", False, "embed with the encoder as its training started",
                    flag_values=values)
  flags.DEFINE_float("unit_sec", None, "clip length in seconds (default: the task's "
                     "task.json, a HEAR task's sample_duration, else whole)",
                     flag_values=values)
  flags.DEFINE_string("audio_root", None, "the folder an EVAR .csv task's file_name paths "
                      "are relative to (default: the CSV's folder)", flag_values=values)


def main(argv: list[str] | None = None) -> None:
  """The command: argv holds the arguments after the program name (None: sys.argv[1:])."""
  args = cli.parse(argv, define_flags, embeddings.__doc__, required=("workdir", "task"))
  try:
    config, frontend_meta, sets = embeddings.load_feature_sets(
        args.workdir, ("random_init",) if args.random_init else ("trained",))
    (task, x), = embeddings.embed_tasks(args.workdir,
                                        task_data.sources([args.task], args.audio_root),
                                        sets, frontend_meta,
                                        freq_pool=args.freq_pool, layers=tuple(args.layers),
                                        time_pool=args.time_pool, unit_sec=args.unit_sec,
                                        chunk_batch=config.probe.chunk_batch)
  except (FileNotFoundError, ValueError, memory.OutOfMemoryError,
          export.CorruptExportError) as err:
    cli.fail(str(err))
  path = embeddings.cache_path(args.workdir, task, sets[0], frontend_meta, args.freq_pool,
                               tuple(args.layers), args.time_pool)
  print(json.dumps({"task": task.name, "clips": len(task), "dim": int(x[sets[0].name].shape[1]),
                    "features": str(path)}))


if __name__ == "__main__":
  main()
