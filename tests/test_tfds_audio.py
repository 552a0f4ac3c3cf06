"""TFDS without TensorFlow: the audio-folder builder and the audio data source."""
import contextlib
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds

from data_pipelines import audio_io, tfds_audio
from tests.tiny import ROOT


@contextlib.contextmanager
def _tensorflow_not_imported():
  """TFDS imports TensorFlow lazily, when a feature or file format needs it: whether or
  not it is installed, it must not be imported here."""
  assert "tensorflow" not in sys.modules
  yield
  assert "tensorflow" not in sys.modules


def _pcm16(rng, shape):
  return rng.integers(-2**15, 2**15, shape, dtype=np.int16)


def _write_folder(root: Path) -> dict[str, tuple[np.ndarray, int, str]]:
  """A labelled folder; returns filename -> (float32 mono samples at 16 kHz, rate, label)."""
  rng = np.random.default_rng(0)
  expected = {}

  def pcm(relative, samples, rate):
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, rate, subtype="PCM_16")
    # What the file holds as float32 in [-1, 1], channels averaged (exact: halves of
    # multiples of 2^-15).
    as_float = samples.astype(np.float32) / 2**15
    label = relative.split("/")[0]
    expected[relative] = (as_float.mean(axis=1) if as_float.ndim == 2 else as_float, rate, label)

  pcm("dog/a.wav", _pcm16(rng, 1600), 16000)
  pcm("dog/puppies/b.flac", _pcm16(rng, (800, 2)), 16000)  # nested, stereo: still "dog"
  pcm("cat/c.WAV", _pcm16(rng, 700), 16000)
  floats = rng.uniform(-0.9, 0.9, 2205).astype(np.float32)
  sf.write(root / "cat" / "d.wav", floats, 22050, subtype="FLOAT")
  # Resampled as `prepare --input` would: the project's one audio reader.
  expected["cat/d.wav"] = (audio_io.load_audio(root / "cat" / "d.wav", 16000), 16000, "cat")
  assert expected["cat/d.wav"][0].shape == (1600,)
  (root / "cat" / "notes.txt").write_text("not audio")
  return expected


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  expected = _write_folder(root / "My Sounds")
  with _tensorflow_not_imported():
    name = tfds_audio.build_audio_folder(root / "My Sounds", root / "data")
  return name, root / "data", expected


def test_build_and_read_need_no_tensorflow(built):
  name, data_dir, expected = built
  assert importlib.util.find_spec("tensorflow") is None  # this environment has none
  assert name == "audio_folder/my_sounds:1.0.0"
  with _tensorflow_not_imported():
    source = tfds_audio.open_source(name, data_dir, "train")
    assert len(source) == len(expected)
    source.load(0)
  files = os.listdir(data_dir / "audio_folder" / "my_sounds" / "1.0.0")
  assert "audio_folder-train.array_record-00000-of-00001" in files


def test_source_gives_back_the_samples_rates_and_labels_written(built):
  name, data_dir, expected = built
  source = tfds_audio.open_source(name, data_dir, "train")
  seen = set()
  for i in range(len(source)):
    key = source.key(i)
    wave, rate, label = source.load(i)
    samples, expected_rate, expected_label = expected[key]
    assert wave.dtype == np.float32
    np.testing.assert_array_equal(wave, samples)
    assert (rate, label) == (expected_rate, expected_label)
    seen.add(key)
  assert seen == set(expected)


def test_source_agrees_with_tfds_data_source(built):
  name, data_dir, _ = built
  source = tfds_audio.open_source(name, data_dir, "train")
  reference = tfds.data_source(name, data_dir=str(data_dir), split="train", download=False)
  names = reference.dataset_info.features["label"].names
  assert names == ["cat", "dog"] and len(reference) == len(source)
  for i in range(len(source)):
    example = reference[i]
    wave, rate, label = source.load(i)
    np.testing.assert_array_equal(wave, example["audio"])
    assert rate == example["sample_rate"] and label == names[example["label"]]
    assert source.key(i) == example["filename"].decode()


def test_source_pickles_as_its_three_strings(built):
  name, data_dir, _ = built
  source = tfds_audio.open_source(name, data_dir, "train")
  source.load(1)
  state = source.__getstate__()
  assert state == {"name": name, "data_dir": str(data_dir), "split": "train"}
  copy = pickle.loads(pickle.dumps(source))
  assert copy._opened is None  # reopened lazily in the process that uses it
  for i in range(len(source)):
    np.testing.assert_array_equal(copy.load(i)[0], source.load(i)[0])
    assert copy.key(i) == source.key(i)


def test_split_expressions_and_versionless_names(built):
  name, data_dir, _ = built
  whole = tfds_audio.open_source("audio_folder/my_sounds", data_dir, "train")
  head = tfds_audio.open_source("audio_folder", data_dir, "train[:2]")
  tail = tfds_audio.open_source(name, data_dir, "train[2:]")
  assert (len(head), len(tail)) == (2, len(whole) - 2)
  keys = [head.key(i) for i in range(2)] + [tail.key(i) for i in range(len(tail))]
  assert keys == [whole.key(i) for i in range(len(whole))]
  with pytest.raises(IndexError, match="index 2 is outside"):
    head.load(2)


def test_unlabelled_folder(tmp_path):
  rng = np.random.default_rng(1)
  (tmp_path / "clips").mkdir()
  sf.write(tmp_path / "clips" / "x.wav", _pcm16(rng, 500), 16000, subtype="PCM_16")
  name = tfds_audio.build_audio_folder(tmp_path / "clips", tmp_path / "data", name="Loose!",
                                       sample_rate=8000)
  assert name == "audio_folder/loose:1.0.0"
  wave, rate, label = tfds_audio.open_source(name, tmp_path / "data").load(0)
  assert wave.shape == (250,) and rate == 8000 and label is None
  with pytest.raises(FileExistsError, match="loose/1.0.0 already exists; remove it"):
    tfds_audio.build_audio_folder(tmp_path / "clips", tmp_path / "data", name="loose")


def test_builder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    tfds_audio.AudioFolder(folder=tmp_path / "nowhere", data_dir=str(tmp_path / "d"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="holds no audio files"):
    tfds_audio.AudioFolder(folder=tmp_path / "empty", data_dir=str(tmp_path / "d"))
  mixed = tmp_path / "mixed"
  (mixed / "dog").mkdir(parents=True)
  for path in (mixed / "top.wav", mixed / "dog" / "a.wav"):
    sf.write(path, np.zeros(100), 16000)
  with pytest.raises(ValueError, match=r"both in sub-folders .* \(top.wav\)"):
    tfds_audio.AudioFolder(folder=mixed, data_dir=str(tmp_path / "d"))
  broken = tmp_path / "broken"
  (broken / "dog").mkdir(parents=True)
  (broken / "dog" / "bad.wav").write_bytes(b"RIFF nonsense")
  with pytest.raises(audio_io.AudioError, match=r"bad\.wav: "):
    tfds_audio.build_audio_folder(broken, tmp_path / "d")


def test_missing_dataset_names_the_folder_and_what_is_there(built, tmp_path):
  name, data_dir, _ = built
  with pytest.raises(FileNotFoundError, match=r"'speech_commands' is not prepared in .*data; "
                     r"found: audio_folder/my_sounds:1\.0\.0"):
    tfds_audio.open_source("speech_commands", data_dir, "train")
  with pytest.raises(FileNotFoundError, match="found: audio_folder/my_sounds:1.0.0"):
    tfds_audio.open_source("audio_folder/my_sounds:2.0.0", data_dir, "train")
  with pytest.raises(FileNotFoundError, match="data_dir .*nowhere does not exist"):
    tfds_audio.open_source(name, tmp_path / "nowhere", "train")
  with pytest.raises(ValueError, match="no split 'test'.*its splits: train"):
    tfds_audio.open_source(name, data_dir, "test")


def test_dataset_dirs_latest_version_and_configs(tmp_path):
  for parts in (("a", "1.0.0"), ("a", "1.10.0"), ("a", "1.2.0"), ("a", "incomplete.X_2.0.0"),
                ("b", "x", "1.0.0"), ("b", "y", "1.0.0")):
    path = tmp_path.joinpath(*parts)
    path.mkdir(parents=True)
    (path / "dataset_info.json").write_text("{}")
  assert tfds_audio.find_dataset_dir("a", tmp_path) == tmp_path / "a" / "1.10.0"
  assert tfds_audio.find_dataset_dir("a:1.2.0", tmp_path) == tmp_path / "a" / "1.2.0"
  assert tfds_audio.find_dataset_dir("b/y", tmp_path) == tmp_path / "b" / "y" / "1.0.0"
  with pytest.raises(ValueError, match="several configs of 'b': b/x, b/y"):
    tfds_audio.find_dataset_dir("b", tmp_path)


def test_to_float_waveform_full_scales():
  np.testing.assert_array_equal(
      tfds_audio.to_float_waveform(np.array([-2**15, 0, 2**14], np.int16)), [-1, 0, 0.5])
  np.testing.assert_array_equal(
      tfds_audio.to_float_waveform(np.array([0, 128, 192], np.uint8)), [-1, 0, 0.5])
  np.testing.assert_array_equal(
      tfds_audio.to_float_waveform(np.array([-2**31, 2**30], np.int32)), [-1, 0.5])
  np.testing.assert_array_equal(
      tfds_audio.to_float_waveform(np.array([-2**15, 2**14], np.int64)), [-1, 0.5])
  floats = np.array([0.25, -1.5], np.float64)
  assert tfds_audio.to_float_waveform(floats).dtype == np.float32
  np.testing.assert_array_equal(tfds_audio.to_float_waveform(floats), floats)


# A dataset shaped like the TFDS catalog's audio datasets: the waveform in an `Audio`
# feature (int16 samples, the rate declared on the feature), no filename.


class _Catalogish(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  name = "catalogish"
  VERSION = tfds.core.Version("2.0.0")

  def __init__(self, *, features: dict, examples: list, **kwargs):
    self._features, self._examples = features, examples
    super().__init__(file_format="array_record", **kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self,
                                 features=tfds.features.FeaturesDict(self._features))

  def _split_generators(self, dl_manager):
    return {"test": self._generate_examples()}

  def _generate_examples(self):
    yield from enumerate(self._examples)


def _build(data_dir: Path, features: dict, examples: list) -> Path:
  builder = _Catalogish(features=features, examples=examples, data_dir=str(data_dir))
  builder.download_and_prepare()
  return Path(builder.data_dir)


def _declare_as_audio(dataset_dir: Path, key: str, sample_rate: int) -> None:
  """Rewrites features.json as tfds.features.Audio(dtype=..., sample_rate=...) writes it
  (its samples are serialised exactly like the Tensor they were written with)."""
  path = dataset_dir / "features.json"
  features = json.loads(path.read_text())
  tensor = features["featuresDict"]["features"][key]["tensor"]
  features["featuresDict"]["features"][key] = {
      "pythonClassName": "tensorflow_datasets.core.features.audio_feature.Audio",
      "audio": {"shape": tensor["shape"], "dtype": tensor["dtype"], "fileFormat": "wav",
                "sampleRate": str(sample_rate), "encoding": tensor["encoding"]}}
  path.write_text(json.dumps(features))


def test_catalog_audio_feature_is_read_without_tensorflow(tmp_path):
  rng = np.random.default_rng(2)
  samples = [_pcm16(rng, n) for n in (300, 450, 200)]
  labels = [1, 0, 1]
  features = {"audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
              "label": tfds.features.ClassLabel(names=["no", "yes"]),
              "speaker_id": tfds.features.Text()}
  dataset_dir = _build(tmp_path, features, [
      {"audio": s, "label": y, "speaker_id": f"spk{i}"}
      for i, (s, y) in enumerate(zip(samples, labels))])
  _declare_as_audio(dataset_dir, "audio", 16000)
  # What tfds itself does here without TensorFlow: the Audio connector imports it.
  with pytest.raises(ModuleNotFoundError, match="tensorflow"):
    tfds.data_source("catalogish", data_dir=str(tmp_path), split="test", download=False)
  source = tfds_audio.open_source("catalogish", tmp_path, "test")
  got = {}
  for i in range(len(source)):
    wave, rate, label = source.load(i)
    assert rate == 16000 and source.key(i) == f"test/{i}"
    got[wave.size] = (wave, label)
  for s, y in zip(samples, labels):
    wave, label = got[s.size]
    np.testing.assert_array_equal(wave, s / 2**15)
    assert label == ["no", "yes"][y]


def test_audio_feature_is_found_by_shape_and_rate_is_required(tmp_path):
  one = {"signal": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
         "sample_rate": tfds.features.Scalar(dtype=np.int64),
         "label": tfds.features.Text()}
  _build(tmp_path / "one", one, [{"signal": np.full((5, 2), 0.5, np.float32),
                                  "sample_rate": 44100, "label": "rain"}])
  wave, rate, label = tfds_audio.open_source("catalogish", tmp_path / "one", "test").load(0)
  assert wave.shape == (5, 2) and rate == 44100 and label == "rain"

  two = {"left": tfds.features.Tensor(shape=(None,), dtype=np.float32),
         "right": tfds.features.Tensor(shape=(None,), dtype=np.float32)}
  _build(tmp_path / "two", two, [{"left": np.zeros(3, np.float32),
                                  "right": np.zeros(3, np.float32)}])
  with pytest.raises(ValueError, match=r"cannot tell which feature holds the audio \(left: "
                     r"Tensor float32 \(None,\), right: "):
    tfds_audio.open_source("catalogish", tmp_path / "two", "test")

  no_rate = {"audio": tfds.features.Tensor(shape=(None,), dtype=np.int16)}
  _build(tmp_path / "no_rate", no_rate, [{"audio": np.zeros(3, np.int16)}])
  with pytest.raises(ValueError, match="no sample rate for feature 'audio'"):
    tfds_audio.open_source("catalogish", tmp_path / "no_rate", "test")


def test_int64_audio_beyond_16_bits_is_refused(tmp_path):
  features = {"audio": tfds.features.Tensor(shape=(None,), dtype=np.int64)}
  dataset_dir = _build(tmp_path, features, [{"audio": np.array([0, 2**20], np.int64)}])
  _declare_as_audio(dataset_dir, "audio", 16000)
  with pytest.raises(ValueError, match="int64 audio beyond the 16-bit range"):
    tfds_audio.open_source("catalogish", tmp_path, "test").load(0)


def _damaged_copy(data_dir: Path, copy: Path, filename: str, change) -> Path:
  shutil.copytree(data_dir / "audio_folder", copy / "audio_folder")
  path = copy / "audio_folder" / "my_sounds" / "1.0.0" / filename
  path.write_text(change(path.read_text()))
  return copy


def test_tfrecord_and_damaged_datasets_are_refused_clearly(built, tmp_path):
  name, data_dir, _ = built
  tfrecord = _damaged_copy(data_dir, tmp_path / "tfrecord", "dataset_info.json",
                           lambda text: text.replace('"array_record"', '"tfrecord"'))
  with pytest.raises(ValueError, match="stored as tfrecord; random access needs array_record"):
    tfds_audio.open_source(name, tfrecord, "train")
  for filename in ("dataset_info.json", "features.json"):
    broken = _damaged_copy(data_dir, tmp_path / filename, filename, lambda text: text[:40])
    with pytest.raises(ValueError, match=f"{filename} is corrupt .*; prepare the dataset"):
      tfds_audio.open_source(name, broken, "train")


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "data_pipelines.tfds_audio", *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli(built, tmp_path):
  folder = tmp_path / "birds"
  (folder / "owl").mkdir(parents=True)
  sf.write(folder / "owl" / "hoot.wav", np.zeros(160), 16000)
  done = _cli(f"--input={folder}", f"--output={tmp_path / 'data'}")
  assert done.returncode == 0, done.stderr
  assert "built TFDS dataset audio_folder/birds:1.0.0" in done.stdout
  assert tfds_audio.open_source("audio_folder/birds", tmp_path / "data").load(0)[2] == "owl"
  bad = _cli(f"--input={tmp_path / 'nowhere'}", f"--output={tmp_path / 'data'}")
  assert bad.returncode == 2 and bad.stderr.strip().startswith("error: audio folder")
  assert "Traceback" not in bad.stderr
  assert _cli().returncode == 2
  flag = _cli(f"--input={folder}", f"--output={tmp_path / 'other'}", "--sample_rate=fast")
  assert flag.returncode == 2 and flag.stderr.count("\n") == 1
  assert flag.stderr.startswith("error: bad command line: flag --sample_rate=fast: invalid literal")
  usage = _cli("--help")
  assert usage.returncode == 0 and "--sample_rate: rate every file is resampled to" in usage.stdout
