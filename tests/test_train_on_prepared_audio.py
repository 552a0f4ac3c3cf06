"""End to end on real files: a folder of audio (WAV, FLAC, stereo, 44.1 kHz, a few broken)
-> `python -m data_pipelines.prepare` -> `python -m jepa_jax.main --config.data.dir=...`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_pipelines import synthetic

ROOT = Path(__file__).resolve().parents[1]
# The demo recipe shrunk to a few seconds of CPU (tests/tiny.py sizes).
TINY = ["--config.model.width=32", "--config.model.depth=1", "--config.model.num_heads=2",
        "--config.model.mlp_dim=64", "--config.predictor.width=16",
        "--config.predictor.depth=1", "--config.predictor.num_heads=2",
        "--config.predictor.mlp_dim=32", "--config.data.frames=64",
        "--config.train.batch_size=8", "--config.train.epochs=1", "--config.train.log_every=1",
        "--config.optim.warmup_epochs=0.25"]


def _run(module: str, *args, cwd: Path) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": ""}
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600)


def _audio_folder(root: Path) -> None:
  """20 good 4 s clips in two class folders, mixed formats, plus two broken files."""
  for i in range(20):
    wave, _ = synthetic.generate_clip(seed=3, stream=0, index=i)
    folder = root / ("tonal" if i % 2 else "noisy")
    folder.mkdir(parents=True, exist_ok=True)
    if i % 4 == 0:  # stereo FLAC at 44.1 kHz: downmixed and resampled
      import librosa
      up = librosa.resample(wave, orig_sr=16000, target_sr=44100)
      sf.write(folder / f"clip{i}.flac", np.stack([up, 0.5 * up], 1), 44100, subtype="PCM_16")
    else:
      sf.write(folder / f"clip{i}.wav", wave, 16000, subtype="PCM_16")
  (root / "tonal" / "empty.wav").write_bytes(b"")
  (root / "noisy" / "notes.wav").write_text("not audio\n" * 50)


@pytest.mark.slow
def test_main_trains_on_a_prepared_audio_folder(tmp_path):
  _audio_folder(tmp_path / "audio")
  prep = _run("data_pipelines.prepare", "--input=audio", "--output=shards",
              "--labels_from=folders", "--workers=2", cwd=tmp_path)
  assert prep.returncode == 0, prep.stderr
  errors = (tmp_path / "shards/errors.csv").read_text().splitlines()
  assert len(errors) == 3  # header + the two broken files
  metadata = json.loads((tmp_path / "shards/metadata.json").read_text())
  assert metadata["num_examples"] == 20 and metadata["label_maps"] == {
      "label": ["noisy", "tonal"]}

  run = _run("jepa_jax.main", f"--config={ROOT / 'configs/audio_jepa.py'}:demo",
             "--workdir=run", f"--config.data.dir={tmp_path / 'shards'}", *TINY, cwd=tmp_path)
  assert run.returncode == 0, run.stderr[-2000:]
  result = json.loads(run.stdout.strip().splitlines()[-1])
  assert result["steps"] >= 2 and np.isfinite(result["final_loss"])
  assert (tmp_path / "run/export/frontend.json").exists()
  assert "no probe tasks" in run.stderr

  # A config for another front end refuses these shards, naming both.
  other = _run("jepa_jax.main", f"--config={ROOT / 'configs/ajepa.py'}:demo", "--workdir=run2",
               f"--config.data.dir={tmp_path / 'shards'}", cwd=tmp_path)
  assert other.returncode == 2
  assert "'audio_jepa'" in other.stderr and "'ajepa'" in other.stderr
  assert not (tmp_path / "run2" / "checkpoints").exists()
