"""A TFDS dataset of an audio folder, without TensorFlow:

    python -m data_pipelines.tfds_audio --input=FOLDER --output=DATA_DIR [--name=NAME]
        [--sample_rate=16000]

Labels are the first-level sub-folder names; read the dataset with
data_pipelines.tfds_audio.open_source (or `prepare --tfds`).
"""
import sys

from absl import flags

from data_pipelines import cli_flags
from data_pipelines.tfds_audio.builder import build_audio_folder


def main(argv: list[str] | None = None) -> int:
  """The command line; `argv` are the arguments after the program's name (None: sys.argv's).
  Returns the exit code; exits 2 (SystemExit) for a bad flag, 0 after --help."""
  values = cli_flags.parse(argv, _define_flags, __doc__, required=("input", "output"))
  try:
    name = build_audio_folder(values.input, values.output, values.name, values.sample_rate)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"built TFDS dataset {name} in {values.output}; read it with "
        f"data_pipelines.tfds_audio.open_source({name!r}, {values.output!r}, 'train')")
  return 0


def _define_flags(values: flags.FlagValues, command_line: list[str]) -> None:
  del command_line  # read by config files' flags; this command has none
  flags.DEFINE_string("input", None, "audio folder (labels = first-level sub-folder names)",
                      flag_values=values)
  flags.DEFINE_string("output", None, "TFDS data_dir to build the dataset in",
                      flag_values=values)
  flags.DEFINE_string("name", None, "config name of the dataset (default: the folder's name)",
                      flag_values=values)
  flags.DEFINE_integer("sample_rate", 16000, "rate every file is resampled to",
                       flag_values=values)


if __name__ == "__main__":
  sys.exit(main())
