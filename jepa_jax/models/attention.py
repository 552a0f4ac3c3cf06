"""Attention of the ViT blocks: dense multi-head attention with a key mask, shifted local
windows (Swin-style), and A-JEPA's regularised key masks for fine-tuning."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax.models import layers
from jepa_jax.models.blockwise_attention import blockwise_attention
from jepa_jax.models.splash_attention import splash_attention


@dataclasses.dataclass(frozen=True)
class Windows:
  """Local attention over a (frequency, time) token grid in frequency-major order:
  non-overlapping `size` windows, after a cyclic shift of the grid by `shift` tokens
  towards the origin (Swin); tokens that wrapped across an edge never attend to the
  ones they were not next to."""
  grid: tuple[int, int]
  size: tuple[int, int]
  shift: tuple[int, int] = (0, 0)

  def __post_init__(self):
    for axis, g, w, s in zip(("frequency", "time"), self.grid, self.size, self.shift):
      if w < 1 or g % w:
        raise ValueError(f"attention window {self.size} does not tile the {axis} axis of the "
                         f"token grid {self.grid}; pick a window side dividing {g}")
      if not 0 <= s < w:
        raise ValueError(f"window shift {self.shift} must be in [0, window) = [0, {w}) on the "
                         f"{axis} axis")

  @property
  def count(self) -> int:
    return (self.grid[0] // self.size[0]) * (self.grid[1] // self.size[1])

  def partition(self, x: jnp.ndarray) -> jnp.ndarray:
    """(B, F*T, ...) tokens -> (B * windows, window tokens, ...), windows row-major.
    NumPy in, NumPy out (for the static mask); jax arrays otherwise."""
    xp = np if isinstance(x, np.ndarray) else jnp
    (gf, gt), (wf, wt) = self.grid, self.size
    b, rest = x.shape[0], x.shape[2:]
    x = xp.roll(x.reshape(b, gf, gt, *rest), (-self.shift[0], -self.shift[1]), axis=(1, 2))
    x = x.reshape(b, gf // wf, wf, gt // wt, wt, *rest).swapaxes(2, 3)
    return x.reshape(b * self.count, wf * wt, *rest)

  def merge(self, x: jnp.ndarray) -> jnp.ndarray:
    """Inverse of `partition`."""
    (gf, gt), (wf, wt) = self.grid, self.size
    rest = x.shape[2:]
    x = x.reshape(-1, gf // wf, gt // wt, wf, wt, *rest).swapaxes(2, 3)
    x = jnp.roll(x.reshape(-1, gf, gt, *rest), self.shift, axis=(1, 2))
    return x.reshape(-1, gf * gt, *rest)

  @functools.cached_property
  def regions(self) -> np.ndarray:
    """(windows, w) int: each window's tokens labelled by Swin region; a query sees the
    keys of its own label (the segments of blockwise_attention)."""
    f, t = (swin_regions(g, w, s) for g, w, s in zip(self.grid, self.size, self.shift))
    # Regions are labelled in shifted coordinates; roll them back by +shift so that
    # `partition`'s roll by -shift puts each label on its own token again.
    region = np.roll(f[:, None] * 3 + t[None, :], self.shift, axis=(0, 1))
    return self.partition(region.reshape(1, -1))

  @functools.cached_property
  def region_mask(self) -> np.ndarray:
    """(windows, w, w) bool: query and key were neighbours before the cyclic shift, i.e.
    both or neither wrapped across each edge (Swin's shifted-window attention mask)."""
    return self.regions[:, :, None] == self.regions[:, None, :]


def swin_regions(size: int, window: int, shift: int) -> np.ndarray:
  """(size,) int: Swin's region of each position along one axis of the grid after its
  cyclic shift by -shift: slices [0, -window), [-window, -shift), [-shift, end). The last
  holds the tokens that wrapped across the edge, the middle their new window mates, not
  adjacent to them before the shift (the last window straddles both). They are taken in
  shifted positions: labelling original positions then rolling agrees only when the shift
  is 0 or window / 2 (issue 22)."""
  position = np.arange(size)
  return (position >= size - window).astype(int) + (position >= size - shift)


# model.attention_impl; '' is what configs saved before 'auto' existed hold: the same.
IMPLEMENTATIONS = ("auto", "", "dense", "xla", "cudnn", "blockwise", "splash")
# `auto` off TPU and cuDNN: blockwise from this many keys, dense below. Attention alone,
# blockwise's custom VJP is faster than the dense formulation's autodiff up to 256 keys and
# within 5-9 % beyond, holding half the memory at 1024 (benchmarks/attention.py, B=8, 12
# heads of 64, f32, forward + backward, medians of 7 interleaved repetitions, idle 2-core
# EPYC, 2026-12-08, dense / blockwise ms: S=65 12.7 / 8.1, S=256 81.5 / 66.0, S=512 223 /
# 235, S=1024 847 / 922). In the whole ViT-B Audio-JEPA step at 65 tokens the two tied
# (1.663 / 1.670 s at batch 8, 5.83 / 5.81 at 32, interleaved), and below one block of
# keys blockwise peaks higher (its residuals and keys-major copies outweigh small score
# matrices: +75 MiB at batch 32 x 65 tokens), so dense stays below 512. A GPU without cuDNN
# (none measured yet) takes the same rule, for memory: a 1024-token layer's (B, 12, S, S)
# float32 scores are 384 MiB at B=8.
BLOCKWISE_FROM = 512


def dense_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray,
                    mask: jnp.ndarray | None) -> jnp.ndarray:
  """Softmax attention over (B, S, heads, head_dim), normalised after the value product:
  out = (exp(s - max s) v) / sum exp(s - max s), s = q k / sqrt(head_dim), with scores
  and sums in float32. Fewer passes over the (S, S) scores than softmax-then-product in
  both directions (the max is a constant shift, so it needs no gradient): on the 2-core
  CPU, forward + backward at B=4, S=496, 12 heads of 64 took 96 ms against 182 ms for
  `jax.nn.dot_product_attention`'s XLA path (issue 21). Keys where the bool `mask`
  (broadcastable to (B, heads, S, S)) is False get no weight; a query with no key left
  spreads evenly over all (as jax's)."""
  scores = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype), k,
                      preferred_element_type=jnp.float32)
  if mask is not None:
    scores = jnp.where(mask, scores, jnp.float32(-1e30))
  weights = jnp.exp(scores - jax.lax.stop_gradient(scores.max(-1, keepdims=True)))
  out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  total = jnp.swapaxes(weights.sum(-1), 1, 2)[..., None]  # (B, S, heads, 1)
  return (out / total).astype(q.dtype)


def cudnn_applies(dtype, head_dim: int) -> bool:
  """Whether cuDNN's fused (flash) attention runs here: an NVIDIA GPU of compute
  capability 8.0 or newer (Ampere; a T4 is 7.5), bf16 / fp16, and a head dimension that
  is a multiple of 8 up to 128 (jax's check_is_flash_attention; Hopper takes 256, unused)."""
  if jax.default_backend() != "gpu" or jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
    return False
  capability = getattr(jax.devices()[0], "compute_capability", "0")  # ROCm has none
  return float(capability) >= 8.0 and head_dim % 8 == 0 and head_dim <= 128


def choose(implementation: str | None, length: int, dtype, head_dim: int,
           windowed: bool) -> str:
  """The implementation that `auto` ('' and None alike) stands for, per backend: on a TPU
  the splash kernel (global attention; windows of a few dozen tokens are far below its
  128-token tiles and stay dense); on a GPU cuDNN where it applies; elsewhere, and
  inside windows, blockwise from BLOCKWISE_FROM keys and the dense formulation below."""
  if implementation not in (None, "", "auto"):
    return implementation
  backend = jax.default_backend()
  if backend == "tpu" and not windowed:
    return "splash"
  if backend == "gpu" and cudnn_applies(dtype, head_dim):
    return "cudnn"
  return "blockwise" if length >= BLOCKWISE_FROM else "dense"


def full_mask(key_mask: jnp.ndarray | None, segments: jnp.ndarray | None
              ) -> jnp.ndarray | None:
  """The bool mask broadcastable to (B, heads, S, S) that (B, S) `key_mask` and
  `segments` (either None) stand for: key on, and the query's segment."""
  mask = None if key_mask is None else key_mask[:, None, None, :]
  if segments is not None:
    same = (segments[:, :, None] == segments[:, None, :])[:, None]
    mask = same if mask is None else mask & same
  return mask


def attend(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, key_mask: jnp.ndarray | None,
           segments: jnp.ndarray | None, implementation: str | None) -> jnp.ndarray:
  """Self-attention over (B, S, heads, head_dim) where a query sees the keys that (B, S)
  bool `key_mask` leaves on within its own (B, S) int segment (either may be None), by
  `implementation` (IMPLEMENTATIONS, resolved by `choose`). Blockwise and splash take
  the factors and never form an (S, S) mask; the others get `full_mask`."""
  b, s, _, head_dim = q.shape
  implementation = choose(implementation, s, q.dtype, head_dim, segments is not None)
  if implementation == "blockwise":
    return blockwise_attention(q, k, v, key_mask, segments)
  if implementation == "splash" and segments is None:
    return splash_attention(q, k, v, key_mask, interpret=jax.default_backend() != "tpu")
  if implementation == "splash":  # windows: see `choose`
    implementation = "dense"
  return masked_attention(q, k, v, full_mask(key_mask, segments), implementation)


def masked_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray | None,
                     implementation: str | None) -> jnp.ndarray:
  """Self-attention over (B, S, heads, head_dim) with a bool `mask` broadcastable to
  (B, heads, S, S) or None, by `implementation`: 'dense' (dense_attention), 'xla' or
  'cudnn' (`jax.nn.dot_product_attention`'s), or None: dense on CPU, else jax's own
  choice (`attend`, what the model calls, adds 'auto' and the blockwise kernels). cuDNN
  takes a mask as a bias of the whole (S, S) shape and only an even S: an odd sequence
  gets one more token that no query attends to, dropped from the output."""
  if implementation is None and jax.default_backend() == "cpu":
    implementation = "dense"
  if implementation == "dense":
    return dense_attention(q, k, v, mask)
  n, pad = q.shape[1], q.shape[1] % 2
  if implementation != "cudnn" or (mask is None and not pad):
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
  if mask is None:
    mask = jnp.ones((q.shape[0], 1, 1, n), bool)
  q, k, v = (jnp.pad(t, ((0, 0), (0, pad), (0, 0), (0, 0))) for t in (q, k, v))
  mask = jnp.pad(jnp.broadcast_to(mask, mask.shape[:2] + (n, n)),
                 ((0, 0), (0, 0), (0, pad), (0, pad)))  # False: the extra key is off
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")[:, :n]


class Attention(nn.Module):
  """Multi-head self-attention, global or within `windows`; `key_mask` (B, S) bool
  switches keys off."""
  num_heads: int
  dtype: layers.Dtype = jnp.float32
  implementation: str | None = None  # IMPLEMENTATIONS; None: 'auto' (see `choose`)
  windows: Windows | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, key_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by {self.num_heads} heads")
    head_dim = width // self.num_heads
    # One fused QKV projection (a single larger GEMM); Xavier over (width, 3 * width)
    # as the reference Linear(width, 3 * width).
    qkv = layers.Projection((3, self.num_heads, head_dim), ("embed",), (None, "heads", "kv"),
                            self.dtype, name="qkv")(x)
    segments = None
    if self.windows is not None:
      w = self.windows
      if x.shape[1] != w.grid[0] * w.grid[1]:
        raise ValueError(f"windowed attention needs the whole {w.grid} token grid, got "
                         f"{x.shape[1]} tokens")
      # Each window is its own short sequence (B * windows of them), its Swin regions
      # the segments: attention stays O(S x window), so blockwise gains nothing there.
      qkv = w.partition(qkv)
      segments = jnp.tile(jnp.asarray(w.regions), (x.shape[0], 1))
      key_mask = None if key_mask is None else w.partition(key_mask)
    out = attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], key_mask, segments,
                 self.implementation)
    if self.windows is not None:
      out = self.windows.merge(out)
    return layers.Projection((width,), ("heads", "kv"), ("embed",), self.dtype, name="out")(out)


def layer_mask(key_mask: jnp.ndarray | None, extra: jnp.ndarray | None) -> jnp.ndarray | None:
  """The key mask of one layer: `key_mask` (B, S) and that layer's `extra` (B, S), either
  of which may be None."""
  if key_mask is None or extra is None:
    return extra if key_mask is None else key_mask
  return key_mask & extra


def regularised_key_masks(rng: jax.Array, depth: int, batch: int, tokens: int, rate: float,
                          valid: jnp.ndarray | None = None) -> jnp.ndarray:
  """(depth, batch, tokens) bool key masks of A-JEPA's regularised masking, False at the
  keys a layer drops: in each layer and example, floor(rate * n) of its n valid tokens
  (`valid` (batch, tokens), all when None), chosen uniformly at random and independently
  per layer, but never all n. Padding is never chosen (the valid mask hides it anyway)."""
  n = jnp.full((batch,), tokens, jnp.int32) if valid is None else valid.sum(-1, dtype=jnp.int32)
  # The epsilon keeps float rounding from flooring a whole rate * n one too low.
  drop = jnp.floor(rate * n.astype(jnp.float32) + 1e-4).astype(jnp.int32)
  drop = jnp.clip(drop, 0, jnp.maximum(n - 1, 0))
  u = jax.random.uniform(rng, (depth, batch, tokens))
  if valid is not None:
    u = jnp.where(valid[None], u, 2.0)  # padding ranks after every valid token
  # Random ranks: the `drop` lowest-ranked tokens are a uniform random subset of that size.
  rank = jnp.argsort(jnp.argsort(u, axis=-1), axis=-1)
  return rank >= drop[None, :, None]
