"""Build the modules a config names (one place that reads model fields)."""
import jax.numpy as jnp
import ml_collections

from jepa_jax import patches, predictor, vit

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(mels, frames) of one training example."""
  from data_pipelines import frontends  # local: keeps model import light
  return frontends.get_frontend(config.data.frontend).n_mels, config.data.frames


def grid(config: ml_collections.ConfigDict) -> tuple[int, int]:
  return patches.patch_grid(input_shape(config), config.model.patch_size)


def _attention_impl(model: ml_collections.ConfigDict) -> str | None:
  return model.attention_impl or None


def build_encoder(config: ml_collections.ConfigDict) -> vit.Encoder:
  m = config.model
  return vit.Encoder(grid=grid(config), patch_size=m.patch_size, width=m.width,
                     depth=m.depth, num_heads=m.num_heads, mlp_dim=m.mlp_dim,
                     dtype=DTYPES[m.dtype], attention_impl=_attention_impl(m))


def build_predictor(config: ml_collections.ConfigDict) -> predictor.Predictor:
  p = config.predictor
  return predictor.Predictor(
      grid=grid(config), width=p.width, depth=p.depth, num_heads=p.num_heads,
      mlp_dim=p.mlp_dim, out_dim=config.model.width, dtype=DTYPES[config.model.dtype],
      attention_impl=_attention_impl(config.model))



def init_encoder(encoder: vit.Encoder, rng) -> dict:
  """Logically boxed parameters of a fresh `encoder`."""
  n = encoder.grid[0] * encoder.grid[1]
  return encoder.init(rng, jnp.zeros((1, n, encoder.patch_size ** 2), jnp.float32))["params"]
