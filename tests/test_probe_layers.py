"""Embeddings from chosen blocks (`--layers`): each block's output through the final
LayerNorm, checked against an encoder cut after that block; the mean over blocks; the
spec's parsing; the commands."""
import dataclasses
import json

import flax.linen as nn
import jax
import numpy as np
import pytest
from test_evaluation import make_tone_task
from tiny import tiny_config

from data_pipelines import frontends
from jepa_jax import embed, evaluate, export, models
from jepa_jax.config import shapes
from jepa_jax.evaluation import features
from jepa_jax.models import vit

DEPTH = 3


def _encoder(**options) -> vit.Encoder:
  return vit.Encoder(grid=(5, 2), patch_shape=(16, 16), width=16, depth=DEPTH, num_heads=2,
                     mlp_dim=32, **options)


def _cut_after(encoder: vit.Encoder, params, k: int):
  """The reference: an encoder of the first k blocks and the same final LayerNorm."""
  blocks = vit.unstack_layers(params)
  kept = {f"block_{i}": blocks["transformer"][f"block_{i}"] for i in range(k)}
  cut = {**blocks, "transformer": {**kept, "norm": blocks["transformer"]["norm"]}}
  return dataclasses.replace(encoder, depth=k, scan=False), cut


@pytest.mark.parametrize("options", [{}, {"scan": True}, {"class_token": True}],
                         ids=["blocks", "scanned", "class_token"])
def test_each_block_is_the_encoder_cut_after_it_and_layers_average_them(options):
  encoder = _encoder(**options)
  params = nn.unbox(models.init_encoder(encoder, jax.random.key(0)))
  x = jax.random.normal(jax.random.key(1), (3, 10, 256))
  per_block = {}
  for k in range(1, DEPTH + 1):
    cut, cut_params = _cut_after(encoder, params, k)
    per_block[k] = np.asarray(cut.apply({"params": cut_params}, x))
    np.testing.assert_allclose(features.encoded_tokens(encoder, params, x, (k,)), per_block[k],
                               rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(features.encoded_tokens(encoder, params, x, (1, 3)),
                             (per_block[1] + per_block[3]) / 2, rtol=1e-5, atol=1e-5)
  # The last block alone is the encoder's output, so it embeds (and caches) as the default.
  np.testing.assert_array_equal(features.encoded_tokens(encoder, params, x, ()),
                                encoder.apply({"params": params}, x))
  assert not np.allclose(per_block[1], per_block[DEPTH], atol=1e-3)


def test_the_layers_spec_names_blocks_from_one_or_all():
  assert features.blocks_to_average([], 6) == ()
  assert features.blocks_to_average(["6"], 6) == ()
  assert features.blocks_to_average(["3", "1", "3"], 6) == (1, 3)
  assert features.blocks_to_average(["all"], 4) == (1, 2, 3, 4)
  for bad in (["0"], ["7"], ["-1"], ["last"]):
    with pytest.raises(ValueError, match="give block numbers 1-6 or 'all'"):
      features.blocks_to_average(bad, 6)


def test_clip_embeddings_of_a_block_are_its_tokens_pooled():
  encoder = _encoder()
  params = nn.unbox(models.init_encoder(encoder, jax.random.key(0)))
  mel = np.random.default_rng(0).normal(size=(80, 32)).astype(np.float32)
  got = features.clip_embeddings(encoder, params, [mel], 32, -1.0, 2, "mean", (1,))
  cut, cut_params = _cut_after(encoder, params, 1)
  np.testing.assert_allclose(got, features.clip_embeddings(cut, cut_params, [mel], 32, -1.0, 2,
                                                           "mean"), rtol=1e-5, atol=1e-6)


def test_the_commands_take_layers_and_refuse_a_block_the_encoder_lacks(tmp_path, capsys):
  config = tiny_config()
  config.model.depth = 2
  encoder = models.build_encoder(config, shapes.grid(config))
  meta = {"frontend": frontends.get_frontend(config.data.frontend).to_dict(),
          "normalization": {"mean": -5.0, "std": 4.0}, "frames": config.data.frames}
  run = tmp_path / "run"
  export.export_encoder(run / "export", config,
                        nn.unbox(models.init_encoder(encoder, jax.random.key(7))), meta)
  folder = make_tone_task(tmp_path / "t", per_class=5)  # enough for every split
  embed.main([f"--workdir={run}", f"--task={folder}", "--layers=1"])
  first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  embed.main([f"--workdir={run}", f"--task={folder}"])
  last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert first["features"] != last["features"]  # cached apart
  with np.load(first["features"]) as a, np.load(last["features"]) as b:
    assert a["x"].shape == b["x"].shape and not np.allclose(a["x"], b["x"])
  evaluate.main([f"--workdir={run}", f"--task={folder}", "--layers=1", "--protocol=knn",
                 "--baselines=random_init,mean_logmel"])
  knn = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["t"]["knn"]
  assert knn["trained"]["layers"] == knn["random_init"]["layers"] == [1]
  assert "layers" not in knn["mean_logmel"]  # results say what they read
  with pytest.raises(SystemExit) as exited:
    evaluate.main([f"--workdir={run}", f"--task={folder}", "--layers=9"])
  err = capsys.readouterr().err
  assert exited.value.code == 2 and err.count("\n") == 1
  assert err.startswith("error: layers: '9' is not a block of this 2-block encoder"), err
