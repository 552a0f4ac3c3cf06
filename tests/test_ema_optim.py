"""EMA target transformation, learning-rate schedule and weight-decay mask against
their formulas."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jepa_jax.optim import ema, optimizer


def test_ema_target_follows_the_explicit_formula():
  total = 10
  tau = ema.linear_momentum(0.5, 0.9, total)
  tx = optax.chain(optax.sgd(0.1), ema.ema_target(tau, "encoder"))
  params = {"encoder": {"w": jnp.array([1.0, -2.0])}, "predictor": {"w": jnp.array([3.0])}}
  state = tx.init(params)
  expected_target = np.array([1.0, -2.0])
  theta = np.array([1.0, -2.0])
  rng = np.random.default_rng(0)
  for t in range(6):
    g = {"encoder": {"w": jnp.asarray(rng.normal(size=2))}, "predictor": {"w": jnp.ones(1)}}
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    theta = theta - 0.1 * np.asarray(g["encoder"]["w"])
    tau_t = 0.5 + (0.9 - 0.5) * t / total
    expected_target = tau_t * expected_target + (1 - tau_t) * theta
    np.testing.assert_allclose(ema.find_target(state)["w"], expected_target, rtol=1e-6)
    np.testing.assert_allclose(params["encoder"]["w"], theta, rtol=1e-6)  # updates untouched
  assert set(ema.find_target(state)) == {"w"}  # only the encoder is tracked


def test_linear_momentum_endpoints_and_hold():
  tau = ema.linear_momentum(0.996, 1.0, 100)
  np.testing.assert_allclose([tau(0), tau(50), tau(100), tau(150)],
                             [0.996, 0.998, 1.0, 1.0], rtol=1e-7)


def test_find_target_is_none_without_ema():
  assert ema.find_target(optax.adam(1e-3).init({"w": jnp.zeros(2)})) is None


def _optim(**kw):
  c = ml_collections.ConfigDict(dict(base_lr=3e-4, b1=0.9, b2=0.95, eps=1e-8,
                                     weight_decay=0.05, clip_norm=3.0, end_lr_ratio=0.0,
                                     layer_decay=1.0, frozen_layers=0))
  c.update(kw)
  return c


def test_learning_rate_warmup_then_cosine():
  total, warmup, batch = 1000, 100, 2048
  lr = optimizer.learning_rate_schedule(_optim(), batch, total, warmup)
  peak = 3e-4 * 2048 / 256
  assert peak == pytest.approx(2.4e-3)
  for step in (0, 50, 100):
    assert float(lr(step)) == pytest.approx(peak * step / warmup, rel=1e-5)
  for step in (300, 550, 1000):
    cosine = 0.5 * peak * (1 + np.cos(np.pi * (step - warmup) / (total - warmup)))
    assert float(lr(step)) == pytest.approx(cosine, rel=1e-4, abs=1e-9)
  floor = optimizer.learning_rate_schedule(_optim(end_lr_ratio=0.1), batch, total, warmup)
  assert float(floor(total)) == pytest.approx(0.1 * peak, rel=1e-5)


def test_weight_decay_mask_only_kernels():
  params = {"encoder": {"patch_embed": {"kernel": 1, "bias": 2},
                        "transformer": {"block_0": {"norm1": {"scale": 3, "bias": 4},
                                                    "attn": {"qkv": {"kernel": 5, "bias": 6}}}}},
            "predictor": {"mask_token": 7, "embed": {"kernel": 8, "bias": 9}}}
  mask = optimizer.weight_decay_mask(params)
  assert mask == {"encoder": {"patch_embed": {"kernel": True, "bias": False},
                              "transformer": {"block_0": {"norm1": {"scale": False, "bias": False},
                                                          "attn": {"qkv": {"kernel": True,
                                                                           "bias": False}}}}},
                  "predictor": {"mask_token": False, "embed": {"kernel": True, "bias": False}}}


def test_adamw_decays_kernels_but_not_biases_norms_or_mask_token():
  tx, schedules = optimizer.make_optimizer(_optim(clip_norm=0.0), None, 256, 10, 0, None)
  assert set(schedules) == {"lr"}
  params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
            "mask_token": jnp.ones((1, 1, 2))}
  state = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  _, state = tx.update(zero, state, params)  # step 0; the step-1 update is checked
  updates, _ = tx.update(zero, state, params)
  lr1 = float(schedules["lr"](1))
  np.testing.assert_allclose(updates["dense"]["kernel"], -lr1 * 0.05 * np.ones((2, 2)), rtol=1e-5)
  np.testing.assert_array_equal(updates["dense"]["bias"], np.zeros(2))
  np.testing.assert_array_equal(updates["mask_token"], np.zeros((1, 1, 2)))


@pytest.mark.parametrize("scale", [0.1, 10.0])  # below and above the threshold
def test_clip_by_global_norm_equals_optax(scale):
  rng = np.random.default_rng(0)
  grads = {"a": jnp.asarray(rng.normal(size=(7, 5)) * scale, jnp.float32),
           "b": {"c": jnp.asarray(rng.normal(size=(11,)) * scale, jnp.float32)}}
  ours, reference = optimizer.clip_by_global_norm(2.0), optax.clip_by_global_norm(2.0)
  state = ours.init(grads)
  assert state == reference.init(grads)  # the same (empty) state: checkpoints keep their layout
  clipped, _ = jax.jit(ours.update)(grads, state)
  expected, _ = reference.update(grads, state)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=0), clipped, expected)
  norm = float(optax.tree.norm(clipped))
  assert norm == pytest.approx(min(2.0, float(optax.tree.norm(grads))), rel=1e-6)
