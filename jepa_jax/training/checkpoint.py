"""Orbax checkpoints of the train state together with the Grain iterator state.

Saves are asynchronous and atomic (orbax writes to a temporary directory and renames);
only `keep` checkpoints are kept. Restoring gives back the state with the shardings of
the abstract tree passed in, and rewinds the data iterator to where it was.
"""
from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp


def abstract_with_shardings(abstract_tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)


class Checkpointer:
  def __init__(self, directory: Path, keep: int):
    self.directory = Path(directory).absolute()
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, iterator) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(iterator)))

  def restore(self, step: int, abstract_state, iterator):
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(iterator)))
    return restored.state

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def latest_entry(directory: Path, entry: str = "params") -> dict | None:
  """One entry of the train state ('params', 'aux', ...) of the latest checkpoint in
  `directory` as numpy arrays, read without knowing the rest of the state's structure;
  None when there is no checkpoint."""
  directory = Path(directory).absolute()
  steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()] \
      if directory.is_dir() else []
  if not steps:
    return None
  path = directory / str(max(steps)) / "state"
  handler = ocp.PyTreeCheckpointHandler()  # the item alone: no step metadata to look for
  try:
    wanted = {entry: handler.metadata(path).tree[entry]}
    restored = handler.restore(path, args=ocp.args.PyTreeRestore(
        item=wanted, partial_restore=True,
        restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)))
  finally:
    handler.close()
  return restored[entry]
