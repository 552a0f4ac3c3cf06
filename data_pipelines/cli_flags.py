"""The house command line: absl flags on a fresh FlagValues per call, one-line errors.

Every entry point (jepa_jax.main, jepa_jax.evaluate, jepa_jax.embed, jepa_jax.masks,
data_pipelines.prepare, data_pipelines.tfds_audio) has a
`main(argv: list[str] | None = None)` taking the arguments after the program name
(None: sys.argv[1:]) and calls `parse` with a function that defines its flags. The flags
live on a FlagValues made for that call, never on absl's global FLAGS at import time,
so the entry modules import into one process and each `main` runs any number of times.

Bad input is one line on stderr starting with `error:` and exit code 2; `--help` prints
the command's documentation and its flags. Library INFO logs (orbax writes several per
checkpoint) stay hidden unless --verbosity is given (absl's scale: 0 info, 1 debug).
"""
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from absl import flags, logging

HELP = ("--help", "-help", "-h", "--helpshort", "--helpfull", "-?")
# Exit code of a run stopped by SIGTERM / Ctrl-C after saving what it had done (a
# checkpoint, finished shards): non-zero so that schedulers (SLURM, Kubernetes) resubmit
# the job, and 128 + SIGINT as shells report an interrupted command; 2 is bad input.
INTERRUPTED = 130


def fail(message: str) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def last_line(message: str) -> str:
  """The exception line of a message that may embed a traceback (config_flags does)."""
  lines = [ln.strip() for ln in message.splitlines()
           if ln.strip() and not ln.strip().startswith("Pass --help")]
  line = lines[-1] if lines else message
  head, sep, tail = line.partition(": ")
  return tail if sep and head.rsplit(".", 1)[-1].endswith(("Error", "Exception")) else line


def parse(argv: list[str] | None, define: Callable[[flags.FlagValues, list[str]], None],
          doc: str, required: tuple[str, ...] = ()) -> flags.FlagValues:
  """Flags defined by `define(values, command_line)` on a fresh FlagValues, parsed from
  `argv` (the arguments after the program name; None: sys.argv[1:]); `required` flags
  must be given. `command_line` (program name first) is what config_flags' sys_argv
  needs: it finds the --config.field overrides there, not in the FlagValues call."""
  args = sys.argv[1:] if argv is None else list(argv)
  command_line = [sys.argv[0] if argv is None else "command", *args]
  values = flags.FlagValues()
  define(values, command_line)
  flags.DEFINE_integer("verbosity", None, "absl log level: -1 warning, 0 info, 1 debug "
                       "(default: warnings only)", short_name="v", flag_values=values)
  options = args[:args.index("--")] if "--" in args else args
  if any(a in HELP for a in options):
    listed = [ln for ln in values.get_help(include_special_flags=False).splitlines()
              if ln.startswith(" ")]  # without the defining module's heading
    try:
      sys.stdout.write("\n".join([(doc or "").strip(), "", "flags:", *listed, ""]))
      sys.stdout.flush()
    except BrokenPipeError:  # `--help | head` stopped reading
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
  try:
    rest = values(command_line)
  except (AttributeError, KeyError) as err:  # a config override names a missing field
    # ml_collections' message: "'name'" and, on a second line, a close field it suggests.
    message = err
    while isinstance(message, BaseException) and message.args:  # AttributeError(KeyError(..))
      message = message.args[0]
    first, _, suggestion = str(message).partition("\n")
    name = first.strip("\"' ")
    culprit = [a for a in args if a.startswith("--") and "." in a.split("=")[0]
               and name in a.split("=")[0]]
    fail(f"unknown config field {name!r} in {culprit[0] if culprit else 'an override'}; "
         + (suggestion.strip() or "overrides must name existing fields of the config file"))
  except (flags.Error, TypeError, ValueError, OSError) as err:
    fail(f"bad command line: {last_line(str(err))}")
  if len(rest) > 1:
    fail(f"unexpected arguments {rest[1:]}; flags are written --name=value")
  for name in required:
    if values[name].value in (None, "", []):
      fail(f"--{name} is required: {values[name].help}")
  # Grain and orbax read absl's own flags: their defaults, as app.run would leave them.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  if argv is None:  # the program itself: absl's log format, as under app.run
    logging.use_absl_handler()
  logging.set_verbosity(logging.WARNING if values.verbosity is None else values.verbosity)
  return values


def config(values: flags.FlagValues, name: str = "config"):
  """The ConfigDict of a config_flags flag (None when not given), or one line of error:
  config_flags defers a failed load to the first use."""
  try:
    loaded = values[name].value
    if loaded is not None:
      loaded.to_dict()
  except (OSError, ValueError) as err:
    fail(f"cannot load --{name}: {last_line(str(err))}")
  return loaded
