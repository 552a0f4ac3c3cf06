"""AudioMAE checkpoints (facebookresearch/AudioMAE, models_mae.py pretrained and
models_vit.py fine-tuned) -> our encoder.

The encoder is timm's ViT with a class token: input (B, 1, 1024 frames, 128 mels), i.e.
time x frequency, 16 x 16 patches, so its tokens run time-major (reordered here); its
sin-cos pos_embed (fixed, requires_grad=False) is kept as a fixed table, since AudioMAE
builds it on a grid transposed relative to its tokens and it is not our sin-cos; the
class token's position row is folded into the token. Features: Kaldi fbank, 128 mels,
normalised (x + 4.2677393) / (2 * 4.5689974), our 'ajepa' front end as the recipe has it.
Weights sit under 'model' in AudioMAE's checkpoints.

Not imported (said in a note): the decoder (decoder_embed, mask_token, decoder_pos_embed,
decoder_blocks, decoder_norm, decoder_pred) and a fine-tuned classifier head. A fine-tuned
checkpoint with global pooling (fc_norm, no final norm) is refused by name.
"""
from jepa_jax.convert import timm_vit

DECODER_ROOTS = ("decoder_embed", "mask_token", "decoder_pos_embed", "decoder_blocks",
                 "decoder_norm", "decoder_pred")
FRONTEND = "ajepa"


def encoder_state(state: dict) -> dict:
  """The weights under 'model' (AudioMAE's checkpoints) or the state dict itself."""
  return state["model"] if isinstance(state.get("model"), dict) else state


def to_jax(state: dict, options: timm_vit.Options) -> tuple[dict, dict]:
  state = encoder_state(state)
  options = timm_vit.Options(frontend=FRONTEND, orientation="time_freq",
                             num_heads=options.num_heads, frames=options.frames,
                             fixed_positions=True)
  encoder = {k: v for k, v in state.items() if k.split(".")[0] not in DECODER_ROOTS}
  params, changes = timm_vit.vit_to_jax(encoder, options, "audiomae")
  decoder = sorted({k.split(".")[0] for k in state if k.split(".")[0] in DECODER_ROOTS})
  if decoder:
    changes["notes"].append(f"not imported: the MAE decoder ({', '.join(decoder)}); "
                            f"continued pretraining starts a fresh one")
  changes["data.normalization"] = "recipe"  # AudioMAE's constants are the ajepa recipe's
  return params, changes
