"""Random keys of a run and the encoder as its training starts."""
import flax.linen as nn
import jax
import ml_collections

from jepa_jax import objectives


def rngs(config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
  """(init key, step key); the step's key is fold_in(step key, step)."""
  base = jax.random.key(config.seed)
  return jax.random.fold_in(base, 0), jax.random.fold_in(base, 1)


def initial_encoder_params(config: ml_collections.ConfigDict):
  """The encoder as training starts (a run's random-init baseline)."""
  objective = objectives.build(config)
  params = jax.jit(lambda rng: nn.unbox(objective.init(rng)))(rngs(config)[0])
  return objective.encoder_params(params)
