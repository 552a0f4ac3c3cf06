"""Evaluate a trained encoder on labelled tasks: `python -m jepa_jax.evaluate`.

    python -m jepa_jax.evaluate --workdir=RUN --task=DIR[,DIR...] --protocol=P
        [--baselines=random_init,mean_logmel] [--freq_pool=concat|mean] [--unit_sec=S]
        [--layers=N,...|all] [--time_pool=mean|mean_std] [--audio_root=DIR] [--plots]

P is one of (docs/evaluation.md):
  linear    EVAR's linear evaluation: standardised features, one linear layer, Adam at
            the config's probe.lr (EVAR's for the encoder's family: 3e-5 for this
            library's patch ViTs, 3e-4 for Dasheng), batch 200, up to 200 epochs, early
            stopping after 20 epochs without a validation score >= the best, best epoch
            restored, 3 seeds;
  linear_validated  the same, at each lr of probe.lr_grid {3e-5, 3e-4, 1e-3, 3e-3, 1e-2},
            the lr chosen on validation (the main job's probe);
  mlp       HEAR head: 1 or 2 hidden layers of 1024 with BatchNorm and dropout 0.1, the
            Adam lr grid {3.2e-3, 1e-3, 3.2e-4, 1e-4}; depth and lr chosen on validation;
  knn       L2-normalised cosine k-NN, k = 10, softmax-weighted vote at temperature 0.07;
  fewshot   5-way 1-shot and 5-shot episodes (15 queries), nearest centroid, 600 episodes,
            mean and 95 % confidence interval; with --fewshot_classes, only among those
            classes ('held_out': the classes the run's data.exclude_classes kept out of
            its training); every other feature set is also compared with the trained
            encoder on the same episodes ('trained - NAME': the paired difference);
  finetune  full fine-tuning (jepa_jax.evaluation.finetune; settings: the config's `finetune`
            section stored in the export, with --finetune=name=value,... on top);
  all       the frozen protocols (all but finetune), plus a bar chart.
Each runs on the trained encoder and on the baselines asked for (the encoder at its
random initialisation by default; `mean_logmel`: the clip's log-mel averaged over time,
with --time_pool=mean_std its mean and std, as every feature set is then pooled;
a path with a '/': another run's exported encoder, e.g. the one this run started from).
Tasks (task_data): task folders (audio + meta.csv), HEAR 2021 scene task folders
(task_metadata.json), EVAR metadata CSVs (--task=FILE.csv, --audio_root=DIR,
--unit_sec=S) or labelled mel shards; folds give leave-one-fold-out runs averaged per
seed. Multi-label tasks report mAP and d-prime; a HEAR task reports the scores its
`evaluation` list names (top1_acc and pitch_acc as accuracy, mAP, d_prime), with each
name's score in the result's `metrics`.

Results accumulate in RUN/eval/results.json (task -> protocol -> feature set) and are
rendered to RUN/eval/results.md; `all` also draws RUN/eval/results.png; --plots draws
each task's embedding map and nearest-neighbour sheet (jepa_jax/evaluation/plots.py)
to RUN/eval/<task>_embedding_map.png and <task>_neighbours.png. The last line
printed is the JSON of this call's results."""
import sys
from pathlib import Path

import numpy as np

from data_pipelines import default_corpus
from jepa_jax import export
from jepa_jax.evaluation import embeddings, finetune, frozen, plots, report, scores, task_data

PROTOCOLS = frozen.FROZEN + ("finetune",)


def _finetune(sources, sets, frontend_meta, config, unit_sec, overrides: dict) -> dict:
  settings = {**config.finetune.to_dict(), **overrides}
  finetune.settings_of(settings)  # bad settings fail here, before any audio is read
  encoders = [fs for fs in sets if fs.encoder is not None]  # a fixed feature has nothing to tune
  results = {}
  for source in sources:
    if not encoders:
      continue
    task, mels, pads = task_data.load_clips(source, frontend_meta, unit_sec, whole=True)
    for fs in encoders:

      def progress(p, name=fs.name, task_name=task.name):
        valid = ", ".join(f"{k} {v:.3f}" for k, v in p["valid"].items())
        print(f"finetune {task_name} {name}: seed {p['seed']} fold {p['fold']} epoch "
              f"{p['epoch']} loss {p['loss']:.4f} valid {valid}", file=sys.stderr)

      results.setdefault(task.name, {}).setdefault("finetune", {})[fs.name] = (
          task_data.reported(finetune.finetune_task(fs.encoder, fs.params, frontend_meta,
                                                    task, mels, settings,
                                                    progress=progress, pads=pads), task))
  return results


def evaluate(workdir: str | Path, sources: list, protocols: tuple[str, ...],
             feature_sets: tuple[str, ...] = ("trained", "random_init"),
             freq_pool: str = "concat", unit_sec: float | None = None, chart: bool = False,
             layers=(), time_pool: str = "mean",
             finetune_settings: dict | None = None, fewshot_classes_spec: str = "",
             draw_plots: bool = False) -> dict:
  """Run `protocols` on every task for every feature set; write and return the results
  (task -> protocol -> feature set -> {'scores': ...}). `layers`: the frozen protocols
  read the mean of these blocks' outputs (features.blocks_to_average; () the encoder's
  output) and pool a clip's time steps by `time_pool` (features.pooled_over_time, the
  mean_logmel baseline too); fine-tuning trains the whole encoder. `finetune_settings`
  override the export's config.finetune fields; `fewshot_classes_spec` as --fewshot_classes;
  `draw_plots`: each task's embedding map and nearest-neighbour sheet (`plots`), drawn from
  the embeddings the protocols use."""
  unknown = sorted(set(protocols) - set(PROTOCOLS))
  if unknown:
    raise ValueError(f"unknown protocol(s) {', '.join(unknown)}; known: "
                     f"{', '.join(PROTOCOLS)}, all")
  config, frontend_meta, sets = embeddings.load_feature_sets(workdir, feature_sets)
  results = {}
  frozen_protocols = [p for p in protocols if p in frozen.FROZEN]
  if "fewshot" in frozen_protocols:  # bad class names fail here, before any audio is encoded
    chosen = frozen.fewshot_classes(fewshot_classes_spec, config,
                                    [task_data.read(s, unit_sec) for s in sources])
  # A result read from chosen blocks or pooled otherwise than by the mean says so.
  pooled = {"time_pool": time_pool} if time_pool != "mean" else {}
  read_from = {fs.name: ({"layers": list(b)} if (b := embeddings.blocks_of(fs, layers))
                         else {}) | pooled for fs in sets}
  if frozen_protocols or draw_plots:
    embedded = embeddings.embed_tasks(workdir, sources, sets, frontend_meta,
                                      freq_pool=freq_pool, layers=layers,
                                      time_pool=time_pool, unit_sec=unit_sec,
                                      chunk_batch=config.probe.chunk_batch)
    for source, (task, x) in zip(sources, embedded):
      if draw_plots:
        _draw(workdir, source, task, x, frontend_meta, unit_sec)
      for protocol in frozen_protocols:
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
            name: {**task_data.reported(frozen.RUNNERS[protocol](features, task, config.probe),
                                        task), **read_from[name]}
            for name, features in x.items()}
  if "finetune" in protocols:
    for task, by_protocol in _finetune(sources, sets, frontend_meta, config, unit_sec,
                                       finetune_settings or {}).items():
      results.setdefault(task, {}).update(by_protocol)
  report.write_results(workdir, results, chart)
  return results


def _draw(workdir, source, task, x: dict, frontend_meta: dict, unit_sec) -> None:
  """The task's pictures from its embeddings `x`; the log-mels of the sheet are read again
  (the embeddings may have come from the cache)."""
  _, mels = task_data.load_mels(source, frontend_meta, unit_sec)
  paths = plots.task_pictures(workdir, task, x, mels, report.RESULTS_DIR)
  print(f"written: {', '.join(map(str, paths))}", file=sys.stderr)


def _fewshot_sets(x: dict, task, classes: tuple[str, ...] | None) -> dict:
  """Few-shot results of every feature set, and each one's paired difference from the
  trained encoder on the same episodes."""
  out = {name: frozen.fewshot_protocol(features, task, classes) for name, features in x.items()}
  for name, features in x.items():
    if name != "trained" and "trained" in x:
      out[frozen.difference_name(name)] = frozen.fewshot_protocol(x["trained"], task, classes,
                                                    baseline=features)
  return out


def _chosen_lr(result: dict) -> float | list[float]:
  """The lr a linear protocol trained with: one value, or one per fold where they differ."""
  lrs = [c["lr"] for c in result["chosen"]]
  return lrs[0] if len(set(lrs)) == 1 else lrs


def probe_summary(results: dict, protocol: str = "linear_validated") -> dict:
  """The main job's line from linear-probe results (`protocol`, named as `probe_protocol`):
  task means per feature set, `probe_accuracy<_name>` (the headline score: accuracy, or
  mAP for multi-label tasks) and the seed std of the task mean (`..._seed_std`), with
  per-task values and the lr each trained with."""
  out = {"probe_protocol": protocol}
  sets = next(iter(results.values()))[protocol]
  for fs in sets:
    per_task = [next(iter(by_p[protocol][fs]["scores"].values()))["per_seed"]
                for by_p in results.values()]
    task_mean = scores.summary([{"s": v} for v in np.mean(per_task, 0)])["s"]
    key = "probe_accuracy" if fs == "trained" else f"probe_accuracy_{fs}"
    out[key], out[key + "_seed_std"] = task_mean["mean"], task_mean["std"]
  out["tasks"] = {t: {fs: {**{k: v for k, v in next(iter(r["scores"].values())).items()
                              if k in ("mean", "std")}, "lr": _chosen_lr(r)}
                      for fs, r in by_p[protocol].items()}
                  for t, by_p in results.items()}
  return out


def probe_workdir(workdir: str | Path, sources: list | None = None) -> dict:
  """The main job's probe: the export's `probe.protocol` (linear_validated unless set
  otherwise; linear for exports written before the field) on the trained encoder, its
  random init and the mean-log-mel baseline (default tasks: the embedded corpus's);
  `probe_summary`."""
  protocol = export.load_config(embeddings.export_dir(workdir)).probe.protocol
  results = evaluate(workdir, sources or default_tasks(workdir), (protocol,),
                     ("trained", "random_init", embeddings.MEAN_LOGMEL))
  return probe_summary(results, protocol)


def default_tasks(workdir: str | Path) -> list[Path]:
  """The embedded corpus's tasks, for a run trained on it."""
  config = export.load_config(embeddings.export_dir(workdir))
  if config.data.dir:
    raise ValueError("the run trained on prepared data, which has no probe tasks: give "
                     f"--task ({task_data.KINDS})")
  s = config.data.synthetic
  corpus = default_corpus.ensure_default_corpus(
      num_pretrain=s.num_pretrain, num_probe=s.num_probe, seed=s.seed,
      frontend=config.data.frontend)
  return list(corpus.tasks.values())
