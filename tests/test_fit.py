"""The train step fitted to the devices' memory: micro_batches / remat 'auto' choose from
XLA's memory analysis, a step that cannot fit stops before training with one line."""
import types

import jax
import numpy as np
import pytest

from jepa_jax import main, objectives
from jepa_jax.config import fields, validation
from jepa_jax.optim import optimizer
from jepa_jax.parallel import memory
from jepa_jax.parallel import mesh as mesh_lib
from jepa_jax.training import fit, loop, update
from tests.tiny import ROOT, TINY_FLAGS, exported_params, tiny_config


def test_estimates_scale_the_activations_and_pick_the_fewest_that_fit():
  # 100 bytes of state and batch, 800 of activations at k = 1.
  assert [fit.estimated_bytes(900, 800, 1, k) for k in (1, 2, 4, 8)] == [900, 500, 300, 200]
  assert fit.estimated_bytes(500, 400, 2, 8) == 200  # from a step compiled with k = 2
  assert fit.fewest_micro_batches(8, 900, 800, 1, budget=500) == 2
  assert fit.fewest_micro_batches(8, 900, 800, 1, budget=301) == 4
  assert fit.fewest_micro_batches(6, 900, 800, 1, budget=400) == 3  # divisors of 6 only
  assert fit.fewest_micro_batches(8, 900, 800, 1, budget=10) == 8  # the most there can be


def test_suggestions_are_settings_estimated_to_fit():
  config = tiny_config()
  mesh = types.SimpleNamespace(shape={"data": 8, "fsdp": 1}, devices=np.zeros(8))
  config.train.batch_size = 64  # 8 a device
  assert fit._suggestions(config, mesh, True, 900, 800, 1, budget=500) == [
      "--config.train.micro_batches=2", "--config.mesh.fsdp=8 --config.mesh.data=1",
      "a smaller train.batch_size, or the recipe's :demo variant"]
  assert fit._suggestions(config, mesh, False, 900, 800, 1, budget=500)[0].startswith(
      "--config.mesh.fsdp=8")  # an objective that couples the batch is not split
  assert not fit._suggestions(config, mesh, True, 900, 800, 1, budget=150)[0].startswith(
      "--config.train.micro_batches")  # even 8 micro-batches (200 bytes) would not fit


def test_resolved_sets_auto_fields_also_after_references_are_resolved():
  # copy_and_resolve_references turns the 'auto' field (typed object) into a str field.
  config = fields.load("configs/ajepa.py").copy_and_resolve_references()
  c = fit.resolved(config, 4, "full")
  assert (c.train.micro_batches, c.model.remat, c.predictor.remat) == (4, "full", "full")
  assert c.train.batch_size == config.train.batch_size and config.train.micro_batches == "auto"


def _small(**train):
  """The tiny config on 2.08 s crops at batch 64 (8 examples on each of the 8 devices),
  where activations outweigh the rest, with 'auto' settings: 2 steps."""
  c = tiny_config(micro_batches="auto", batch_size=64, **train)
  c.data.frames = 208
  c.data.synthetic.num_pretrain = 128
  validation.validate(c)
  return c


def _needed(config, k: int) -> int:
  c = fit.resolved(config, k, "none")
  objective = objectives.build(c, 2)
  tx, schedules = optimizer.make_optimizer(c.optim, c.get("ema"), c.train.batch_size, 2, 1,
                                           objective.ema_subtree)
  compiled = update.compile_step(c, objective, tx, schedules, mesh_lib.make_mesh(c.mesh), 80)
  return memory.needed_bytes(compiled.step)


@pytest.mark.slow
def test_auto_splits_the_batch_under_a_small_budget_and_runs_as_that_split(
    tmp_path, monkeypatch, capsys):
  config = _small(checkpoint_every=100)
  whole, quarters = _needed(config, 1), _needed(config, 4)
  assert quarters < whole
  budget = (whole + quarters) / 2 / memory.MARGIN  # the whole batch does not fit, quarters do
  monkeypatch.setenv(memory.BUDGET_ENV, str(budget / memory.GIB))
  auto = loop.train(config, tmp_path / "auto")
  chosen = [line for line in capsys.readouterr().err.splitlines()
            if line.startswith("memory:")]
  assert len(chosen) == 1 and "remat none" in chosen[0] and "the whole batch needs" in chosen[0]
  k = int(chosen[0].split("micro_batches ")[1].split(",")[0])
  assert k in (2, 4) and auto.step == 2
  # The config written is the one asked for: a resume elsewhere may choose again.
  assert '"micro_batches": "auto"' in (tmp_path / "auto" / "config.json").read_text()
  monkeypatch.delenv(memory.BUDGET_ENV)
  fixed = _small(checkpoint_every=100)
  fixed.train.micro_batches = k
  loop.train(fixed, tmp_path / "fixed")
  jax.tree.map(np.testing.assert_array_equal, exported_params(tmp_path / "auto"),
               exported_params(tmp_path / "fixed"))


@pytest.mark.slow
def test_a_step_that_cannot_fit_stops_before_training_with_one_line(tmp_path, monkeypatch,
                                                                   capsys):
  monkeypatch.setenv(memory.BUDGET_ENV, str(1000 / memory.GIB))  # 1000 bytes a device
  config = _small()
  with pytest.raises(memory.OutOfMemoryError) as err:
    loop.train(config, tmp_path / "run")
  message = str(err.value)
  # 'auto' tried the most micro-batches and remat: what is left is more devices per copy.
  assert "\n" not in message and "MiB per device" in message and "0.0 MiB" in message
  assert "micro_batches 8, remat full" in message
  assert "--config.mesh.fsdp=8 --config.mesh.data=1" in message and ":demo" in message
  assert not (tmp_path / "run").exists()  # nothing written
  with pytest.raises(SystemExit) as exit_:  # the command: one line, exit 2
    main.main([f"--config={ROOT / 'configs' / 'audio_jepa.py'}:demo", *TINY_FLAGS,
               f"--workdir={tmp_path / 'cli'}", "--config.train.micro_batches=1",
               "--config.model.remat=none", "--config.predictor.remat=none"])
  assert exit_.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert err.startswith("error: the train step needs") and "micro_batches 1, remat none" in err
  assert "--config.mesh.fsdp=8" in err
  assert not (tmp_path / "cli").exists()


def test_a_split_that_breaks_per_example_terms_is_not_chosen_by_auto():
  """Objectives whose loss couples the batch declare it: 'auto' splits only the others."""
  from tests.tiny import tiny_mae_config, tiny_uamix_config
  assert objectives.OBJECTIVES["jepa"].splits_batch(tiny_config())
  mae = tiny_mae_config()
  assert objectives.OBJECTIVES["mae"].splits_batch(mae) == (mae.mae.input_norm == "none")
  mae.mae.input_norm = "batch_norm"
  assert not objectives.OBJECTIVES["mae"].splits_batch(mae)
  assert not objectives.OBJECTIVES["uamix"].splits_batch(tiny_uamix_config())
