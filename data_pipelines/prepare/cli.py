"""Any audio folder or TFDS dataset -> log-mel shards: `python -m data_pipelines.prepare`.

    python -m data_pipelines.prepare --input=DIR --output=OUT --frontend=audio_jepa \\
        [--labels=CSV | --labels_from=folders] [--workers=N] [--on_error=skip|fail] \\
        [--max_seconds=60] [--min_seconds=0.1] [--drop_silent] [--max_shard_mb=256]
    python -m data_pipelines.prepare --tfds=NAME --data_dir=DIR [--split=train] --output=OUT

What it does with the input, bad files and an earlier run's output folder: see the
data_pipelines.prepare package's docstring.
"""
from __future__ import annotations

import signal
import sys

from absl import flags

from data_pipelines import audio_io, cli_flags
from data_pipelines.prepare.errors import ItemFailed, PrepareError
from data_pipelines.prepare.plan import Options
from data_pipelines.prepare.run import ON_ERROR, prepare


def _define_flags(values: flags.FlagValues, command_line: list[str]) -> None:
  """The flags of the command line, on `values` (a fresh FlagValues per call of main)."""
  del command_line  # read by config files' flags; this command has none
  flags.DEFINE_string("input", None, "folder of audio files (searched recursively)",
                      flag_values=values)
  flags.DEFINE_string("tfds", None, "TFDS dataset name (instead of --input)",
                      flag_values=values)
  flags.DEFINE_string("data_dir", None, "folder holding the TFDS dataset", flag_values=values)
  flags.DEFINE_string("split", "train", "TFDS split", flag_values=values)
  flags.DEFINE_string("output", None, "the folder for the shards", flag_values=values)
  flags.DEFINE_string("frontend", Options.frontend, "log-mel recipe", flag_values=values)
  flags.DEFINE_string("labels", None, "CSV filename,label[,fold][,split] (relative to "
                      "--input)", flag_values=values)
  flags.DEFINE_enum("labels_from", None, ["folders"], "class = first sub-folder",
                    flag_values=values)
  flags.DEFINE_integer("workers", None, "processes (default: all cores)", flag_values=values)
  flags.DEFINE_enum("on_error", "skip", list(ON_ERROR), "skip: list unusable files in "
                    "errors.csv; fail: stop at the first", flag_values=values)
  flags.DEFINE_float("max_seconds", Options.max_seconds, "split longer files into segments "
                     "of at most this (0: never)", flag_values=values)
  flags.DEFINE_float("min_seconds", Options.min_seconds, "shorter files are errors",
                     flag_values=values)
  flags.DEFINE_bool("drop_silent", False, f"drop all-silent clips (below "
                    f"{audio_io.SILENCE_DBFS:g} dBFS)", flag_values=values)
  flags.DEFINE_float("max_shard_mb", Options.max_shard_mb, "largest shard file (MiB)",
                     flag_values=values)
  flags.DEFINE_bool("no_progress", False, "no progress bar", flag_values=values)


def _raise_interrupt(signum, frame) -> None:
  raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
  """The command line; `argv` are the arguments after the program's name (None: sys.argv's).
  Returns the exit code; exits 2 (SystemExit) for a bad flag, 0 after --help."""
  values = cli_flags.parse(argv, _define_flags, __doc__, required=("output",))
  signal.signal(signal.SIGTERM, _raise_interrupt)  # kill: stop cleanly, keep finished units
  options = Options(frontend=values.frontend, max_seconds=values.max_seconds,
                    min_seconds=values.min_seconds, drop_silent=values.drop_silent,
                    max_shard_mb=values.max_shard_mb)
  try:
    prepare(values.output, input_dir=values.input,
            tfds=(values.tfds, values.data_dir, values.split) if values.tfds else None,
            labels_csv=values.labels, labels_from=values.labels_from, options=options,
            workers=values.workers, on_error=values.on_error,
            progress=not values.no_progress)
  except PrepareError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except ItemFailed as e:
    print(f"error: {e} (--on_error=fail stopped here; finished units are kept: fix or "
          f"remove the file, or use --on_error=skip, and run again)", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted: finished units are kept; run the same command again to resume",
          file=sys.stderr)
    return cli_flags.INTERRUPTED
  except OSError as e:  # e.g. a full disk or a read-only --output
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0
