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
