"""timm VisionTransformer over spectrogram patches <-> our encoder (both directions).

Supported (README "PyTorch checkpoints"): a class token (`class_token`), positions with
or without a row for it (`no_embed_class`), the final norm on every token (global_pool
'token' or 'avg' with fc_norm=False), qkv with or without bias (`qkv_bias`), layer scale
(`init_values`, folded into the projections). Refused by name: fc_norm (a norm of the
pooled embedding only), register / distillation tokens, qk_norm, norm_pre, a patch
embedding norm, attention pooling, scaled-norm variants; the classifier head is dropped.

to_jax(state, options) -> (encoder params, changes): `changes` holds dotted config fields
('model.width', 'data.frames', ...) and 'notes' (one line each: what was adapted or left
out). from_jax(params, config) -> timm state dict (timm_kwargs(config) builds the matching
VisionTransformer); to_jax(from_jax(p)) == p bitwise for encoders with sin-cos or table
positions.
"""
import dataclasses

import numpy as np

from data_pipelines import frontends
from jepa_jax.config import shapes
from jepa_jax.convert import vit_layout
from jepa_jax.convert.safe_load import CheckpointError
from jepa_jax.models import vit

# Top-level names of a timm ViT's encoder; anything under them not mapped is refused.
ENCODER_ROOTS = ("cls_token", "reg_token", "dist_token", "pos_embed", "patch_embed",
                 "norm_pre", "blocks", "norm", "fc_norm", "attn_pool")
# What the refused keys are, for the one-line message.
UNSUPPORTED = {
    "fc_norm": "fc_norm (a LayerNorm of the pooled embedding only; this encoder's final "
               "norm applies to every token)",
    "reg_token": "register tokens (reg_token)", "dist_token": "a distillation token",
    "norm_pre": "a norm before the blocks (norm_pre)",
    "patch_embed.norm": "a norm after the patch embedding",
    "attn_pool": "attention pooling (attn_pool)",
    "q_norm": "qk_norm", "k_norm": "qk_norm", "attn.norm": "scale_attn_norm",
    "mlp.norm": "scale_mlp_norm",
}
NOT_IMPORTED_ROOTS = ("head", "head_drop")  # the classifier: not part of the encoder


@dataclasses.dataclass
class Options:
  """What a checkpoint does not say: its input layout and front end, head count, length."""
  frontend: str = "audio_jepa"
  orientation: str = "freq_time"   # vit_layout.ORIENTATIONS
  num_heads: int | None = None     # None: width // 64 (every ViT-S/B/L)
  frames: int | None = None        # None: the checkpoint's positional grid
  no_embed_class: bool = False     # timm's flag: pos_embed has no row for the class token
  fixed_positions: bool = False    # the table is never trained by its project


def _unsupported_name(key: str) -> str | None:
  for part, what in UNSUPPORTED.items():
    if key.startswith(part + ".") or f".{part}." in key or key == part:
      return what
  return None


def refused_keys(state: dict, used: set[str]) -> list[str]:
  """Encoder keys (under ENCODER_ROOTS) that nothing maps, named by what they are."""
  left = [k for k in state if k.split(".")[0] in ENCODER_ROOTS and k not in used]
  reasons = []
  for k in left:
    what = _unsupported_name(k) or f"unknown key {k}"
    if what not in reasons:
      reasons.append(what)
  return reasons


def vit_to_jax(state: dict, options: Options, format_name: str) -> tuple[dict, dict]:
  """A timm-style ViT state dict (AudioMAE's and M2D's encoders are ones) -> ours."""
  notes: list[str] = []
  if "fc_norm.weight" in state and "norm.weight" not in state:
    raise CheckpointError(f"not supported by this encoder: {UNSUPPORTED['fc_norm']}")
  depth = vit_layout.block_count(state)
  required = ["patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed", "norm.weight",
              "norm.bias"] + (vit_layout.required_block_keys(depth) if depth else ["blocks.0.*"])
  missing = vit_layout.missing_keys(state, required)
  if missing:
    raise CheckpointError(f"not a {format_name} checkpoint: missing keys "
                          f"{', '.join(missing[:8])}" + (f" and {len(missing) - 8} more"
                                                        if len(missing) > 8 else ""))
  used = set(required) | {k for k in state if k.startswith("blocks.") and any(
      k.endswith("." + o) for o in vit_layout.OPTIONAL_BLOCK_KEYS)} | {"cls_token"}
  refused = refused_keys(state, used)
  if refused:
    raise CheckpointError(f"not supported by this encoder: {'; '.join(refused)}")
  conv = np.asarray(state["patch_embed.proj.weight"])
  width = conv.shape[0]
  mlp_dim = np.asarray(state["blocks.0.mlp.fc1.weight"]).shape[0]
  heads = options.num_heads or width // 64
  if width % heads:
    raise CheckpointError(f"width {width} is not divisible by {heads} heads; give --num_heads")
  vit_layout.check_shapes(state, {"patch_embed.proj.bias": (width,), "norm.weight": (width,),
                                  "norm.bias": (width,), "cls_token": (1, 1, width),
                                  **vit_layout.block_shapes(depth, width, mlp_dim)})
  patch_shape = vit_layout.patch_shape_of(conv, options.orientation)
  n_mels = frontends.get_frontend(options.frontend).n_mels
  if n_mels % patch_shape[0]:
    raise CheckpointError(f"patches of {patch_shape[0]} mel bins do not tile the "
                          f"{options.frontend!r} front end's {n_mels} mels")
  freq = n_mels // patch_shape[0]
  pos = np.asarray(state["pos_embed"], np.float32).reshape(-1, width)
  has_cls = "cls_token" in state
  prefix = 1 if has_cls and not options.no_embed_class else 0
  n = pos.shape[0] - prefix
  if n <= 0 or n % freq:
    raise CheckpointError(
        f"pos_embed has {pos.shape[0]} rows: {n} patch positions do not fill a grid of "
        f"{freq} frequency patches ({n_mels} mels / {patch_shape[0]}); check --frontend, "
        f"--orientation and --no_embed_class")
  grid = (freq, n // freq)
  table = vit_layout.tokens_to_ours(pos[prefix:], grid, options.orientation)
  time_patches = grid[1] if options.frames is None else _time_patches(options.frames, patch_shape)
  table = vit_layout.resize_time(table, grid, time_patches, notes)
  positions, kind = vit_layout.positions_to_jax(table, (freq, time_patches),
                                                options.fixed_positions)
  params = {"patch_embed": {"kernel": vit_layout.patch_kernel_to_jax(conv, options.orientation),
                            "bias": np.asarray(state["patch_embed.proj.bias"], np.float32)},
            **positions,
            "transformer": {**{f"block_{i}": vit_layout.block_to_jax(state, f"blocks.{i}.", heads)
                               for i in range(depth)},
                            "norm": vit_layout.norm_to_jax(state, "norm")}}
  if has_cls:
    token = np.asarray(state["cls_token"], np.float32)
    if prefix:  # timm adds the class token's position to it: a constant, folded in
      token = token + pos[None, :1]
    params["cls_token"] = token.reshape(1, 1, width)
  if any(k.endswith(".ls1.gamma") for k in state):
    notes.append("layer scale (ls1/ls2.gamma) folded into attn.proj and mlp.fc2")
  if any(k.endswith("attn.qkv.weight") for k in state) and "blocks.0.attn.qkv.bias" not in state:
    notes.append("no qkv bias in the checkpoint: zero biases (the same function)")
  head = sorted({k.split(".")[0] for k in state if k.split(".")[0] in NOT_IMPORTED_ROOTS})
  if head:
    notes.append(f"not imported: the classifier ({', '.join(head)})")
  changes = {"model.width": width, "model.depth": depth, "model.num_heads": heads,
             "model.mlp_dim": mlp_dim, "model.patch_shape": tuple(patch_shape),
             "model.positions": kind, "model.class_token": has_cls,
             "data.frontend": options.frontend, "data.frames": time_patches * patch_shape[1],
             "notes": notes}
  return params, changes


def _time_patches(frames: int, patch_shape: tuple[int, int]) -> int:
  if frames <= 0 or frames % patch_shape[1]:
    raise CheckpointError(f"--frames {frames} is not a positive multiple of the patch's "
                          f"{patch_shape[1]} frames")
  return frames // patch_shape[1]


def to_jax(state: dict, options: Options) -> tuple[dict, dict]:
  """A timm VisionTransformer's state dict -> (our encoder params, config changes)."""
  params, changes = vit_to_jax(state, options, "timm_vit")
  changes["data.normalization"] = "recipe"
  return params, changes


def from_jax(params: dict, config) -> dict[str, np.ndarray]:
  """Our encoder's parameters (unscanned or scanned, plain arrays) -> the state dict of
  timm's VisionTransformer(**timm_kwargs(config)), input laid out (mels, frames)."""
  params = vit.unstack_layers(params)
  m = config.model
  grid = shapes.grid(config)
  table = vit_layout.position_table_of(params, m.positions, grid, m.width)
  out = {"patch_embed.proj.weight": vit_layout.patch_kernel_from_jax(
             params["patch_embed"]["kernel"], tuple(m.patch_shape)),
         "patch_embed.proj.bias": np.asarray(params["patch_embed"]["bias"])}
  if m.class_token:
    out["cls_token"] = np.asarray(params["cls_token"])
    table = np.concatenate([np.zeros((1, m.width), np.float32), table])  # folded in the token
  out["pos_embed"] = np.asarray(table, np.float32)[None]
  t = params["transformer"]
  for i in range(m.depth):
    out.update(vit_layout.block_from_jax(t[f"block_{i}"], f"blocks.{i}."))
  out["norm.weight"], out["norm.bias"] = t["norm"]["scale"], t["norm"]["bias"]
  return {k: np.asarray(v) for k, v in out.items()}


def timm_kwargs(config) -> dict:
  """timm.models.vision_transformer.VisionTransformer(**these) has from_jax's keys and
  computes our encoder's token outputs (forward_features, class token dropped); pass
  norm_layer=partial(torch.nn.LayerNorm, eps=models.layers.LN_EPS) beside them."""
  m = config.model
  return dict(img_size=shapes.input_shape(config), patch_size=tuple(m.patch_shape), in_chans=1,
              embed_dim=m.width, depth=m.depth, num_heads=m.num_heads,
              mlp_ratio=m.mlp_dim / m.width, qkv_bias=True, class_token=bool(m.class_token),
              global_pool="avg", fc_norm=False, num_classes=0, dynamic_img_size=False)
