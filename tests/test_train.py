"""The train loop: resume equals an uninterrupted run, bad workdirs and non-finite
losses stop it with nothing good lost."""
import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest

from data_pipelines import frontends
from jepa_jax import main
from jepa_jax.evaluation import suite
from jepa_jax.objectives import jepa
from jepa_jax.training import checkpoint, loop
from tests.tiny import TINY_FLAGS, exported_params, tiny_config


class BatchSpy:
  """Records every training batch; optionally sends SIGTERM as the n-th is read, before
  its step is dispatched."""

  def __init__(self, monkeypatch, stop_after=None):
    self.batches, self.stop_after = [], stop_after
    real = jax.make_array_from_process_local_data

    def spy(sharding, local, *args, **kwargs):
      if np.ndim(local) == 3:  # the mel batch (ids are 1-D)
        self.batches.append(np.array(local))
        if self.stop_after is not None and len(self.batches) == self.stop_after:
          os.kill(os.getpid(), signal.SIGTERM)
      return real(sharding, local, *args, **kwargs)

    monkeypatch.setattr(jax, "make_array_from_process_local_data", spy)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """One uninterrupted tiny run (6 steps), with the batches it saw."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  mp = pytest.MonkeyPatch()
  spy = BatchSpy(mp)
  result = loop.train(tiny_config(checkpoint_every=100), workdir)
  mp.undo()
  return workdir, result, spy.batches


@pytest.mark.slow
def test_run_finishes_logs_and_exports(finished_run):
  workdir, result, batches = finished_run
  assert (result.step, result.total_steps, result.interrupted) == (6, 6, False)
  assert len(batches) == 6 and batches[0].shape == (8, 80, 64)
  lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [x["step"] for x in lines] == [2, 4, 6]
  for key in ("loss", "lr", "tau", "grad_norm", "steps_per_sec", "target_feature_std",
              "target_effective_rank"):
    assert np.isfinite(lines[-1][key])
  assert list((workdir / "tensorboard").iterdir())
  assert (workdir / "export" / "frontend.json").exists()
  # The recipe the run started on, which a resume must match (loop.check_workdir).
  assert json.loads((workdir / loop.FRONTEND_FILE).read_text()) == (
      frontends.get_frontend("audio_jepa").to_dict())


@pytest.mark.slow
def test_interrupted_and_resumed_run_is_bitwise_identical(finished_run, tmp_path, monkeypatch):
  reference_dir, _, reference_batches = finished_run
  spy = BatchSpy(monkeypatch, stop_after=4)
  first = loop.train(tiny_config(checkpoint_every=100), tmp_path)
  # The signal came while step 3 ran, before step 4 was dispatched: step 3 is saved
  # without waiting for another step.
  assert first.interrupted and first.step == 3
  assert checkpoint.Checkpointer(tmp_path / "checkpoints", 2).latest_step() == 3
  assert not (tmp_path / "export").exists()
  spy.stop_after = None
  second = loop.train(tiny_config(checkpoint_every=100), tmp_path)
  assert not second.interrupted and second.step == 6
  # Batch 4, read before the stop, is read again by the resumed run.
  assert len(spy.batches) == 7
  for a, b in zip(spy.batches, reference_batches[:4] + reference_batches[3:]):
    np.testing.assert_array_equal(a, b)
  jax.tree.map(np.testing.assert_array_equal, exported_params(tmp_path),
               exported_params(reference_dir))
  steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert steps == [2, 4, 6]


@pytest.mark.slow
def test_a_finished_run_started_again_reports_its_last_logged_loss(finished_run, tmp_path):
  # Killed after its last checkpoint and restarted: it resumes at the end, runs no step
  # and logs nothing, yet its summary gives the loss the run last logged.
  reference_dir, first, _ = finished_run
  workdir = tmp_path / "run"
  shutil.copytree(reference_dir, workdir)
  again = loop.train(tiny_config(checkpoint_every=100), workdir)
  assert (again.step, again.interrupted, again.last_metrics) == (6, False, {})
  config = tiny_config(checkpoint_every=100)
  final_loss = main.summary(config, again, str(workdir), probe=False)["final_loss"]
  assert final_loss == first.last_metrics["loss"] is not None
  assert main.summary(config, again, str(workdir), probe=False)["final_loss"] == final_loss


def test_a_second_signal_while_the_last_checkpoint_is_written_does_not_kill_the_run(
    tmp_path, monkeypatch, capsys):
  """Ctrl-C twice, or a scheduler that repeats SIGTERM: the save completes."""
  BatchSpy(monkeypatch, stop_after=2)
  real_wait, handled = checkpoint.Checkpointer.wait, []

  def wait_with_another_signal(self):
    handler = signal.getsignal(signal.SIGTERM)
    handled.append(callable(handler))
    if callable(handler):  # the default handler would kill the test run
      os.kill(os.getpid(), signal.SIGTERM)
    return real_wait(self)

  monkeypatch.setattr(checkpoint.Checkpointer, "wait", wait_with_another_signal)
  result = loop.train(tiny_config(checkpoint_every=100), tmp_path)
  assert result.interrupted and result.step == 1 and handled[-1]
  assert checkpoint.Checkpointer(tmp_path / "checkpoints", 2).latest_step() == 1
  assert "already stopping; the checkpoint is being saved" in capsys.readouterr().err


@pytest.mark.slow
def test_a_stop_right_after_a_checkpointed_step_keeps_that_checkpoint(tmp_path, monkeypatch):
  BatchSpy(monkeypatch, stop_after=3)  # while step 2 runs, which checkpoint_every saves
  result = loop.train(tiny_config(checkpoint_every=2), tmp_path)
  assert result.interrupted and result.step == 2
  assert checkpoint.Checkpointer(tmp_path / "checkpoints", 2).latest_step() == 2


def test_incompatible_workdir_is_refused_and_left_untouched(finished_run):
  workdir, _, _ = finished_run
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
  config = tiny_config(checkpoint_every=100)
  config.model.width = 64
  with pytest.raises(loop.IncompatibleWorkdirError, match="model.width: 32 in the workdir, 64"):
    loop.train(config, workdir)
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  real_loss = jepa.JEPA.loss

  def exploding(self, params, aux, batch, rng, step):
    loss, rest = real_loss(self, params, aux, batch, rng, step)
    return jax.numpy.where(step >= 4, jax.numpy.nan, loss), rest

  monkeypatch.setattr(jepa.JEPA, "loss", exploding)
  with pytest.raises(loop.NonFiniteLossError, match=r"step 5.*checkpoint \(step 3\)"):
    loop.train(tiny_config(checkpoint_every=3), tmp_path)
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", 2)
  assert ckpt.all_steps() == [3]
  assert not (tmp_path / "export").exists()


def test_probe_summary_of_a_finished_run(finished_run):
  workdir, _, _ = finished_run
  summary = suite.probe_workdir(workdir)
  assert set(summary["tasks"]) == {"pitch", "source", "envelope"}
  for key in ("probe_accuracy", "probe_accuracy_random_init", "probe_accuracy_mean_logmel"):
    assert 0.0 <= summary[key] <= 1.0 and key + "_seed_std" in summary
  assert set(summary["tasks"]["pitch"]) == {"trained", "random_init", "mean_logmel"}


@pytest.mark.slow
def test_curriculum_multi_mask_latent_run_trains(tmp_path):
  """Step-dependent masks, several mask sets and target groups, one shared target pass."""
  config = tiny_config(epochs=0.5, checkpoint_every=100)
  config.mask.update(strategy="curriculum", num_sets=2)
  config.mask.curriculum.granularity = "sample"
  config.jepa.target_domain = "latent"
  config.optim.warmup_epochs = 0.1
  result = loop.train(config, tmp_path)
  assert result.step == 3 and np.isfinite(result.last_metrics["loss"])
  assert result.last_metrics["target_effective_rank"] > 1


def test_export_from_eight_devices_loads_on_one(finished_run):
  """An export is device-independent: a 1-device process loads what 8 devices wrote."""
  import subprocess
  import sys
  workdir, _, _ = finished_run
  code = ("from jepa_jax import export; import jax, numpy as np; "
          f"_, _, p, _ = export.load_encoder({str(workdir / 'export')!r}); "
          "print(jax.device_count(), sum(np.asarray(x).size for x in jax.tree.leaves(p)))")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True, cwd=str(checkpoint.__file__).rsplit("/jepa_jax/", 1)[0])
  count = sum(x.size for x in jax.tree.leaves(exported_params(workdir)))
  assert out.stdout.split() == ["1", str(count)]


@pytest.mark.slow
def test_a_signal_during_the_probe_exits_130_with_the_run_saved(finished_run, tmp_path,
                                                                  monkeypatch, capsys):
  workdir = tmp_path / "run"
  shutil.copytree(finished_run[0], workdir)

  def interrupted_probe(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("the signal should have stopped the probe")

  monkeypatch.setattr(suite, "probe_workdir", interrupted_probe)
  before = signal.getsignal(signal.SIGTERM)
  flags = [f for f in TINY_FLAGS if f != "--probe=false"] + [
      "--config.train.log_every=2", "--config.train.micro_batches=1"]
  with pytest.raises(SystemExit) as stopped:
    main.main(["--config=configs/audio_jepa.py:demo", f"--workdir={workdir}", *flags])
  assert stopped.value.code == 130
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1] == (f"signal {int(signal.SIGTERM)}: stopped after training; the finished "
                     f"run is saved in {workdir}: run the same command to probe it")
  assert signal.getsignal(signal.SIGTERM) == before
  assert (workdir / "export").is_dir()
