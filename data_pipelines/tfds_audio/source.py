"""Random access to one split of any TFDS audio dataset prepared in the ArrayRecord format,
TensorFlow or not: `open_source(name, data_dir, split)` (see the data_pipelines.tfds_audio
package's docstring for why TFDS's own data_source cannot)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_data_source
from google.protobuf import json_format
from tensorflow_datasets.core import dataset_info
from tensorflow_datasets.core.proto import feature_pb2

FILE_FORMAT = "array_record"
_AUDIO_CLASS = "tensorflow_datasets.core.features.audio_feature.Audio"
_TENSOR_CLASS = "tensorflow_datasets.core.features.tensor_feature.Tensor"
_VERSION = re.compile(r"\d+\.\d+\.\d+")
# Integer samples -> [-1, 1]: (offset, scale). TFDS's `Audio` defaults to int64 but fills it
# with the file's 16-bit samples, so int64 is read as 16-bit and checked (TfdsAudioSource.load).
_INTEGER_SCALES = {np.dtype(np.uint8): (128.0, 128.0), np.dtype(np.int8): (0.0, 2.0**7),
                   np.dtype(np.int16): (0.0, 2.0**15), np.dtype(np.int32): (0.0, 2.0**31),
                   np.dtype(np.int64): (0.0, 2.0**15)}


def _version_key(version: str) -> tuple[int, ...]:
  return tuple(int(part) for part in version.split("."))


def available_datasets(data_dir: Path) -> dict[str, Path]:
  """`dataset[/config]:version` -> its directory, for every prepared dataset in data_dir."""
  found = {}
  for info in sorted(data_dir.glob("*/*/dataset_info.json")) + sorted(
      data_dir.glob("*/*/*/dataset_info.json")):
    version_dir = info.parent
    if not _VERSION.fullmatch(version_dir.name):
      continue  # e.g. an `incomplete.*` directory of an interrupted build
    parts = version_dir.relative_to(data_dir).parts
    found[f"{'/'.join(parts[:-1])}:{parts[-1]}"] = version_dir
  return found


def find_dataset_dir(name: str, data_dir: str | Path) -> Path:
  """The directory of `dataset[/config][:version]` (latest version when none is given)."""
  data_dir = Path(data_dir).expanduser()
  if not data_dir.is_dir():
    raise FileNotFoundError(f"TFDS data_dir {data_dir} does not exist.")
  found = available_datasets(data_dir)
  requested, _, version = name.partition(":")
  matches = {k: v for k, v in found.items()
             if k.rsplit(":", 1)[0] == requested or k.split("/")[0] == requested}
  if version:
    matches = {k: v for k, v in matches.items() if k.rsplit(":", 1)[1] == version}
  names = {k.rsplit(":", 1)[0] for k in matches}
  if not matches:
    raise FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared in {data_dir}; found: "
        f"{', '.join(found) or 'nothing'}. Prepare it there (in the {FILE_FORMAT} format) or "
        f"pass another data_dir.")
  if len(names) > 1:
    raise ValueError(f"{data_dir} holds several configs of {requested!r}: "
                     f"{', '.join(sorted(names))}; name one as dataset/config.")
  return matches[max(matches, key=lambda k: _version_key(k.rsplit(":", 1)[1]))]


def _numeric_features(proto: feature_pb2.Feature, rates: dict[str, int], where: Path
                      ) -> feature_pb2.Feature:
  """The top-level features with every `Audio` replaced by the `Tensor` it stores (the
  Audio connector needs TensorFlow); their sample rates go into `rates`."""
  proto = feature_pb2.Feature.FromString(proto.SerializeToString())
  for key, feature in proto.features_dict.features.items():
    if feature.python_class_name != _AUDIO_CLASS:
      continue
    audio = feature.audio
    if audio.lazy_decode:
      raise ValueError(f"{where}: feature {key!r} stores encoded audio files "
                       f"(Audio(lazy_decode=True)), not samples; prepare the dataset "
                       f"without lazy_decode.")
    rates[key] = int(audio.sample_rate)
    feature.CopyFrom(feature_pb2.Feature(
        python_class_name=_TENSOR_CLASS, description=feature.description,
        tensor=feature_pb2.TensorFeature(shape=audio.shape, dtype=audio.dtype,
                                         encoding=audio.encoding or "none")))
  return proto


def _load_features(dataset_dir: Path) -> tuple[tfds.features.FeaturesDict, dict[str, int]]:
  path = dataset_dir / "features.json"
  if not path.is_file():
    raise FileNotFoundError(f"{dataset_dir} has no features.json; the dataset was made by a "
                            f"TFDS older than 4.0 or is damaged: prepare it again.")
  try:
    proto = json_format.Parse(path.read_text(), feature_pb2.Feature())
  except json_format.ParseError as e:
    raise ValueError(f"{path} is corrupt ({e}); prepare the dataset again.") from e
  if not proto.HasField("features_dict"):
    raise ValueError(f"{path}: the examples are not a dict of features; expected an audio "
                     f"feature among named features.")
  rates: dict[str, int] = {}
  features = tfds.features.FeatureConnector.from_proto(_numeric_features(proto, rates, path))
  features.load_metadata(dataset_dir, feature_name=None)  # class names
  return features, rates


def _is_numeric_waveform(feature) -> bool:
  return (isinstance(feature, tfds.features.Tensor) and len(feature.shape) in (1, 2)
          and np.dtype(feature.np_dtype).kind in "uif")


def _describe(feature) -> str:
  if isinstance(feature, tfds.features.Tensor):
    return f"{type(feature).__name__} {np.dtype(feature.np_dtype)} {feature.shape}"
  return type(feature).__name__


def _audio_key(features: tfds.features.FeaturesDict, where: Path) -> str:
  if "audio" in features:
    candidates = ["audio"]
  else:
    candidates = [k for k, f in features.items() if _is_numeric_waveform(f)]
  if len(candidates) != 1:
    listed = ", ".join(f"{k}: {_describe(f)}" for k, f in sorted(features.items()))
    raise ValueError(
        f"{where}: cannot tell which feature holds the audio ({listed}); expected a feature "
        f"named 'audio' or exactly one 1-D or 2-D numeric tensor.")
  key = candidates[0]
  if not _is_numeric_waveform(features[key]):
    raise ValueError(f"{where}: feature 'audio' is {features[key]!r}, not a numeric "
                     f"(samples,) or (samples, channels) tensor.")
  if np.dtype(features[key].np_dtype).kind in "ui" and (
      np.dtype(features[key].np_dtype) not in _INTEGER_SCALES):
    raise ValueError(f"{where}: audio samples of type {features[key].np_dtype} are not "
                     f"supported; use float32 or 8/16/32-bit integers.")
  return key


def _is_scalar_integer(features: tfds.features.FeaturesDict, key: str) -> bool:
  feature = features[key] if key in features else None
  return (isinstance(feature, tfds.features.Tensor) and feature.shape == ()
          and np.dtype(feature.np_dtype).kind in "ui")


def _label_names(features: tfds.features.FeaturesDict, where: Path) -> list[str] | None:
  """Class names of a ClassLabel `label`, [] for a Text label, None when there is none."""
  if "label" not in features:
    return None
  label = features["label"]
  if isinstance(label, tfds.features.ClassLabel):
    return list(label.names)
  if isinstance(label, tfds.features.Text):
    return []
  raise ValueError(f"{where}: feature 'label' is {label!r}; only a ClassLabel or Text "
                   f"label can be read.")


def to_float_waveform(samples: np.ndarray) -> np.ndarray:
  """Stored samples -> float32 in [-1, 1] (integers scaled by their type's full scale)."""
  samples = np.asarray(samples)
  if samples.dtype.kind == "f":
    return samples.astype(np.float32)
  offset, scale = _INTEGER_SCALES[samples.dtype]
  return ((samples.astype(np.float64) - offset) / scale).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Opened:
  records: object  # array_record ArrayRecordDataSource over the split's files
  features: tfds.features.FeaturesDict
  audio_key: str
  rate_key: str | None  # a per-example sample_rate feature, if there is one
  fixed_rate: int | None  # else the rate an Audio feature declares
  label_names: list[str] | None
  has_filename: bool


class TfdsAudioSource:
  """Random access to one split of a prepared TFDS audio dataset.

  Pickles as its three strings and reopens the files on first use in each process, so it
  can go to Grain workers. `load(i)` -> (float32 (samples,) or (samples, channels) in
  [-1, 1], sample rate, label name or None); `key(i)` the example's `filename` feature, or
  `split/i` when it has none.
  """

  def __init__(self, name: str, data_dir: str | Path, split: str):
    self.name, self.data_dir, self.split = str(name), str(data_dir), str(split)
    self._opened: _Opened | None = None
    self._last: tuple[int, dict] | None = None
    self._open()  # errors now, in the process that asked, not later in a worker

  def __getstate__(self) -> dict:
    return {"name": self.name, "data_dir": self.data_dir, "split": self.split}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state, _opened=None, _last=None)

  def __repr__(self) -> str:
    return f"TfdsAudioSource({self.name!r}, {self.data_dir!r}, {self.split!r})"

  def _open(self) -> _Opened:
    if self._opened is None:
      self._opened = _open_split(self.name, self.data_dir, self.split)
    return self._opened

  def __len__(self) -> int:
    return len(self._open().records)

  @property
  def label_names(self) -> list[str] | None:
    """The ClassLabel names of the `label` feature; None for text labels or none."""
    return self._open().label_names or None

  def _example(self, index: int) -> dict:
    if not 0 <= index < len(self):
      raise IndexError(f"{self!r} has {len(self)} examples; index {index} is outside.")
    if self._last is None or self._last[0] != index:  # key(i) then load(i) decodes once
      opened = self._open()
      self._last = (index, opened.features.deserialize_example_np(opened.records[index]))
    return self._last[1]

  def key(self, index: int) -> str:
    if self._open().has_filename:
      return _text(self._example(index)["filename"])
    return f"{self.split}/{index}"

  def load(self, index: int) -> tuple[np.ndarray, int, str | None]:
    opened, example = self._open(), self._example(index)
    samples = np.asarray(example[opened.audio_key])
    if samples.dtype == np.int64 and samples.size and np.abs(samples).max() > 2**15:
      raise ValueError(f"{self!r} example {index}: int64 audio beyond the 16-bit range; "
                       f"its sample width is unknown, so it cannot be scaled to [-1, 1].")
    rate = int(example[opened.rate_key]) if opened.rate_key else opened.fixed_rate
    label = None
    if opened.label_names is not None:
      value = example["label"]
      label = _text(value) if not opened.label_names else opened.label_names[int(value)]
    return to_float_waveform(samples), rate, label


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _open_split(name: str, data_dir: str, split: str) -> _Opened:
  dataset_dir = find_dataset_dir(name, data_dir)
  try:
    info = dataset_info.read_proto_from_builder_dir(dataset_dir)
  except json_format.ParseError as e:
    raise ValueError(f"{dataset_dir}/dataset_info.json is corrupt ({e}); prepare the "
                     f"dataset again.") from e
  formats = dataset_info.available_file_formats(info)
  if FILE_FORMAT not in formats:
    raise ValueError(
        f"{dataset_dir} is stored as {', '.join(sorted(formats)) or 'an unknown format'}; "
        f"random access needs {FILE_FORMAT}: prepare it with file_format='{FILE_FORMAT}' "
        f"(`tfds build --file_format={FILE_FORMAT}`), or convert it with "
        f"`tfds convert_format`.")
  splits = dataset_info.get_split_dict_from_proto(info, dataset_dir, FILE_FORMAT)
  try:
    instructions = splits[split].file_instructions
  except (KeyError, ValueError, AssertionError) as e:
    raise ValueError(f"{dataset_dir} has no split {split!r} ({e}); its splits: "
                     f"{', '.join(splits)}.") from e
  features, rates = _load_features(dataset_dir)
  audio_key = _audio_key(features, dataset_dir)
  rate_key = "sample_rate" if _is_scalar_integer(features, "sample_rate") else None
  fixed_rate = rates.get(audio_key) or None
  if rate_key is None and fixed_rate is None:
    raise ValueError(
        f"{dataset_dir}: no sample rate for feature {audio_key!r}; expected an integer "
        f"'sample_rate' feature or an Audio feature with sample_rate set.")
  return _Opened(
      records=array_record_data_source.ArrayRecordDataSource(instructions),
      features=features, audio_key=audio_key, rate_key=rate_key, fixed_rate=fixed_rate,
      label_names=_label_names(features, dataset_dir),
      has_filename="filename" in features and isinstance(features["filename"], tfds.features.Text))


def open_source(name: str, data_dir: str | Path, split: str = "train") -> TfdsAudioSource:
  """One split (any TFDS split expression, e.g. 'train[:10%]') of `dataset[/config]
  [:version]` prepared in data_dir; see TfdsAudioSource."""
  return TfdsAudioSource(name, data_dir, split)
