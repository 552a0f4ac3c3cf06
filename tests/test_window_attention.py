"""Attention against references: the dense formulation against NumPy's softmax and jax's
dot_product_attention (values and gradients, masks included); local (shifted-window)
attention against a dense masked reference built the Swin way."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax.models import attention, vit


def swin_allowed(grid, size, shift) -> np.ndarray:
  """(N, N) bool from Swin's own construction: label the shifted image with the
  3 x 3 slice regions, then allow pairs in the same window and the same region."""
  (gf, gt), (wf, wt), (sf, st) = grid, size, shift
  label = np.zeros(grid, int)
  f_slices = (slice(0, -wf), slice(-wf, -sf), slice(-sf, None)) if sf else (slice(None),)
  t_slices = (slice(0, -wt), slice(-wt, -st), slice(-st, None)) if st else (slice(None),)
  count = 0
  for fs in f_slices:
    for ts in t_slices:
      label[fs, ts] = count
      count += 1
  # Token (f, t) sits at shifted position ((f - sf) mod F, (t - st) mod T).
  f, t = np.meshgrid(np.arange(gf), np.arange(gt), indexing="ij")
  fs_, ts_ = ((f - sf) % gf).ravel(), ((t - st) % gt).ravel()
  window = (fs_ // wf) * (gt // wt) + ts_ // wt
  region = label[fs_, ts_]
  return (window[:, None] == window[None, :]) & (region[:, None] == region[None, :])


def dense_reference(params, x, allowed, num_heads):
  """Global attention written out in NumPy, keys outside `allowed` switched off."""
  p = jax.tree.map(np.asarray, params)
  b, n, width = x.shape
  qkv = np.einsum("bnc,cshd->bnshd", x, p["qkv"]["kernel"]) + p["qkv"]["bias"]
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(width // num_heads)
  allowed = np.broadcast_to(allowed, (b, n, n))  # (N, N) or, with a key mask, (B, N, N)
  logits = np.where(allowed[:, None], logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", weights, v)
  return np.einsum("bqhd,hdc->bqc", out, p["out"]["kernel"]) + p["out"]["bias"]


@pytest.mark.parametrize("grid,size,shift", [
    ((4, 8), (4, 4), (0, 2)),   # AudioMAE's (time 2, freq 0) shift, on a small grid
    ((4, 8), (2, 4), (1, 2)),   # both axes shifted
    ((4, 8), (2, 2), (0, 0)),   # plain windows
])
def test_windowed_attention_equals_dense_attention_restricted_to_swin_windows(grid, size, shift):
  windows = attention.Windows(grid, size, shift)
  attn = attention.Attention(num_heads=2, windows=windows)
  n = grid[0] * grid[1]
  x = np.random.default_rng(0).normal(size=(3, n, 8)).astype(np.float32)
  params = nn.unbox(attn.init(jax.random.key(0), x)["params"])
  # Random biases, so a mistake in the projections cannot hide behind zeros.
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(1), a.shape), params)
  out = attn.apply({"params": params}, x)
  ref = dense_reference(params, x.astype(np.float64), swin_allowed(grid, size, shift), 2)
  np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)


def _dependence(module, params, x, query):
  """(N,) bool: does output token `query` depend on input token j?"""
  jac = jax.jacobian(lambda y: module.apply({"params": params}, y)[0, query])(x)
  return np.abs(np.asarray(jac)).sum(axis=(0, 1, 3)) > 0


def test_tokens_that_wrapped_across_an_edge_never_attend_to_each_other():
  # Time axis 8, windows of 4, shift 2: after the cyclic shift, time columns 6, 7, 0, 1
  # share the last window, but 0 and 1 arrived there by wrapping around.
  grid, windows = (1, 8), attention.Windows((1, 8), (1, 4), (0, 2))
  attn = attention.Attention(num_heads=1, windows=windows)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 8, 4)), jnp.float32)
  params = nn.unbox(attn.init(jax.random.key(0), x)["params"])
  np.testing.assert_array_equal(_dependence(attn, params, x, 7),
                                [False, False, False, False, False, False, True, True])
  np.testing.assert_array_equal(_dependence(attn, params, x, 0),
                                [True, True, False, False, False, False, False, False])
  np.testing.assert_array_equal(_dependence(attn, params, x, 3),  # window 2..5
                                [False, False, True, True, True, True, False, False])
  assert grid == windows.grid


@pytest.mark.slow
def test_shift_applies_to_odd_blocks_so_two_blocks_cross_window_borders():
  windows = attention.Windows((1, 8), (1, 4), (0, 2))
  x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 8, 8)), jnp.float32)
  cases = [(1, 2, [True] * 4 + [False] * 4),  # one unshifted block: window 0..3 only
           (2, 2, [True] * 8),  # then window 2..5 mixes 0..3 with 4..7
           (2, 0, [True] * 4 + [False] * 4)]  # 0 wrapped: it only meets 1 in block 2
  for depth, query, expected in cases:
    model = vit.Transformer(depth=depth, num_heads=2, mlp_dim=16, windows=windows)
    params = nn.unbox(model.init(jax.random.key(0), x)["params"])
    np.testing.assert_array_equal(_dependence(model, params, x, query), expected)


def test_key_mask_hides_padding_inside_windows():
  windows = attention.Windows((2, 4), (2, 2), (1, 1))
  attn = attention.Attention(num_heads=2, windows=windows)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 8, 8)), jnp.float32)
  params = nn.unbox(attn.init(jax.random.key(0), x)["params"])
  valid = jnp.ones((2, 8), bool).at[:, 5].set(False)
  out = attn.apply({"params": params}, x, valid)
  out2 = attn.apply({"params": params}, x.at[:, 5].set(50.0), valid)
  keep = np.arange(8) != 5
  np.testing.assert_allclose(out[:, keep], out2[:, keep], atol=1e-5)


def test_partition_and_merge_are_inverse():
  windows = attention.Windows((4, 6), (2, 3), (1, 2))
  x = jnp.arange(2 * 24 * 3).reshape(2, 24, 3)
  parts = windows.partition(x)
  assert parts.shape == (2 * 4, 6, 3)
  np.testing.assert_array_equal(windows.merge(parts), x)


@pytest.mark.parametrize("size,shift,match", [
    ((3, 4), (0, 0), "does not tile the frequency axis"),
    ((4, 4), (0, 4), "must be in"),
    ((4, 4), (-1, 0), "must be in"),
])
def test_bad_windows_are_refused(size, shift, match):
  with pytest.raises(ValueError, match=match):
    attention.Windows((4, 8), size, shift)


def numpy_attention(q, k, v, mask):
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  scores = np.where(np.broadcast_to(mask, scores.shape), scores, -np.inf)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", weights, v)


@pytest.mark.parametrize("mask_shape", [(3, 1, 1, 9), (3, 2, 9, 9)])
def test_dense_attention_equals_softmax_attention_and_its_gradients(mask_shape):
  q, k, v = jax.random.normal(jax.random.key(0), (3, 3, 9, 2, 8))
  mask = jax.random.uniform(jax.random.key(1), mask_shape) > 0.4
  mask = mask.at[..., 0].set(True)  # every query keeps a key
  np.testing.assert_allclose(attention.dense_attention(q, k, v, mask),
                             numpy_attention(q, k, v, mask), rtol=1e-5, atol=1e-5)
  cotangent = jax.random.normal(jax.random.key(2), q.shape)
  grads = [jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, mask) * cotangent), argnums=(0, 1, 2))(
      q, k, v) for fn in (attention.dense_attention,
                          lambda q, k, v, m: jax.nn.dot_product_attention(
                              q, k, v, mask=m, implementation="xla"))]
  for dense, xla in zip(*grads):
    np.testing.assert_allclose(dense, xla, rtol=1e-4, atol=1e-5)


def test_dense_attention_keeps_the_dtype_and_a_query_without_keys_averages():
  q, k, v = jax.random.normal(jax.random.key(0), (3, 1, 4, 1, 8))
  assert attention.dense_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)),
                                   None).dtype == jnp.bfloat16
  none = jnp.zeros((1, 1, 4, 4), bool)
  np.testing.assert_allclose(attention.dense_attention(q, k, v, none),
                             jnp.broadcast_to(v.mean(1, keepdims=True), v.shape), rtol=1e-6)


# Any valid shift, not only window / 2 (issue 22): (grid, window, shift).
ANY_SHIFT = [
    ((4, 8), (4, 4), (0, 1)),
    ((4, 8), (4, 4), (0, 3)),
    ((4, 16), (4, 8), (0, 2)),
    ((8, 8), (4, 4), (2, 2)),
    ((4, 8), (4, 4), (0, 2)),   # the shipped A-JEPA / AudioMAE shift
    ((8, 12), (4, 4), (1, 3)),
    ((6, 9), (3, 3), (2, 1)),   # odd window: no shift is half of it
    ((4, 8), (2, 4), (1, 0)),
]


def brute_force_allowed(grid, size, shift) -> np.ndarray:
  """(N, N) bool, one (query, key) pair at a time: both in the same window of the grid
  cyclically shifted by -shift, and in the same Swin region there, the regions being the
  slices [0, -w), [-w, -s), [-s, end) of the SHIFTED positions along each axis."""
  (gf, gt), n = grid, grid[0] * grid[1]

  def shifted(token):  # token (f, t) sits at ((f - sf) mod F, (t - st) mod T) after the roll
    return ((token // gt - shift[0]) % gf, (token % gt - shift[1]) % gt)

  def region(p, g, w, s):
    return 0 if p < g - w else 1 if p < g - s else 2

  allowed = np.zeros((n, n), bool)
  for query in range(n):
    qf, qt = shifted(query)
    for key in range(n):
      kf, kt = shifted(key)
      same_window = (qf // size[0], qt // size[1]) == (kf // size[0], kt // size[1])
      same_region = ((region(qf, gf, size[0], shift[0]), region(qt, gt, size[1], shift[1]))
                     == (region(kf, gf, size[0], shift[0]), region(kt, gt, size[1], shift[1])))
      allowed[query, key] = same_window and same_region
  return allowed


def model_allowed(windows: attention.Windows) -> np.ndarray:
  """(N, N) bool: the (query, key) pairs that the windows' attention mask lets through."""
  n = windows.grid[0] * windows.grid[1]
  tokens = windows.partition(np.arange(n)[None])  # (windows, w) token in each window slot
  allowed = np.zeros((n, n), bool)
  for window_tokens, mask in zip(tokens, windows.region_mask):
    allowed[np.ix_(window_tokens, window_tokens)] = mask
  return allowed


@pytest.mark.parametrize("grid,size,shift", ANY_SHIFT)
def test_window_mask_allows_exactly_the_swin_pairs_for_any_shift(grid, size, shift):
  reference = brute_force_allowed(grid, size, shift)
  np.testing.assert_array_equal(reference, swin_allowed(grid, size, shift))
  allowed = model_allowed(attention.Windows(grid, size, shift))
  wrong = np.argwhere(allowed != reference)
  assert not len(wrong), f"{len(wrong)} wrong (query, key) pairs, e.g. {wrong[:4].tolist()}"


def _mask_before_issue_22(windows: attention.Windows) -> np.ndarray:
  """region_mask as built before issue 22: wrap labels on the original positions >= size
  - shift, then rolled; right for shifts of 0 and window / 2 only."""
  (gf, gt), (sf, st) = windows.grid, windows.shift
  f, t = np.meshgrid(np.arange(gf), np.arange(gt), indexing="ij")
  region = (f >= gf - sf) * 2 + (t >= gt - st)
  region = windows.partition(region.reshape(1, -1))
  return region[:, :, None] == region[:, None, :]


@pytest.mark.parametrize("grid,size,shift", [
    ((8, 64), (4, 4), (0, 2)),  # the shipped configs (128 mel bins, 1024 frames, 16 x 16)
    ((8, 64), (4, 4), (0, 0)),  # their unshifted even blocks
    ((8, 64), (4, 4), (2, 2)),
    ((8, 12), (2, 6), (1, 3)),
])
def test_half_window_shifts_keep_the_mask_they_had(grid, size, shift):
  # The mask is the only thing the fix touched, so an equal mask means equal outputs.
  windows = attention.Windows(grid, size, shift)
  np.testing.assert_array_equal(windows.region_mask, _mask_before_issue_22(windows))
  np.testing.assert_array_equal(model_allowed(windows), swin_allowed(grid, size, shift))


def test_the_old_mask_differs_for_other_shifts():
  # So that the test above would notice a change: (0, 1) on 4 x 4 windows is not the same.
  windows = attention.Windows((4, 8), (4, 4), (0, 1))
  assert (windows.region_mask != _mask_before_issue_22(windows)).sum() > 0


@pytest.mark.parametrize("grid,size,shift", ANY_SHIFT[:4])
def test_windowed_outputs_depend_only_on_the_swin_pairs(grid, size, shift):
  attn = attention.Attention(num_heads=1, windows=attention.Windows(grid, size, shift))
  x = jnp.asarray(np.random.default_rng(4).normal(size=(1, grid[0] * grid[1], 4)), jnp.float32)
  params = nn.unbox(attn.init(jax.random.key(0), x)["params"])
  jac = jax.jacobian(lambda y: attn.apply({"params": params}, y)[0])(x)  # (N, C, 1, N, C)
  depends = np.abs(np.asarray(jac)).sum(axis=(1, 2, 4)) > 0
  np.testing.assert_array_equal(depends, brute_force_allowed(grid, size, shift))


@pytest.mark.parametrize("grid,size,shift", ANY_SHIFT)
def test_windowed_attention_with_a_key_mask_equals_dense_attention_with_the_reference_mask(
    grid, size, shift):
  attn = attention.Attention(num_heads=2, windows=attention.Windows(grid, size, shift))
  n = grid[0] * grid[1]
  rng = np.random.default_rng(5)
  x = rng.normal(size=(3, n, 8)).astype(np.float32)
  params = nn.unbox(attn.init(jax.random.key(0), x)["params"])
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(1), a.shape), params)
  reference = brute_force_allowed(grid, size, shift)
  np.testing.assert_allclose(attn.apply({"params": params}, x),
                             dense_reference(params, x.astype(np.float64), reference, 2),
                             atol=2e-5, rtol=1e-4)
  # Masked tokens (padding, dropped keys) compose with the regions: keys off in both.
  valid = rng.uniform(size=(3, n)) > 0.3
  allowed = reference[None] & valid[:, None, :]
  out = np.asarray(attn.apply({"params": params}, x, jnp.asarray(valid)))
  with np.errstate(invalid="ignore"):  # NaN rows: queries with no key left
    ref = dense_reference(params, x.astype(np.float64), allowed, 2)
  keeps_a_key = allowed.any(-1)  # a query left with no key has no reference value
  assert keeps_a_key.mean() > 0.5
  np.testing.assert_allclose(out[keeps_a_key], ref[keeps_a_key], atol=2e-5, rtol=1e-4)
