"""Pictures of a run (matplotlib, Agg):

  the embedding map of a task: each clip's embedding in 2-D (t-SNE where scikit-learn is
    installed, the `plots` extra; else PCA by NumPy's SVD), coloured by class, one panel
    per feature set (the trained encoder beside its random initialisation);
  the nearest-neighbour sheet: a query clip's log-mel and those of its k nearest clips
    (cosine similarity of the trained encoder's embeddings), with their labels;
  training.png: the loss and the collapse monitors (each `<name>_feature_std` and
    `<name>_effective_rank` the objective logs) over steps, from the run's metrics log.

`python -m jepa_jax.evaluate ... --plots` writes RUN/eval/<task>_embedding_map.png and
RUN/eval/<task>_neighbours.png; the main job writes RUN/training.png."""
import importlib.util
import re
from pathlib import Path

import numpy as np

TRAINING_PICTURE = "training.png"
MAP_METHODS = ("auto", "pca", "tsne")
MONITORS = {"_feature_std": "feature std (collapse: -> 0)",
            "_effective_rank": "effective rank (collapse: -> 1)"}
TSNE_MIN_CLIPS = 5     # fewer points than this leave t-SNE's perplexity nothing to work with
TSNE_PCA_DIMS = 50     # t-SNE on the first 50 principal components (van der Maaten's advice)
MAX_LEGEND_CLASSES = 20


def _pyplot():
  # lazy: the Agg backend is chosen only when a picture is drawn, never on import (that
  # would change the backend of a notebook that imports the package)
  import matplotlib  # lazy: see above
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # lazy: after the backend is chosen
  return plt


def pca(x: np.ndarray, k: int = 2) -> np.ndarray:
  """(n, D) -> (n, k): the centred rows on their first k principal axes (right singular
  vectors of the centred matrix), zeros past the matrix's rank. SVD leaves each axis's
  sign arbitrary: it is fixed so that the coordinate of largest magnitude is positive."""
  x = np.asarray(x, np.float64)
  centred = x - x.mean(0)
  _, sv, vt = np.linalg.svd(centred, full_matrices=False)
  # Axes of singular values at rounding level span nothing: their coordinates are noise.
  rank = int((sv > sv.max(initial=0.0) * max(x.shape) * np.finfo(np.float64).eps).sum())
  coords = np.zeros((len(x), k))
  coords[:, :min(k, rank)] = centred @ vt[:min(k, rank)].T
  largest = coords[np.abs(coords).argmax(0), np.arange(k)]
  return coords * np.where(largest < 0, -1.0, 1.0)


def has_tsne() -> bool:
  return importlib.util.find_spec("sklearn") is not None


def tsne(x: np.ndarray, seed: int = 0) -> np.ndarray:
  """(n, D) -> (n, 2) by scikit-learn's t-SNE on the first TSNE_PCA_DIMS principal
  components, perplexity 30 or (n - 1) / 3 for small sets (it must stay below n)."""
  from sklearn.manifold import TSNE  # lazy: scikit-learn is optional (the `plots` extra)
  reduced = pca(x, min(TSNE_PCA_DIMS, np.asarray(x).shape[1]))
  perplexity = min(30.0, (len(x) - 1) / 3)
  return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)


def projection(method: str, n: int) -> str:
  """The method `method` means for n clips: 'auto' is t-SNE where scikit-learn is
  installed and there are enough clips, else PCA."""
  if method not in MAP_METHODS:
    raise ValueError(f"unknown embedding map method {method!r}; known: {', '.join(MAP_METHODS)}")
  if method == "tsne" and not has_tsne():
    raise ValueError("a t-SNE map needs scikit-learn: pip install 'jepa_jax[plots]'")
  if method == "auto":
    return "tsne" if has_tsne() and n >= TSNE_MIN_CLIPS else "pca"
  return method


def natural_order(names) -> list[str]:
  """Class names sorted with their numbers compared as numbers ('110-156Hz' before
  '1245-1760Hz'), so that a legend of pitches or sizes reads in order."""
  def key(name: str):
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", name) if part]
  return sorted(names, key=key)


def _first_labels(task) -> list[str]:
  """A clip's colour: its class (a multi-label clip: its first class)."""
  return [labels[0] if labels else "" for labels in task.labels]


def embedding_map(embeddings: dict, task, path: str | Path, method: str = "auto") -> str:
  """One panel per feature set ({name: (clips, D)}, drawn in that order) of the task's
  clips in 2-D, coloured by class. Returns the method used ('pca' or 'tsne')."""
  plt = _pyplot()
  used = projection(method, len(task))
  labels = _first_labels(task)
  classes = natural_order(set(labels))
  colours = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
  fig, axes = plt.subplots(1, len(embeddings), squeeze=False,
                           figsize=(4.2 * len(embeddings) + 1.6, 4.4))
  for ax, (name, x) in zip(axes[0], embeddings.items()):
    coords = tsne(x) if used == "tsne" else pca(x)
    for i, c in enumerate(classes):
      rows = [j for j, label in enumerate(labels) if label == c]
      ax.scatter(coords[rows, 0], coords[rows, 1], s=14, color=colours(i % colours.N),
                 label=c, alpha=0.85, linewidths=0)
    ax.set_title(name)
    ax.set_xticks([])
    ax.set_yticks([])
  if len(classes) <= MAX_LEGEND_CLASSES:
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center right", fontsize=8, frameon=False,
               markerscale=1.5)
  what = "first class of each clip" if task.multilabel else f"{len(classes)} classes"
  fig.suptitle(f"{task.name}: {len(task)} clip embeddings, {used.upper()} ({what})",
               fontsize=10)
  fig.tight_layout(rect=(0, 0, 1 - 1.5 / fig.get_figwidth(), 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return used


def nearest(x: np.ndarray, query: int, k: int) -> tuple[np.ndarray, np.ndarray]:
  """The k rows of x most cosine-similar to row `query` (itself left out), most similar
  first, and their similarities."""
  x = np.asarray(x, np.float64)
  unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  sims = unit @ unit[query]
  sims[query] = -np.inf
  order = np.argsort(-sims, kind="stable")[:min(k, len(x) - 1)]
  return order, sims[order]


def neighbour_sheet(mels: list, x: np.ndarray, task, path: str | Path, query: int = 0,
                    k: int = 5, feature_set: str = "trained") -> list[int]:
  """The query clip's log-mel (encoder input, frequency up) and its k nearest clips' by
  the embeddings x, each titled with its labels (green: shares a class with the query,
  red: not) and cosine similarity. Returns the neighbours' row indices."""
  if not 0 <= query < len(task):
    raise ValueError(f"query clip {query} is not in {task.name} ({len(task)} clips)")
  plt = _pyplot()
  order, sims = nearest(x, query, k)
  shown = [query, *order]
  low = min(float(np.min(mels[i])) for i in shown)
  high = max(float(np.max(mels[i])) for i in shown)
  fig, axes = plt.subplots(1, len(shown), squeeze=False, figsize=(2.4 * len(shown), 3.0))
  for n, (ax, i) in enumerate(zip(axes[0], shown)):
    ax.imshow(mels[i], origin="lower", aspect="auto", vmin=low, vmax=high, cmap="magma",
              interpolation="nearest")
    names = "; ".join(task.labels[i])
    if n == 0:
      ax.set_title(f"query #{i}\n{names}", fontsize=9, fontweight="bold")
    else:
      same = bool(set(task.labels[i]) & set(task.labels[query]))
      ax.set_title(f"#{i} cos {sims[n - 1]:.3f}\n{names}", fontsize=9,
                   color="tab:green" if same else "tab:red")
    ax.set_xticks([])
    ax.set_yticks([])
  axes[0][0].set_ylabel("mel bin", fontsize=8)
  fig.suptitle(f"{task.name}: the {len(order)} clips nearest the query by cosine similarity "
               f"of the {feature_set} embeddings", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return [int(i) for i in order]


def monitor_names(records: list[dict]) -> dict[str, list[str]]:
  """{monitor suffix: the logged keys with it}, e.g. '_feature_std': ['context_feature_std',
  'target_feature_std']."""
  keys = sorted({k for r in records for k in r})
  return {suffix: [k for k in keys if k.endswith(suffix)] for suffix in MONITORS}


def training_curves(records: list[dict], path: str | Path) -> None:
  """training.png: the loss, then one panel per collapse monitor (a line per embedding it
  watches), over the logged steps."""
  if not records:
    raise ValueError("no metrics were logged (metrics.jsonl is empty): nothing to draw")
  plt = _pyplot()
  panels = [("loss", ["loss"])] + [(title, keys) for suffix, title in MONITORS.items()
                                   if (keys := monitor_names(records)[suffix])]
  fig, axes = plt.subplots(1, len(panels), squeeze=False, figsize=(4.2 * len(panels), 3.4))
  for ax, (title, keys) in zip(axes[0], panels):
    for key in keys:
      steps = [r["step"] for r in records if key in r]
      ax.plot(steps, [r[key] for r in records if key in r], marker="." if len(steps) < 30
              else None, label=key)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    if len(keys) > 1 or title != "loss":
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def task_pictures(workdir: str | Path, task, embeddings: dict, mels: list,
                  results_dir: str, method: str = "auto") -> list[Path]:
  """The embedding map and the nearest-neighbour sheet (of the trained encoder, or the
  first feature set where there is none) of one task, under RUN/<results_dir>/."""
  out = Path(workdir).absolute() / results_dir
  out.mkdir(parents=True, exist_ok=True)
  paths = [out / f"{task.name}_embedding_map.png", out / f"{task.name}_neighbours.png"]
  embedding_map(embeddings, task, paths[0], method)
  name = "trained" if "trained" in embeddings else next(iter(embeddings))
  neighbour_sheet(mels, embeddings[name], task, paths[1], feature_set=name)
  return paths
