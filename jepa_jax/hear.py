"""The HEAR API (hear-eval-kit's convention) for an encoder trained by this library:

    model = hear.load_model("RUN")   # a training workdir holding export/, or export/ itself
    scene = hear.get_scene_embeddings(audio, model)                  # (n_sounds, D)
    emb, ts = hear.get_timestamp_embeddings(audio, model)  # (n_sounds, n_ts, D), (n_sounds, n_ts)

`audio` is (n_sounds, n_samples) float in [-1, 1] at `model.sample_rate` (16 kHz), numpy
or torch. Each sound becomes its front end's log-mel (as the export recorded it),
normalised as in training, cut into chunks of the model's training length (the last padded
with the sound's own pad value, task_data.pad_value, as training crops pad it) and encoded
without masking (features.py); one embedding per time patch concatenates the patch's
frequency tokens (D = grid_freq * width). Sounds shorter than the front end's minimum are
padded with zeros.

Scene embedding: the mean over time of every time patch of the whole sound, exactly
`features.clip_embeddings(..., freq_pool="concat")`.

Timestamp embeddings: a patch spans `patch_frames` frames (16 frames = 160 ms at a 10 ms
hop), too coarse for HEAR's hop of at most 50 ms. The encoder therefore runs K times
(`model.passes`), pass j on the log-mel with its first j * patch_frames / K frames
dropped, and the passes' patch embeddings are interleaved: timestamp k * K + j is patch k
of pass j, so consecutive timestamps are patch_frames / K frames apart (40 ms for 16-frame
patches at 10 ms). K is the smallest divisor of patch_frames giving a hop <= 50 ms (it is
ceil(patch_ms / 50) whenever that divides patch_frames; e.g. 14-frame patches give K = 7,
a 20 ms hop). Leading frames are dropped rather than silence padded in front because every
pass then starts on real audio, as every training crop did (crops were padded at the end
only), and no embedding is centred before the sound starts.

Each timestamp is the centre of what its embedding covers: the mean of the centres of
the patch's frames, frame i being centred on sample i * hop for the centred-STFT recipes
(librosa center=True) and on sample i * hop + (win_length - 1) / 2 for Kaldi's
snip-edges frames. Timestamp i is computed from integers as (first + i * step) half
samples, so nothing drifts however long the sound. Timestamps run while the centre lies
within the sound: the first is half a patch in (75 ms for audio_jepa, 87.47 ms for ajepa;
hear-validator warns that this starts later than one hop, harmlessly: the first patch
covers the sound from its start), the last within one hop of the end. A sound shorter
than the first centre still gets that one timestamp.

GPU memory: hear-eval-kit runs torch and TensorFlow models on the same GPU, so importing
this module sets XLA_PYTHON_CLIENT_PREALLOCATE=false (unless already set) for JAX to
allocate as it goes. JAX reads it when its backend starts, on the first JAX computation
of the process: if one ran before this import, the setting has no effect (a warning says
so when a GPU backend is up); set the variable in the environment to be sure.

Torch mode: hear-eval-kit accepts only torch or TensorFlow modules. When torch imports,
`load_model` converts the encoder to PyTorch (jepa_jax/torch_encoder.py, the module
`python -m jepa_jax.convert export` writes: front end, encoder and pooling, the same
embeddings within float32 rounding) and returns a `TorchHearModel`, a torch.nn.Module
holding its parameters (move it with .to(device)); the `get_*_embeddings` functions then
compute with it on its device. Given torch tensors they return torch tensors on the
input's device, given numpy arrays numpy arrays. Without torch (an optional extra: pip
install jepa_jax[torch]) `load_model` returns the plain `HearModel`, which computes in JAX.
"""
import os

_PREALLOCATE = "XLA_PYTHON_CLIENT_PREALLOCATE"
_PREALLOCATE_WAS_SET = _PREALLOCATE in os.environ
os.environ.setdefault(_PREALLOCATE, "false")

import dataclasses  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from fractions import Fraction  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from data_pipelines import frontends  # noqa: E402
from jepa_jax import export  # noqa: E402
from jepa_jax.convert import export_torch  # noqa: E402
from jepa_jax.evaluation import features, task_data  # noqa: E402
from jepa_jax.models import vit  # noqa: E402


def _warn_if_preallocating():
  """JAX read the variable already if its backend is up: say so where it matters (GPU)."""
  if _PREALLOCATE_WAS_SET:
    return
  try:
    from jax._src import xla_bridge  # private: the only way to ask without starting one
    started = xla_bridge.backends_are_initialized()
    platforms = set(xla_bridge._backends) if started else set()
  except Exception:  # an API change must never break the import
    return
  if platforms - {"cpu"}:
    warnings.warn(
        f"jepa_jax.hear was imported after JAX started its {sorted(platforms)} backend: "
        f"{_PREALLOCATE}=false comes too late, JAX may hold most of the GPU memory. Set it in "
        f"the environment, or import jepa_jax.hear before any JAX computation.", stacklevel=3)


_warn_if_preallocating()

MAX_HOP_MS = 50  # HEAR's largest timestamp hop
FREQ_POOL = "concat"
# Sounds are encoded in groups of at most this many log-mel frames (all passes counted):
# bounds host memory for long sounds while short sounds still share compiled batches.
_GROUP_FRAMES = 1 << 18


def passes_for(patch_frames: int, hop_length: int, sample_rate: int) -> int:
  """K: the smallest divisor of patch_frames whose shift, patch_frames / K frames, is at
  most MAX_HOP_MS (patch_frames itself when even one frame is longer)."""
  for k in range(1, patch_frames + 1):
    if patch_frames % k == 0 and Fraction(
        patch_frames // k * hop_length * 1000, sample_rate) <= MAX_HOP_MS:
      return k
  return patch_frames


def frame_centre2(frontend: frontends.FrontEnd) -> int:
  """Twice the sample on which frame 0 is centred (frame i: add i * hop_length)."""
  if isinstance(frontend, frontends.CentredStftMel):
    return 0  # librosa center=True: the window is centred on sample i * hop
  if isinstance(frontend, frontends.KaldiFbank):
    return frontend.win_length - 1  # snip edges: samples i * hop .. i * hop + win - 1
  raise ValueError(f"front end {frontend.name!r} ({frontend.kind}): where its frames are "
                   f"centred is not known to jepa_jax.hear; add it to frame_centre2")


def _frames(frontend: frontends.FrontEnd, n_samples: int) -> int:
  """Frames of a sound, which is zero-padded to the front end's minimum when shorter."""
  return frontend.num_frames(max(n_samples, frontend.min_samples, 1))


def timestamp_grid(frontend: frontends.FrontEnd, patch_frames: int, passes: int,
                   n_samples: int) -> tuple[int, int, int]:
  """(first, step, count): timestamp i is centred on (first + i * step) / 2 samples.

  count: the timestamps centred within the sound (at least one) that have an embedding."""
  shift = patch_frames // passes
  first = frame_centre2(frontend) + (patch_frames - 1) * frontend.hop_length
  step = 2 * shift * frontend.hop_length
  within = 0 if first > 2 * n_samples else (2 * n_samples - first) // step + 1
  frames = _frames(frontend, n_samples)
  encoded = -(-frames // shift)  # i has a patch iff its first frame i * shift < frames
  return first, step, max(1, min(within, encoded))


@dataclasses.dataclass(frozen=True, eq=False)
class HearModel:
  """The JAX encoder and everything that turns audio into its input, with HEAR's
  attributes."""
  export_dir: Path
  encoder: vit.Encoder
  params: Any
  frontend_meta: dict
  frontend: frontends.FrontEnd
  frames: int               # the chunk length the encoder was trained on
  passes: int               # K shifted passes for timestamp embeddings
  batch_size: int           # chunks per compiled encoder call
  sample_rate: int
  scene_embedding_size: int
  timestamp_embedding_size: int

  @property
  def patch_frames(self) -> int:
    return self.encoder.patch_shape[1]

  @property
  def shift_frames(self) -> int:
    """Frames between passes, and between consecutive timestamps."""
    return self.patch_frames // self.passes

  @property
  def timestamp_hop_ms(self) -> float:
    return float(Fraction(self.shift_frames * self.frontend.hop_length * 1000,
                          self.sample_rate))


def _find_export(model_file_path) -> Path:
  if model_file_path is None or str(model_file_path) == "":
    raise FileNotFoundError(
        "jepa_jax.hear.load_model needs a model path: a training workdir (holding export/) "
        "or its export/ directory (hear-validator: --model PATH)")
  return export_torch.find_export(model_file_path)


def load_model(model_file_path="", batch_size: int = 64):
  """The model at a training workdir or export directory, for the get_* functions: a
  TorchHearModel (torch.nn.Module, the encoder converted to PyTorch) when torch is
  installed, else a HearModel (JAX)."""
  export_dir = _find_export(model_file_path)
  config, encoder, params, meta = export.load_encoder(export_dir)
  frontend = task_data.frontend_of(meta)
  size = features.embedding_size(encoder, FREQ_POOL)
  model = HearModel(
      export_dir=export_dir, encoder=encoder, params=params, frontend_meta=meta,
      frontend=frontend, frames=int(meta["frames"]),
      passes=passes_for(encoder.patch_shape[1], frontend.hop_length, frontend.sample_rate),
      batch_size=batch_size, sample_rate=int(frontend.sample_rate),
      scene_embedding_size=int(size), timestamp_embedding_size=int(size))
  frame_centre2(frontend)  # an unknown recipe fails here, not on the first sound
  torch_class = _torch_model_class()
  if torch_class is None:
    return model
  return torch_class(model, export_torch.module_of(config, params, meta, FREQ_POOL, batch_size))


_TORCH_MODEL = []  # the torch model class, defined once torch has imported


def _torch_model_class():
  if _TORCH_MODEL:
    return _TORCH_MODEL[0]
  try:
    import torch  # lazy: an optional extra
  except ImportError:
    return None

  class TorchHearModel(torch.nn.Module):
    """The encoder in PyTorch (`audio_encoder`, a torch_encoder.AudioEncoder: parameters,
    front-end buffers) and what HEAR's timestamps need (`info`: the HearModel without
    its JAX parameters)."""

    def __init__(self, model: HearModel, audio_encoder: torch.nn.Module):
      super().__init__()
      self.audio_encoder = audio_encoder
      self.info = dataclasses.replace(model, params=None)

    @property
    def sample_rate(self) -> int:
      return self.info.sample_rate

    @property
    def scene_embedding_size(self) -> int:
      return self.info.scene_embedding_size

    @property
    def timestamp_embedding_size(self) -> int:
      return self.info.timestamp_embedding_size

    def forward(self, audio):
      return get_scene_embeddings(audio, self)

  _TORCH_MODEL.append(TorchHearModel)
  return TorchHearModel


def _unwrap(model) -> HearModel:
  info = getattr(model, "info", model)
  if not isinstance(info, HearModel):
    raise TypeError(f"expected a model from jepa_jax.hear.load_model, got {type(model)}")
  return info


def _as_numpy(audio) -> tuple[np.ndarray, Any]:
  """float32 (n_sounds, n_samples) on the host, and the torch device to return to (None
  for numpy input)."""
  torch = sys.modules.get("torch")
  device = None
  if torch is not None and isinstance(audio, torch.Tensor):
    if not audio.is_floating_point():
      raise ValueError(f"audio must be float samples in [-1, 1], got torch {audio.dtype}")
    device = audio.device
    audio = audio.detach().to("cpu", torch.float32).numpy()
  else:
    audio = np.asarray(audio)
    if not np.issubdtype(audio.dtype, np.floating):
      raise ValueError(f"audio must be float samples in [-1, 1], got dtype {audio.dtype}; "
                       f"scale integer PCM first (int16: divide by 32768)")
  if audio.ndim != 2:
    raise ValueError(f"audio must have shape (n_sounds, n_samples), got shape {audio.shape}"
                     + ("; one sound: pass audio[None]" if audio.ndim == 1 else ""))
  audio = audio.astype(np.float32, copy=False)
  finite = np.isfinite(audio)
  if not finite.all():
    bad = np.flatnonzero(~finite.all(axis=1))
    raise ValueError(f"audio has NaN or inf samples (sound(s) {bad[:10].tolist()}"
                     f"{' ...' if len(bad) > 10 else ''})")
  return audio, device


def _out(x: np.ndarray, device):
  if device is None:
    return x
  import torch  # lazy: an optional extra, present when the input was a tensor
  return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def _inputs(model: HearModel, audio: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Each sound as (n_mels, T) encoder input and its pad (task_data.pad_value, (n_mels,
  1)); short sounds zero-padded to the minimum."""
  need = max(model.frontend.min_samples, 1)
  if audio.shape[1] < need:
    audio = np.pad(audio, ((0, 0), (0, need - audio.shape[1])))
  mels = [model.frontend.logmel(wave) for wave in audio]
  return ([task_data.normalize(mel, model.frontend_meta) for mel in mels],
          [task_data.pad_value(model.frontend_meta, mel) for mel in mels])


def _groups(n_sounds: int, frames_each: int):
  size = max(1, _GROUP_FRAMES // max(frames_each, 1))
  for start in range(0, n_sounds, size):
    yield slice(start, min(start + size, n_sounds))


def _pass_embeddings(model, m: HearModel, audio: np.ndarray, passes: int) -> list[np.ndarray]:
  """Per sound and pass j < `passes` (sound-major), the (time patches, D) embeddings of
  the sound's encoder input with its first j * shift_frames frames dropped."""
  if m.params is None:  # a TorchHearModel: its PyTorch encoder on its own device
    return _torch_pass_embeddings(model.audio_encoder, m, audio, passes)
  mels, pads = _inputs(m, audio)
  shifted = [mel[:, j * m.shift_frames:] for mel in mels for j in range(passes)]
  return features.frame_embeddings(m.encoder, m.params, shifted, m.frames,
                                   [pad for pad in pads for _ in range(passes)],
                                   m.batch_size, FREQ_POOL)


def _torch_pass_embeddings(audio_encoder, m: HearModel, audio: np.ndarray,
                           passes: int) -> list[np.ndarray]:
  import torch  # lazy: an optional extra, present for a TorchHearModel
  device = next(audio_encoder.parameters()).device
  with torch.inference_mode():
    x, pad = audio_encoder.encoder_input(torch.from_numpy(audio).to(device))
    per_pass = [audio_encoder.frame_embeddings(x[:, :, j * m.shift_frames:], pad)
                .cpu().numpy() for j in range(passes)]
  return [per_pass[j][s] for s in range(len(audio)) for j in range(passes)]


def get_scene_embeddings(audio, model):
  """(n_sounds, scene_embedding_size) float32: the mean over time of each sound's patch
  embeddings (features.clip_embeddings with freq_pool='concat')."""
  m = _unwrap(model)
  audio, device = _as_numpy(audio)
  out = np.zeros((audio.shape[0], m.scene_embedding_size), np.float32)
  for part in _groups(audio.shape[0], _frames(m.frontend, audio.shape[1])):
    out[part] = [f.mean(0) for f in _pass_embeddings(model, m, audio[part], 1)]
  return _out(out, device)


def get_timestamp_embeddings(audio, model):
  """((n_sounds, n_timestamps, timestamp_embedding_size) float32, (n_sounds, n_timestamps)
  float64 milliseconds): embedding k * K + j is patch k of the pass with j * patch_frames
  / K leading frames dropped; timestamps are their centres, model.timestamp_hop_ms apart."""
  m = _unwrap(model)
  audio, device = _as_numpy(audio)
  n_sounds, n_samples = audio.shape
  first, step, count = timestamp_grid(m.frontend, m.patch_frames, m.passes, n_samples)
  # Exact integers, one division each: timestamp i never accumulates rounding.
  ms = (first + step * np.arange(count, dtype=np.int64)) * 1000 / (2 * m.sample_rate)
  passes = min(m.passes, count)  # a pass whose first timestamp is past the end is skipped
  out = np.zeros((n_sounds, count, m.timestamp_embedding_size), np.float32)
  for part in _groups(n_sounds, passes * _frames(m.frontend, n_samples)):
    per_pass = _pass_embeddings(model, m, audio[part], passes)
    for s in range(part.stop - part.start):
      for j in range(passes):
        idx = np.arange(j, count, m.passes)
        out[part.start + s, idx] = per_pass[s * passes + j][:len(idx)]
  timestamps = np.broadcast_to(ms, (n_sounds, count)).copy()
  return _out(out, device), _out(timestamps, device)


__all__ = ["HearModel", "load_model", "get_scene_embeddings", "get_timestamp_embeddings",
           "passes_for", "timestamp_grid", "frame_centre2"]
