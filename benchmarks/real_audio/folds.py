"""Grouped, class-balanced folds: clips of one group (a source file, a speaker, an
instrument, a recording) always land in the same fold.

`merged_groups` joins groups that share a recording (a SoundFont sample played by two
programs, say) so that nothing related straddles folds either; `grouped_folds` then deals
whole groups to folds, each to the fold where its classes are rarest so far, which keeps
every fold close to the task's class mix.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

NUM_FOLDS = 5


def merged_groups(members: dict[Hashable, Iterable[Hashable]]) -> dict[Hashable, Hashable]:
  """{group: the recordings it uses} -> {group: its merged group}: groups sharing any
  recording, directly or through others, get the same merged group (the smallest group
  name among them, by repr, so the answer does not depend on dict order)."""
  parent = {g: g for g in members}

  def root(g):
    while parent[g] != g:
      parent[g] = parent[parent[g]]
      g = parent[g]
    return g

  first_user = {}
  for group, recordings in members.items():
    for recording in recordings:
      if recording in first_user:
        a, b = root(first_user[recording]), root(group)
        if a != b:
          parent[max(a, b, key=repr)] = min(a, b, key=repr)
      else:
        first_user[recording] = group
  return {g: root(g) for g in members}


def grouped_folds(labels: Sequence[str], groups: Sequence[Hashable],
                  num_folds: int = NUM_FOLDS) -> list[int]:
  """Fold (0..num_folds-1) of each clip. Groups go, largest first, to the fold holding the
  fewest clips of the group's classes (ties: the smaller fold, then the lower index), so
  no group is split and folds stay balanced by class. Deterministic."""
  if len(labels) != len(groups):
    raise ValueError(f"{len(labels)} labels but {len(groups)} groups")
  distinct = list(dict.fromkeys(groups))
  if len(distinct) < num_folds:
    raise ValueError(f"{len(distinct)} group(s) cannot fill {num_folds} folds; the task needs "
                     f"at least {num_folds} groups")
  classes = {g: Counter() for g in distinct}
  for label, group in zip(labels, groups):
    classes[group][label] += 1
  in_fold = [Counter() for _ in range(num_folds)]
  sizes = [0] * num_folds
  fold_of = {}
  for group in sorted(distinct, key=lambda g: (-sum(classes[g].values()), repr(g))):
    mix = classes[group]

    def cost(f: int) -> tuple[int, int, int]:
      return sum(in_fold[f][c] * n for c, n in mix.items()), sizes[f], f

    fold = min(range(num_folds), key=cost)
    fold_of[group] = fold
    in_fold[fold].update(mix)
    sizes[fold] += sum(mix.values())
  return [fold_of[g] for g in groups]
