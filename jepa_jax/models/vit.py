"""The one Vision Transformer of jepa_jax: attention, MLP, pre-norm blocks, encoder.

Every parameter carries logical axis names ('embed', 'mlp', 'heads', 'kv', 'patch');
mesh.py maps them to mesh axes by the rules in the config, so model code never names
a device axis. attention.Attention (attention.masked_attention) takes an optional key
mask: padded tokens and block masks switch keys off in every layer; A-JEPA's
regularised masking (fine-tuning only) switches off a different random set of keys in
each layer, through the same mask (`regularised_key_masks`, `layer_key_masks`).
attention.Attention is global, or local to windows of the (frequency, time) token grid with
Swin-style cyclic shifts on alternate blocks (A-JEPA predictor, AudioMAE decoder)."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jepa_jax.models import attention, layers, positions


class Mlp(nn.Module):
  hidden: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    width = x.shape[-1]
    x = layers.dense(self.hidden, ("embed", "mlp"), self.dtype, "fc1")(x)
    x = nn.gelu(x, approximate=False)
    return layers.dense(width, ("mlp", "embed"), self.dtype, "fc2")(x)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""
  num_heads: int
  mlp_dim: int
  dtype: layers.Dtype = jnp.float32
  attention_impl: str | None = None
  windows: attention.Windows | None = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, key_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    attend = attention.Attention(self.num_heads, self.dtype, self.attention_impl, self.windows,
                                 name="attn")
    y = attend(layers.layer_norm("norm1", self.dtype)(x), key_mask)
    x = x + y
    x = x + Mlp(self.mlp_dim, self.dtype, name="mlp")(layers.layer_norm("norm2", self.dtype)(x))
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


# What the backward pass keeps of each block: 'none' keeps every activation (no remat),
# 'full' recomputes the whole block, the others are jax.checkpoint_policies by name (keep
# the matrix products' results, recompute the rest).
REMAT = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")


LAYER_AXIS = "layers"  # logical name of the stacked axis of scanned parameters


def checkpointed(module_class: type[nn.Module], remat: str, in_scan: bool) -> type[nn.Module]:
  """`module_class` under nn.remat with the `remat` policy; unchanged for 'none'."""
  if remat not in REMAT:
    raise ValueError(f"unknown remat {remat!r}; known: {', '.join(REMAT)}")
  if remat == "none":
    return module_class
  policy = None if remat == "full" else getattr(jax.checkpoint_policies, remat)
  # A scan loop already keeps XLA from merging the recomputation into the forward pass;
  # prevent_cse would only block optimisations there.
  return nn.remat(module_class, policy=policy, prevent_cse=not in_scan)


def block_windows(windows: attention.Windows | None, index: int) -> attention.Windows | None:
  """The windows of block `index`: unshifted on even blocks, shifted on odd ones (Swin)."""
  if windows is None or index % 2:
    return windows
  return dataclasses.replace(windows, shift=(0, 0))


def scan_period(windows: attention.Windows | None) -> int:
  """Blocks per scan step: 2 (an unshifted then a shifted block) when odd blocks shift
  their windows, else 1."""
  return 2 if windows is not None and any(windows.shift) else 1


class BlockGroup(nn.Module):
  """`period` consecutive blocks, the body of a scanned stack:
  (x, key_mask, layer_key_masks) -> (x, None). `key_mask` (B, S) is the same for every
  block; `layer_key_masks` (period, B, S), or None, adds one mask per block."""
  period: int
  num_heads: int
  mlp_dim: int
  dtype: layers.Dtype = jnp.float32
  attention_impl: str | None = None
  windows: attention.Windows | None = None
  block: type[nn.Module] = Block  # the block class (vit.Block, swinv2.SwinV2Block)

  @nn.compact
  def __call__(self, x: jnp.ndarray, key_mask: jnp.ndarray | None,
               layer_key_masks: jnp.ndarray | None = None) -> tuple[jnp.ndarray, None]:
    for j in range(self.period):
      extra = None if layer_key_masks is None else layer_key_masks[j]
      x = self.block(self.num_heads, self.mlp_dim, self.dtype, self.attention_impl,
                     block_windows(self.windows, j), name=f"block_{j}")(
                         x, attention.layer_mask(key_mask, extra))
    return x, None


class Transformer(nn.Module):
  """`depth` pre-norm blocks followed by the final LayerNorm. With `windows`, attention is
  local; its shift applies to odd blocks (even blocks use unshifted windows), as in Swin.

  Parameter layouts (convert with stack_layers / unstack_layers):
    scan=False: 'block_0' ... 'block_{depth-1}', 'norm'.
    scan=True:  one nn.scan loop, compiled once whatever the depth: 'layers' holds
      'block_j' (j < scan_period(windows)) with every leaf stacked on a leading axis
      (logical name 'layers'); entry i of 'layers/block_j' is block i * period + j.
  `remat` (REMAT) recomputes activations in the backward pass to save memory.

  `key_mask` (B, S) switches keys off in every block; `layer_key_masks` (depth, B, S), or
  None, switches keys off in block i by its entry i as well (regularised masking: the
  scanned stack scans over them, in (depth // period, period) groups).
  """
  depth: int
  num_heads: int
  mlp_dim: int
  dtype: layers.Dtype = jnp.float32
  attention_impl: str | None = None
  windows: attention.Windows | None = None
  scan: bool = False
  remat: str = "none"
  block: type[nn.Module] = Block  # the block class: pre-norm Block or swinv2.SwinV2Block

  @nn.compact
  def __call__(self, x: jnp.ndarray, key_mask: jnp.ndarray | None = None,
               layer_key_masks: jnp.ndarray | None = None) -> jnp.ndarray:
    if layer_key_masks is not None and layer_key_masks.shape != (self.depth,) + x.shape[:2]:
      raise ValueError(f"layer_key_masks of shape {layer_key_masks.shape} given to {self.depth} "
                       f"blocks over {x.shape[:2]} tokens; expected "
                       f"{(self.depth,) + x.shape[:2]}")
    if self.scan:
      period = scan_period(self.windows)
      if self.depth % period:
        raise ValueError(f"a scanned stack with shifted windows runs its blocks in (unshifted, "
                         f"shifted) pairs, so its depth must be even, got {self.depth}; use "
                         f"an even depth or turn layer scanning off")
      stack = nn.scan(checkpointed(BlockGroup, self.remat, in_scan=True),
                      variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast, 0), length=self.depth // period,
                      metadata_params={nn.PARTITION_NAME: LAYER_AXIS})
      if layer_key_masks is not None:  # step i runs blocks i * period + j, j < period
        layer_key_masks = layer_key_masks.reshape(
            (self.depth // period, period) + layer_key_masks.shape[1:])
      x, _ = stack(period, self.num_heads, self.mlp_dim, self.dtype, self.attention_impl,
                   self.windows, self.block, name="layers")(x, key_mask, layer_key_masks)
    else:
      block = checkpointed(self.block, self.remat, in_scan=False)
      for i in range(self.depth):
        extra = None if layer_key_masks is None else layer_key_masks[i]
        x = block(self.num_heads, self.mlp_dim, self.dtype, self.attention_impl,
                  block_windows(self.windows, i), name=f"block_{i}")(
                      x, attention.layer_mask(key_mask, extra))
    # Blocks compute in `dtype`; the final norm's output is float32, what losses, EMA
    # targets and downstream features read.
    return layers.layer_norm("norm")(x)


def _is_unscanned_stack(tree) -> bool:
  return isinstance(tree, dict) and "block_0" in tree and "norm" in tree


def _is_scanned_stack(tree) -> bool:
  return isinstance(tree, dict) and LAYER_AXIS in tree and "norm" in tree


def _block_names(tree: dict) -> list[str]:
  names = [k for k in tree if k.startswith("block_")]
  return sorted(names, key=lambda k: int(k.removeprefix("block_")))


def stack_layers(params: dict, period: int = 1) -> dict:
  """Unscanned Transformer parameters -> the scanned layout, for every Transformer found
  in `params` (one Transformer's, an encoder's, a whole train state's: plain arrays, not
  logically boxed). `period` is the stacks' scan_period (2 for shifted windows). Stacks
  already scanned are returned as they are."""
  if _is_unscanned_stack(params):
    names = _block_names(params)
    if len(names) % period:
      raise ValueError(f"{len(names)} blocks cannot be stacked in groups of {period}")
    groups = {f"block_{j}": jax.tree.map(lambda *xs: jnp.stack(xs),
                                         *[params[n] for n in names[j::period]])
              for j in range(period)}
    rest = {k: v for k, v in params.items() if k not in names}
    return {LAYER_AXIS: groups, **rest}
  if isinstance(params, dict) and not _is_scanned_stack(params):
    return {k: stack_layers(v, period) for k, v in params.items()}
  return params


def unstack_layers(params: dict) -> dict:
  """Inverse of stack_layers (the period is read from the stack): scanned Transformer
  parameters anywhere in `params` -> 'block_0' ... 'block_{depth-1}'."""
  if _is_scanned_stack(params):
    groups = params[LAYER_AXIS]
    period = len(groups)
    depth = jax.tree.leaves(groups)[0].shape[0] * period
    blocks = {f"block_{b}": jax.tree.map(lambda x, i=b // period: x[i],
                                         groups[f"block_{b % period}"])
              for b in range(depth)}
    return {**blocks, **{k: v for k, v in params.items() if k != LAYER_AXIS}}
  if isinstance(params, dict) and not _is_unscanned_stack(params):
    return {k: unstack_layers(v) for k, v in params.items()}
  return params


POSITIONS = ("sincos", "learned", "table", "fixed_table")


class PositionTable(nn.Module):
  """(F*T, width) positional embeddings of a token grid, in token order.

  'sincos': fixed 2-D sin-cos (Audio-JEPA, A-JEPA, AudioMAE). 'learned': factorised
  learnable tables, frequency (F, 1) plus time (1, T), initialised N(0, 0.02) (Dasheng).
  'table': one learnable (F*T, width) table (timm's pos_embed); 'fixed_table': the same
  parameter held fixed by a stop-gradient (an imported AudioMAE / M2D table, which those
  projects never train; with no gradient AdamW leaves it unchanged, and weight decay
  reaches only kernels).
  """
  grid: tuple[int, int]
  width: int
  kind: str = "sincos"

  @nn.compact
  def __call__(self) -> jnp.ndarray:
    if self.kind == "sincos":
      return jnp.asarray(positions.sincos_2d(self.width, self.grid))
    if self.kind not in POSITIONS:
      raise ValueError(f"unknown positions {self.kind!r}; known: {', '.join(POSITIONS)}")
    init = nn.initializers.normal(0.02)
    if self.kind in ("table", "fixed_table"):
      table = self.param("table", layers.named(init, (None, "embed")),
                         (self.grid[0] * self.grid[1], self.width))
      return jax.lax.stop_gradient(table) if self.kind == "fixed_table" else table
    names = (None, None, "embed")
    freq = self.param("freq", layers.named(init, names), (self.grid[0], 1, self.width))
    time = self.param("time", layers.named(init, names), (1, self.grid[1], self.width))
    return (freq + time).reshape(-1, self.width)


class Encoder(nn.Module):
  """ViT over spectrogram patches of `patch_shape` (mel bins, frames).

  With `class_token` (off in every recipe; imported AudioMAE / M2D / timm encoders) a
  learned token is put before the patches, takes part in attention in every block and is
  dropped from the output: the output is always one row per patch token, which is what
  AudioMAE's decoder and M2D's evaluation read (both drop the class token's output).

  Call with the patches it should see: `patches` (B, M, pf*pt) at token positions
  `idx` (B, M) (every position in order when None), and `valid` (B, M) marking real
  tokens (padding is never attended to). `layer_key_masks` (depth, B, M), from
  `regularised_key_masks`, is for fine-tuning only: block i also ignores the keys its
  entry marks False. Leave it None for inference (plain attention).
  """
  grid: tuple[int, int]
  patch_shape: tuple[int, int]
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  dtype: layers.Dtype = jnp.float32
  attention_impl: str | None = None
  positions: str = "sincos"
  scan: bool = False       # see Transformer
  remat: str = "none"
  class_token: bool = False

  @nn.compact
  def __call__(self, patches: jnp.ndarray, idx: jnp.ndarray | None = None,
               valid: jnp.ndarray | None = None,
               layer_key_masks: jnp.ndarray | None = None) -> jnp.ndarray:
    pf, pt = self.patch_shape
    if patches.shape[-1] != pf * pt:
      raise ValueError(f"patches of {patches.shape[-1]} values given to an encoder of "
                       f"{pf} x {pt} patches")
    x = layers.dense(self.width, ("patch", "embed"), self.dtype, "patch_embed")(patches)
    table = PositionTable(self.grid, self.width, self.positions, name="positions")()
    if idx is None:
      if x.shape[1] != table.shape[0]:
        raise ValueError(f"{x.shape[1]} patches given without positions; the grid "
                         f"{self.grid} has {table.shape[0]}")
      x = x + table[None]
    else:
      x = x + table[idx]
    # The residual stream in the compute dtype (the float32 table would promote it).
    if self.class_token:
      x, valid, layer_key_masks = self._with_class_token(x, valid, layer_key_masks)
    x = nn.with_logical_constraint(x.astype(self.dtype), ("batch", "length", "embed"))
    out = Transformer(self.depth, self.num_heads, self.mlp_dim, self.dtype,
                      self.attention_impl, scan=self.scan, remat=self.remat,
                      name="transformer")(x, valid, layer_key_masks)
    return out[:, 1:] if self.class_token else out

  def _with_class_token(self, x, valid, layer_key_masks):
    """The class token (its position already folded in) before the patch tokens; it is
    a valid key in every layer."""
    token = self.param("cls_token", layers.named(nn.initializers.normal(0.02),
                                                 (None, None, "embed")), (1, 1, self.width))
    b = x.shape[0]
    x = jnp.concatenate([jnp.broadcast_to(token, (b, 1, self.width)).astype(x.dtype), x], 1)
    if valid is not None:
      valid = jnp.concatenate([jnp.ones((b, 1), bool), valid], axis=1)
    if layer_key_masks is not None:
      first = jnp.ones(layer_key_masks.shape[:2] + (1,), bool)
      layer_key_masks = jnp.concatenate([first, layer_key_masks], axis=2)
    return x, valid, layer_key_masks
