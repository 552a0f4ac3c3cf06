"""`python -m jepa_jax.evaluate`: the command line over jepa_jax/evaluation/suite.py, whose
docstring (printed by --help) says what each protocol and baseline is."""
from jepa_jax.parallel import allocator

if __name__ == "__main__":  # first, before jax loads: glibc reads its tunables at start
  allocator.use_caching_allocator()

import ast
import json
import sys
from pathlib import Path

from absl import flags

from data_pipelines import cli_flags as cli
from jepa_jax import export
from jepa_jax.evaluation import embeddings, features, frozen, report, suite, task_data
from jepa_jax.parallel import memory


def settings(text: str) -> dict:
  """'name=value,...' -> {name: value}; values are Python literals (numbers, True/False)."""
  out = {}
  for item in filter(None, text.split(",")):
    name, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"name=value pairs separated by commas, got {item!r}")
    try:
      out[name.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      raise ValueError(f"{name}: {value!r} is not a number or True/False") from None
  return out


class _SettingsParser(flags.ArgumentParser):
  def parse(self, argument):
    return settings(argument) if isinstance(argument, str) else dict(argument)

  def flag_type(self) -> str:
    return "name=value,..."


def define_flags(values: flags.FlagValues, command_line: list[str]) -> None:
  flags.DEFINE_string("workdir", None, "training workdir holding export/", flag_values=values)
  flags.DEFINE_list("task", [], "tasks, comma-separated: task folders (meta.csv), HEAR "
                    "task folders (task_metadata.json), EVAR metadata .csv files or labelled "
                    "mel shard directories (none: the embedded corpus's tasks, for runs "
                    "trained on it)", flag_values=values)
  flags.DEFINE_enum("protocol", "linear", suite.PROTOCOLS + ("all",), "what to run",
                    flag_values=values)
  flags.DEFINE_list("baselines", ["random_init"], "feature sets besides the trained encoder: "
                    f"random_init, {embeddings.MEAN_LOGMEL}, or another run's workdir (a path "
                    "with a '/') (empty: none)", flag_values=values)
  flags.DEFINE_string("fewshot_classes", "", "few-shot episodes only among these classes: "
                      "'held_out' (those the run's data.exclude_classes kept out of training) "
                      "or 'task:name,name;task:name'; tasks not named are skipped",
                      flag_values=values)
  flags.DEFINE_enum("freq_pool", "concat", features.FREQ_POOLS, "concatenate (EVAR) or "
                    "average the frequency tokens of a time step", flag_values=values)
  flags.DEFINE_enum("time_pool", "mean", features.TIME_POOLS, "pool a clip's time steps by "
                    "their mean (EVAR), or their mean and standard deviation (as the "
                    "real-audio benchmark's log-mel baseline)", flag_values=values)
  flags.DEFINE_list("layers", [], "embed with the mean of these blocks' outputs (numbers "
                    "from 1, or 'all'), each through the encoder's final LayerNorm (default: "
                    "the encoder's output, its last block)", flag_values=values)
  flags.DEFINE_float("unit_sec", None, "clip length in seconds (default: the task's "
                     "task.json, a HEAR task's sample_duration, else whole)",
                     flag_values=values)
  flags.DEFINE_string("audio_root", None, "the folder an EVAR .csv task's file_name paths "
                      "are relative to (default: the CSV's folder)", flag_values=values)
  flags.DEFINE(_SettingsParser(), "finetune", "", "fine-tuning settings over the export's "
               "config.finetune, e.g. epochs=40,base_lr=5e-3,rm_rate=0", flag_values=values)
  flags.DEFINE_bool("plots", False, "also draw each task's embedding map (trained beside "
                    "the baselines) and a nearest-neighbour sheet to eval/", flag_values=values)


def main(argv: list[str] | None = None) -> None:
  """The command: argv holds the arguments after the program name (None: sys.argv[1:])."""
  args = cli.parse(argv, define_flags, suite.__doc__, required=("workdir",))
  protocols = frozen.FROZEN if args.protocol == "all" else (args.protocol,)
  baselines = tuple(b for b in args.baselines if b)
  try:
    sources = (task_data.sources([t for t in args.task if t], args.audio_root)
               or suite.default_tasks(args.workdir))
    results = suite.evaluate(args.workdir, sources, protocols, ("trained", *baselines),
                             args.freq_pool, args.unit_sec, chart=args.protocol == "all",
                             layers=tuple(args.layers), time_pool=args.time_pool,
                             finetune_settings=args.finetune,
                             fewshot_classes_spec=args.fewshot_classes,
                             draw_plots=args.plots)
  except (FileNotFoundError, ValueError, memory.OutOfMemoryError,
          export.CorruptExportError) as err:
    cli.fail(str(err))
  out = Path(args.workdir).absolute() / report.RESULTS_DIR
  print(report.markdown(results), end="")
  print(f"written: {out / 'results.json'}, {out / 'results.md'}"
        + (f", {out / 'results.png'}" if args.protocol == "all" else ""), file=sys.stderr)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
