"""Which patches are context and which are targets: every strategy of the four papers.

Masks are index sets into the frequency-major patch grid (token n sits at
(f, t) = divmod(n, T)), sampled on device under `jax.jit`, vectorised over the batch,
from the key the train step derives with `fold_in(key, step)`.

Static shapes, exact semantics. Every sample of a config has the same array shapes:

    context_idx, context_valid   (B, K, Nc)       K mask sets per clip (multi-mask)
    target_idx,  target_valid    (B, K, M, Nt)    M target groups per set (e.g. 4 blocks)

Strategies with a fixed count (unstructured, grouped, time-and-frequency lines) fill
every slot. Block strategies draw a variable number of patches; they keep their exact
semantics by packing the valid patches first (in grid order) into slots sized by a
proven upper bound, with `*_valid` false on the rest. Attention honours the flags as
a key mask and losses average over valid targets only, so nothing is ever truncated to
a batch minimum and no real token is used as padding (padding slots hold index 0 and
are ignored). The target groups of one set are predicted separately from the same
context (I-JEPA); the loss averages over all valid target slots of a sample.

Block geometry (docs/masks.md): a block of scale s and aspect ratio r (height /
width, in patches) has area a = s * F * T, height round(sqrt(a r)) and width
round(sqrt(a / r)); a side longer than the grid is clipped to the grid and the other
side recomputed as round(a / side) to keep the area (itself clipped). Block corners are
uniform over every position where the block fits, so the last row and column are
reachable (the I-JEPA collator's randint(0, H - h) never reaches them).

Rejection is bounded and vectorised: the context block is drawn `attempts` times at
once per sample and the first draw that keeps enough context wins (at least
`min_context` patches and, for time-frequency aware masking, more than `min_survival`
of its area). If none does, the draw keeping the most is used; if even that keeps fewer
than `min_context` patches, the context falls back to every patch outside the target
blocks (for time-frequency aware masking: crosses are then not removed), so the minimum
holds whenever the target blocks leave that many patches. (On 8 frequency rows three
crosses of A-JEPA-sized blocks usually cover every row: there `cross` mostly falls back,
and `time` removal is the one that keeps the paper's intent.)

Strategies (by config name): unstructured, multi_block, time, time_frequency_aware,
curriculum (A-JEPA), grouped (Dasheng MAE), time_and_frequency (AudioMAE lines)."""
import math
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np


@flax.struct.dataclass
class MaskSet:
  context_idx: jnp.ndarray    # (B, K, Nc) int32
  context_valid: jnp.ndarray  # (B, K, Nc) bool
  target_idx: jnp.ndarray     # (B, K, M, Nt) int32
  target_valid: jnp.ndarray   # (B, K, M, Nt) bool


def default_config(strategy: str = "unstructured", **overrides) -> ml_collections.ConfigDict:
  """Every strategy's parameters with the papers' values; `strategy` picks one."""
  c = ml_collections.ConfigDict()
  c.strategy = strategy
  c.num_sets = 1        # mask sets per clip sharing one target pass (A-JEPA multi-mask)
  c.attempts = 8        # bounded rejection: context draws per sample
  c.unstructured = dict(target_ratio=0.6)  # Audio-JEPA code; M2D 0.6-0.7
  # I-JEPA, used by Audio-JEPA (table 3) and A-JEPA (random block). min_context is
  # I-JEPA's min_keep.
  c.multi_block = dict(num_targets=4, target_scale=(0.15, 0.2), target_aspect=(0.75, 1.5),
                       context_scale=(0.85, 1.0), context_aspect=(1.0, 1.0), min_context=4)
  # Audio-JEPA: blocks over the whole frequency axis; scales as multi-block.
  c.time = dict(num_targets=4, target_scale=(0.15, 0.2), context_scale=(0.85, 1.0),
                min_context=4)
  # A-JEPA appendix A: 3 blocks whose crosses leave the context; a context draw must keep
  # more than min_survival of its area (listing 1's min_ratio). The paper gives no target
  # aspect for these blocks: I-JEPA's is used.
  c.time_frequency_aware = dict(num_targets=3, target_scale=(0.05, 0.075),
                                target_aspect=(0.75, 1.5), context_scale=(0.85, 1.0),
                                context_aspect=(1.0, 1.0), removal="cross",
                                min_survival=0.35, min_context=4)
  # A-JEPA eq. 2: Bernoulli(f(s)) picks time-frequency aware (1) or multi-block (0).
  c.curriculum = dict(c0=0.01, granularity="step", order="easy_to_hard")
  c.grouped = dict(ratio=0.75, group=2)          # Dasheng: aligned pairs of frame chunks
  c.time_and_frequency = dict(time_ratio=0.5, freq_ratio=0.5)  # AudioMAE lines
  c.update(overrides)
  return c


REMOVALS = ("cross", "time", "freq", "random")


GRANULARITIES = ("step", "sample")


ORDERS = ("easy_to_hard", "hard_to_easy")


def _block_hw(area, aspect, grid):
  """Block sides for areas and aspect ratios (arrays, or NumPy for static bounds)."""
  xp = jnp if isinstance(area, jax.Array) else np
  height, width = grid
  h = xp.maximum(xp.round(xp.sqrt(area * aspect)), 1)
  w = xp.maximum(xp.round(xp.sqrt(area / aspect)), 1)
  h_over = h > height
  w = xp.where(h_over, xp.clip(xp.round(area / height), 1, width), w)
  h = xp.where(h_over, height, h)
  w_over = w > width
  h = xp.where(w_over, xp.clip(xp.round(area / width), 1, height), h)
  w = xp.where(w_over, width, w)
  return h.astype(xp.int32), w.astype(xp.int32)


def block_size(rng, n: int, grid, scale, aspect):
  """(h, w) per sample, area uniform in scale * F * T, aspect uniform in `aspect`."""
  ka, kr = jax.random.split(rng)
  area = jax.random.uniform(ka, (n,), minval=scale[0], maxval=scale[1]) * grid[0] * grid[1]
  ratio = jax.random.uniform(kr, (n,), minval=aspect[0], maxval=aspect[1])
  return _block_hw(area, ratio, grid)


def block_area_bound(grid, scale, aspect) -> int:
  """A proven upper bound of h * w over every draw of block_size (static slot counts).

  round() is monotone, so the raw sides are at most H* = round(sqrt(a r_max)) and
  W* = round(sqrt(a / r_min)) at the largest area a. Unclipped blocks have h * w <=
  min(H, H*) * min(W, W*); a clipped height (H* > F) gives F * round(a / F) (clipped to
  T); a clipped width (W* > T) gives T * round(a / T) (clipped to F).
  """
  height, width = grid
  a = scale[1] * height * width
  h_raw = max(1.0, float(np.round(math.sqrt(a * aspect[1]))))
  w_raw = max(1.0, float(np.round(math.sqrt(a / aspect[0]))))
  cases = [min(height, h_raw) * min(width, w_raw)]
  if h_raw > height:
    cases.append(height * min(width, max(1.0, float(np.round(a / height)))))
  if w_raw > width:
    cases.append(width * min(height, max(1.0, float(np.round(a / width)))))
  return int(max(cases))


def _round_at_least(x: float) -> int:
  """An integer no larger than round(y) for any float32 y computed as >= x: round(y) >=
  y - 0.5, and the float32 products may fall a few ulps short of x."""
  return int(math.ceil(x * (1 - 1e-5) - 0.5))


def block_area_lower_bound(grid, scale, aspect) -> int:
  """A proven lower bound of h * w over every draw of block_size.

  At the smallest area a, the sides are at least h* = round(sqrt(a r_min)) and
  w* = round(sqrt(a / r_max)) (round is monotone). A clipped side equals the grid's, at
  least as large; the side recomputed beside it, round(a / F) or round(a / T), is then
  larger than the unclipped one (sqrt(a r) > F gives a / F > sqrt(a / r)), so
  h * w >= min(F, h*) * min(T, w*).
  """
  height, width = grid
  a = scale[0] * height * width
  h = max(1, min(height, _round_at_least(math.sqrt(a * aspect[0]))))
  w = max(1, min(width, _round_at_least(math.sqrt(a / aspect[1]))))
  return h * w


def place(rng, grid, h, w, count: int):
  """Top-left corners of `count` blocks per sample, uniform where a block fits."""
  kt, kl = jax.random.split(rng)
  n = h.shape[0]
  top = jax.random.randint(kt, (n, count), 0, grid[0] - h[:, None] + 1)
  left = jax.random.randint(kl, (n, count), 0, grid[1] - w[:, None] + 1)
  return top, left


def spans(start, size, length: int):
  """(..., length) bool: positions in [start, start + size)."""
  pos = jnp.arange(length)
  return (pos >= start[..., None]) & (pos < (start + size)[..., None])


def block_masks(grid, top, left, h, w):
  """(n, k, F, T) bool masks of blocks with corners (n, k) and sides (n, 1)."""
  rows = spans(top, jnp.broadcast_to(h, top.shape), grid[0])
  cols = spans(left, jnp.broadcast_to(w, left.shape), grid[1])
  return rows[..., :, None] & cols[..., None, :]


def pack(mask, size: int):
  """(..., N) bool -> indices (..., size) of the True positions in grid order, first,
  and their validity; padding slots hold 0. `size` must bound every row's count (the
  strategies prove it). A cumulative count gives each True position its slot: one
  scatter, no sort."""
  lead, num = mask.shape[:-1], mask.shape[-1]
  rows = mask.reshape(-1, num)
  slot = jnp.where(rows, jnp.cumsum(rows, -1) - 1, size)
  idx = jnp.zeros((rows.shape[0], size + 1), jnp.int32).at[
      jnp.arange(rows.shape[0])[:, None], slot].set(
          jnp.arange(num, dtype=jnp.int32)[None], mode="drop")[:, :size]
  return idx.reshape(lead + (size,)), jnp.arange(size) < mask.sum(-1, keepdims=True)


def random_subset(rng, n: int, num: int, count: int):
  """(n, num) bool with exactly `count` True per row, uniform over subsets."""
  chosen = jax.lax.top_k(jax.random.uniform(rng, (n, num)), count)[1]
  return jnp.zeros((n, num), bool).at[jnp.arange(n)[:, None], chosen].set(True)


def _flat(mask):
  return mask.reshape(mask.shape[:-2] + (-1,))


def time_block_size(rng, n: int, grid, scale):
  """(h, w) per sample of blocks spanning every frequency row: w = round(s * T)."""
  frac = jax.random.uniform(rng, (n,), minval=scale[0], maxval=scale[1])
  w = jnp.clip(jnp.round(frac * grid[1]), 1, grid[1]).astype(jnp.int32)
  return jnp.full((n,), grid[0], jnp.int32), w


def time_block_bound(grid, scale) -> int:
  return grid[0] * max(1, min(grid[1], int(math.floor(scale[1] * grid[1] + 0.5))))


def time_block_lower_bound(grid, scale) -> int:
  return grid[0] * max(1, min(grid[1], _round_at_least(scale[0] * grid[1])))


def constrained_block(rng, grid, n: int, size_fn, acceptable, min_context: int,
                      min_survival: float, attempts: int):
  """A block (one size per sample, `attempts` corners) cut to the acceptable region.

  A draw succeeds when it keeps at least `min_context` patches and more than
  `min_survival` of its own area. Returns (n, F, T): the first successful draw, else
  the draw keeping the most.
  """
  ks, kp = jax.random.split(rng)
  h, w = size_fn(ks, n)
  top, left = place(kp, grid, h, w, attempts)
  survive = block_masks(grid, top, left, h[:, None], w[:, None]) & acceptable[:, None]
  counts = survive.sum((-2, -1))
  needed = jnp.maximum(min_context, jnp.floor(min_survival * h * w).astype(jnp.int32) + 1) \
      if min_survival > 0 else jnp.full((n,), min_context)
  ok = counts >= needed[:, None]
  pick = jnp.where(ok.any(1), jnp.argmax(ok, 1), jnp.argmax(counts, 1))
  return survive[jnp.arange(n), pick]


def _pair(x):
  return tuple(float(v) for v in x)


def _set(context_idx, context_valid, target_idx, target_valid) -> MaskSet:
  return MaskSet(context_idx[:, None], context_valid[:, None], target_idx[:, None],
                 target_valid[:, None])


def num_unstructured_targets(num_tokens: int, target_ratio: float) -> int:
  count = int(round(num_tokens * target_ratio))
  if not 1 <= count <= num_tokens - 1:
    raise ValueError(
        f"mask target_ratio {target_ratio} leaves {count} of {num_tokens} tokens as "
        f"targets; it must leave at least one target and one context token")
  return count


def unstructured(rng, n, grid, cfg, step=0, total_steps=1) -> MaskSet:
  """Targets: a uniform random subset of round(ratio * N) tokens; context: the rest."""
  num = grid[0] * grid[1]
  n_target = num_unstructured_targets(num, cfg.unstructured.target_ratio)
  target = random_subset(rng, n, num, n_target)
  context_idx, context_valid = pack(~target, num - n_target)
  target_idx, target_valid = pack(target, n_target)
  return _set(context_idx, context_valid, target_idx[:, None], target_valid[:, None])


def _targets_and_context(rng, grid, n, target_hw, num_targets, removed_of, context_size,
                         target_bounds, cfg_section, attempts):
  """Shared by the block strategies: place the target blocks, remove
  `removed_of(targets, rows, cols)` from the acceptable region and cut a context block
  to it. Where even the best draw keeps fewer than min_context patches, the context
  falls back to every patch outside the target blocks. Returns packed (context_idx,
  context_valid, target_idx, target_valid). `target_bounds` = (least, most) patches of
  one target block: the context never holds a target patch (every removal covers the
  targets, and so does the fallback), so F * T - least slots hold it; the context
  encoder runs on no more padding than that."""
  kp, kc = jax.random.split(rng)
  h, w = target_hw
  top, left = place(kp, grid, h, w, num_targets)
  h, w = h[:, None], w[:, None]
  targets = block_masks(grid, top, left, h, w)                       # (n, M, F, T)
  rows = spans(top, jnp.broadcast_to(h, top.shape), grid[0])         # (n, M, F)
  cols = spans(left, jnp.broadcast_to(w, left.shape), grid[1])       # (n, M, T)
  removed = removed_of(targets, rows, cols).any(1)
  context = constrained_block(kc, grid, n, context_size, ~removed, cfg_section.min_context,
                              cfg_section.get("min_survival", 0.0), attempts)
  short = context.sum((-2, -1)) < cfg_section.min_context
  context = jnp.where(short[:, None, None], ~targets.any(1), context)
  least, most = target_bounds
  return (*pack(_flat(context), grid[0] * grid[1] - least), *pack(_flat(targets), most))


def multi_block(rng, n, grid, cfg, step=0, total_steps=1) -> MaskSet:
  """I-JEPA: M target blocks (one size per sample), one context block minus targets."""
  p = cfg.multi_block
  ks, kb = jax.random.split(rng)
  scale, aspect = _pair(p.target_scale), _pair(p.target_aspect)
  cscale, caspect = _pair(p.context_scale), _pair(p.context_aspect)
  return _set(*_targets_and_context(
      kb, grid, n, block_size(ks, n, grid, scale, aspect), p.num_targets,
      lambda t, r, c: t, lambda k, m: block_size(k, m, grid, cscale, caspect),
      _block_bounds(grid, scale, aspect), p, cfg.attempts))


def _block_bounds(grid, scale, aspect) -> tuple[int, int]:
  return block_area_lower_bound(grid, scale, aspect), block_area_bound(grid, scale, aspect)


def time(rng, n, grid, cfg, step=0, total_steps=1) -> MaskSet:
  """Audio-JEPA time masking: target and context blocks span every frequency row and
  are sampled over time only; targets are removed from the context."""
  p = cfg.time
  ks, kb = jax.random.split(rng)
  scale, cscale = _pair(p.target_scale), _pair(p.context_scale)
  return _set(*_targets_and_context(
      kb, grid, n, time_block_size(ks, n, grid, scale), p.num_targets, lambda t, r, c: t,
      lambda k, m: time_block_size(k, m, grid, cscale),
      (time_block_lower_bound(grid, scale), time_block_bound(grid, scale)), p, cfg.attempts))


def _removal(kind: str, rng, n: int, num_targets: int):
  """What each target block removes from the context's acceptable region."""
  if kind == "cross":  # listing 1: the block's rows across all time and columns across all freq
    return lambda t, r, c: r[..., :, None] | c[..., None, :]
  if kind == "time":
    return lambda t, r, c: jnp.broadcast_to(c[..., None, :], t.shape)
  if kind == "freq":
    return lambda t, r, c: jnp.broadcast_to(r[..., :, None], t.shape)
  if kind == "random":  # the prose: "time or frequency", drawn per block
    use_time = jax.random.bernoulli(rng, 0.5, (n, num_targets))[..., None, None]
    return lambda t, r, c: jnp.where(use_time, c[..., None, :], r[..., :, None])
  raise ValueError(f"time_frequency_aware.removal {kind!r} unknown; known: {REMOVALS}")


def time_frequency_aware(rng, n, grid, cfg, step=0, total_steps=1) -> MaskSet:
  """A-JEPA: target blocks whose crosses (or rows / columns) leave the context; a context
  draw must keep more than `min_survival` of its area (listing 1's min_ratio)."""
  p = cfg.time_frequency_aware
  ks, kr, kb = jax.random.split(rng, 3)
  scale, aspect = _pair(p.target_scale), _pair(p.target_aspect)
  cscale, caspect = _pair(p.context_scale), _pair(p.context_aspect)
  return _set(*_targets_and_context(
      kb, grid, n, block_size(ks, n, grid, scale, aspect), p.num_targets,
      _removal(p.removal, kr, n, p.num_targets),
      lambda k, m: block_size(k, m, grid, cscale, caspect),
      _block_bounds(grid, scale, aspect), p, cfg.attempts))


def competence(step, total_steps: int, c0: float):
  """Square-root competence (Platanios et al.): min(1, sqrt(s (1 - c0^2) / S + c0^2))."""
  s = jnp.asarray(step, jnp.float32)
  return jnp.minimum(1.0, jnp.sqrt(s * (1 - c0 ** 2) / max(total_steps, 1) + c0 ** 2))


def _pad_to(m: MaskSet, nc: int, mt: int, nt: int) -> MaskSet:
  def pad(x, widths):
    return jnp.pad(x, [(0, 0)] * (x.ndim - len(widths)) + [(0, w) for w in widths])
  dc = nc - m.context_idx.shape[-1]
  dm, dt = mt - m.target_idx.shape[-2], nt - m.target_idx.shape[-1]
  return MaskSet(pad(m.context_idx, [dc]), pad(m.context_valid, [dc]),
                 pad(m.target_idx, [dm, dt]), pad(m.target_valid, [dm, dt]))


def curriculum(rng, n, grid, cfg, step=0, total_steps=1) -> MaskSet:
  """A-JEPA eq. 2: time-frequency aware masking with probability f(s), else multi-block
  (the reverse with order 'hard_to_easy', the paper's ablation). Drawn once per step as
  in the paper (granularity 'step') or per sample."""
  p = cfg.curriculum
  kc, kb, kt = jax.random.split(rng, 3)
  f = competence(step, total_steps, p.c0)
  prob = f if p.order == "easy_to_hard" else 1.0 - f
  shapes = [jax.eval_shape(lambda k, fn=fn: fn(k, n, grid, cfg), kb)
            for fn in (multi_block, time_frequency_aware)]
  nc = max(m.context_idx.shape[-1] for m in shapes)
  groups, nt = (max(m.target_idx.shape[i] for m in shapes) for i in (-2, -1))
  block = lambda: _pad_to(multi_block(kb, n, grid, cfg), nc, groups, nt)  # noqa: E731
  tf = lambda: _pad_to(time_frequency_aware(kt, n, grid, cfg), nc, groups, nt)  # noqa: E731
  if p.granularity == "step":  # one choice for the batch: only that sampler runs
    return jax.lax.cond(jax.random.bernoulli(kc, prob), tf, block)
  use_tf = jax.random.bernoulli(kc, prob, (n,))
  return jax.tree.map(
      lambda a, b: jnp.where(use_tf.reshape((n,) + (1,) * (a.ndim - 1)), b, a), block(), tf())


def grouped(rng, n, grid, cfg, step=0, total_steps=1) -> MaskSet:
  """Dasheng MAE: mask a random round(ratio * G) of the aligned groups of `group`
  consecutive time tokens (per frequency row); targets are the masked tokens."""
  p = cfg.grouped
  per_row = -(-grid[1] // p.group)
  num_groups = grid[0] * per_row
  n_masked = num_unstructured_targets(num_groups, p.ratio)
  f, t = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
  group_of = jnp.asarray(f * per_row + t // p.group)
  sizes = np.bincount(f * per_row + t // p.group, minlength=num_groups)
  masked = random_subset(rng, n, num_groups, n_masked)[:, group_of]
  max_masked = int(np.sort(sizes)[::-1][:n_masked].sum())
  min_masked = int(np.sort(sizes)[:n_masked].sum())
  context = pack(~masked, grid[0] * grid[1] - min_masked)
  target = pack(masked, max_masked)
  return _set(*context, target[0][:, None], target[1][:, None])


def time_and_frequency(rng, n, grid, cfg, step=0, total_steps=1) -> MaskSet:
  """AudioMAE time and frequency masking: round(time_ratio * T) whole time columns and
  round(freq_ratio * F) whole frequency rows are masked (targets); a fixed count."""
  p = cfg.time_and_frequency
  n_cols = int(round(p.time_ratio * grid[1]))
  n_rows = int(round(p.freq_ratio * grid[0]))
  count = n_cols * grid[0] + n_rows * grid[1] - n_cols * n_rows
  if not 1 <= count <= grid[0] * grid[1] - 1:
    raise ValueError(f"time_and_frequency ratios {p.time_ratio}, {p.freq_ratio} mask {count}"
                     f" of {grid[0] * grid[1]} tokens; leave at least one of each")
  kc, kr = jax.random.split(rng)
  cols = random_subset(kc, n, grid[1], n_cols)
  rows = random_subset(kr, n, grid[0], n_rows)
  masked = _flat(rows[:, :, None] | cols[:, None, :])
  context = pack(~masked, grid[0] * grid[1] - count)
  target = pack(masked, count)
  return _set(*context, target[0][:, None], target[1][:, None])


STRATEGIES: dict[str, Callable[..., MaskSet]] = {
    "unstructured": unstructured,
    "multi_block": multi_block,
    "time": time,
    "time_frequency_aware": time_frequency_aware,
    "curriculum": curriculum,
    "grouped": grouped,
    "time_and_frequency": time_and_frequency,
}


SCOPE = "mask_sampling"


def sample(rng, batch_size: int, grid: tuple[int, int], cfg: ml_collections.ConfigDict,
           step=0, total_steps: int = 1) -> MaskSet:
  """`cfg.num_sets` mask sets of strategy `cfg.strategy` for each of `batch_size` clips."""
  if cfg.strategy not in STRATEGIES:
    raise ValueError(f"unknown mask strategy {cfg.strategy!r}; known: {sorted(STRATEGIES)}")
  k = cfg.num_sets
  with jax.named_scope(SCOPE):  # names the sampler's ops in profiles (benchmarks/masks.py)
    m = STRATEGIES[cfg.strategy](rng, batch_size * k, tuple(grid), cfg, step, total_steps)
    return jax.tree.map(lambda x: x.reshape((batch_size, k) + x.shape[2:]), m)


def config_errors(cfg: ml_collections.ConfigDict, grid: tuple[int, int]) -> list[str]:
  """Problems with a mask config on a grid, found before anything compiles."""
  errors = []
  if cfg.strategy not in STRATEGIES:
    return [f"mask.strategy {cfg.strategy!r} unknown; known: {sorted(STRATEGIES)}"]
  if cfg.num_sets < 1 or cfg.attempts < 1:
    errors.append(f"mask.num_sets and mask.attempts must be >= 1, got {cfg.num_sets}, "
                  f"{cfg.attempts}")
  if cfg.time_frequency_aware.removal not in REMOVALS:
    errors.append(f"mask.time_frequency_aware.removal {cfg.time_frequency_aware.removal!r}"
                  f" unknown; known: {REMOVALS}")
  if cfg.curriculum.granularity not in GRANULARITIES:
    errors.append(f"mask.curriculum.granularity must be one of {GRANULARITIES}")
  if cfg.curriculum.order not in ORDERS:
    errors.append(f"mask.curriculum.order must be one of {ORDERS}")
  for name in ("multi_block", "time", "time_frequency_aware"):
    section = cfg[name]
    for key in [k for k in section if k.endswith(("_scale", "_aspect"))]:
      lo, hi = section[key]
      if not 0 < lo <= hi or (key.endswith("_scale") and hi > 1):
        errors.append(f"mask.{name}.{key} must be an increasing positive range"
                      f"{' within (0, 1]' if key.endswith('_scale') else ''}, got {(lo, hi)}")
    if section.num_targets < 1:
      errors.append(f"mask.{name}.num_targets must be >= 1")
  if cfg.grouped.group < 1:
    errors.append("mask.grouped.group must be >= 1")
  try:  # every strategy's static shapes on this grid
    jax.eval_shape(lambda k: sample(k, 1, grid, cfg), jax.random.key(0))
  except ValueError as err:
    errors.append(str(err))
  return errors
