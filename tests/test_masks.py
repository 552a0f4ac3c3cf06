"""Every mask strategy: static shapes and packing, disjointness, block geometry, minimum
context, unbiased per-position frequencies against an independent NumPy reference,
the curriculum's schedule, determinism; on 5 x 13, 8 x 64 and 1 x 250 grids."""
import functools

import jax
import numpy as np
import pytest

from jepa_jax import masks
from tests import mask_reference as ref

GRIDS = [(5, 13), (8, 64), (1, 250)]
PLAIN = ["unstructured", "multi_block", "time", "time_frequency_aware", "grouped",
         "time_and_frequency"]
BLOCKS = ["multi_block", "time", "time_frequency_aware"]
DRAWS = 20_000


@functools.cache
def draw(strategy: str, grid: tuple, count: int = DRAWS, seed: int = 0, **overrides):
  """(context (n, F, T), targets (n, M, F, T), MaskSet) for `count` clips; cached, so
  the tests of one strategy and grid share one compile and one draw."""
  cfg = masks.default_config(strategy)
  for key, value in overrides.items():
    section, field = key.split("__")
    cfg[section][field] = value
  m = jax.jit(lambda k: masks.sample(k, count, grid, cfg))(jax.random.key(seed))
  return (*to_grids(m, grid), m)


def to_grids(m: masks.MaskSet, grid):
  n, k = m.context_idx.shape[:2]
  assert k == 1
  cells = grid[0] * grid[1]
  cidx, cval = np.asarray(m.context_idx[:, 0]), np.asarray(m.context_valid[:, 0])
  tidx, tval = np.asarray(m.target_idx[:, 0]), np.asarray(m.target_valid[:, 0])
  context = np.zeros((n, cells), bool)
  rows = np.repeat(np.arange(n), cidx.shape[1])
  context[rows[cval.ravel()], cidx.ravel()[cval.ravel()]] = True
  targets = np.zeros((n, tidx.shape[1], cells), bool)
  rows = np.repeat(np.arange(n), tidx.shape[1] * tidx.shape[2])
  groups = np.tile(np.repeat(np.arange(tidx.shape[1]), tidx.shape[2]), n)
  targets[rows[tval.ravel()], groups[tval.ravel()], tidx.ravel()[tval.ravel()]] = True
  return context.reshape((n,) + grid), targets.reshape((n, tidx.shape[1]) + grid)


def reference(strategy: str, grid: tuple, count: int, seed: int = 1):
  cfg = masks.default_config(strategy).to_dict()
  rng = np.random.default_rng(seed)
  ctx, tgt = zip(*(ref.sample(rng, grid, cfg) for _ in range(count)))
  return np.stack(ctx), np.stack(tgt)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("strategy", list(masks.STRATEGIES))
def test_packing_validity_and_disjointness(strategy, grid):
  context, targets, m = draw(strategy, grid)
  cells = grid[0] * grid[1]
  for idx, valid in ((m.context_idx, m.context_valid), (m.target_idx, m.target_valid)):
    idx, valid = np.asarray(idx), np.asarray(valid)
    assert idx.dtype == np.int32 and ((idx >= 0) & (idx < cells)).all()
    # valid slots come first, in increasing grid order; padding slots hold 0
    assert (np.diff(valid.astype(int), axis=-1) <= 0).all()
    assert (idx[~valid] == 0).all()
    steps = np.diff(idx, axis=-1)
    assert (steps[valid[..., 1:]] > 0).all()
  assert not (context & targets.any(1)).any()          # context never holds a target
  assert (targets.any(1).sum((1, 2)) > 0).all() and (context.sum((1, 2)) > 0).all()


@pytest.mark.parametrize("grid", GRIDS)
def test_fixed_count_strategies_fill_every_slot(grid):
  cells = grid[0] * grid[1]
  c, t, _ = draw("unstructured", grid)
  assert (t.sum((1, 2, 3)) == round(0.6 * cells)).all() and (c | t[:, 0]).all()
  c, t, _ = draw("time_and_frequency", grid)
  cols, rows = round(0.5 * grid[1]), round(0.5 * grid[0])
  assert (t.sum((1, 2, 3)) == cols * grid[0] + rows * grid[1] - cols * rows).all()
  assert (t[:, 0].all(1).sum(1) == cols).all()          # whole time columns
  c, t, _ = draw("grouped", grid)
  per_row = -(-grid[1] // 2)
  masked_groups = round(0.75 * grid[0] * per_row)
  pairs = t[:, 0, :, : grid[1] // 2 * 2].reshape(len(t), grid[0], -1, 2)
  assert (pairs[..., 0] == pairs[..., 1]).all()        # aligned pairs go together
  if grid[1] % 2 == 0:
    assert (t.sum((1, 2, 3)) == 2 * masked_groups).all()


def _area_range(grid, scale, aspect):
  """min / max block area by dense enumeration of the rule in docs/masks.md."""
  areas = [np.prod(ref.block_hw(a * grid[0] * grid[1], r, grid))
           for a in np.linspace(*scale, 60) for r in np.linspace(*aspect, 60)]
  return min(areas), max(areas)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("strategy", BLOCKS)
def test_target_blocks_are_rectangles_within_the_configured_area(strategy, grid):
  _, targets, m = draw(strategy, grid)
  p = masks.default_config(strategy)[strategy]
  if strategy == "time":
    lo = max(1, round(p.target_scale[0] * grid[1])) * grid[0]
    hi = min(grid[1], round(p.target_scale[1] * grid[1] + 0.5)) * grid[0]
    assert masks.time_block_lower_bound(grid, p.target_scale) <= lo
  else:
    lo, hi = _area_range(grid, p.target_scale, p.target_aspect)
    assert hi <= masks.block_area_bound(grid, p.target_scale, p.target_aspect) \
        == m.target_idx.shape[-1]
    assert masks.block_area_lower_bound(grid, p.target_scale, p.target_aspect) <= lo
  # The context's slots: the grid less the smallest target block, never truncating one.
  assert m.context_idx.shape[-1] == grid[0] * grid[1] - (
      masks.time_block_lower_bound(grid, p.target_scale) if strategy == "time" else
      masks.block_area_lower_bound(grid, p.target_scale, p.target_aspect))
  areas = targets.sum((2, 3))
  assert areas.min() >= lo and areas.max() <= hi
  rows, cols = targets.any(3), targets.any(2)
  assert (areas == rows.sum(2) * cols.sum(2)).all()     # each group fills its bounding box
  assert (np.diff(rows.astype(int), axis=2) != 0).sum(2).max() <= 2  # one contiguous run
  if strategy == "time":
    assert rows.all()                                   # every frequency row
  # one block size per clip (Algorithm 1 / I-JEPA), positions per block
  assert (areas == areas[:, :1]).all()


@pytest.mark.parametrize("grid", [(5, 13), (8, 64), (8, 8), (1, 250), (12, 101)])
@pytest.mark.parametrize("scale, aspect", [
    ((0.15, 0.2), (0.75, 1.5)), ((0.05, 0.075), (0.75, 1.5)), ((0.01, 0.5), (0.2, 5.0)),
    ((0.3, 0.3), (1.0, 1.0)), ((0.9, 1.0), (0.1, 10.0))])
def test_block_area_bounds_hold_for_every_area_and_aspect(grid, scale, aspect):
  """The bounds against the rule's areas over a dense grid of (area, aspect), ends and
  float32 neighbours of the smallest area included."""
  cells = grid[0] * grid[1]
  lows = [np.float32(scale[0]) * cells * f for f in (1.0, 1 + 1e-7, 1 - 1e-7)]
  areas = [ref.block_hw(a, r, grid)
           for a in lows + list(np.linspace(scale[0], scale[1], 200) * cells)
           for r in np.linspace(*aspect, 200)]
  got = [h * w for h, w in areas]
  assert masks.block_area_lower_bound(grid, scale, aspect) <= min(got)
  assert max(got) <= masks.block_area_bound(grid, scale, aspect)


@pytest.mark.parametrize("strategy", ["multi_block", "time_frequency_aware", "curriculum"])
def test_a_jepa_context_runs_on_fewer_slots_than_the_grid(strategy):
  """8 x 64 (A-JEPA): 512 - 56 (multi-block's smallest target, 8 x 7) and 512 - 16
  (time-frequency aware's, 4 x 4); the curriculum pads to the larger."""
  _, _, m = draw(strategy, (8, 64), count=2000)
  assert m.context_idx.shape[-1] == {"multi_block": 456, "time_frequency_aware": 496,
                                     "curriculum": 496}[strategy]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("strategy", BLOCKS)
def test_context_never_below_its_minimum(strategy, grid):
  context, _, _ = draw(strategy, grid)
  assert context.sum((1, 2)).min() >= masks.default_config(strategy)[strategy].min_context


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("strategy", PLAIN)
def test_per_position_frequencies_match_the_numpy_reference(strategy, grid):
  """20,000 clips each: every position's target and context rate agrees with the
  reference within 5 binomial sigma; every position the reference reaches, ours does."""
  context, targets, _ = draw(strategy, grid)
  ref_context, ref_targets = reference(strategy, grid, DRAWS)
  for ours, theirs in ((context, ref_context), (targets.any(1), ref_targets.any(1))):
    p1, p2 = ours.mean(0), theirs.mean(0)
    pooled = (p1 + p2) / 2
    sigma = np.sqrt(pooled * (1 - pooled) * 2 / DRAWS)
    assert (np.abs(p1 - p2) <= 5 * sigma + 1e-12).all(), np.abs(p1 - p2).max()
    assert ((p1 > 0) | (p2 == 0)).all()
  # No edge or centre bias: every position can be a target and (but for the one-row
  # grids, where a cross or a frequency removal takes the whole row) context.
  assert targets.any(1).any(0).all()
  assert context.any(0).all()


def test_corner_and_edge_blocks_are_reachable():
  """The I-JEPA collator's randint(0, H - h) never reaches the last row or column."""
  _, targets, _ = draw("multi_block", (5, 13))
  assert targets[:, :, -1, :].any() and targets[:, :, :, -1].any()
  assert targets[:, :, -1, -1].any() and targets[:, :, 0, 0].any()


@pytest.mark.parametrize("removal", ["cross", "time", "freq", "random"])
def test_time_frequency_removals(removal):
  grid = (8, 64)
  context, targets, _ = draw("time_frequency_aware", grid, 3000,
                             time_frequency_aware__removal=removal)
  union = targets.any(1)
  rows, cols = union.any(2), union.any(1)
  fell_back = context.sum((1, 2)) == (~union).sum((1, 2))
  kept = ~fell_back
  if removal in ("cross", "time"):   # no context patch shares a time with a target
    assert not (context[kept] & cols[kept][:, None, :]).any()
  if removal in ("cross", "freq"):   # nor a frequency
    assert not (context[kept] & rows[kept][:, :, None]).any()
  assert kept.mean() > 0.5


@pytest.mark.parametrize("granularity", ["step", "sample"])
@pytest.mark.parametrize("order", ["easy_to_hard", "hard_to_easy"])
def test_curriculum_rate_follows_competence(granularity, order):
  grid, total, c0 = (5, 13), 1000, 0.01
  cfg = masks.default_config("curriculum")
  cfg.curriculum.update(granularity=granularity, order=order)
  batch = 1 if granularity == "step" else 4000
  keys = 4000 if granularity == "step" else 1

  @jax.jit
  def tf_share(step, keys):
    def one(key):  # time-frequency aware masks have 3 target groups, multi-block 4
      return ~masks.sample(key, batch, grid, cfg, step, total).target_valid[:, 0, 3].any(-1)
    return jax.vmap(one)(keys).ravel()

  for step in (0, 100, 500, 1000):
    chosen = np.asarray(tf_share(step, jax.random.split(jax.random.key(step), keys)))
    f = ref.competence(step, total, c0)
    p = f if order == "easy_to_hard" else 1 - f
    sigma = np.sqrt(max(p * (1 - p), 1e-4) / chosen.size)
    assert abs(chosen.mean() - p) <= 5 * sigma + 1e-9, (step, chosen.mean(), p)
  assert ref.competence(0, total, c0) == pytest.approx(c0)
  np.testing.assert_allclose(masks.competence(250, total, c0),
                             ref.competence(250, total, c0), rtol=1e-6)


def test_multi_mask_sets_and_determinism():
  cfg = masks.default_config("multi_block", num_sets=3)
  f = jax.jit(lambda k: masks.sample(k, 4, (8, 64), cfg))
  a, b, c = f(jax.random.key(0)), f(jax.random.key(0)), f(jax.random.key(1))
  assert a.context_idx.shape[:2] == (4, 3) and a.target_idx.shape[:3] == (4, 3, 4)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not np.array_equal(a.target_idx, c.target_idx)
  assert not np.array_equal(a.target_idx[:, 0], a.target_idx[:, 1])  # sets differ


def test_config_errors_name_the_field():
  cfg = masks.default_config("multi_block")
  cfg.multi_block.target_scale = (0.3, 0.1)
  cfg.time_frequency_aware.removal = "diagonal"
  errors = " ".join(masks.config_errors(cfg, (5, 13)))
  assert "mask.multi_block.target_scale" in errors and "removal 'diagonal'" in errors
  with pytest.raises(ValueError, match="unknown mask strategy"):
    masks.sample(jax.random.key(0), 2, (5, 13), masks.default_config("nope"))
  bad = masks.default_config("unstructured")
  bad.unstructured.target_ratio = 0.999
  assert "at least one target" in " ".join(masks.config_errors(bad, (5, 13)))


@pytest.mark.slow
def test_masks_command_draws_a_picture(tmp_path):
  import subprocess
  import sys

  from tests.tiny import ROOT
  out = tmp_path / "m.png"
  done = subprocess.run([sys.executable, "-m", "jepa_jax.masks", "--strategy=curriculum",
                         "--grid=8,64", "--num=4", f"--out={out}"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  bad = subprocess.run([sys.executable, "-m", "jepa_jax.masks", "--strategy=nope",
                        f"--out={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "unknown" in bad.stderr
