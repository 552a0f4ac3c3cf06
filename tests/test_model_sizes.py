"""Parameter counts of every model size (docs/models.md) from abstract shapes (nothing is
allocated), against the shape formula written out here and the papers' rounded figures."""
import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import main
from jepa_jax.config import fields
from jepa_jax.models import attention, predictor, vit
from tests.tiny import ROOT, load_config_module

PATCH_16 = 16 * 16  # values of a 16 x 16 patch (Audio-JEPA, A-JEPA, AudioMAE)
DASHENG_PATCH = (64, 4)  # all 64 mel bins x 4 frames
DASHENG_TOKENS = 250  # 10 s at 25 tokens per second


def block_params(d: int, mlp: int) -> int:
  """One pre-norm block: qkv (3 d^2 + 3 d), out (d^2 + d), 2 LayerNorms (4 d), MLP
  (d mlp + mlp + mlp d + d); 12 d^2 + 13 d when mlp = 4 d."""
  return (3 * d * d + 3 * d) + (d * d + d) + 4 * d + (d * mlp + mlp) + (mlp * d + d)


def swinv2_extra(heads: int, hidden: int = 384) -> int:
  """What a Swin V2 block (AudioMAE's local decoder block, models/swinv2.py) has on top of
  a pre-norm block: the position bias MLP (2 x hidden + hidden, hidden x heads + heads)
  and one temperature per head."""
  return (2 * hidden + hidden) + (hidden * heads + heads) + heads


def stack_params(d: int, depth: int, mlp: int) -> int:
  """depth blocks and the final LayerNorm."""
  return depth * block_params(d, mlp) + 2 * d


def encoder_params(d: int, depth: int, mlp: int, patch_values: int, position_rows: int = 0
                   ) -> int:
  """Patch embedding (patch values x d + d), the stack, learned positions (rows x d)."""
  return patch_values * d + d + stack_params(d, depth, mlp) + position_rows * d


def head_params(d: int, depth: int, mlp: int, in_width: int, out_dim: int) -> int:
  """Predictor / decoder: embed (in_width x d + d), mask token d, the stack, output
  projection (d x out_dim + out_dim); sin-cos positions have no parameters."""
  return in_width * d + d + d + stack_params(d, depth, mlp) + d * out_dim + out_dim


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _abstract_count(module, *args) -> int:
  shapes = jax.eval_shape(lambda *a: nn.unbox(module.init(jax.random.key(0), *a)), *args)
  return _count(shapes["params"])


def _within(count: int, figure: float, tolerance: float = 0.02) -> bool:
  return abs(count - figure) / figure < tolerance


def test_block_formula_is_twelve_d_squared_plus_thirteen_d():
  for d in (384, 768, 1024, 1280, 1536):
    assert block_params(d, 4 * d) == 12 * d * d + 13 * d


@pytest.mark.parametrize("size, depth, width, mlp, formula, figure", [
    ("vit_s", 12, 384, 1536, 21_393_024, 21.4e6),
    ("vit_b", 12, 768, 3072, 85_253_376, 85.4e6),
    ("vit_l", 24, 1024, 4096, 302_574_592, 302.6e6),
])
def test_vit_encoder_sizes_from_the_configs(size, depth, width, mlp, formula, figure):
  config = load_config_module("audiomae").get_config(f"size={size}")
  assert (config.model.depth, config.model.width, config.model.mlp_dim) == (depth, width, mlp)
  counts = main.parameter_counts(config)  # what --dry_run prints
  assert counts["encoder"] == encoder_params(width, depth, mlp, PATCH_16) == formula
  assert _within(counts["encoder"], figure)


@pytest.mark.parametrize("size, formula, figure", [
    ("dasheng_0.6b", 630_330_880, 630e6),
    ("dasheng_1.2b", 1_134_044_160, 1.134e9),
])
def test_dasheng_encoder_sizes(size, formula, figure):
  shape = fields.ENCODER_SIZES[size]
  encoder = vit.Encoder(grid=(1, DASHENG_TOKENS), patch_shape=DASHENG_PATCH,
                        positions="learned", scan=True, **shape)
  count = _abstract_count(encoder, jax.ShapeDtypeStruct((1, DASHENG_TOKENS, 256), jnp.float32))
  # Learned factorised positions: time (T x D) plus frequency (1 x D).
  expected = encoder_params(shape["width"], shape["depth"], shape["mlp_dim"], 64 * 4,
                            position_rows=DASHENG_TOKENS + 1)
  assert count == expected == formula
  assert _within(count, figure)


@pytest.mark.parametrize("variant, size, decoder, figure", [
    ("", "vit_b", "dec_25m", 85.4e6),
    ("0.6b", "dasheng_0.6b", "dec_25m", 630e6),
    ("1.2b,dec56m", "dasheng_1.2b", "dec_56m", 1.134e9),
])
def test_dasheng_config_sizes(variant, size, decoder, figure):
  """What --dry_run prints for configs/dasheng.py: learned positions in the encoder and
  the decoder (T + 1 rows each), decoder embed from the encoder width."""
  counts = main.parameter_counts(load_config_module("dasheng").get_config(variant))
  e, h = fields.ENCODER_SIZES[size], fields.PREDICTOR_SIZES[decoder]
  rows = DASHENG_TOKENS + 1
  assert counts["encoder"] == encoder_params(e["width"], e["depth"], e["mlp_dim"], 256, rows)
  assert _within(counts["encoder"], figure)
  assert counts["decoder"] == head_params(h["width"], h["depth"], h["mlp_dim"], e["width"],
                                          256) + rows * h["width"]


def _decoder(size: str, grid=(8, 64), **kw):
  return predictor.Predictor(grid=grid, out_dim=PATCH_16, full_grid=True,
                             **fields.PREDICTOR_SIZES[size], **kw)


def _decoder_count(module, in_width: int) -> int:
  n = module.grid[0] * module.grid[1]
  context = jax.ShapeDtypeStruct((1, n, in_width), jnp.float32)
  idx = jax.ShapeDtypeStruct((1, n), jnp.int32)
  valid = jax.ShapeDtypeStruct((1, n), jnp.bool_)
  return _abstract_count(module, context, idx, valid, idx, valid)


@pytest.mark.parametrize("size, in_width, figure", [
    ("dec_25m", 768, 25e6),    # the paper attaches it to Dasheng-Base (768) and 0.6B
    ("dec_56m", 1536, 56e6),   # and this one to Dasheng-1.2B (1536)
])
def test_mae_decoder_sizes(size, in_width, figure):
  shape = fields.PREDICTOR_SIZES[size]
  d, depth, mlp = shape["width"], shape["depth"], shape["mlp_dim"]
  count = _decoder_count(_decoder(size), in_width)
  assert count == head_params(d, depth, mlp, in_width, PATCH_16)
  # The rounded figures match the transformer stack; embed and output projection add
  # 0.5 M (Dec-25M) and 1.4 M (Dec-56M) on top (3.0 % and 3.7 % above the figure).
  assert _within(stack_params(d, depth, mlp), figure)
  assert _within(count, figure, tolerance=0.04)


def test_dec_25m_in_the_audiomae_global_config():
  counts = main.parameter_counts(load_config_module("audiomae").get_config("global"))
  assert counts["decoder"] == head_params(512, 8, 2048, 768, PATCH_16) == 25_745_664


@pytest.mark.parametrize("config_name, depth, swinv2", [("audio_jepa", 8, False),
                                                        ("ajepa", 16, True)])
def test_jepa_predictor_sizes(config_name, depth, swinv2):
  """Audio-JEPA predictor 8 x 512 (queries), A-JEPA 16 x 512 (full grid, local windows,
  Swin V2 blocks), both from and to the ViT-B width."""
  counts = main.parameter_counts(load_config_module(config_name).get_config())
  extra = depth * swinv2_extra(16) if swinv2 else 0
  assert counts["predictor"] == head_params(512, depth, 2048, 768, 768) + extra
  assert counts["encoder"] == encoder_params(768, 12, 3072, PATCH_16)


def test_counts_do_not_depend_on_layer_scanning():
  shape = fields.ENCODER_SIZES["vit_s"]
  patches = jax.ShapeDtypeStruct((1, 8 * 64, PATCH_16), jnp.float32)
  counts = {scan: _abstract_count(vit.Encoder(grid=(8, 64), patch_shape=(16, 16), scan=scan,
                                              **shape), patches) for scan in (False, True)}
  assert counts[False] == counts[True] == 21_393_024
  # A-JEPA's shifted-window predictor scans in pairs: still the same count.
  windows = attention.Windows((8, 64), (4, 4), (0, 2))
  pairs = {scan: _decoder_count(_decoder("ajepa", windows=windows, scan=scan), 768)
           for scan in (False, True)}
  assert pairs[False] == pairs[True] == head_params(512, 16, 2048, 768, PATCH_16)


def test_dry_run_prints_the_vit_l_counts():
  result = subprocess.run(
      [sys.executable, "-m", "jepa_jax.main", "--config=configs/audiomae.py:size=vit_l",
       "--dry_run"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  counts = json.loads(result.stdout.strip().splitlines()[-1])["params"]
  assert counts == {"encoder": encoder_params(1024, 24, 4096, PATCH_16),
                    "decoder": head_params(512, 16, 2048, 1024, PATCH_16)
                    + 16 * swinv2_extra(16)}
  assert _within(counts["encoder"], 302.6e6)
