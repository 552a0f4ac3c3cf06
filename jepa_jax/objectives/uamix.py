"""uaMix-MAE contrastive tuning (Tabassum et al. 2024; docs/objectives.md).

A pretrained MAE encoder (config.init_from) plus NNCLR's projector h. Per step:
two augmented views of each clip (augment.py); the anchor view of clip i is mixed with
that of clip j (mixing.py: T-CutMix by default) into m_ij with the virtual label
y_ij = lambda v_i + (1 - lambda) v_j, lambda the box's effective share. Both views go
through the encoder (all tokens, mean-pooled) and h, L2-normalised: z_ij and z+. The
anchor's stand-in is its top-k nearest neighbour in the queue Q (never an entry of clip i
or of clip j); the loss is the positive soft-label cross-entropy
sum_l y_ij[l] L_CL(z_ij, z+_l) (eq. 4 without the paper's extra minus sign), batch mean.

As in eq. 1 the anchor reaches the loss only through a queue entry, so the anchor branch
gets no gradient (it is computed under stop_gradient); the positives carry it. Until the
queue holds k entries eligible for a clip, the clip's own z_ij stands in (SimCLR). The
queue stores the positives' embeddings with their example ids, after the lookup (the
current batch is never its own neighbour). Frozen encoder layers (optim.frozen_layers)
enter the forward pass as constants, so stage 1 computes no gradient through the encoder
and stage 2 none below its top half.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jepa_jax import models
from jepa_jax.config import shapes
from jepa_jax.models import patches, projector
from jepa_jax.objectives import augment, mixing, monitors, nnclr
from jepa_jax.optim import layerwise


class UaMix:
  ema_subtree = None

  @staticmethod
  def splits_batch(config: ml_collections.ConfigDict) -> bool:
    """In-batch negatives and mixing partners couple the batch."""
    del config
    return False

  @staticmethod
  def config_errors(config: ml_collections.ConfigDict) -> list[str]:
    u = config.uamix
    errors = []
    if not u.temperature > 0:
      errors.append(f"uamix.temperature must be > 0, got {u.temperature}")
    if not (isinstance(u.topk, int) and 1 <= u.topk <= u.queue_size):
      errors.append(f"uamix.topk must be an integer in [1, uamix.queue_size], got {u.topk!r}")
    b = config.train.batch_size
    if not (isinstance(u.queue_size, int) and u.queue_size > 0 and u.queue_size % b == 0):
      errors.append(f"uamix.queue_size must be a positive multiple of train.batch_size {b} "
                    f"(a batch is written at once, FIFO), got {u.queue_size!r}")
    if not config.data.dir:
      errors.extend(UaMix.dataset_errors(config, config.data.synthetic.num_pretrain))
    for name in ("hidden", "out", "layers"):
      if not (isinstance(u.projector[name], int) and u.projector[name] >= 1):
        errors.append(f"uamix.projector.{name} must be an integer >= 1, got {u.projector[name]!r}")
    errors.extend(mixing.config_errors(u.mixing, "uamix.mixing"))
    errors.extend(augment.config_errors(u.augment, "uamix.augment"))
    if u.augment.background > 0:
      try:
        augment.ln_power_scale(config.data.frontend, config.data.normalization)
      except ValueError as err:
        errors.append(f"uamix.augment.background mixes powers: {err}")
    if not config.init_from:
      errors.append("init_from must name the pretrained MAE workdir (or export) to tune: "
                    "uaMix-MAE starts from a trained encoder")
    return errors

  @staticmethod
  def dataset_errors(config: ml_collections.ConfigDict, num_examples: int) -> list[str]:
    """A queue that can hold every clip would only ever offer stale copies of the batch."""
    q = config.uamix.queue_size
    if isinstance(q, int) and q >= num_examples:
      return [f"uamix.queue_size {q} must be smaller than the {num_examples} training "
              f"examples (a queue as large as the dataset holds every clip)"]
    return []

  def __init__(self, config: ml_collections.ConfigDict, total_steps: int = 1):
    del total_steps  # no step-dependent schedule
    self.config = config
    self.u = config.uamix
    self.patch_shape = shapes.patch_shape(config)
    self.encoder = models.build_encoder(config, shapes.grid(config))
    p = self.u.projector
    self.projector = projector.Projector(p.hidden, p.out, p.layers)
    self.frozen_layers = config.optim.frozen_layers
    self.ln_scale = (augment.ln_power_scale(config.data.frontend, config.data.normalization)
                     if self.u.augment.background > 0 else None)

  def init(self, rng: jax.Array) -> dict:
    enc_rng, projector_rng = jax.random.split(rng)
    latent = jnp.zeros((2, self.encoder.width), jnp.float32)
    # The projector's parameters keep the entry name 'head' that checkpoints carry.
    return {"encoder": models.init_encoder(self.encoder, enc_rng),
            "head": self.projector.init(projector_rng, latent)["params"]}

  def init_aux(self) -> dict:
    """The queue, its rows sharded like the batch where the rules map the logical axis
    'queue' (configs/uamix.py does), else replicated."""
    queue = nnclr.init_queue(self.u.queue_size, self.u.projector.out)
    return {"queue": {**queue,
                      "embeddings": nn.LogicallyPartitioned(queue["embeddings"], ("queue", None)),
                      "ids": nn.LogicallyPartitioned(queue["ids"], ("queue",))}}

  def encoder_params(self, params: dict) -> dict:
    return params["encoder"]

  def input_transform(self, params: dict, aux: dict) -> None:
    return None

  def features(self, encoder_params, mel: jnp.ndarray) -> jnp.ndarray:
    """Mean-pooled encoder output over all tokens, (B, D) float32. Frozen layers enter as
    constants: their update is zero anyway, and no backward pass reaches below the
    lowest layer that trains."""
    frozen = layerwise.frozen_leaves(encoder_params, self.frozen_layers, None)
    encoder_params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p,
                                  encoder_params, frozen)
    tokens = self.encoder.apply({"params": encoder_params},
                                patches.patchify(mel, self.patch_shape))
    return tokens.astype(jnp.float32).mean(axis=1)

  def embed(self, params: dict, mel: jnp.ndarray) -> jnp.ndarray:
    """z = h(pooled features), L2-normalised, (B, out)."""
    return nnclr.l2_normalize(self.projector.apply({"params": params["head"]},
                                                   self.features(params["encoder"], mel)))

  def loss(self, params, aux, batch, rng, step):
    del step
    k_anchor, k_positive, k_mix = jax.random.split(rng, 3)
    mel, ids = batch["mel"], batch["id"]
    mix = mixing.sample(k_mix, augment.apply(k_anchor, mel, self.u.augment, self.ln_scale),
                        self.u.mixing)
    z_mix = jax.lax.stop_gradient(self.embed(params, mix.mel))
    z_pos = self.embed(params, augment.apply(k_positive, mel, self.u.augment, self.ln_scale))
    exclude = jnp.stack([ids, ids[mix.partner]], axis=1)
    neighbours, found, _ = nnclr.nearest_neighbours(z_mix, exclude, aux["queue"], self.u.topk)
    anchors = jnp.where(found[..., None], neighbours, z_mix[:, None, :])
    labels = mixing.soft_labels(mix.lam, mix.partner, self.u.mixing.label_smoothing)
    per_example = nnclr.soft_info_nce(anchors, z_pos, labels, self.u.temperature)
    loss = per_example.mean()
    queue = nnclr.enqueue(aux["queue"], jax.lax.stop_gradient(z_pos), ids)
    logits = anchors[:, 0] @ z_pos.T
    metrics = {"loss": loss, "neighbour_found": found.mean(),
               "lambda": mix.lam.astype(jnp.float32).mean(),
               "top1_on_label": (logits.argmax(-1) == labels.argmax(-1)).mean(),
               "queue_filled": (queue["ids"] >= 0).mean()}
    return loss, (metrics, {"queue": queue})

  def monitors(self, params, aux, batch, rng, step) -> dict:
    """Collapse monitors of the pooled encoder features and the projections (clean clips)."""
    del aux, rng, step
    pooled = self.features(params["encoder"], batch["mel"])
    z = nnclr.l2_normalize(self.projector.apply({"params": params["head"]}, pooled))
    valid = jnp.ones(pooled.shape[:1], bool)
    return {**monitors.collapse_monitors("encoder", pooled, valid),
            **monitors.collapse_monitors("projection", z, valid)}
