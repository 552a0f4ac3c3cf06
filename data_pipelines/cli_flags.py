"""absl flags for the data_pipelines command lines, parsed without absl.app.

A command line defines its flags inside its entry function, on the fresh FlagValues that
`flag_values()` gives (never at import time on the global FLAGS: several command lines are
imported into one test process, and absl refuses a flag defined twice), then `parse`s its
arguments: --help (-h) prints the usage and the flags and exits 0; a bad flag value, an
unknown flag or a stray argument prints one line, `error: ...`, and exits 2.
"""
from __future__ import annotations

import sys
from typing import NoReturn

from absl import flags


def flag_values() -> flags.FlagValues:
  """A fresh FlagValues holding only --help (-h)."""
  values = flags.FlagValues()
  flags.DEFINE_bool("help", False, "show this help", short_name="h", flag_values=values)
  return values


def parse(values: flags.FlagValues, argv: list[str] | None, usage: str) -> None:
  """Parses `argv` (the arguments after the program's name; None: sys.argv[1:])."""
  args = sys.argv[1:] if argv is None else list(argv)
  try:
    rest = values([sys.argv[0], *args])
  except flags.Error as e:
    fail(f"{' '.join(str(e).split())} (see --help)")
  if values["help"].value:
    print(f"{usage.strip()}\n\nflags:\n{_flags_help(values)}")
    sys.exit(0)
  if len(rest) > 1:
    fail(f"unexpected arguments {rest[1:]}; flags are written --name=value (see --help)")


def fail(message: str) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _flags_help(values: flags.FlagValues) -> str:
  """absl's text for each flag, without its per-module headings and absl's own flags."""
  text = values.get_help(include_special_flags=False)
  return "\n".join(line for line in text.splitlines() if line.startswith(" "))
