"""Heads trained on frozen features: the `linear` / `linear_validated` (EVAR) and `mlp`
(HEAR) protocols.

One trainer for all. Features are standardised with statistics of the training split;
the probe (no hidden layer for the linear protocols; for `mlp` 1 or 2 hidden layers of
1024 units, each Linear -> BatchNorm -> Dropout(0.1) -> ReLU as hear-eval-kit builds
them) is trained with Adam on softmax cross-entropy (single-label) or sigmoid binary
cross-entropy (multi-label), in shuffled batches (the last one of an epoch partial, as a
torch DataLoader without drop_last), for up to `max_epochs`, with early stopping on the
validation split after `patience` epochs without improvement (score: accuracy, mAP for
multi-label tasks); the best epoch's weights are restored and scored on the test split.
Repeated for several seeds (initialisation, batch order, dropout), mean and sample std.
An epoch whose score equals the best is an improvement under EVAR's rule (`TIES_LATER`:
its `>=`, the later epoch kept, patience restarts); otherwise only with a lower
validation loss (`TIES_LOWER_LOSS`).

EVAR's linear evaluation (github nttcslab/eval-audio-repr: lineareval.py and the
TorchMLPClassifier2 it downloads from daisukelab/general-learning MLP/torch_mlp_clf2.py;
the EVAR_* constants below cite the line each comes from): one nn.Linear, Adam (weight
decay 1e-8) at the model family's `lr_lineareval` (3e-5 for M2D-like ViTs, 3e-4 for
every other model), batch min(200, n), up to 200 epochs, early stopping after 20 epochs
without a validation accuracy (mAP) >= the best, best epoch restored.

Every (seed, learning rate) pair trains at once (vmapped), epochs run in one compiled
loop that ends when every pair has stopped, so a probe costs seconds on a few thousand
clips. Layers start as torch.nn.Linear does: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jepa_jax.evaluation import scores

CLASS_PAD = 8  # classes are padded to a multiple of this: tasks share one compiled probe
BN_MOMENTUM, BN_EPS = 0.1, 1e-5  # torch.nn.BatchNorm1d
MLP_WIDTH, MLP_DROPOUT = 1024, 0.1
MLP_DEPTHS = (1, 2)
MLP_LEARNING_RATES = (3.2e-3, 1e-3, 3.2e-4, 1e-4)  # hear-eval-kit's grid

# EVAR (nttcslab/eval-audio-repr, commit 88ba772; torch_mlp_clf2.py at daisukelab/
# general-learning 158e570):
EVAR_LR_M2D_LIKE = 3e-5  # config/m2d.yaml (and m2d_*.yaml, atst_frame.yaml): lr_lineareval
EVAR_LR = 3e-4           # every other config/*.yaml (ast, beats, byola, dasheng, ...)
EVAR_MAX_EPOCHS = 200    # lineareval.py lineareval_downstream: `epochs = epochs or 200`
EVAR_PATIENCE = 20       # config/*.yaml early_stop_epochs: 20 (n_iter_no_change)
EVAR_BATCH_SIZE = 200    # torch_mlp_clf2.py fit: batch_size 'auto' -> min(200, n_samples)
EVAR_WEIGHT_DECAY = 1e-8  # torch_mlp_clf2.py TorchMLPClassifier2(alpha=1e-8): Adam's L2 term

TIES_LATER = "later"          # EVAR's EarlyStopping: score >= best is an improvement
TIES_LOWER_LOSS = "lower_loss"  # an equal score improves only with a lower validation loss


@dataclasses.dataclass(frozen=True)
class Split:
  x: np.ndarray  # (n, d) float32
  y: np.ndarray  # (n,) int classes, or (n, classes) multi-hot for multi-label tasks


@dataclasses.dataclass(frozen=True)
class Probe:
  hidden: tuple[int, ...] = ()  # () = a linear probe
  dropout: float = 0.0
  batchnorm: bool = False


LINEAR = Probe()


def mlp_probe(depth: int) -> Probe:
  return Probe(hidden=(MLP_WIDTH,) * depth, dropout=MLP_DROPOUT, batchnorm=True)


def standardize(train: np.ndarray, *others: np.ndarray):
  mean = train.mean(0)
  std = train.std(0)
  std = np.where(std > 0, std, 1.0)
  return [(a - mean) / std for a in (train, *others)]


def _linear_init(key, d_in, d_out):
  kw, kb = jax.random.split(key)
  bound = 1.0 / np.sqrt(d_in)
  return {"w": jax.random.uniform(kw, (d_in, d_out), minval=-bound, maxval=bound),
          "b": jax.random.uniform(kb, (d_out,), minval=-bound, maxval=bound)}


def init(probe: Probe, key, d: int, num_classes: int):
  """(params, batch statistics) of a fresh probe."""
  dims = (d, *probe.hidden, num_classes)
  keys = jax.random.split(key, len(dims) - 1)
  params = {"layers": [_linear_init(k, a, b) for k, a, b in zip(keys, dims[:-1], dims[1:])]}
  stats = []
  if probe.batchnorm:
    params["bn"] = [{"scale": jnp.ones(h), "bias": jnp.zeros(h)} for h in probe.hidden]
    stats = [{"mean": jnp.zeros(h), "var": jnp.ones(h)} for h in probe.hidden]
  return params, stats


def apply(probe: Probe, params, stats, x, *, train: bool = False, key=None, weights=None):
  """Logits, and the batch statistics after this batch (updated only in training, over
  the rows whose `weights` (default all ones) are 1: a partial batch padded to shape)."""
  new_stats = []
  for i, layer in enumerate(params["layers"][:-1]):
    x = x @ layer["w"] + layer["b"]
    if probe.batchnorm:
      s, bn = stats[i], params["bn"][i]
      if train:
        w = jnp.ones(x.shape[0]) if weights is None else weights
        n = w.sum()
        mean = (w[:, None] * x).sum(0) / n
        var = (w[:, None] * (x - mean) ** 2).sum(0) / n
        n = jnp.maximum(n, 2.0)  # a 1-row batch (var 0): keep n / (n - 1) finite
        new_stats.append({"mean": (1 - BN_MOMENTUM) * s["mean"] + BN_MOMENTUM * mean,
                          "var": (1 - BN_MOMENTUM) * s["var"] + BN_MOMENTUM * var * n / (n - 1)})
      else:
        mean, var = s["mean"], s["var"]
        new_stats.append(s)
      x = (x - mean) / jnp.sqrt(var + BN_EPS) * bn["scale"] + bn["bias"]
    if train and probe.dropout > 0:
      keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1 - probe.dropout, x.shape)
      x = jnp.where(keep, x / (1 - probe.dropout), 0.0)
    x = jax.nn.relu(x)
  last = params["layers"][-1]
  return x @ last["w"] + last["b"], new_stats


def _loss(logits, y, classes, multilabel: bool, weights=None):
  """Mean loss over examples (those of `weights` 1, default all); padded classes
  (`classes` False) take no part."""
  if multilabel:
    per_class = optax.sigmoid_binary_cross_entropy(logits, y)
    per_example = (per_class * classes).sum(-1) / classes.sum()
  else:
    logits = jnp.where(classes, logits, -1e9)
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  if weights is None:
    return per_example.mean()
  return (per_example * weights).sum() / weights.sum()


def _mean_average_precision(logits, y, classes):
  """mAP over the real classes that have a positive (on device; ties broken by order)."""
  order = jnp.argsort(-logits, axis=0)
  pos = jnp.take_along_axis(y, order, axis=0)
  precision = jnp.cumsum(pos, 0) / jnp.arange(1, y.shape[0] + 1)[:, None]
  count = pos.sum(0)
  ap = (precision * pos).sum(0) / jnp.maximum(count, 1)
  scored = classes & (count > 0)
  return (ap * scored).sum() / jnp.maximum(scored.sum(), 1)


def _score(logits, y, classes, multilabel: bool):
  if multilabel:
    return _mean_average_precision(logits, y, classes)
  return (jnp.where(classes, logits, -1e9).argmax(-1) == y).mean()


def stopping_step(ties: str, best_score, best_loss, bad, score, loss):
  """Early stopping after an epoch of validation `score` and `loss`: (improved, best
  score, its loss, epochs since the last improvement); training goes on while the last
  is below the patience. TIES_LATER is EVAR's EarlyStopping.on_epoch_end
  (torch_mlp_clf2.py: `val >= best_value` improves, the later epoch's weights kept);
  TIES_LOWER_LOSS improves on a higher score, or an equal one with a lower loss."""
  if ties == TIES_LATER:
    improved = score >= best_score
  else:
    improved = (score > best_score) | ((score == best_score) & (loss < best_loss))
  return (improved, jnp.where(improved, score, best_score), jnp.where(improved, loss, best_loss),
          jnp.where(improved, 0, bad + 1))


@functools.partial(jax.jit, static_argnames=("probe", "multilabel", "max_epochs", "patience",
                                             "batch_size", "ties", "weight_decay"))
def fit(probe: Probe, keys, lrs, x_tr, y_tr, x_va, y_va, classes, *, multilabel: bool,
        max_epochs: int, patience: int, batch_size: int, ties: str = TIES_LOWER_LOSS,
        weight_decay: float = 0.0):
  """Train one probe per (key, lr) pair (vmapped over both arrays' leading axis).

  Returns the best-validation (params, batch statistics), each epoch's validation score
  (held at its last value once early stopping has frozen the weights; (pairs,
  max_epochs)) and the best validation score. `classes` (C,) marks the real classes
  among the padded ones. `ties`: TIES_LATER or TIES_LOWER_LOSS; `weight_decay`: an L2
  term added to the gradient before Adam (torch.optim.Adam's weight_decay).
  """
  if ties not in (TIES_LATER, TIES_LOWER_LOSS):
    raise ValueError(f"ties must be {TIES_LATER!r} or {TIES_LOWER_LOSS!r}, got {ties!r}")
  n, d = x_tr.shape
  steps = -(-n // batch_size)
  # The last batch of an epoch is partial: its shape filled by wrapping around, the
  # repeated rows weighted 0.
  in_epoch = (jnp.arange(steps * batch_size) < n).astype(jnp.float32).reshape(steps, -1)

  def one(key, lr):
    init_key, order_key = jax.random.split(key)
    params, stats = init(probe, init_key, d, classes.shape[0])
    tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr))

    def loss_fn(p, s, idx, w, step_key):
      logits, new_s = apply(probe, p, s, x_tr[idx], train=True, key=step_key, weights=w)
      return _loss(logits, y_tr[idx], classes, multilabel, w), new_s

    def epoch(carry):
      e, params, stats, opt_state, best, best_score, best_loss, bad, history = carry
      epoch_key = jax.random.fold_in(order_key, e)
      # Every example once per epoch.
      order = jax.random.permutation(epoch_key, n)
      order = jnp.concatenate([order, order[: steps * batch_size - n]]).reshape(steps, -1)

      def step(c, inputs):
        p, s, o = c
        i, idx, w = inputs
        grads, s = jax.grad(loss_fn, has_aux=True)(p, s, idx, w,
                                                   jax.random.fold_in(epoch_key, i))
        updates, o = tx.update(grads, o, p)
        return (optax.apply_updates(p, updates), s, o), None

      (params, stats, opt_state), _ = jax.lax.scan(
          step, (params, stats, opt_state), (jnp.arange(steps), order, in_epoch))
      logits, _ = apply(probe, params, stats, x_va)
      score = _score(logits, y_va, classes, multilabel)
      loss = _loss(logits, y_va, classes, multilabel)
      improved, best_score, best_loss, bad = stopping_step(ties, best_score, best_loss, bad,
                                                           score, loss)
      best = jax.tree.map(lambda a, b: jnp.where(improved, a, b), (params, stats), best)
      # Later epochs overwrite; once stopped, the tail keeps the last score.
      history = jnp.where(jnp.arange(max_epochs) >= e, score, history)
      return (e + 1, params, stats, opt_state, best, best_score, best_loss, bad, history)

    def running(carry):
      e, bad = carry[0], carry[7]
      return (e < max_epochs) & (bad < patience)

    carry = (jnp.array(0), params, stats, tx.init(params), (params, stats), jnp.array(-1.0),
             jnp.array(jnp.inf), jnp.array(0), jnp.zeros(max_epochs))
    carry = jax.lax.while_loop(running, epoch, carry)
    return carry[4], carry[8], carry[5]

  return jax.vmap(one)(keys, lrs)


def _padded(y: np.ndarray, num_classes: int, multilabel: bool):
  width = -(-num_classes // CLASS_PAD) * CLASS_PAD
  if multilabel:
    y = np.pad(y, ((0, 0), (0, width - num_classes)))
  return jnp.asarray(y), jnp.arange(width) < num_classes


def train_probe(probe: Probe, train: Split, valid: Split, test: Split, num_classes: int,
                multilabel: bool, *, seeds: int, lrs: tuple[float, ...], max_epochs: int,
                patience: int, batch_size: int, seed: int = 0, ties: str = TIES_LOWER_LOSS,
                weight_decay: float = 0.0) -> dict:
  """Train `seeds` probes per learning rate; keep the learning rate with the best mean
  validation score (the first of `lrs` among equals). Returns its test scores per seed
  (`per_seed`: a list of scores.task_scores dicts), the chosen `lr`, its mean
  `valid_score` and every lr's (`valid_scores`, in the order of `lrs`)."""
  x_tr, x_va, x_te = (jnp.asarray(a, jnp.float32) for a in
                      standardize(train.x, valid.x, test.x))
  y_tr, classes = _padded(train.y, num_classes, multilabel)
  y_va, _ = _padded(valid.y, num_classes, multilabel)
  keys = jax.random.split(jax.random.key(seed), seeds)
  pair_keys = jnp.concatenate([keys] * len(lrs))
  pair_lrs = jnp.repeat(jnp.asarray(lrs, jnp.float32), seeds)
  (params, stats), _, best = fit(
      probe, pair_keys, pair_lrs, x_tr, y_tr, x_va, y_va, classes, multilabel=multilabel,
      max_epochs=max_epochs, patience=patience, batch_size=min(batch_size, len(train.x)),
      ties=ties, weight_decay=weight_decay)
  valid_scores = np.asarray(best).reshape(len(lrs), seeds).mean(1)
  chosen = int(valid_scores.argmax())
  logits = jax.vmap(lambda p, s: apply(probe, p, s, x_te)[0])(params, stats)
  logits = np.asarray(logits)[chosen * seeds:(chosen + 1) * seeds, :, :num_classes]
  return {"per_seed": [scores.task_scores(z, test.y, multilabel) for z in logits],
          "lr": float(lrs[chosen]), "valid_score": float(valid_scores[chosen]),
          "valid_scores": [float(v) for v in valid_scores]}
