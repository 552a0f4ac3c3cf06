"""The parameter layout shared by timm's VisionTransformer and the audio ViTs built on it
(AudioMAE, M2D, Dasheng's blocks), in both directions, against models/vit.Encoder's.

Per block, PyTorch `blocks.{i}.` -> ours `transformer/block_{i}/`:
  norm1.{weight,bias}           -> norm1/{scale,bias}
  attn.qkv.{weight,bias}        -> attn/qkv/{kernel (width, 3, heads, head_dim), bias}
                                   (timm splits the 3 * width outputs as (3, heads, head_dim))
  attn.proj.{weight,bias}       -> attn/out/{kernel (heads, head_dim, width), bias}
  norm2, mlp.fc1, mlp.fc2       -> norm2, mlp/fc1, mlp/fc2 (Linear weights transposed)
  ls1.gamma, ls2.gamma          -> folded into attn/out and mlp/fc2 (layer scale multiplies
                                   their output: gamma * (W x + b) = (gamma W) x + gamma b)
A checkpoint without a qkv bias (timm qkv_bias=False) gets a zero one.

Tokens: ours are frequency-major, token n = (f, t) = divmod(n, T) (models/positions.py).
An input laid out (frequency, time) (M2D, Dasheng, timm over a (mels, frames) image)
gives the same order; one laid out (time, frequency) (AudioMAE's (1024, 128)) gives
token n = (t, f) = divmod(n, F), reordered here.
"""
import numpy as np

from jepa_jax.convert.safe_load import CheckpointError
from jepa_jax.models import positions

ORIENTATIONS = ("freq_time", "time_freq")  # the reference's input: (mels, frames) or transposed

# Per-block keys every timm-style block has (the qkv bias and layer scales are optional).
BLOCK_KEYS = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight",
              "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight",
              "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")
OPTIONAL_BLOCK_KEYS = ("attn.qkv.bias", "ls1.gamma", "ls2.gamma")


def block_count(state: dict, prefix: str = "blocks.") -> int:
  """1 + the highest block index under `prefix` (0 when there is none)."""
  found = [int(k[len(prefix):].split(".")[0]) for k in state
           if k.startswith(prefix) and k[len(prefix):].split(".")[0].isdigit()]
  return max(found) + 1 if found else 0


def missing_keys(state: dict, required) -> list[str]:
  return [k for k in required if k not in state]


def required_block_keys(depth: int, prefix: str = "blocks.") -> list[str]:
  return [f"{prefix}{i}.{k}" for i in range(depth) for k in BLOCK_KEYS]


def check_shapes(state: dict, expected: dict[str, tuple]) -> None:
  """One line listing every key whose shape differs from `expected`."""
  wrong = [f"{k} {tuple(state[k].shape)} (expected {shape})" for k, shape in expected.items()
           if k in state and tuple(state[k].shape) != tuple(shape)]
  if wrong:
    raise CheckpointError(f"wrong shapes: {'; '.join(wrong[:6])}"
                          + (f" and {len(wrong) - 6} more" if len(wrong) > 6 else ""))


def block_shapes(depth: int, width: int, mlp_dim: int, prefix: str = "blocks.") -> dict:
  per = {"norm1.weight": (width,), "norm1.bias": (width,), "attn.qkv.weight": (3 * width, width),
         "attn.qkv.bias": (3 * width,), "attn.proj.weight": (width, width),
         "attn.proj.bias": (width,), "norm2.weight": (width,), "norm2.bias": (width,),
         "mlp.fc1.weight": (mlp_dim, width), "mlp.fc1.bias": (mlp_dim,),
         "mlp.fc2.weight": (width, mlp_dim), "mlp.fc2.bias": (width,),
         "ls1.gamma": (width,), "ls2.gamma": (width,)}
  return {f"{prefix}{i}.{k}": s for i in range(depth) for k, s in per.items()}


def _f32(a) -> np.ndarray:
  return np.asarray(a, np.float32)


def norm_to_jax(state: dict, name: str) -> dict:
  return {"scale": _f32(state[f"{name}.weight"]), "bias": _f32(state[f"{name}.bias"])}


def block_to_jax(state: dict, prefix: str, num_heads: int) -> dict:
  """Our block's parameters from the keys `prefix`* of a timm-style block."""
  w_qkv = _f32(state[prefix + "attn.qkv.weight"])
  width = w_qkv.shape[1]
  head_dim = width // num_heads
  b_qkv = _f32(state.get(prefix + "attn.qkv.bias", np.zeros(3 * width, np.float32)))
  w_out, b_out = _f32(state[prefix + "attn.proj.weight"]), _f32(state[prefix + "attn.proj.bias"])
  w_fc2, b_fc2 = _f32(state[prefix + "mlp.fc2.weight"]), _f32(state[prefix + "mlp.fc2.bias"])
  if prefix + "ls1.gamma" in state:
    gamma = _f32(state[prefix + "ls1.gamma"])
    w_out, b_out = gamma[:, None] * w_out, gamma * b_out
  if prefix + "ls2.gamma" in state:
    gamma = _f32(state[prefix + "ls2.gamma"])
    w_fc2, b_fc2 = gamma[:, None] * w_fc2, gamma * b_fc2
  return {
      "norm1": norm_to_jax(state, prefix + "norm1"),
      "attn": {
          "qkv": {"kernel": w_qkv.T.reshape(width, 3, num_heads, head_dim),
                  "bias": b_qkv.reshape(3, num_heads, head_dim)},
          "out": {"kernel": w_out.T.reshape(num_heads, head_dim, width), "bias": b_out}},
      "norm2": norm_to_jax(state, prefix + "norm2"),
      "mlp": {"fc1": {"kernel": _f32(state[prefix + "mlp.fc1.weight"]).T,
                      "bias": _f32(state[prefix + "mlp.fc1.bias"])},
              "fc2": {"kernel": w_fc2.T, "bias": b_fc2}},
  }


def block_from_jax(block: dict, prefix: str) -> dict:
  """The timm keys (qkv bias on, no layer scale) of one of our blocks; exact inverse of
  block_to_jax on such keys."""
  qkv, out = block["attn"]["qkv"], block["attn"]["out"]
  width = qkv["kernel"].shape[0]
  return {
      prefix + "norm1.weight": block["norm1"]["scale"],
      prefix + "norm1.bias": block["norm1"]["bias"],
      prefix + "attn.qkv.weight": np.asarray(qkv["kernel"]).reshape(width, -1).T,
      prefix + "attn.qkv.bias": np.asarray(qkv["bias"]).reshape(-1),
      prefix + "attn.proj.weight": np.asarray(out["kernel"]).reshape(-1, width).T,
      prefix + "attn.proj.bias": out["bias"],
      prefix + "norm2.weight": block["norm2"]["scale"],
      prefix + "norm2.bias": block["norm2"]["bias"],
      prefix + "mlp.fc1.weight": np.asarray(block["mlp"]["fc1"]["kernel"]).T,
      prefix + "mlp.fc1.bias": block["mlp"]["fc1"]["bias"],
      prefix + "mlp.fc2.weight": np.asarray(block["mlp"]["fc2"]["kernel"]).T,
      prefix + "mlp.fc2.bias": block["mlp"]["fc2"]["bias"],
  }


def patch_shape_of(conv_weight: np.ndarray, orientation: str) -> tuple[int, int]:
  """(mel bins, frames) of a patch from a (width, 1, kh, kw) convolution."""
  if conv_weight.ndim != 4 or conv_weight.shape[1] != 1:
    raise CheckpointError(f"patch_embed.proj.weight has shape {tuple(conv_weight.shape)}; "
                          f"expected (width, 1, h, w): one input channel (a spectrogram)")
  kh, kw = conv_weight.shape[2:]
  return (kh, kw) if orientation == "freq_time" else (kw, kh)


def patch_kernel_to_jax(conv_weight: np.ndarray, orientation: str) -> np.ndarray:
  """(width, 1, kh, kw) convolution -> our (pf * pt, width) kernel over (mel, frame)
  row-major patch values."""
  w = _f32(conv_weight)[:, 0]
  if orientation == "time_freq":
    w = w.transpose(0, 2, 1)  # (width, frames, mels) -> (width, mels, frames)
  return w.reshape(w.shape[0], -1).T


def patch_kernel_from_jax(kernel: np.ndarray, patch_shape: tuple[int, int],
                          orientation: str = "freq_time") -> np.ndarray:
  pf, pt = patch_shape
  w = np.asarray(kernel).T.reshape(-1, pf, pt)
  if orientation == "time_freq":
    w = w.transpose(0, 2, 1)
  return w[:, None]


def tokens_to_ours(table: np.ndarray, grid: tuple[int, int], orientation: str) -> np.ndarray:
  """(F * T, D) rows in the reference's token order -> ours (frequency-major)."""
  f, t = grid
  if orientation == "time_freq":
    return table.reshape(t, f, -1).transpose(1, 0, 2).reshape(f * t, -1)
  return table


def tokens_from_ours(table: np.ndarray, grid: tuple[int, int], orientation: str) -> np.ndarray:
  f, t = grid
  if orientation == "time_freq":
    return table.reshape(f, t, -1).transpose(1, 0, 2).reshape(f * t, -1)
  return table


def resize_time(table: np.ndarray, grid: tuple[int, int], time_patches: int,
                notes: list[str]) -> np.ndarray:
  """(F * T, D) in our order -> (F * time_patches, D): the first columns for a shorter
  grid (as M2D and Dasheng trim theirs), linear interpolation along time for a longer one
  (a note says so)."""
  f, t = grid
  if time_patches == t:
    return table
  grid3 = table.reshape(f, t, -1)
  if time_patches < t:
    notes.append(f"positions: the checkpoint's {t} time positions trimmed to the first "
                 f"{time_patches} (as M2D and Dasheng do for shorter inputs)")
    return grid3[:, :time_patches].reshape(f * time_patches, -1)
  # Sample points at the centres of the new cells, in old cell units (align_corners=False).
  x = (np.arange(time_patches) + 0.5) * t / time_patches - 0.5
  x = np.clip(x, 0, t - 1)
  lo = np.floor(x).astype(int)
  hi = np.minimum(lo + 1, t - 1)
  w = (x - lo)[None, :, None]
  out = grid3[:, lo] * (1 - w) + grid3[:, hi] * w
  notes.append(f"positions: the checkpoint's {t} time positions linearly interpolated to "
               f"{time_patches} (timm interpolates bicubically; outputs are not the "
               f"reference's at this length)")
  return out.reshape(f * time_patches, -1).astype(np.float32)


def positions_to_jax(table: np.ndarray, grid: tuple[int, int], fixed: bool) -> tuple[dict, str]:
  """(positions params, model.positions) for a table in our order: our fixed sin-cos when
  the table is exactly it (no parameter: a round trip gives the same tree), else the table
  as a parameter, held fixed or learned."""
  table = _f32(table)
  if table.shape[1] % 4 == 0 and np.array_equal(table, positions.sincos_2d(table.shape[1], grid)):
    return {}, "sincos"
  return {"positions": {"table": table}}, "fixed_table" if fixed else "table"


def position_table_of(params: dict, positions_kind: str, grid: tuple[int, int],
                      width: int) -> np.ndarray:
  """Our encoder's (F * T, width) position table, whatever its kind."""
  if positions_kind == "sincos":
    return positions.sincos_2d(width, grid)
  p = params["positions"]
  if positions_kind == "learned":
    return (np.asarray(p["freq"]) + np.asarray(p["time"])).reshape(-1, width)
  return np.asarray(p["table"], np.float32)
