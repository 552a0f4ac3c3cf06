"""The notebooks really run, their parameters cell shrunk as papermill would (the first
code cell, tagged "parameters", run first and then overridden); their install cell's steps
(Colab's, printed here); and the committed files carry no outputs."""
import contextlib
import io
import json
import re

import numpy as np
import pytest

from jepa_jax.parallel import memory
from tests.tiny import ROOT

NOTEBOOKS = ("quickstart", "your_audio")
# The demo model shrunk as tests/tiny.py shrinks it; a short probe.
TINY_MODEL = {"model.width": 32, "model.depth": 1, "model.num_heads": 2, "model.mlp_dim": 64,
              "predictor.width": 16, "predictor.depth": 1, "predictor.num_heads": 2,
              "predictor.mlp_dim": 32, "train.log_every": 1, "optim.warmup_epochs": 0.25,
              "probe.max_epochs": 20, "probe.patience": 5, "probe.lr_grid": (1e-3, 1e-2),
              "probe.chunk_batch": 16}


def code_cells(name: str) -> list[dict]:
  notebook = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
  return [c for c in notebook["cells"] if c["cell_type"] == "code"]


def run_notebook(name: str, cells: list[dict] | None = None, **parameters) -> dict:
  """Runs the parameters cell, sets `parameters` (each must be one it defines), then the
  other code cells (all, or those of `cells`) in one namespace, which is returned."""
  every = code_cells(name)
  assert "parameters" in every[0]["metadata"]["tags"]
  namespace: dict = {}
  exec("".join(every[0]["source"]), namespace)
  assert set(parameters) <= set(namespace), set(parameters) - set(namespace)
  namespace.update(parameters)
  for i, cell in enumerate(every[1:] if cells is None else cells, 1):
    exec(compile("".join(cell["source"]), f"{name}.ipynb, code cell {i}", "exec"), namespace)
  return namespace


def install_cell(name: str) -> dict:
  return next(c for c in code_cells(name) if "def install_steps" in "".join(c["source"]))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_carry_no_outputs(name):
  notebook = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
  for cell in notebook["cells"]:
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"][:2]
    assert "attachments" not in cell


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_install_cell_steps_in_colab_and_nothing_elsewhere(name, tmp_path, monkeypatch):
  monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    run_notebook(name, [install_cell(name)], INSTALL="auto")
  assert out.getvalue() == "not in Colab: nothing installed (the jepa_jax installed here is used)\n"

  # What Colab would run, printed: from the repository's URL, or an uploaded wheel.
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    ns = run_notebook(name, [install_cell(name)], INSTALL="print",
                      SOURCE="https://github.com/someone/jepa_jax")
  assert "$ git clone --depth=1 https://github.com/someone/jepa_jax /content/jepa_jax\n" \
      in out.getvalue()
  assert " -m pip install -q /content/jepa_jax\n" in out.getvalue()
  steps = ns["install_steps"]("/content/jepa_jax-0.1.0-py3-none-any.whl", "cuda12",
                              ns["WORKSPACE"])
  assert [s[1][-1] for s in steps] == ["/content/jepa_jax-0.1.0-py3-none-any.whl",
                                       "jax[cuda12]==0.10.2"]
  sdist = ns["install_steps"]("/content/jepa_jax-0.1.0.tar.gz", "tpu", tmp_path / "ws")
  assert sdist[0] == ("unpack", "/content/jepa_jax-0.1.0.tar.gz", str(tmp_path / "ws"))
  assert sdist[-1][1][-1] == "jax[tpu]==0.10.2"
  with pytest.raises(ValueError, match="SOURCE='jepa.txt': give the repository's URL"):
    ns["install_steps"]("jepa.txt", None, tmp_path)
  with pytest.raises(ValueError, match="put the account that holds the repository in place "
                     "of OWNER"):  # the committed default, left as it is
    run_notebook(name, [install_cell(name)], INSTALL="print")
  with pytest.raises(ValueError, match="INSTALL='yes': 'auto', 'print' or 'never'"):
    run_notebook(name, [install_cell(name)], INSTALL="yes")


def test_install_cell_picks_the_runtimes_jax_wheels_at_setup_pys_pin():
  ns = run_notebook("quickstart", [install_cell("quickstart")], INSTALL="never")
  pin = re.search(r'"jaxlib==([0-9.]+)"', (ROOT / "setup.py").read_text()).group(1)
  assert ns["JAX_VERSION"] == pin
  extra = ns["accelerator_extra"]
  nothing = lambda path: False  # noqa: E731
  assert extra({}, nothing) is None
  assert extra({"COLAB_GPU": "0"}, nothing) is None  # Colab's CPU runtime
  assert extra({"COLAB_GPU": "1"}, nothing) == "cuda12"
  assert extra({}, lambda path: path == "/dev/nvidiactl") == "cuda12"
  assert extra({"COLAB_GPU": "", "TPU_ACCELERATOR_TYPE": "v5litepod-1"}, nothing) == "tpu"
  assert extra({}, lambda path: path == "/dev/accel0") == "tpu"


def test_archive_of_the_repository_is_unpacked_without_its_top_folder(tmp_path):
  import shutil  # noqa: PLC0415 (only this test makes an archive)
  ns = run_notebook("quickstart", [install_cell("quickstart")], INSTALL="never")
  (tmp_path / "jepa_jax-main" / "configs").mkdir(parents=True)
  (tmp_path / "jepa_jax-main" / "setup.py").write_text("")
  archive = shutil.make_archive(str(tmp_path / "repo"), "zip", tmp_path, "jepa_jax-main")
  ns["unpack"](archive, str(tmp_path / "ws"))
  assert sorted(p.name for p in (tmp_path / "ws").iterdir()) == ["configs", "setup.py"]


def test_demo_batch_follows_the_runtime():
  cell = next(c for c in code_cells("quickstart") if "def demo_batch" in "".join(c["source"]))
  source = "".join(cell["source"])
  ns: dict = {"memory": memory}
  exec(source[source.index("def demo_batch"):source.index("def show")], ns)
  gib = memory.GIB
  assert ns["demo_batch"]("cpu", 1, 20 * gib) == 32
  assert ns["demo_batch"]("cpu", 8, 20 * gib) == 32
  assert ns["demo_batch"]("gpu", 1, 15 * gib) == 128
  assert ns["demo_batch"]("gpu", 1, 6 * gib) == 32
  assert ns["demo_batch"]("tpu", 8, 16 * gib) == 128
  assert ns["demo_batch"]("tpu", 3, 16 * gib) == 129  # a multiple of the device count
  assert ns["demo_batch"]("gpu", 1, None) == 32


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  ns = run_notebook("quickstart", EPOCHS=0.5, NUM_PRETRAIN=32, NUM_PROBE=48, BATCH_SIZE=8,
                    MASK_CLIPS=2, OVERRIDES=TINY_MODEL, WORKDIR=str(tmp_path / "run"))
  assert ns["config"].model.width == 32 and ns["config"].mask.strategy == "curriculum"
  assert ns["result"].step == ns["result"].total_steps == 2
  for picture in ("batch_masks.png", "training.png"):
    assert (tmp_path / "run" / picture).stat().st_size > 0
  assert 0 <= ns["summary"]["probe_accuracy"] <= 1
  assert set(ns["summary"]["tasks"]) == {"pitch", "source", "envelope"}
  assert np.isfinite(ns["result"].last_metrics["loss"])


@pytest.mark.slow
def test_your_audio_notebook_runs_on_generated_audio(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  ns = run_notebook("your_audio", DEMO_CLIPS=6, EPOCHS=1.0, BATCH_SIZE=8, OVERRIDES=TINY_MODEL,
                    QUERY=2, WORK=str(tmp_path / "work"))
  work = tmp_path / "work"
  assert ns["prepared"].num_examples == 18  # 3 classes x 6 generated clips
  assert ns["config"].data.dir == str(work / "shards_ajepa")
  assert ns["result"].step == ns["result"].total_steps == 2
  results = ns["results"]
  assert set(results["demo_audio"]) == {"linear_validated", "knn"}
  for protocol in results["demo_audio"].values():
    assert set(protocol) == {"trained", "random_init"}
  assert ns["task"].label_names == ("noise", "sweep", "tone")
  assert len(ns["neighbours"]) == 5 and 2 not in ns["neighbours"]
  for picture in ("training.png", "eval/results.png", "eval/demo_audio_embedding_map.png",
                  "eval/demo_audio_neighbours.png"):
    assert (work / "run" / picture).stat().st_size > 0, picture
