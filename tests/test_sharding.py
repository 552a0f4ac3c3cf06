"""Sharded training on the 8 simulated devices: data-parallel, FSDP and data x model
meshes compute what one device computes; FSDP keeps an eighth of the train state per
device; checkpoints move between meshes; large replicated leaves are found at start-up."""
import dataclasses
import functools
import types

import jax
import ml_collections
import numpy as np
import pytest

from jepa_jax import objectives
from jepa_jax.config import fields, validation
from jepa_jax.objectives import initial
from jepa_jax.optim import optimizer
from jepa_jax.parallel import memory
from jepa_jax.parallel import mesh as mesh_lib
from jepa_jax.training import checkpoint, datasets, loop, update
from tests.tiny import load_config_module, tiny_config

# name: (mesh sizes, devices). The tiny widths (32 and 16) and heads (2) divide these axes.
MESHES = {
    "one": (dict(data=1, fsdp=1, model=1), 1),
    "data": (dict(data=8, fsdp=1, model=1), 8),
    "fsdp": (dict(data=1, fsdp=8, model=1), 8),
    "data_model": (dict(data=4, fsdp=1, model=2), 8),
    "fsdp2": (dict(data=1, fsdp=2, model=1), 2),
}
STEPS = 3
# Sums run in another order on each layout. Adam turns the rounding noise of gradients that
# are zero in exact arithmetic (the key bias of attention) into updates of up to the
# learning rate (about 1e-4 here), hence the absolute tolerance.
TOLERANCE = dict(rtol=1e-4, atol=1e-5)


@dataclasses.dataclass
class Setup:
  dataset: object  # the Grain training dataset of the tiny corpus
  compiled: update.CompiledStep


def _mesh(name: str) -> jax.sharding.Mesh:
  sizes, count = MESHES[name]
  return mesh_lib.make_mesh(ml_collections.ConfigDict(sizes), jax.devices()[:count])


@functools.cache
def _setup(mesh_name: str) -> Setup:
  """The tiny Audio-JEPA's train step compiled on one of MESHES, as `loop.train` builds it
  (each compile costs about 15 s of CPU)."""
  config = tiny_config()
  config.mesh.update(MESHES[mesh_name][0])
  data = datasets.resolve(config)
  total, warmup = update.schedule_steps(config, data.num_examples)
  objective = objectives.build(config, total)
  tx, schedules = optimizer.make_optimizer(config.optim, config.get("ema"),
                                           config.train.batch_size, total, warmup,
                                           objective.ema_subtree)
  compiled = update.compile_step(config, objective, tx, schedules, _mesh(mesh_name),
                                 data.metadata["frontend"]["n_mels"], monitors=False)
  return Setup(datasets.train_dataset(config, data), compiled)


def _run(setup: Setup, state, iterator, steps: int = STEPS):
  """`steps` train steps on the iterator's batches: (state, losses)."""
  losses = []
  for _ in range(steps):
    batch = {k: jax.device_put(np.asarray(v), setup.compiled.batch_sharding)
             for k, v in next(iterator).items()}
    state, metrics = setup.compiled.step(state, batch)
    losses.append(float(metrics["loss"]))
  return state, losses


@functools.cache
def _trained(mesh_name: str):
  """(state, losses) after STEPS steps from the initial state."""
  setup = _setup(mesh_name)
  return _run(setup, setup.compiled.initial_state(), iter(setup.dataset))


def _first_device_fraction(tree) -> float:
  """The share of the tree's bytes that the mesh's first device holds."""
  leaves = jax.tree.leaves(tree)
  device = leaves[0].sharding.mesh.devices.flat[0]
  held = sum(s.data.nbytes for x in leaves for s in x.addressable_shards if s.device == device)
  return held / sum(x.nbytes for x in leaves)


def _assert_close(actual, expected):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOLERANCE),
               jax.device_get(actual), jax.device_get(expected))


# The most of the parameters' bytes one device may hold where the mesh splits them.
SPLIT_BOUND = {"fsdp": 0.2, "data_model": 0.8}


@pytest.mark.slow
@pytest.mark.parametrize("mesh_name", ["data", "fsdp", "data_model"])
def test_sharded_steps_match_one_device(mesh_name):
  state, losses = _trained(mesh_name)
  if mesh_name in SPLIT_BOUND:  # the layout really differs from one device's
    assert _first_device_fraction(state["params"]) < SPLIT_BOUND[mesh_name]
  reference_state, reference_losses = _trained("one")
  np.testing.assert_allclose(losses, reference_losses, **TOLERANCE)
  _assert_close(state["params"], reference_state["params"])


def test_fsdp_holds_an_eighth_of_parameters_and_optimizer_state_per_device():
  state, _ = _trained("fsdp")
  held = {"params": state["params"], "opt_state": state["opt_state"]}
  # What stays whole is small: step counters, biases split on the (size 1) model axis.
  assert all(x.nbytes <= 1024 for x in jax.tree.leaves(held) if x.sharding.is_fully_replicated)
  assert 1 / 8 <= _first_device_fraction(held) < 0.15


def _abstract_state(config, mesh):
  """The boxed abstract train state of a config and its shardings on `mesh` (no compile)."""
  objective = objectives.build(config)
  tx, _ = optimizer.make_optimizer(config.optim, config.get("ema"), config.train.batch_size, 10, 1,
                                   objective.ema_subtree)
  boxed = jax.eval_shape(functools.partial(update.init_state, objective, tx),
                         initial.rngs(config)[0])
  shardings = mesh_lib.state_shardings(boxed, mesh, mesh_lib.rules(config))
  return mesh_lib.strip_boxes(boxed), shardings


def _values(state):
  return jax.tree.map(np.asarray, jax.device_get(state))


def test_checkpoint_from_fsdp_restores_on_two_devices_and_one_and_continues(tmp_path):
  source = _setup("fsdp")
  iterator = iter(source.dataset)
  state, _ = _run(source, source.compiled.initial_state(), iterator)
  ckpt = checkpoint.Checkpointer(tmp_path, keep=2)
  ckpt.save(STEPS, state, checkpoint.DataPosition(STEPS, tiny_config().train.batch_size))
  ckpt.wait()
  saved = _values(state)
  reference, reference_losses = _run(source, state, iterator)  # uninterrupted

  two = _mesh("fsdp2")
  on_two, _ = ckpt.restore(STEPS, checkpoint.abstract_with_shardings(
      *_abstract_state(tiny_config(), two)))
  assert {d for x in jax.tree.leaves(on_two) for d in x.sharding.device_set} == set(
      two.devices.flat)
  assert _first_device_fraction(on_two["params"]) < 0.6
  jax.tree.map(np.testing.assert_array_equal, _values(on_two), saved)

  one = _setup("one")
  on_one, position = ckpt.restore(STEPS, one.compiled.abstract_state)
  ckpt.close()
  resumed_iterator = iter(datasets.train_dataset(
      tiny_config(), datasets.resolve(tiny_config()), position.global_batches))
  jax.tree.map(np.testing.assert_array_equal, _values(on_one), saved)
  continued, losses = _run(one, on_one, resumed_iterator)  # from the restored data position
  np.testing.assert_allclose(losses, reference_losses, **TOLERANCE)
  _assert_close(continued["params"], reference["params"])


def _demo_fsdp(rules=None, recipe: str = "audio_jepa", variant: str = "demo"):
  """A demo-size recipe on an fsdp=8 mesh, with `rules` replacing the default ones."""
  config = load_config_module(recipe).get_config(variant)
  config.mesh.update(MESHES["fsdp"][0])
  if rules is not None:
    config.sharding_rules = rules
  mesh = mesh_lib.make_mesh(config.mesh)
  return (*_abstract_state(config, mesh), mesh)


@pytest.mark.parametrize("recipe, variant", [
    ("audio_jepa", "demo"), ("audiomae", "demo"), ("uamix", "stage1,demo")])
def test_default_rules_leave_nothing_large_replicated_under_fsdp(recipe, variant):
  state, shardings, mesh = _demo_fsdp(recipe=recipe, variant=variant)
  assert mesh_lib.replicated_leaves(state, shardings, mesh, min_mib=0.01) == []
  # Everything is replicated on purpose without an fsdp or model axis.
  data_mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(MESHES["data"][0]))
  replicated = jax.tree.map(lambda _: mesh_lib.replicated(data_mesh), shardings)
  assert mesh_lib.replicated_leaves(state, replicated, data_mesh, min_mib=0.0) == []


# The default rules without FSDP's: 'embed' maps to no mesh axis.
NO_FSDP_RULES = (("batch", ("data", "fsdp")), ("embed", None), ("mlp", "model"),
                 ("heads", "model"), ("kv", None), ("length", None), ("patch", None))


def test_a_kernel_left_replicated_under_fsdp_is_reported(capsys):
  state, shardings, mesh = _demo_fsdp(NO_FSDP_RULES)
  found = {x.path: x for x in mesh_lib.replicated_leaves(state, shardings, mesh, min_mib=0.5)}
  fc1 = "params/encoder/transformer/block_0/mlp/fc1/kernel"
  assert found[fc1].shape == (192, 768) and found[fc1].mib == pytest.approx(0.5625)
  copies = [path for path in found if path.startswith("opt_state/") and path.endswith(
      fc1.removeprefix("params"))]
  assert len(copies) == 2  # Adam's moments
  assert all(x.mib > 0.5 for x in found.values())
  assert not any("norm" in path or path.endswith("bias") for path in found)

  check = ml_collections.ConfigDict(dict(replicated_mib=0.5, fail=False))
  mesh_lib.check_replicated(check, state, shardings, mesh)
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == len(found)
  assert any(line.startswith(f"warning: {fc1} (192, 768) (0.6 MiB) is replicated") and
             "mesh data=1 fsdp=8 model=1" in line and "config.sharding_rules" in line
             for line in lines)
  check.fail = True
  with pytest.raises(fields.ConfigError, match=f"sharding_check: {len(found)} leaves.*"
                     r"replicated_mib=0.5 MiB.*fsdp=8.*sharding_rules.*fail=False"):
    mesh_lib.check_replicated(check, state, shardings, mesh)


def test_train_stops_at_start_up_when_the_check_fails(tmp_path, monkeypatch):
  config = tiny_config()
  config.mesh.update(MESHES["fsdp"][0])
  config.sharding_rules = NO_FSDP_RULES
  config.sharding_check.update(replicated_mib=0.01, fail=True)  # the 32 KiB patch kernel

  def uncompiled(config, objective, tx, schedules, mesh, n_mels, **_):
    """The step's abstract state and shardings alone (the check reads nothing else)."""
    state, shardings = _abstract_state(config, mesh)
    return types.SimpleNamespace(
        step=None, shardings=shardings,
        abstract_state=checkpoint.abstract_with_shardings(state, shardings))

  monkeypatch.setattr(update, "compile_step", uncompiled)
  monkeypatch.setattr(memory, "needed_bytes", lambda step: 0)  # nothing compiled to measure
  monkeypatch.setattr(memory, "temporary_bytes", lambda step: 0)
  with pytest.raises(fields.ConfigError, match="params/encoder/patch_embed/kernel"):
    loop.train(config, tmp_path)
  assert list(tmp_path.iterdir()) == []


def test_rules_and_the_check_may_change_when_a_run_resumes():
  """A checkpoint restores under any layout (see the checkpoint test above)."""
  current = tiny_config()
  current.sharding_rules = NO_FSDP_RULES
  current.sharding_check.fail = True
  assert fields.resume_differences(fields.to_dict(tiny_config()),
                                   fields.to_dict(current)) == []


def test_a_negative_threshold_is_a_config_error():
  config = tiny_config()
  config.sharding_check.replicated_mib = -1.0
  with pytest.raises(fields.ConfigError, match="sharding_check.replicated_mib must be >= 0"):
    validation.validate(config)


def test_make_mesh_on_a_subset_of_devices():
  mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1)),
                            jax.devices()[:2])
  assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "model": 1}
  assert mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))).size == 8
