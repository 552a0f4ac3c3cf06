"""A cache folder built whole or not at all, by any number of processes at once."""
from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def build_atomically(root: Path, build: Callable[[Path], T], finished: Callable[[Path], bool]
                     ) -> T:
  """`build(tmp)` into a fresh sibling of `root`, then renamed to `root`, so that a reader
  never sees half a build. When another process renamed the same build there first
  (`finished(root)`), ours is dropped; on any failure or interrupt the partial copy is
  removed. Returns what `build` returned."""
  tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
  try:
    result = build(tmp)
    try:
      tmp.rename(root)
    except OSError:
      if not finished(root):
        raise
      shutil.rmtree(tmp)  # another process finished the same build first
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return result
