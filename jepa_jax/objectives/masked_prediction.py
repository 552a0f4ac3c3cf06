"""The part JEPA and MAE share: encode each mask set's context, predict every target slot.

Context encoder on the context patches of each of the K mask sets, then the predictor
(JEPA) or decoder (MAE) from those embeddings to the target slots of every group.
Shapes follow masks.MaskSet: the result has one row per target slot, (B, K*M*Nt, C), in
(set, group, slot) order, so it lines up with the MaskSet's target arrays flattened.
"""
import functools

import flax.struct
import jax
import jax.numpy as jnp

from jepa_jax import masks, models
from jepa_jax.models import patches, predictor, vit


@flax.struct.dataclass
class Prediction:
  context: jnp.ndarray        # (B*K, Nc, D) context embeddings
  context_valid: jnp.ndarray  # (B*K, Nc)
  pred: jnp.ndarray           # (B, K*M*Nt, C) outputs at every target slot
  target_idx: jnp.ndarray     # (B, K*M*Nt) token index of each target slot
  target_valid: jnp.ndarray   # (B, K*M*Nt)


def encode_and_predict(encoder: vit.Encoder, head: predictor.Predictor, encoder_params,
                       head_params, tokens: jnp.ndarray, m: masks.MaskSet) -> Prediction:
  b = tokens.shape[0]
  k, nc = m.context_idx.shape[1:]
  groups, nt = m.target_idx.shape[2:]
  context_idx = m.context_idx.reshape(b * k, nc)
  context_valid = m.context_valid.reshape(b * k, nc)
  context_tokens = patches.gather_tokens(tokens, m.context_idx.reshape(b, k * nc))
  context = encoder.apply({"params": encoder_params},
                          context_tokens.reshape(b * k, nc, -1), context_idx, context_valid)
  predict = functools.partial(head.apply, {"params": head_params})
  if head.full_grid:  # one pass on the restored grid serves every group
    pred = predict(context, context_idx, context_valid,
                   m.target_idx.reshape(b * k, groups * nt),
                   m.target_valid.reshape(b * k, groups * nt))
  else:  # each target group is predicted from the same context, separately (I-JEPA)
    rep = lambda x: jnp.repeat(x, groups, axis=0)  # noqa: E731
    pred = predict(rep(context), rep(context_idx), rep(context_valid),
                   m.target_idx.reshape(b * k * groups, nt),
                   m.target_valid.reshape(b * k * groups, nt))
  return Prediction(context, context_valid, pred.reshape(b, k * groups * nt, -1),
                    m.target_idx.reshape(b, -1), m.target_valid.reshape(b, -1))


def init_encoder_and_head(encoder: vit.Encoder, head: predictor.Predictor,
                          rng: jax.Array) -> tuple[dict, dict]:
  """Logically boxed parameters of a fresh encoder and its predictor / decoder."""
  enc_rng, head_rng = jax.random.split(rng)
  one = jnp.zeros((1, 1), jnp.int32)
  valid = jnp.ones((1, 1), bool)
  latent = jnp.zeros((1, 1, encoder.width), jnp.float32)
  return (models.init_encoder(encoder, enc_rng),
          head.init(head_rng, latent, one, valid, one, valid)["params"])
