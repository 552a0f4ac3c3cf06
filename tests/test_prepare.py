"""prepare: every input file lands as mels or is listed with its reason; resumable, idempotent."""
import csv
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import data_pipelines
from data_pipelines.audio_io import load_audio, segment_bounds
from data_pipelines.frontends import get_frontend
from data_pipelines.prepare import cli, sources, units
from data_pipelines.prepare.errors import ItemFailed, PrepareError
from data_pipelines.prepare.plan import Options
from data_pipelines.prepare.run import prepare
from data_pipelines.shards import ShardSource, read_metadata
from tests.audio_faults import deny_opening

SR = 16000
FRONTEND = get_frontend("audio_jepa")
OPTIONS = Options(max_seconds=1.0, min_seconds=0.1)  # tiny clips: split past 1 s

# path -> the start of its reason in errors.csv (see audio_io for the full texts)
ERRORS = {
    "cat/broken.wav": "broken symbolic link",
    "cat/empty.wav": "empty file (0 bytes)",
    "cat/photo.mp3": "not an audio file (the content looks like a JPEG image)",
    "cat/text.wav": "not an audio file (the content looks like text)",
    "cat/zero.wav": "no audio frames",
    "dog/corrupt.flac": "corrupt or truncated audio",
    "dog/cut.wav": "truncated (the header promises 16000 bytes of audio data",
    "dog/locked.wav": "unreadable (permission denied)",
    "dog/nan.wav": "contains NaN or inf samples",
    "dog/short.wav": "too short (0.050 s < --min_seconds=0.1)",
    "top.wav": "not inside a class folder",
}
WARNINGS = [
    ("cat/long.wav", "2.5 s long: split into 3 segments of at most 1 s"),
    ("dog/silent.wav", "all silent (no sample reaches -90 dBFS): kept"),
    ("dog/stereo.flac", "2 channels: downmixed to mono"),
    ("dog/stereo.flac", "sample rate 44100 Hz: resampled to 16000 Hz"),
]


def _tone(seed: int, seconds: float = 0.5, rate: int = SR) -> np.ndarray:
  t = np.arange(int(seconds * rate)) / rate
  noise = np.random.default_rng(seed).standard_normal(len(t))
  return (0.3 * np.sin(2 * np.pi * (200 + 40 * seed) * t) + 0.05 * noise).astype(np.float32)


def make_corpus(root: Path, bad: bool = True) -> None:
  """Good clips in class folders cat/ and dog/, the warning kinds, and (bad=True) one
  file of every error kind."""
  for c, name in enumerate(("cat", "dog")):
    (root / name).mkdir(parents=True)
    for i in range(3):
      sf.write(root / name / f"{name}{i}.wav", _tone(10 * c + i), SR, subtype="PCM_16")
  sf.write(root / "cat/long.wav", _tone(7, 2.5), SR, subtype="PCM_16")
  sf.write(root / "dog/silent.wav", np.zeros(SR // 2), SR, subtype="PCM_16")
  stereo = np.stack([_tone(8, 0.5, 44100), _tone(9, 0.5, 44100)], axis=1)
  sf.write(root / "dog/stereo.flac", stereo, 44100, subtype="PCM_16")
  (root / "dog/notes.txt").write_text("not audio, not an audio extension: ignored")
  if not bad:
    return
  os.symlink("gone.wav", root / "cat/broken.wav")
  (root / "cat/empty.wav").write_bytes(b"")
  (root / "cat/photo.mp3").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(500))
  (root / "cat/text.wav").write_text("this is a text file\n" * 20)
  sf.write(root / "cat/zero.wav", np.zeros(0, np.float32), SR)
  sf.write(root / "dog/corrupt.flac", _tone(5, 2.0), SR)
  flac = bytearray((root / "dog/corrupt.flac").read_bytes())
  flac[len(flac) // 3:len(flac) // 3 + 800] = bytes(range(200)) * 4
  (root / "dog/corrupt.flac").write_bytes(bytes(flac))
  sf.write(root / "dog/cut.wav", _tone(6), SR, subtype="PCM_16")
  wav = (root / "dog/cut.wav").read_bytes()
  (root / "dog/cut.wav").write_bytes(wav[:len(wav) // 2])
  sf.write(root / "dog/locked.wav", _tone(4), SR, subtype="PCM_16")
  sf.write(root / "dog/nan.wav", np.array([0.1, np.nan] * 4000, np.float32), SR,
           subtype="FLOAT")
  sf.write(root / "dog/short.wav", _tone(3, 0.05), SR, subtype="PCM_16")
  sf.write(root / "top.wav", _tone(2), SR, subtype="PCM_16")


@pytest.fixture
def locked(monkeypatch):
  """dog/locked.wav cannot be opened (chmod does not stop root, who runs these tests)."""
  deny_opening(monkeypatch, "locked.wav")


def _csv(path: Path) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _run(root, out, **kwargs):
  kwargs.setdefault("options", OPTIONS)
  kwargs.setdefault("workers", 1)
  kwargs.setdefault("progress", False)
  kwargs.setdefault("log", lambda message: None)
  return prepare(out, input_dir=root, **kwargs)


def _records(out: Path) -> list[dict]:
  source = ShardSource(out)
  return [source[i] for i in range(len(source))]


def _snapshot(folder: Path) -> dict:
  return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
          for p in sorted(folder.rglob("*")) if p.is_file()}


def _shard_bytes(out: Path) -> dict:
  return {name: (out / name).read_bytes() for name in read_metadata(out)["shards"]}


def test_every_file_lands_or_is_listed_with_its_reason(tmp_path, locked):
  root, out = tmp_path / "in", tmp_path / "out"
  make_corpus(root)
  summary = _run(root, out, labels_from="folders")

  errors = _csv(out / "errors.csv")
  assert [e["path"] for e in errors] == sorted(ERRORS)
  for row in errors:
    assert row["reason"].startswith(ERRORS[row["path"]]), row
  assert sorted((w["path"], w["reason"]) for w in _csv(out / "warnings.csv")) == WARNINGS
  assert len(summary.errors) == len(ERRORS) and len(summary.warnings) == len(WARNINGS)

  # Ids: position in the list of items (files inside class folders, sorted); segment s of
  # a split file adds s * N.
  items = sorted(str(p.relative_to(root)) for p in root.glob("*/*") if p.suffix != ".txt")
  good = ["cat/cat0.wav", "cat/cat1.wav", "cat/cat2.wav", "cat/long.wav", "dog/dog0.wav",
          "dog/dog1.wav", "dog/dog2.wav", "dog/silent.wav", "dog/stereo.flac"]
  expected_ids = {(items.index(p), p, 0) for p in good} | {
      (items.index("cat/long.wav") + s * len(items), "cat/long.wav", s) for s in (1, 2)}
  examples = _csv(out / "examples.csv")
  assert {(int(e["id"]), e["path"], int(e["segment"])) for e in examples} == expected_ids

  metadata = read_metadata(out)
  assert metadata["frontend"] == FRONTEND.to_dict()  # what training checks
  assert metadata["num_examples"] == len(expected_ids) == summary.num_examples
  assert metadata["label_maps"] == {"label": ["cat", "dog"]}
  assert metadata["source"] == str(root)
  assert metadata["prepare"]["num_errors"] == len(ERRORS)
  source = ShardSource(out)
  by_id = {int(e["id"]): e for e in examples}
  stored, seconds = [], 0.0
  for i in range(len(source)):
    record = source[i]
    row = by_id[record["id"]]
    wave = load_audio(root / row["path"], SR)
    (start, stop), = [b for s, b in enumerate(segment_bounds(len(wave), SR, 1.0))
                      if s == int(row["segment"])]
    np.testing.assert_array_equal(
        record["mel"], FRONTEND.logmel(wave[start:stop]).astype(np.float16))
    assert record["labels"] == {"label": ["cat", "dog"].index(row["path"].split("/")[0])}
    assert float(row["seconds"]) == pytest.approx((stop - start) / SR)
    assert float(row["start_seconds"]) == pytest.approx(start / SR)
    assert row["label"] == row["path"].split("/")[0] and row["shard"] in metadata["shards"]
    stored.append(record["mel"].astype(np.float64).ravel())
    seconds += (stop - start) / SR
  stored = np.concatenate(stored)
  assert metadata["mean"] == pytest.approx(stored.mean(), rel=1e-12)
  assert metadata["std"] == pytest.approx(stored.std(), rel=1e-9)
  assert metadata["total_seconds"] == pytest.approx(seconds)


def test_drop_silent_and_no_split(tmp_path):
  root = tmp_path / "in"
  make_corpus(root, bad=False)
  summary = _run(root, tmp_path / "out", options=Options(max_seconds=0, drop_silent=True))
  assert summary.errors == []
  assert ("dog/silent.wav", "all silent (no sample reaches -90 dBFS): dropped "
                            "(--drop_silent)") in summary.warnings
  paths = [e["path"] for e in _csv(tmp_path / "out/examples.csv")]
  assert "dog/silent.wav" not in paths and paths.count("cat/long.wav") == 1
  assert len(paths) == summary.num_examples == 8
  assert read_metadata(tmp_path / "out")["label_maps"] == {}


def test_labels_csv(tmp_path):
  root = tmp_path / "in"
  make_corpus(root, bad=False)
  (tmp_path / "labels.csv").write_text(
      "filename,label,fold\n"
      "cat/cat0.wav,purr,1\n"
      "./dog/dog0.wav,bark,2\n"
      "dog/dog1.wav,bark,\n"
      "cat/missing.wav,purr,1\n"
      "dog/dog2.wav,,1\n"
      "cat/cat1.wav,purr;meow,1\n"
      "dog/dog0.wav,bark,1\n")
  summary = _run(root, tmp_path / "out", labels_csv=tmp_path / "labels.csv")
  assert summary.errors == [
      ("cat/cat1.wav", "labels CSV row 7: several labels ('purr;meow'); mel shards hold one "
                       "class per task"),
      ("cat/missing.wav", "labels CSV row 5: named in the labels CSV but not found under "
                          "--input"),
      ("dog/dog0.wav", "labels CSV row 8: listed again (first at row 3)"),
      ("dog/dog2.wav", "labels CSV row 6: empty label")]
  metadata = read_metadata(tmp_path / "out")
  assert metadata["label_maps"] == {"fold": ["1", "2"], "label": ["bark", "purr"]}
  assert metadata["prepare"]["ignored_unlabelled_files"] == 4  # 9 audio files, 5 named
  labels = {r["id"]: r["labels"] for r in _records(tmp_path / "out")}
  # items: cat/cat0.wav, dog/dog0.wav, dog/dog1.wav (sorted); ids are their positions
  assert labels == {0: {"label": 1, "fold": 0}, 1: {"label": 0, "fold": 1}, 2: {"label": 0}}
  rows = _csv(tmp_path / "out/examples.csv")
  assert [(r["path"], r["label"], r["fold"]) for r in rows] == [
      ("cat/cat0.wav", "purr", "1"), ("dog/dog0.wav", "bark", "2"), ("dog/dog1.wav", "bark", "")]


def test_second_run_does_nothing(tmp_path, locked):
  root, out = tmp_path / "in", tmp_path / "out"
  make_corpus(root)
  _run(root, out, labels_from="folders")
  before = _snapshot(out)
  messages = []
  summary = _run(root, out, labels_from="folders", log=messages.append)
  assert summary.state == "up to date" and summary.units_done_now == 0
  assert messages == [f"nothing to do: {out.absolute()} is up to date (11 examples, "
                      f"{len(ERRORS)} errors, {len(WARNINGS)} warnings)"]
  assert _snapshot(out) == before


def test_interrupted_run_resumes_to_the_same_shards(tmp_path, locked):
  root = tmp_path / "in"
  make_corpus(root)
  _run(root, tmp_path / "whole", labels_from="folders")
  out = tmp_path / "resumed"
  partial = _run(root, out, labels_from="folders", unit_limit=3)
  assert partial.state == "partial" and not (out / "metadata.json").exists()
  # What a killed worker leaves: a temporary folder and a shard without its sidecar.
  (out / "units/.tmp-unit-00009-12345").mkdir()
  (out / "unit-00009-00.array_record").write_bytes(b"half a shard")
  summary = _run(root, out, labels_from="folders")
  assert summary.state == "prepared" and summary.units_done_now == summary.units_total - 3
  assert not (out / "units/.tmp-unit-00009-12345").exists()
  assert _shard_bytes(out) == _shard_bytes(tmp_path / "whole")
  for name in ("metadata.json", "examples.csv", "errors.csv", "warnings.csv"):
    assert (out / name).read_text() == (tmp_path / "whole" / name).read_text(), name

  # A damaged shard file: only its unit is redone.
  damaged = read_metadata(out)["shards"][2]
  (out / damaged).write_bytes((out / damaged).read_bytes()[:100])
  summary = _run(root, out, labels_from="folders")
  assert summary.units_done_now == 1
  assert _shard_bytes(out) == _shard_bytes(tmp_path / "whole")


def test_parallel_workers_write_the_same_shards(tmp_path):
  root = tmp_path / "in"
  make_corpus(root, bad=False)
  _run(root, tmp_path / "one", workers=1)
  summary = _run(root, tmp_path / "two", workers=2)
  assert summary.state == "prepared"
  assert _shard_bytes(tmp_path / "two") == _shard_bytes(tmp_path / "one")
  assert (tmp_path / "two/metadata.json").read_text() == (
      tmp_path / "one/metadata.json").read_text()


def test_changed_input_is_redone_and_changed_options_refused(tmp_path):
  root, out = tmp_path / "in", tmp_path / "out"
  make_corpus(root, bad=False)
  _run(root, out)
  new_wave = _tone(42)
  sf.write(root / "dog/dog1.wav", new_wave, SR, subtype="FLOAT")
  summary = _run(root, out)
  assert summary.state == "prepared" and summary.units_done_now == 1
  row = next(r for r in _csv(out / "examples.csv") if r["path"] == "dog/dog1.wav")
  record = next(r for r in _records(out) if r["id"] == int(row["id"]))
  np.testing.assert_array_equal(record["mel"], FRONTEND.logmel(new_wave).astype(np.float16))

  with pytest.raises(PrepareError, match=r"--max_seconds was 1.0, now 2.0\); use another "
                                         r"--output, or delete"):
    _run(root, out, options=Options(max_seconds=2.0))
  with pytest.raises(PrepareError, match="labels was none, now folders"):
    _run(root, out, labels_from="folders")


def test_on_error_fail_stops_at_the_first_error_and_keeps_finished_units(tmp_path):
  root, out = tmp_path / "in", tmp_path / "out"
  make_corpus(root, bad=False)
  (root / "dog/bad.wav").write_text("not audio")  # item 4 of 10 (cat/* first)
  with pytest.raises(ItemFailed) as failure:
    _run(root, out, on_error="fail")
  assert str(failure.value).startswith("dog/bad.wav: not an audio file")
  assert sorted(p.name for p in (out / "units").glob("unit-*.json")) == [
      f"unit-{u:05d}.json" for u in range(4)]  # one file per unit here
  summary = _run(root, out, on_error="skip")
  assert summary.units_done_now == summary.units_total - 4
  assert [path for path, _ in summary.errors] == ["dog/bad.wav"]


def test_front_end_failures_are_errors_of_their_file(tmp_path, monkeypatch):
  """A decoder or front end that breaks on one file costs that file, not the run."""
  root = tmp_path / "in"
  make_corpus(root, bad=False)
  boom, nan = load_audio(root / "cat/cat0.wav", SR), load_audio(root / "dog/dog0.wav", SR)
  real_logmel = type(FRONTEND).logmel

  def flaky(self, wave):
    if np.array_equal(wave, boom):
      raise RuntimeError("boom")
    mel = real_logmel(self, wave)
    return np.full_like(mel, np.nan) if np.array_equal(wave, nan) else mel

  monkeypatch.setattr(type(FRONTEND), "logmel", flaky)
  summary = _run(root, tmp_path / "out")
  assert summary.errors == [
      ("cat/cat0.wav", "failed (RuntimeError: boom)"),
      ("dog/dog0.wav", "the audio_jepa front end gave features of shape (80, 51) with NaN or "
                       "inf values")]
  assert summary.num_examples == 11 - 2


def test_ids_stay_int32(tmp_path, monkeypatch):
  root = tmp_path / "in"
  make_corpus(root, bad=False)
  monkeypatch.setattr(units, "MAX_ID", 15)  # 9 items: long.wav's segment 2 would be 21
  summary = _run(root, tmp_path / "out")
  assert summary.errors == [("cat/long.wav", "3 segments would need example ids beyond "
                                             "2**31; raise --max_seconds")]


def test_tfds_source(tmp_path, monkeypatch):
  """--tfds goes through the same units; a stand-in for data_pipelines.tfds_audio."""
  waves = [_tone(1), np.stack([_tone(2, rate=8000)] * 2, 1), np.full(4000, np.nan), _tone(3)]
  rates, labels = [SR, 8000, SR, SR], ["a", "b", "a", None]

  class Source:
    label_names = ["a", "b"]

    def __len__(self):
      return len(waves)

    def key(self, i):
      return f"clip{i}"

    def load(self, i):
      return waves[i], rates[i], labels[i]

  fake = types.ModuleType("data_pipelines.tfds_audio")
  fake.open_source = lambda name, data_dir, split: Source()
  monkeypatch.setitem(sys.modules, "data_pipelines.tfds_audio", fake)
  # The package attribute too: an earlier test may have imported the real module.
  monkeypatch.setattr(data_pipelines, "tfds_audio", fake, raising=False)
  monkeypatch.setattr(sources, "_TFDS_OPEN", {})
  out = tmp_path / "out"
  summary = prepare(out, tfds=("fake", str(tmp_path), "train"), options=OPTIONS, workers=1,
                    progress=False, log=lambda m: None)
  assert summary.errors == [("clip2", "contains NaN or inf samples")]
  assert summary.warnings == [("clip1", "2 channels: downmixed to mono"),
                              ("clip1", "sample rate 8000 Hz: resampled to 16000 Hz")]
  metadata = read_metadata(out)
  assert metadata["source"] == "tfds:fake/train" and metadata["label_maps"] == {
      "label": ["a", "b"]}
  records = {r["id"]: r for r in _records(out)}
  assert {i: r["labels"] for i, r in records.items()} == {0: {"label": 0}, 1: {"label": 1},
                                                          3: {}}
  np.testing.assert_array_equal(records[0]["mel"], FRONTEND.logmel(waves[0]).astype(np.float16))


def test_tfds_audio_dataset(tmp_path):
  """The real data_pipelines.tfds_audio: a dataset built from a folder, then prepared."""
  tfds_audio = pytest.importorskip("data_pipelines.tfds_audio")
  make_corpus(tmp_path / "in", bad=False)
  name = tfds_audio.build_audio_folder(tmp_path / "in", tmp_path / "tfds")
  summary = prepare(tmp_path / "out", tfds=(name, str(tmp_path / "tfds"), "train"),
                    options=OPTIONS, workers=1, progress=False, log=lambda m: None)
  assert summary.errors == [] and summary.num_examples == 11  # as from the folder itself
  rows = _csv(tmp_path / "out/examples.csv")
  assert sorted({r["path"] for r in rows}) == sorted(
      str(p.relative_to(tmp_path / "in")) for p in (tmp_path / "in").glob("*/*.*")
      if p.suffix != ".txt")
  assert {r["label"] for r in rows} == {"cat", "dog"}
  assert read_metadata(tmp_path / "out")["label_maps"] == {"label": ["cat", "dog"]}
  records = {r["id"]: r for r in _records(tmp_path / "out")}
  for row in rows:  # the class index of each record is its folder's
    assert records[int(row["id"])]["labels"] == {"label": ["cat", "dog"].index(row["label"])}
  for row in rows:
    if row["path"] == "cat/cat0.wav":
      wave = load_audio(tmp_path / "in/cat/cat0.wav", SR)
      np.testing.assert_array_equal(records[int(row["id"])]["mel"],
                                    FRONTEND.logmel(wave).astype(np.float16))


def test_planning_errors(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(PrepareError, match="no audio files under .*empty"):
    _run(tmp_path / "empty", tmp_path / "out")
  with pytest.raises(PrepareError, match="is not a folder .it does not exist"):
    _run(tmp_path / "nope", tmp_path / "out")
  make_corpus(tmp_path / "in", bad=False)
  with pytest.raises(PrepareError, match="Unknown front end 'nope'"):
    _run(tmp_path / "in", tmp_path / "out", options=Options(frontend="nope"))
  (tmp_path / "file").write_text("x")
  with pytest.raises(PrepareError, match="--output .*file is a file"):
    _run(tmp_path / "in", tmp_path / "file")
  (tmp_path / "theirs").mkdir()
  (tmp_path / "theirs/thesis.tex").write_text("x")
  with pytest.raises(PrepareError, match="not empty and was not made by prepare"):
    _run(tmp_path / "in", tmp_path / "theirs")
  (tmp_path / "bad.csv").write_text("file,class\na.wav,x\n")
  with pytest.raises(PrepareError, match="header file,class lacks filename, label has unknown"):
    _run(tmp_path / "in", tmp_path / "out", labels_csv=tmp_path / "bad.csv")


def _cli(*args, cwd):
  return subprocess.run([sys.executable, "-m", "data_pipelines.prepare", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=120,
                        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})


def test_cli_errors_are_one_line(tmp_path, capsys):
  result = _cli(f"--input={tmp_path}/missing", f"--output={tmp_path}/out", cwd=tmp_path)
  assert result.returncode == 2 and result.stdout == ""
  assert result.stderr == f"error: --input {tmp_path}/missing is not a folder (it does not " \
                          f"exist)\n"
  (tmp_path / "in").mkdir()
  cases = [
      ([f"--input={tmp_path}/in", f"--output={tmp_path}/out"], "no audio files under"),
      ([f"--input={tmp_path}/in", f"--output={tmp_path}/out", "--frontend=nope"],
       "Unknown front end 'nope'"),
      ([f"--input={tmp_path}/in"], "--output is required"),
      ([f"--input={tmp_path}/in", "--output=o", "--on_error=ignore"],
       "--on_error=ignore: value should be one of <skip|fail>"),
      ([f"--input={tmp_path}/in", "--output=o", "--workers=two"],
       "--workers=two: invalid literal for int()"),
      ([f"--input={tmp_path}/in", "--output=o", "--drop_silent=maybe"],
       "Non-boolean argument to boolean flag"),
      ([f"--input={tmp_path}/in", "--output=o", "--nope=1"], "Unknown command line flag 'nope'"),
      ([f"--input={tmp_path}/in", "--output=o", "stray"], "unexpected arguments ['stray']"),
  ]
  sf.write(tmp_path / "a.wav", _tone(0), SR)
  (tmp_path / "afile").write_text("x")
  cases.append(([f"--input={tmp_path}", f"--output={tmp_path}/afile"], "is a file"))
  for argv, message in cases:
    code = _exit_code(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (argv, err)
    assert message in err, (argv, err)


def _exit_code(argv) -> int:
  try:
    return cli.main(argv)
  except SystemExit as e:  # flag errors and --help
    return e.code


def test_cli_prepares(tmp_path):
  make_corpus(tmp_path / "in", bad=False)
  result = _cli("--input=in", "--output=out", "--workers=1", "--max_seconds=1", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert "prepared 11 examples from 9 inputs" in result.stderr
  assert "warnings: 4 (listed in warnings.csv)" in result.stderr
  assert json.loads((tmp_path / "out/metadata.json").read_text())["num_examples"] == 11


def test_cli_flags_reach_prepare(monkeypatch, capsys):
  """absl flags: --name=value or --name value, booleans as --x, --nox or --x=false."""
  calls = []
  monkeypatch.setattr(cli, "prepare", lambda output, **kwargs: calls.append((output, kwargs)))
  base = ["--input=in", "--output", "out"]
  for extra, drop_silent in (([], False), (["--drop_silent"], True),
                             (["--drop_silent", "--nodrop_silent"], False),
                             (["--drop_silent=false"], False), (["--drop_silent=true"], True)):
    assert cli.main(base + extra) == 0
    assert calls[-1][1]["options"].drop_silent is drop_silent, extra
  assert cli.main(["--tfds=speech_commands", "--data_dir=d", "--output=o", "--workers=3",
                   "--on_error=fail", "--max_seconds=2.5", "--min_seconds=0.5",
                   "--max_shard_mb=64", "--frontend=ajepa", "--no_progress"]) == 0
  output, kwargs = calls[-1]
  assert output == "o" and kwargs["tfds"] == ("speech_commands", "d", "train")
  assert (kwargs["input_dir"], kwargs["workers"], kwargs["on_error"], kwargs["progress"]) == (
      None, 3, "fail", False)
  assert kwargs["options"] == Options(frontend="ajepa", max_seconds=2.5, min_seconds=0.5,
                                      max_shard_mb=64.0)
  assert cli.main(["--input=in", "--output=out", "--labels=l.csv", "--split=test"]) == 0
  assert (calls[-1][1]["labels_csv"], calls[-1][1]["labels_from"], calls[-1][1]["tfds"]) == (
      "l.csv", None, None)
  assert cli.main(["--input=in", "--output=out", "--labels_from=folders"]) == 0
  assert calls[-1][1]["labels_from"] == "folders" and calls[-1][1]["workers"] is None
  with pytest.raises(SystemExit) as done:
    cli.main(["--help"])
  out = capsys.readouterr().out
  assert done.value.code == 0 and out.startswith("Any audio folder or TFDS dataset")
  for name in ("input", "output", "frontend", "labels", "labels_from", "workers", "on_error",
               "max_seconds", "min_seconds", "drop_silent", "max_shard_mb", "tfds",
               "data_dir", "split", "no_progress"):
    assert f"--{name}:" in out or f"--[no]{name}:" in out, name
