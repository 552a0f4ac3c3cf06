"""EMA target encoder as an optax GradientTransformation.

Placed last in the optimizer chain, it sees the final updates, applies them to a copy
of the tracked parameters and moves its target towards the result:

    target_t = tau_t * target_{t-1} + (1 - tau_t) * theta_t,   t = 0, 1, ...

It leaves the updates unchanged. Because the target lives in the optimizer state it
is sharded, donated and checkpointed with the rest of the train state.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class EmaTargetState(NamedTuple):
  count: jnp.ndarray   # updates seen so far (int32)
  ema_target: optax.Params


def linear_momentum(tau_start: float, tau_end: float, total_steps: int) -> optax.Schedule:
  """tau linear from tau_start at step 0 to tau_end at step total_steps, then held."""
  def schedule(count):
    frac = jnp.minimum(count, total_steps) / max(total_steps, 1)
    return tau_start + (tau_end - tau_start) * frac
  return schedule


def ema_target(momentum: optax.Schedule, subtree: str) -> optax.GradientTransformation:
  """Keeps an EMA of `params[subtree]` (e.g. the encoder), updated after each step."""

  def init_fn(params):
    target = jax.tree.map(lambda p: jnp.array(p, copy=True), params[subtree])
    return EmaTargetState(count=jnp.zeros([], jnp.int32), ema_target=target)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("ema_target needs the parameters: call update(grads, state, params)")
    new_params = optax.apply_updates(params[subtree], updates[subtree])
    tau = momentum(state.count)
    target = jax.tree.map(lambda t, p: (tau * t + (1 - tau) * p).astype(t.dtype),
                          state.ema_target, new_params)
    return updates, EmaTargetState(optax.safe_increment(state.count), target)

  return optax.GradientTransformation(init_fn, update_fn)


def find_target(opt_state) -> optax.Params | None:
  """The EMA target held in an optimizer state, or None when the chain has no EMA."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, EmaTargetState))
           if isinstance(s, EmaTargetState)]
  if len(found) > 1:
    raise ValueError("optimizer state holds more than one EMA target")
  return found[0].ema_target if found else None
