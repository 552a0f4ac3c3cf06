"""`python -m jepa_jax.convert import`: PyTorch checkpoints -> the export every run writes.

Parity: each format's reference PyTorch model at random init (fixed seed, eval mode, depth
2 at the real width and heads; every bias, norm and layer scale perturbed so that a
mis-mapped one shows), its state dict saved to a file, imported by the command's function,
and the token outputs compared on the same log-mel input: max |ours - reference| <= 1e-4 x
max |reference| in float32 (the figure is printed). The references:
  timm_vit  timm's VisionTransformer itself.
  audiomae  timm's VisionTransformer with AudioMAE's vit_base_patch16 arguments
            (models_vit.py: in_chans 1, (1024, 128) time x frequency, qkv bias, LN eps 1e-6;
            AudioMAE's own files need timm 0.3.2), saved under 'model' with decoder keys
            beside it as models_mae.MaskedAutoencoderViT's checkpoints have.
  m2d       timm's VisionTransformer with portable_m2d.LocalViT's arguments, with M2D's
            norm_stats and target / decoder keys beside it.
  dasheng   the `dasheng` package (skipped where it cannot import: it needs torchaudio,
            which has no build for the pinned torch), and a state dict in Dasheng's key
            layout made of timm Blocks, run by OUR transcription of Dasheng's
            forward_features (not Dasheng's code).
"""
import json
import pickle
import subprocess
import sys
from functools import partial
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from jepa_jax import export, models
from jepa_jax.config import fields, shapes
from jepa_jax.convert import dasheng as dasheng_layout
from jepa_jax.convert import importer, safe_load, timm_vit
from jepa_jax.convert.__main__ import main as convert_main
from jepa_jax.evaluation import features, task_data
from jepa_jax.models import patches

torch = pytest.importorskip("torch", reason="the 'torch' extra is not installed")
timm = pytest.importorskip("timm", reason="the 'torch' extra (timm) is not installed")
audiomae_reference = pytest.importorskip("tests.audiomae_reference")

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # of the reference output's largest magnitude


def _vit(**kw):
  """A timm ViT over one-channel spectrograms, random init at a fixed seed, then every
  1-D parameter (biases, norms, layer scales) and the class token perturbed."""
  torch.manual_seed(0)
  args = dict(patch_size=16, in_chans=1, embed_dim=768, depth=2, num_heads=12, num_classes=0,
              qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
  model = timm.models.vision_transformer.VisionTransformer(**{**args, **kw}).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1 or name in ("cls_token", "pos_embed"):
        p.add_(0.1 * torch.randn_like(p))
  return model


def _tokens(model, image) -> np.ndarray:
  """The reference's token outputs after the final norm, class token dropped."""
  with torch.no_grad():
    out = model.forward_features(torch.from_numpy(image)[:, None])
  return out[:, model.num_prefix_tokens:].numpy()


def _ours(config, params, mel: np.ndarray) -> np.ndarray:
  encoder = models.build_encoder(config, shapes.grid(config))
  return np.asarray(encoder.apply({"params": params},
                                  patches.patchify(mel, tuple(config.model.patch_shape))))


def _check(name: str, ours: np.ndarray, ref: np.ndarray) -> float:
  diff = float(np.abs(ours - ref).max())
  scale = float(np.abs(ref).max())
  print(f"{name}: max |ours - reference| = {diff:.3g} (output scale {scale:.3g})")
  assert ours.shape == ref.shape
  assert diff <= TOLERANCE * scale
  return diff


def _mel(mels: int, frames: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(2, mels, frames)).astype(np.float32)


@pytest.mark.slow
def test_timm_vit_parity_with_class_token_layer_scale_and_no_qkv_bias(tmp_path):
  model = _vit(img_size=(80, 208), class_token=True, qkv_bias=False, init_values=0.1,
               global_pool="token")
  torch.save(model.state_dict(), tmp_path / "vit.pt")
  config, params, meta, notes = importer.convert("timm_vit", tmp_path / "vit.pt",
                                                 timm_vit.Options())
  assert (config.model.width, config.model.depth, config.model.num_heads,
          config.model.class_token, config.model.positions, config.data.frames) == \
      (768, 2, 12, True, "table", 208)
  assert any("layer scale" in n for n in notes) and any("qkv bias" in n for n in notes)
  mel = _mel(80, 208)
  _check("timm_vit", _ours(config, params, mel), _tokens(model, mel))


@pytest.mark.slow
def test_timm_vit_parity_without_class_token_and_positions_without_its_row(tmp_path):
  """no_embed_class: the class token gets no position; and a ViT without a class token."""
  for kw, options in (
      (dict(class_token=True, no_embed_class=True, global_pool="token"),
       timm_vit.Options(no_embed_class=True)),
      (dict(class_token=False, global_pool="avg", fc_norm=False), timm_vit.Options())):
    model = _vit(img_size=(80, 64), **kw)
    torch.save(model.state_dict(), tmp_path / "vit.pt")
    config, params, _, _ = importer.convert("timm_vit", tmp_path / "vit.pt", options)
    mel = _mel(80, 64)
    _check(f"timm_vit {kw}", _ours(config, params, mel), _tokens(model, mel))


@pytest.mark.slow
def test_from_jax_round_trip_is_bitwise_and_timm_computes_our_encoder(tmp_path):
  """Our encoder -> timm keys (what `convert export` writes) -> timm computes our outputs,
  and importing the keys gives the same parameters bit for bit (sin-cos positions come
  back as sin-cos: no parameter; a class token comes back unchanged)."""
  for class_token in (False, True):
    config = fields.load(str(ROOT / "configs/audio_jepa.py:demo"))
    config.data.frames = 64
    config.model.update(width=64, depth=2, num_heads=2, mlp_dim=128, class_token=class_token)
    encoder = models.build_encoder(config, shapes.grid(config))
    params = jax.tree.map(np.asarray, jax.tree.map(
        lambda x: x + 0.01, nn.unbox(
            models.init_encoder(encoder, jax.random.key(1)))))
    state = timm_vit.from_jax(params, config)
    model = timm.models.vision_transformer.VisionTransformer(
        **timm_vit.timm_kwargs(config), norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                          strict=True)
    mel = _mel(80, config.data.frames)
    _check(f"from_jax class_token={class_token}", _ours(config, params, mel), _tokens(model, mel))
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, tmp_path / "e.pt")
    _, back, _, _ = importer.convert("timm_vit", tmp_path / "e.pt",
                                     timm_vit.Options(num_heads=config.model.num_heads))
    flat = jax.tree_util.tree_leaves_with_path
    assert [p for p, _ in flat(back)] == [p for p, _ in flat(params)]
    for (path, a), (_, b) in zip(flat(back), flat(params)):
      assert np.array_equal(np.asarray(a), np.asarray(b)), jax.tree_util.keystr(path)


def _audiomae_checkpoint(frames: int = 1024, **kw):
  """(model, {'model': state dict}) laid out as AudioMAE's pretrained checkpoints."""
  model = _vit(img_size=(frames, 128), class_token=True, global_pool="token", **kw)
  state = dict(model.state_dict())
  torch.manual_seed(1)
  width = state["cls_token"].shape[-1]
  state.update({"decoder_embed.weight": torch.randn(512, width),
                "mask_token": torch.randn(1, 1, 512), "decoder_pred.weight": torch.randn(256, 512),
                "decoder_norm.weight": torch.ones(512)})
  return model, {"model": state}


@pytest.mark.slow
def test_audiomae_parity_time_by_frequency_input(tmp_path):
  model, checkpoint = _audiomae_checkpoint()
  torch.save(checkpoint, tmp_path / "audiomae.pth")
  config, params, meta, notes = importer.convert("audiomae", tmp_path / "audiomae.pth",
                                                 timm_vit.Options())
  assert (config.data.frontend, config.data.frames, config.model.positions,
          config.model.class_token) == ("ajepa", 1024, "fixed_table", True)
  assert meta["normalization"] == {"mean": -4.2677393, "std": 2 * 4.5689974}
  assert any("decoder" in n for n in notes)
  mel = _mel(128, 1024)  # ours: (mels, frames); AudioMAE's input: (frames, mels)
  ref = _tokens(model, np.ascontiguousarray(mel.transpose(0, 2, 1)))
  # AudioMAE's tokens run time-major (t, f); ours frequency-major (f, t).
  ref = ref.reshape(2, 64, 8, -1).transpose(0, 2, 1, 3).reshape(2, 512, -1)
  _check("audiomae", _ours(config, params, mel), ref)


def _m2d_checkpoint(frames: int = 208):
  model = _vit(img_size=(80, frames), class_token=True, global_pool="token")
  state = dict(model.state_dict())
  state["norm_stats"] = torch.tensor([-7.5, 4.5])
  state["target_blocks.0.norm1.weight"] = torch.ones(768)
  state["decoder_pred.weight"] = torch.zeros(256, 512)
  return model, {"model": state}


@pytest.mark.slow
def test_m2d_parity_and_its_embeddings(tmp_path):
  """Token outputs, and the clip embedding M2D's runtime computes (class token dropped,
  'b (f t) d -> b t (f d)', mean over time) through evaluation/features.py."""
  model, checkpoint = _m2d_checkpoint()
  torch.save(checkpoint, tmp_path / "m2d.pth")
  config, params, meta, notes = importer.convert("m2d", tmp_path / "m2d.pth",
                                                 timm_vit.Options())
  assert meta["normalization"] == {"mean": -7.5, "std": 4.5}
  assert config.data.normalization == "dataset" and config.data.frontend == "audio_jepa"
  assert any("target_blocks" in n for n in notes)
  mel = _mel(80, 208)
  ref = _tokens(model, mel)
  _check("m2d", _ours(config, params, mel), ref)
  ref_clip = ref.reshape(2, 5, 13, 768).transpose(0, 2, 1, 3).reshape(2, 13, -1).mean(1)
  encoder = models.build_encoder(config, shapes.grid(config))
  ours_clip = features.clip_embeddings(encoder, params, list(mel), 208, 0.0, batch_size=2)
  _check("m2d clip embedding", ours_clip, ref_clip)


@pytest.mark.slow
def test_m2d_shorter_input_trims_positions_as_m2d_does(tmp_path, capsys):
  """--frames below the checkpoint's: M2D's LocalViT keeps the first time positions."""
  model, checkpoint = _m2d_checkpoint()
  torch.save(checkpoint, tmp_path / "m2d.pth")
  config, params, _, notes = importer.convert("m2d", tmp_path / "m2d.pth",
                                              timm_vit.Options(frames=96))
  assert config.data.frames == 96 and any("trimmed" in n for n in notes)
  mel = _mel(80, 96)
  pos = model.pos_embed.detach()
  grid = pos[:, 1:].reshape(1, 5, 13, 768)
  trimmed = torch.cat([pos[:, :1], grid[:, :, :6].reshape(1, 30, 768)], 1)
  short = _vit(img_size=(80, 96), class_token=True, global_pool="token")
  short.load_state_dict({**model.state_dict(), "pos_embed": trimmed})
  _check("m2d trimmed", _ours(config, params, mel), _tokens(short, mel))
  _, _, _, notes = importer.convert("m2d", tmp_path / "m2d.pth", timm_vit.Options(frames=320))
  assert any("interpolated" in n for n in notes)


def _dasheng_forward(state: dict, spec: np.ndarray, heads: int) -> np.ndarray:
  """OUR transcription of dasheng.pretrained.Dasheng.forward_features (pooling 'mean')
  after init_bn, from dasheng/train/models.py: BatchNorm over mel bins (eval), the
  (64, 4) patch convolution, + time_pos_embed[..., :t] + freq_pos_embed, 'b c f t -> b (f
  t) c', the blocks (timm Blocks carry Dasheng's module names), the final norm."""
  f = torch.nn.functional
  x = torch.from_numpy(spec)[:, None]  # (B, 1, mels, frames)
  bn = [state[f"init_bn.1.{k}"] for k in ("running_mean", "running_var", "weight", "bias")]
  x = f.batch_norm(x.transpose(1, 2), *bn, False, 0.0, 1e-5).transpose(1, 2)
  x = f.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"],
               stride=(64, 4))
  x = x + state["time_pos_embed"][..., :x.shape[-1]] + state["freq_pos_embed"]
  x = x.flatten(2).transpose(1, 2)
  width = x.shape[-1]
  blocks = torch.nn.Sequential(*[timm.models.vision_transformer.Block(
      width, heads, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
      for _ in range(2)]).eval()
  blocks.load_state_dict({k[len("blocks."):]: v for k, v in state.items()
                          if k.startswith("blocks.")})
  norm = torch.nn.LayerNorm(width, eps=1e-6)
  norm.load_state_dict({"weight": state["norm.weight"], "bias": state["norm.bias"]})
  with torch.no_grad():
    return norm(blocks(x)).numpy()


def _dasheng_state(width: int = 768, heads: int = 12, time: int = 252) -> dict:
  torch.manual_seed(0)
  blocks = torch.nn.Sequential(*[timm.models.vision_transformer.Block(
      width, heads, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
      for _ in range(2)])
  state = {f"blocks.{k}": v for k, v in blocks.state_dict().items()}
  state = {k: v + 0.1 * torch.randn_like(v) if v.ndim == 1 else v for k, v in state.items()}
  conv = torch.nn.Conv2d(1, width, (64, 4), (64, 4))
  state.update({"patch_embed.proj.weight": conv.weight.detach(),
                "patch_embed.proj.bias": conv.bias.detach(),
                "time_pos_embed": torch.randn(1, width, 1, time) * .02,
                "freq_pos_embed": torch.randn(1, width, 1, 1) * .02,
                "norm.weight": 1 + 0.1 * torch.randn(width),
                "norm.bias": 0.1 * torch.randn(width),
                "init_bn.1.weight": 1 + 0.1 * torch.randn(64),
                "init_bn.1.bias": 0.1 * torch.randn(64),
                "init_bn.1.running_mean": -30 + torch.randn(64),
                "init_bn.1.running_var": 200 + torch.rand(64),
                "init_bn.1.num_batches_tracked": torch.tensor(10),
                "front_end.0.mel_scale.fb": torch.rand(257, 64)})
  return state


@pytest.mark.slow
def test_dasheng_layout_against_our_transcription_of_its_forward(tmp_path):
  """Not Dasheng's code (see test_dasheng_package_parity): its key layout and forward as
  read in its source, front-end normalisation included (the export's folded BatchNorm
  applied by evaluation's normalize, on raw dB features)."""
  state = _dasheng_state()
  torch.save({"model": state, "config": {"embed_dim": 768, "depth": 2}}, tmp_path / "d.pt")
  config, params, meta, notes = importer.convert("dasheng", tmp_path / "d.pt",
                                                 timm_vit.Options(frames=400))
  assert (config.model.num_heads, config.model.patch_shape, config.model.positions,
          config.data.frames) == (12, (64, 4), "learned", 400)
  spec = (-40 + 15 * _mel(64, 400)).astype(np.float32)  # dB-like features
  ref = _dasheng_forward(state, spec, 12)
  ours = _ours(config, params, np.stack([task_data.normalize(s, meta) for s in spec]))
  _check("dasheng layout", ours, ref)


def test_dasheng_package_parity(tmp_path):
  try:
    from dasheng.train.models import AudioTransformerMAE_Encoder
  except Exception as err:  # noqa: BLE001 - whatever stops the package importing
    # Not in the test extra: `pip install dasheng` asks for torchaudio, whose releases
    # (the last 2.11.1) each pin another torch than 2.14.1, so the install cannot resolve;
    # installed with --no-deps, it stops at `import torchaudio`.
    pytest.skip(f"dasheng cannot import beside torch {torch.__version__} (it imports "
                f"torchaudio, which no release pairs with this torch): "
                f"{type(err).__name__}: {err}")
  torch.manual_seed(0)
  model = AudioTransformerMAE_Encoder(embed_dim=768, depth=2, num_heads=12).eval()
  torch.save({"model": model.state_dict(), "config": {"embed_dim": 768, "depth": 2,
                                                      "num_heads": 12}}, tmp_path / "d.pt")
  config, params, meta, _ = importer.convert("dasheng", tmp_path / "d.pt", timm_vit.Options())
  spec = (-40 + 15 * _mel(64, 1008)).astype(np.float32)
  with torch.no_grad():
    x = model.init_bn(torch.from_numpy(spec)[:, None])
    ref = model.forward_features(x, mask_ratio=0.0)
  ref = (ref[0] if isinstance(ref, tuple) else ref).numpy()
  ours = _ours(config, params, np.stack([task_data.normalize(s, meta) for s in spec]))
  _check("dasheng package", ours, ref)


# --- untrusted and wrong input ----------------------------------------------------------


class _CreatesAFile:
  """A pickle carrying code: unpickling calls open(path, 'w'), creating the file."""

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return (open, (self.path, "w"))


def test_a_pickle_carrying_code_is_refused_without_running_it(tmp_path):
  target = tmp_path / "created_by_the_pickle"
  torch.save({"weight": torch.zeros(2), "payload": _CreatesAFile(target)}, tmp_path / "evil.pt")
  with pytest.raises(safe_load.CheckpointError,
                     match=r"refused: .*\(Unsupported global: GLOBAL io\.open\)") as err:
    safe_load.load(tmp_path / "evil.pt")
  assert "\n" not in str(err.value)
  assert not target.exists()
  # The payload is real: an ordinary unpickler runs it.
  with open(tmp_path / "evil.pkl", "wb") as f:
    pickle.dump(_CreatesAFile(target), f)
  with open(tmp_path / "evil.pkl", "rb") as f:
    pickle.load(f).close()
  assert target.exists()


def test_safetensors_are_read(tmp_path):
  from safetensors.numpy import save_file
  model = _vit(img_size=(80, 64), class_token=True, global_pool="token")
  save_file({k: v.numpy() for k, v in model.state_dict().items()}, tmp_path / "v.safetensors")
  config, params, _, _ = importer.convert("timm_vit", tmp_path / "v.safetensors",
                                          timm_vit.Options())
  mel = _mel(80, 64)
  _check("timm_vit safetensors", _ours(config, params, mel), _tokens(model, mel))


def test_wrong_format_truncated_file_and_missing_keys_each_give_one_line(tmp_path):
  model, checkpoint = _m2d_checkpoint()
  torch.save(checkpoint, tmp_path / "m2d.pth")
  with pytest.raises(safe_load.CheckpointError,
                     match=r"not a dasheng checkpoint: missing keys .*time_pos_embed.*"
                           r"looks like a m2d checkpoint: --format=m2d"):
    importer.convert("dasheng", tmp_path / "m2d.pth", timm_vit.Options())
  data = (tmp_path / "m2d.pth").read_bytes()
  (tmp_path / "cut.pth").write_bytes(data[:len(data) // 2])
  with pytest.raises(safe_load.CheckpointError, match="cannot be read.*truncated"):
    importer.convert("m2d", tmp_path / "cut.pth", timm_vit.Options())
  (tmp_path / "text.pt").write_text("not a checkpoint")
  with pytest.raises(safe_load.CheckpointError, match="neither a PyTorch checkpoint"):
    importer.convert("m2d", tmp_path / "text.pt", timm_vit.Options())
  state = dict(checkpoint["model"])
  del state["blocks.1.mlp.fc2.weight"], state["norm.bias"]
  torch.save(state, tmp_path / "holes.pth")
  with pytest.raises(safe_load.CheckpointError,
                     match=r"missing keys norm\.bias, blocks\.1\.mlp\.fc2\.weight"):
    importer.convert("m2d", tmp_path / "holes.pth", timm_vit.Options())


def test_what_the_encoder_cannot_express_is_refused_by_name(tmp_path):
  pooled = _vit(img_size=(80, 64), class_token=True, global_pool="avg")  # fc_norm, no norm
  torch.save(pooled.state_dict(), tmp_path / "p.pt")
  with pytest.raises(safe_load.CheckpointError, match="fc_norm"):
    importer.convert("timm_vit", tmp_path / "p.pt", timm_vit.Options())
  regs = _vit(img_size=(80, 64), class_token=True, global_pool="token", reg_tokens=4,
              qk_norm=True)
  torch.save(regs.state_dict(), tmp_path / "r.pt")
  with pytest.raises(safe_load.CheckpointError, match="register tokens.*qk_norm"):
    importer.convert("timm_vit", tmp_path / "r.pt", timm_vit.Options())


@pytest.mark.slow
def test_the_command_writes_an_export_that_loads_and_fails_in_one_line(tmp_path, capsys):
  model, checkpoint = _m2d_checkpoint(frames=64)
  torch.save(checkpoint, tmp_path / "m2d.pth")
  convert_main(["import", "--format=m2d", f"--checkpoint={tmp_path / 'm2d.pth'}",
                f"--workdir={tmp_path / 'run'}"])
  assert "wrote" in capsys.readouterr().out
  export_dir = tmp_path / "run" / "export"
  assert sorted(p.name for p in export_dir.iterdir()) == [
      "checksums.json", "config.json", "encoder", "frontend.json"]
  config, encoder, params, meta = export.load_encoder(export_dir)
  assert json.loads((export_dir / "frontend.json").read_text())["frames"] == 64
  mel = _mel(80, 64)
  ours = encoder.apply({"params": params}, patches.patchify(mel, (16, 16)))
  _check("m2d export", np.asarray(ours), _tokens(model, mel))
  (tmp_path / "bad.pt").write_bytes(b"\x80\x02garbage")
  run = subprocess.run([sys.executable, "-m", "jepa_jax.convert", "import", "--format=m2d",
                        f"--checkpoint={tmp_path / 'bad.pt'}", f"--workdir={tmp_path / 'x'}"],
                       capture_output=True, text=True, cwd=ROOT)
  assert run.returncode == 2
  assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: ")


def test_dasheng_frontend_transform_is_the_batch_norm_after_the_recipe():
  state = {k: np.asarray(v, np.float64) for k, v in _dasheng_state().items()
           if k.startswith("init_bn.1.") and "num_batches" not in k}
  t = dasheng_layout.bn_after_recipe(state)
  meta = {"normalization": {"mean": -10.0, "std": 40.0}, "input_norm": t}
  x = np.random.default_rng(0).normal(-40, 15, size=(64, 7))
  bn = (x - state["init_bn.1.running_mean"][:, None]) / np.sqrt(
      state["init_bn.1.running_var"][:, None] + 1e-5) * state["init_bn.1.weight"][:, None] \
      + state["init_bn.1.bias"][:, None]
  np.testing.assert_allclose(task_data.normalize(x, meta), bn, rtol=1e-5, atol=1e-5)


# --- continuing pretraining from an import (item 3) --------------------------------------


@pytest.mark.slow
def test_audiomae_pretraining_continues_from_an_imported_checkpoint(tmp_path, capsys):
  """--config.init_from=<imported workdir> on the AudioMAE recipe, from a checkpoint of
  tests/audiomae_reference.py (our transcription of AudioMAE's models_mae.py on timm
  modules, encoder and decoder_mode=1 decoder; see there): the first step runs at learning
  rate 0 (warmup from 0), so the step-1 checkpoint's encoder AND decoder are the import
  bit for bit, and the first step's loss is the reference model's on the same batch with
  the same masks (those the step drew, handed to the reference as its ids_shuffle) within
  1e-4; step 2 trains the blocks and the class token while the imported AudioMAE position
  tables stay fixed (as AudioMAE keeps them)."""
  from jepa_jax import objectives
  from jepa_jax.objectives import initial
  from jepa_jax.training import checkpoint, datasets, loop

  reference = audiomae_reference.AudioMAEReference(
      frames=128, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=2,
      decoder_num_heads=2, decoder_mlp_ratio=2.0).perturbed()
  torch.save({"model": reference.audiomae_state_dict()}, tmp_path / "audiomae.pth")
  convert_main(["import", "--format=audiomae", f"--checkpoint={tmp_path / 'audiomae.pth'}",
                f"--workdir={tmp_path / 'imported'}", "--num_heads=2"])
  assert "imported the MAE decoder" in capsys.readouterr().err
  _, _, imported, _ = export.load_encoder(tmp_path / "imported" / "export")
  imported_decoder = importer.convert_checkpoint(
      "audiomae", tmp_path / "audiomae.pth", timm_vit.Options(num_heads=2)).decoder

  c = fields.load(str(ROOT / "configs/audiomae.py:demo"))
  c.init_from = str(tmp_path / "imported")
  c.data.frames = 128  # 8 x 8 patches: two 4 x 4 windows along time, so the odd block shifts
  c.data.synthetic.update(num_pretrain=48, num_probe=36)
  c.model.update(width=32, depth=2, num_heads=2, mlp_dim=128, class_token=True,
                 positions="fixed_table")
  c.decoder.update(width=16, depth=2, num_heads=2, mlp_dim=32, positions="fixed_table")
  c.train.update(batch_size=8, epochs=16 / 48, log_every=1, checkpoint_every=1,
                 keep_checkpoints=2, micro_batches=1)
  c.optim.warmup_epochs = 8 / 48  # one warmup step: the first update has lr 0
  c.probe.update(max_epochs=2, patience=1, chunk_batch=16)
  result = loop.train(c, tmp_path / "run")
  assert result.step == 2 and np.isfinite(result.last_metrics["loss"])
  out = capsys.readouterr()
  assert f"started from the parameters of {c.init_from}" in out.out
  assert "decoder" not in out.err  # used, so nothing to say

  def params_at(step):
    alone = tmp_path / f"step{step}"
    alone.mkdir()
    (alone / str(step)).symlink_to(tmp_path / "run" / "checkpoints" / str(step))
    return checkpoint.latest_entry(alone)

  flat = jax.tree_util.tree_leaves_with_path
  first, second = params_at(1), params_at(2)
  for name, want in (("encoder", imported), ("decoder", imported_decoder)):
    assert [p for p, _ in flat(first[name])] == [p for p, _ in flat(want)]
    for (path, a), (_, b) in zip(flat(first[name]), flat(want)):
      assert np.array_equal(a, np.asarray(b)), name + jax.tree_util.keystr(path)
  assert np.array_equal(second["encoder"]["positions"]["table"],
                        np.asarray(imported["positions"]["table"]))
  assert np.array_equal(second["decoder"]["positions"]["table"],
                        np.asarray(imported_decoder["positions"]["table"]))
  assert not np.array_equal(second["encoder"]["cls_token"], np.asarray(imported["cls_token"]))
  assert not np.array_equal(second["encoder"]["transformer"]["block_0"]["mlp"]["fc1"]["kernel"],
                            np.asarray(imported["transformer"]["block_0"]["mlp"]["fc1"]["kernel"]))

  # The first step's batch and masks: the loop's first global batch, and the masks its
  # objective draws from fold_in(step key, 0).
  first_loss = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
  assert first_loss["step"] == 1
  mel = next(iter(datasets.train_dataset(c, datasets.resolve(c), 0)))["mel"]
  objective = objectives.build(c)
  masks = objective.sample_masks(jax.random.fold_in(initial.rngs(c)[1], 0), mel.shape[0], 0)
  ids, keep = audiomae_reference.ids_shuffle_of(masks, objective.grid)
  with torch.no_grad():
    reference_loss = float(reference(audiomae_reference.reference_input(mel), ids, keep)[0])
  diff = abs(first_loss["loss"] - reference_loss)
  print(f"continued AudioMAE pretraining, first loss: ours {first_loss['loss']:.7f}, "
        f"reference {reference_loss:.7f}, |difference| {diff:.3g}")
  assert diff <= 1e-4
