"""Optimizer: global-norm clipping, AdamW with a weight-decay mask, warmup + cosine,
optional per-layer factors of the encoder (layer-wise lr decay, frozen bottom layers),
then (for objectives with a target network) the EMA target transformation."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jepa_jax.optim import ema, layerwise


def peak_learning_rate(base_lr: float, batch_size: int) -> float:
  """Linear scaling rule: lr = base_lr * batch / 256."""
  return base_lr * batch_size / 256


def learning_rate_schedule(optim: ml_collections.ConfigDict, batch_size: int,
                           total_steps: int, warmup_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to the peak, then cosine to end_lr_ratio * peak."""
  peak = peak_learning_rate(optim.base_lr, batch_size)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=peak * optim.end_lr_ratio)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """optax.clip_by_global_norm's clipping, as a product with one scalar factor
  (min(1, max_norm / norm)) instead of a division: XLA counts a division as expensive and
  writes the clipped gradients out once for Adam's two moments to read, a product it folds
  into both. In a ViT-B Audio-JEPA step at batch 8 x 65 tokens (2-core CPU,
  benchmarks/step_profile.py) AdamW + EMA went from 734 to 555 ms. Same (empty) state,
  so checkpoints keep their layout."""

  def update_fn(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates)
    factor = jnp.where(norm < max_norm, 1.0, max_norm / norm)
    return jax.tree.map(lambda t: t * factor.astype(t.dtype), updates), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _last_name(path) -> str:
  names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
  return str(names[-1]) if names else ""


def weight_decay_mask(params):
  """True only for matrix kernels: biases, norms, positions and mask tokens don't decay.

  Works on plain and on logically boxed parameter trees (it looks at the last dict
  key on each leaf's path).
  """
  return jax.tree_util.tree_map_with_path(lambda path, _: _last_name(path) == "kernel", params)


def _is_box(x) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def frozen_labels(params, frozen_layers: int, encoder_subtree: str | None):
  """'frozen' / 'trained' per parameter (a logical-axis box counts as one leaf, so a
  frozen parameter leaves no box behind in the optimizer state either)."""
  plain = jax.tree.map(lambda x: x.unbox(apply_constraint=False) if _is_box(x) else x, params,
                       is_leaf=_is_box)
  frozen = layerwise.frozen_leaves(plain, frozen_layers, encoder_subtree)
  labels = ["frozen" if f else "trained" for f in jax.tree.leaves(frozen)]
  return jax.tree.unflatten(jax.tree.structure(params, is_leaf=_is_box), labels)


def without_frozen_state(inner: optax.GradientTransformation, frozen_layers: int,
                         encoder_subtree: str | None) -> optax.GradientTransformation:
  """`inner` on the parameters that train; wholly frozen parameters get a zero update and
  no state at all (no AdamW moments), as if they were not parameters."""
  return optax.multi_transform(
      {"trained": inner, "frozen": optax.set_to_zero()},
      lambda params: frozen_labels(params, frozen_layers, encoder_subtree))


def make_optimizer(optim: ml_collections.ConfigDict, ema_config: ml_collections.ConfigDict | None,
                   batch_size: int, total_steps: int, warmup_steps: int,
                   ema_subtree: str | None, encoder_subtree: str | None = "encoder"):
  """Returns (optax chain, {metric name: schedule}) for the train loop to log.

  `optim.layer_decay` (1 = off) and `optim.frozen_layers` (0 = off) act on the layers of
  the encoder at params[encoder_subtree] (None: the params are the encoder); see
  layerwise.py for the layer numbering. Wholly frozen parameters carry no optimizer state.
  """
  lr = learning_rate_schedule(optim, batch_size, total_steps, warmup_steps)
  frozen_layers = optim.frozen_layers
  before, after = layerwise.transformations(optim.layer_decay, frozen_layers,
                                            encoder_subtree)
  parts = list(before)  # frozen layers' gradients are zeroed before clipping sees them
  trained = []
  if optim.clip_norm > 0:
    trained.append(clip_by_global_norm(optim.clip_norm))
  trained.append(optax.adamw(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                             weight_decay=optim.weight_decay, mask=weight_decay_mask))
  if frozen_layers > 0:
    parts.append(without_frozen_state(optax.chain(*trained), frozen_layers, encoder_subtree))
  else:
    parts.extend(trained)
  parts.extend(after)  # after AdamW, so weight decay never reaches a frozen parameter
  schedules = {"lr": lr}
  if ema_subtree is not None:
    tau = ema.linear_momentum(ema_config.tau_start, ema_config.tau_end, total_steps)
    parts.append(ema.ema_target(tau, ema_subtree))  # last: it must see the final updates
    schedules["tau"] = tau
  return optax.chain(*parts), schedules
