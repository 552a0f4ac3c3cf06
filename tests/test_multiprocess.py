"""Multi-host training on jax.distributed: two CPU processes of two devices each train,
stop, resume and export exactly what one process on four devices does; a run saved by
two processes resumes on one and one saved by one process on two (elastic resume); Ctrl-C
to one process checkpoints them all.

Run as a script, this file is one such process (see `_worker`); its settings come from
the environment the test gives it.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from data_pipelines import cli_flags as cli
from jepa_jax import export
from jepa_jax.config import fields, validation
from jepa_jax.parallel import distributed
from jepa_jax.training import datasets
from tests.tiny import ROOT, TINY_FLAGS, tiny_config

NO_ENV: dict = {}
ALL_ENV = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
           "JAX_PROCESS_ID": "3"}
SLURM_ENV = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_NTASKS": "2",
             "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}


def _settings(**fields):
  settings = tiny_config().distributed
  settings.update(fields)
  return settings


@pytest.mark.parametrize("fields,environ,on_tpu,expected", [
    ({}, NO_ENV, False, None),
    ({}, {**SLURM_ENV, "SLURM_NTASKS": "1"}, False, None),
    ({}, SLURM_ENV, False, {}),
    ({}, {"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "2"},
     False, {}),
    ({}, NO_ENV, True, {}),
    ({}, ALL_ENV, False, {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                          "process_id": 3}),
    ({"coordinator_address": "host:99", "process_id": 0}, {**ALL_ENV, **SLURM_ENV}, False,
     {"coordinator_address": "host:99", "num_processes": 4, "process_id": 0}),
])
def test_initialize_arguments_from_config_then_environment_then_cluster(
    fields, environ, on_tpu, expected):
  assert distributed.initialize_arguments(_settings(**fields), environ, on_tpu) == expected


@pytest.mark.parametrize("given,environ,fragment", [
    ({"coordinator_address": "host:99"}, NO_ENV,
     "coordinator_address set but not num_processes, process_id"),
    ({"num_processes": 2, "process_id": 0}, SLURM_ENV, "but not coordinator_address"),
    ({"coordinator_address": "host:99", "num_processes": 2, "process_id": 2}, NO_ENV,
     "2 must be in 0..1 for num_processes 2"),
    ({"coordinator_address": "host"}, NO_ENV, "must be host:port"),
    ({"process_id": -2}, NO_ENV, "distributed.process_id must be an integer >= 0"),
    ({}, {**ALL_ENV, "JAX_NUM_PROCESSES": "two"}, "$JAX_NUM_PROCESSES='two' must be an integer"),
])
def test_bad_distributed_settings_are_config_errors(given, environ, fragment, monkeypatch):
  with pytest.raises(fields.ConfigError, match="distributed|JAX_") as err:
    distributed.initialize_arguments(_settings(**given), environ, False)
  assert fragment in str(err.value)
  for name in (*ALL_ENV, *SLURM_ENV):
    monkeypatch.delenv(name, raising=False)
  for name, value in environ.items():
    monkeypatch.setenv(name, value)
  config = tiny_config()
  config.distributed.update(given)
  with pytest.raises(fields.ConfigError) as err:
    validation.validate(config)
  assert fragment in str(err.value)
  # Where a process runs is no reason to refuse resuming its workdir.
  assert not fields.resume_differences(fields.to_dict(tiny_config()),
                                       fields.to_dict(config))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(base: Path, name: str, processes: int, devices: int, stop_after: int = 0,
            stop_signal: str = "SIGTERM"):
  """Start run `name` in workdir base/name: `processes` workers of `devices` CPU devices
  each (a coordinator on localhost when there are several), each writing its output to
  base/name.<process>.log and its record to base/name.<process>.json."""
  env = {k: v for k, v in os.environ.items() if k not in ALL_ENV}
  # Compiling is most of a worker's time: cheaper code generation, and later launches
  # read what the first ones compiled from the cache.
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                       f"--xla_backend_optimization_level=0 "
                       f"--xla_llvm_disable_expensive_passes=true",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             JAX_COMPILATION_CACHE_DIR=str(base / "compilation_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  port, launched = _free_port(), []
  for i in range(processes):
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                 JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i))
    log = base / f"{name}.{i}.log"
    with log.open("w") as out:
      launched.append((subprocess.Popen(
          [sys.executable, __file__, str(base / name), str(base / f"{name}.{i}.json"),
           str(stop_after), stop_signal],
          env=dict(env), stdout=out, stderr=subprocess.STDOUT), log))
  return launched


def _finish(launched, timeout_s: float = 300) -> list[dict]:
  """Each process's exit code, output and record (None where it wrote none)."""
  try:
    for process, _ in launched:
      process.wait(timeout=timeout_s)
  finally:
    for process, _ in launched:
      if process.poll() is None:
        process.kill()
        process.wait()
  record = lambda log: (json.loads(log.with_suffix(".json").read_text())  # noqa: E731
                        if log.with_suffix(".json").exists() else None)
  return [{"code": process.returncode, "output": log.read_text(), "record": record(log)}
          for process, log in launched]


def _exited(processes: list[dict], code: int) -> list[dict]:
  """The records of `processes`, each of which must have exited with `code`."""
  for i, process in enumerate(processes):
    assert process["code"] == code, f"process {i} exited {process['code']}, not {code}:\n" \
        + process["output"][-6000:]
  return [process["record"] for process in processes]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict]:
  """Tiny runs of 6 steps started as main starts them, two launches at once each time:
  first the reference (one process of 4 devices), a run of two processes of 2 devices each
  whose process 1 alone is preempted (SIGTERM) at its second batch and one of a single
  process of 2 devices preempted at its third; then the two-process run resumed on two
  processes and on one of 4 devices, the one-process run resumed on two processes, and a
  two-process run whose process 1 alone gets Ctrl-C (SIGINT) at its second batch. Nothing
  is asserted here: each test checks the runs it is about."""
  base = tmp_path_factory.mktemp("multiprocess")
  datasets.resolve(tiny_config())  # the corpus, built once before the processes read it
  first = {"one": _launch(base, "one", processes=1, devices=4),
           "two": _launch(base, "two", processes=2, devices=2, stop_after=2),
           "solo": _launch(base, "solo", processes=1, devices=2, stop_after=3)}
  done = {name: _finish(launched) for name, launched in first.items()}
  for source, copy in (("two", "two_on_two"), ("two", "two_on_one"), ("solo", "solo_on_two")):
    if (base / source).is_dir():
      shutil.copytree(base / source, base / copy)
  second = {"two_on_two": _launch(base, "two_on_two", processes=2, devices=2),
            "two_on_one": _launch(base, "two_on_one", processes=1, devices=4),
            "solo_on_two": _launch(base, "solo_on_two", processes=2, devices=2),
            "ctrl_c": _launch(base, "ctrl_c", processes=2, devices=2, stop_after=2,
                              stop_signal="SIGINT")}
  done.update({name: _finish(launched) for name, launched in second.items()})
  return base, done


def _losses(workdir: Path) -> list[tuple[int, float]]:
  return [(line["step"], line["loss"]) for line in map(
      json.loads, (workdir / "metrics.jsonl").read_text().splitlines())]


def _exported(workdir: Path):
  return jax.tree.map(np.asarray, export.load_encoder(workdir / "export")[2])


def _assert_resumes_as_uninterrupted(runs, saved: str, resumed: str, processes: int) -> None:
  """Run `saved`, stopped, then resumed as run `resumed` on `processes` processes, read
  the bits of the reference's global batches, and logs its losses and exports its
  parameters up to the order of sums: an all-reduce over processes (gloo) adds in another
  order than one within a process, and over 2 devices than over 4. Adam turns that noise
  in gradients that are zero in exact arithmetic (the attention's key bias) into weights
  of ~1e-6 (hence atol); a resume on other batches moves losses by ~1e-2."""
  base, done = runs
  reference, = _exited(done["one"], 0)
  first = _exited(done[saved], cli.INTERRUPTED)[0]
  second = _exited(done[resumed], 0)[0]
  assert (reference["process_count"], reference["step"]) == (1, 6)
  saved_step = first["step"]
  # The stopped launch had also read the batch after its saved step, while that step ran.
  assert first["interrupted"] and 1 <= saved_step < 6 and len(first["ids"]) == saved_step + 1
  assert (second["process_count"], second["step"], second["interrupted"]) == (processes, 6,
                                                                                False)
  assert len(second["ids"]) == 6 - saved_step
  # The processes' slices assemble into the global batches one process reads, in order,
  # and the resumed launch read on from where the saved one stopped.
  assert first["ids"][:saved_step] + second["ids"] == reference["ids"]
  np.testing.assert_array_equal(first["mel_row_sums"][:saved_step] + second["mel_row_sums"],
                                reference["mel_row_sums"])
  losses, reference_losses = _losses(base / resumed), _losses(base / "one")
  assert [s for s, _ in losses] == [s for s, _ in reference_losses] == [2, 4, 6]
  np.testing.assert_allclose([x for _, x in losses], [x for _, x in reference_losses],
                             rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               _exported(base / resumed), _exported(base / "one"))


@pytest.mark.slow
def test_two_processes_train_resume_and_export_as_one_process(runs):
  base, done = runs
  two = _exited(done["two"], cli.INTERRUPTED)
  # Process 1 alone got SIGTERM at its second batch; process 0 stopped with it, after the
  # step jax's preemption service agreed on, and the next launch resumed from there.
  assert [r["process_count"] for r in two] == [2, 2] and two[0]["initialized"]
  assert two[0]["step"] == two[1]["step"]
  assert not _exited(done["one"], 0)[0]["initialized"]
  _assert_resumes_as_uninterrupted(runs, "two", "two_on_two", processes=2)


@pytest.mark.slow
def test_a_run_saved_by_two_processes_resumes_on_one(runs):
  """Elastic resume, on as many devices (4)."""
  _assert_resumes_as_uninterrupted(runs, "two", "two_on_one", processes=1)


@pytest.mark.slow
def test_a_run_saved_by_one_process_resumes_on_two(runs):
  """Elastic resume, from 2 devices to 4."""
  assert _exited(runs[1]["solo"], cli.INTERRUPTED)[0]["process_count"] == 1
  _assert_resumes_as_uninterrupted(runs, "solo", "solo_on_two", processes=2)


@pytest.mark.slow
def test_ctrl_c_in_one_process_checkpoints_every_process_at_the_same_step(runs):
  """SIGINT to process 1 alone: both processes save the step the preemption service
  agreed on and exit with the interrupted code, as after SIGTERM."""
  base, done = runs
  processes = done["ctrl_c"]
  stopped = _exited(processes, cli.INTERRUPTED)
  step = stopped[0]["step"]
  assert [(r["step"], r["interrupted"]) for r in stopped] == [(step, True)] * 2
  assert 1 <= step < 6
  assert max(int(p.name) for p in (base / "ctrl_c" / "checkpoints").iterdir()
             if p.name.isdigit()) == step
  assert "stopping after the step all processes agree on" in processes[1]["output"]
  assert f"interrupted: the checkpoint of step {step} of 6 is saved" in processes[0]["output"]


def _worker(workdir: str, record: str, stop_after: int, stop_signal: str) -> None:
  """One process of a run as `python -m jepa_jax.main` runs it (joining the others with
  the settings from the environment), recording every global batch and what loop.train
  returned; the last process alone gets `stop_signal` at batch `stop_after` (0: never)."""
  from absl import flags
  from jax.experimental import multihost_utils

  from jepa_jax import main
  from jepa_jax.training import loop
  flags.FLAGS.mark_as_parsed()  # orbax and Grain read absl flags
  batches = {"ids": [], "mel_row_sums": []}
  make_array = jax.make_array_from_process_local_data

  def recording(sharding, local):
    array = make_array(sharding, local)
    whole = multihost_utils.process_allgather(array, tiled=True)
    if whole.ndim == 1:
      batches["ids"].append(whole.tolist())
    else:
      batches["mel_row_sums"].append(whole.sum(axis=(1, 2)).tolist())
      if len(batches["mel_row_sums"]) == stop_after \
          and jax.process_index() == jax.process_count() - 1:
        os.kill(os.getpid(), getattr(signal, stop_signal))
    return array

  train = loop.train

  def recorded(config, workdir):
    result = train(config, workdir)
    if distributed.is_primary() and not result.interrupted:
      # As main's probe does: process 0 alone reads the export, and no barrier in it waits
      # for the others (they wait in main).
      export.load_encoder(Path(workdir) / "export")
    Path(record).write_text(json.dumps({
        "initialized": jax.distributed.is_initialized(),
        "process_count": jax.process_count(), "step": result.step,
        "interrupted": result.interrupted, **batches}))
    return result

  jax.make_array_from_process_local_data = recording
  loop.train = recorded
  main.main([f"--config={ROOT / 'configs' / 'audio_jepa.py'}:demo", f"--workdir={workdir}",
             *TINY_FLAGS, "--config.train.checkpoint_every=2", "--config.train.log_every=2",
             "--config.train.keep_checkpoints=2", "--config.train.micro_batches=1"])


if __name__ == "__main__":
  _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
