"""Draw masks of a config: `python -m jepa_jax.masks --config=... --out=DIR`."""
import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax import masks
from jepa_jax.masks import drawing


def main(argv=None) -> None:
  """python -m jepa_jax.masks --strategy NAME [--config FILE] [--grid F,T] --out FILE.png"""
  from absl import app, flags
  from ml_collections import config_flags

  flags.DEFINE_string("strategy", None, f"one of {sorted(masks.STRATEGIES)}")
  config_flags.DEFINE_config_file("config", None, "training config: its grid and mask "
                                  "parameters (default: Audio-JEPA's 5 x 13 grid)")
  flags.DEFINE_list("grid", None, "frequency,time patches (default: the config's grid)")
  flags.DEFINE_string("out", None, "PNG to write")
  flags.DEFINE_integer("num", 8, "clips to draw")
  flags.DEFINE_integer("seed", 0, "sampling seed")
  flags.mark_flags_as_required(["strategy", "out"])

  def run(_):
    from jepa_jax.config import shapes
    config = flags.FLAGS.config
    cfg = config.mask if config is not None else masks.default_config()
    grid = shapes.grid(config) if config is not None else (5, 13)
    if flags.FLAGS.grid:
      grid = tuple(int(x) for x in flags.FLAGS.grid)
    cfg.strategy = flags.FLAGS.strategy
    problems = masks.config_errors(cfg, grid)
    if problems:
      raise SystemExit("error: " + "; ".join(problems))
    total = 1000
    # The curriculum changes with training: draw it across the run.
    steps = np.linspace(0, total, flags.FLAGS.num).astype(int) if cfg.strategy == "curriculum" \
        else np.zeros(flags.FLAGS.num, int)
    keys = jax.random.split(jax.random.key(flags.FLAGS.seed), flags.FLAGS.num)
    drawn = [masks.sample(k, 1, grid, cfg, int(s), total) for k, s in zip(keys, steps)]
    m = jax.tree.map(lambda *x: jnp.concatenate(x), *drawn)
    titles = [f"{cfg.strategy}" + (f", step {s}/{total}" if cfg.strategy == "curriculum" else "")
              for s in steps]
    drawing.draw_masks(m, grid, titles, flags.FLAGS.out)
    print(f"wrote {flags.FLAGS.out}")

  app.run(run, argv)


if __name__ == "__main__":
  main()
