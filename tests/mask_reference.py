"""Independent NumPy reference samplers, one clip at a time, written from the papers
(I-JEPA / Audio-JEPA / A-JEPA listing 1 / Dasheng / AudioMAE) and docs/masks.md, for
the statistical comparison with jepa_jax.masks. Each returns boolean grids
(context (F, T), targets (M, F, T))."""
import math

import numpy as np


def _side(x: float) -> int:
  return max(int(np.round(x)), 1)


def block_hw(area: float, aspect: float, grid) -> tuple[int, int]:
  """docs/masks.md: sides from area and aspect; a side longer than the grid is clipped and the
  other recomputed to keep the area (itself clipped to the grid)."""
  height, width = grid
  h, w = _side(math.sqrt(area * aspect)), _side(math.sqrt(area / aspect))
  if h > height:
    h, w = height, min(_side(area / height), width)
  if w > width:
    w, h = width, min(_side(area / width), height)
  return h, w


def random_block_size(rng, grid, scale, aspect):
  area = rng.uniform(*scale) * grid[0] * grid[1]
  return block_hw(area, rng.uniform(*aspect), grid)


def block_at(grid, top, left, h, w):
  m = np.zeros(grid, bool)
  m[top:top + h, left:left + w] = True
  return m


def random_place(rng, grid, h, w):
  """Uniform over every position where the block fits (both ends inclusive)."""
  return rng.integers(0, grid[0] - h + 1), rng.integers(0, grid[1] - w + 1)


def _context(rng, grid, size, acceptable, min_count_of, attempts, targets, min_context):
  h, w = size
  best = None
  for _ in range(attempts):
    top, left = random_place(rng, grid, h, w)
    cut = block_at(grid, top, left, h, w) & acceptable
    if cut.sum() >= min_count_of(h, w):
      best = cut
      break
    if best is None or cut.sum() > best.sum():
      best = cut
  if best.sum() < min_context:
    best = ~targets.any(0)
  return best


def unstructured(rng, grid, p, cfg):
  n = grid[0] * grid[1]
  k = int(round(n * p["target_ratio"]))
  target = np.zeros(n, bool)
  target[rng.permutation(n)[:k]] = True
  return ~target.reshape(grid), target.reshape((1,) + grid)


def multi_block(rng, grid, p, cfg):
  h, w = random_block_size(rng, grid, p["target_scale"], p["target_aspect"])
  targets = np.stack([block_at(grid, *random_place(rng, grid, h, w), h, w)
                      for _ in range(p["num_targets"])])
  size = random_block_size(rng, grid, p["context_scale"], p["context_aspect"])
  context = _context(rng, grid, size, ~targets.any(0), lambda h, w: p["min_context"],
                     cfg["attempts"], targets, p["min_context"])
  return context, targets


def time(rng, grid, p, cfg):
  def width(scale):
    return min(max(int(np.round(rng.uniform(*scale) * grid[1])), 1), grid[1])
  w = width(p["target_scale"])
  targets = np.stack([block_at(grid, 0, rng.integers(0, grid[1] - w + 1), grid[0], w)
                      for _ in range(p["num_targets"])])
  size = (grid[0], width(p["context_scale"]))
  context = _context(rng, grid, size, ~targets.any(0), lambda h, w: p["min_context"],
                     cfg["attempts"], targets, p["min_context"])
  return context, targets


def time_frequency_aware(rng, grid, p, cfg):
  h, w = random_block_size(rng, grid, p["target_scale"], p["target_aspect"])
  targets, removed = [], np.zeros(grid, bool)
  for _ in range(p["num_targets"]):
    top, left = random_place(rng, grid, h, w)
    targets.append(block_at(grid, top, left, h, w))
    rows = np.zeros(grid, bool)
    rows[top:top + h, :] = True       # listing 1: the block's frequencies, all times
    cols = np.zeros(grid, bool)
    cols[:, left:left + w] = True     # and its times, all frequencies
    kind = p["removal"]
    if kind == "random":
      kind = "time" if rng.random() < 0.5 else "freq"
    removed |= {"cross": rows | cols, "time": cols, "freq": rows}[kind]
  targets = np.stack(targets)
  size = random_block_size(rng, grid, p["context_scale"], p["context_aspect"])
  needed = lambda h, w: max(p["min_context"], math.floor(p["min_survival"] * h * w) + 1)  # noqa: E731
  context = _context(rng, grid, size, ~removed, needed, cfg["attempts"], targets,
                     p["min_context"])
  return context, targets


def grouped(rng, grid, p, cfg):
  per_row = -(-grid[1] // p["group"])
  groups = grid[0] * per_row
  k = int(round(groups * p["ratio"]))
  chosen = rng.permutation(groups)[:k]
  masked = np.zeros(grid, bool)
  for g in chosen:
    f, j = divmod(g, per_row)
    masked[f, j * p["group"]:(j + 1) * p["group"]] = True
  return ~masked, masked[None]


def time_and_frequency(rng, grid, p, cfg):
  masked = np.zeros(grid, bool)
  masked[:, rng.permutation(grid[1])[:int(round(p["time_ratio"] * grid[1]))]] = True
  masked[rng.permutation(grid[0])[:int(round(p["freq_ratio"] * grid[0]))], :] = True
  return ~masked, masked[None]


SAMPLERS = {"unstructured": unstructured, "multi_block": multi_block, "time": time,
            "time_frequency_aware": time_frequency_aware, "grouped": grouped,
            "time_and_frequency": time_and_frequency}


def sample(rng, grid, cfg: dict):
  """One clip's (context, targets) for cfg['strategy'] (not curriculum)."""
  return SAMPLERS[cfg["strategy"]](rng, grid, cfg[cfg["strategy"]], cfg)


def competence(s: float, total: int, c0: float) -> float:
  return min(1.0, math.sqrt(s * (1 - c0 ** 2) / total + c0 ** 2))
