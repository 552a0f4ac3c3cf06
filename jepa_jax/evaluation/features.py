"""Clip embeddings from a frozen encoder, as the Audio-JEPA / EVAR linear evaluation
computes them: the clip's log-mel is cut into model-length chunks, each chunk is
encoded without masking, the frequency tokens of each time step are concatenated
(5 x 768 = 3840-d for ViT-B on 80 mels) and the result is averaged over every time
step of the clip that holds audio (padding of the last chunk is left out). The
frequency tokens can be averaged instead (`freq_pool='mean'`, width-d embeddings), and
the time steps' standard deviation appended to their mean (`time_pool='mean_std'`, twice
the width: as the log-mel and MFCC baselines of benchmarks/real_audio pool).

The tokens are the encoder's output: its last block through its final LayerNorm. With
`layers` (block numbers from 1) they are the average of those blocks' outputs, each
through the same final LayerNorm (without it the deeper blocks' larger residual stream
would outweigh the others): on the real-audio development tasks a JEPA encoder's early
blocks keep what its last ones drop (docs/results.md, "Which block to probe").
"""
import functools
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax.models import layers as layers_lib
from jepa_jax.models import patches as patches_lib
from jepa_jax.models import vit
from jepa_jax.parallel import memory


def pads_per_clip(pad_value, count: int) -> list:
  """`pad_value` as one value per clip: a list (or tuple) holds one per clip already
  (task_data.pad_value of each clip); anything else (a scalar or an (n_mels, 1) array)
  pads every clip."""
  if isinstance(pad_value, (list, tuple)):
    if len(pad_value) != count:
      raise ValueError(f"{len(pad_value)} pad values for {count} clips")
    return list(pad_value)
  return [pad_value] * count


def chunk(mels: list[np.ndarray], frames: int, patch_frames: int, pad_value):
  """Split each (n_mels, T) clip into chunks of `frames`.

  `pad_value`: the last chunk's padding, a list with one per clip (task_data.pad_value
  of each clip, as task_data.load_clips gives them), or one for all: a scalar or one
  value per mel bin, (n_mels, 1).
  Returns chunks (C, n_mels, frames), owner clip of each chunk (C,), and the number of
  time patches of each chunk that contain real frames (C,).
  """
  chunks, owner, cols = [], [], []
  for i, (mel, pad) in enumerate(zip(mels, pads_per_clip(pad_value, len(mels)))):
    total = mel.shape[1]
    n = max(1, math.ceil(total / frames))
    padded = np.full((mel.shape[0], n * frames), pad, np.float32)
    padded[:, :total] = mel
    for j in range(n):
      chunks.append(padded[:, j * frames:(j + 1) * frames])
      owner.append(i)
      cols.append(math.ceil(max(min(frames, total - j * frames), 1) / patch_frames))
  return np.stack(chunks), np.asarray(owner), np.asarray(cols)


def padded_batches(rows: np.ndarray, batch_size: int):
  """(batch, real rows in it) over `rows`; the last batch is padded with zeros to
  `batch_size` instead of compiling a new shape."""
  for start in range(0, len(rows), batch_size):
    part = rows[start:start + batch_size]
    n = len(part)
    if n < batch_size:
      part = np.concatenate([part, np.zeros((batch_size - n,) + part.shape[1:], part.dtype)])
    yield part, n


FREQ_POOLS = ("concat", "mean")  # how the frequency tokens of one time step are combined
TIME_POOLS = ("mean", "mean_std")  # how a clip's time steps are combined


def check_time_pool(time_pool: str) -> None:
  if time_pool not in TIME_POOLS:
    raise ValueError(f"unknown time_pool {time_pool!r}; known: {', '.join(TIME_POOLS)}")


def pooled_over_time(steps: np.ndarray, time_pool: str) -> np.ndarray:
  """A clip's (T, D) time steps as one vector: their mean (D,), or mean then standard
  deviation (2D,)."""
  check_time_pool(time_pool)
  mean = steps.mean(0)
  return mean if time_pool == "mean" else np.concatenate([mean, steps.std(0)])


def embedding_size(encoder: vit.Encoder, freq_pool: str) -> int:
  return encoder.width * (encoder.grid[0] if freq_pool == "concat" else 1)


def blocks_to_average(spec, depth: int) -> tuple[int, ...]:
  """The block numbers (1..depth, sorted) a `layers` spec names: numbers, or 'all'.
  () stands for the encoder's output, so the last block alone is () too."""
  chosen = set()
  for item in spec:
    item = str(item).strip()
    if item == "all":
      chosen.update(range(1, depth + 1))
    elif item.isdigit() and 1 <= int(item) <= depth:
      chosen.add(int(item))
    else:
      raise ValueError(f"layers: {item!r} is not a block of this {depth}-block encoder; "
                       f"give block numbers 1-{depth} or 'all'")
  return () if chosen in (set(), {depth}) else tuple(sorted(chosen))


def _is_block(module, method_name: str) -> bool:
  return method_name == "__call__" and (module.name or "").startswith("block_")


def encoded_tokens(encoder: vit.Encoder, params, patches, layers: tuple[int, ...] = ()):
  """(B, tokens, D): the encoder's output, or the mean of the outputs of blocks `layers`
  (blocks_to_average) each through the final LayerNorm."""
  if not layers:
    return encoder.apply({"params": params}, patches)
  # The blocks one by one (not scanned), so that each block's output can be captured.
  plain, params = encoder.clone(scan=False, remat="none"), vit.unstack_layers(params)
  _, state = plain.apply({"params": params}, patches, capture_intermediates=_is_block,
                         mutable=["intermediates"])
  outputs = state["intermediates"]["transformer"]
  norm = layers_lib.layer_norm()
  first = 1 if encoder.class_token else 0  # the class token is not an output row
  return jnp.mean(jnp.stack([
      norm.apply({"params": params["transformer"]["norm"]},
                 outputs[f"block_{k - 1}"]["__call__"][0][:, first:]) for k in layers]), 0)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _time_steps(encoder: vit.Encoder, params, chunks, freq_pool: str, layers: tuple[int, ...]):
  """(C, time patches, D): each time step's frequency tokens, concatenated or averaged."""
  tokens = encoded_tokens(encoder, params, patches_lib.patchify(chunks, encoder.patch_shape),
                          layers)
  gf, gt = encoder.grid
  z = tokens.reshape(chunks.shape[0], gf, gt, -1).transpose(0, 2, 1, 3).astype(jnp.float32)
  return z.reshape(chunks.shape[0], gt, -1) if freq_pool == "concat" else z.mean(2)


_COMPILED: dict = {}  # (encoder, parameter shapes, chunk shape, batch, pooling) -> (b, fn)


def fitted_time_steps(encoder: vit.Encoder, params, chunk_shape: tuple[int, int],
                      batch_size: int, freq_pool: str, layers: tuple[int, ...] = ()
                      ) -> tuple[int, object]:
  """(b, compiled _time_steps for b chunks of `chunk_shape`): b = `batch_size`, or a
  smaller batch that fits the device's memory (memory.fitted_batch; said once on stderr).
  Cached: one choice and compile per encoder, shapes and batch."""
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  key = (encoder, str(shapes), chunk_shape, batch_size, freq_pool, layers)
  if key not in _COMPILED:
    def compile_at(b: int):
      chunks = jax.ShapeDtypeStruct((b, *chunk_shape), jnp.float32)
      return _time_steps.lower(encoder, shapes, chunks, freq_pool, layers).compile()

    b, compiled = memory.fitted_batch(compile_at, batch_size, jax.local_devices()[:1],
                                      "embedding one chunk")
    if b < batch_size:
      print(f"memory: embedding {b} chunks at a time, not {batch_size}: {batch_size} would "
            f"need more than the device has", file=sys.stderr, flush=True)
    _COMPILED[key] = (b, compiled)
  return _COMPILED[key]


def frame_embeddings(encoder: vit.Encoder, params, mels: list[np.ndarray], frames: int,
                     pad_value, batch_size: int = 64, freq_pool: str = "concat",
                     layers: tuple[int, ...] = ()) -> list[np.ndarray]:
  """Per clip, (time patches holding audio, D) embeddings, one per time patch of the
  `frames`-long chunks laid end to end, the last padded with `pad_value` (as `chunk`:
  per clip, or one for all). Batches of chunks are padded to `batch_size`, or
  a smaller batch that fits the device: one compiled shape whatever the clips'
  lengths, and the same embeddings whatever the batch."""
  if freq_pool not in FREQ_POOLS:
    raise ValueError(f"unknown freq_pool {freq_pool!r}; known: {', '.join(FREQ_POOLS)}")
  chunks, owner, cols = chunk(mels, frames, encoder.patch_shape[1], pad_value)
  b, time_steps = fitted_time_steps(encoder, params, chunks.shape[1:], batch_size, freq_pool,
                                    layers)
  steps = np.concatenate([np.asarray(time_steps(params, jnp.asarray(part)))[:n]
                          for part, n in padded_batches(chunks, b)])
  return [np.concatenate([steps[c, :cols[c]] for c in np.flatnonzero(owner == i)])
          for i in range(len(mels))]


def clip_embeddings(encoder: vit.Encoder, params, mels: list[np.ndarray], frames: int,
                    pad_value, batch_size: int = 64, freq_pool: str = "concat",
                    layers: tuple[int, ...] = (), time_pool: str = "mean") -> np.ndarray:
  """(num clips, D) embeddings: `frame_embeddings` pooled over time (`pooled_over_time`)."""
  check_time_pool(time_pool)  # before any encoding
  return np.stack([pooled_over_time(f, time_pool) for f in frame_embeddings(
      encoder, params, mels, frames, pad_value, batch_size, freq_pool, layers)]
                  ).astype(np.float32)


def mean_logmel(mels: list[np.ndarray], time_pool: str = "mean") -> np.ndarray:
  """Baseline features: the clip's log-mel pooled over time (n_mels-d; 2 n_mels with
  its standard deviation)."""
  return np.stack([pooled_over_time(m.T, time_pool) for m in mels]).astype(np.float32)
