"""ViT encoder and JEPA predictor: parameter counts, key masks, logical names."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax import models, predictor, vit


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def vit_formula(width, depth, mlp, patch=16):
  """Patch embedding + depth x (qkv, proj, 2 norms, MLP) + final norm."""
  block = (width * 3 * width + 3 * width) + (width * width + width) + 4 * width \
      + (width * mlp + mlp) + (mlp * width + width)
  return (patch * patch * width + width) + depth * block + 2 * width


def test_vit_b_parameter_count_is_the_shape_formula_and_86m():
  enc = vit.Encoder(grid=(5, 13), patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072)
  abstract = jax.eval_shape(lambda: nn.unbox(models.init_encoder(enc, jax.random.key(0))))
  count = _count(abstract)
  assert count == vit_formula(768, 12, 3072) == 85_253_376
  assert abs(count - 86e6) / 86e6 < 0.02


def _tiny_encoder():
  return vit.Encoder(grid=(2, 3), patch_size=4, width=16, depth=2, num_heads=2, mlp_dim=32)


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
