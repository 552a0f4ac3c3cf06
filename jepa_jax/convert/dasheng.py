"""Dasheng checkpoints (XiaoMi/dasheng: dasheng/train/models.py AudioTransformerMAE_Encoder,
dasheng/pretrained/pretrained.py; base / 0.6B / 1.2B) -> our encoder.

A released file holds {'model': state dict, 'config': model kwargs}. The model: front_end
(torchaudio MelSpectrogram 512/512/160, 64 HTK mels + AmplitudeToDB(top_db=120): our
'dasheng' front end), init_bn (BatchNorm2d over the 64 mel bins, eps 1e-5: folded into the
export's per-bin input transform, as our own Dasheng runs export it), patch_embed
Conv2d(1, D, (64, 4), stride (64, 4)) over (B, 1, mels, frames), factorised positions
time_pos_embed (1, D, 1, T) + freq_pos_embed (1, D, F, 1) (our 'learned' positions),
blocks timm-like (norm1, attn.qkv with bias, attn.proj, optional ls1/ls2, norm2, mlp),
final norm; with pooling 'token' a cls_token plus token_pos_embed (folded). Heads are not
in the weights: the config's num_heads, else Dasheng's sizes (768: 12, 1280: 16, 1536: 24).
"""
import numpy as np

from data_pipelines import frontends
from jepa_jax.convert import timm_vit, vit_layout
from jepa_jax.convert.safe_load import CheckpointError
from jepa_jax.models import input_norm

FRONTEND = "dasheng"
HEADS_BY_WIDTH = {768: 12, 1280: 16, 1536: 24}  # dasheng_base, dasheng_06B, dasheng_12B
ENCODER_ROOTS = ("patch_embed", "time_pos_embed", "freq_pos_embed", "blocks", "norm",
                 "cls_token", "token_pos_embed", "init_bn")
BN = ("init_bn.1.weight", "init_bn.1.bias", "init_bn.1.running_mean", "init_bn.1.running_var")


def split(state: dict) -> tuple[dict, dict]:
  """(weights, model config) of a released file, or of a bare state dict."""
  if isinstance(state.get("model"), dict):
    return state["model"], state.get("config") or {}
  return state, {}


def to_jax(state: dict, options: timm_vit.Options) -> tuple[dict, dict]:
  state, model_config = split(state)
  notes: list[str] = []
  depth = vit_layout.block_count(state)
  required = (["patch_embed.proj.weight", "patch_embed.proj.bias", "time_pos_embed",
               "freq_pos_embed", "norm.weight", "norm.bias", *BN]
              + (vit_layout.required_block_keys(depth) if depth else ["blocks.0.*"]))
  missing = vit_layout.missing_keys(state, required)
  if missing:
    raise CheckpointError(f"not a dasheng checkpoint: missing keys {', '.join(missing[:8])}"
                          + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
  used = set(required) | {"init_bn.1.num_batches_tracked", "cls_token", "token_pos_embed"} | {
      k for k in state if k.startswith("blocks.") and any(
          k.endswith("." + o) for o in vit_layout.OPTIONAL_BLOCK_KEYS)}
  unknown = [k for k in state if k.split(".")[0] in ENCODER_ROOTS and k not in used]
  if unknown:
    raise CheckpointError(f"not supported by this encoder: unknown keys {', '.join(unknown[:6])}")
  conv = np.asarray(state["patch_embed.proj.weight"])
  width = conv.shape[0]
  mlp_dim = np.asarray(state["blocks.0.mlp.fc1.weight"]).shape[0]
  heads = options.num_heads or model_config.get("num_heads") or HEADS_BY_WIDTH.get(width)
  if not heads or width % heads:
    raise CheckpointError(f"the number of heads of width {width} is unknown (not in the "
                          f"checkpoint's config); give --num_heads")
  time_pos = np.asarray(state["time_pos_embed"], np.float32)
  freq_pos = np.asarray(state["freq_pos_embed"], np.float32)
  vit_layout.check_shapes(state, {"patch_embed.proj.bias": (width,), "norm.weight": (width,),
                                  **vit_layout.block_shapes(depth, width, mlp_dim)})
  if time_pos.ndim != 4 or freq_pos.ndim != 4 or time_pos.shape[:3] != (1, width, 1) \
      or freq_pos.shape[0:2] != (1, width) or freq_pos.shape[3] != 1:
    raise CheckpointError(f"wrong shapes: time_pos_embed {time_pos.shape} (expected (1, "
                          f"{width}, 1, T)), freq_pos_embed {freq_pos.shape} (expected "
                          f"(1, {width}, F, 1))")
  patch_shape = vit_layout.patch_shape_of(conv, "freq_time")
  n_mels = frontends.get_frontend(FRONTEND).n_mels
  grid = (freq_pos.shape[2], time_pos.shape[3])
  if grid[0] * patch_shape[0] != n_mels:
    raise CheckpointError(f"{grid[0]} frequency positions of {patch_shape[0]} mel bins do "
                          f"not cover the dasheng front end's {n_mels} mels")
  time_patches = grid[1] if options.frames is None else \
      timm_vit._time_patches(options.frames, patch_shape)
  time = vit_layout.resize_time(time_pos[0, :, 0].T, (1, grid[1]), time_patches, notes)
  params = {"patch_embed": {"kernel": vit_layout.patch_kernel_to_jax(conv, "freq_time"),
                            "bias": np.asarray(state["patch_embed.proj.bias"], np.float32)},
            "positions": {"freq": freq_pos[0, :, :, 0].T[:, None, :],
                          "time": time[None]},
            "transformer": {**{f"block_{i}": vit_layout.block_to_jax(state, f"blocks.{i}.", heads)
                               for i in range(depth)},
                            "norm": vit_layout.norm_to_jax(state, "norm")}}
  has_cls = "cls_token" in state
  if has_cls:  # pooling 'token': cls_token + token_pos_embed, a constant
    token = np.asarray(state["cls_token"], np.float32).reshape(1, 1, width)
    params["cls_token"] = token + np.asarray(state.get("token_pos_embed", 0.0),
                                             np.float32).reshape(1, 1, width)
  if any(k.endswith(".ls1.gamma") for k in state):
    notes.append("layer scale (ls1/ls2.gamma) folded into attn.proj and mlp.fc2")
  left = sorted({k.split(".")[0] for k in state} - set(ENCODER_ROOTS))
  if left:
    notes.append(f"not imported: {', '.join(left)} (the front end is ours, the same recipe)")
  changes = {"model.width": width, "model.depth": depth, "model.num_heads": int(heads),
             "model.mlp_dim": mlp_dim, "model.patch_shape": tuple(patch_shape),
             "model.positions": "learned", "model.class_token": has_cls,
             "data.frontend": FRONTEND, "data.frames": time_patches * patch_shape[1],
             "data.normalization": "recipe", "notes": notes}
  changes["frontend.input_norm"] = bn_after_recipe(
      {k: np.asarray(state[k], np.float64) for k in BN})
  return params, changes


def bn_after_recipe(bn: dict) -> dict:
  """init_bn (eval mode) on raw dB features, as a per-bin transform applied after the
  recipe's scalar normalisation (x - norm_mean) / norm_std (task_data.normalize): BN(x) =
  x * s + h = ((x - m) / d) * (d s) + (h + m s)."""
  recipe = frontends.get_frontend(FRONTEND)
  folded = input_norm.fold({"bn": {"scale": bn["init_bn.1.weight"], "bias": bn["init_bn.1.bias"]}},
                           {"bn": {"mean": bn["init_bn.1.running_mean"],
                                   "var": bn["init_bn.1.running_var"]}})
  s, h = np.asarray(folded["scale"]), np.asarray(folded["shift"])
  return {"scale": (s * recipe.norm_std).tolist(),
          "shift": (h + recipe.norm_mean * s).tolist()}
