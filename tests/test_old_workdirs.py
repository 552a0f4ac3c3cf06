"""Workdirs and exports written by earlier versions (tests/fixtures/v0_workdir, made
before the package was split into parts) resume and evaluate unchanged."""
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from jepa_jax import export
from jepa_jax.config import fields, upgrade
from jepa_jax.evaluation import suite
from jepa_jax.training import loop
from tests.tiny import tiny_config

FIXTURE = Path(__file__).parent / "fixtures" / "v0_workdir"


def _params(export_dir: Path):
  return jax.tree.map(np.asarray, export.load_encoder(export_dir)[2])


@pytest.mark.slow
def test_old_mid_run_workdir_resumes_to_the_uninterrupted_parameters(tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(FIXTURE / "mid_run", workdir)
  result = loop.train(tiny_config(checkpoint_every=100), workdir)
  assert (result.step, result.interrupted) == (6, False)
  # Equal up to float reassociation: the fixture's run used jax.nn.dot_product_attention,
  # today's default on CPU is dense_attention (same math, sums in another order), which
  # Adam's normalised updates can carry to ~2e-7 in near-zero weights; a resume gone
  # wrong (other batches or masks) moves weights by the updates themselves, ~1e-4.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               _params(workdir / "export"), _params(FIXTURE / "export"))


def test_old_export_evaluates(tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(FIXTURE / "export", workdir / "export")
  results = suite.evaluate(workdir, suite.default_tasks(workdir), ("knn",),
                           ("trained",))
  assert set(results) == {"pitch", "source", "envelope"}
  assert 0.0 <= results["pitch"]["knn"]["trained"]["scores"]["accuracy"]["mean"] <= 1.0


def test_upgrade_fills_added_fields_and_renames_only_where_their_section_is():
  saved = {"objective": "uamix", "model": {"width": 32},
           "uamix": {"head": {"hidden": 16, "out": 8, "layers": 3}, "augment": {}}}
  new = upgrade.upgrade(saved)
  assert new["uamix"]["projector"] == {"hidden": 16, "out": 8, "layers": 3}
  assert "head" not in new["uamix"] and "head" in saved["uamix"]  # the input is untouched
  assert new["uamix"]["augment"]["background"] == 0.0
  assert (new["init_from"], new["model"]["scan_layers"], new["model"]["remat"]) == ("", False,
                                                                                     "none")
  assert "predictor" not in new and "decoder" not in new  # no section appears by a field
  assert new["finetune"] == fields.FINETUNE_DEFAULTS
  assert upgrade.upgrade(new) == new
