"""Configs, variants and the command line: bad input is refused before anything
compiles, with a message that names the problem."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from jepa_jax import main
from jepa_jax.config import fields, upgrade, validation
from jepa_jax.training import loop, metric_writers
from tests.tiny import ROOT, TINY_FLAGS, load_config_module

audio_jepa = load_config_module()


def test_paper_recipe_values():
  c = audio_jepa.get_config()
  assert (c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim) == (768, 12, 12, 3072)
  assert (c.predictor.width, c.predictor.depth, c.predictor.num_heads) == (512, 8, 16)
  assert (c.data.frames, c.mask.unstructured.target_ratio, c.train.batch_size) == (208, 0.6,
                                                                                   2048)
  assert c.mask.strategy == "unstructured" and c.jepa.target_domain == "audio"
  assert (c.ema.tau_start, c.ema.tau_end) == (0.99995, 0.99999)
  assert (c.train.epochs, c.optim.warmup_epochs, c.optim.clip_norm) == (300, 20, 3.0)
  validation.validate(c)


def test_duration_and_demo_variants():
  assert audio_jepa.get_config("d=3.2").data.frames == 320
  assert audio_jepa.get_config("d=6.4").data.frames == 640
  demo = audio_jepa.get_config("demo,d=3.2")
  assert demo.data.frames == 320 and demo.model.width < 768
  assert (demo.ema.tau_start, demo.ema.tau_end) == (0.996, 1.0)
  with pytest.raises(fields.ConfigError, match="unknown config variant 'deom'"):
    audio_jepa.get_config("deom")
  with pytest.raises(fields.ConfigError, match="d='long' is not a float"):
    audio_jepa.get_config("d=long")


def test_load_gives_the_variant_of_the_recipe_file():
  loaded = fields.load(ROOT / "configs" / "audio_jepa.py:demo,d=3.2")
  assert loaded.to_dict() == audio_jepa.get_config("demo,d=3.2").to_dict()
  assert fields.load(ROOT / "configs" / "audio_jepa.py").to_dict() == \
      audio_jepa.get_config().to_dict()
  with pytest.raises(fields.ConfigError, match="nowhere.py not found"):
    fields.load("configs/nowhere.py:demo")


def test_validate_lists_every_bad_field():
  c = audio_jepa.get_config("demo")
  c.mask.unstructured.target_ratio = 1.5
  c.model.num_heads = 5
  c.optim.base_lr = -1.0
  c.jepa.target_domain = "pixels"
  with pytest.raises(fields.ConfigError) as err:
    validation.validate(c)
  message = str(err.value)
  for fragment in ("target_ratio 1.5", "divisible by model.num_heads 5", "base_lr must be > 0",
                   "target_domain must be 'audio' or 'latent'"):
    assert fragment in message


def test_resume_differences_ignore_logging_but_not_model():
  a = fields.to_dict(audio_jepa.get_config("demo"))
  b = audio_jepa.get_config("demo")
  b.train.log_every = 7
  b.mesh.data = 2
  assert fields.resume_differences(a, fields.to_dict(b)) == []
  b.predictor.depth = 9
  assert fields.resume_differences(a, fields.to_dict(b)) == [
      "predictor.depth: 3 in the workdir, 9 now"]


def test_runs_saved_before_a_field_existed_resume_with_its_old_behaviour():
  saved = fields.to_dict(audio_jepa.get_config("demo"))
  del saved["data"]["exclude_classes"]  # as written before the field was added
  del saved["data"]["cyclic_crop"]
  del saved["init_from"]
  current = audio_jepa.get_config("demo")
  assert fields.resume_differences(saved, fields.to_dict(current)) != []
  saved = upgrade.upgrade(saved)  # what the resume check compares
  assert fields.resume_differences(saved, fields.to_dict(current)) == []
  current.data.exclude_classes = "pitch:110-156Hz"
  assert fields.resume_differences(saved, fields.to_dict(current)) == [
      "data.exclude_classes: '' in the workdir, 'pitch:110-156Hz' now"]


def test_cyclic_crop_is_on_for_every_a_jepa_variant_and_changes_what_a_run_computes():
  ajepa = load_config_module("ajepa")
  for variant in (None, "demo", "sets=4", "global", "size=vit_l", "demo,sets=2"):
    assert ajepa.get_config(variant).data.cyclic_crop is True, variant
  for name in ("audio_jepa", "audiomae", "dasheng", "uamix"):
    assert load_config_module(name).get_config().data.cyclic_crop is False, name
  # Runs saved before the field resume with the plain crop; the field is not resume-free.
  saved = fields.to_dict(ajepa.get_config("demo"))
  del saved["data"]["cyclic_crop"]
  assert upgrade.upgrade(saved)["data"]["cyclic_crop"] is False
  assert fields.resume_differences(upgrade.upgrade(saved), fields.to_dict(
      ajepa.get_config("demo"))) == ["data.cyclic_crop: False in the workdir, True now"]


def test_dry_run_counts_vit_b_encoder():
  counts = main.parameter_counts(audio_jepa.get_config())
  assert counts["encoder"] == 85_253_376  # 86 M within 2 %
  assert 20e6 < counts["predictor"] < 30e6


def _run(*args):
  return subprocess.run([sys.executable, "-m", "jepa_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_cli_dry_run_prints_one_json_line():
  out = _run("--config=configs/audio_jepa.py", "--dry_run")
  assert out.returncode == 0, out.stderr
  assert json.loads(out.stdout.strip().splitlines()[-1])["params"]["encoder"] == 85_253_376


@pytest.mark.parametrize("args,fragment", [
    (["--config=configs/missing.py", "--dry_run"], "missing.py"),
    (["--config=configs/audio_jepa.py:nope", "--dry_run"], "unknown config variant 'nope'"),
    (["--config=configs/audio_jepa.py", "--config.train.nonexistent=1", "--dry_run"],
     "nonexistent"),
    (["--config=configs/audio_jepa.py", "--config.train.batch_size=abc", "--dry_run"],
     "batch_size"),
    (["--config=configs/audio_jepa.py", "--config.mask.unstructured.target_ratio=0",
      "--dry_run"], "at least one target"),
    (["--config=configs/audio_jepa.py:demo", "--workdir={tmp}/run",
      "--config.data.dir={tmp}/no_shards"], "is not a mel shard directory"),
])
def test_cli_bad_input_is_a_clear_error(args, fragment, tmp_path):
  out = _run(*(a.format(tmp=tmp_path) for a in args))
  assert out.returncode != 0
  assert fragment in out.stderr
  assert "Traceback" not in out.stderr
  assert not (tmp_path / "run").exists()  # nothing was written


def test_default_workdir_names_the_config_its_variant_and_its_overrides():
  assert main.default_workdir("configs/ajepa.py", {}) == Path("runs/ajepa")
  assert main.default_workdir("/x/configs/ajepa.py:demo,sets=2", {}) == Path(
      "runs/ajepa_demo_sets-2")
  a = main.default_workdir("configs/ajepa.py", {"train.batch_size": 64, "seed": 1})
  b = main.default_workdir("configs/ajepa.py", {"seed": 1, "train.batch_size": 64})
  c = main.default_workdir("configs/ajepa.py", {"train.batch_size": 32, "seed": 1})
  assert a == b != c and a.name.startswith("ajepa_") and len(a.name) == len("ajepa_") + 8


@pytest.mark.slow
def test_without_workdir_the_run_goes_to_its_default_and_the_same_command_resumes(
    tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  command = [f"--config={ROOT / 'configs' / 'audio_jepa.py'}:demo", *TINY_FLAGS]
  main.main(command)
  out, err = capsys.readouterr()
  first = err.splitlines()[0]
  assert first.startswith("workdir: runs/audio_jepa_demo_") and "resumes there" in first
  assert "step 1/6 took" in err and "ETA" in err  # as soon as the first step is done
  workdir = tmp_path / first.split()[1]
  assert workdir.parent == tmp_path / "runs" and (workdir / "export").is_dir()
  assert json.loads(out.splitlines()[-1])["steps"] == 6
  final_loss = json.loads(out.splitlines()[-1])["final_loss"]
  main.main(command)  # finished: resumes at its last checkpoint and only reports
  out, err = capsys.readouterr()
  assert json.loads(out.splitlines()[-1])["final_loss"] == final_loss is not None
  assert err.startswith(first)
  assert f"resumed from the checkpoint at step 6 in {workdir}" in out
  assert [p.name for p in (tmp_path / "runs").iterdir()] == [workdir.name]


def test_an_interrupted_run_says_so_and_exits_130(tmp_path, monkeypatch, capsys):
  interrupted = loop.TrainResult(step=4, total_steps=6, interrupted=True, last_metrics={},
                                 timings={})
  monkeypatch.setattr(loop, "train", lambda config, workdir: interrupted)
  with pytest.raises(SystemExit) as exit_:
    main.main([f"--config={ROOT / 'configs' / 'audio_jepa.py'}:demo",
               f"--workdir={tmp_path / 'run'}"])
  assert exit_.value.code == 130
  assert "interrupted: the checkpoint of step 4 of 6 is saved" in capsys.readouterr().err


def test_first_step_time_and_eta_and_a_line_past_a_day(capsys):
  assert (metric_writers.duration(59), metric_writers.duration(3 * 86_400 + 7 * 3600)) == (
      "0m59s", "3d07h")
  metric_writers.Progress(0, 1000).first_step(1, 60.0)
  assert capsys.readouterr().err == (
      "step 1/1000 took 60.0 s (with one-time start-up; the progress lines refine it) | "
      "ETA 16h39m for the whole run\n")
  metric_writers.Progress(0, 10_000).first_step(1, 60.0)
  lines = capsys.readouterr().err.splitlines()
  assert lines[0].endswith("ETA 6d22h for the whole run") and len(lines) == 2
  assert ":demo variant" in lines[1] and "going on" in lines[1]


@pytest.mark.parametrize("strategy", ["unstructured", "multi_block", "time"])
@pytest.mark.parametrize("domain", ["audio", "latent"])
def test_table3_cells_are_one_override_each(strategy, domain):
  """Audio-JEPA table 3: mask.strategy x jepa.target_domain, on the paper's 5 x 13 grid."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from jepa_jax import objectives
  c = audio_jepa.get_config("demo")
  c.mask.strategy, c.jepa.target_domain = strategy, domain
  validation.validate(c)
  objective = objectives.build(c, total_steps=100)
  params = jax.eval_shape(lambda: nn.unbox(objective.init(jax.random.key(0))))
  batch = {"mel": jax.ShapeDtypeStruct((2, 80, 208), jnp.float32)}
  loss, _ = jax.eval_shape(
      lambda p, b: objective.loss(p, {"ema": p["encoder"]}, b, jax.random.key(0), 0),
      params, batch)
  assert loss.shape == ()


def test_entry_points_share_one_process_and_run_twice(capsys):
  """Flags live on a FlagValues per call: none is defined at import time, none twice."""
  import importlib

  from absl import flags
  modules = [importlib.import_module(f"jepa_jax.{name}")
             for name in ("main", "evaluate", "embed", "masks.__main__")]
  for _ in range(2):
    for module in modules:
      with pytest.raises(SystemExit) as exited:
        module.main(["--help"])
      out = capsys.readouterr().out
      assert exited.value.code == 0 and "flags:" in out and "--verbosity" in out
      with pytest.raises(SystemExit) as exited:
        module.main(["--no_such_flag=1"])
      assert exited.value.code == 2
      assert capsys.readouterr().err == "error: bad command line: Unknown command line flag " \
                                        "'no_such_flag'\n"
    main.main([f"--config={ROOT / 'configs' / 'audio_jepa.py'}:demo",
               "--config.model.depth=2", "--dry_run"])
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["params"]
    assert counts["encoder"] < main.parameter_counts(audio_jepa.get_config("demo"))["encoder"]
  assert not {"config", "workdir", "task", "strategy", "dry_run"} & set(flags.FLAGS)
