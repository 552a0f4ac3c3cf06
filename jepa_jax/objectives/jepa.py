"""Audio-JEPA objective (Riou et al. 2024, eq. 1-3).

Context encoder on the context patches; target encoder = EMA of the context encoder
(held by the optimizer, passed in as aux['ema']); predictor from context embeddings
and target positions to the target embeddings; distance averaged over valid targets.

Target domain:
  'audio'  : the target encoder sees only the target patches (the paper's best),
  'latent' : it sees the whole input and the targets are selected after (I-JEPA).
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections

from jepa_jax import masks, models
from jepa_jax.config import shapes
from jepa_jax.models import patches
from jepa_jax.objectives import losses, masked_prediction, monitors


def first_occurrence(idx: jnp.ndarray, valid: jnp.ndarray, num_tokens: int) -> jnp.ndarray:
  """(B, L) bool: slot s is valid and the first valid slot holding its token index."""
  slots = jnp.arange(idx.shape[1])

  def row(i, v):
    # Scatter-min of the slot numbers onto token positions, then look back up.
    first = jnp.full((num_tokens,), idx.shape[1]).at[i].min(jnp.where(v, slots, idx.shape[1]))
    return v & (first[i] == slots)

  return jax.vmap(row)(idx, valid)


class JEPA:
  ema_subtree = "encoder"

  @staticmethod
  def splits_batch(config: ml_collections.ConfigDict) -> bool:
    """The loss is a mean of per-example terms: micro-batches keep the gradient."""
    del config
    return True

  @staticmethod
  def config_errors(config: ml_collections.ConfigDict) -> list[str]:
    j = config.jepa
    errors = []
    if j.target_domain not in ("audio", "latent"):
      errors.append(f"jepa.target_domain must be 'audio' or 'latent', got {j.target_domain!r}")
    if j.distance not in losses.DISTANCES:
      errors.append(f"jepa.distance {j.distance!r} unknown; known: {sorted(losses.DISTANCES)}")
    if j.smooth_l1_beta <= 0 or j.standardize_eps <= 0:
      errors.append("jepa.smooth_l1_beta and jepa.standardize_eps must be > 0")
    errors.extend(models.predictor_config_errors(config, "predictor", shapes.grid(config)))
    ema = config.ema
    if not 0 <= ema.tau_start <= ema.tau_end <= 1:
      errors.append(f"ema taus must satisfy 0 <= tau_start <= tau_end <= 1, got "
                    f"{ema.tau_start} -> {ema.tau_end}")
    return errors

  def __init__(self, config: ml_collections.ConfigDict, total_steps: int = 1):
    self.config = config
    self.total_steps = total_steps  # the curriculum mask schedule runs over these
    self.patch_shape = tuple(config.model.patch_shape)
    self.grid = shapes.grid(config)
    self.encoder = models.build_encoder(config, self.grid)
    self.predictor = models.build_predictor(config, self.grid)
    distance = losses.DISTANCES[config.jepa.distance]
    if config.jepa.distance.startswith("smooth_l1"):
      distance = functools.partial(distance, beta=config.jepa.smooth_l1_beta)
    self.distance = distance

  def init(self, rng: jax.Array) -> dict:
    encoder, predictor = masked_prediction.init_encoder_and_head(self.encoder, self.predictor,
                                                                 rng)
    return {"encoder": encoder, "predictor": predictor}

  def init_aux(self) -> dict:
    return {}  # the EMA target lives in the optimizer state

  def encoder_params(self, params: dict) -> dict:
    return params["encoder"]

  def input_transform(self, params: dict, aux: dict) -> None:
    return None  # the encoder takes the normalised log-mel as it is

  def _forward(self, params, aux, batch, rng, step):
    """Masks, then context embeddings (B*K, Nc, D) per mask set, and predictions and
    stop-gradient targets for every target slot of every set and group, (B, K*M*Nt, D)."""
    tokens = patches.patchify(batch["mel"], self.patch_shape)
    m = masks.sample(rng, tokens.shape[0], self.grid, self.config.mask, step, self.total_steps)
    p = masked_prediction.encode_and_predict(self.encoder, self.predictor, params["encoder"],
                                             params["predictor"], tokens, m)
    encode = lambda p, *args: self.encoder.apply({"params": p}, *args)  # noqa: E731
    if self.config.jepa.target_domain == "audio":
      # The target encoder sees the union of the clip's target patches, each once: a
      # repeated patch (overlapping blocks, several sets) is no key for the others but
      # still gets its own output, equal to its first occurrence's.
      keys = first_occurrence(p.target_idx, p.target_valid, tokens.shape[1])
      target = encode(aux["ema"], patches.gather_tokens(tokens, p.target_idx), p.target_idx,
                      keys)
    else:  # one target pass on the whole input, shared by every mask set
      target = patches.gather_tokens(encode(aux["ema"], tokens), p.target_idx)
    target = jax.lax.stop_gradient(target).astype(jnp.float32)
    return p.context, p.context_valid, p.pred, target, p.target_valid

  def loss(self, params, aux, batch, rng, step):
    _, _, pred, target, valid = self._forward(params, aux, batch, rng, step)
    goal = losses.standardize(target, self.config.jepa.standardize_eps) \
        if self.config.jepa.standardize_targets else target
    loss = losses.masked_mean(self.distance(pred.astype(jnp.float32), goal), valid)
    return loss, ({"loss": loss}, {})

  def monitors(self, params, aux, batch, rng, step) -> dict:
    """Label-free collapse monitors of the target and context embeddings. Each costs an
    eigendecomposition, so the loop computes them on logging steps only."""
    context, context_valid, _, target, target_valid = self._forward(params, aux, batch, rng,
                                                                    step)
    return {**monitors.collapse_monitors("target", target, target_valid),
            **monitors.collapse_monitors("context", context, context_valid)}
