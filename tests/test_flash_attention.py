"""Memory-efficient attention against the dense reference: blockwise (flash-style, custom
VJP) and the splash Pallas kernel (interpreted on CPU) give dense_attention's values and
gradients wrt q, k, v with no mask, key masks (padding, a fully masked example,
A-JEPA's regularised masks), Swin window regions and lengths that are no multiple of the
block; the blockwise backward holds no (S, S) scores; `auto` picks per backend and
length; the ViT encoder is the same model with either."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import tiny_config

from jepa_jax import models
from jepa_jax.config import fields, shapes, validation
from jepa_jax.models import attention
from jepa_jax.models.blockwise_attention import blockwise_attention
from jepa_jax.models.splash_attention import splash_attention

TOL = dict(rtol=1e-5, atol=1e-6)


def assert_close(actual, desired, name=""):
  """Equal within float32 rounding: 1e-5 relative, or 1e-5 of the largest entry (a
  gradient summed over 513 queries of a 3-key example cancels to ~1e-6 absolute)."""
  np.testing.assert_allclose(actual, desired, rtol=1e-5,
                             atol=1e-5 * float(np.abs(desired).max()), err_msg=name)


def qkv_and_cotangent(length: int, batch: int = 3, heads: int = 2, head_dim: int = 16):
  return jax.random.normal(jax.random.key(length), (4, batch, length, heads, head_dim))


def key_masks(kind: str, batch: int, length: int) -> tuple[jnp.ndarray | None, ...]:
  """(key_mask, segments) of each masking case."""
  if kind == "none":
    return None, None
  if kind == "padding":  # trailing padding of different lengths; example 0 has no key left
    lengths = jnp.array([0, length // 3, length])[:batch]
    return jnp.arange(length)[None] < lengths[:, None], None
  if kind == "regularised":  # one layer's A-JEPA masks over partly padded examples
    valid = jnp.arange(length)[None] < jnp.array([length, length - 7, 5])[:batch, None]
    drop = attention.regularised_key_masks(jax.random.key(3), 1, batch, length, 0.5, valid)[0]
    return valid & drop, None
  if kind == "segments":  # window regions beside a key mask
    mask = jax.random.uniform(jax.random.key(4), (batch, length)) > 0.3
    return mask, jax.random.randint(jax.random.key(5), (batch, length), 0, 4)
  raise ValueError(kind)


def dense_and(other, q, k, v, cotangent, key_mask, segments):
  """Outputs and (dq, dk, dv) of dense_attention and of `other`."""
  mask = attention.full_mask(key_mask, segments)
  results = []
  for attend in (lambda q, k, v: attention.dense_attention(q, k, v, mask), other):
    out, vjp = jax.vjp(attend, q, k, v)
    results.append((out, vjp(cotangent)))
  return results


@pytest.mark.parametrize("length", [65, 513])
@pytest.mark.parametrize("kind", ["none", "padding", "regularised", "segments"])
def test_blockwise_equals_dense_values_and_gradients(length, kind):
  q, k, v, cotangent = qkv_and_cotangent(length)
  key_mask, segments = key_masks(kind, q.shape[0], length)
  (out, grads), (blk_out, blk_grads) = dense_and(
      lambda q, k, v: blockwise_attention(q, k, v, key_mask, segments, block=64),
      q, k, v, cotangent, key_mask, segments)
  assert_close(blk_out, out)
  for name, a, b in zip("qkv", blk_grads, grads):
    assert_close(a, b, f"d{name}")


def test_a_fully_masked_query_spreads_evenly_as_dense_does():
  """No key left: the mean of all (real) values, not of the padding keys too, and no NaN
  in the gradients; the dense behaviour, kept."""
  q, k, v, _ = qkv_and_cotangent(65, batch=1)
  none = jnp.zeros((1, 65), bool)
  out = blockwise_attention(q, k, v, none, block=64)  # 63 padding keys in the last block
  np.testing.assert_allclose(out, jnp.broadcast_to(v.mean(1, keepdims=True), out.shape),
                             rtol=1e-5, atol=1e-6)
  grads = jax.grad(lambda v: blockwise_attention(q, k, v, none, block=64).sum())(v)
  np.testing.assert_allclose(grads, np.full(v.shape, 1.0), rtol=1e-5)


def test_blockwise_runs_in_bfloat16_like_dense():
  q, k, v, _ = qkv_and_cotangent(130).astype(jnp.bfloat16)
  out = blockwise_attention(q, k, v, block=64)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(np.float32),
                             attention.dense_attention(q, k, v, None).astype(np.float32),
                             atol=2e-2)


@pytest.mark.parametrize("impl", ["blockwise", "splash"])
def test_windowed_attention_module_is_the_same_with_every_implementation(impl):
  """Shifted windows with a key mask: Attention's windows go to blockwise as region
  segments (and to dense under 'splash', see attention.choose); same outputs and
  parameter / input gradients as 'dense'."""
  windows = attention.Windows((4, 8), (2, 4), (1, 2))
  x = jax.random.normal(jax.random.key(0), (2, 32, 16))
  key_mask = jax.random.uniform(jax.random.key(1), (2, 32)) > 0.4
  dense = attention.Attention(num_heads=2, implementation="dense", windows=windows)
  params = nn.unbox(dense.init(jax.random.key(2), x)["params"])
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(3), a.shape), params)

  def loss(module, params, x):
    return jnp.sum(jnp.sin(module.apply({"params": params}, x, key_mask)))

  other = dataclasses.replace(dense, implementation=impl)
  ref, got = (jax.value_and_grad(loss, argnums=(1, 2))(m, params, x) for m in (dense, other))
  np.testing.assert_allclose(got[0], ref[0], **TOL)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got[1],
               ref[1])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["none", "padding"])
def test_splash_kernel_interpreted_equals_dense(kind):
  """JAX's splash attention TPU kernel in Pallas interpret mode on CPU (~10 s to trace):
  key mask as segment ids, 65 tokens padded to its 128-token tiles, a fully masked
  example replaced by dense's even spread."""
  q, k, v, cotangent = qkv_and_cotangent(65, batch=3)
  key_mask, _ = key_masks(kind, 3, 65)
  (out, grads), (sp_out, sp_grads) = dense_and(
      lambda q, k, v: splash_attention(q, k, v, key_mask, interpret=True),
      q, k, v, cotangent, key_mask, None)
  assert_close(sp_out, out)
  for name, a, b in zip("qkv", sp_grads, grads):
    assert_close(a, b, f"d{name}")


def temp_bytes(attend, length: int) -> int:
  """XLA's temporary bytes of the jitted forward + backward at (1, length, 2, 64)."""
  q, k, v, cotangent = qkv_and_cotangent(length, batch=1, heads=2, head_dim=64)

  def forward_backward(q, k, v):
    out, vjp = jax.vjp(attend, q, k, v)
    return vjp(cotangent)
  return jax.jit(forward_backward).lower(q, k, v).compile().memory_analysis().temp_size_in_bytes


def test_blockwise_backward_never_holds_the_score_matrix():
  """At S=1024 one (heads, S, S) float32 score matrix is 8 MiB and dense's backward holds
  a few (34 MB measured); blockwise's whole temporary memory stays under one (4.8 MB: a
  few (heads, S, 128) slabs of 1 MiB, the float32 dq accumulator, dk and dv)."""
  scores = 2 * 1024 * 1024 * 4
  dense = temp_bytes(lambda q, k, v: attention.dense_attention(q, k, v, None), 1024)
  blockwise = temp_bytes(lambda q, k, v: blockwise_attention(q, k, v, block=128), 1024)
  assert dense >= scores
  assert blockwise < scores, (blockwise, dense)
  assert blockwise < dense / 4, (blockwise, dense)


def test_auto_picks_per_backend_and_length(monkeypatch):
  f32, bf16 = jnp.float32, jnp.bfloat16
  for impl in ("auto", "", None):
    assert attention.choose(impl, 65, f32, 64, windowed=False) == "dense"
    assert attention.choose(impl, attention.BLOCKWISE_FROM, f32, 64, False) == "blockwise"
    assert attention.choose(impl, 16, f32, 64, windowed=True) == "dense"
  for impl in ("dense", "xla", "cudnn", "blockwise", "splash"):  # named: as named
    assert attention.choose(impl, 65, f32, 64, False) == impl
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  assert attention.choose("auto", 65, f32, 64, windowed=False) == "splash"
  assert attention.choose("auto", 16, f32, 64, windowed=True) == "dense"
  assert attention.choose("auto", 512, f32, 64, windowed=True) == "blockwise"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  for capability, dtype, head_dim, expected in [
      ("8.0", bf16, 64, "cudnn"), ("9.0", jnp.float16, 128, "cudnn"),
      ("7.5", bf16, 64, "dense"),      # a T4: no cuDNN flash attention
      ("8.6", f32, 64, "dense"),       # float32: XLA
      ("8.0", bf16, 100, "dense")]:    # head dim not a multiple of 8
    device = type("Device", (), {"compute_capability": capability})()
    monkeypatch.setattr(jax, "devices", lambda device=device: [device])
    assert attention.choose("auto", 65, dtype, head_dim, False) == expected, capability
    long = attention.choose("auto", 2048, dtype, head_dim, False)
    assert long == ("cudnn" if expected == "cudnn" else "blockwise")


def test_attention_impl_default_names_and_errors():
  """'auto' is the default; every name saved configs may hold still validates on CPU;
  'splash' off a TPU is one clear line."""
  config = tiny_config()
  assert config.model.attention_impl == "auto"  # the recipes' base_config default
  for impl in ("auto", "", "dense", "xla", "blockwise"):
    config.model.attention_impl = impl
    validation.validate(config)
  if jax.default_backend() == "tpu":
    return
  config.model.attention_impl = "splash"
  with pytest.raises(fields.ConfigError, match="model.attention_impl 'splash' needs a TPU"):
    validation.validate(config)
  assert "model.attention_impl" in fields.RESUME_FREE


@pytest.mark.slow
def test_encoder_with_blockwise_attention_is_the_dense_encoder():
  """A tiny ViT encoder over 5 x 26 = 130 tokens with padding and regularised key masks:
  outputs and parameter gradients agree (one block of all 130 keys; several blocks, the
  last padded, are test_blockwise_equals_dense_values_and_gradients's)."""
  config = tiny_config()
  config.data.frames = 26 * 16
  grid = shapes.grid(config)
  n = grid[0] * grid[1]
  assert n == 130
  outputs = {}
  for impl in ("dense", "blockwise"):
    config.model.attention_impl = impl
    encoder = models.build_encoder(config, grid)
    if impl == "dense":
      params = nn.unbox(models.init_encoder(encoder, jax.random.key(0)))
      patches = jax.random.normal(jax.random.key(1), (2, n, 256))
      valid = jnp.arange(n)[None] < jnp.array([n, 100])[:, None]
      masks = attention.regularised_key_masks(jax.random.key(2), config.model.depth, 2, n,
                                              0.3, valid)

    def loss(params, encoder=encoder):
      out = encoder.apply({"params": params}, patches, None, valid, masks)
      return jnp.sum(jnp.tanh(out)), out
    outputs[impl] = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  (_, out), grads = outputs["dense"]
  (_, blk_out), blk_grads = outputs["blockwise"]
  np.testing.assert_allclose(blk_out, out, rtol=1e-5, atol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               blk_grads, grads)
