"""Embedding, evaluation and fine-tuning fitted to the device's memory: a forced small
budget ($JEPA_JAX_DEVICE_MEMORY_GB) makes embedding take fewer chunks at a time with the
same embeddings, and stops fine-tuning with one line whose suggestion fits."""
import types

import flax.linen as nn
import jax
import numpy as np
import pytest

from jepa_jax import models
from jepa_jax.evaluation import features, finetune
from jepa_jax.models import vit
from jepa_jax.parallel import memory


def _fake_compiled(rows: int, fixed: int, per_row: int):
  """What fitted_batch reads of a compiled function: `fixed` bytes of arguments and
  `per_row` bytes of temporaries per row."""
  analysis = types.SimpleNamespace(argument_size_in_bytes=fixed, output_size_in_bytes=0,
                                   alias_size_in_bytes=0, temp_size_in_bytes=per_row * rows)
  return types.SimpleNamespace(memory_analysis=lambda: analysis, rows=rows)


def _budget_gb(monkeypatch, nbytes: float) -> None:
  """A budget such that `nbytes` is what a compiled function may plan on (MARGIN of it)."""
  monkeypatch.setenv(memory.BUDGET_ENV, str(nbytes / memory.MARGIN / memory.GIB))


def test_fitted_batch_scales_the_activations_and_confirms(monkeypatch):
  compiled_at = []

  def compile_at(b):
    compiled_at.append(b)
    return _fake_compiled(b, fixed=1000, per_row=100)

  _budget_gb(monkeypatch, 1000 + 100 * 13 + 50)  # 13 rows fit
  b, compiled = memory.fitted_batch(compile_at, 64, jax.local_devices()[:1], "x")
  assert (b, compiled.rows, compiled_at) == (13, 13, [64, 13])
  _budget_gb(monkeypatch, 1e12)
  assert memory.fitted_batch(compile_at, 64, jax.local_devices()[:1], "x")[0] == 64
  _budget_gb(monkeypatch, 1050)  # the arguments alone nearly fill it: not one row
  with pytest.raises(memory.OutOfMemoryError, match=r"^embedding one chunk needs .* for a "
                     r"single row .* free memory, or run on a device with more$"):
    memory.fitted_batch(compile_at, 64, jax.local_devices()[:1], "embedding one chunk")


def _encoder():
  enc = vit.Encoder(grid=(5, 2), patch_shape=(16, 16), width=32, depth=2, num_heads=2,
                    mlp_dim=64)
  return enc, jax.jit(lambda r: nn.unbox(models.init_encoder(enc, r)))(jax.random.key(0))


def test_a_small_budget_embeds_fewer_chunks_at_a_time_with_the_same_embeddings(
    monkeypatch, capsys):
  enc, params = _encoder()
  rng = np.random.default_rng(0)
  mels = [rng.normal(size=(80, n)).astype(np.float32) for n in (40, 200, 75, 310, 32)]
  features._COMPILED.clear()
  whole = features.clip_embeddings(enc, params, mels, frames=32, pad_value=-1.0,
                                   batch_size=16)
  b16, compiled16 = features.fitted_time_steps(enc, params, (80, 32), 16, "concat")
  b4, compiled4 = features.fitted_time_steps(enc, params, (80, 32), 4, "concat")
  assert b16 == 16 and b4 == 4 and capsys.readouterr().err == ""
  # A budget between what 4 and 16 chunks need (the forced budget is a new cache key's
  # business: the cache holds one choice per encoder, shapes and batch).
  budget = (memory.needed_bytes(compiled4) + memory.needed_bytes(compiled16)) / 2
  _budget_gb(monkeypatch, budget)
  features._COMPILED.clear()
  fitted = features.clip_embeddings(enc, params, mels, frames=32, pad_value=-1.0,
                                    batch_size=16)
  chosen, compiled = features.fitted_time_steps(enc, params, (80, 32), 16, "concat")
  assert 4 <= chosen < 16 and memory.needed_bytes(compiled) <= budget
  assert f"memory: embedding {chosen} chunks at a time, not 16" in capsys.readouterr().err
  np.testing.assert_allclose(fitted, whole, rtol=1e-5, atol=1e-6)
  features._COMPILED.clear()


def test_fine_tuning_that_does_not_fit_stops_with_a_batch_that_does(monkeypatch):
  enc, params = _encoder()
  mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()[:1]), ("data",))
  s = finetune.settings_of({"batch_size": 64})
  fns = finetune.compiled(enc, finetune.Classifier(3), finetune.StepOptions.of(s, False), mesh)
  args = (fns, params, 64, (80, 32), 3, mesh)
  finetune.check_memory(*args)  # the host has room
  step = finetune.compiled_step(fns, params, 64, (80, 32), 3)
  _budget_gb(monkeypatch, memory.needed_bytes(step) * 0.6)
  with pytest.raises(memory.OutOfMemoryError) as err:
    finetune.check_memory(*args)
  line = str(err.value)
  assert "\n" not in line and line.startswith("fine-tuning at finetune.batch_size 64 needs ")
  suggested = int(line.split("--finetune=batch_size=")[1].split()[0])
  assert 1 <= suggested < 64
  finetune.check_memory(fns, params, suggested, (80, 32), 3, mesh)  # it fits
