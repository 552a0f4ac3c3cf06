"""Content checksums of array trees, written beside checkpoints and exports and checked when
they are read back: a changed byte in a file that still decompresses (or is stored
uncompressed) would otherwise load silently as different weights.

Each array's checksum is two sums of its 32-bit words times odd position weights, modulo
2^32, computed where the array lives (jit over its sharding): the same value for any
device layout or process count, so a run saved on N processes verifies on M. A weight is
odd, so a change of one word always changes both sums; changes of several words cancel in
both with a chance of about 2^-64.
"""
import jax
import jax.numpy as jnp
import numpy as np

_MULTIPLIERS = (0x9E3779B1, 0x85EBCA6B)  # odd 32-bit constants (golden ratio, murmur3)


def _words(x: jax.Array) -> jax.Array:
  """x's bits as uint32 values, one per element (two for 8-byte elements)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).ravel()


def _checksum(x: jax.Array) -> jax.Array:
  words = _words(x)
  position = jax.lax.iota(jnp.uint32, words.size)
  return jnp.stack([jnp.sum(words * (position * jnp.uint32(m) | jnp.uint32(1)),
                            dtype=jnp.uint32) for m in _MULTIPLIERS])


_tree_checksums = jax.jit(lambda tree: jax.tree.map(_checksum, tree))


def of_tree(tree) -> dict[str, str]:
  """{'/'-joined key path: 16 hex digits} for every array leaf of `tree`."""
  sums = jax.device_get(_tree_checksums(tree))
  return {_name(path): "".join(f"{int(s):08x}" for s in np.asarray(value))
          for path, value in jax.tree_util.tree_leaves_with_path(sums)}


def mismatches(tree, recorded: dict[str, str]) -> list[str]:
  """The leaves of `tree` whose checksum is not the `recorded` one (or that it lacks, or
  that `tree` lacks), by name; [] when all agree."""
  found = of_tree(tree)
  return sorted(name for name in found.keys() | recorded.keys()
                if found.get(name) != recorded.get(name))


def _name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                  for k in path)
