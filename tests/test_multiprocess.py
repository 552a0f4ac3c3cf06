"""Multi-host training on jax.distributed: two CPU processes of two devices each train,
stop, resume and export exactly what one process on four devices does.

Run as a script, this file is one such process (see `_worker`); its settings come from
the environment the test gives it.
"""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jepa_jax import export
from jepa_jax.config import fields, validation
from jepa_jax.parallel import distributed
from jepa_jax.training import datasets
from tests.tiny import ROOT, tiny_config

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


def _launch(workdir: Path, record: Path, processes: int, devices: int, stop_after: int = 0):
  """Start `processes` workers of `devices` CPU devices each (a coordinator on localhost
  when there are several); their output goes to files next to `record`."""
  env = {k: v for k, v in os.environ.items() if k not in ALL_ENV}
  # Compiling is most of a worker's time: cheaper code generation, and the resuming
  # launch reads what the first one compiled from the cache.
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                       f"--xla_backend_optimization_level=0 "
                       f"--xla_llvm_disable_expensive_passes=true",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             JAX_COMPILATION_CACHE_DIR=str(record.parent / "compilation_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  port, launched = _free_port(), []
  for i in range(processes):
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                 JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i))
    log = record.with_name(f"{record.stem}.{i}.log")
    with log.open("w") as out:
      launched.append((subprocess.Popen(
          [sys.executable, __file__, str(workdir), str(record), str(stop_after)],
          env=dict(env), stdout=out, stderr=subprocess.STDOUT), log))
  return launched


def _wait(launched, timeout_s: float = 300) -> None:
  try:
    for process, _ in launched:
      process.wait(timeout=timeout_s)
  finally:
    for process, _ in launched:
      if process.poll() is None:
        process.kill()
        process.wait()
  for process, log in launched:
    assert process.returncode == 0, f"{log.name} exited {process.returncode}:\n" \
        + log.read_text()[-6000:]


@pytest.mark.slow
def test_two_processes_train_resume_and_export_as_one_process(tmp_path):
  datasets.resolve(tiny_config())  # the corpus, built once before three processes read it
  _wait(_launch(tmp_path / "one", tmp_path / "one.json", processes=1, devices=4)
        + _launch(tmp_path / "two", tmp_path / "first.json", processes=2, devices=2,
                  stop_after=2))
  _wait(_launch(tmp_path / "two", tmp_path / "second.json", processes=2, devices=2))
  first, second, reference = (json.loads((tmp_path / f"{name}.json").read_text())
                              for name in ("first", "second", "one"))
  # Process 1 alone got SIGTERM at its second batch; process 0 stopped with it, after the
  # step jax's preemption service agreed on, and the next launch resumed from there.
  assert (first["process_count"], first["interrupted"]) == (2, True)
  assert 2 <= first["step"] < 6 and len(first["ids"]) == first["step"]
  assert (second["process_count"], second["step"], second["interrupted"]) == (2, 6, False)
  assert len(second["ids"]) == 6 - first["step"]
  assert (reference["process_count"], reference["step"]) == (1, 6)
  assert (first["initialized"], reference["initialized"]) == (True, False)
  # The hosts' slices assemble into the global batches one process reads, in order.
  for key in ("ids", "mel_row_sums"):
    np.testing.assert_allclose(first[key] + second[key], reference[key], rtol=1e-6)
  lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [2, 4, 6]  # process 0's alone
  exported = [jax.tree.map(np.asarray, export.load_encoder(tmp_path / name / "export")[2])
              for name in ("two", "one")]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               *exported)


def _worker(workdir: str, record: str, stop_after: int) -> None:
  """One process: join the others (settings from the environment) and train the tiny
  config, recording every global batch; process 1 alone is preempted (SIGTERM) at batch
  `stop_after` (0: never)."""
  from absl import flags
  from jax.experimental import multihost_utils

  from jepa_jax.training import loop
  flags.FLAGS.mark_as_parsed()  # orbax and Grain read absl flags
  config = tiny_config(checkpoint_every=2)
  distributed.initialize(config)
  batches = {"ids": [], "mel_row_sums": []}
  make_array = jax.make_array_from_process_local_data

  def recording(sharding, local):
    array = make_array(sharding, local)
    whole = multihost_utils.process_allgather(array, tiled=True)
    if whole.ndim == 1:
      batches["ids"].append(whole.tolist())
    else:
      batches["mel_row_sums"].append(whole.sum(axis=(1, 2)).tolist())
      if len(batches["mel_row_sums"]) == stop_after and jax.process_index() == 1:
        os.kill(os.getpid(), signal.SIGTERM)
    return array

  jax.make_array_from_process_local_data = recording
  result = loop.train(config, workdir)
  if distributed.is_primary() and not result.interrupted:
    # As main's probe does: process 0 alone reads the export, and no barrier in it waits
    # for the others (they wait below).
    export.load_encoder(Path(workdir) / "export")
  distributed.barrier("export read")
  if distributed.is_primary():
    Path(record).write_text(json.dumps({
        "initialized": jax.distributed.is_initialized(),
        "process_count": jax.process_count(), "step": result.step,
        "interrupted": result.interrupted, **batches}))


if __name__ == "__main__":
  _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]))
