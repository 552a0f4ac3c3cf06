"""The fault drills' script (benchmarks/drills.py) runs and checks its trials: the
reference run, one SIGKILL at a random moment and one bad configuration, through the main
command as a user runs it. The other faults have their own tests (SIGTERM and the NaN
batch in test_train.py, the corrupt checkpoint in test_checkpoint_faults.py, the busy
workdir in test_run_lock.py, bad settings in test_config_cli.py); the full drill (20
kills, a full tmpfs disk, 20 configurations) is the README's."""
import json
import subprocess
import sys

import pytest

from tests.tiny import ROOT


@pytest.mark.slow
def test_the_fast_drill_passes_every_trial(tmp_path):
  out = tmp_path / "drills.json"
  done = subprocess.run(
      [sys.executable, "benchmarks/drills.py", "--kills=1", "--terms=0", "--bad_configs=1",
       "--skip=corrupt,concurrent,disk_full,nan", f"--root={tmp_path / 'drills'}", f"--out={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  trials = json.loads(out.read_text())["trials"]
  assert [t["fault"] for t in trials] == ["kill", "bad_config"]
  assert all(t["passed"] for t in trials), trials
