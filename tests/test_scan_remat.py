"""Scanned and rematerialised transformer stacks: the same function as the plain stack,
parameter layout conversion, shifted-window pairs, remat memory, config fields."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jepa_jax import models, objectives
from jepa_jax.config import fields, shapes, upgrade, validation
from jepa_jax.models import attention, vit
from jepa_jax.parallel import mesh
from tests.tiny import load_config_module, tiny_config


def _abstract_params(init, *args):
  return jax.eval_shape(lambda *a: nn.unbox(init(jax.random.key(0), *a)), *args)


def _random_like(abstract, seed=0):
  """Random values in the shapes of `abstract` (compiling flax's initialisers would cost
  seconds; any values serve to compare two layouts)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape), s.dtype), abstract)


def _init(module, *args):
  return _random_like(_abstract_params(module.init, *args)["params"])


def _apply(module, params, *args):
  return jax.jit(lambda p, *a: module.apply({"params": p}, *a))(params, *args)


def _shapes(tree):
  return jax.tree.map(lambda x: x.shape, tree)


def _tiny_encoder(**kw):
  return vit.Encoder(grid=(2, 3), patch_shape=(4, 4), width=16, depth=4, num_heads=2,
                     mlp_dim=32, **kw)


def _tokens(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_scanned_layout_stacks_each_block_on_a_leading_layers_axis():
  scanned = _abstract_params(_tiny_encoder(scan=True).init, _tokens((1, 6, 16)))["params"]
  plain = _init(_tiny_encoder(), _tokens((1, 6, 16)))
  assert set(scanned["transformer"]) == {"layers", "norm"}
  assert set(scanned["transformer"]["layers"]) == {"block_0"}
  assert scanned["transformer"]["layers"]["block_0"]["mlp"]["fc1"]["kernel"].shape == (4, 16, 32)
  assert set(plain["transformer"]) == {"block_0", "block_1", "block_2", "block_3", "norm"}
  # stack_layers gives exactly the scanned init's tree and shapes; unstack inverts it.
  assert _shapes(vit.stack_layers(plain)) == _shapes(scanned)
  back = vit.unstack_layers(vit.stack_layers(plain))
  assert jax.tree.structure(back) == jax.tree.structure(plain)
  jax.tree.map(np.testing.assert_array_equal, back, plain)
  # Entry i of the stack is block i; converting twice changes nothing.
  np.testing.assert_array_equal(
      vit.stack_layers(plain)["transformer"]["layers"]["block_0"]["attn"]["qkv"]["kernel"][2],
      plain["transformer"]["block_2"]["attn"]["qkv"]["kernel"])
  assert _shapes(vit.stack_layers(vit.stack_layers(plain))) == _shapes(scanned)
  assert _shapes(vit.unstack_layers(plain)) == _shapes(plain)


def test_scanned_params_carry_the_layers_logical_name_mapped_to_no_mesh_axis():
  boxed = jax.eval_shape(_tiny_encoder(scan=True).init, jax.random.key(0),
                         _tokens((1, 6, 16)))["params"]
  kernel = boxed["transformer"]["layers"]["block_0"]["mlp"]["fc1"]["kernel"]
  assert kernel.names == ("layers", "embed", "mlp")
  leaves = jax.tree.leaves(boxed["transformer"]["layers"],
                           is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(x.names[0] == "layers" and len(x.names) == x.value.ndim for x in leaves)
  rules = mesh.rules(fields.base_config("jepa", "audio_jepa", 208))
  assert nn.logical_to_mesh_axes(kernel.names, rules) == jax.sharding.PartitionSpec(
      None, "fsdp", "model")


def _output_and_gradient(module, *inputs):
  """jit (params, x) -> (module output, gradient of <output, fixed random probe>)."""
  def loss(p, x):
    out = module.apply({"params": p}, x, *inputs)
    return jnp.sum(out * _tokens(out.shape, 9)), out
  return jax.jit(lambda p, x: jax.grad(loss, has_aux=True)(p, x)[::-1])


def _assert_trees_close(a, b):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5), a, b)


def test_scanned_encoder_computes_the_unscanned_function():
  plain_enc, scan_enc = _tiny_encoder(), _tiny_encoder(scan=True)
  params = _init(plain_enc, _tokens((1, 6, 16)))
  stacked = vit.stack_layers(params)
  x, idx = _tokens((2, 4, 16), 1), jnp.array([[0, 2, 5, 1], [3, 4, 1, 0]])
  valid = jnp.array([[True, True, True, False], [True, True, False, False]])
  want, g_want = _output_and_gradient(plain_enc, idx, valid)(params, x)
  scanned = _output_and_gradient(scan_enc, idx, valid)
  got, g_got = scanned(stacked, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  _assert_trees_close(vit.unstack_layers(g_got), g_want)
  # The key mask still hides padding in the scanned stack.
  other, _ = scanned(stacked, x.at[1, 2:].set(50.0))
  np.testing.assert_allclose(other[1, :2], got[1, :2], rtol=1e-5, atol=1e-6)
  # Remat recomputes: same function, same gradients.
  out, g = _output_and_gradient(_tiny_encoder(scan=True, remat="full"), idx, valid)(stacked, x)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
  _assert_trees_close(vit.unstack_layers(g), g_want)


def _windowed(depth, shift=(0, 1), **kw):
  return vit.Transformer(depth=depth, num_heads=2, mlp_dim=32,
                         windows=attention.Windows((2, 4), (2, 2), shift), **kw)


def test_shifted_windows_scan_in_unshifted_shifted_pairs():
  assert vit.scan_period(attention.Windows((2, 4), (2, 2), (0, 1))) == 2
  assert vit.scan_period(attention.Windows((2, 4), (2, 2))) == 1
  assert vit.scan_period(None) == 1
  x = _tokens((2, 8, 16), 2)
  key_mask = jnp.array([[True] * 8, [True] * 5 + [False] * 3])
  plain = _windowed(4)
  params = _init(plain, x)
  stacked = vit.stack_layers(params, period=2)
  assert set(stacked["layers"]) == {"block_0", "block_1"}  # even and odd blocks
  assert stacked["layers"]["block_1"]["norm1"]["scale"].shape == (2, 16)
  scanned_init = _abstract_params(_windowed(4, scan=True).init, x)["params"]
  assert _shapes(stacked) == _shapes(scanned_init)
  np.testing.assert_array_equal(stacked["layers"]["block_1"]["mlp"]["fc2"]["bias"][1],
                                params["block_3"]["mlp"]["fc2"]["bias"])
  want, g_want = _output_and_gradient(plain, key_mask)(params, x)
  got, g_got = _output_and_gradient(_windowed(4, scan=True, remat="full"), key_mask)(stacked, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  _assert_trees_close(vit.unstack_layers(g_got), g_want)
  # The shift matters, so a stack that lost it would fail the comparison above.
  unshifted = _apply(_windowed(4, shift=(0, 0)), params, x, key_mask)
  assert not np.allclose(unshifted, want, atol=1e-3)
  jax.tree.map(np.testing.assert_array_equal, vit.unstack_layers(stacked), params)


def test_scanning_shifted_windows_needs_an_even_depth():
  x = _tokens((1, 8, 16))
  with pytest.raises(ValueError, match="depth must be even, got 3"):
    jax.eval_shape(_windowed(3, scan=True).init, jax.random.key(0), x)
  jax.eval_shape(_windowed(3, shift=(0, 0), scan=True).init, jax.random.key(0), x)  # any depth
  with pytest.raises(ValueError, match="groups of 2"):
    vit.stack_layers(_init(_windowed(3), x), period=2)


def test_unknown_remat_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown remat 'sometimes'; known: none, full"):
    jax.eval_shape(_tiny_encoder(remat="sometimes").init, jax.random.key(0),
                   _tokens((1, 6, 16)))


@pytest.mark.parametrize("scan", [False, True])
def test_remat_keeps_fewer_activations_for_the_backward_pass(scan):
  """Residuals held between the forward and the backward pass (params included):
  recomputing everything keeps least, keeping only matrix products keeps less than
  keeping everything."""
  x = jax.ShapeDtypeStruct((2, 6, 16), jnp.float32)
  sizes = {}
  for remat in vit.REMAT:
    stack = vit.Transformer(depth=4, num_heads=2, mlp_dim=32, scan=scan, remat=remat)
    params = jax.eval_shape(lambda r, x, s=stack: nn.unbox(s.init(r, x))["params"],
                            jax.random.key(0), x)
    backward = jax.eval_shape(  # the vjp function is a pytree of its residuals
        lambda p, x, s=stack: jax.vjp(lambda q: s.apply({"params": q}, x), p)[1], params, x)
    sizes[remat] = sum(leaf.size for leaf in jax.tree.leaves(backward))
  param_count = sum(p.size for p in jax.tree.leaves(params))
  assert param_count < sizes["full"] < sizes["dots_with_no_batch_dims_saveable"] \
      < sizes["dots_saveable"] < sizes["none"]


def _scan_everything(c):
  for section in ("model", "predictor"):
    c[section].update(scan_layers=True, remat="dots_saveable")
  return c


@pytest.mark.slow
def test_objective_loss_and_gradients_match_across_layouts():
  """A whole JEPA objective (encoder and predictor scanned, remat on) under jit: same
  loss and gradients as the plain one after converting the parameters."""
  plain_cfg = tiny_config()
  plain_cfg.model.depth = plain_cfg.predictor.depth = 2
  scan_cfg = _scan_everything(tiny_config())
  scan_cfg.model.depth = scan_cfg.predictor.depth = 2
  plain, scanned = objectives.build(plain_cfg), objectives.build(scan_cfg)
  params = _random_like(_abstract_params(plain.init))
  stacked = vit.stack_layers(params)
  assert _shapes(stacked) == _shapes(_abstract_params(scanned.init))
  mel = _tokens((4, 80, plain_cfg.data.frames), 4)
  batch = {"mel": mel, "id": jnp.arange(4)}
  aux = {"ema": params["encoder"], **plain.init_aux()}
  aux_scan = {"ema": stacked["encoder"], **scanned.init_aux()}
  rng, step = jax.random.key(5), jnp.int32(0)
  grad = lambda obj, p, a: jax.value_and_grad(obj.loss, has_aux=True)(  # noqa: E731
      p, a, batch, rng, step)
  (loss, _), g = jax.jit(lambda p, a: grad(plain, p, a))(params, aux)
  (loss_s, _), g_s = jax.jit(lambda p, a: grad(scanned, p, a))(stacked, aux_scan)
  np.testing.assert_allclose(loss_s, loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6),
               vit.unstack_layers(g_s), g)


def test_config_fields_default_off_and_reach_the_modules():
  c = tiny_config()
  assert (c.model.scan_layers, c.model.remat) == (False, "auto")
  assert (c.predictor.scan_layers, c.predictor.remat) == (False, "auto")
  enc = models.build_encoder(c, shapes.grid(c))  # 'auto' outside training: no remat
  assert (enc.scan, enc.remat) == (False, "none")
  _scan_everything(c)
  validation.validate(c)
  enc = models.build_encoder(c, shapes.grid(c))
  assert (enc.scan, enc.remat) == (True, "dots_saveable")
  pred = models.build_predictor(c, shapes.grid(c))
  assert (pred.scan, pred.remat) == (True, "dots_saveable")
  # A config saved before the fields existed builds the plain stack.
  saved = fields.to_dict(c)
  del saved["model"]["scan_layers"], saved["model"]["remat"]
  old = ml_collections.ConfigDict(upgrade.upgrade(saved))
  enc = models.build_encoder(old, shapes.grid(old))
  assert (enc.scan, enc.remat) == (False, "none")


def test_deep_sizes_turn_scanning_on():
  audiomae = load_config_module("audiomae")
  assert audiomae.get_config("size=vit_l").model.scan_layers is True
  assert audiomae.get_config("size=vit_b").model.scan_layers is False
  c = fields.base_config("jepa", "audio_jepa", 208)
  fields.set_encoder_size(c, "dasheng_1.2b")
  assert c.model.scan_layers is True


def test_validate_names_bad_remat_and_odd_scanned_shifted_window_depth():
  c = load_config_module("ajepa").get_config("demo")  # local windows shifted on odd blocks
  c.model.remat = "everything"
  c.predictor.update(scan_layers=True, depth=3)
  with pytest.raises(fields.ConfigError) as err:
    validation.validate(c)
  assert "model.remat must be 'auto' or one of" in str(err.value)
  assert "predictor.scan_layers scans shifted-window blocks" in str(err.value)
  assert "predictor.depth must be even, got 3" in str(err.value)
  c.model.remat, c.predictor.depth = "full", 4
  validation.validate(c)
  del c.model["scan_layers"]  # a config file may set any type where the default is absent
  c.model.scan_layers = 1
  with pytest.raises(fields.ConfigError, match="model.scan_layers must be True or False"):
    validation.validate(c)


def test_remat_may_change_on_resume_but_scanning_may_not():
  saved = fields.to_dict(tiny_config())
  now = tiny_config()
  now.model.remat = "full"
  now.predictor.remat = "dots_saveable"
  assert fields.resume_differences(saved, fields.to_dict(now)) == []
  now.model.scan_layers = True
  assert fields.resume_differences(saved, fields.to_dict(now)) == [
      "model.scan_layers: False in the workdir, True now"]
