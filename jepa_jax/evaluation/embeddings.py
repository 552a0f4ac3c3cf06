"""Frozen clip embeddings of a labelled task, cached: `python -m jepa_jax.embed`.

    python -m jepa_jax.embed --workdir=RUN --task=DIR [--freq_pool=concat|mean]
        [--layers=N,...|all] [--time_pool=mean|mean_std] [--random_init] [--unit_sec=S]

Loads the workdir's encoder export (or, with --random_init, the same encoder as its
training started: the baseline every number should beat), turns each clip of the task
(a task folder or labelled mel shards, see task_data) into one embedding as
features.clip_embeddings computes it, and caches the matrix in
`RUN/embeddings/<task>-<key>.npz`, the key hashing the encoder's parameters (file
contents), the task's clips, labels and settings, and the feature options: a later call
with the same inputs reads the cache, anything changed computes anew. Prints the path."""
import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from jepa_jax import export
from jepa_jax.evaluation import features, task_data
from jepa_jax.objectives import initial

CACHE_DIR = "embeddings"
# Part of every cache key: bump when the same inputs embed differently. 2: a clip's last
# chunk is padded with that clip's own pad value (dasheng: its max - top_db where higher
# than the floor), not the recipe's floor.
CACHE_VERSION = 2


MEAN_LOGMEL = "mean_logmel"  # the baseline feature set: the clip's log-mel averaged over time


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureSet:
  """A named way to turn clips into embeddings: an encoder (with its parameters) or,
  with encoder None, the mean-log-mel baseline."""
  name: str
  encoder: object | None
  params: object
  fingerprint: str


def _files_digest(root: Path) -> str:
  h = hashlib.sha256()
  for path in sorted(p for p in root.rglob("*") if p.is_file()):
    h.update(str(path.relative_to(root)).encode())
    with path.open("rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
  return h.hexdigest()


def export_dir(workdir: str | Path) -> Path:
  return Path(workdir).absolute() / "export"


BUILT_IN = ("trained", "random_init", MEAN_LOGMEL)


def load_feature_sets(workdir: str | Path, names: tuple[str, ...] = ("trained",)):
  """(config, frontend metadata, [FeatureSet]) for the names asked: 'trained' (the
  export), 'random_init' (the encoder as its training started), 'mean_logmel', or the
  path of another training workdir, whose exported encoder is named by the folder's name
  (e.g. the run a fine-tuned or tuned encoder started from, to compare on the same clips).
  """
  unknown = sorted(n for n in names if n not in BUILT_IN and "/" not in n)
  if unknown:
    raise ValueError(f"unknown feature set(s) {', '.join(unknown)}; known: "
                     f"{', '.join(BUILT_IN)}, or another workdir's path (with a '/')")
  config, encoder, params, frontend_meta = export.load_encoder(export_dir(workdir))

  def other_run(path: str) -> FeatureSet:
    name = Path(path).absolute().name
    if name in BUILT_IN:
      raise ValueError(f"the workdir {path} is named like the feature set {name!r}; "
                       f"rename or link it under another name")
    _, other, other_params, other_meta = export.load_encoder(export_dir(path))
    if other_meta != frontend_meta:
      raise ValueError(f"{path}'s encoder takes other inputs than {workdir}'s (front end, "
                       f"normalisation or frames differ), so they cannot share features")
    return FeatureSet(name, other, other_params, _files_digest(export_dir(path) / "encoder"))

  made = {
      "trained": lambda: FeatureSet("trained", encoder, params,
                                    _files_digest(export_dir(workdir) / "encoder")),
      "random_init": lambda: FeatureSet("random_init", encoder,
                                        initial.initial_encoder_params(config),
                                        task_data.fingerprint("random_init", config.to_dict())),
      MEAN_LOGMEL: lambda: FeatureSet(MEAN_LOGMEL, None, None,
                                      task_data.fingerprint(MEAN_LOGMEL)),
  }
  sets = [made[n]() if n in made else other_run(n) for n in names]
  taken = [fs.name for fs in sets]
  if len(set(taken)) < len(taken):
    raise ValueError(f"two feature sets share a name: {', '.join(taken)}")
  return config, frontend_meta, sets


def blocks_of(feature_set: FeatureSet, layers) -> tuple[int, ...]:
  """The blocks a `layers` spec (features.blocks_to_average) names in this feature set's
  encoder; () for the mean-log-mel baseline, which has none."""
  if feature_set.encoder is None:
    return ()
  return features.blocks_to_average(layers, feature_set.encoder.depth)


def cache_path(workdir: str | Path, task: task_data.LabelledTask, feature_set: FeatureSet,
               frontend_meta: dict, freq_pool: str, layers=(), time_pool: str = "mean"
               ) -> Path:
  blocks = blocks_of(feature_set, layers)
  # Options at their defaults add nothing, so that earlier caches stay valid.
  key = task_data.fingerprint(CACHE_VERSION, feature_set.fingerprint, task.fingerprint,
                              frontend_meta, freq_pool, *([blocks] if blocks else []),
                              *([time_pool] if time_pool != "mean" else []))
  return Path(workdir).absolute() / CACHE_DIR / f"{task.name}-{feature_set.name}-{key}.npz"


def _compute(feature_set: FeatureSet, mels, pads, frontend_meta: dict, freq_pool: str,
             layers, chunk_batch: int, time_pool: str) -> np.ndarray:
  """`pads`: each clip's own (task_data.load_clips), for the last chunk."""
  if feature_set.encoder is None:
    return features.mean_logmel(mels, time_pool)
  return features.clip_embeddings(feature_set.encoder, feature_set.params, mels,
                                  frontend_meta["frames"], pads, chunk_batch, freq_pool,
                                  blocks_of(feature_set, layers), time_pool)


def _save(path: Path, x: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.stem + ".tmp.npz")  # np.savez keeps a name ending in .npz
  np.savez(tmp, x=x)
  tmp.rename(path)  # atomic: a killed run never leaves a half-written cache entry


def embed_tasks(workdir: str | Path, sources: list, feature_sets: list[FeatureSet],
                frontend_meta: dict, *, freq_pool: str = "concat", layers=(),
                time_pool: str = "mean", unit_sec: float | None = None,
                chunk_batch: int = 64, cache: bool = True):
  """[(task, {feature set name: (clips, D) embeddings})] per source, from the cache where
  it holds them. Audio is read only for what must be computed, and a clip that several
  tasks share (the same file, by inode) is read and encoded once. `layers`: the blocks
  whose outputs are averaged (features.blocks_to_average; () the encoder's output);
  `time_pool`: features.pooled_over_time, for every feature set alike."""
  if freq_pool not in features.FREQ_POOLS:
    raise ValueError(f"unknown freq_pool {freq_pool!r}; known: {', '.join(features.FREQ_POOLS)}")
  features.check_time_pool(time_pool)
  for fs in feature_sets:  # a bad spec fails before any audio is read
    blocks_of(fs, layers)
  results, pending, memo = [], [], {}
  for source in sources:
    task = task_data.read(source, unit_sec)
    paths = {fs.name: cache_path(workdir, task, fs, frontend_meta, freq_pool, layers,
                                 time_pool) for fs in feature_sets}
    out = {}
    for fs in feature_sets:
      if cache and paths[fs.name].is_file():
        with np.load(paths[fs.name]) as f:
          out[fs.name] = f["x"]
    missing = {fs.name for fs in feature_sets if fs.name not in out}
    if missing:
      task, mels, pads = task_data.load_clips(source, frontend_meta, unit_sec, memo=memo)
      pending.append((out, paths, missing, mels, pads))
    results.append((task, out))
  for fs in feature_sets:
    jobs = [(out, paths, mels, pads) for out, paths, missing, mels, pads in pending
            if fs.name in missing]
    unique = {id(m): (m, p) for _, _, mels, pads in jobs
              for m, p in zip(mels, pads)}  # shared clips once
    if not unique:
      continue
    x = _compute(fs, [m for m, _ in unique.values()], [p for _, p in unique.values()],
                 frontend_meta, freq_pool, layers, chunk_batch, time_pool)
    row = {key: i for i, key in enumerate(unique)}
    for out, paths, mels, _ in jobs:
      out[fs.name] = x[[row[id(m)] for m in mels]]
      if cache:
        _save(paths[fs.name], out[fs.name])
  return results
