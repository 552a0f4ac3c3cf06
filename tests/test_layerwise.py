"""Per-layer learning-rate factors: BEiT layer numbering, layer-wise decay and frozen
layers, for plain and scanned (stacked) parameters, through make_optimizer."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jepa_jax.config import fields, upgrade, validation
from jepa_jax.models import vit
from jepa_jax.optim import layerwise, optimizer
from tests.tiny import tiny_config

DEPTH = 4


def _random_like(abstract, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape), s.dtype), abstract)


def _encoder_params(seed=0):
  """Plain parameters of a 4-block encoder (random values, flax's shapes)."""
  enc = vit.Encoder(grid=(2, 2), patch_shape=(2, 2), width=8, depth=DEPTH, num_heads=2,
                    mlp_dim=16, positions="learned")
  abstract = jax.eval_shape(lambda: nn.unbox(enc.init(jax.random.key(0), jnp.ones((1, 4, 4)))))
  return _random_like(abstract["params"], seed)


def _train_params(seed=0):
  return {"encoder": _encoder_params(seed), "head": {"kernel": jnp.ones((8, 3)),
                                                     "bias": jnp.zeros(3)}}


def _ids(tree):
  return jax.tree.map(lambda i: np.asarray(i).tolist(), tree)


def test_layer_ids_follow_beit_numbering_in_both_layouts():
  params = _train_params()
  ids, depth = layerwise.layer_ids(params, "encoder")
  assert depth == DEPTH
  enc = _ids(ids["encoder"])
  assert enc["patch_embed"] == {"kernel": 0, "bias": 0}
  assert enc["positions"] == {"freq": 0, "time": 0}
  for i in range(DEPTH):
    assert set(jax.tree.leaves(enc["transformer"][f"block_{i}"])) == {i + 1}
  assert enc["transformer"]["norm"] == {"scale": 5, "bias": 5}
  assert _ids(ids["head"]) == {"kernel": 5, "bias": 5}  # outside the encoder: top

  stacked, depth = layerwise.layer_ids(vit.stack_layers(params), "encoder")
  assert depth == DEPTH
  assert _ids(stacked["encoder"]["transformer"]["layers"]["block_0"]["mlp"]["fc1"]) == {
      "kernel": [1, 2, 3, 4], "bias": [1, 2, 3, 4]}
  # Pairs (shifted windows): entry i of block_j is block 2 i + j.
  pairs, depth = layerwise.layer_ids(vit.stack_layers(params["encoder"], period=2), None)
  assert depth == DEPTH
  assert _ids(pairs["transformer"]["layers"]["block_0"]["norm1"]["scale"]) == [1, 3]
  assert _ids(pairs["transformer"]["layers"]["block_1"]["norm1"]["scale"]) == [2, 4]
  assert _ids(pairs["patch_embed"]["kernel"]) == 0


def test_layer_ids_need_an_encoder():
  with pytest.raises(ValueError, match=r"'transformer' inside params\['encoder'\]"):
    layerwise.layer_ids({"decoder": {"kernel": jnp.ones(2)}}, "encoder")


def test_layer_factor_is_decay_to_the_distance_from_the_top_and_zero_when_frozen():
  ids = np.arange(14)  # ViT-B: embedding 0, blocks 1..12, final norm 13
  np.testing.assert_allclose(layerwise.layer_factor(0.75)(ids, 12), 0.75 ** (13 - ids))
  assert layerwise.layer_factor(0.75)(np.asarray(0), 12) == pytest.approx(0.75 ** 13)
  assert layerwise.layer_factor(0.75)(np.asarray(12), 12) == pytest.approx(0.75)
  assert layerwise.layer_factor(0.75)(np.asarray(13), 12) == 1.0
  # uaMix: embedding and the bottom half of the blocks frozen, decay 0.65 above.
  factors = layerwise.layer_factor(0.65, frozen_layers=7)(ids, 12)
  np.testing.assert_array_equal(factors[:7], 0.0)
  np.testing.assert_allclose(factors[7:], [0.65 ** 6, 0.65 ** 5, 0.65 ** 4, 0.65 ** 3,
                                           0.65 ** 2, 0.65, 1.0])
  np.testing.assert_array_equal(layerwise.layer_factor()(ids, 12), np.ones(14))


def _optim(**kw):
  c = ml_collections.ConfigDict(dict(base_lr=0.1, b1=0.9, b2=0.95, eps=1e-8,
                                     weight_decay=0.05, clip_norm=0.0, end_lr_ratio=0.0,
                                     layer_decay=1.0, frozen_layers=0))
  c.update(kw)
  return c


def _run(optim_config, params, steps=3, grads_fn=None, scan=False):
  """`steps` optimizer steps on random gradients (the same in either layout), the
  parameters stacked when `scan`; (final params, last updates), in the plain layout."""
  layout = vit.stack_layers if scan else lambda tree: tree
  tx, _ = optimizer.make_optimizer(optim_config, None, 256, 100, 0, None)
  params = layout(params)
  state = tx.init(params)
  for step in range(steps):
    grads = _random_like(vit.unstack_layers(params), 10 + step)
    if grads_fn is not None:
      grads = grads_fn(grads)
    updates, state = tx.update(layout(grads), state, params)
    params = optax.apply_updates(params, updates)
  return vit.unstack_layers(params), vit.unstack_layers(updates)


def _frozen_part(tree):
  """Layers 0..2 of the encoder (embedding, blocks 1 and 2) in the plain layout."""
  enc = tree["encoder"]
  return {"patch_embed": enc["patch_embed"], "positions": enc["positions"],
          "block_0": enc["transformer"]["block_0"], "block_1": enc["transformer"]["block_1"]}


@pytest.mark.slow
@pytest.mark.parametrize("scan", [False, True])
def test_frozen_layers_stay_bitwise_unchanged_while_the_rest_moves(scan):
  params = _train_params()
  end, _ = _run(_optim(frozen_layers=3, clip_norm=1.0), params, scan=scan)
  jax.tree.map(np.testing.assert_array_equal, _frozen_part(end), _frozen_part(params))
  t_end, t_start = end["encoder"]["transformer"], params["encoder"]["transformer"]
  for after, before in ((t_end["block_2"], t_start["block_2"]), (t_end["block_3"],
                        t_start["block_3"]), (t_end["norm"], t_start["norm"]),
                        (end["head"], params["head"])):
    assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after),
                                                        jax.tree.leaves(before)))
  # Without freezing the same steps do move the bottom layers (weight decay alone would).
  free, _ = _run(_optim(clip_norm=1.0), params, scan=scan)
  assert not np.array_equal(free["encoder"]["patch_embed"]["kernel"],
                            params["encoder"]["patch_embed"]["kernel"])


def test_scanned_and_plain_layouts_get_the_same_updates():
  params = _train_params()
  config = _optim(layer_decay=0.75, frozen_layers=2)
  end, plain = _run(config, params)
  end_scanned, scanned = _run(config, params, scan=True)
  jax.tree.map(np.testing.assert_array_equal, scanned, plain)
  jax.tree.map(np.testing.assert_array_equal, end_scanned, end)


@pytest.mark.parametrize("scan", [False, True])
def test_layer_decay_scales_each_layers_adamw_update(scan):
  params = _train_params()
  # One step from the same parameters (later steps start from different ones).
  _, plain = _run(_optim(), params, steps=1, scan=scan)
  _, decayed = _run(_optim(layer_decay=0.5), params, steps=1, scan=scan)
  ids, _ = layerwise.layer_ids(params, "encoder")
  # Layer i's update is 0.5 ** (L + 1 - i) times the plain AdamW update (weight decay too).
  jax.tree.map(lambda d, p, i: np.testing.assert_allclose(
      d, p * 0.5 ** (DEPTH + 1 - i), rtol=1e-6), decayed, plain, ids)
  np.testing.assert_allclose(decayed["encoder"]["patch_embed"]["kernel"],
                             plain["encoder"]["patch_embed"]["kernel"] / 32, rtol=1e-6)


def test_frozen_gradients_do_not_count_in_clipping():
  params = _train_params()
  zero_bottom = lambda g: {**g, "encoder": {  # noqa: E731
      **g["encoder"], "patch_embed": jax.tree.map(jnp.zeros_like, g["encoder"]["patch_embed"]),
      "positions": jax.tree.map(jnp.zeros_like, g["encoder"]["positions"])}}
  _, frozen = _run(_optim(frozen_layers=1, clip_norm=0.5), params, steps=1)
  _, reference = _run(_optim(clip_norm=0.5), params, steps=1, grads_fn=zero_bottom)
  jax.tree.map(np.testing.assert_array_equal, frozen["encoder"]["transformer"],
               reference["encoder"]["transformer"])
  jax.tree.map(np.testing.assert_array_equal, frozen["head"], reference["head"])


def test_defaults_leave_the_chain_as_it_was():
  params = _train_params()
  config = _optim()
  legacy = _optim()
  del legacy["layer_decay"], legacy["frozen_layers"]  # configs saved before the fields
  legacy = ml_collections.ConfigDict(upgrade.upgrade({"optim": legacy.to_dict()})["optim"])
  _, updates = _run(config, params)
  _, legacy_updates = _run(legacy, params)
  tx, _ = optimizer.make_optimizer(config, None, 256, 100, 0, None)
  assert len(tx.init(params)) == 1  # AdamW alone: no layer-wise transformation added
  jax.tree.map(np.testing.assert_array_equal, updates, legacy_updates)
  assert layerwise.transformations(1.0, 0) == ([], [])


def test_a_frozen_layer_ignores_non_finite_gradients():
  params = _train_params()
  nan_bottom = lambda g: {**g, "encoder": {  # noqa: E731
      **g["encoder"], "patch_embed": jax.tree.map(lambda x: x * jnp.nan,
                                                  g["encoder"]["patch_embed"])}}
  end, _ = _run(_optim(frozen_layers=1), params, grads_fn=nan_bottom)
  jax.tree.map(np.testing.assert_array_equal, end["encoder"]["patch_embed"],
               params["encoder"]["patch_embed"])


def test_config_validation_of_layer_decay_and_frozen_layers():
  c = tiny_config()  # depth 1: layers 0, 1 and the final norm 2
  assert (c.optim.layer_decay, c.optim.frozen_layers) == (1.0, 0)
  c.optim.update(layer_decay=0.65, frozen_layers=3)
  validation.validate(c)
  c.optim.update(layer_decay=0.0, frozen_layers=4)
  with pytest.raises(fields.ConfigError) as err:
    validation.validate(c)
  assert "optim.layer_decay must be in (0, 1]" in str(err.value)
  assert "optim.frozen_layers must be an integer in [0, 3]" in str(err.value)
