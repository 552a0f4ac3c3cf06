"""Full fine-tuning of an exported encoder on a labelled task (docs/evaluation.md).

Model: the encoder, mean pool over its output tokens, then AudioMAE's classifier: a LayerNorm
(`fc_norm`) and a linear layer (weights N(0, 2e-5) truncated, zero bias, as MAE). Every
parameter trains; the encoder's layers by layer-wise lr decay (layerwise.py; classifier and
the encoder's final norm x 1, block i x decay ** (L + 1 - i), embedding x decay ** (L + 1)).

Settings: the config's `finetune` section; defaults (fields.FINETUNE_DEFAULTS) are
AudioMAE's AS-20K / ESC-50 column shortened for a CPU: 20 epochs (2 warmup), batch 32,
base lr 1e-3, AdamW (0.9, 0.999), wd 1e-4, layer decay 0.75, mixup 0.5, token dropping
0.2 of frequency rows and 0.2 of time columns, regularised masking 0.1 (A-JEPA),
balanced sampling of multi-label tasks, 3 seeds.

Training:
  AdamW, lr = base_lr * batch / 256, linear warmup then cosine to 0 over every step; no
    weight decay on biases, norms and positions (optimizer.weight_decay_mask).
  Crops: a random window of model length (`frontend_meta['frames']`) per clip and epoch,
    or of the task's unit_sec when that is shorter (then padded to model length with the
    clip's own pad, task_data.pad_value, as are clips shorter than the window). A clip
    longer than unit_sec is cropped anywhere in it, as EVAR's random crop. Padding is
    input like any audio (silence, as AudioMAE pads), never masked out.
  Mixup (`mixup` = alpha > 0): each example is mixed with a random partner of its batch,
    lambda ~ Beta(alpha, alpha) per example, spectrograms and targets alike.
  Token dropping (AudioMAE): each example keeps int(F * (1 - drop_freq)) of the F
    frequency rows and int(T * (1 - drop_time)) of the T time columns of the patch grid
    (at least one), chosen at random; the encoder sees only those tokens (static shapes,
    through its `idx` argument).
  Regularised masking (A-JEPA, `rm_rate` > 0): in every layer floor(rate * tokens) random
    keys are invisible to every query (attention.regularised_key_masks).
  Loss: softmax cross-entropy on (soft, with mixup) targets; sigmoid binary
    cross-entropy, mean over classes, for multi-label tasks.
  Sampling: shuffled epochs; for multi-label tasks with `balanced_sampling`, epochs of
    as many draws with replacement, weighted by the sum over an example's classes of
    1 / (training examples of the class) (AudioMAE's weighted sampler).
  The last partial batch is filled with repeats of its own examples at weight 0, so
    every step has the same shapes and every example counts once.
  Batches are split over as many local devices as divide the batch size (data parallel;
    parameters and optimizer state replicated).

Evaluation: plain attention, no dropping. Each clip (cut from its start to unit_sec when
the task has one) is split into model-length chunks, the last padded with the clip's pad;
a clip's logits are the mean of its chunks' logits weighted by the time patches that hold
audio (features.chunk). After every epoch the validation split is scored; the epoch with
the best headline score (accuracy or mAP; the earliest on ties) gives the test scores.

Folds and seeds as task_data.splits (one run per fold); per seed the fold mean; the
result's `scores` is scores.summary over seeds, as the other protocols'. Same settings and
seed, same result.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jepa_jax.config import fields, validation
from jepa_jax.evaluation import features, scores, task_data
from jepa_jax.models import attention, layers, vit
from jepa_jax.models import patches as patches_lib
from jepa_jax.objectives import mixing
from jepa_jax.optim import layerwise, optimizer
from jepa_jax.parallel import allocator, memory


class Classifier(nn.Module):
  """Mean pool over tokens, LayerNorm (AudioMAE's fc_norm), linear layer to logits."""
  num_classes: int

  @nn.compact
  def __call__(self, tokens: jnp.ndarray) -> jnp.ndarray:
    x = tokens.astype(jnp.float32).mean(1)
    x = nn.LayerNorm(epsilon=layers.LN_EPS, name="fc_norm")(x)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.truncated_normal(2e-5),
                    name="linear")(x)


def settings_of(settings) -> ml_collections.ConfigDict:
  """FINETUNE_DEFAULTS overridden by `settings` (a ConfigDict or dict), validated."""
  given = dict(settings.items()) if settings is not None else {}
  merged = {**fields.FINETUNE_DEFAULTS, **given}
  errors = validation.finetune_errors(merged)
  if errors:
    raise fields.ConfigError(validation.one_line("invalid fine-tuning settings", errors))
  return ml_collections.ConfigDict(merged)


# ---- pieces of the train step (pure functions) ----

def kept(size: int, drop: float) -> int:
  """Rows (or columns) of `size` kept when dropping a fraction `drop` (AudioMAE: int(size *
  (1 - drop)), at least one)."""
  return max(1, int(size * (1 - drop) + 1e-9))


def drop_tokens(rng: jax.Array, batch: int, grid: tuple[int, int], drop_freq: float,
                drop_time: float) -> jnp.ndarray:
  """(batch, kept rows x kept columns) token positions, frequency-major: per example a
  random set of kept(F, drop_freq) frequency rows crossed with kept(T, drop_time) time
  columns of the (F, T) grid."""
  gf, gt = grid
  kf, kt = kept(gf, drop_freq), kept(gt, drop_time)
  r_f, r_t = jax.random.split(rng)
  rows = jnp.sort(jnp.argsort(jax.random.uniform(r_f, (batch, gf)), -1)[:, :kf], -1)
  cols = jnp.sort(jnp.argsort(jax.random.uniform(r_t, (batch, gt)), -1)[:, :kt], -1)
  return (rows[:, :, None] * gt + cols[:, None, :]).reshape(batch, kf * kt)


def mixup(rng: jax.Array, x: jnp.ndarray, y: jnp.ndarray, alpha: float):
  """(x, y) mixed with a random permutation of the batch: lam * a + (1 - lam) * b, lam ~
  Beta(alpha, alpha) per example. Returns (x, y, lam)."""
  r_lam, r_perm = jax.random.split(rng)
  lam = jax.random.beta(r_lam, alpha, alpha, (x.shape[0],))
  partner = jax.random.permutation(r_perm, x.shape[0])
  return mixing.convex(x, partner, lam), mixing.convex(y, partner, lam), lam


def example_losses(logits: jnp.ndarray, y: jnp.ndarray, multilabel: bool) -> jnp.ndarray:
  """(B,) losses against (B, classes) targets (probabilities, or multi-hot)."""
  if multilabel:
    return optax.sigmoid_binary_cross_entropy(logits, y).mean(-1)
  return optax.softmax_cross_entropy(logits, y)


def make_optimizer(s) -> optax.GradientTransformation:
  """AdamW at unit learning rate (the step multiplies by the scheduled lr), then the
  layer-wise decay factors of params['encoder'] (the classifier gets factor 1)."""
  _, after = layerwise.transformations(s.layer_decay, 0, "encoder")
  adamw = optax.adamw(1.0, b1=s.b1, b2=s.b2, eps=1e-8, weight_decay=s.weight_decay,
                      mask=optimizer.weight_decay_mask)
  return optax.chain(adamw, *after)


def learning_rates(s, steps_per_epoch: int) -> np.ndarray:
  """lr of every step, optimizer.learning_rate_schedule's values (linear warmup to base_lr *
  batch / 256 over warmup_epochs, then cosine to 0 at the last step), precomputed so the
  compiled step takes the lr as an argument whatever the number of steps."""
  total = s.epochs * steps_per_epoch
  warmup = min(round(s.warmup_epochs * steps_per_epoch), total - 1)
  schedule = optimizer.learning_rate_schedule(
      ml_collections.ConfigDict(dict(base_lr=s.base_lr, end_lr_ratio=0.0)), s.batch_size,
      total, warmup)
  return np.asarray(jax.vmap(schedule)(jnp.arange(total)), np.float32)


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """What the compiled train step depends on (static)."""
  mixup: float
  drop_freq: float
  drop_time: float
  rm_rate: float
  b1: float
  b2: float
  weight_decay: float
  layer_decay: float
  multilabel: bool

  @classmethod
  def of(cls, s, multilabel: bool) -> StepOptions:
    return cls(float(s.mixup), float(s.drop_freq), float(s.drop_time), float(s.rm_rate),
               float(s.b1), float(s.b2), float(s.weight_decay), float(s.layer_decay),
               bool(multilabel))


def apply_model(encoder: vit.Encoder, classifier: Classifier, params, mel: jnp.ndarray,
                idx: jnp.ndarray | None = None, layer_key_masks: jnp.ndarray | None = None):
  """Logits of (B, n_mels, frames) spectrograms; with `idx` only those token positions."""
  patches = patches_lib.patchify(mel, encoder.patch_shape)
  if idx is not None:
    patches = patches_lib.gather_tokens(patches, idx)
  tokens = encoder.apply({"params": params["encoder"]}, patches, idx, None, layer_key_masks)
  return classifier.apply({"params": params["classifier"]}, tokens)


def train_step(encoder: vit.Encoder, classifier: Classifier, opts: StepOptions, params, opt_state,
               batch: dict, lr, rng):
  """One AdamW step on batch {'mel' (B, n_mels, frames), 'y' (B, classes), 'w' (B,)}.
  Returns (params, opt_state, weighted mean loss)."""
  r_mix, r_drop, r_rm = jax.random.split(rng, 3)
  x, y, w = batch["mel"], batch["y"], batch["w"]
  if opts.mixup > 0:
    x, y, _ = mixup(r_mix, x, y, opts.mixup)
  b = x.shape[0]
  idx = None
  if opts.drop_freq > 0 or opts.drop_time > 0:
    idx = drop_tokens(r_drop, b, encoder.grid, opts.drop_freq, opts.drop_time)
  tokens = encoder.grid[0] * encoder.grid[1] if idx is None else idx.shape[1]
  masks = None
  if opts.rm_rate > 0:
    masks = attention.regularised_key_masks(r_rm, encoder.depth, b, tokens, opts.rm_rate)

  def loss_fn(p):
    logits = apply_model(encoder, classifier, p, x, idx, masks)
    return (example_losses(logits, y, opts.multilabel) * w).sum() / jnp.maximum(w.sum(), 1.0)

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = make_optimizer(opts).update(grads, opt_state, params)
  updates = jax.tree.map(lambda u: (lr * u).astype(u.dtype), updates)
  return optax.apply_updates(params, updates), opt_state, loss


@dataclasses.dataclass(frozen=True)
class Compiled:
  """The jitted functions of one (encoder, classifier, options, mesh): replicated parameters,
  batches split over the mesh's 'data' axis."""
  init: Callable      # (encoder params, key) -> (params, opt_state)
  step: Callable      # (params, opt_state, batch, lr, key, step) -> (params, opt_state, loss)
  logits: Callable    # (params, mel) -> logits
  copy: Callable      # params -> a copy the next (donating) step leaves intact


@functools.lru_cache(maxsize=8)
def compiled(encoder: vit.Encoder, classifier: Classifier, opts: StepOptions,
             mesh: jax.sharding.Mesh) -> Compiled:
  """Cached, so that every fold, seed and call with the same shapes compiles once."""
  repl, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

  def init(encoder_params, key):
    classifier_params = classifier.init(key, jnp.zeros((1, 1, encoder.width)))["params"]
    # The step donates its parameters: never the caller's buffers.
    params = {"encoder": jax.tree.map(jnp.copy, encoder_params), "classifier": classifier_params}
    return params, make_optimizer(opts).init(params)

  def step(params, opt_state, batch, lr, key, i):
    return train_step(encoder, classifier, opts, params, opt_state, batch, lr,
                      jax.random.fold_in(key, i))

  return Compiled(
      init=jax.jit(init, out_shardings=repl),
      step=jax.jit(step, in_shardings=(repl, repl, split, repl, repl, repl),
                   out_shardings=repl, donate_argnums=(0, 1)),
      logits=jax.jit(functools.partial(apply_model, encoder, classifier),
                     in_shardings=(repl, split), out_shardings=repl),
      copy=jax.jit(lambda tree: jax.tree.map(jnp.copy, tree), out_shardings=repl))


def compiled_step(fns: Compiled, encoder_params, batch_size: int,
                  mel_shape: tuple[int, int], num_classes: int):
  """The train step compiled for batches of `batch_size` (n_mels, frames) clips; jit's
  cache keeps it for the first call."""
  sds = jax.ShapeDtypeStruct
  params, opt_state = jax.eval_shape(fns.init, encoder_params, jax.random.key(0))
  batch = {"mel": sds((batch_size, *mel_shape), jnp.float32),
           "y": sds((batch_size, num_classes), jnp.float32),
           "w": sds((batch_size,), jnp.float32)}
  return fns.step.lower(params, opt_state, batch, sds((), jnp.float32),
                        jax.eval_shape(lambda: jax.random.key(0)), sds((), jnp.int32)).compile()


def check_memory(fns: Compiled, encoder_params, batch_size: int, mel_shape: tuple[int, int],
                 num_classes: int, mesh: jax.sharding.Mesh) -> None:
  """Stop with one line where the train step does not fit a device: what it needs and
  has, and a finetune.batch_size estimated to fit (fine-tuning changes no batch by
  itself: mixup and the lr scaling depend on it)."""
  step = compiled_step(fns, encoder_params, batch_size, mel_shape, num_classes)
  budget = memory.budget_bytes(mesh.devices.flat)
  needed = memory.needed_bytes(step)
  if budget is None or needed <= budget:
    return
  fits = memory.rows_estimated_to_fit(step, batch_size, budget)
  advice = f"--finetune=batch_size={fits} is estimated to fit (the lr scales with it)" \
      if fits else "not even one clip a step fits: a smaller encoder or a larger device"
  raise memory.OutOfMemoryError(
      f"fine-tuning at finetune.batch_size {batch_size} needs {memory.readable(needed)} per "
      f"device (XLA's memory analysis) and a device has {memory.readable(budget)} usable; "
      f"{advice}")


# ---- data (NumPy, host side) ----

def balanced_weights(y: np.ndarray) -> np.ndarray:
  """(n,) sampling weights of (n, classes) multi-hot targets: the sum over an example's
  classes of 1 / (examples of that class) (AudioMAE's weighted sampler)."""
  y = np.asarray(y, np.float64)
  count = y.sum(0)
  return y @ np.where(count > 0, 1.0 / np.maximum(count, 1), 0.0)


def epoch_order(rng: np.random.Generator, n: int, weights: np.ndarray | None = None):
  """Example order of one epoch: a permutation, or n weighted draws with replacement."""
  if weights is None:
    return rng.permutation(n)
  return rng.choice(n, size=n, replace=True, p=weights / weights.sum())


def train_window(task: task_data.LabelledTask, frontend_meta: dict) -> int:
  """Frames of a training crop: the model's length, or the task's unit if shorter."""
  frames = int(frontend_meta["frames"])
  unit = task_data.unit_frames(task, frontend_meta)
  return frames if unit is None else min(unit, frames)


def random_crop(mel: np.ndarray, window: int, frames: int, pad: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
  """A `window`-frame crop at a random offset, padded with `pad` to `frames`."""
  start = int(rng.integers(0, max(mel.shape[1] - window, 0) + 1))
  return task_data.crop(task_data.crop(mel, window, pad, start), frames, pad)


def batches(order: np.ndarray, batch_size: int):
  """(rows, weights) of each batch; the last one filled up with its own rows at weight 0."""
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    w = np.zeros(batch_size, np.float32)
    w[:len(rows)] = 1.0
    yield np.resize(rows, batch_size), w


def eval_chunks(mels: list[np.ndarray], unit: int | None, frames: int, patch_frames: int,
                pads):
  """(chunks (C, n_mels, frames), owner clip (C,), weight (C,)) of clips cut to `unit`,
  each padded with its own pad (`pads`: one per clip, or one for all, as features.chunk)."""
  pads = features.pads_per_clip(pads, len(mels))
  clips = [task_data.crop(m, unit, pad) for m, pad in zip(mels, pads)]
  chunks, owner, cols = features.chunk(clips, frames, patch_frames, pads)
  return chunks, owner, cols.astype(np.float64)


def _data_mesh(batch_size: int) -> jax.sharding.Mesh:
  """The most local devices that divide the batch, on one 'data' axis."""
  devices = jax.local_devices()
  n = max(d for d in range(1, len(devices) + 1) if batch_size % d == 0)
  return jax.sharding.Mesh(np.asarray(devices[:n]), ("data",))


@dataclasses.dataclass
class _Run:
  """What every run of one task shares."""
  encoder: vit.Encoder
  fns: Compiled
  s: ml_collections.ConfigDict
  y: np.ndarray           # (n, classes) float targets
  labels: np.ndarray      # what scores.task_scores takes
  multilabel: bool

  def logits(self, params, chunks, owner, weight, clips: int) -> np.ndarray:
    """(clips, classes): chunk logits averaged per clip, weighted."""
    z = np.concatenate([np.asarray(self.fns.logits(params, part))[:n] for part, n in
                        features.padded_batches(chunks, self.s.batch_size)])
    z = z.astype(np.float64) * weight[:, None]
    total = np.zeros((clips, z.shape[1]))
    np.add.at(total, owner, z)
    return total / np.bincount(owner, weight, clips)[:, None]


def _score(valid: dict, name: str) -> float:
  """A validation score to maximise; undefined (NaN: no scorable class) counts as worst."""
  value = valid[name]
  return -math.inf if math.isnan(value) else value


def _fit(run: _Run, params, mels, pads, split, evals, frontend_meta, task, seed: int,
         fold: int, progress: Callable | None) -> dict:
  """One fine-tuning run: train on split[0], select the epoch on split[1], test split[2]."""
  s = run.s
  train_rows, valid_rows, test_rows = split
  rng = np.random.default_rng([seed, fold])
  key = jax.random.fold_in(jax.random.key(seed), fold)
  init_key, step_key = jax.random.split(key)
  params, opt_state = run.fns.init(params, init_key)
  weights = None
  if run.multilabel and s.balanced_sampling:
    weights = balanced_weights(run.y[train_rows])
  steps_per_epoch = math.ceil(len(train_rows) / s.batch_size)
  lrs = learning_rates(s, steps_per_epoch)
  window, frames = train_window(task, frontend_meta), int(frontend_meta["frames"])
  headline = scores.headline(run.multilabel)
  history, best, best_params, step = [], None, params, 0
  for epoch in range(1, s.epochs + 1):
    losses = []
    for rows, w in batches(train_rows[epoch_order(rng, len(train_rows), weights)],
                           s.batch_size):
      mel = np.stack([random_crop(mels[r], window, frames, pads[r], rng) for r in rows])
      batch = {"mel": mel, "y": run.y[rows], "w": w}
      params, opt_state, loss = run.fns.step(params, opt_state, batch, lrs[step], step_key,
                                             np.int32(step))
      losses.append(loss)
      step += 1
    valid = scores.task_scores(run.logits(params, *evals[0], len(valid_rows)),
                               run.labels[valid_rows], run.multilabel)
    entry = {"epoch": epoch, "loss": float(np.mean(jax.device_get(losses))), "valid": valid}
    if epoch == 1:  # its steps have run: keep one step's temporaries for the next, not two
      allocator.release_free_memory()
    history.append(entry)
    if progress is not None:
      progress({"seed": seed, "fold": fold, **entry})
    if best is None or _score(valid, headline) > _score(best["valid"], headline):
      best, best_params = entry, run.fns.copy(params)
  test = scores.task_scores(run.logits(best_params, *evals[1], len(test_rows)),
                            run.labels[test_rows], run.multilabel)
  return {"seed": seed, "fold": fold, "best_epoch": best["epoch"], "valid": best["valid"],
          "test": test, "history": history}


def finetune_task(encoder: vit.Encoder, params, frontend_meta: dict,
                  task: task_data.LabelledTask, mels: list[np.ndarray], settings,
                  progress: Callable[[dict], None] | None = None, *, pads: list) -> dict:
  """Fine-tune `encoder` (plain params) on `task`, whose whole clips are `mels`, each
  padded with its own pad in `pads` (both from task_data.load_clips(..., whole=True)),
  once per seed and fold.

  `settings`: the `finetune` config section, or a dict of some of its fields (the others
  take FINETUNE_DEFAULTS). `progress` receives {seed, fold, epoch, loss, valid} after
  every epoch. Returns {'scores': scores.summary of the per-seed fold-mean test scores,
  'headline': the score name epochs are selected by, 'runs': [{seed, fold, best_epoch,
  valid, test, history: [{epoch, loss, valid}]}]}.
  """
  s = settings_of(settings)
  frames, (pf, pt) = int(frontend_meta["frames"]), encoder.patch_shape
  if frames != encoder.grid[1] * pt:
    raise ValueError(f"frontend_meta['frames'] = {frames} does not match the encoder's "
                     f"{encoder.grid[1]} time patches of {pt} frames")
  if len(mels) != len(task) or len(pads) != len(task):
    raise ValueError(f"{len(mels)} spectrograms and {len(pads)} pads given for the "
                     f"{len(task)} clips of task {task.name}")
  if any(m.shape[0] != encoder.grid[0] * pf for m in mels):
    raise ValueError(f"the encoder takes {encoder.grid[0] * pf} mel bins; task {task.name} "
                     f"has clips of {sorted({m.shape[0] for m in mels})}")
  labels = task.targets()
  num_classes = len(task.label_names)
  y = labels if task.multilabel else np.eye(num_classes, dtype=np.float32)[labels]
  mesh = _data_mesh(s.batch_size)
  fns = compiled(encoder, Classifier(num_classes), StepOptions.of(s, task.multilabel), mesh)
  check_memory(fns, params, s.batch_size, (encoder.grid[0] * pf, frames), num_classes, mesh)
  # Exported parameters arrive on one device; the steps take them replicated on the mesh.
  params = jax.device_put(params, NamedSharding(mesh, P()))
  run = _Run(encoder, fns, s, y.astype(np.float32), labels, task.multilabel)
  unit = task_data.unit_frames(task, frontend_meta)
  folds = task_data.splits(task)
  evals = [[eval_chunks([mels[r] for r in rows], unit, frames, pt, [pads[r] for r in rows])
            for rows in split[1:]] for split in folds]  # (valid, test) of each fold
  runs, per_seed = [], []
  for seed in range(s.seed, s.seed + s.seeds):
    fold_scores = []
    for fold, split in enumerate(folds):
      result = _fit(run, params, mels, pads, split, evals[fold], frontend_meta, task, seed,
                    fold, progress)
      runs.append(result)
      fold_scores.append(result["test"])
    per_seed.append({k: float(np.mean([f[k] for f in fold_scores])) for k in fold_scores[0]})
  return {"scores": scores.summary(per_seed), "headline": scores.headline(task.multilabel),
          "runs": runs}
