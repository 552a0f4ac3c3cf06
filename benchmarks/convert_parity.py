"""Full-depth ViT-B parity of `python -m jepa_jax.convert import` (issue 25 item 2's check
outside CI, where the tests use depth 2): a random-init reference at depth 12, width 768,
12 heads, its state dict imported, both run on the same log-mel input.

    python benchmarks/convert_parity.py [--out=benchmarks/results/convert_parity.json]

Rows: timm's VisionTransformer (class token, layer scale, no qkv bias) over 80 x 208, and
AudioMAE's encoder (timm built with AudioMAE's arguments) over 1024 x 128, time-major. The
references are the tests' (tests/test_convert_import.py). Needs the torch extra. Prints a
table (max |ours - reference|, the reference's output scale) and writes JSON.
"""
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from jepa_jax.convert import importer, timm_vit  # noqa: E402
from tests import test_convert_import as reference  # noqa: E402

flags.DEFINE_string("out", "benchmarks/results/convert_parity.json", "JSON output")
DEPTH = 12


def timm_row(tmp: Path) -> tuple[np.ndarray, np.ndarray]:
  model = reference._vit(img_size=(80, 208), depth=DEPTH, class_token=True, qkv_bias=False,
                         init_values=0.1, global_pool="token")
  reference.torch.save(model.state_dict(), tmp / "vit.pt")
  config, params, _, _ = importer.convert("timm_vit", tmp / "vit.pt", timm_vit.Options())
  mel = reference._mel(80, 208)
  return reference._ours(config, params, mel), reference._tokens(model, mel)


def audiomae_row(tmp: Path) -> tuple[np.ndarray, np.ndarray]:
  model, checkpoint = reference._audiomae_checkpoint(depth=DEPTH)
  reference.torch.save(checkpoint, tmp / "audiomae.pth")
  config, params, _, _ = importer.convert("audiomae", tmp / "audiomae.pth", timm_vit.Options())
  mel = reference._mel(128, 1024)
  ref = reference._tokens(model, np.ascontiguousarray(mel.transpose(0, 2, 1)))
  # AudioMAE's tokens run time-major (t, f); ours frequency-major (f, t).
  return reference._ours(config, params, mel), \
      ref.reshape(2, 64, 8, -1).transpose(0, 2, 1, 3).reshape(2, 512, -1)


def main(argv):
  del argv
  rows = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, row in (("timm_vit", timm_row), ("audiomae", audiomae_row)):
      ours, ref = row(Path(tmp))
      rows[name] = {"depth": DEPTH, "max_abs_diff": float(np.abs(ours - ref).max()),
                    "output_scale": float(np.abs(ref).max())}
  print("format | depth | max abs diff | output scale")
  for name, r in rows.items():
    print(f"{name} | {r['depth']} | {r['max_abs_diff']:.3g} | {r['output_scale']:.3g}")
  out = Path(flags.FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(rows, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
