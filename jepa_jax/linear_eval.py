"""Linear evaluation of frozen encoders on labelled tasks (the task format of the
README: a folder of audio plus meta.csv with filename,label[,fold][,split]).

    python -m jepa_jax.linear_eval --workdir=RUN [--task=DIR,DIR...]

With no --task it evaluates on the held-out tasks of the embedded corpus. Reports the
trained encoder, the same encoder at initialisation, and a mean-log-mel baseline.
"""
import json
import sys
from pathlib import Path

import numpy as np

from data_pipelines import audio_io, frontends
from data_pipelines import tasks as tasks_lib
from jepa_jax import features, probe


def normalize(features: np.ndarray, frontend_meta: dict) -> np.ndarray:
  """(n_mels, T) front-end features -> the encoder's input, as in training: the scalar
  normalisation, then the learned per-mel-bin input transform if the export has one."""
  stats = frontend_meta["normalization"]
  x = (np.asarray(features, np.float64) - stats["mean"]) / stats["std"]
  if "input_norm" in frontend_meta:
    t = frontend_meta["input_norm"]
    x = x * np.asarray(t["scale"])[:, None] + np.asarray(t["shift"])[:, None]
  return x.astype(np.float32)


def load_mels(paths: list[Path], frontend_meta: dict) -> list[np.ndarray]:
  """The encoder input of each file, as the encoder saw it in training."""
  frontend = frontends.get_frontend(frontend_meta["frontend"]["name"])
  return [normalize(frontend.logmel(audio_io.load_audio(p, frontend.sample_rate)),
                    frontend_meta) for p in paths]


def pad_value(frontend_meta: dict) -> np.ndarray:
  """(n_mels, 1): the recipe's floor as encoder input, what short clips are padded with.

  The floor is the feature value of digital silence for the ln recipes; for dasheng's dB
  it is the amin floor, at or below a clip's own silence (max - top_db when top_db binds,
  `FrontEnd.pad_value(mel)`), so padding is never louder than the clip's quietest value.
  """
  frontend = frontends.get_frontend(frontend_meta["frontend"]["name"])  # as load_mels
  return normalize(np.full((frontend.n_mels, 1), frontend.floor), frontend_meta)


def _holdout(idx: np.ndarray, rng: np.random.Generator, fraction: float = 0.1):
  idx = rng.permutation(idx)
  k = max(1, int(round(len(idx) * fraction)))
  return np.sort(idx[k:]), np.sort(idx[:k])


def task_splits(task: tasks_lib.Task, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
  """[(train, valid, test) row indices]: one entry for a split column, one per fold
  (leave one fold out) for a fold column. 10 % of train is held out when there is no
  valid split."""
  rows = task.rows
  rng = np.random.default_rng(seed)
  if any(r.split for r in rows):
    by = {s: np.array([i for i, r in enumerate(rows) if r.split == s], int)
          for s in ("train", "valid", "test")}
    if not len(by["train"]) or not len(by["test"]):
      raise ValueError(f"task {task.dir} needs rows in both the train and test splits")
    if not len(by["valid"]):
      by["train"], by["valid"] = _holdout(by["train"], rng)
    return [(by["train"], by["valid"], by["test"])]
  folds = sorted({r.fold for r in rows if r.fold is not None})
  if len(folds) < 2:
    raise ValueError(f"task {task.dir}: meta.csv needs a split column (train/valid/test) or "
                     f"a fold column with at least two folds")
  out = []
  for fold in folds:
    test = np.array([i for i, r in enumerate(rows) if r.fold == fold], int)
    rest = np.array([i for i, r in enumerate(rows) if r.fold != fold], int)
    out.append((*_holdout(rest, rng), test))
  return out


def probe_task(x: np.ndarray, task: tasks_lib.Task, probe_cfg) -> dict:
  """Linear probe of features x (one row per task row) on the task's splits."""
  if task.multilabel:
    raise ValueError(f"task {task.dir} is multi-label; the linear probe here is single-label")
  names = {n: i for i, n in enumerate(task.label_names)}
  y = np.array([names[r.labels[0]] for r in task.rows])
  runs = [probe.linear_probe(
      probe.Split(x[tr], y[tr]), probe.Split(x[va], y[va]), probe.Split(x[te], y[te]),
      len(names), seeds=probe_cfg.seeds, lr=probe_cfg.lr, max_epochs=probe_cfg.max_epochs,
      patience=probe_cfg.patience, batch_size=probe_cfg.batch_size)
      for tr, va, te in task_splits(task)]
  return probe.seed_summary(np.mean([r["per_seed"] for r in runs], axis=0))  # fold mean


def _file_key(path: Path) -> tuple[int, int]:
  st = path.stat()
  return st.st_dev, st.st_ino


def evaluate(encoders: dict, task_dirs: dict[str, Path], frontend_meta: dict,
             probe_cfg) -> dict:
  """encoders: name -> (encoder module, params). Returns, per task, the probe result of
  each encoder's clip embeddings and of the mean-log-mel baseline ('mean_logmel'). Audio
  shared between tasks is loaded and encoded once."""
  tasks = {name: tasks_lib.read_task(d) for name, d in task_dirs.items()}
  # One file may appear in several tasks, under other paths (hard links): key by inode.
  files = {}
  for t in tasks.values():
    for r in t.rows:
      files.setdefault(_file_key(r.path), r.path)
  where = {key: i for i, key in enumerate(files)}
  mels = load_mels(list(files.values()), frontend_meta)
  feature_sets = {name: features.clip_embeddings(enc, params, mels, frontend_meta["frames"],
                                                 pad_value(frontend_meta), probe_cfg.chunk_batch)
                  for name, (enc, params) in encoders.items()}
  feature_sets["mean_logmel"] = features.mean_logmel(mels)
  results = {}
  for task_name, task in tasks.items():
    rows = np.array([where[_file_key(r.path)] for r in task.rows])
    results[task_name] = {fs: probe_task(x[rows], task, probe_cfg)
                          for fs, x in feature_sets.items()}
  return results


def summarise(results: dict) -> dict:
  """Task means per feature set: `probe_accuracy<_name>` and the seed std of the
  task-mean accuracy (`..._seed_std`)."""
  out = {}
  for fs in next(iter(results.values())):
    task_mean = probe.seed_summary(np.mean([results[t][fs]["per_seed"] for t in results], 0))
    key = "probe_accuracy" if fs == "trained" else f"probe_accuracy_{fs}"
    out[key], out[key + "_seed_std"] = task_mean["mean"], task_mean["std"]
  out["tasks"] = {t: {fs: {"mean": r["mean"], "std": r["std"]} for fs, r in v.items()}
                  for t, v in results.items()}
  return out


def evaluate_workdir(workdir: str | Path, task_dirs: dict[str, Path] | None = None) -> dict:
  """Probe a workdir's exported encoder, the same encoder at initialisation and the
  mean-log-mel baseline on `task_dirs` (default: the embedded corpus's held-out tasks).
  Returns `summarise` of the results."""
  from jepa_jax import datasets, export, train  # train builds the initial encoder
  config, encoder, params, frontend_meta = export.load_encoder(Path(workdir) / "export")
  if task_dirs is None:
    task_dirs = datasets.resolve(config).probe_tasks
    if not task_dirs:
      raise ValueError("the run trained on prepared data, which has no probe tasks: give task "
                       "folders (a folder of audio with meta.csv each)")
  results = evaluate({"trained": (encoder, params),
                      "random_init": (encoder, train.initial_encoder_params(config))},
                     task_dirs, frontend_meta, config.probe)
  return summarise(results)


def main(argv=None) -> None:
  from absl import app, flags

  flags.DEFINE_string("workdir", None, "training workdir holding export/")
  flags.DEFINE_list("task", [], "task folders (default: the embedded corpus's tasks)")
  flags.mark_flag_as_required("workdir")

  def run(_):
    tasks = {Path(t).name: Path(t) for t in flags.FLAGS.task} or None
    try:
      summary = evaluate_workdir(flags.FLAGS.workdir, tasks)
    except (FileNotFoundError, ValueError) as err:
      sys.exit(f"error: {err}")
    print(json.dumps(summary))

  app.run(run, argv)


if __name__ == "__main__":
  main()
