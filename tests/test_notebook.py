"""The quickstart notebook really runs (its parameters cell shrunk)."""
import json

import pytest

from tests.tiny import ROOT


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  notebook = json.loads((ROOT / "notebooks" / "quickstart.ipynb").read_text())
  cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
  assert "parameters" in cells[0]["metadata"]["tags"]
  monkeypatch.chdir(ROOT)
  namespace: dict = {}
  exec("".join(cells[0]["source"]), namespace)
  namespace.update(EPOCHS=2.0, NUM_PRETRAIN=32, NUM_PROBE=48, WORKDIR=str(tmp_path / "run"))
  for cell in cells[1:]:
    exec("".join(cell["source"]), namespace)
  assert namespace["result"].step == namespace["result"].total_steps == 2
  assert 0 <= namespace["summary"]["probe_accuracy"] <= 1
