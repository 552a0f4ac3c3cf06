"""Faults a long run meets at its checkpoints: content checksums, a corrupt or unreadable
newest checkpoint (moved aside, the previous one restored, the run as if uninterrupted),
none intact (one error, nothing moved), a full disk while saving (checkpoint.py)."""
import errno
import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jepa_jax import checksums, export, main
from jepa_jax.config import fields
from jepa_jax.training import checkpoint, loop, warm_start
from tests.tiny import TINY_FLAGS, exported_params, tiny_config


def test_checksums_catch_any_changed_word_of_every_dtype():
  rng = np.random.default_rng(0)
  tree = {"f32": jnp.asarray(rng.normal(size=(7, 5)), jnp.float32),
          "bf16": jnp.asarray(rng.normal(size=(9,)), jnp.bfloat16),
          "i8": jnp.asarray(rng.integers(-9, 9, size=(4, 3)), jnp.int8),
          "flags": jnp.asarray(rng.random(6) > 0.5),
          "nested": {"step": jnp.int32(12), "key": jax.random.key(3)}}
  recorded = checksums.of_tree(tree)
  assert set(recorded) == {"f32", "bf16", "i8", "flags", "nested/step", "nested/key"}
  assert checksums.mismatches(tree, recorded) == []
  for name, leaf in [("f32", tree["f32"].at[6, 4].set(np.nextafter(tree["f32"][6, 4], 9))),
                     ("bf16", tree["bf16"].at[0].set(-tree["bf16"][0])),
                     ("i8", tree["i8"].at[2, 1].add(1)),
                     ("flags", ~tree["flags"])]:
    assert checksums.mismatches({**tree, name: leaf}, recorded) == [name]
  # The same words in other places are other contents.
  swapped = {**tree, "f32": tree["f32"][::-1]}
  assert checksums.mismatches(swapped, recorded) == ["f32"]
  assert checksums.mismatches({k: v for k, v in tree.items() if k != "i8"}, recorded) == ["i8"]


def test_checksums_do_not_depend_on_how_arrays_are_split_over_devices():
  x = jnp.arange(8 * 6, dtype=jnp.float32).reshape(8, 6) / 7
  mesh = jax.make_mesh((8,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
  split = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d")))
  one = jax.device_put(x, jax.devices()[0])
  assert len(split.addressable_shards) == 8
  assert checksums.of_tree({"x": split}) == checksums.of_tree({"x": one})


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
  """A tiny run to its end (6 steps), checkpoints at steps 3 and 6."""
  workdir = tmp_path_factory.mktemp("saved")
  result = loop.train(tiny_config(checkpoint_every=3), workdir)
  assert checkpoint.Checkpointer(workdir / "checkpoints", 2).all_steps() == [3, 6]
  return workdir, result


def _copy(saved, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(saved, workdir)
  shutil.rmtree(workdir / "export")
  return workdir


def _flip_bytes(step_dir):
  """Bit rot: 8 bytes flipped in the middle of every array data file of a checkpoint's
  state (OCDBT keeps some files a restore never reads, so one file alone may be spared)."""
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert files
  for path in files:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0x5A for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))


def _restart_with(corrupt, saved_run, tmp_path, capsys):
  saved, reference = saved_run
  workdir = _copy(saved, tmp_path)
  corrupt(workdir / "checkpoints" / "6")
  capsys.readouterr()
  again = loop.train(tiny_config(checkpoint_every=3), workdir)
  err = capsys.readouterr().err
  warnings = [line for line in err.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 1 and "step 6" in warnings[0], err
  assert str(workdir / "corrupt" / "6") in warnings[0]
  assert (workdir / "corrupt" / "6" / "state").is_dir()  # moved, not deleted
  # The run went on from step 3 exactly as the uninterrupted one did.
  assert (again.step, again.interrupted) == (6, False)
  jax.tree.map(np.testing.assert_array_equal, exported_params(workdir), exported_params(saved))
  assert again.last_metrics["loss"] == reference.last_metrics["loss"]
  assert checkpoint.Checkpointer(workdir / "checkpoints", 2).all_steps() == [3, 6]


@pytest.mark.slow
def test_bytes_flipped_in_the_newest_checkpoint(saved_run, tmp_path, capsys):
  _restart_with(_flip_bytes, saved_run, tmp_path, capsys)


@pytest.mark.slow
def test_an_array_that_reads_but_differs_from_its_checksum(saved_run, tmp_path, capsys):
  _restart_with(_wrong_checksum, saved_run, tmp_path, capsys)


@pytest.mark.slow
def test_no_intact_checkpoint_stops_with_one_line_and_moves_nothing(saved_run, tmp_path,
                                                                    capsys):
  workdir = _copy(saved_run[0], tmp_path)
  for step in (3, 6):
    _flip_bytes(workdir / "checkpoints" / str(step))
  before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
  with pytest.raises(SystemExit) as stopped:
    main.main(["--config=configs/audio_jepa.py:demo", f"--workdir={workdir}",
               *_tiny_flags()])
  assert stopped.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: no checkpoint in") and "step 6" in err[-1] \
      and "step 3" in err[-1], err
  assert not [line for line in err if "Traceback" in line]
  print(err[-1])
  assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before


def _wrong_checksum(step_dir):
  """What a flipped byte in an uncompressed chunk reads as: other values, no read error."""
  path = step_dir / checkpoint.CHECKSUMS / "metadata"
  recorded = json.loads(path.read_text())
  name = sorted(n for n in recorded if n.startswith("params/"))[0]
  recorded[name] = f"{int(recorded[name], 16) ^ 1:016x}"
  path.write_text(json.dumps(recorded))


@pytest.mark.slow
def test_a_warm_start_reads_the_newest_checkpoint_whose_params_verify(saved_run, tmp_path):
  # uaMix's warm start takes the source run's heads from its latest checkpoint: a corrupt
  # one is named and the one before used, as a resume does, but nothing of the source run
  # is moved.
  workdir = _copy(saved_run[0], tmp_path)
  steps = workdir / "checkpoints"
  newest = checkpoint.latest_entry(steps)
  alone = tmp_path / "step3"
  shutil.copytree(steps / "3", alone / "3")
  previous = checkpoint.latest_entry(alone)
  assert not np.array_equal(jax.tree.leaves(newest)[0], jax.tree.leaves(previous)[0])
  before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
  for corrupt in (_wrong_checksum, _flip_bytes):
    shutil.rmtree(steps / "6")
    shutil.copytree(saved_run[0] / "checkpoints" / "6", steps / "6")
    corrupt(steps / "6")
    warnings = []
    got = checkpoint.latest_entry(steps, warn=warnings.append)
    jax.tree.map(np.testing.assert_array_equal, got, previous)
    assert len(warnings) == 1 and str(steps / "6") in warnings[0], warnings
    assert "using step 3's" in warnings[0]
  _flip_bytes(steps / "3")
  with pytest.raises(checkpoint.NoIntactCheckpointError, match="step 6: .*; step 3: "):
    checkpoint.latest_entry(steps)
  assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before
  # Through the warm start, one line that says what to do.
  shutil.copytree(saved_run[0] / "export", workdir / "export")
  config = tiny_config()
  config.init_from = str(workdir)
  with pytest.raises(fields.ConfigError, match=re.escape(
      f"init_from={workdir / 'export'} to start from the export alone")):
    warm_start.load(config)


def _tiny_flags():
  return [*TINY_FLAGS, "--config.train.checkpoint_every=3", "--config.train.log_every=2",
          "--config.train.keep_checkpoints=2", "--config.train.micro_batches=1"]


@pytest.mark.slow
@pytest.mark.parametrize("full_at, intact", [(1, "no checkpoint was written yet"),
                                             (2, "the checkpoint of step 3 is intact")])
def test_a_full_disk_while_saving_stops_with_the_previous_checkpoint_intact(
    tmp_path, monkeypatch, capsys, full_at, intact):
  # The checksums item is written in the asynchronous part of a save, like the arrays: the
  # error surfaces at the next save (the save of step 3 fails, seen at step 6's) or at the
  # last wait (step 6's save fails, seen when the loop waits for it). Counted alone: other
  # JSON items (the data position) are written beside it in every save.
  real = ocp.JsonCheckpointHandler._save_fn
  calls = []

  async def full_at_nth_save(self, x, directory):
    if Path(directory).name.startswith(checkpoint.CHECKSUMS):
      calls.append(directory)
      if len(calls) == full_at:
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))
    return await real(self, x, directory)

  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", full_at_nth_save)
  workdir = tmp_path / "run"
  with pytest.raises(SystemExit) as stopped:
    main.main(["--config=configs/audio_jepa.py:demo", f"--workdir={workdir}",
               *_tiny_flags()])
  assert stopped.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert "no space left on the disk of" in err[-1] and str(workdir / "checkpoints") in err[-1]
  assert "iB are free" in err[-1] and intact in err[-1], err[-1]
  assert not [line for line in err if "Traceback" in line]
  assert checkpoint.Checkpointer(workdir / "checkpoints", 2).all_steps() == \
      ([3] if full_at == 2 else [])
  assert not (workdir / "export").exists()


@pytest.mark.slow
def test_a_corrupt_export_is_named_when_evaluating(saved_run, tmp_path, capsys):
  from jepa_jax import evaluate  # noqa: PLC0415 - the command, as a user runs it
  workdir = tmp_path / "run"
  shutil.copytree(saved_run[0] / "export", workdir / "export")
  export.load_encoder(workdir / "export")  # intact: reads and verifies
  sums = workdir / "export" / export.CHECKSUMS
  recorded = json.loads(sums.read_text())
  name = sorted(recorded)[-1]
  sums.write_text(json.dumps({**recorded, name: "0" * 16}))
  with pytest.raises(export.CorruptExportError, match=rf"differ from {sums}.*{name}"):
    export.load_encoder(workdir / "export")
  sums.write_text(json.dumps(recorded))
  for path in (workdir / "export" / "encoder").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(path.read_bytes()[:-16] + bytes(16))  # a partial copy, zero-filled
  with pytest.raises(SystemExit) as stopped:
    evaluate.main([f"--workdir={workdir}", "--protocol=linear"])
  assert stopped.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith(f"error: the encoder parameters in {workdir / 'export' / 'encoder'}"
                            f" cannot be read"), err
  assert not [line for line in err if "Traceback" in line]
