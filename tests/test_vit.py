"""ViT encoder and JEPA predictor: parameter counts, key masks, logical names."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import models
from jepa_jax.models import attention, positions, predictor, vit


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def vit_formula(width, depth, mlp, patch=16):
  """Patch embedding + depth x (qkv, proj, 2 norms, MLP) + final norm."""
  block = (width * 3 * width + 3 * width) + (width * width + width) + 4 * width \
      + (width * mlp + mlp) + (mlp * width + width)
  return (patch * patch * width + width) + depth * block + 2 * width


def test_vit_b_parameter_count_is_the_shape_formula_and_86m():
  enc = vit.Encoder(grid=(5, 13), patch_shape=(16, 16), width=768, depth=12, num_heads=12,
                    mlp_dim=3072)
  abstract = jax.eval_shape(lambda: nn.unbox(models.init_encoder(enc, jax.random.key(0))))
  count = _count(abstract)
  assert count == vit_formula(768, 12, 3072) == 85_253_376
  assert abs(count - 86e6) / 86e6 < 0.02


def _tiny_encoder():
  return vit.Encoder(grid=(2, 3), patch_shape=(4, 4), width=16, depth=2, num_heads=2, mlp_dim=32)


def test_every_parameter_has_logical_axis_names():
  boxed = models.init_encoder(_tiny_encoder(), jax.random.key(0))
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  assert all(len(x.names) == x.value.ndim for x in leaves)


def test_key_mask_makes_padding_invisible():
  enc = _tiny_encoder()
  params = nn.unbox(models.init_encoder(enc, jax.random.key(0)))
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.normal(size=(1, 4, 16)), jnp.float32)
  idx = jnp.array([[0, 2, 5, 1]])
  valid = jnp.array([[True, True, True, False]])
  out = enc.apply({"params": params}, tokens, idx, valid)
  other = tokens.at[0, 3].set(100.0)  # change only the padded slot
  out2 = enc.apply({"params": params}, other, idx, valid)
  np.testing.assert_allclose(out[0, :3], out2[0, :3], rtol=1e-5, atol=1e-6)
  # Without the mask the padded slot does change the others.
  assert not np.allclose(enc.apply({"params": params}, tokens, idx)[0, :3],
                         enc.apply({"params": params}, other, idx)[0, :3])


def test_encoder_uses_the_positions_it_is_given():
  enc = _tiny_encoder()
  params = nn.unbox(models.init_encoder(enc, jax.random.key(1)))
  tokens = jnp.asarray(np.random.default_rng(1).normal(size=(1, 6, 16)), jnp.float32)
  full = enc.apply({"params": params}, tokens)
  explicit = enc.apply({"params": params}, tokens, jnp.arange(6)[None])
  np.testing.assert_allclose(full, explicit, rtol=1e-6)
  # Positions are sin-cos added after the patch embedding: a permutation of tokens
  # together with their indices permutes the output.
  perm = jnp.array([3, 0, 5, 1, 4, 2])
  permuted = enc.apply({"params": params}, tokens[:, perm], perm[None])
  np.testing.assert_allclose(permuted, full[:, perm], rtol=1e-5, atol=1e-6)


def test_predictor_output_at_targets_ignores_padding():
  pred = predictor.Predictor(grid=(2, 3), width=8, depth=1, num_heads=2, mlp_dim=16, out_dim=16)
  ctx = jnp.asarray(np.random.default_rng(2).normal(size=(1, 3, 16)), jnp.float32)
  ctx_idx, ctx_valid = jnp.array([[0, 4, 1]]), jnp.array([[True, True, False]])
  tgt_idx, tgt_valid = jnp.array([[2, 3]]), jnp.array([[True, True]])
  params = nn.unbox(pred.init(jax.random.key(0), ctx, ctx_idx, ctx_valid, tgt_idx, tgt_valid))
  out = pred.apply(params, ctx, ctx_idx, ctx_valid, tgt_idx, tgt_valid)
  assert out.shape == (1, 2, 16)
  out2 = pred.apply(params, ctx.at[0, 2].set(50.0), ctx_idx, ctx_valid, tgt_idx, tgt_valid)
  np.testing.assert_allclose(out, out2, rtol=1e-5, atol=1e-6)
  # Different target positions give different predictions (positions reach the output).
  out3 = pred.apply(params, ctx, ctx_idx, ctx_valid, jnp.array([[5, 3]]), tgt_valid)
  assert not np.allclose(out[0, 0], out3[0, 0])


def _full_grid_predictor(**kw):
  return predictor.Predictor(grid=(2, 4), width=8, depth=2, num_heads=2, mlp_dim=16,
                             out_dim=6, full_grid=True, **kw)


def test_full_grid_predictor_is_the_transformer_on_the_restored_grid():
  pred = _full_grid_predictor()
  rng = np.random.default_rng(3)
  ctx = jnp.asarray(rng.normal(size=(1, 3, 5)), jnp.float32)
  ctx_idx, ctx_valid = jnp.array([[6, 1, 3]]), jnp.array([[True, True, False]])
  tgt_idx = jnp.array([[0, 2, 7]])
  params = nn.unbox(pred.init(jax.random.key(0), ctx, ctx_idx, ctx_valid, tgt_idx,
                              jnp.ones((1, 3), bool)))["params"]
  out = pred.apply({"params": params}, ctx, ctx_idx, ctx_valid, tgt_idx, jnp.ones((1, 3), bool))
  # By hand: mask token + position everywhere, embedded context + position at its two
  # valid slots (the padded slot pointing at 3 leaves a mask token there).
  p = jax.tree.map(np.asarray, params)
  table = positions.sincos_2d(8, (2, 4))
  grid = np.tile(p["mask_token"][0], (8, 1)) + table
  embedded = np.asarray(ctx[0]) @ p["embed"]["kernel"] + p["embed"]["bias"]
  for slot in (0, 1):
    grid[int(ctx_idx[0, slot])] = embedded[slot] + table[int(ctx_idx[0, slot])]
  h = vit.Transformer(depth=2, num_heads=2, mlp_dim=16).apply(
      {"params": params["transformer"]}, jnp.asarray(grid[None], jnp.float32))
  expected = np.asarray(h)[0, [0, 2, 7]] @ p["project"]["kernel"] + p["project"]["bias"]
  np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-5)
  # Context slot order does not matter; neither does what a padded slot holds.
  perm = jnp.array([2, 0, 1])
  out2 = pred.apply({"params": params}, ctx[:, perm].at[0, 0].set(9.0), ctx_idx[:, perm],
                    ctx_valid[:, perm], tgt_idx, jnp.ones((1, 3), bool))
  np.testing.assert_allclose(out, out2, rtol=1e-5, atol=1e-6)


def test_windowed_predictor_needs_the_full_grid():
  pred = predictor.Predictor(grid=(2, 4), width=8, depth=1, num_heads=2, mlp_dim=16,
                             out_dim=6, windows=attention.Windows((2, 4), (2, 2)))
  ctx = jnp.zeros((1, 1, 5))
  one, valid = jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool)
  with pytest.raises(ValueError, match="full token grid"):
    pred.init(jax.random.key(0), ctx, one, valid, one, valid)


def test_learned_positions_are_factorised_frequency_plus_time():
  enc = vit.Encoder(grid=(1, 10), patch_shape=(64, 4), width=16, depth=1, num_heads=2,
                    mlp_dim=32, positions="learned")
  params = nn.unbox(models.init_encoder(enc, jax.random.key(0)))
  assert params["positions"]["freq"].shape == (1, 1, 16)
  assert params["positions"]["time"].shape == (1, 10, 16)
  table = vit.PositionTable((3, 5), 4, "learned")
  tp = nn.unbox(table.init(jax.random.key(1)))
  t = np.asarray(table.apply(tp))
  freq, time = (np.asarray(tp["params"][k]) for k in ("freq", "time"))
  for f in range(3):
    for s in range(5):
      np.testing.assert_allclose(t[f * 5 + s], freq[f, 0] + time[0, s], rtol=1e-6)
  # Positions reach the output: the same tokens at shifted positions encode differently.
  tokens = jnp.ones((1, 2, 256))
  a = enc.apply({"params": params}, tokens, jnp.array([[0, 1]]))
  b = enc.apply({"params": params}, tokens, jnp.array([[2, 3]]))
  assert not np.allclose(a, b)


@pytest.mark.parametrize("features, in_names, out_names, x_shape", [
    ((3, 4, 8), ("embed",), (None, "heads", "kv"), (2, 5, 16)),  # QKV: (embed, 3, heads, kv)
    ((16,), ("heads", "kv"), ("embed",), (2, 5, 4, 8)),          # attention output
    ((16,), ("embed",), ("mlp",), (2, 5, 16))])
def test_projection_is_the_product_over_its_whole_kernel(features, in_names, out_names, x_shape):
  """The product runs on a merged view of the kernel (layers._merged); it must equal the
  contraction over the kernel's own axes, with parameters of the declared shapes."""
  from jepa_jax.models import layers
  proj = layers.Projection(features, in_names, out_names)
  x = jax.random.normal(jax.random.key(0), x_shape)
  params = nn.unbox(proj.init(jax.random.key(1), x))["params"]
  n_in = len(in_names)
  assert params["kernel"].shape == x_shape[-n_in:] + features
  params["bias"] = jax.random.normal(jax.random.key(2), features)
  expected = jnp.tensordot(x, params["kernel"], n_in) + params["bias"]
  np.testing.assert_allclose(proj.apply({"params": params}, x), expected, rtol=1e-5, atol=1e-5)


def test_merged_view_keeps_sharded_axes_leading():
  from jepa_jax.models import layers
  assert layers._merged((3, 12, 64), (None, "heads", "kv")) == (3, 768)
  assert layers._merged((12, 64), ("heads", "kv")) == (768,)
  assert layers._merged((768,), ("embed",)) == (768,)
  assert layers._merged((4, 5), ("embed", "mlp")) == (4, 5)  # two named axes stay apart
