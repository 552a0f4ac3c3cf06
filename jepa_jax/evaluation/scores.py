"""Scores of the evaluation protocols: accuracy for single-label tasks; mAP and d-prime
for multi-label tasks (AudioSet convention: d' = sqrt(2) * Phi^-1(mean class AUC)).
Classes with no positive or no negative example in the scored set are left out of the
class means (their AP / AUC is undefined)."""
import numpy as np
from scipy import stats


def accuracy(scores: np.ndarray, y: np.ndarray) -> float:
  return float((np.asarray(scores).argmax(-1) == np.asarray(y)).mean())


def average_precision(score: np.ndarray, positive: np.ndarray) -> float:
  """AP of one class: sum over distinct thresholds of (recall step) x precision."""
  order = np.argsort(-score, kind="stable")
  score, positive = score[order], positive[order].astype(np.float64)
  last_of_tie = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]
  tp = np.cumsum(positive)[last_of_tie]
  precision = tp / (last_of_tie + 1)
  recall_step = np.diff(np.r_[0.0, tp]) / tp[-1]
  return float((recall_step * precision).sum())


def auc(score: np.ndarray, positive: np.ndarray) -> float:
  """Area under the ROC curve (Mann-Whitney U; ties count one half)."""
  ranks = stats.rankdata(score)
  pos = positive.astype(bool)
  n_pos, n_neg = pos.sum(), (~pos).sum()
  return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _scorable(y: np.ndarray) -> np.ndarray:
  count = y.sum(0)
  return np.flatnonzero((count > 0) & (count < len(y)))


def mean_average_precision(scores: np.ndarray, y: np.ndarray) -> float:
  """mAP over classes; scores and multi-hot y are (n, classes)."""
  return float(np.mean([average_precision(scores[:, c], y[:, c]) for c in _scorable(y)]))


AUC_CLIP = 1e-6  # a perfect mean AUC gives d' = sqrt(2) * Phi^-1(1 - 1e-6) = 6.72, not inf


def d_prime(scores: np.ndarray, y: np.ndarray) -> float:
  mean_auc = np.mean([auc(scores[:, c], y[:, c]) for c in _scorable(y)])
  return float(np.sqrt(2.0) * stats.norm.ppf(np.clip(mean_auc, AUC_CLIP, 1 - AUC_CLIP)))


def task_scores(scores: np.ndarray, y: np.ndarray, multilabel: bool) -> dict:
  """{'accuracy'} or {'mAP', 'd_prime'} of (n, classes) scores against the targets."""
  scores = np.asarray(scores, np.float64)
  if multilabel:
    return {"mAP": mean_average_precision(scores, y), "d_prime": d_prime(scores, y)}
  return {"accuracy": accuracy(scores, y)}


def headline(multilabel: bool) -> str:
  """The score a task is ranked by."""
  return "mAP" if multilabel else "accuracy"


def summary(per_seed: list[dict]) -> dict:
  """Each score's per-seed values, mean and sample std (0 for one seed)."""
  out = {}
  for name in per_seed[0]:
    values = np.array([s[name] for s in per_seed], np.float64)
    out[name] = {"per_seed": values.tolist(), "mean": float(values.mean()),
                 "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
  return out
