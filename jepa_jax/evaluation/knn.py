"""The `knn` protocol (Dasheng / X-ARES): clip embeddings L2-normalised, cosine
similarity to the labelled clips, the k = 10 nearest vote with softmax weights
exp(similarity / 0.07). The labelled clips are the train and valid splits together
(the protocol has nothing to tune). Multi-label tasks: a class's score is the weighted
fraction of neighbours that carry it."""
import numpy as np

K, TEMPERATURE = 10, 0.07


def l2_normalize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def knn_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int,
               k: int = K, temperature: float = TEMPERATURE, block: int = 1024) -> np.ndarray:
  """(n_test, classes) vote of each test clip's k nearest train clips. train_y: (n,)
  class indices or (n, classes) multi-hot."""
  train_x, test_x = l2_normalize(train_x), l2_normalize(test_x)
  onehot = (np.eye(num_classes)[train_y] if train_y.ndim == 1 else train_y).astype(np.float64)
  k = min(k, len(train_x))
  out = []
  for start in range(0, len(test_x), block):  # a block of test clips at a time bounds memory
    sim = test_x[start:start + block] @ train_x.T
    nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(sim, nearest, 1) / temperature
    weights = np.exp(top - top.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    out.append(np.einsum("nk,nkc->nc", weights, onehot[nearest]))
  return np.concatenate(out)
