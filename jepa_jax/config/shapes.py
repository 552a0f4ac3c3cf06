"""The input and token-grid shapes a config implies (its front end's mel bins, its frames and
patch shape): what models, masks and objectives are built for."""
import ml_collections

from data_pipelines import frontends
from jepa_jax.models import patches


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(mels, frames) of one training example."""
  return frontends.get_frontend(config.data.frontend).n_mels, config.data.frames


def patch_shape(config: ml_collections.ConfigDict) -> tuple[int, int]:
  return tuple(config.model.patch_shape)


def grid(config: ml_collections.ConfigDict) -> tuple[int, int]:
  return patches.patch_grid(input_shape(config), patch_shape(config))
