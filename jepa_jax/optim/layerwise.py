"""Per-layer learning-rate factors of the encoder: layer-wise decay (BEiT / AudioMAE
fine-tuning) and freezing of the bottom layers (uaMix progressive retraining), for
unscanned ('block_i') and scanned ('layers/block_j', stacked) parameters alike.

Layers are numbered as in BEiT: 0 = patch embedding and positions (everything of the
encoder outside its transformer), i = transformer block i (1..L), L + 1 = the encoder's
final norm. Parameters outside the encoder (predictor, decoder, heads) count as L + 1
and get factor 1: they are never decayed nor frozen, even when `frozen_layers` = L + 2
freezes the whole encoder (uaMix stage 1). A stacked leaf gets one layer id per entry of
its leading axis.

`scale_by_layer` multiplies each update by its layer's factor. Placed after AdamW (its
learning rate and weight decay included), a factor of 0 leaves a parameter bit-identical
and a factor f is the same as an f-times smaller learning rate for that layer.
`zero_frozen_gradients` placed first keeps frozen layers out of gradient clipping and out
of AdamW's moments, as if they had no gradient (PyTorch's requires_grad=False).
"""
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jepa_jax.models import vit

# (layer ids, number of blocks L) -> factor per id
FactorFn = Callable[[np.ndarray, int], np.ndarray]


def _block_number(name: str) -> int:
  return int(name.removeprefix("block_"))


def _transformer_layer_ids(transformer: dict) -> tuple[dict, int]:
  """(layer id tree, depth) of a vit.Transformer's parameters, in either layout."""
  if vit.LAYER_AXIS in transformer:
    groups = transformer[vit.LAYER_AXIS]
    period = len(groups)
    steps = jax.tree.leaves(groups)[0].shape[0]
    depth = steps * period
    ids = {name: jax.tree.map(lambda _, j=_block_number(name):
                              np.arange(steps) * period + j + 1, group)
           for name, group in groups.items()}
    ids = {vit.LAYER_AXIS: ids}
  else:
    blocks = [k for k in transformer if k.startswith("block_")]
    depth = len(blocks)
    ids = {k: jax.tree.map(lambda _, i=_block_number(k): np.asarray(i + 1), transformer[k])
           for k in blocks}
  for name, tree in transformer.items():
    if name not in ids:  # the final norm
      ids[name] = jax.tree.map(lambda _: np.asarray(depth + 1), tree)
  return ids, depth


def layer_ids(params: dict, encoder: str | None = "encoder") -> tuple[dict, int]:
  """(tree like `params` of integer layer ids, number of encoder blocks L).

  `encoder`: the key of the encoder's parameters in `params` (None: `params` is the
  encoder). Scalars for whole leaves, vectors over the leading axis for stacked ones.
  """
  enc = params if encoder is None else params.get(encoder)
  if not isinstance(enc, dict) or "transformer" not in enc:
    where = "the parameters" if encoder is None else f"params[{encoder!r}]"
    raise ValueError(f"layer-wise factors need an encoder ('transformer' inside {where}); "
                     f"got keys {sorted(params)}")
  transformer_ids, depth = _transformer_layer_ids(enc["transformer"])
  enc_ids = {k: transformer_ids if k == "transformer" else
             jax.tree.map(lambda _: np.asarray(0), v) for k, v in enc.items()}
  if encoder is None:
    return enc_ids, depth
  return {k: enc_ids if k == encoder else jax.tree.map(lambda _: np.asarray(depth + 1), v)
          for k, v in params.items()}, depth


def layer_factor(layer_decay: float = 1.0, frozen_layers: int = 0) -> FactorFn:
  """Factor of layer `id` of L blocks: 0 for the `frozen_layers` bottom layers (ids below
  it), else layer_decay ** (L + 1 - id) (1 at the final norm and outside the encoder)."""
  def factor(ids: np.ndarray, depth: int) -> np.ndarray:
    decayed = np.power(float(layer_decay), depth + 1 - np.asarray(ids, np.float64))
    return np.where(np.asarray(ids) < frozen_layers, 0.0, decayed)
  return factor


def _scale(update: jnp.ndarray, factor: np.ndarray) -> jnp.ndarray:
  """update x factor, the factor broadcast over all but the leading (layer) axis; exact
  zeros where the factor is 0 (even for non-finite updates), untouched where it is 1."""
  if np.all(factor == 1):
    return update
  if np.all(factor == 0):
    return jnp.zeros_like(update)
  f = factor.reshape(factor.shape + (1,) * (update.ndim - factor.ndim))
  scaled = update * jnp.asarray(f, update.dtype)
  return jnp.where(jnp.asarray(f != 0), scaled, jnp.zeros((), update.dtype))


def _factors(updates, encoder: str | None, factor_fn: FactorFn):
  ids, depth = layer_ids(updates, encoder)
  if encoder is None:
    return jax.tree.map(lambda i: factor_fn(i, depth), ids)
  return {k: jax.tree.map(lambda i: factor_fn(i, depth), v) if k == encoder else
          jax.tree.map(lambda i: np.ones_like(i, np.float64), v) for k, v in ids.items()}


def frozen_leaves(params, frozen_layers: int, encoder: str | None = "encoder"):
  """Tree like `params` of bools: True where every entry of the leaf is frozen (a stacked
  leaf that is only partly frozen is False: it keeps its optimizer state)."""
  factors = _factors(params, encoder, layer_factor(1.0, frozen_layers))
  return jax.tree.map(lambda f: bool(np.all(f == 0)), factors)


def scale_by_layer(factor_fn: FactorFn, encoder: str | None = "encoder"
                   ) -> optax.GradientTransformation:
  """Multiplies every update by factor_fn(its layer ids, L); stateless. Factors are
  computed from the tree's structure and shapes while tracing (static constants)."""

  def update_fn(updates, state, params=None):
    del params
    factors = _factors(updates, encoder, factor_fn)
    return jax.tree.map(_scale, updates, factors), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def zero_frozen_gradients(frozen_layers: int, encoder: str | None = "encoder"
                          ) -> optax.GradientTransformation:
  """Zeros the gradients of the layers below `frozen_layers`."""
  return scale_by_layer(layer_factor(1.0, frozen_layers), encoder)


def transformations(layer_decay: float, frozen_layers: int, encoder: str | None = "encoder"
                    ) -> tuple[list, list]:
  """(before, after): the transformations to put before gradient clipping and after AdamW
  for `layer_decay` (1 = off) and `frozen_layers` (0 = off); empty lists when both are off."""
  before = [zero_frozen_gradients(frozen_layers, encoder)] if frozen_layers > 0 else []
  after = [scale_by_layer(layer_factor(layer_decay, frozen_layers), encoder)] \
      if frozen_layers > 0 or layer_decay != 1 else []
  return before, after
