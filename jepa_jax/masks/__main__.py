"""Draw masks of a config: `python -m jepa_jax.masks --strategy=NAME --out=FILE.png`.

    python -m jepa_jax.masks --strategy=multi_block --config=configs/audio_jepa.py --out=m.png
    python -m jepa_jax.masks --strategy=curriculum --grid=8,64 --out=curriculum.png

The grid and mask parameters come from --config (default: Audio-JEPA's 5 x 13 grid and
the strategy's default parameters); --grid overrides the grid. A curriculum is drawn
across a run of 1000 steps.
"""
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from data_pipelines import cli_flags as cli
from jepa_jax import masks
from jepa_jax.config import shapes
from jepa_jax.masks import drawing


def define_flags(values: flags.FlagValues, command_line: list[str]) -> None:
  flags.DEFINE_string("strategy", None, f"one of {sorted(masks.STRATEGIES)}", flag_values=values)
  config_flags.DEFINE_config_file("config", None, "training config: its grid and mask "
                                  "parameters (default: Audio-JEPA's 5 x 13 grid)",
                                  flag_values=values, sys_argv=command_line)
  flags.DEFINE_list("grid", None, "frequency,time patches (default: the config's grid)",
                    flag_values=values)
  flags.DEFINE_string("out", None, "PNG to write", flag_values=values)
  flags.DEFINE_integer("num", 8, "clips to draw", lower_bound=1, flag_values=values)
  flags.DEFINE_integer("seed", 0, "sampling seed", flag_values=values)


def main(argv: list[str] | None = None) -> None:
  """The command: argv holds the arguments after the program name (None: sys.argv[1:])."""
  args = cli.parse(argv, define_flags, __doc__, required=("strategy", "out"))
  config = cli.config(args)
  cfg = config.mask if config is not None else masks.default_config()
  grid = shapes.grid(config) if config is not None else (5, 13)
  if args.grid:
    try:
      grid = tuple(int(x) for x in args.grid)
    except ValueError:
      cli.fail(f"--grid={','.join(args.grid)}: two whole numbers, frequency,time")
    if len(grid) != 2:
      cli.fail(f"--grid={','.join(args.grid)}: two whole numbers, frequency,time")
  cfg.strategy = args.strategy
  problems = masks.config_errors(cfg, grid)
  if problems:
    cli.fail("; ".join(problems))
  total = 1000
  # The curriculum changes with training: draw it across the run.
  steps = np.linspace(0, total, args.num).astype(int) if cfg.strategy == "curriculum" \
      else np.zeros(args.num, int)
  keys = jax.random.split(jax.random.key(args.seed), args.num)
  drawn = [masks.sample(k, 1, grid, cfg, int(s), total) for k, s in zip(keys, steps)]
  m = jax.tree.map(lambda *x: jnp.concatenate(x), *drawn)
  titles = [f"{cfg.strategy}" + (f", step {s}/{total}" if cfg.strategy == "curriculum" else "")
            for s in steps]
  drawing.draw_masks(m, grid, titles, args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
