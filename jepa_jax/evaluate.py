import json
import sys
from pathlib import Path

from jepa_jax.evaluation import embeddings, frozen, report, suite


def _parser():
  import argparse

  from jepa_jax.evaluation import features

  def names(text: str) -> list[str]:
    return [n for n in text.split(",") if n]

  p = argparse.ArgumentParser(prog="python -m jepa_jax.evaluate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="training workdir holding export/")
  p.add_argument("--task", type=names, default=[],
                 help="task folders or labelled mel shard directories, comma-separated "
                      "(default: the embedded corpus's tasks, for runs trained on it)")
  p.add_argument("--protocol", choices=suite.PROTOCOLS + ("all",), default="linear")
  p.add_argument("--baselines", type=names, default=["random_init"],
                 help=f"feature sets besides the trained encoder: random_init, "
                      f"{embeddings.MEAN_LOGMEL}, or another run's workdir (a path with a '/') "
                      f"(empty: none)")
  p.add_argument("--fewshot_classes", default="",
                 help="few-shot episodes only among these classes: 'held_out' (those the "
                      "run's data.exclude_classes kept out of training) or "
                      "'task:name,name;task:name'; tasks not named are skipped")
  p.add_argument("--freq_pool", choices=features.FREQ_POOLS, default="concat",
                 help="concatenate (EVAR) or average the frequency tokens of a time step")
  p.add_argument("--unit_sec", type=float, default=None,
                 help="clip length in seconds (default: the task's task.json, else whole)")
  p.add_argument("--finetune", type=settings, default={},
                 help="fine-tuning settings over the export's config.finetune, e.g. "
                      "epochs=40,base_lr=5e-3,rm_rate=0")
  return p


def settings(text: str) -> dict:
  """'name=value,...' -> {name: value}; values are Python literals (numbers, True/False)."""
  import argparse
  import ast
  out = {}
  for item in filter(None, text.split(",")):
    name, sep, value = item.partition("=")
    if not sep:
      raise argparse.ArgumentTypeError(f"name=value pairs separated by commas, got {item!r}")
    try:
      out[name.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      raise argparse.ArgumentTypeError(f"{name}: {value!r} is not a number or True/False"
                                       ) from None
  return out


def main(argv: list[str] | None = None) -> None:
  from absl import logging
  logging.set_verbosity(logging.WARNING)  # orbax logs several INFO lines per restore
  args = _parser().parse_args(argv)
  protocols = frozen.FROZEN if args.protocol == "all" else (args.protocol,)
  try:
    sources = args.task or suite.default_tasks(args.workdir)
    results = suite.evaluate(args.workdir, sources, protocols, ("trained", *args.baselines),
                       args.freq_pool, args.unit_sec, chart=args.protocol == "all",
                       finetune_settings=args.finetune,
                       fewshot_classes_spec=args.fewshot_classes)
  except (FileNotFoundError, ValueError) as err:
    sys.exit(f"error: {err}")
  out = Path(args.workdir).absolute() / report.RESULTS_DIR
  print(report.markdown(results), end="")
  print(f"written: {out / 'results.json'}, {out / 'results.md'}"
        + (f", {out / 'results.png'}" if args.protocol == "all" else ""), file=sys.stderr)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
