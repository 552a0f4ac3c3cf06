"""Workdirs and exports written by earlier versions (tests/fixtures/v0_workdir, made
before the package was split into parts) resume and evaluate unchanged."""
import shutil
from pathlib import Path

import jax
import numpy as np

from jepa_jax import export
from jepa_jax.evaluation import suite
from jepa_jax.training import loop
from tests.tiny import tiny_config

FIXTURE = Path(__file__).parent / "fixtures" / "v0_workdir"


def _params(export_dir: Path):
  return jax.tree.map(np.asarray, export.load_encoder(export_dir)[2])


def test_old_mid_run_workdir_resumes_to_the_uninterrupted_parameters(tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(FIXTURE / "mid_run", workdir)
  result = loop.train(tiny_config(checkpoint_every=100), workdir)
  assert (result.step, result.interrupted) == (6, False)
  jax.tree.map(np.testing.assert_array_equal, _params(workdir / "export"),
               _params(FIXTURE / "export"))


def test_old_export_evaluates(tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(FIXTURE / "export", workdir / "export")
  results = suite.evaluate(workdir, suite.default_tasks(workdir), ("knn",),
                              ("trained",))
  assert set(results) == {"pitch", "source", "envelope"}
  assert 0.0 <= results["pitch"]["knn"]["trained"]["scores"]["accuracy"]["mean"] <= 1.0
