"""The fast subset of the fault drills (benchmarks/drills.py): one SIGKILL and one SIGTERM
at random moments, a corrupt newest checkpoint, a second run on a busy workdir, a NaN
batch and three bad configurations, each through the main command as a user runs it.
The full drill (20 kills, a full tmpfs disk, 20 configurations) is the README's."""
import json
import subprocess
import sys

import pytest

from tests.tiny import ROOT


@pytest.mark.slow
def test_the_fast_drill_passes_every_trial(tmp_path):
  out = tmp_path / "drills.json"
  done = subprocess.run(
      [sys.executable, "benchmarks/drills.py", "--kills=1", "--terms=1", "--bad_configs=3",
       "--skip=disk_full", f"--root={tmp_path / 'drills'}", f"--out={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  trials = json.loads(out.read_text())["trials"]
  assert [t["fault"] for t in trials] == ["kill", "term", "corrupt", "concurrent", "nan",
                                          "bad_config", "bad_config", "bad_config"]
  assert all(t["passed"] for t in trials), trials
