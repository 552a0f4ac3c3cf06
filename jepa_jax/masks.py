"""Which patches are context and which are targets: every strategy lives here.

A strategy is a pure function `(rng, batch_size, grid, **params) -> MaskSet`,
sampled on device under `jax.jit`, vectorised over the batch. Shapes are static per
config: strategies with a fixed count (unstructured) fill every slot; block
strategies (added later) use a fixed maximum with `*_valid` flags, valid slots packed
first, which attention (key mask) and the loss (per-sample mean over valid targets)
honour. Samples are never truncated to the batch minimum and never padded with real
tokens. Objectives ask for a strategy by its config name through `sample`.
"""
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class MaskSet:
  """Token indices into the frequency-major patch grid, per sample."""
  context_idx: jnp.ndarray    # (B, Nc) int32
  context_valid: jnp.ndarray  # (B, Nc) bool
  target_idx: jnp.ndarray     # (B, Nt) int32
  target_valid: jnp.ndarray   # (B, Nt) bool


def num_unstructured_targets(num_tokens: int, target_ratio: float) -> int:
  count = int(round(num_tokens * target_ratio))
  if not 1 <= count <= num_tokens - 1:
    raise ValueError(
        f"mask target_ratio {target_ratio} leaves {count} of {num_tokens} tokens as "
        f"targets; it must leave at least one target and one context token")
  return count


def unstructured(rng: jax.Array, batch_size: int, grid: tuple[int, int], *,
                 target_ratio: float) -> MaskSet:
  """Targets: a uniform random subset of round(ratio * N) tokens; context: the rest.

  A uniform random permutation per sample (argsort of i.i.d. uniforms) split at a
  fixed count; each part is sorted so tokens keep their grid order.
  """
  n = grid[0] * grid[1]
  n_target = num_unstructured_targets(n, target_ratio)
  order = jnp.argsort(jax.random.uniform(rng, (batch_size, n)), axis=1).astype(jnp.int32)
  target = jnp.sort(order[:, :n_target], axis=1)
  context = jnp.sort(order[:, n_target:], axis=1)
  return MaskSet(context, jnp.ones(context.shape, bool), target, jnp.ones(target.shape, bool))


STRATEGIES: dict[str, Callable[..., MaskSet]] = {
    "unstructured": unstructured,
}


def sample(rng: jax.Array, batch_size: int, grid: tuple[int, int], strategy: str,
           **params) -> MaskSet:
  if strategy not in STRATEGIES:
    raise ValueError(f"unknown mask strategy {strategy!r}; known: {sorted(STRATEGIES)}")
  return STRATEGIES[strategy](rng, batch_size, grid, **params)
