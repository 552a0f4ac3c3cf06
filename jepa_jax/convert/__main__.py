"""`python -m jepa_jax.convert import|export`: PyTorch checkpoints <-> jepa_jax exports.

  import --format=FORMAT --checkpoint=FILE --workdir=DIR
      FORMAT: timm_vit, audiomae, m2d, dasheng. Reads FILE (torch.save with
      weights_only=True, or safetensors: tensors only, never code) and writes DIR/export,
      the folder every run writes (config.json, encoder/, checksums.json, frontend.json;
      with AudioMAE's decoder also decoder/ and decoder_checksums.json): evaluate, embed,
      hear and --config.init_from=DIR read it unchanged.
  export --workdir=DIR --output=FILE.pt [--format=timm_vit]
      DIR's encoder as a PyTorch state dict (jepa_jax/convert/export_torch.py).
"""
import sys

from absl import flags

from data_pipelines import cli_flags as cli
from jepa_jax import export
from jepa_jax.convert import importer, timm_vit, vit_layout

COMMANDS = ("import", "export")


def define_import_flags(values: flags.FlagValues, command_line: list[str]) -> None:
  flags.DEFINE_enum("format", None, list(importer.FORMATS), "the checkpoint's layout",
                    flag_values=values)
  flags.DEFINE_string("checkpoint", None, "a .pt / .pth (torch.save) or .safetensors file",
                      flag_values=values)
  flags.DEFINE_string("workdir", None, "where export/ is written", flag_values=values)
  flags.DEFINE_integer("frames", None, "input length in frames (default: the checkpoint's "
                       "positional grid; shorter trims it, longer interpolates it)",
                       flag_values=values)
  flags.DEFINE_integer("num_heads", None, "attention heads (not stored in the weights; "
                       "default: the format's rule, width / 64 for ViTs)", flag_values=values)
  flags.DEFINE_string("recipe", None, "the config the export is built on, e.g. "
                      "configs/audio_jepa.py (default: the format's method's recipe)",
                      flag_values=values)
  # timm_vit only: what a bare timm state dict does not say.
  flags.DEFINE_string("frontend", "audio_jepa", "timm_vit: the front end its input comes "
                      "from (data_pipelines/frontends.py)", flag_values=values)
  flags.DEFINE_enum("orientation", "freq_time", list(vit_layout.ORIENTATIONS),
                    "timm_vit: its input image is (mels, frames) or (frames, mels)",
                    flag_values=values)
  flags.DEFINE_bool("no_embed_class", False, "timm_vit: pos_embed has no row for the class "
                    "token (timm's no_embed_class)", flag_values=values)


def define_export_flags(values: flags.FlagValues, command_line: list[str]) -> None:
  flags.DEFINE_string("workdir", None, "a workdir holding export/ (or an export folder)",
                      flag_values=values)
  flags.DEFINE_string("output", None, "the PyTorch file to write", flag_values=values)
  flags.DEFINE_enum("format", "timm_vit", ["timm_vit"], "the state dict's key layout",
                    flag_values=values)


def run_import(args: flags.FlagValues) -> None:
  options = timm_vit.Options(frontend=args.frontend, orientation=args.orientation,
                             num_heads=args.num_heads, frames=args.frames,
                             no_embed_class=args.no_embed_class)
  try:
    out, notes = importer.import_checkpoint(args.format, args.checkpoint, args.workdir,
                                            options, args.recipe)
  except (FileNotFoundError, ValueError, export.CorruptExportError) as err:
    cli.fail(" ".join(str(err).split()))
  for note in notes:
    print(f"note: {note}", file=sys.stderr)
  print(f"wrote {out} ({args.format} from {args.checkpoint})")


def run_export(args: flags.FlagValues) -> None:
  try:
    from jepa_jax.convert import export_torch  # needs torch: the 'torch' extra
  except ImportError as err:
    cli.fail(f"convert export needs torch and jepa_jax/convert/export_torch.py ({err}); "
             f"pip install '.[torch]'")
  export_torch.main(args)


def main(argv: list[str] | None = None) -> None:
  args = sys.argv[1:] if argv is None else list(argv)
  if not args or args[0] in cli.HELP:
    print(__doc__)
    sys.exit(0 if args else 2)
  command, rest = args[0], args[1:]
  if command not in COMMANDS:
    cli.fail(f"unknown command {command!r}; known: {', '.join(COMMANDS)} "
             f"(python -m jepa_jax.convert import --help)")
  if command == "import":
    run_import(cli.parse(rest, define_import_flags, __doc__,
                         required=("format", "checkpoint", "workdir")))
  else:
    run_export(cli.parse(rest, define_export_flags, __doc__, required=("workdir", "output")))


if __name__ == "__main__":
  main()
