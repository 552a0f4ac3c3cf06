"""AudioMAE's local decoder block (models/swinv2.py) against a NumPy transcription of its
reference, timm's Swin V2 "cr" block as AudioMAE ships it (timm_patch/swin_transformer.py:
WindowMultiHeadAttention, SwinTransformerBlock): same parameters, same input, same output;
in this package's (frequency, time) layout and in AudioMAE's own (time, frequency) one;
one block and a shifted stack, plain and scanned, with remat, sharded; and the configs
that use it."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from jepa_jax import models
from jepa_jax.config import fields, upgrade, validation
from jepa_jax.models import attention, predictor, swinv2, vit
from jepa_jax.parallel import mesh as mesh_lib
from tests.tiny import load_config_module

TOL = dict(rtol=1e-5, atol=1e-5)


# ---- NumPy transcription of timm_patch/swin_transformer.py (torch layouts) ---------------

def ref_window_partition(x, ws):
  b, h, w, c = x.shape
  x = x.reshape(b, h // ws[0], ws[0], w // ws[1], ws[1], c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, ws[0], ws[1], c)


def ref_window_reverse(windows, ws, size):
  h, w = size
  b = int(windows.shape[0] / (h * w / ws[0] / ws[1]))
  x = windows.reshape(b, h // ws[0], w // ws[1], ws[0], ws[1], -1)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


def ref_relative_coordinates_log(ws):
  """_make_pair_wise_relative_positions."""
  coords = np.stack(np.meshgrid(np.arange(ws[0]), np.arange(ws[1]), indexing="ij")).reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :]
  rel = rel.transpose(1, 2, 0).reshape(-1, 2).astype(np.float64)
  return np.sign(rel) * np.log(1.0 + np.abs(rel))


def ref_attn_mask(size, ws, shift, masked=-100.0):
  """SwinTransformerBlock._make_attention_mask: 0 / -100 (`masked`), or None without a
  shift."""
  if not any(shift):
    return None
  h, w = size
  img = np.zeros((1, h, w, 1))
  cnt = 0
  for hs in (slice(0, -ws[0]), slice(-ws[0], -shift[0]), slice(-shift[0], None)):
    for wsl in (slice(0, -ws[1]), slice(-ws[1], -shift[1]), slice(-shift[1], None)):
      img[:, hs, wsl, :] = cnt
      cnt += 1
  m = ref_window_partition(img, ws).reshape(-1, ws[0] * ws[1])
  diff = m[:, None, :] - m[:, :, None]
  return np.where(diff != 0, masked, 0.0)


def ref_linear(x, w, b):
  return x @ w.T + b


def ref_layer_norm(x, scale, bias, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * scale + bias


def ref_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def ref_window_attention(x, t, heads, ws, mask):
  """WindowMultiHeadAttention._forward_batch (eval mode: no dropout)."""
  bw, n, c = x.shape
  qkv = ref_linear(x, t["qkv_w"], t["qkv_b"]).reshape(bw, n, 3, heads, c // heads)
  q, k, v = qkv.transpose(2, 0, 3, 1, 4)
  denom = np.linalg.norm(q, axis=-1, keepdims=True) @ np.linalg.norm(k, axis=-1,
                                                                     keepdims=True).swapaxes(-2, -1)
  attn = q @ k.swapaxes(-2, -1) / np.maximum(denom, 1e-6)
  attn = attn / np.maximum(t["tau"], 0.01).reshape(1, heads, 1, 1)
  hidden = np.maximum(ref_linear(ref_relative_coordinates_log(ws), t["meta_fc1_w"],
                                 t["meta_fc1_b"]), 0.0)
  bias = ref_linear(hidden, t["meta_fc2_w"], t["meta_fc2_b"]).T.reshape(heads, n, n)
  attn = attn + bias[None]
  if mask is not None:
    nw = mask.shape[0]
    attn = (attn.reshape(bw // nw, nw, heads, n, n) + mask[None, :, None]).reshape(-1, heads, n, n)
  out = (ref_softmax(attn) @ v).transpose(0, 2, 1, 3).reshape(bw, n, -1)
  return ref_linear(out, t["proj_w"], t["proj_b"])


def ref_block(x, t, heads, size, ws, shift, masked=-100.0):
  """SwinTransformerBlock.forward on (B, H * W, C) tokens of an (H, W) grid, H-major;
  logits of keys from another region get `masked` added."""
  b, n, c = x.shape
  h, w = size
  y = np.roll(x.reshape(b, h, w, c), (-shift[0], -shift[1]), axis=(1, 2))
  y = ref_window_partition(y, ws).reshape(-1, ws[0] * ws[1], c)
  y = ref_window_attention(y, t, heads, ws, ref_attn_mask(size, ws, shift, masked))
  y = ref_window_reverse(y.reshape(-1, ws[0], ws[1], c), ws, size)
  y = np.roll(y, shift, axis=(1, 2)).reshape(b, n, c)
  x = x + ref_layer_norm(y, t["norm1_w"], t["norm1_b"])
  hid = ref_linear(x, t["fc1_w"], t["fc1_b"])
  hid = 0.5 * hid * (1.0 + erf(hid / np.sqrt(2.0)))  # nn.GELU (exact)
  return x + ref_layer_norm(ref_linear(hid, t["fc2_w"], t["fc2_b"]), t["norm2_w"],
                            t["norm2_b"])


def torch_layout(p, time_major: bool = False) -> dict:
  """Our SwinV2Block parameters as the reference's state dict (weights (out, in)). With
  `time_major`, for the reference run on AudioMAE's (time, frequency) grid: the meta
  MLP's two inputs are then (time, frequency) offsets, its first kernel's rows swapped."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  a = p["attn"]
  c = a["qkv"]["kernel"].shape[0]
  meta_fc1 = a["meta_mlp"]["fc1"]["kernel"]
  return dict(
      qkv_w=a["qkv"]["kernel"].reshape(c, 3 * c).T, qkv_b=a["qkv"]["bias"].reshape(-1),
      proj_w=a["out"]["kernel"].reshape(c, c).T, proj_b=a["out"]["bias"], tau=a["tau"],
      meta_fc1_w=(meta_fc1[::-1] if time_major else meta_fc1).T,
      meta_fc1_b=a["meta_mlp"]["fc1"]["bias"],
      meta_fc2_w=a["meta_mlp"]["fc2"]["kernel"].T, meta_fc2_b=a["meta_mlp"]["fc2"]["bias"],
      norm1_w=p["norm1"]["scale"], norm1_b=p["norm1"]["bias"],
      norm2_w=p["norm2"]["scale"], norm2_b=p["norm2"]["bias"],
      fc1_w=p["mlp"]["fc1"]["kernel"].T, fc1_b=p["mlp"]["fc1"]["bias"],
      fc2_w=p["mlp"]["fc2"]["kernel"].T, fc2_b=p["mlp"]["fc2"]["bias"])


# ---- helpers -----------------------------------------------------------------------------

HEADS, WIDTH, MLP = 4, 16, 32


def _randomised(params, seed: int, clamped: bool = False):
  """Every leaf moved off its initial value (biases, norms and the bias MLP's output
  matter), and tau spread over heads in [0.5, 1.5]; with `clamped`, head 0's below the
  0.01 clamp."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  params = jax.tree.unflatten(tree, leaves)

  def set_tau(path, x):
    if getattr(path[-1], "key", None) != "tau":
      return x
    tau = np.linspace(0.5, 1.5, x.shape[-1]).astype(np.float32)
    if clamped:
      tau[0] = 0.004  # clamped to 0.01: the sharpest softmax the reference allows
    return jnp.broadcast_to(tau, x.shape)
  return jax.tree_util.tree_map_with_path(set_tau, params)


def _tokens(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _block(windows):
  return swinv2.SwinV2Block(HEADS, MLP, windows=windows)


# ---- the block ---------------------------------------------------------------------------

def test_relative_coordinates_are_the_references():
  for ws in ((4, 4), (2, 4), (5, 2)):
    np.testing.assert_array_equal(swinv2.log_relative_coordinates(ws),
                                  ref_relative_coordinates_log(ws).astype(np.float32))
  table = swinv2.log_relative_coordinates((4, 4))
  assert table.shape == (256, 2)
  # Row q * 16 + k: query (0, 0), key (3, 1) -> offsets (-3, -1) -> -ln 4, -ln 2.
  np.testing.assert_allclose(table[0 * 16 + 13], [-np.log(4), -np.log(2)], rtol=1e-6)


def test_position_bias_is_the_meta_mlp_over_the_table():
  bias_mod = swinv2.RelativePositionBias(HEADS, (4, 4))
  params = _randomised(nn.unbox(bias_mod.init(jax.random.key(0)))["params"], 1)
  got = np.asarray(bias_mod.apply({"params": params}))
  p = jax.tree.map(np.asarray, params)
  hidden = np.maximum(ref_relative_coordinates_log((4, 4)) @ p["fc1"]["kernel"]
                      + p["fc1"]["bias"], 0.0)
  want = (hidden @ p["fc2"]["kernel"] + p["fc2"]["bias"]).T.reshape(HEADS, 16, 16)
  assert got.shape == (HEADS, 16, 16)
  np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("grid, size, shift", [
    ((4, 8), (4, 4), (0, 2)),   # AudioMAE's shift (time 2, freq 0), on a small grid
    ((4, 8), (2, 4), (1, 2)),   # both axes shifted
    ((4, 8), (2, 2), (0, 0)),   # plain windows: no mask
])
def test_block_equals_the_reference(grid, size, shift):
  block = _block(attention.Windows(grid, size, shift))
  x = _tokens((2, grid[0] * grid[1], WIDTH))
  params = _randomised(nn.unbox(block.init(jax.random.key(0), x))["params"], 1)
  got = np.asarray(block.apply({"params": params}, x))
  want = ref_block(x.astype(np.float64), torch_layout(params), HEADS, grid, size, shift)
  np.testing.assert_allclose(got, want, **TOL)
  # tau at its clamp: logits span [-100, 100] + bias, where the reference's -100 for keys
  # of another region leaks; here such keys get no weight at all (models/swinv2.py), as
  # the reference with an infinite mask.
  params = _randomised(params, 2, clamped=True)
  got = np.asarray(block.apply({"params": params}, x))
  want = ref_block(x.astype(np.float64), torch_layout(params), HEADS, grid, size, shift,
                   masked=-np.inf)
  np.testing.assert_allclose(got, want, **TOL)


def test_block_on_audiomaes_time_major_grid_is_the_same_function():
  """AudioMAE runs its decoder on (time 64, frequency 8) time-major tokens, windows
  (4, 4) shifted (2, 0); here the grid is (frequency, time), frequency-major, shifted
  (0, 2). Same parameters (the meta MLP's inputs swapped), transposed tokens: the same
  outputs."""
  f, t = 4, 8
  block = _block(attention.Windows((f, t), (4, 4), (0, 2)))
  x = _tokens((2, f * t, WIDTH), seed=3)
  params = _randomised(nn.unbox(block.init(jax.random.key(2), x))["params"], 4)
  got = np.asarray(block.apply({"params": params}, x))

  def to_time_major(a):
    return a.reshape(2, f, t, -1).transpose(0, 2, 1, 3).reshape(2, t * f, -1)
  want = ref_block(to_time_major(x.astype(np.float64)), torch_layout(params, time_major=True),
                   HEADS, (t, f), (4, 4), (2, 0))
  np.testing.assert_allclose(to_time_major(got), want, **TOL)


def test_key_mask_switches_keys_off_and_gradients_are_finite():
  windows = attention.Windows((4, 8), (2, 4), (1, 2))
  block = _block(windows)
  x = _tokens((2, 32, WIDTH))
  params = _randomised(nn.unbox(block.init(jax.random.key(0), x))["params"], 1)
  key_mask = np.ones((2, 32), bool)
  key_mask[1, 5] = False
  out = block.apply({"params": params}, x, key_mask)
  x_moved = x.copy()
  x_moved[1, 5] = 50.0  # a switched-off key: only its own output may change
  moved = block.apply({"params": params}, x_moved, key_mask)
  others = np.arange(32) != 5
  np.testing.assert_allclose(moved[1, others], out[1, others], **TOL)
  np.testing.assert_allclose(moved[0], out[0], **TOL)
  # A zero token (a zero query / key norm) keeps the gradients finite.
  grads = jax.grad(lambda p, x: block.apply({"params": p}, x).sum(), argnums=(0, 1))(
      params, jnp.asarray(x).at[0, 0].set(0.0))
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_initial_values_and_logical_axis_names():
  block = _block(attention.Windows((4, 8), (4, 4), (0, 2)))
  boxed = block.init(jax.random.key(0), _tokens((1, 32, WIDTH)))["params"]
  attn = boxed["attn"]
  np.testing.assert_array_equal(attn["tau"].unbox(), np.ones(HEADS))   # tau = 1
  assert attn["tau"].names == ("heads",)
  assert attn["meta_mlp"]["fc1"]["kernel"].names == (None, None)
  assert attn["meta_mlp"]["fc2"]["kernel"].names == (None, "heads")
  assert attn["meta_mlp"]["fc1"]["kernel"].unbox().shape == (2, swinv2.META_HIDDEN)
  boxes = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(isinstance(b, nn.LogicallyPartitioned) and len(b.names) == b.unbox().ndim
             for b in boxes)


def test_block_needs_windows():
  with pytest.raises(ValueError, match="needs local attention windows"):
    _block(None).init(jax.random.key(0), _tokens((1, 8, WIDTH)))


# ---- the stack ---------------------------------------------------------------------------

def _stack(**kw):
  return vit.Transformer(depth=4, num_heads=HEADS, mlp_dim=MLP, block=swinv2.SwinV2Block,
                         windows=attention.Windows((4, 8), (2, 4), (1, 2)), **kw)


def test_shifted_stack_equals_the_reference_plain_scanned_and_rematerialised():
  x = _tokens((2, 32, WIDTH), seed=5)
  plain = _stack()
  params = _randomised(nn.unbox(plain.init(jax.random.key(0), x))["params"], 6)
  got = np.asarray(plain.apply({"params": params}, x))
  h = x.astype(np.float64)
  for i in range(4):  # unshifted on even blocks, shifted on odd ones
    h = ref_block(h, torch_layout(params[f"block_{i}"]), HEADS, (4, 8), (2, 4),
                  (1, 2) if i % 2 else (0, 0))
  norm = jax.tree.map(np.asarray, params["norm"])
  np.testing.assert_allclose(got, ref_layer_norm(h, norm["scale"], norm["bias"]), **TOL)

  stacked = vit.stack_layers(params, period=2)
  scan_init = jax.eval_shape(lambda: nn.unbox(_stack(scan=True).init(jax.random.key(0), x)))
  assert jax.tree.map(lambda a: a.shape, scan_init["params"]) == \
      jax.tree.map(lambda a: a.shape, stacked)
  loss = lambda m, p: jnp.sum(m.apply({"params": p}, x) ** 2)  # noqa: E731
  g_plain = jax.grad(loss, argnums=1)(plain, params)
  for kw in (dict(scan=True), dict(scan=True, remat="full"), dict(remat="dots_saveable")):
    module, p = _stack(**kw), (stacked if kw.get("scan") else params)
    np.testing.assert_allclose(module.apply({"params": p}, x), got, **TOL)
    g = jax.grad(loss, argnums=1)(module, p)
    g = vit.unstack_layers(g) if kw.get("scan") else g
    jax.tree.map(_close_at_leaf_scale, g, g_plain)


def _close_at_leaf_scale(a, b):
  """Scanned or rematerialised, the backward pass sums in another order: float32's error
  then scales with a leaf's largest gradients, not with each entry (on an AVX2 CPU one
  entry of 0.0123 beside entries of 16 differed by 1.1e-5)."""
  b = np.asarray(b)
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=max(1e-5, 2e-6 * float(np.abs(b).max())))


def test_sharded_stack_computes_what_one_device_computes():
  """On a data x model mesh (heads, the bias MLP's output and tau split over 'model')."""
  x = _tokens((4, 32, WIDTH), seed=7)
  module = _stack(scan=True)
  boxed = module.init(jax.random.key(0), x)
  params = _randomised(nn.unbox(boxed)["params"], 8)
  want = np.asarray(module.apply({"params": params}, x))
  config = fields.base_config("mae", "ajepa", 64)
  config.mesh.update(data=4, fsdp=1, model=2)
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:8])
  rules = mesh_lib.rules(config)
  shardings = mesh_lib.state_shardings(jax.eval_shape(lambda: boxed)["params"], mesh, rules)
  assert tuple(shardings["layers"]["block_0"]["attn"]["tau"].spec) == (None, "model")
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    got = jax.jit(lambda p, x: module.apply({"params": p}, x))(
        jax.device_put(params, shardings), x)
  np.testing.assert_allclose(np.asarray(got), want, **TOL)


# ---- configs -----------------------------------------------------------------------------

SWINV2_VARIANTS = [("ajepa", None), ("ajepa", "demo"), ("ajepa", "sets=4"),
                   ("ajepa", "size=vit_l"), ("audiomae", None), ("audiomae", "demo"),
                   ("audiomae", "lines"), ("audiomae", "size=vit_s")]


@pytest.mark.parametrize("recipe, variant", SWINV2_VARIANTS)
def test_ajepa_and_audiomae_use_the_swinv2_block(recipe, variant):
  config = load_config_module(recipe).get_config(variant)
  section = "predictor" if recipe == "ajepa" else "decoder"
  assert config[section].block == "swinv2" and config[section].attention == "local"
  validation.validate(config)


@pytest.mark.parametrize("recipe, section", [("ajepa", "predictor"), ("audiomae", "decoder")])
def test_global_variants_keep_the_prenorm_block(recipe, section):
  """AudioMAE's global decoder (decoder_mode=0) is timm's pre-norm Block."""
  config = load_config_module(recipe).get_config("global")
  assert config[section].block == "prenorm"
  validation.validate(config)


def test_other_recipes_keep_the_prenorm_block():
  assert load_config_module("audio_jepa").get_config("demo").predictor.block == "prenorm"
  assert load_config_module("dasheng").get_config().decoder.block == "prenorm"


def test_demo_predictor_is_built_with_the_swinv2_block():
  config = load_config_module("ajepa").get_config("demo")
  grid = (8, 8)
  head = models.build_predictor(config, grid)
  assert head.block == "swinv2" and predictor.BLOCKS[head.block] is swinv2.SwinV2Block
  n = 64
  args = (jax.ShapeDtypeStruct((1, n, config.model.width), jnp.float32),
          jax.ShapeDtypeStruct((1, n), jnp.int32), jax.ShapeDtypeStruct((1, n), jnp.bool_),
          jax.ShapeDtypeStruct((1, n), jnp.int32), jax.ShapeDtypeStruct((1, n), jnp.bool_))
  shapes = jax.eval_shape(lambda *a: nn.unbox(head.init(jax.random.key(0), *a)), *args)
  block = shapes["params"]["transformer"]["block_1"]
  assert block["attn"]["tau"].shape == (config.predictor.num_heads,)
  assert block["attn"]["meta_mlp"]["fc2"]["kernel"].shape == (swinv2.META_HIDDEN,
                                                              config.predictor.num_heads)


def test_bad_block_values_are_config_errors():
  config = load_config_module("ajepa").get_config("demo")
  config.predictor.block = "postnorm"
  with pytest.raises(fields.ConfigError, match="predictor.block must be one of"):
    validation.validate(config)
  config = load_config_module("audiomae").get_config("global")
  config.decoder.block = "swinv2"
  with pytest.raises(fields.ConfigError, match="needs decoder.attention 'local'"):
    validation.validate(config)


def test_saved_configs_without_the_field_upgrade_to_the_prenorm_block():
  current = fields.to_dict(load_config_module("ajepa").get_config())
  saved = fields.to_dict(load_config_module("ajepa").get_config())
  del saved["predictor"]["block"]
  old = upgrade.upgrade(saved)
  assert old["predictor"]["block"] == "prenorm" and "decoder" not in old
  # A run saved before the field resumes only with the block it trained ...
  assert fields.resume_differences(old, current) == [
      "predictor.block: 'prenorm' in the workdir, 'swinv2' now"]
  current["predictor"]["block"] = "prenorm"
  assert fields.resume_differences(old, current) == []
  mae = fields.to_dict(load_config_module("audiomae").get_config())
  del mae["decoder"]["block"]
  assert upgrade.upgrade(mae)["decoder"]["block"] == "prenorm"
