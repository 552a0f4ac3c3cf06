"""A jepa_jax encoder as a PyTorch module, front end included: audio in, embeddings out.

Needs torch and NumPy only (no JAX, librosa or jepa_jax training code): everything it
computes comes from the file `python -m jepa_jax.convert export` writes (read it with
`load`), or from an export in memory (jepa_jax.convert.export_torch.build_module).

    model = torch_encoder.load("encoder.pt")        # an AudioEncoder, eval mode
    frames = model(audio)                           # (B, time patches, D), audio (B, samples)
    scene = model.scene_embeddings(audio)           # (B, D)
    xares = torch_encoder.XaresEncoder(model)       # X-ARES' interface

The file is the encoder's timm state dict plus an entry METADATA_KEY holding the
configuration, front-end record, filterbank and window (convert/export_torch.py).

What it computes is what jepa_jax's evaluation computes (evaluation/features.py):

  front end   the export's frontend.json recipe (data_pipelines/frontends.py) in float64:
              ln_mel / db_mel: centred STFT (reflect padding as NumPy pads, so sounds
              shorter than half a window work as with librosa), periodic Hann of
              win_length centred in n_fft, power, the mel filterbank librosa gave at
              export time (a buffer), ln(mel + eps) or dB clamped at the clip max - top_db;
              kaldi_fbank: snip-edges frames, DC removal, pre-emphasis, Kaldi's Hanning,
              n_fft-point FFT, Kaldi mel banks, ln(max(mel, floor)). Sounds shorter than
              the recipe's minimum are zero-padded to it (as jepa_jax.hear does).
  normalise   (features - mean) / std, then the learned per-bin scale and shift if any.
  chunks      the sound's frames cut into chunks of the training length `frames`, the
              last padded with the sound's pad value (digital silence as encoder input).
  encoder     timm's VisionTransformer over (1, mels, frames) images, keys as timm names
              them: patch_embed.proj (a convolution with the patch as its stride),
              cls_token (optional) before the patches, pos_embed (1, [1 +] patches, D)
              added to them (the class token's row, when there is one, first), pre-norm
              blocks (LayerNorm eps 1e-6, exact GELU), final norm; the class token's
              output is dropped.
  pooling     per time patch, the frequency tokens concatenated (freq_pool 'concat',
              D = grid_freq * width) or averaged ('mean', D = width); the time patches
              holding audio kept; the scene embedding is their mean.
"""
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional

FRONT_END_KINDS = ("ln_mel", "db_mel", "kaldi_fbank")
METADATA_KEY = "jepa_jax"  # the file's entry beside the state dict (convert/export_torch.py)
FREQ_POOLS = ("concat", "mean")
LN_EPS = 1e-6  # models/layers.LN_EPS, timm's ViT


# --- front end ---------------------------------------------------------------------------


def reflect_indices(n: int, pad: int) -> torch.Tensor:
  """Indices of a length-n signal reflect-padded by `pad` on each side, as NumPy's
  mode='reflect' pads (repeatedly when pad >= n, which torch's reflect padding refuses)."""
  p = torch.arange(-pad, n + pad)
  if n == 1:
    return torch.zeros_like(p)
  period = 2 * (n - 1)
  i = torch.remainder(p, period)
  return torch.where(i >= n, period - i, i)


class LogMel(nn.Module):
  """(B, samples) float waveforms -> (B, n_mels, frames) float32 front-end features, and
  the encoder input made of them (`normalise`, `pad_value`)."""

  def __init__(self, frontend: dict, normalization: dict, filterbank, window,
               input_norm: dict | None = None):
    super().__init__()
    kind = frontend["kind"]
    if kind not in FRONT_END_KINDS:
      raise ValueError(f"front end kind {kind!r} has no PyTorch version; known: "
                       f"{', '.join(FRONT_END_KINDS)}")
    self.frontend = dict(frontend)
    self.kind = kind
    self.sample_rate = int(frontend["sample_rate"])
    self.n_fft, self.hop_length = int(frontend["n_fft"]), int(frontend["hop_length"])
    self.win_length, self.n_mels = int(frontend["win_length"]), int(frontend["n_mels"])
    self.mean, self.std = float(normalization["mean"]), float(normalization["std"])
    self.register_buffer("filterbank", torch.as_tensor(filterbank, dtype=torch.float64))
    self.register_buffer("window", torch.as_tensor(window, dtype=torch.float64))
    if tuple(self.filterbank.shape) != (self.n_mels, self.n_fft // 2 + 1):
      raise ValueError(f"filterbank of shape {tuple(self.filterbank.shape)}; the front end "
                       f"needs ({self.n_mels}, {self.n_fft // 2 + 1})")
    scale, shift = (np.ones(self.n_mels), np.zeros(self.n_mels)) if input_norm is None else (
        input_norm["scale"], input_norm["shift"])
    self.register_buffer("input_scale", torch.as_tensor(scale, dtype=torch.float64)[:, None])
    self.register_buffer("input_shift", torch.as_tensor(shift, dtype=torch.float64)[:, None])

  @property
  def min_samples(self) -> int:
    return self.win_length if self.kind == "kaldi_fbank" else 1

  @property
  def floor(self) -> float:
    """The feature of digital silence (before any clamp relative to the clip)."""
    f = self.frontend
    if self.kind == "ln_mel":
      return math.log(f["log_eps"])
    if self.kind == "db_mel":
      return 10.0 * math.log10(f["amin"])
    return math.log(f["log_floor"])

  def num_frames(self, num_samples: int) -> int:
    n = max(num_samples, self.min_samples)
    if self.kind == "kaldi_fbank":
      return 1 + (n - self.win_length) // self.hop_length
    return 1 + (n + 2 * (self.n_fft // 2) - self.n_fft) // self.hop_length

  def power_spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
    """(B, samples) float64 -> (B, n_fft // 2 + 1, frames) float64 power."""
    if self.kind == "kaldi_fbank":
      return self._kaldi_power(wave)
    pad = self.n_fft // 2
    padded = wave[:, reflect_indices(wave.shape[1], pad).to(wave.device)]
    spec = torch.stft(padded, self.n_fft, self.hop_length, self.n_fft, self.window,
                      center=False, return_complex=True)
    return spec.real**2 + spec.imag**2

  def _kaldi_power(self, wave: torch.Tensor) -> torch.Tensor:
    p, length = float(self.frontend["preemphasis"]), self.win_length
    wave = wave - wave.mean(dim=1, keepdim=True)
    frames = wave.unfold(1, length, self.hop_length)        # snip edges: (B, T, win)
    frames = frames - frames.mean(dim=2, keepdim=True)       # DC removal per frame
    emphasised = torch.cat([(1 - p) * frames[..., :1],
                            frames[..., 1:] - p * frames[..., :-1]], dim=2)
    spec = torch.fft.rfft(emphasised * self.window[:length], n=self.n_fft, dim=2)
    return (spec.real**2 + spec.imag**2).transpose(1, 2)

  def compress(self, mel_power: torch.Tensor) -> torch.Tensor:
    f = self.frontend
    if self.kind == "ln_mel":
      return torch.log(mel_power + f["log_eps"])
    if self.kind == "kaldi_fbank":
      return torch.log(torch.clamp(mel_power, min=f["log_floor"]))
    db = 10.0 * torch.log10(torch.clamp(mel_power, min=f["amin"]))
    return torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - f["top_db"])

  def forward(self, audio: torch.Tensor) -> torch.Tensor:
    """(B, samples) -> (B, n_mels, frames) float32 features (frontends.FrontEnd.logmel)."""
    wave = audio.to(torch.float64)
    if wave.shape[1] < self.min_samples:
      wave = functional.pad(wave, (0, self.min_samples - wave.shape[1]))
    power = self.power_spectrogram(wave)
    return self.compress(torch.matmul(self.filterbank, power)).to(torch.float32)

  def normalise(self, features: torch.Tensor) -> torch.Tensor:
    """Features (..., n_mels, T) -> encoder input, as task_data.normalize."""
    x = (features.to(torch.float64) - self.mean) / self.std
    return (x * self.input_scale + self.input_shift).to(torch.float32)

  def pad_value(self, features: torch.Tensor) -> torch.Tensor:
    """(B, n_mels, 1) encoder input of digital silence after each clip (task_data.pad_value):
    the floor, or for dB features the clip max - top_db where that is higher."""
    value = torch.full((features.shape[0], 1, 1), self.floor, dtype=torch.float64,
                       device=features.device)
    if self.kind == "db_mel":
      top = features.to(torch.float64).amax(dim=(1, 2), keepdim=True) - self.frontend["top_db"]
      value = torch.maximum(value, top)
    return self.normalise(value.expand(-1, self.n_mels, 1))


# --- encoder (timm's VisionTransformer layout) --------------------------------------------


class PatchEmbed(nn.Module):
  def __init__(self, patch_shape: tuple[int, int], width: int):
    super().__init__()
    self.proj = nn.Conv2d(1, width, patch_shape, stride=patch_shape)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """(B, mels, frames) -> (B, patches, width), frequency-major as timm flattens."""
    return self.proj(x[:, None]).flatten(2).transpose(1, 2)


class Attention(nn.Module):
  def __init__(self, width: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.qkv = nn.Linear(width, 3 * width)
    self.proj = nn.Linear(width, width)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, n, width = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, width // self.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    out = functional.scaled_dot_product_attention(q, k, v)
    return self.proj(out.transpose(1, 2).reshape(b, n, width))


class Mlp(nn.Module):
  def __init__(self, width: int, hidden: int):
    super().__init__()
    self.fc1 = nn.Linear(width, hidden)
    self.fc2 = nn.Linear(hidden, width)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.fc2(functional.gelu(self.fc1(x)))


class Block(nn.Module):
  """Pre-norm: x + attn(LN(x)), then x + mlp(LN(x))."""

  def __init__(self, width: int, num_heads: int, mlp_dim: int):
    super().__init__()
    self.norm1 = nn.LayerNorm(width, eps=LN_EPS)
    self.attn = Attention(width, num_heads)
    self.norm2 = nn.LayerNorm(width, eps=LN_EPS)
    self.mlp = Mlp(width, mlp_dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


ENCODER_FIELDS = ("grid", "patch_shape", "width", "depth", "num_heads", "mlp_dim",
                  "class_token")


class VisionTransformer(nn.Module):
  """(B, mels, frames) encoder input -> (B, patches, width) tokens after the final norm,
  frequency-major; parameters named as timm's VisionTransformer(in_chans=1,
  class_token=class_token, num_classes=0) (jepa_jax.convert.timm_vit.timm_kwargs)."""

  def __init__(self, grid, patch_shape, width: int, depth: int, num_heads: int,
               mlp_dim: int, class_token: bool = False):
    super().__init__()
    if width % num_heads:
      raise ValueError(f"width {width} is not divisible by {num_heads} heads")
    self.grid, self.patch_shape = tuple(grid), tuple(patch_shape)
    self.width = width
    self.patch_embed = PatchEmbed(self.patch_shape, width)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if class_token else None
    tokens = self.grid[0] * self.grid[1] + (1 if class_token else 0)
    self.pos_embed = nn.Parameter(torch.zeros(1, tokens, width))
    self.blocks = nn.ModuleList(Block(width, num_heads, mlp_dim) for _ in range(depth))
    self.norm = nn.LayerNorm(width, eps=LN_EPS)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.patch_embed(x)
    if self.cls_token is not None:
      x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    x = x + self.pos_embed
    for block in self.blocks:
      x = block(x)
    x = self.norm(x)
    return x[:, 1:] if self.cls_token is not None else x


# --- the whole model -------------------------------------------------------------------------


class AudioEncoder(nn.Module):
  """Front end + encoder + jepa_jax's chunking and pooling. `encoder` holds the timm-named
  parameters, `frontend` the filterbank and window buffers."""

  def __init__(self, encoder_config: dict, frontend_meta: dict, filterbank, window,
               freq_pool: str = "concat", batch_size: int = 64):
    super().__init__()
    if freq_pool not in FREQ_POOLS:
      raise ValueError(f"unknown freq_pool {freq_pool!r}; known: {', '.join(FREQ_POOLS)}")
    self.encoder = VisionTransformer(**{k: encoder_config[k] for k in ENCODER_FIELDS})
    self.frontend = LogMel(frontend_meta["frontend"], frontend_meta["normalization"],
                           filterbank, window, frontend_meta.get("input_norm"))
    self.frames = int(frontend_meta["frames"])
    self.freq_pool = freq_pool
    self.batch_size = batch_size
    if self.frames % self.encoder.patch_shape[1] or \
        self.frontend.n_mels != self.encoder.grid[0] * self.encoder.patch_shape[0]:
      raise ValueError(f"{self.frontend.n_mels} mels x {self.frames} frames do not make the "
                       f"encoder's {self.encoder.grid} grid of {self.encoder.patch_shape} "
                       f"patches")

  @property
  def sample_rate(self) -> int:
    return self.frontend.sample_rate

  @property
  def patch_frames(self) -> int:
    return self.encoder.patch_shape[1]

  @property
  def embedding_size(self) -> int:
    return self.encoder.width * (self.encoder.grid[0] if self.freq_pool == "concat" else 1)

  def encoder_input(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, samples) -> encoder input (B, n_mels, frames) and each clip's pad (B, n_mels, 1)."""
    features = self.frontend(audio)
    return self.frontend.normalise(features), self.frontend.pad_value(features)

  def time_steps(self, chunks: torch.Tensor) -> torch.Tensor:
    """(C, n_mels, frames) chunks -> (C, time patches, D) (features._time_steps)."""
    tokens = self.encoder(chunks)
    gf, gt = self.encoder.grid
    z = tokens.reshape(chunks.shape[0], gf, gt, -1).transpose(1, 2)
    return z.reshape(chunks.shape[0], gt, -1) if self.freq_pool == "concat" else z.mean(2)

  def frame_embeddings(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """Encoder input (B, n_mels, T) of equally long clips and their pads (B, n_mels, 1) ->
    (B, time patches holding audio, D): chunks of `frames` laid end to end, the last
    padded (features.frame_embeddings)."""
    b, n_mels, total = x.shape
    n = max(1, math.ceil(total / self.frames))
    padded = pad.expand(b, n_mels, n * self.frames).clone()
    padded[:, :, :total] = x
    chunks = padded.reshape(b, n_mels, n, self.frames).permute(0, 2, 1, 3).reshape(
        b * n, n_mels, self.frames)
    steps = torch.cat([self.time_steps(chunks[i:i + self.batch_size])
                       for i in range(0, len(chunks), self.batch_size)])
    keep = math.ceil(max(total, 1) / self.patch_frames)  # patches with real frames
    return steps.reshape(b, n * self.encoder.grid[1], -1)[:, :keep]

  def forward(self, audio: torch.Tensor) -> torch.Tensor:
    """(B, samples) float waveforms at `sample_rate` -> (B, time patches, D)."""
    return self.frame_embeddings(*self.encoder_input(audio))

  def scene_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
    """(B, D): the mean over time of `forward` (features.clip_embeddings)."""
    return self(audio).mean(1)


class XaresEncoder(nn.Module):
  """X-ARES' encoder interface over an AudioEncoder: `sampling_rate`, `output_dim`,
  `hop_size_in_ms` (one embedding per time patch), forward(audio (B, samples) or
  (samples,)) -> (B, time patches, output_dim), without gradients."""

  def __init__(self, model: AudioEncoder):
    super().__init__()
    self.model = model.eval()
    self.sampling_rate = model.sample_rate
    self.output_dim = model.embedding_size
    self.hop_size_in_ms = model.patch_frames * model.frontend.hop_length * 1000 / \
        model.sample_rate

  def forward(self, audio: torch.Tensor) -> torch.Tensor:
    if audio.ndim == 1:
      audio = audio[None]
    with torch.inference_mode():
      return self.model(audio)


# --- the file ------------------------------------------------------------------------------


def from_file_contents(contents: dict, freq_pool: str = "concat",
                       batch_size: int = 64) -> AudioEncoder:
  """The AudioEncoder that an export file's contents describe (the timm state dict plus
  its METADATA_KEY entry), in eval mode."""
  meta = contents.get(METADATA_KEY)
  missing = [k for k in ("encoder", "frontend_meta", "filterbank", "window")
             if not isinstance(meta, dict) or k not in meta]
  if missing:
    raise ValueError(f"not a jepa_jax PyTorch export: no {METADATA_KEY!r} entry with "
                     f"{', '.join(missing)}; write one with python -m jepa_jax.convert export")
  model = AudioEncoder(meta["encoder"], meta["frontend_meta"], meta["filterbank"],
                       meta["window"], freq_pool, batch_size)
  model.encoder.load_state_dict({k: v for k, v in contents.items() if k != METADATA_KEY},
                                strict=True)
  return model.eval()


def load(path, freq_pool: str = "concat", batch_size: int = 64,
         map_location="cpu") -> AudioEncoder:
  """The AudioEncoder in a file `python -m jepa_jax.convert export` wrote (read with
  weights_only=True: tensors and plain values only)."""
  contents = torch.load(path, map_location=map_location, weights_only=True)
  if not isinstance(contents, dict):
    raise ValueError(f"{path} holds a {type(contents).__name__}, not a jepa_jax PyTorch "
                     f"export; write one with python -m jepa_jax.convert export")
  return from_file_contents(contents, freq_pool, batch_size)
