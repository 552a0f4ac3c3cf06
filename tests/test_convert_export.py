"""`python -m jepa_jax.convert export` and jepa_jax/torch_encoder.py: a jepa_jax encoder as a
PyTorch file and module whose embeddings are jepa_jax's (features.py) on the same audio,
front end included, for the recipes' encoders and front ends."""
import functools
import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from data_pipelines import frontends
from jepa_jax import export, models
from jepa_jax.config import shapes
from jepa_jax.convert import __main__ as convert_cli
from jepa_jax.convert import export_torch, timm_vit
from jepa_jax.evaluation import features, task_data
from tests.tiny import exported_params, tiny_config

torch = pytest.importorskip("torch", reason="the PyTorch export needs torch (the 'torch' extra)")
torch_encoder = pytest.importorskip("jepa_jax.torch_encoder")

SR = 16000


def noise(n: int, seconds: float, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, (n, int(seconds * SR))).astype(np.float32)


def relative(got, ref) -> float:
  got, ref = (x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
              for x in (got, ref))
  return float(np.abs(got - ref).max() / np.abs(ref).max())


# --- the front end --------------------------------------------------------------------------


def test_reflect_indices_pad_as_numpy_does():
  for n in (1, 2, 3, 7):
    for pad in (1, 3, 10, 25):
      a = np.arange(n)
      assert np.array_equal(a[torch_encoder.reflect_indices(n, pad).numpy()],
                            np.pad(a, pad, mode="reflect"))


@pytest.mark.filterwarnings("ignore:n_fft=.*too large:UserWarning")  # librosa, short input
@pytest.mark.parametrize("name", sorted(frontends.FRONTENDS))
def test_front_end_is_data_pipelines_log_mel(name):
  """Every recipe's features, from sounds shorter than half a window (reflect padding
  wraps) to seconds, loud, quiet and silent, and the normalised input and pad value."""
  fe = frontends.FRONTENDS[name]
  meta = {"frontend": fe.to_dict(), "normalization": {"mean": fe.norm_mean, "std": fe.norm_std},
          "input_norm": {"scale": list(np.linspace(0.5, 2, fe.n_mels)),
                         "shift": list(np.linspace(-1, 1, fe.n_mels))}}
  logmel = torch_encoder.LogMel(meta["frontend"], meta["normalization"], fe.filterbank,
                                fe.window, meta["input_norm"])
  worst = 0.0
  for n in (1, 150, 201, 400, 401, 3217, 16000):
    if n < fe.min_samples:
      continue
    for seed, gain in enumerate((1.0, 1e-4, 0.0)):
      audio = gain * noise(2, n / SR, seed)
      ref = np.stack([fe.logmel(wave) for wave in audio])
      got = logmel(torch.from_numpy(audio))
      assert got.dtype == torch.float32 and got.shape == ref.shape
      assert logmel.num_frames(n) == fe.num_frames(n) == ref.shape[2]
      worst = max(worst, relative(got, ref))
      np.testing.assert_allclose(logmel.normalise(got).numpy(),
                                 np.stack([task_data.normalize(m, meta) for m in ref]),
                                 rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(logmel.pad_value(got).numpy(),
                                 np.stack([task_data.pad_value(meta, m) for m in ref]),
                                 rtol=1e-6, atol=1e-6)
  print(f"front end {name}: max abs diff / max abs vs data_pipelines = {worst:.2e}")
  assert worst <= 1e-4


# --- exports of the recipes' encoders ---------------------------------------------------------


def variant_config(variant: str):
  """Tiny encoders with each option the recipes (and imports) use: Audio-JEPA's (sin-cos,
  ln mel), Dasheng's (64 x 4 patches, learned factorised positions, dB mel with a folded
  BatchNorm), A-JEPA's Kaldi fbank with a class token and a position table (imports)."""
  c = tiny_config()
  if variant == "dasheng":
    c.data.frontend = "dasheng"
    c.model.update(patch_shape=(64, 4), positions="learned")
  elif variant == "kaldi_cls":
    c.data.frontend = "ajepa"
    c.model.update(class_token=True, positions="table")
  return c


@functools.cache
def made_export(variant: str, root: str):
  """(workdir, config) of an export whose parameters are random everywhere (biases and
  norms too), so that any misplaced weight shows."""
  from pathlib import Path
  config = variant_config(variant)
  encoder = models.build_encoder(config, shapes.grid(config))
  params = nn.unbox(models.init_encoder(encoder, jax.random.key(1)))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.2 * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])
  fe = frontends.get_frontend(config.data.frontend)
  meta = {"frontend": fe.to_dict(), "frames": config.data.frames,
          "normalization": {"mean": fe.norm_mean + 0.5, "std": fe.norm_std * 1.1}}
  if variant == "dasheng":
    rng = np.random.default_rng(3)
    meta["input_norm"] = {"scale": rng.uniform(0.5, 1.5, fe.n_mels).tolist(),
                          "shift": rng.uniform(-0.5, 0.5, fe.n_mels).tolist()}
  workdir = Path(root) / variant
  export.export_encoder(workdir / "export", config, params, meta)
  (workdir / "config.json").write_text(config.to_json())  # a workdir's own, as training's
  return workdir, config


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("convert_export"))


def exported_file(variant: str, root: str):
  workdir, config = made_export(variant, root)
  out = workdir / "encoder.pt"
  if not out.exists():
    convert_cli.main(["export", f"--workdir={workdir}", f"--output={out}"])
  return workdir, config, out


def jax_embeddings(workdir, audio: np.ndarray, freq_pool: str = "concat"):
  """jepa_jax's own: the export's front end (NumPy), normalisation, pads, features.py."""
  _, encoder, params, meta = export.load_encoder(workdir / "export")
  fe = task_data.frontend_of(meta)
  raw = [fe.logmel(wave) for wave in audio]
  mels = [task_data.normalize(m, meta) for m in raw]
  pads = [task_data.pad_value(meta, m) for m in raw]
  return features.frame_embeddings(encoder, params, mels, meta["frames"], pads, 8, freq_pool)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["audio_jepa", "dasheng", "kaldi_cls"])
def test_exported_module_reproduces_jepa_jax_embeddings(variant, root, capsys):
  workdir, config, path = exported_file(variant, root)
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert printed["output"] == str(path) and printed["format"] == "timm_vit"
  contents = torch.load(path, weights_only=True)  # tensors and plain values only
  assert json.loads(contents["jepa_jax"]["config"]) == json.loads(config.to_json())
  audio = noise(3, 2.13, seed=4)
  audio[2] *= 1e-3  # quiet: dasheng's pad value is its own max - top_db
  for freq_pool in ("concat", "mean"):
    model = torch_encoder.load(path, freq_pool=freq_pool, batch_size=4)
    assert not model.training
    with torch.no_grad():
      got = model(torch.from_numpy(audio)).numpy()
      scene = model.scene_embeddings(torch.from_numpy(audio)).numpy()
    ref = np.stack(jax_embeddings(workdir, audio, freq_pool))
    assert got.shape == ref.shape and got.shape[2] == model.embedding_size
    err = relative(got, ref)
    print(f"export {variant} ({freq_pool}): frame embeddings max abs diff / max abs = "
          f"{err:.2e}, scene {relative(scene, ref.mean(1)):.2e}")
    assert err <= 1e-4 and relative(scene, ref.mean(1)) <= 1e-4


@pytest.mark.slow
def test_the_state_dict_is_timm_vision_transformer(root):
  """timm's VisionTransformer (timm_vit.timm_kwargs) loads the file's state dict strictly
  and its tokens are the module's encoder's."""
  timm_models = pytest.importorskip("timm.models.vision_transformer")
  for variant in ("audio_jepa", "kaldi_cls"):
    _, config, path = exported_file(variant, root)
    state = torch.load(path, weights_only=True)
    state.pop("jepa_jax")
    reference = timm_models.VisionTransformer(
        **timm_vit.timm_kwargs(config),
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    reference.load_state_dict(state, strict=True)
    ours = torch_encoder.load(path).encoder
    x = torch.randn(2, *shapes.input_shape(config), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
      ref = reference.forward_features(x[:, None])[:, 1 if config.model.class_token else 0:]
      got = ours(x)
    print(f"timm {variant}: max abs diff / max abs = {relative(got, ref):.2e}")
    assert relative(got, ref) <= 1e-5


def test_xares_encoder(root):
  _, config, path = exported_file("audio_jepa", root)
  model = torch_encoder.load(path)
  xares = torch_encoder.XaresEncoder(model)
  assert type(xares).__name__.endswith("Encoder") and isinstance(xares, torch.nn.Module)
  assert (xares.sampling_rate, xares.output_dim, xares.hop_size_in_ms) == (16000, 5 * 32, 160.0)
  audio = torch.randn(2, 50000, generator=torch.Generator().manual_seed(1)) * 0.1
  out = xares(audio)
  assert out.shape == (2, -(-(1 + 50000 // 160) // 16), xares.output_dim)  # 20 time patches
  with torch.no_grad():
    assert torch.equal(out, model(audio))
  assert torch.equal(xares(audio[0]), out[:1])


def test_hear_load_model_equals_the_file(root):
  """jepa_jax.hear in torch mode builds the module the file holds (batched alike, the
  same values to float32 rounding)."""
  from jepa_jax import hear
  workdir, _, path = exported_file("dasheng", root)
  model = hear.load_model(workdir, batch_size=8)
  from_file = torch_encoder.load(path, batch_size=8)
  assert model.audio_encoder.state_dict().keys() == from_file.state_dict().keys()
  for name, value in from_file.state_dict().items():
    assert torch.equal(model.audio_encoder.state_dict()[name], value), name
  audio = noise(2, 1.3, seed=5)
  with torch.no_grad():
    expected = from_file.scene_embeddings(torch.from_numpy(audio)).numpy()
  np.testing.assert_allclose(hear.get_scene_embeddings(audio, model), expected, rtol=1e-6,
                             atol=1e-6)


# --- refusals ---------------------------------------------------------------------------------


def test_bad_exports_and_options_give_one_line(root, tmp_path, capsys):
  workdir, config = made_export("audio_jepa", root)
  for argv, expected in [
      ([f"--workdir={tmp_path / 'none'}", f"--output={tmp_path / 'a.pt'}"], "does not exist"),
      ([f"--workdir={tmp_path}", f"--output={tmp_path / 'a.pt'}"], "holds no encoder export"),
      ([f"--workdir={workdir}", f"--output={tmp_path / 'no' / 'a.pt'}"], "does not exist; create"),
  ]:
    with pytest.raises(SystemExit) as exit_info:
      convert_cli.main(["export"] + argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
  odd = config.copy_and_resolve_references()
  with odd.unlocked():
    odd.model.qk_norm = True
    odd.model.positions = "rotary"
  _, _, params, meta = export.load_encoder(workdir / "export")
  with pytest.raises(ValueError, match=r"model.qk_norm .*; model.positions 'rotary'"):
    export_torch.file_contents(odd, params, meta)
  with pytest.raises(ValueError, match="unknown export format 'onnx'"):
    export_torch.file_contents(config, params, meta, "onnx")
  bad = tmp_path / "plain.pt"
  torch.save({"patch_embed.proj.weight": torch.zeros(1)}, bad)
  with pytest.raises(ValueError, match="not a jepa_jax PyTorch export.*'jepa_jax'"):
    torch_encoder.load(bad)


# --- round trip through the importer ------------------------------------------------------------


@pytest.mark.parametrize("variant", ["audio_jepa", "kaldi_cls"])
def test_export_then_import_gives_the_same_export(variant, root, tmp_path):
  """The same parameters bitwise, and the same config and front end (the file carries
  them: heads, frames, dataset normalisation), with no flag but the format."""
  workdir, config, path = exported_file(variant, root)
  convert_cli.main(["import", "--format=timm_vit", f"--checkpoint={path}",
                    f"--workdir={tmp_path}"])
  before, after = exported_params(workdir), exported_params(tmp_path)
  assert jax.tree.structure(before) == jax.tree.structure(after)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    assert a.dtype == b.dtype and np.array_equal(a, b)
  for name in ("config.json", "frontend.json"):
    assert json.loads((tmp_path / "export" / name).read_text()) == \
        json.loads((workdir / "export" / name).read_text())
