"""`AudioFolder`: a local audio folder as a TFDS dataset, written without TensorFlow (see
the data_pipelines.tfds_audio package's docstring for what each example holds)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipelines import audio_io
from data_pipelines.tfds_audio.source import FILE_FORMAT

BUILDER_NAME = "audio_folder"


def audio_files(folder: Path) -> list[Path]:
  """Audio files under `folder`, sorted by their path relative to it."""
  return sorted((p for p in folder.rglob("*")
                 if p.suffix.lower() in audio_io.AUDIO_EXTENSIONS and p.is_file()),
                key=lambda p: p.relative_to(folder).as_posix())


def folder_labels(folder: Path, files: list[Path]) -> list[str] | None:
  """Sorted sub-folder names, or None when every file is at the top (unlabelled)."""
  tops = [f.relative_to(folder).parts for f in files]
  at_top = [f for f, parts in zip(files, tops) if len(parts) == 1]
  if len(at_top) == len(files):
    return None
  if at_top:
    shown = ", ".join(f.name for f in at_top[:5])
    raise ValueError(
        f"{folder}: audio files lie both in sub-folders (labels) and at the top level "
        f"({shown}); move the top-level files into a sub-folder named after their label.")
  return sorted({parts[0] for parts in tops})


def config_name(text: str) -> str:
  """A TFDS config name from free text (a folder name): lower case, [a-z0-9_]."""
  name = re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")
  return name or "default"


@dataclasses.dataclass(eq=False)
class AudioFolderConfig(tfds.core.BuilderConfig):
  folder: str = ""
  sample_rate: int = 16000


class AudioFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A local audio folder as a TFDS dataset named `audio_folder/<config name>`, one split
  `train`. Not registered: readers need only the files (see `open_source`)."""

  name = BUILDER_NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Mono float32 audio at one sample rate."}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10 finds a packaged builder's file through `importlib_resources`, which it
    # installs only for Python < 3.9 (tensorflow/datasets#11212); this is what it finds.
    return epath.Path(__file__)

  def __init__(self, *, folder: str | Path, name: str | None = None,
               sample_rate: int = 16000, **kwargs):
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
      raise FileNotFoundError(f"audio folder {folder} does not exist or is not a folder.")
    if sample_rate < 1:
      raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}.")
    self._files = audio_files(folder)
    if not self._files:
      raise ValueError(f"{folder} holds no audio files (looked for "
                       f"{', '.join(audio_io.AUDIO_EXTENSIONS)} in it and its sub-folders).")
    self._labels = folder_labels(folder, self._files)
    kwargs.setdefault("file_format", FILE_FORMAT)
    config = AudioFolderConfig(name=config_name(name or folder.name), folder=str(folder),
                               sample_rate=int(sample_rate))
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
        # BYTES: the waveform is stored as raw bytes, not a protobuf float list (faster).
        "audio": tfds.features.Tensor(shape=(None,), dtype=np.float32,
                                      encoding=tfds.features.Encoding.BYTES),
        "sample_rate": tfds.features.Scalar(dtype=np.int32),
        "filename": tfds.features.Text(),
    }
    if self._labels is not None:
      features["label"] = tfds.features.ClassLabel(names=self._labels)
    return tfds.core.DatasetInfo(
        builder=self, description=f"Audio files of {self.builder_config.folder}.",
        features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    folder, rate = Path(self.builder_config.folder), self.builder_config.sample_rate
    for path in self._files:
      relative = path.relative_to(folder).as_posix()
      wave = audio_io.load_audio(path, rate)  # AudioError names the file and the reason
      example = {"audio": wave, "sample_rate": rate, "filename": relative}
      if self._labels is not None:
        example["label"] = relative.split("/")[0]
      yield relative, example


def build_audio_folder(folder: str | Path, data_dir: str | Path, name: str | None = None,
                       sample_rate: int = 16000) -> str:
  """Builds the TFDS dataset of `folder` in `data_dir`; returns the name to read it by,
  `audio_folder/<name>:<version>` (name defaults to the folder's name)."""
  builder = AudioFolder(folder=folder, name=name, sample_rate=sample_rate,
                        data_dir=str(data_dir))
  if Path(builder.data_dir).exists():  # TFDS would silently keep it, stale or not
    raise FileExistsError(f"{builder.data_dir} already exists; remove it to rebuild, or "
                          f"choose another name.")
  builder.download_and_prepare()
  return f"{builder.name}/{builder.builder_config.name}:{builder.version}"
