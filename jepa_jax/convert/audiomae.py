"""AudioMAE checkpoints (facebookresearch/AudioMAE, models_mae.py pretrained and
models_vit.py fine-tuned) -> our encoder, and our MAE decoder where the file has one.

The encoder is timm's ViT with a class token: input (B, 1, 1024 frames, 128 mels), i.e.
time x frequency, 16 x 16 patches, so its tokens run time-major (reordered here); its
sin-cos pos_embed (fixed, requires_grad=False) is kept as a fixed table, since AudioMAE
builds it on a grid transposed relative to its tokens and it is not our sin-cos; the
class token's position row is folded into the token. Features: Kaldi fbank, 128 mels,
normalised (x + 4.2677393) / (2 * 4.5689974), our 'ajepa' front end as the recipe has it.
Weights sit under 'model' in AudioMAE's checkpoints.

The decoder of decoder_mode=1 (main_pretrain.py's default, the released pretraining) maps
onto our 'swinv2' full-grid decoder exactly. models_mae.forward_decoder: decoder_embed of
every encoder output, mask_token at the masked positions, + decoder_pos_embed, then the
class token's row is DROPPED before the Swin blocks (SwinTransformerBlock of
timm_patch/swin_transformer.py, our models/swinv2.py: heads from attn.tau, windows
(4, 4) over the (time 64, frequency 8) grid, shifted (2, 0) on odd blocks = our (0, 2)),
decoder_norm, decoder_pred. Mapped:
  decoder_embed                  -> decoder/embed (encoder width -> decoder width)
  mask_token                     -> decoder/mask_token
  decoder_pos_embed[1:]          -> decoder/positions/table (tokens reordered; fixed, as
                                    AudioMAE never trains it; row 0, the class token's, is
                                    dropped with the class token)
  decoder_blocks.{i}.            -> decoder/transformer/block_{i}/ (vit_layout's block keys,
                                    plus attn.tau and attn.meta_mlp.fc1/fc2, fc1's two input
                                    rows swapped: (time, frequency) offsets -> ours)
  decoder_norm                   -> decoder/transformer/norm
  decoder_pred                   -> decoder/project (output rows reordered: AudioMAE's
                                    patch values run (frame, mel), ours (mel, frame))
Not imported, said in a note (the encoder still is): a decoder of decoder_mode=0 (timm
Blocks attending over the class token and every patch: our decoder has no class-token
slot), one with keys missing or unknown, and a fine-tuned classifier head. A fine-tuned
checkpoint with global pooling (fc_norm, no final norm) is refused by name. The windows'
shift is not in the weights: AudioMAE's default (no_shift=False) is assumed.
"""
import numpy as np

from data_pipelines import frontends
from jepa_jax.convert import timm_vit, vit_layout
from jepa_jax.convert.safe_load import CheckpointError

DECODER_ROOTS = ("decoder_embed", "mask_token", "decoder_pos_embed", "decoder_blocks",
                 "decoder_norm", "decoder_pred")
FRONTEND = "ajepa"
DECODER_PREFIX = "decoder_blocks."
# decoder_mode=1's Swin V2 block keys (timm_patch/swin_transformer.py); the relative
# coordinates and the shift mask are non-persistent buffers, not in the file.
SWIN_BLOCK_KEYS = vit_layout.BLOCK_KEYS + ("attn.qkv.bias", "attn.tau", "attn.meta_mlp.fc1.weight",
                                           "attn.meta_mlp.fc1.bias", "attn.meta_mlp.fc2.weight",
                                           "attn.meta_mlp.fc2.bias")
DECODER_KEYS = ("decoder_embed.weight", "decoder_embed.bias", "mask_token", "decoder_pos_embed",
                "decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight",
                "decoder_pred.bias")
WINDOW, SHIFT = (4, 4), (0, 2)  # ours (frequency, time): AudioMAE's (4, 4) and (2, 0)


def encoder_state(state: dict) -> dict:
  """The weights under 'model' (AudioMAE's checkpoints) or the state dict itself."""
  return state["model"] if isinstance(state.get("model"), dict) else state


def to_jax(state: dict, options: timm_vit.Options) -> tuple[dict, dict]:
  """(encoder params, changes); changes['decoder_params'] holds the decoder's params
  when the file has a decoder that maps (None otherwise, a note says why)."""
  state = encoder_state(state)
  options = timm_vit.Options(frontend=FRONTEND, orientation="time_freq",
                             num_heads=options.num_heads, frames=options.frames,
                             fixed_positions=True)
  encoder = {k: v for k, v in state.items() if k.split(".")[0] not in DECODER_ROOTS}
  params, changes = timm_vit.vit_to_jax(encoder, options, "audiomae")
  decoder = {k: v for k, v in state.items() if k.split(".")[0] in DECODER_ROOTS}
  changes["decoder_params"] = None
  if decoder:
    patch_shape = changes["model.patch_shape"]
    grid = (frontends.get_frontend(FRONTEND).n_mels // patch_shape[0],
            changes["data.frames"] // patch_shape[1])
    refused = decoder_refusal(decoder, grid)
    if not refused:
      try:
        changes["decoder_params"], decoder_changes = decoder_to_jax(decoder, grid, patch_shape)
      except CheckpointError as err:
        refused = str(err)
    if refused:
      roots = sorted({k.split(".")[0] for k in decoder})
      changes["notes"].append(f"not imported: the MAE decoder ({', '.join(roots)}): "
                              f"{refused}; continued pretraining starts a fresh one")
    else:
      changes.update(decoder_changes)
      changes["notes"].append(
          f"imported the MAE decoder (decoder_mode=1: {decoder_changes['decoder.depth']} Swin "
          f"V2 blocks of width {decoder_changes['decoder.width']}, windows 4 x 4 shifted by "
          f"2 time patches on odd blocks, AudioMAE's no_shift=False): --config.init_from "
          f"continues AudioMAE pretraining with it")
  changes["data.normalization"] = "recipe"  # AudioMAE's constants are the ajepa recipe's
  return params, changes


def decoder_refusal(decoder: dict, grid: tuple[int, int]) -> str | None:
  """Why the decoder keys do not map onto ours on the token `grid` (None when they do),
  in a few words."""
  if grid[0] % WINDOW[0] or grid[1] % WINDOW[1] or grid[1] == WINDOW[1]:
    # One window along time: AudioMAE's block would drop its shift there, ours keeps it.
    return (f"its {WINDOW[0]} x {WINDOW[1]} windows do not tile the {grid[0]} x {grid[1]} "
            f"token grid of --frames into more than one along time")
  depth = vit_layout.block_count(decoder, DECODER_PREFIX)
  if depth and f"{DECODER_PREFIX}0.attn.tau" not in decoder \
      and f"{DECODER_PREFIX}0.attn.qkv.weight" in decoder:
    return ("decoder_mode=0, timm Blocks attending over the class token and every patch "
            "(our decoder has no class-token slot)")
  required = list(DECODER_KEYS) + [f"{DECODER_PREFIX}{i}.{k}" for i in range(depth)
                                   for k in SWIN_BLOCK_KEYS]
  missing = vit_layout.missing_keys(decoder, required) if depth else ["decoder_blocks.0.*"]
  if missing:
    return f"missing keys {', '.join(missing[:4])}" + (
        f" and {len(missing) - 4} more" if len(missing) > 4 else "")
  unknown = sorted(set(decoder) - set(required))
  if unknown:
    return f"keys this decoder has no place for: {', '.join(unknown[:4])}" + (
        f" and {len(unknown) - 4} more" if len(unknown) > 4 else "")
  return None


def decoder_to_jax(decoder: dict, grid: tuple[int, int], patch_shape: tuple[int, int]
                   ) -> tuple[dict, dict]:
  """(our decoder params, its config fields) from decoder_mode=1's keys, for an encoder of
  token `grid` (frequency, time) and patches `patch_shape` (mels, frames)."""
  f32 = lambda k: np.asarray(decoder[k], np.float32)  # noqa: E731
  embed = f32("decoder_embed.weight")
  width = embed.shape[0]
  depth = vit_layout.block_count(decoder, DECODER_PREFIX)
  heads = f32(f"{DECODER_PREFIX}0.attn.tau").shape[0]
  mlp_dim = f32(f"{DECODER_PREFIX}0.mlp.fc1.weight").shape[0]
  pf, pt = patch_shape
  vit_layout.check_shapes(decoder, {
      "decoder_embed.bias": (width,), "mask_token": (1, 1, width),
      "decoder_norm.weight": (width,), "decoder_norm.bias": (width,),
      "decoder_pred.weight": (pf * pt, width), "decoder_pred.bias": (pf * pt,),
      **vit_layout.block_shapes(depth, width, mlp_dim, DECODER_PREFIX),
      **{f"{DECODER_PREFIX}{i}.attn.tau": (heads,) for i in range(depth)}})
  pos = f32("decoder_pos_embed").reshape(-1, width)
  reference_grid = (grid[0], (pos.shape[0] - 1) // grid[0])
  if pos.shape[0] - 1 != reference_grid[0] * reference_grid[1]:
    raise CheckpointError(
        f"decoder_pos_embed has {pos.shape[0]} rows, not 1 + a multiple of the encoder's "
        f"{grid[0]} frequency patches")
  table = vit_layout.tokens_to_ours(pos[1:], reference_grid, "time_freq")
  table = vit_layout.resize_time(table, reference_grid, grid[1], [])  # said for the encoder
  positions, kind = vit_layout.positions_to_jax(table, grid, fixed=True)
  # decoder_pred's outputs: AudioMAE's patchify runs (frame, mel) within a patch.
  pred_w = f32("decoder_pred.weight").reshape(pt, pf, width).transpose(1, 0, 2)
  pred_b = f32("decoder_pred.bias").reshape(pt, pf).T
  params = {
      "embed": {"kernel": embed.T, "bias": f32("decoder_embed.bias")},
      "mask_token": f32("mask_token"),
      **positions,
      "transformer": {**{f"block_{i}": swin_block_to_jax(decoder, f"{DECODER_PREFIX}{i}.", heads)
                         for i in range(depth)},
                      "norm": vit_layout.norm_to_jax(decoder, "decoder_norm")},
      "project": {"kernel": pred_w.reshape(pf * pt, width).T, "bias": pred_b.reshape(-1)},
  }
  changes = {"decoder.width": width, "decoder.depth": depth, "decoder.num_heads": heads,
             "decoder.mlp_dim": mlp_dim, "decoder.positions": kind,
             "decoder.layout": "full_grid", "decoder.attention": "local",
             "decoder.block": "swinv2",
             "decoder.window": {"freq": WINDOW[0], "time": WINDOW[1]},
             "decoder.shift": {"freq": SHIFT[0], "time": SHIFT[1]}}
  return params, changes


def swin_block_to_jax(state: dict, prefix: str, num_heads: int) -> dict:
  """Our SwinV2Block's parameters from the keys `prefix`* of AudioMAE's Swin block."""
  block = vit_layout.block_to_jax(state, prefix, num_heads)
  f32 = lambda k: np.asarray(state[prefix + k], np.float32)  # noqa: E731
  block["attn"]["tau"] = f32("attn.tau")
  block["attn"]["meta_mlp"] = {
      # Its inputs are (time, frequency) offsets on AudioMAE's grid; ours (frequency, time).
      "fc1": {"kernel": np.ascontiguousarray(f32("attn.meta_mlp.fc1.weight").T[::-1]),
              "bias": f32("attn.meta_mlp.fc1.bias")},
      "fc2": {"kernel": f32("attn.meta_mlp.fc2.weight").T,
              "bias": f32("attn.meta_mlp.fc2.bias")}}
  return block
