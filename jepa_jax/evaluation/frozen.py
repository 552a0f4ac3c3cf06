"""The frozen-encoder protocols on a task's clip embeddings: linear (EVAR), linear with
its lr validated, MLP (HEAR), k-NN (X-ARES) and few-shot (uaMix-MAE), each averaged over
the task's folds."""
import numpy as np

from data_pipelines import tasks as tasks_lib
from jepa_jax.config import fields
from jepa_jax.evaluation import fewshot, knn, probe, scores, task_data

FROZEN = ("linear", "linear_validated", "mlp", "knn", "fewshot")
# How EVAR's linear evaluation trains besides the config's probe fields (probe.py):
# its early-stopping rule (score >= best) and Adam's weight decay.
EVAR_TRAINING = dict(ties=probe.TIES_LATER, weight_decay=probe.EVAR_WEIGHT_DECAY)


def _fold_mean(per_fold: list[list[dict]]) -> list[dict]:
  """Per seed, each score averaged over the folds."""
  return [{k: float(np.mean([fold[s][k] for fold in per_fold])) for k in per_fold[0][s]}
          for s in range(len(per_fold[0]))]


def _probes(x: np.ndarray, task: task_data.LabelledTask, kinds: list, lrs, cfg,
            **training) -> dict:
  """Train a probe of each kind of `kinds` at each lr per fold, keep the best on
  validation (`chosen`, per fold: its depth, lr and every lr's mean validation score).
  `training`: probe.train_probe's ties and weight_decay."""
  y = task.targets()
  per_fold, chosen = [], []
  for tr, va, te in task_data.splits(task):
    runs = [probe.train_probe(
        kind, probe.Split(x[tr], y[tr]), probe.Split(x[va], y[va]), probe.Split(x[te], y[te]),
        len(task.label_names), task.multilabel, seeds=cfg.seeds, lrs=lrs,
        max_epochs=cfg.max_epochs, patience=cfg.patience, batch_size=cfg.batch_size,
        **training)
        for kind in kinds]
    best = int(np.argmax([r["valid_score"] for r in runs]))
    per_fold.append(runs[best]["per_seed"])
    chosen.append({"hidden_layers": len(kinds[best].hidden), "lr": runs[best]["lr"],
                   "valid_scores": {f"{lr:g}": v for lr, v in
                                    zip(lrs, runs[best]["valid_scores"])}})
  return {"scores": scores.summary(_fold_mean(per_fold)), "chosen": chosen}


def linear(x, task, cfg) -> dict:
  """EVAR's linear evaluation at `cfg.lr` (EVAR's lr_lineareval for the encoder's family;
  EVAR's epochs, patience and batch are the probe section's defaults)."""
  return _probes(x, task, [probe.LINEAR], (cfg.lr,), cfg, **EVAR_TRAINING)


def linear_validated(x, task, cfg) -> dict:
  """`linear` at each lr of `cfg.lr_grid`, the lr chosen by the mean validation score of
  the seeds (the test split takes no part in the choice)."""
  return _probes(x, task, [probe.LINEAR], tuple(cfg.lr_grid), cfg, **EVAR_TRAINING)


def mlp(x, task, cfg) -> dict:
  return _probes(x, task, [probe.mlp_probe(d) for d in probe.MLP_DEPTHS],
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
  if spec == "held_out":
    spec = config.data.exclude_classes
    if not spec:
      raise ValueError("--fewshot_classes=held_out: the run held no classes out of its "
                       "training data (its data.exclude_classes is empty)")
  try:
    chosen = fields.parse_classes(spec)
  except fields.ConfigError as err:
    raise ValueError(f"--fewshot_classes: {err}") from None
  tasks_lib.class_indices(chosen, {t.name: list(t.label_names) for t in tasks},
                          "--fewshot_classes (the tasks evaluated)")
  return chosen


RUNNERS = {"linear": linear, "linear_validated": linear_validated, "mlp": mlp,
           "knn": knn_protocol}  # fewshot: _fewshot_sets
