"""M2D / M2D-AS checkpoints (nttcslab/m2d: m2d/runtime_audio.py, examples/portable_m2d.py)
-> our encoder.

The encoder is timm's ViT with a class token over (B, 1, 80 mels, T frames), frequency x
time, 16 x 16 patches (tokens frequency-major, as ours); pos_embed fixed (kept as a fixed
table); features: M2D's log-mel (nnAudio, our 'audio_jepa' front end), normalised with the
checkpoint's `norm_stats` (mean, std), default [-7.1, 4.2] as M2D's loaders. Keys may sit
under 'model' and carry EVAR's 'module.ar.runtime.backbone.' or RuntimeM2D's 'backbone.'
prefix (stripped as M2D's loaders do). Only the online encoder is imported: target
network, decoder, offline predictor (M2D-AS / M2D-X), CLAP projectors and heads are not.
Evaluation matches M2D's: token outputs after the final norm, class token dropped, each
time step's frequency tokens concatenated (evaluation/features.py 'concat').
"""
import numpy as np

from data_pipelines import frontends
from jepa_jax.convert import timm_vit

FRONTEND = "audio_jepa"
DEFAULT_NORM_STATS = (-7.1, 4.2)  # M2D's loaders, for checkpoints without norm_stats
EVAR_PREFIX = "module.ar.runtime.backbone."
RUNTIME_PREFIX = "backbone."


def encoder_state(state: dict) -> dict:
  state = state["model"] if isinstance(state.get("model"), dict) else state
  state = {k.replace(EVAR_PREFIX, ""): v for k, v in state.items()}
  if any(k.startswith(RUNTIME_PREFIX) for k in state):
    state = {k[len(RUNTIME_PREFIX):]: v for k, v in state.items() if k.startswith(RUNTIME_PREFIX)}
  return state


def to_jax(state: dict, options: timm_vit.Options) -> tuple[dict, dict]:
  state = encoder_state(state)
  options = timm_vit.Options(frontend=FRONTEND, orientation="freq_time",
                             num_heads=options.num_heads, frames=options.frames,
                             fixed_positions=True)
  encoder = {k: v for k, v in state.items() if k.split(".")[0] in timm_vit.ENCODER_ROOTS}
  params, changes = timm_vit.vit_to_jax(encoder, options, "m2d")
  left = sorted({k.split(".")[0] for k in state} - set(timm_vit.ENCODER_ROOTS) - {"norm_stats"})
  if left:
    changes["notes"].append(f"not imported: {', '.join(left)}")
  stats = np.asarray(state.get("norm_stats", DEFAULT_NORM_STATS)).reshape(-1)
  mean, std = float(stats[0]), float(stats[1])
  if "norm_stats" not in state:
    changes["notes"].append(f"no norm_stats in the checkpoint: M2D's default {DEFAULT_NORM_STATS}")
  changes["frontend.normalization"] = {"mean": mean, "std": std}
  recipe = frontends.get_frontend(FRONTEND)
  same = (mean, std) == (recipe.norm_mean, recipe.norm_std)
  changes["data.normalization"] = "recipe" if same else "dataset"
  return params, changes
