"""Pictures of sampled masks on their token grid (matplotlib)."""
import numpy as np

from jepa_jax import masks

COLOURS = {"unused": "#e6e6e6", "context": "#3b75af", "target": "#ef8636"}


def draw_masks(m: masks.MaskSet, grid, titles: list[str], path, columns: int = 4) -> None:
  """One panel per clip (first mask set): context, target and unused patches in the
  colours of COLOURS, like Audio-JEPA's figure 1 (frequency up, time to the right)."""
  # lazy: the Agg backend is chosen only when a picture is drawn, never on import (that
  # would change the backend of a notebook that imports the package)
  import matplotlib  # lazy: see above
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # lazy: after the backend is chosen
  from matplotlib.colors import ListedColormap  # lazy: as pyplot

  n = len(titles)
  rows = -(-n // columns)
  aspect = grid[0] / grid[1]
  fig, axes = plt.subplots(rows, columns, squeeze=False,
                           figsize=(3.2 * columns, max(0.5, 3.2 * aspect) * rows + 0.6 * rows))
  cmap = ListedColormap([COLOURS["unused"], COLOURS["context"], COLOURS["target"]])
  for i, ax in enumerate(axes.ravel()):
    ax.set_axis_off()
    if i >= n:
      continue
    picture = np.zeros(grid[0] * grid[1], int)
    ci, cv = np.asarray(m.context_idx[i, 0]), np.asarray(m.context_valid[i, 0])
    ti, tv = np.asarray(m.target_idx[i, 0]), np.asarray(m.target_valid[i, 0])
    picture[ci[cv]] = 1
    picture[ti[tv]] = 2
    ax.pcolormesh(picture.reshape(grid), cmap=cmap, vmin=0, vmax=2, edgecolors="white",
                  linewidth=0.3 if grid[1] <= 64 else 0.0)
    ax.set_title(titles[i], fontsize=8)
  handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
  fig.legend(handles, list(COLOURS), loc="lower center", ncol=3, fontsize=8, frameon=False)
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  fig.savefig(path, dpi=80)
  plt.close(fig)


# Overlay tints of the log-mel picture: (colour, opacity). The context shows its spectrogram
# lightly tinted, the targets strongly, the unused patches greyed out.
OVERLAY_ALPHA = {"unused": 0.75, "context": 0.25, "target": 0.6}
ROLES = tuple(COLOURS)  # 0 unused, 1 context, 2 target: the values of patch_roles


def patch_roles(m: masks.MaskSet, clip: int, grid) -> np.ndarray:
  """(frequency patches, time patches) ints of one clip's first mask set: 0 unused,
  1 context, 2 target (a token is n = f * T + t, frequency-major)."""
  roles = np.zeros(grid[0] * grid[1], int)
  ci, cv = np.asarray(m.context_idx[clip, 0]), np.asarray(m.context_valid[clip, 0])
  ti, tv = np.asarray(m.target_idx[clip, 0]), np.asarray(m.target_valid[clip, 0])
  roles[ci[cv]] = 1
  roles[ti[tv]] = 2
  return roles.reshape(grid)


def overlay_rgba(roles: np.ndarray, patch_shape) -> np.ndarray:
  """(mels, frames, 4) RGBA tint of a log-mel from its patch roles: each patch's
  COLOURS entry at its OVERLAY_ALPHA, spread over the patch's pf x pt bins."""
  from matplotlib.colors import to_rgba  # lazy: matplotlib only where a picture is drawn
  palette = np.array([to_rgba(COLOURS[r], OVERLAY_ALPHA[r]) for r in ROLES])
  bins = np.repeat(np.repeat(np.asarray(roles), patch_shape[0], 0), patch_shape[1], 1)
  return palette[bins]


def draw_masks_on_logmel(mels: np.ndarray, m: masks.MaskSet, patch_shape, titles: list[str],
                         path, columns: int = 2) -> None:
  """One panel per clip of a batch: its log-mel (mels (B, n_mels, frames), frequency up)
  with its first mask set's context and target patches tinted over it and the unused
  ones greyed out (COLOURS, OVERLAY_ALPHA). `titles` picks the clips: one per clip from
  the first."""
  mels = np.asarray(mels)
  pf, pt = patch_shape
  if mels.ndim != 3 or mels.shape[1] % pf or mels.shape[2] % pt:
    raise ValueError(f"log-mels of shape {mels.shape} are not (clips, mels, frames) "
                     f"divisible into {pf} x {pt} patches")
  grid = (mels.shape[1] // pf, mels.shape[2] // pt)
  if m.context_idx.shape[0] < len(titles) or len(mels) < len(titles):
    raise ValueError(f"{len(titles)} titles for {len(mels)} log-mels and "
                     f"{m.context_idx.shape[0]} mask sets: one title per clip drawn")
  # lazy: the Agg backend is chosen only when a picture is drawn (as draw_masks)
  import matplotlib  # lazy: see above
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # lazy: after the backend is chosen

  n = len(titles)
  rows = -(-n // columns)
  fig, axes = plt.subplots(rows, columns, squeeze=False,
                           figsize=(4.6 * columns, 2.2 * rows * mels.shape[1] / mels.shape[2]
                                    + 0.9 * rows))
  extent = (0, mels.shape[2], 0, mels.shape[1])
  for i, ax in enumerate(axes.ravel()):
    ax.set_axis_off()
    if i >= n:
      continue
    ax.imshow(mels[i], origin="lower", aspect="auto", cmap="gray", extent=extent,
              interpolation="nearest")
    ax.imshow(overlay_rgba(patch_roles(m, i, grid), patch_shape), origin="lower",
              aspect="auto", extent=extent, interpolation="nearest")
    ax.set_title(titles[i], fontsize=8)
  handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=max(OVERLAY_ALPHA[r], 0.5))
             for r, c in COLOURS.items()]
  fig.legend(handles, list(COLOURS), loc="lower center", ncol=3, fontsize=8, frameon=False)
  fig.tight_layout(rect=(0, 0.08 if rows == 1 else 0.04, 1, 1))
  fig.savefig(path, dpi=90)
  plt.close(fig)
