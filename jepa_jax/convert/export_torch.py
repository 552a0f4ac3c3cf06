"""`python -m jepa_jax.convert export --workdir=DIR --output=FILE.pt [--format=timm_vit]`:
a jepa_jax encoder export as one PyTorch file, for jepa_jax/torch_encoder.py.

The file, read with torch.load(FILE, weights_only=True) (tensors and plain values only),
is the encoder's state dict in timm's VisionTransformer layout (convert/timm_vit.from_jax;
timm_vit.timm_kwargs(config) builds the timm model that loads it strictly) plus one
entry more, 'jepa_jax' (pop it before timm's load_state_dict), which holds what rebuilds
the whole module:

  format         'timm_vit'
  encoder        grid, patch_shape, width, depth, num_heads, mlp_dim, class_token
  frontend_meta  the export's frontend.json: front end recipe, normalisation, frames
  filterbank     (n_mels, n_fft // 2 + 1) float64 mel weights, as the front end computes
                 them (librosa's for the centred recipes, Kaldi's banks for kaldi_fbank)
  window         (n_fft,) float64 analysis window, zero-padded as the FFT sees it
  config         the training config as JSON

Kept flat so that `import --format=timm_vit` reads the file as it reads any timm state
dict (it ignores the entry). torch_encoder.load(FILE) rebuilds the module; its embeddings
are those of jepa_jax's evaluation (features.py) on the same audio within float32
rounding.
"""
import json
import os
from pathlib import Path

import jax
import numpy as np

from data_pipelines import cli_flags as cli
from jepa_jax import export
from jepa_jax.config import shapes
from jepa_jax.convert import timm_vit
from jepa_jax.evaluation import task_data

FORMATS = ("timm_vit",)
METADATA_KEY = "jepa_jax"  # torch_encoder.METADATA_KEY: the entry beside the state dict
# The encoder options the PyTorch module computes (config.model); any other field is an
# option it does not know, refused by name. dtype: the module computes in float32 (an
# encoder trained in bfloat16 gives embeddings within bfloat16 rounding of its own).
MODEL_FIELDS = ("patch_shape", "positions", "class_token", "width", "depth", "num_heads",
                "mlp_dim", "dtype", "attention_impl", "scan_layers", "remat")
POSITIONS = ("sincos", "learned", "table", "fixed_table")
FRONT_END_KINDS = ("ln_mel", "db_mel", "kaldi_fbank")  # torch_encoder.FRONT_END_KINDS


def find_export(path) -> Path:
  """The export directory of a training workdir (its export/) or an export itself (a
  folder holding config.json and encoder/; a workdir's own config.json is not one)."""
  path = Path(path).expanduser().absolute()
  for candidate in (path / "export", path):
    if (candidate / "config.json").is_file() and (candidate / "encoder").is_dir():
      return candidate
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist; give a training workdir (holding "
                            f"export/) or its export/ directory")
  raise FileNotFoundError(f"{path} holds no encoder export (no config.json and encoder/ in "
                          f"it or in {path / 'export'}); train to the end with jepa_jax.main, "
                          f"which writes <workdir>/export")


def unsupported(config, frontend_meta: dict) -> list[str]:
  """What the PyTorch module does not compute, one phrase each (empty: supported)."""
  m = config.model
  problems = [f"model.{k} (an encoder option the PyTorch module does not know)"
              for k in sorted(m.keys()) if k not in MODEL_FIELDS]
  if m.positions not in POSITIONS:
    problems.append(f"model.positions {m.positions!r} (known: {', '.join(POSITIONS)})")
  kind = frontend_meta.get("frontend", {}).get("kind")
  if kind not in FRONT_END_KINDS:
    problems.append(f"front end kind {kind!r} (known: {', '.join(FRONT_END_KINDS)})")
  return problems


def encoder_fields(config) -> dict:
  """The torch module's encoder arguments (plain values)."""
  m = config.model
  return {"grid": list(shapes.grid(config)), "patch_shape": list(m.patch_shape),
          "width": int(m.width), "depth": int(m.depth), "num_heads": int(m.num_heads),
          "mlp_dim": int(m.mlp_dim), "class_token": bool(m.class_token)}


def file_contents(config, params, frontend_meta: dict, fmt: str = "timm_vit") -> dict:
  """What the file holds (see the module docstring), as torch tensors and plain values."""
  import torch  # lazy: an optional extra, needed only to export
  if fmt not in FORMATS:
    raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
  problems = unsupported(config, frontend_meta)
  if problems:
    raise ValueError(f"this encoder cannot be exported to PyTorch: {'; '.join(problems)}")
  params = jax.tree.map(np.asarray, params)
  frontend = task_data.frontend_of(frontend_meta)
  state = {k: torch.from_numpy(np.array(v, np.float32))  # a writable copy
           for k, v in timm_vit.from_jax(params, config).items()}
  meta = {"format": fmt, "encoder": encoder_fields(config),
          "frontend_meta": json.loads(json.dumps(frontend_meta)),
          "filterbank": torch.from_numpy(np.asarray(frontend.filterbank, np.float64)),
          "window": torch.from_numpy(np.asarray(frontend.window, np.float64)),
          "config": config.to_json()}
  return {**state, METADATA_KEY: meta}


def module_of(config, params, frontend_meta: dict, freq_pool: str = "concat",
              batch_size: int = 64):
  """The torch_encoder.AudioEncoder of an encoder in memory (no file written), eval mode."""
  from jepa_jax import torch_encoder  # lazy: needs torch, an optional extra
  return torch_encoder.from_file_contents(file_contents(config, params, frontend_meta),
                                          freq_pool, batch_size)


def build_module(path, freq_pool: str = "concat", batch_size: int = 64):
  """The torch_encoder.AudioEncoder of a workdir's (or an export folder's) export."""
  config, _, params, frontend_meta = export.load_encoder(find_export(path))
  return module_of(config, params, frontend_meta, freq_pool, batch_size)


def write(workdir, output, fmt: str = "timm_vit") -> dict:
  """Export `workdir`'s encoder to `output` (written whole or not at all); a summary."""
  import torch  # lazy: an optional extra, needed only to export
  source = find_export(workdir)
  output = Path(output).expanduser().absolute()
  if not output.parent.is_dir():
    raise FileNotFoundError(f"the folder of --output {output} does not exist; create it")
  config, _, params, frontend_meta = export.load_encoder(source)
  contents = file_contents(config, params, frontend_meta, fmt)
  tmp = output.with_name(output.name + ".tmp")
  torch.save(contents, tmp)
  os.replace(tmp, output)
  return {"output": str(output), "format": fmt, "export": str(source),
          "parameters": int(sum(v.numel() for k, v in contents.items() if k != METADATA_KEY)),
          "frontend": frontend_meta["frontend"]["name"],
          "embedding_dim": int(config.model.width * shapes.grid(config)[0]),
          **({"note": "trained with model.dtype bfloat16: the PyTorch module computes in "
                      "float32, within bfloat16 rounding of jepa_jax's embeddings"}
             if config.model.dtype != "float32" else {})}


def main(args) -> None:
  """The `export` subcommand (args.workdir, args.output, args.format): prints a JSON
  summary; bad input exits 2 with one line."""
  try:
    import torch  # noqa: F401 - lazy: an optional extra; said before reading anything
  except ImportError:
    cli.fail("exporting to PyTorch needs torch: pip install '.[torch]'")
  try:
    summary = write(args.workdir, args.output, getattr(args, "format", None) or "timm_vit")
  except (FileNotFoundError, ValueError, export.CorruptExportError) as err:
    cli.fail(" ".join(str(err).split()))
  print(json.dumps(summary), flush=True)
