"""Masked autoencoder objective (AudioMAE, Dasheng; docs/objectives.md).

The encoder sees the visible (context) tokens only; the decoder puts them back on the
full token grid with a mask token at every other position and predicts each masked
token's values; the loss is the MSE on masked tokens against the per-patch standardised
input ("norm-pix", eps 1e-6), averaged over each sample's masked tokens, then the batch.
The standardisation divides by the unbiased (n - 1) variance of the patch's values, as
torch's `var` does in AudioMAE's `forward_loss` and Dasheng's `MAELoss` (the biased one
scaled every target by sqrt(n / (n - 1)): on AudioMAE's 256-value patches a loss 3.9e-3
off the reference's 1.31, tests/test_convert_import_decoder.py).
Masks come from masks.py: context = visible tokens, targets = masked tokens (unstructured
at 0.8 for AudioMAE, grouped pairs at 0.75 for Dasheng, or any other strategy);
`sample_masks` draws them and `forward` takes them, so that a reference model can be fed
the masks a step uses (tests/test_convert_import_decoder.py).

`mae.input_norm = 'batch_norm'` (Dasheng) puts a BatchNorm over mel bins in front of the
encoder; its running statistics are the objective's aux state, and the loss target is
taken before it.
"""
import jax
import jax.numpy as jnp
import ml_collections

from jepa_jax import masks, models
from jepa_jax.config import shapes
from jepa_jax.models import input_norm, patches
from jepa_jax.objectives import losses, masked_prediction, monitors

INPUT_NORMS = ("none", "batch_norm")


class MAE:
  ema_subtree = None  # no target network

  @staticmethod
  def splits_batch(config: ml_collections.ConfigDict) -> bool:
    """Per-example terms, unless the input BatchNorm's statistics couple the batch."""
    return config.mae.input_norm == "none"

  @staticmethod
  def config_errors(config: ml_collections.ConfigDict) -> list[str]:
    errors = models.predictor_config_errors(config, "decoder", shapes.grid(config))
    if config.decoder.layout != "full_grid":
      errors.append("decoder.layout must be 'full_grid': an MAE decoder sees the whole grid")
    if config.mae.norm_pix_eps <= 0:
      errors.append(f"mae.norm_pix_eps must be > 0, got {config.mae.norm_pix_eps}")
    if config.mae.input_norm not in INPUT_NORMS:
      errors.append(f"mae.input_norm must be one of {INPUT_NORMS}, got "
                    f"{config.mae.input_norm!r}")
    return errors

  def __init__(self, config: ml_collections.ConfigDict, total_steps: int = 1):
    self.config = config
    self.total_steps = total_steps
    self.patch_shape = shapes.patch_shape(config)
    self.grid = shapes.grid(config)
    self.encoder = models.build_encoder(config, self.grid)
    self.decoder = models.build_predictor(
        config, self.grid, "decoder", out_dim=self.patch_shape[0] * self.patch_shape[1])
    self.input_norm = input_norm.MelBatchNorm() \
        if config.mae.input_norm == "batch_norm" else None
    self.n_mels = shapes.input_shape(config)[0]

  def init(self, rng: jax.Array) -> dict:
    encoder, decoder = masked_prediction.init_encoder_and_head(self.encoder, self.decoder, rng)
    params = {"encoder": encoder, "decoder": decoder}
    if self.input_norm is not None:
      mel = jnp.zeros((1, self.n_mels, 1), jnp.float32)
      params["input_norm"] = self.input_norm.init(rng, mel, train=False)["params"]
    return params

  def init_aux(self) -> dict:
    if self.input_norm is None:
      return {}
    return {"input_norm": input_norm.initial_stats(self.n_mels)}

  def input_transform(self, params: dict, aux: dict) -> dict | None:
    """The per-mel-bin scale and shift the exported encoder's input needs, or None."""
    if self.input_norm is None:
      return None
    return input_norm.fold(params["input_norm"], aux["input_norm"])

  def encoder_params(self, params: dict) -> dict:
    return params["encoder"]

  def sample_masks(self, rng: jax.Array, batch_size: int, step) -> masks.MaskSet:
    """The masks `loss` and `monitors` use for a batch at `step` with `rng`."""
    return masks.sample(rng, batch_size, self.grid, self.config.mask, step, self.total_steps)

  def forward(self, params, aux, batch, m: masks.MaskSet, train: bool):
    """(prediction at every target slot of `m`, its norm-pix targets, new aux)."""
    mel, new_aux = batch["mel"], {}
    if self.input_norm is not None:
      variables = {"params": params["input_norm"], "batch_stats": aux["input_norm"]}
      if train:
        normed, updates = self.input_norm.apply(variables, mel, train=True,
                                                mutable=["batch_stats"])
        new_aux = {"input_norm": updates["batch_stats"]}
      else:
        normed = self.input_norm.apply(variables, mel, train=False)
    else:
      normed = mel
    p = masked_prediction.encode_and_predict(
        self.encoder, self.decoder, params["encoder"], params["decoder"],
        patches.patchify(normed, self.patch_shape), m)
    # The target is the input before the normaliser (Dasheng).
    target = patches.gather_tokens(patches.patchify(mel, self.patch_shape), p.target_idx)
    return p, norm_pix(target.astype(jnp.float32), self.config.mae.norm_pix_eps), new_aux

  def loss(self, params, aux, batch, rng, step):
    m = self.sample_masks(rng, batch["mel"].shape[0], step)
    p, target, new_aux = self.forward(params, aux, batch, m, train=True)
    loss = losses.masked_mean(losses.l2(p.pred.astype(jnp.float32), target), p.target_valid)
    return loss, ({"loss": loss}, new_aux)

  def monitors(self, params, aux, batch, rng, step) -> dict:
    """Collapse monitors of the encoder's embeddings of the visible tokens."""
    m = self.sample_masks(rng, batch["mel"].shape[0], step)
    p, _, _ = self.forward(params, aux, batch, m, train=False)
    return monitors.collapse_monitors("encoder", p.context, p.context_valid)


def norm_pix(x: jnp.ndarray, eps: float) -> jnp.ndarray:
  """Each patch (last axis) less its mean, over sqrt(unbiased variance + eps)."""
  mean = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True, ddof=1)
  return (x - mean) / jnp.sqrt(var + eps)
