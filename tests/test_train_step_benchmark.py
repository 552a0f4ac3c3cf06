"""The train-step benchmark's pieces (benchmarks/step_setup.py, torch_step.py) on tiny
configs: pass shapes, analytic FLOPs, token-count configs, the plain baseline, the
PyTorch step."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import step_parts, step_setup
from jepa_jax.config import fields, shapes
from tests.tiny import tiny_config, tiny_mae_config


def test_passes_of_jepa_and_mae_steps():
  # 5 x 4 = 20 tokens; unstructured: 12 targets (0.6), 8 context.
  passes = {p.name: p for p in step_setup.step_passes(tiny_config())}
  assert [(p.sequences, p.tokens, p.keys, p.trained) for p in passes.values()] == [
      (1, 8, 8, True), (1, 12, 12, False), (1, 20, 20, True)]
  assert passes["target"].module == "encoder" and passes["predictor"].width == 16
  mae = tiny_mae_config()  # AudioMAE demo masks 80 %; decoder windows of 5 x 2
  context, decoder = step_setup.step_passes(mae)
  assert (context.tokens, decoder.tokens, decoder.keys) == (4, 20, 10)


def test_pass_flops():
  p = step_setup.Pass("context", "encoder", sequences=2, tokens=10, keys=5, width=8, depth=3,
                      num_heads=2, mlp_dim=16, trained=True)
  params = 1000
  assert step_setup.pass_flops(p, params) == 2 * 3 * (2 * 1000 * 10 + 4 * 10 * 5 * 8 * 3)
  frozen = step_setup.pass_flops(step_setup.Pass(**{**p.__dict__, "trained": False}), params)
  assert frozen * 3 == step_setup.pass_flops(p, params)


@pytest.mark.parametrize("tokens, frontend, frames", [
    (65, "audio_jepa", 208), (100, "audio_jepa", 320), (200, "audio_jepa", 640),
    (512, "ajepa", 1024)])
def test_with_tokens(tokens, frontend, frames):
  c = step_setup.with_tokens(fields.load("configs/audio_jepa.py"), tokens)
  assert (c.data.frontend, c.data.frames) == (frontend, frames)
  assert math.prod(shapes.grid(c)) == tokens


def test_with_tokens_rejects_a_count_no_front_end_divides():
  with pytest.raises(fields.ConfigError, match="7 tokens per clip"):
    step_setup.with_tokens(tiny_config(), 7)


def test_plain_step_trains_the_encoder_and_predictor_only():
  plain = step_setup.plain_step(tiny_config())
  before = jax.tree.map(np.array, plain.params)  # a copy: the step donates params
  params, loss = plain.step(plain.params, plain.frozen, plain.inputs)
  assert np.isfinite(float(loss))
  assert set(params) == {"encoder", "predictor"}
  assert step_setup.count(params["encoder"]) == step_setup.count(plain.frozen)
  moved = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before, params)
  assert all(jax.tree.leaves(moved))  # every parameter gets a gradient


def tiny_latent_config():
  """Latent targets (the target pass on the whole grid), full-grid predictor."""
  c = tiny_config()
  c.jepa.target_domain = "latent"
  c.predictor.layout = "full_grid"
  return c


@pytest.mark.parametrize("make", [tiny_config, tiny_latent_config])
def test_torch_step_trains_and_moves_the_target(make):
  torch_step = pytest.importorskip("benchmarks.torch_step")
  step = torch_step.TorchStep(make(), batch=4, device="cpu")
  target = [p.detach().clone() for p in step.target.parameters()]
  losses = [step.step() for _ in range(2)]
  assert all(np.isfinite(losses))
  assert any(not np.allclose(a, b.detach()) for a, b in zip(target, step.target.parameters()))


def test_torch_step_says_what_it_does_not_model():
  torch_step = pytest.importorskip("benchmarks.torch_step")
  with pytest.raises(torch_step.Unsupported, match="local-window attention"):
    torch_step.TorchStep(tiny_mae_config(), batch=4, device="cpu")


@pytest.mark.parametrize("make, parts", [
    (tiny_config, {"masks", "context", "target", "predictor", "loss", "update", "step"}),
    (tiny_mae_config, {"masks", "context", "predictor", "loss", "update", "step"})])
def test_step_parts_measure_every_part(make, parts):
  """Every part is compiled, timed and counted; the step too. (Whether the parts' FLOPs
  add up to the step's needs one device: here the step is split over 8.)"""
  row, run_step = step_parts.profile_parts(make(), batch=8, steps=1)  # 8 devices
  assert set(row["parts"]) == parts
  ms = step_parts.interleaved_step_ms({"a": run_step}, rounds=2)["a"]
  assert ms > 0 and all(row["parts"][p]["ms"] > 0 for p in parts - {"step"})
  assert all(row["parts"][p]["gflop"] > 0 for p in parts - {"masks", "update"})
  assert all(row["parts"][p]["mib"] > 0 for p in parts)


def test_step_ratios_against_the_reference():
  rows = {name: {"parts": {"step": {"ms": ms, "gflop": gflop}}}
          for name, ms, gflop in (("ajepa", 300.0, 20.0), ("mae", 100.0, 8.0))}
  r = step_parts.ratios(rows, "mae")
  assert r["mae"] == {"time_ratio": 1.0, "flops_ratio": 1.0, "time_over_flops": 1.0}
  assert r["ajepa"]["time_ratio"] == 3.0 and r["ajepa"]["flops_ratio"] == 2.5
  assert r["ajepa"]["time_over_flops"] == pytest.approx(1.2)


def test_step_profile_parts_of_a_real_step():
  """Every op of a tiny JEPA step's trace is found in its HLO, and each part gets the ops
  it names: the QKV and MLP products, the attention core, AdamW's elementwise update."""
  from benchmarks import step_profile
  setup = step_setup.benchmark_step(tiny_config())
  state = setup.state

  def run():
    nonlocal state
    state, metrics = setup.compiled.step(state, setup.batch)
    jax.block_until_ready(metrics)

  run()
  events, step_s = step_profile.traced_events(run, 1)
  ops = step_profile.hlo_ops(setup.compiled.step.as_text())
  executed = {name for name, _ in events if name in ops}
  assert step_s > 0 and len(executed) > 20
  parts = step_profile.shares(events, ops)
  assert math.isclose(sum(p["share"] for p in parts.values()), 1.0)
  for part in ("projections and MLP GEMMs", "attention core", "other model ops",
               "update, loss, other"):
    assert parts[part]["matmul_ms"] + parts[part]["other_ms"] > 0, part
  assert parts["projections and MLP GEMMs"]["other_ms"] == 0  # products only, by definition
  assert parts["update, loss, other"]["other_ms"] > 0  # AdamW and the EMA, elementwise


@pytest.mark.parametrize("op_name, matmul, part", [
    ("jit(train_step)/transpose(jvp(Encoder))/transformer/block_3/attn/qkv/dot_general", True,
     "projections and MLP GEMMs"),
    ("jit(train_step)/jvp(Encoder)/transformer/block_3/attn/qkv/add", False, "other model ops"),
    ("jit(train_step)/jvp(Encoder)/transformer/block_3/attn/dot_general", True,
     "attention core"),
    ("jit(train_step)/Encoder/transformer/block_0/attn/exp", False, "attention core"),
    ("jit(train_step)/jvp(Predictor)/transformer/block_1/mlp/fc2/dot_general", True,
     "projections and MLP GEMMs"),
    ("jit(train_step)/jvp(Predictor)/transformer/block_1/mlp/erfc", False, "other model ops"),
    ("jit(train_step)/jvp(Encoder)/patch_embed/dot_general", True, "other model ops"),
    ("jit(train_step)/jvp(mask_sampling)/lt", False, "masks"),
    ("state['params']['encoder']['transformer']['block_1']['attn']['qkv']['kernel']", False,
     "parameter copies"),
    ("jit(train_step)/div", False, "update, loss, other"),
    ("", False, "update, loss, other")])
def test_step_profile_part_of(op_name, matmul, part):
  from benchmarks import step_profile
  assert step_profile.part_of(op_name, matmul) == part


def test_scoreless_attention_keeps_what_attention_keeps():
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 6, 3, 4)) for i in range(3))
  out = step_setup.scoreless_attention(q, k, v, None, None, "auto")
  np.testing.assert_allclose(out, q * (k * v).mean(1, keepdims=True), rtol=1e-6)
  grads = jax.grad(lambda *a: step_setup.scoreless_attention(*a, None, None, None).sum(),
                   argnums=(0, 1, 2))(q, k, v)
  assert all(float(jnp.abs(g).min()) > 0 for g in grads)  # q, k and v all reach the output


def test_peak_by_attention_of_a_step_whose_scores_count():
  """160 tokens of width 32 in 2 heads: the score matrices outweigh the activations, so
  dense (what auto is at 160 keys on CPU), which holds fewer of them than jax's xla path,
  peaks lower, and the stand-in holding none lower still."""
  c = tiny_config()
  c.data.frames = 512
  m = step_setup.peak_by_attention(c, ("xla", "auto"))
  p = m["peak_bytes"]
  assert p["scoreless"] < p["auto"] < p["xla"]
  assert m["score_share_bytes"] == p["xla"] - p["scoreless"]
  assert m["auto_removes_of_score_share"] == pytest.approx(
      (p["xla"] - p["auto"]) / (p["xla"] - p["scoreless"]))
