"""Linear probe (EVAR protocol, as the Audio-JEPA paper evaluates).

Features standardised with statistics of the training split; one linear layer trained
with Adam on cross-entropy for up to `max_epochs`, early stopping on the validation
split with `patience` epochs (best = highest validation accuracy, ties to the lower
validation loss), the best epoch's weights restored, test accuracy reported; repeated
for several seeds (initialisation and batch order), mean and sample std.

All seeds train at once (vmapped) and all epochs run in one compiled scan, so a probe
costs well under a second on a few thousand clips.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class Split:
  x: np.ndarray  # (n, d) float32
  y: np.ndarray  # (n,) int


def standardize(train: np.ndarray, *others: np.ndarray):
  mean = train.mean(0)
  std = train.std(0)
  std = np.where(std > 0, std, 1.0)
  return [(a - mean) / std for a in (train, *others)]


def _init(key, d, c):
  # torch.nn.Linear's default: U(-1/sqrt(d), 1/sqrt(d)) for weights and bias.
  kw, kb = jax.random.split(key)
  bound = 1.0 / np.sqrt(d)
  return {"w": jax.random.uniform(kw, (d, c), minval=-bound, maxval=bound),
          "b": jax.random.uniform(kb, (c,), minval=-bound, maxval=bound)}


CLASS_PAD = 8  # classes are padded to a multiple of this: tasks share one compiled probe


def _logits(p, x, classes):
  """Padded classes (`classes` False) get a logit no softmax or argmax ever picks."""
  return jnp.where(classes, x @ p["w"] + p["b"], -1e9)


def _xent(p, x, y, classes):
  return optax.softmax_cross_entropy_with_integer_labels(_logits(p, x, classes), y).mean()


@functools.partial(jax.jit, static_argnames=("lr", "max_epochs", "patience", "batch_size"))
def _fit(keys, x_tr, y_tr, x_va, y_va, classes, *, lr, max_epochs, patience, batch_size):
  """Best-validation parameters for each key (vmapped over keys), and each epoch's
  validation accuracy (held constant once early stopping has frozen the weights).
  `classes` (C,) marks the real classes among the padded ones."""
  n, d = x_tr.shape
  num_classes = classes.shape[0]
  steps = -(-n // batch_size)
  tx = optax.adam(lr)

  def one_seed(key):
    init_key, order_key = jax.random.split(key)
    params = _init(init_key, d, num_classes)

    def epoch(carry, epoch_key):
      params, opt_state, best, best_acc, best_loss, bad = carry
      active = bad < patience
      # Every example once per epoch; the last batch is filled by wrapping around.
      order = jax.random.permutation(epoch_key, n)
      order = jnp.concatenate([order, order[: steps * batch_size - n]]).reshape(steps, -1)

      def sgd_step(c, idx):
        p, s = c
        grads = jax.grad(_xent)(p, x_tr[idx], y_tr[idx], classes)
        updates, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), None

      (new_params, new_state), _ = jax.lax.scan(sgd_step, (params, opt_state), order)
      params = jax.tree.map(lambda a, b: jnp.where(active, a, b), new_params, params)
      opt_state = jax.tree.map(lambda a, b: jnp.where(active, a, b), new_state, opt_state)
      acc = (_logits(params, x_va, classes).argmax(-1) == y_va).mean()
      loss = _xent(params, x_va, y_va, classes)
      improved = active & ((acc > best_acc) | ((acc == best_acc) & (loss < best_loss)))
      best = jax.tree.map(lambda a, b: jnp.where(improved, a, b), params, best)
      best_acc = jnp.where(improved, acc, best_acc)
      best_loss = jnp.where(improved, loss, best_loss)
      bad = jnp.where(improved, 0, bad + 1)
      return (params, opt_state, best, best_acc, best_loss, bad), acc

    carry = (params, tx.init(params), params, jnp.array(-1.0), jnp.array(jnp.inf),
             jnp.array(0))
    carry, history = jax.lax.scan(epoch, carry, jax.random.split(order_key, max_epochs))
    return carry[2], history

  return jax.vmap(one_seed)(keys)


def linear_probe(train: Split, valid: Split, test: Split, num_classes: int, *, seeds: int,
                 lr: float, max_epochs: int, patience: int, batch_size: int) -> dict:
  """Test accuracy per seed, its mean and sample std."""
  x_tr, x_va, x_te = standardize(train.x, valid.x, test.x)
  classes = jnp.arange(-(-num_classes // CLASS_PAD) * CLASS_PAD) < num_classes
  best, _ = _fit(jax.random.split(jax.random.key(0), seeds),
                 jnp.asarray(x_tr), jnp.asarray(train.y), jnp.asarray(x_va),
                 jnp.asarray(valid.y), classes, lr=lr, max_epochs=max_epochs,
                 patience=patience, batch_size=min(batch_size, len(train.y)))
  logits = jax.vmap(_logits, in_axes=(0, None, None))(best, jnp.asarray(x_te), classes)
  return seed_summary(np.asarray((logits.argmax(-1) == jnp.asarray(test.y)).mean(-1)))


def seed_summary(per_seed: np.ndarray) -> dict:
  """Accuracy per seed, its mean and sample std (0 for a single seed)."""
  per_seed = np.asarray(per_seed, np.float64)
  return {"per_seed": per_seed.tolist(), "mean": float(per_seed.mean()),
          "std": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0}
