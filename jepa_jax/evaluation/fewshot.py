"""The `fewshot` protocol (uaMix-MAE): N-way K-shot episodes on frozen clip embeddings.

Each episode draws N classes among those with at least K + queries clips, then K support
and `queries` query clips per class, all distinct; clip embeddings are L2-normalised and
each query goes to the class whose support centroid is nearest (Euclidean: a prototypical
classifier with no training). Episodes come from every clip of the task (the frozen
encoder never saw its labels), drawn by a fixed seed. Reported: the mean episode accuracy
and its 95 % confidence interval, 1.96 x (sample std of episode accuracies) / sqrt(episodes).
Episodes can be limited to some classes (e.g. those held out of an encoder's training
data), and two encoders compared on the same episodes: the mean of the per-episode
accuracy differences with its 95 % interval (a paired comparison, much tighter than the
two separate intervals because both encoders face the same support and query clips).
"""
import numpy as np

from jepa_jax.evaluation import knn

WAYS, SHOTS, QUERIES, EPISODES = 5, (1, 5), 15, 600
Z95 = 1.96


def sample_episodes(y: np.ndarray, ways: int, shots: int, queries: int, episodes: int,
                    seed: int = 0, classes: np.ndarray | None = None) -> np.ndarray:
  """(episodes, ways, shots + queries) clip indices; [:, c, :shots] is class c's support.
  `classes`: draw only among these class indices (default: all of y's)."""
  present, counts = np.unique(y, return_counts=True)
  eligible = present[counts >= shots + queries]
  if classes is not None:
    eligible = eligible[np.isin(eligible, classes)]
  if len(eligible) < ways:
    among = "" if classes is None else f" among the {len(classes)} classes asked for"
    raise ValueError(f"{ways}-way {shots}-shot episodes with {queries} queries need {ways} "
                     f"classes of at least {shots + queries} clips; the task has "
                     f"{len(eligible)}{among} (lower the queries or the shots, or name more "
                     f"classes)")
  members = {c: np.flatnonzero(y == c) for c in eligible}
  rng = np.random.default_rng(seed)
  out = np.empty((episodes, ways, shots + queries), np.int64)
  for e in range(episodes):
    for w, c in enumerate(rng.choice(eligible, ways, replace=False)):
      out[e, w] = rng.choice(members[c], shots + queries, replace=False)
  return out


def episode_accuracies(x: np.ndarray, episodes: np.ndarray, shots: int,
                       block: int = 100) -> np.ndarray:
  """Nearest-centroid accuracy of each episode on L2-normalised features."""
  x = knn.l2_normalize(x)
  ways = episodes.shape[1]
  out = []
  for start in range(0, len(episodes), block):  # bounds the gathered (E, N, K+Q, D) block
    z = x[episodes[start:start + block]]
    centroids = z[:, :, :shots].mean(2)                        # (E, N, D)
    query = z[:, :, shots:]                                    # (E, N, Q, D)
    # |q - c|^2 = |q|^2 - 2 q.c + |c|^2; |q|^2 does not change which centroid is nearest.
    dist = (centroids ** 2).sum(-1)[:, None, None] - 2 * np.einsum("enqd,emd->enqm", query,
                                                                   centroids)
    truth = np.arange(ways)[None, :, None]
    out.append((dist.argmin(-1) == truth).mean((1, 2)))
  return np.concatenate(out)


def _summary(acc: np.ndarray, ways: int, shots: int, queries: int) -> dict:
  return {"mean": float(acc.mean()), "ci95": float(Z95 * acc.std(ddof=1) / np.sqrt(len(acc))),
          "episodes": len(acc), "ways": ways, "shots": shots, "queries": queries}


def fewshot(x: np.ndarray, y: np.ndarray, ways: int = WAYS, shots: int = 1,
            queries: int = QUERIES, episodes: int = EPISODES, seed: int = 0,
            classes: np.ndarray | None = None) -> dict:
  acc = episode_accuracies(
      x, sample_episodes(y, ways, shots, queries, episodes, seed, classes), shots)
  return _summary(acc, ways, shots, queries)


def paired_difference(x: np.ndarray, baseline: np.ndarray, y: np.ndarray, ways: int = WAYS,
                      shots: int = 1, queries: int = QUERIES, episodes: int = EPISODES,
                      seed: int = 0, classes: np.ndarray | None = None) -> dict:
  """accuracy(x) - accuracy(baseline) on the same episodes: mean and 95 % interval of the
  per-episode differences (`fewshot` of each draws exactly these episodes)."""
  drawn = sample_episodes(y, ways, shots, queries, episodes, seed, classes)
  diff = episode_accuracies(x, drawn, shots) - episode_accuracies(baseline, drawn, shots)
  return _summary(diff, ways, shots, queries)
