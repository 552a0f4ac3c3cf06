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

from jepa_jax import losses, masks, models, monitors, patches


def gather_tokens(x: jnp.ndarray, idx: jnp.ndarray) -> jnp.ndarray:
  """(B, N, C), (B, M) -> (B, M, C)."""
  return jnp.take_along_axis(x, idx[..., None], axis=1)


class JEPA:
  ema_subtree = "encoder"

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
    ema = config.ema
    if not 0 <= ema.tau_start <= ema.tau_end <= 1:
      errors.append(f"ema taus must satisfy 0 <= tau_start <= tau_end <= 1, got "
                    f"{ema.tau_start} -> {ema.tau_end}")
    return errors

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.patch_size = config.model.patch_size
    self.grid = models.grid(config)
    self.encoder = models.build_encoder(config)
    self.predictor = models.build_predictor(config)
    self.mask_params = {k: v for k, v in config.mask.items() if k != "strategy"}
    distance = losses.DISTANCES[config.jepa.distance]
    if config.jepa.distance.startswith("smooth_l1"):
      distance = functools.partial(distance, beta=config.jepa.smooth_l1_beta)
    self.distance = distance

  def init(self, rng: jax.Array) -> dict:
    enc_rng, pred_rng = jax.random.split(rng)
    encoder = models.init_encoder(self.encoder, enc_rng)
    one = jnp.zeros((1, 1), jnp.int32)
    valid = jnp.ones((1, 1), bool)
    context = jnp.zeros((1, 1, self.encoder.width), jnp.float32)
    predictor = self.predictor.init(pred_rng, context, one, valid, one, valid)["params"]
    return {"encoder": encoder, "predictor": predictor}

  def init_aux(self) -> dict:
    return {}  # the EMA target lives in the optimizer state

  def encoder_params(self, params: dict) -> dict:
    return params["encoder"]

  def _forward(self, params, aux, batch, rng):
    """Masks, context embeddings, predictions and (stop-gradient) target embeddings."""
    mel = batch["mel"]
    tokens = patches.patchify(mel, self.patch_size)
    m = masks.sample(rng, mel.shape[0], self.grid, self.config.mask.strategy, **self.mask_params)

    encode = lambda p, *args: self.encoder.apply({"params": p}, *args)  # noqa: E731
    context = encode(params["encoder"], gather_tokens(tokens, m.context_idx),
                     m.context_idx, m.context_valid)
    pred = self.predictor.apply({"params": params["predictor"]}, context, m.context_idx,
                                m.context_valid, m.target_idx, m.target_valid)

    target_params = aux["ema"]
    if self.config.jepa.target_domain == "audio":
      target = encode(target_params, gather_tokens(tokens, m.target_idx),
                      m.target_idx, m.target_valid)
    else:
      target = gather_tokens(encode(target_params, tokens), m.target_idx)
    return m, context, pred, jax.lax.stop_gradient(target).astype(jnp.float32)

  def loss(self, params, aux, batch, rng, step):
    del step  # the mask strategies of this objective do not depend on it yet
    m, _, pred, target = self._forward(params, aux, batch, rng)
    goal = losses.standardize(target, self.config.jepa.standardize_eps) \
        if self.config.jepa.standardize_targets else target
    loss = losses.masked_mean(self.distance(pred.astype(jnp.float32), goal), m.target_valid)
    return loss, ({"loss": loss}, {})

  def monitors(self, params, aux, batch, rng, step) -> dict:
    """Label-free collapse monitors of the target and context embeddings. Each costs an
    eigendecomposition, so the loop computes them on logging steps only."""
    del step
    m, context, _, target = self._forward(params, aux, batch, rng)
    return {**monitors.collapse_monitors("target", target, m.target_valid),
            **monitors.collapse_monitors("context", context, m.context_valid)}
