"""Evaluate a trained encoder on labelled tasks: `python -m jepa_jax.evaluate`.

    python -m jepa_jax.evaluate --workdir=RUN --task=DIR[,DIR...] --protocol=P
        [--baselines=random_init,mean_logmel] [--freq_pool=concat|mean] [--unit_sec=S]

P is one of (SPEC section 8):
  linear    EVAR linear probe: standardised features, one linear layer, Adam at the
            config's probe lr, early stopping on validation, best epoch, 3 seeds;
  mlp       HEAR head: 1 or 2 hidden layers of 1024 with BatchNorm and dropout 0.1, the
            Adam lr grid {3.2e-3, 1e-3, 3.2e-4, 1e-4}; depth and lr chosen on validation;
  knn       L2-normalised cosine k-NN, k = 10, softmax-weighted vote at temperature 0.07;
  fewshot   5-way 1-shot and 5-shot episodes (15 queries), nearest centroid, 600 episodes,
            mean and 95 % confidence interval; with --fewshot_classes, only among those
            classes ('held_out': the classes the run's data.exclude_classes kept out of
            its training); every other feature set is also compared with the trained
            encoder on the same episodes ('trained - NAME': the paired difference);
  finetune  full fine-tuning (jepa_jax.finetune; settings: the config's `finetune`
            section stored in the export, with --finetune=name=value,... on top);
  all       the four frozen protocols, plus a bar chart.
Each runs on the trained encoder and on the baselines asked for (the encoder at its
random initialisation by default; `mean_logmel`: the clip's log-mel averaged over time;
a path with a '/': another run's exported encoder, e.g. the one this run started from).
Tasks: task folders (audio + meta.csv) or labelled mel shards (task_data); folds give
leave-one-fold-out runs averaged per seed. Multi-label tasks report mAP and d-prime.

Results accumulate in RUN/eval/results.json (task -> protocol -> feature set) and are
rendered to RUN/eval/results.md; `all` also draws RUN/eval/results.png. The last line
printed is the JSON of this call's results.
"""
import json
import sys
from pathlib import Path

import numpy as np

from jepa_jax import embed, fewshot, knn, probe, scores, task_data

FROZEN = ("linear", "mlp", "knn", "fewshot")
PROTOCOLS = FROZEN + ("finetune",)
RESULTS_DIR = "eval"


def _fold_mean(per_fold: list[list[dict]]) -> list[dict]:
  """Per seed, each score averaged over the folds."""
  return [{k: float(np.mean([fold[s][k] for fold in per_fold])) for k in per_fold[0][s]}
          for s in range(len(per_fold[0]))]


def _heads(x: np.ndarray, task: task_data.LabelledTask, heads: list, lrs, cfg) -> dict:
  """Train each head of `heads` at each lr per fold, keep the best on validation."""
  y = task.targets()
  per_fold, chosen = [], []
  for tr, va, te in task_data.splits(task):
    runs = [probe.train_head(
        head, probe.Split(x[tr], y[tr]), probe.Split(x[va], y[va]), probe.Split(x[te], y[te]),
        len(task.label_names), task.multilabel, seeds=cfg.seeds, lrs=lrs,
        max_epochs=cfg.max_epochs, patience=cfg.patience, batch_size=cfg.batch_size)
        for head in heads]
    best = int(np.argmax([r["valid_score"] for r in runs]))
    per_fold.append(runs[best]["per_seed"])
    chosen.append({"hidden_layers": len(heads[best].hidden), "lr": runs[best]["lr"]})
  return {"scores": scores.summary(_fold_mean(per_fold)), "chosen": chosen}


def linear(x, task, cfg) -> dict:
  return _heads(x, task, [probe.LINEAR], (cfg.lr,), cfg)


def mlp(x, task, cfg) -> dict:
  return _heads(x, task, [probe.mlp_head(d) for d in probe.MLP_DEPTHS],
                probe.MLP_LEARNING_RATES, cfg)


def knn_protocol(x, task, cfg) -> dict:
  y = task.targets()
  per_fold = []
  for tr, va, te in task_data.splits(task):
    labelled = np.concatenate([tr, va])
    votes = knn.knn_scores(x[labelled], y[labelled], x[te], len(task.label_names))
    per_fold.append([scores.task_scores(votes, y[te], task.multilabel)])
  return {"scores": scores.summary(_fold_mean(per_fold)), "k": knn.K,
          "temperature": knn.TEMPERATURE}


def fewshot_protocol(x, task, classes: tuple[str, ...] | None = None,
                     baseline: np.ndarray | None = None) -> dict:
  """Few-shot accuracies of x, among `classes` (names; default all); with `baseline`
  (features of the same clips), the paired difference x - baseline instead."""
  if task.multilabel:
    raise ValueError(f"task {task.name} is multi-label; few-shot episodes need one class "
                     f"per clip")
  kept = None if classes is None else np.asarray(
      [task.label_names.index(c) for c in classes])
  if baseline is None:
    scores = {f"accuracy_{k}shot": fewshot.fewshot(x, task.targets(), shots=k, classes=kept)
              for k in fewshot.SHOTS}
  else:
    scores = {f"accuracy_{k}shot": fewshot.paired_difference(x, baseline, task.targets(),
                                                             shots=k, classes=kept)
              for k in fewshot.SHOTS}
  return {"scores": scores, **({} if classes is None else {"classes": list(classes)})}


def difference_name(feature_set: str) -> str:
  """The result entry of the paired comparison of the trained encoder with a feature set."""
  return f"trained - {feature_set}"


def fewshot_classes(spec: str, config, tasks: list) -> dict[str, tuple[str, ...]]:
  """--fewshot_classes -> {task name: class names}: '' (all classes of every task: {}),
  'held_out' (the run's data.exclude_classes) or 'task:name,name;task:name'."""
  from jepa_jax import config_lib, datasets
  if spec == "held_out":
    spec = config.data.get("exclude_classes", "")
    if not spec:
      raise ValueError("--fewshot_classes=held_out: the run held no classes out of its "
                       "training data (its data.exclude_classes is empty)")
  try:
    chosen = config_lib.parse_classes(spec)
  except config_lib.ConfigError as err:
    raise ValueError(f"--fewshot_classes: {err}") from None
  datasets.class_indices(chosen, {t.name: list(t.label_names) for t in tasks},
                         "--fewshot_classes (the tasks evaluated)")
  return chosen


RUNNERS = {"linear": linear, "mlp": mlp, "knn": knn_protocol}  # fewshot: _fewshot_sets


def _cell(result: dict, metric: str) -> str:
  s = result["scores"][metric]
  if "ci95" in s:
    return f"{s['mean']:.3f} ± {s['ci95']:.3f} (95 % CI)"
  # One value (k-NN has no seeds): no spread to show.
  return f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if len(s["per_seed"]) > 1 else "")


def rows(results: dict):
  """(task, protocol, metric, {feature set: result}) for every score in `results`."""
  for task, by_protocol in results.items():
    for protocol, by_set in by_protocol.items():
      metrics = next(iter(by_set.values()))["scores"]
      for metric in metrics:
        yield task, protocol, metric, by_set


def _columns(groups) -> list[str]:
  """The feature sets of (task, protocol, metric, by_set) rows: the trained encoder first."""
  return sorted({fs for *_, by_set in groups for fs in by_set},
                key=lambda s: (s != "trained", s))


def markdown(results: dict) -> str:
  sets = _columns(rows(results))
  lines = ["| task | protocol | metric | " + " | ".join(sets) + " |",
           "|---|---|---|" + "---|" * len(sets)]
  for task, protocol, metric, by_set in rows(results):
    cells = [_cell(by_set[fs], metric) if fs in by_set else "" for fs in sets]
    lines.append(f"| {task} | {protocol} | {metric} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def bar_chart(results: dict, path: Path) -> None:
  """One group of bars per (task, protocol, score), one bar per feature set; d-prime,
  on another scale than the [0, 1] scores, is left to the table."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  groups = [r for r in rows(results) if r[2] != "d_prime"]
  sets = [fs for fs in _columns(groups) if not fs.startswith(difference_name(""))]
  width = 0.8 / len(sets)
  fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(groups)), 4))
  for j, fs in enumerate(sets):
    means = [g[3][fs]["scores"][g[2]]["mean"] if fs in g[3] else np.nan for g in groups]
    errs = [(lambda s: s.get("ci95", s.get("std", 0.0)))(g[3][fs]["scores"][g[2]])
            if fs in g[3] else 0.0 for g in groups]
    ax.bar(np.arange(len(groups)) + (j - (len(sets) - 1) / 2) * width, means, width,
           yerr=errs, capsize=2, label=fs)
  ax.set_xticks(np.arange(len(groups)))
  ax.set_xticklabels([f"{t}\n{p}\n{m}" for t, p, m, _ in groups], fontsize=7)
  ax.set_ylim(0, 1)
  ax.set_ylabel("score")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _merge(path: Path, new: dict) -> dict:
  merged = json.loads(path.read_text()) if path.is_file() else {}
  for task, by_protocol in new.items():
    for protocol, by_set in by_protocol.items():
      merged.setdefault(task, {}).setdefault(protocol, {}).update(by_set)
  return merged


def write_results(workdir: str | Path, results: dict, chart: bool) -> dict:
  """Merge into RUN/eval/results.json, render results.md (and results.png)."""
  out = Path(workdir).absolute() / RESULTS_DIR
  out.mkdir(parents=True, exist_ok=True)
  merged = _merge(out / "results.json", results)
  tmp = out / "results.json.tmp"
  tmp.write_text(json.dumps(merged, indent=2))
  tmp.rename(out / "results.json")
  (out / "results.md").write_text(markdown(merged))
  if chart:
    bar_chart(results, out / "results.png")
  return merged


def _finetune(sources, sets, frontend_meta, config, unit_sec, overrides: dict) -> dict:
  from jepa_jax import finetune
  # Older exports have no finetune section: the defaults fill what is not given.
  settings = {**config.get("finetune", {}), **overrides}
  finetune.settings_of(settings)  # bad settings fail here, before any audio is read
  encoders = [fs for fs in sets if fs.encoder is not None]  # a fixed feature has nothing to tune
  results = {}
  for source in sources:
    if not encoders:
      continue
    task, mels = task_data.load_mels(source, frontend_meta, unit_sec, whole=True)
    for fs in encoders:

      def progress(p, name=fs.name, task_name=task.name):
        valid = ", ".join(f"{k} {v:.3f}" for k, v in p["valid"].items())
        print(f"finetune {task_name} {name}: seed {p['seed']} fold {p['fold']} epoch "
              f"{p['epoch']} loss {p['loss']:.4f} valid {valid}", file=sys.stderr)

      results.setdefault(task.name, {}).setdefault("finetune", {})[fs.name] = (
          finetune.finetune_task(fs.encoder, fs.params, frontend_meta, task, mels,
                                 settings, progress=progress))
  return results


def evaluate(workdir: str | Path, sources: list, protocols: tuple[str, ...],
             feature_sets: tuple[str, ...] = ("trained", "random_init"),
             freq_pool: str = "concat", unit_sec: float | None = None, chart: bool = False,
             finetune_settings: dict | None = None, fewshot_classes_spec: str = "") -> dict:
  """Run `protocols` on every task for every feature set; write and return the results
  (task -> protocol -> feature set -> {'scores': ...}). `finetune_settings` override the
  export's config.finetune fields; `fewshot_classes_spec` as --fewshot_classes."""
  unknown = sorted(set(protocols) - set(PROTOCOLS))
  if unknown:
    raise ValueError(f"unknown protocol(s) {', '.join(unknown)}; known: "
                     f"{', '.join(PROTOCOLS)}, all")
  config, frontend_meta, sets = embed.load_feature_sets(workdir, feature_sets)
  results = {}
  frozen = [p for p in protocols if p in FROZEN]
  if "fewshot" in frozen:  # bad class names fail here, before any audio is encoded
    chosen = fewshot_classes(fewshot_classes_spec, config,
                             [task_data.read(s, unit_sec) for s in sources])
  if frozen:
    for task, x in embed.embed_tasks(workdir, sources, sets, frontend_meta,
                                     freq_pool=freq_pool, unit_sec=unit_sec,
                                     chunk_batch=config.probe.chunk_batch):
      for protocol in frozen:
        if protocol == "fewshot":
          if task.multilabel or (chosen and task.name not in chosen):
            print(f"fewshot: skipping {'multi-label ' * task.multilabel}task {task.name}"
                  + ("" if task.multilabel else " (not in --fewshot_classes)"),
                  file=sys.stderr)
            continue
          results.setdefault(task.name, {})[protocol] = _fewshot_sets(
              x, task, chosen.get(task.name))
          continue
        results.setdefault(task.name, {})[protocol] = {
            name: RUNNERS[protocol](features, task, config.probe)
            for name, features in x.items()}
  if "finetune" in protocols:
    for task, by_protocol in _finetune(sources, sets, frontend_meta, config, unit_sec,
                                       finetune_settings or {}).items():
      results.setdefault(task, {}).update(by_protocol)
  write_results(workdir, results, chart)
  return results


def _fewshot_sets(x: dict, task, classes: tuple[str, ...] | None) -> dict:
  """Few-shot results of every feature set, and each one's paired difference from the
  trained encoder on the same episodes."""
  out = {name: fewshot_protocol(features, task, classes) for name, features in x.items()}
  for name, features in x.items():
    if name != "trained" and "trained" in x:
      out[difference_name(name)] = fewshot_protocol(x["trained"], task, classes,
                                                    baseline=features)
  return out


def probe_summary(results: dict) -> dict:
  """The main job's line from linear-probe results: task means per feature set,
  `probe_accuracy<_name>` (the headline score: accuracy, or mAP for multi-label tasks)
  and the seed std of the task mean (`..._seed_std`), with per-task values."""
  out = {}
  sets = next(iter(results.values()))["linear"]
  for fs in sets:
    per_task = [next(iter(by_p["linear"][fs]["scores"].values()))["per_seed"]
                for by_p in results.values()]
    task_mean = scores.summary([{"s": v} for v in np.mean(per_task, 0)])["s"]
    key = "probe_accuracy" if fs == "trained" else f"probe_accuracy_{fs}"
    out[key], out[key + "_seed_std"] = task_mean["mean"], task_mean["std"]
  out["tasks"] = {t: {fs: {k: v for k, v in next(iter(r["scores"].values())).items()
                           if k in ("mean", "std")}
                      for fs, r in by_p["linear"].items()}
                  for t, by_p in results.items()}
  return out


def probe_workdir(workdir: str | Path, sources: list | None = None) -> dict:
  """The main job's probe: linear protocol on the trained encoder, its random init and
  the mean-log-mel baseline (default tasks: the embedded corpus's); `probe_summary`."""
  results = evaluate(workdir, sources or default_tasks(workdir), ("linear",),
                     ("trained", "random_init", embed.MEAN_LOGMEL))
  return probe_summary(results)


def _parser():
  import argparse

  from jepa_jax import features

  def names(text: str) -> list[str]:
    return [n for n in text.split(",") if n]

  p = argparse.ArgumentParser(prog="python -m jepa_jax.evaluate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="training workdir holding export/")
  p.add_argument("--task", type=names, default=[],
                 help="task folders or labelled mel shard directories, comma-separated "
                      "(default: the embedded corpus's tasks, for runs trained on it)")
  p.add_argument("--protocol", choices=PROTOCOLS + ("all",), default="linear")
  p.add_argument("--baselines", type=names, default=["random_init"],
                 help=f"feature sets besides the trained encoder: random_init, "
                      f"{embed.MEAN_LOGMEL}, or another run's workdir (a path with a '/') "
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
  protocols = FROZEN if args.protocol == "all" else (args.protocol,)
  try:
    sources = args.task or default_tasks(args.workdir)
    results = evaluate(args.workdir, sources, protocols, ("trained", *args.baselines),
                       args.freq_pool, args.unit_sec, chart=args.protocol == "all",
                       finetune_settings=args.finetune,
                       fewshot_classes_spec=args.fewshot_classes)
  except (FileNotFoundError, ValueError) as err:
    sys.exit(f"error: {err}")
  out = Path(args.workdir).absolute() / RESULTS_DIR
  print(markdown(results), end="")
  print(f"written: {out / 'results.json'}, {out / 'results.md'}"
        + (f", {out / 'results.png'}" if args.protocol == "all" else ""), file=sys.stderr)
  print(json.dumps(results))


def default_tasks(workdir: str | Path) -> list[Path]:
  """The embedded corpus's tasks, for a run trained on it."""
  from jepa_jax import datasets, export
  tasks = datasets.resolve(export.load_config(embed.export_dir(workdir))).probe_tasks
  if not tasks:
    raise ValueError("the run trained on prepared data, which has no probe tasks: give "
                     "--task (a folder of audio with meta.csv, or labelled mel shards)")
  return list(tasks.values())


if __name__ == "__main__":
  main()
