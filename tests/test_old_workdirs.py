"""Workdirs and exports written by earlier versions (tests/fixtures/v0_workdir, made
before the package was split into parts, and before audio_jepa's filterbank became M2D's)
resume on the front end they started on and evaluate unchanged."""
import dataclasses
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from data_pipelines import frontends
from jepa_jax import export
from jepa_jax.config import fields, upgrade
from jepa_jax.evaluation import suite
from jepa_jax.training import loop
from tests.tiny import tiny_config

FIXTURE = Path(__file__).parent / "fixtures" / "v0_workdir"


def _params(export_dir: Path):
  return jax.tree.map(np.asarray, export.load_encoder(export_dir)[2])


def test_old_mid_run_workdir_of_the_old_filterbank_is_not_resumed_on_todays(tmp_path):
  """The fixture's run started on audio_jepa's HTK filterbank of peak-1 triangles and its
  workdir predates the record of it: resuming it on today's recipe would switch its input
  features mid-run."""
  workdir = tmp_path / "run"
  shutil.copytree(FIXTURE / "mid_run", workdir)
  assert not (workdir / loop.FRONTEND_FILE).exists()
  with pytest.raises(loop.IncompatibleWorkdirError,
                     match=r"started on an older 'audio_jepa' front end \(mel_scale 'htk', now "
                     r"'slaney'; mel_norm None, now 'slaney'\): resuming it would change"):
    loop.check_workdir(workdir, tiny_config(checkpoint_every=100))


@pytest.mark.slow
def test_old_mid_run_workdir_resumes_to_the_uninterrupted_parameters(tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  shutil.copytree(FIXTURE / "mid_run", workdir)
  # On the recipe it started on (the filterbank before M2D's): the same features again.
  monkeypatch.setitem(frontends.FRONTENDS, "audio_jepa", dataclasses.replace(
      frontends.AUDIO_JEPA, mel_scale="htk", mel_norm=None))
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


def test_old_export_keeps_its_probe_and_probes_with_the_linear_protocol():
  """Exports from before linear_validated: their probe section (lr 1e-3, batch 128) loads
  as saved, and the main job's protocol for them is what they ran, `linear`."""
  config = export.load_config(FIXTURE / "export")
  assert (config.probe.protocol, config.probe.lr, config.probe.batch_size) == ("linear", 1e-3,
                                                                               128)
  assert tuple(config.probe.lr_grid) == fields.PROBE_LR_GRID


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


def test_a_warm_start_from_an_export_of_an_older_front_end_is_refused():
  """The fixture's export was trained on audio_jepa's old filterbank (HTK, peak 1): a run
  starting from it on today's recipe would feed its encoder other features."""
  from jepa_jax.training import warm_start

  config = tiny_config()
  config.init_from = str(FIXTURE / "export")
  with pytest.raises(fields.ConfigError, match=r"older 'audio_jepa' recipe \(differing in "
                     r"mel_norm, mel_scale\)"):
    warm_start.load(config)
