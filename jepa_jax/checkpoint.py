"""Orbax checkpoints of the train state together with the Grain iterator state.

Saves are asynchronous and atomic (orbax writes to a temporary directory and renames);
only `keep` checkpoints are kept. Restoring gives back the state with the shardings of
the abstract tree passed in, and rewinds the data iterator to where it was.
"""
from pathlib import Path

import grain
import jax
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
