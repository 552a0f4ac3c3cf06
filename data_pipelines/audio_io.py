"""Reading and writing audio files: float32 mono waveforms in [-1, 1].

`AudioReader` opens one file, checks it and yields it as mono segments at the target
rate. Every way a file can be unusable raises `AudioError(path, reason)`; every fix it
applies (downmix, resampling, splitting) is a line in `reader.warnings`, and after the
last segment `reader.silent` says whether the whole clip stayed below `SILENCE_DBFS`.
"""
from __future__ import annotations

import codecs
import math
import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

# A clip is silent when no prepared sample reaches -90 dBFS: for 16-bit PCM, no sample
# beyond +-1 LSB (1 / 32768 is -90.3 dBFS).
SILENCE_DBFS = -90.0
SILENT_PEAK = 10.0 ** (SILENCE_DBFS / 20)
LIBSNDFILE_EXTENSIONS = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif",
                         ".aiff")
FFMPEG_EXTENSIONS = (".m4a", ".aac")  # libsndfile has no AAC decoder
AUDIO_EXTENSIONS = LIBSNDFILE_EXTENSIONS + FFMPEG_EXTENSIONS
# MP3 headers without an exact length give one estimated from the file size, which ID3
# tags can push an MPEG frame or two past the real end; shorter than that is truncation.
_SHORTFALL_FRAMES = 2 * 1152
# libsndfile's log line for a WAV `data` / AIFF `SSND` chunk cut short by the file's end.
_CUT_CHUNK = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_SIZE_PLACEHOLDERS = (0xFFFFFFFF, 0x7FFFFFFF)  # streamed WAVs: "size unknown", not a cut
_AUDIO_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"FORM", b"fLaC", b"OggS", b"ID3", b"riff", b"caff")
_MAGIC = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"),
          (b"GIF8", "a GIF image"), (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP file"))


class AudioError(ValueError):
  """A file that cannot be used as audio; says which file and why."""

  def __init__(self, path: str | Path, reason: str):
    self.path = Path(path)
    self.reason = reason
    super().__init__(f"{self.path}: {reason}")


def check_file(path: str | Path) -> None:
  """Raises AudioError unless `path` is a non-empty regular file this process can read."""
  path = Path(path)
  if path.is_symlink() and not path.exists():
    raise AudioError(path, f"broken symbolic link (its target {os.readlink(path)} does not "
                           f"exist)")
  try:
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
      raise AudioError(path, "not a regular file")
    with open(path, "rb") as f:  # os.access would say yes to root for any file
      f.read(1)
  except FileNotFoundError:
    raise AudioError(path, "no such file") from None
  except OSError as e:
    raise AudioError(path, f"unreadable ({(e.strerror or str(e)).lower()})") from None
  if info.st_size == 0:
    raise AudioError(path, "empty file (0 bytes)")


def _what_it_is(path: Path) -> str | None:
  """What a file libsndfile rejects looks like, from its first bytes, when it is a common
  non-audio kind; None otherwise."""
  with open(path, "rb") as f:
    head = f.read(512)
  for magic, name in _MAGIC:
    if head.startswith(magic):
      return name
  if head.startswith(_AUDIO_MAGIC):  # a damaged audio file, however printable
    return None
  try:  # incremental: a character cut at the 512-byte edge is not an error
    text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
  except UnicodeDecodeError:
    return None
  return "text" if all(c.isprintable() or c in "\r\n\t" for c in text) else None


def _libsndfile_reason(e: sf.SoundFileError) -> str:
  message = getattr(e, "error_string", None) or str(e)
  return re.sub(r"^Error\s*:\s*", "", message.strip()).rstrip(".")


def _open_soundfile(path: Path) -> sf.SoundFile:
  try:
    f = sf.SoundFile(path)
  except sf.SoundFileError as e:
    message, looks_like = _libsndfile_reason(e), _what_it_is(path)
    if looks_like:
      raise AudioError(path, f"not an audio file (the content looks like {looks_like})") from None
    if "not recognised" in message:
      raise AudioError(path, "not an audio file (libsndfile does not recognise the format)"
                       ) from None
    raise AudioError(path, f"corrupt audio (libsndfile: {message})") from None
  for _, declared, present in _CUT_CHUNK.findall(f.extra_info):
    if int(present) < int(declared) and int(declared) not in _SIZE_PLACEHOLDERS:
      f.close()
      raise AudioError(path, f"truncated (the header promises {declared} bytes of audio "
                             f"data, the file holds {present})")
  return f


def _decode_with_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
  """Whole file -> (frames, channels) float32 and its rate, through audioread + ffmpeg."""
  if shutil.which("ffmpeg") is None:
    raise AudioError(path, f"cannot decode {path.suffix} files: libsndfile does not read "
                           f"them and ffmpeg is not installed (install ffmpeg, e.g. apt-get "
                           f"install ffmpeg, to include them)")
  from audioread import exceptions, ffdec  # lazy: only for files libsndfile cannot read
  try:
    with ffdec.FFmpegAudioFile(str(path)) as f:
      rate, channels = f.samplerate, f.channels
      pcm = b"".join(f.read_data())
  except exceptions.DecodeError as e:
    raise AudioError(path, f"corrupt or unsupported audio (ffmpeg: {e})") from None
  if rate <= 0 or channels <= 0:
    raise AudioError(path, "corrupt or unsupported audio (ffmpeg found no audio stream)")
  samples = np.frombuffer(pcm[:len(pcm) // (2 * channels) * 2 * channels], "<i2")
  return (samples.reshape(-1, channels) / np.float32(32768)).astype(np.float32), rate


def _as_frames(name: Path, samples: np.ndarray, rate) -> tuple[np.ndarray, int]:
  """Decoded samples from elsewhere (e.g. TFDS) -> (frames, channels) float32, checked."""
  samples = np.asarray(samples)
  if samples.ndim not in (1, 2) or not (np.issubdtype(samples.dtype, np.floating)
                                        or np.issubdtype(samples.dtype, np.signedinteger)):
    raise AudioError(name, f"not a waveform (array of {samples.dtype} with shape "
                           f"{samples.shape}; expected (samples,) or (samples, channels))")
  if not isinstance(rate, (int, np.integer)) or rate <= 0:
    raise AudioError(name, f"no usable sample rate ({rate!r})")
  if np.issubdtype(samples.dtype, np.signedinteger):  # PCM integers: full scale is 1.0
    samples = samples / np.float32(2 ** (8 * samples.dtype.itemsize - 1))
  frames = samples.reshape(len(samples), -1).astype(np.float32, copy=False)
  return frames, int(rate)


def segment_bounds(frames: int, rate: int, max_seconds: float | None) -> list[tuple[int, int]]:
  """[start, stop) frame ranges splitting `frames` into the fewest near-equal segments of
  at most max_seconds (one segment when max_seconds is None or 0)."""
  longest = int(max_seconds * rate) if max_seconds else frames
  count = max(1, math.ceil(frames / max(longest, 1)))
  edges = [round(i * frames / count) for i in range(count + 1)]
  return list(zip(edges[:-1], edges[1:]))


class AudioReader:
  """One audio file: opened and checked on construction, read by `segments()`."""

  def __init__(self, path: str | Path, sample_rate: int, max_seconds: float | None = None, *,
               samples: np.ndarray | None = None, samples_rate: int | None = None):
    """Opens `path`, or takes already decoded `samples` ((frames,) or (frames, channels))
    at `samples_rate`, with `path` naming them in errors."""
    self.path = Path(path)
    self.sample_rate = sample_rate
    self._file, self._decoded = None, None
    if samples is not None:
      self._decoded, self.source_rate = _as_frames(self.path, samples, samples_rate)
    elif self.path.suffix.lower() in FFMPEG_EXTENSIONS:
      check_file(self.path)
      self._decoded, self.source_rate = _decode_with_ffmpeg(self.path)
    else:
      check_file(self.path)
      self._file = _open_soundfile(self.path)
      self.source_rate = self._file.samplerate
    if self._file is not None:
      self.frames, self.channels = self._file.frames, self._file.channels
    else:
      self.frames, self.channels = self._decoded.shape
    if self.frames == 0:
      self.close()
      raise AudioError(self.path, "no audio frames (the header says the file holds 0 samples)")
    self.bounds = segment_bounds(self.frames, self.source_rate, max_seconds)
    self.warnings = []
    if self.channels > 1:
      self.warnings.append(f"{self.channels} channels: downmixed to mono")
    if self.source_rate != sample_rate:
      self.warnings.append(f"sample rate {self.source_rate} Hz: resampled to {sample_rate} Hz")
    if len(self.bounds) > 1:
      self.warnings.append(
          f"{self.frames / self.source_rate:.1f} s long: split into {len(self.bounds)} "
          f"segments of at most {max_seconds:g} s")
    self.peak = 0.0

  @property
  def silent(self) -> bool:
    """Whether every sample read so far is below SILENCE_DBFS."""
    return self.peak < SILENT_PEAK

  def _read(self, count: int, start: int) -> np.ndarray:
    if self._decoded is not None:
      return self._decoded[start:start + count]
    # 16-bit files are read as int16 and scaled here: libsndfile's own conversion to float
    # takes 4x longer, for the same values (x / 2**15 is exact either way).
    dtype = "int16" if self._file.subtype == "PCM_16" else "float32"
    try:
      return self._file.read(count, dtype=dtype, always_2d=True)
    except sf.SoundFileError as e:
      raise AudioError(self.path, f"corrupt or truncated audio (libsndfile: "
                                  f"{_libsndfile_reason(e)})") from None

  def _prepare(self, block: np.ndarray) -> np.ndarray:
    """(frames, channels) at the file's rate -> mono float32 at sample_rate in [-1, 1]."""
    if block.shape[1] == 1:
      wave = block[:, 0].astype(np.float32)
    else:
      wave = block.mean(axis=1, dtype=np.float32)
    if block.dtype == np.int16:
      wave *= np.float32(2.0**-15)
    hi, lo = float(wave.max()), float(wave.min())
    if not (math.isfinite(hi) and math.isfinite(lo)):  # NaN and inf propagate to max/min
      raise AudioError(self.path, "contains NaN or inf samples")
    if self.source_rate != self.sample_rate:
      wave = librosa.resample(wave, orig_sr=self.source_rate, target_sr=self.sample_rate,
                              res_type="soxr_hq")
      hi, lo = float(wave.max()), float(wave.min())
    peak = max(hi, -lo)
    self.peak = max(self.peak, peak)
    if peak > 1.0:  # float files and resampling ringing can step outside [-1, 1]
      wave = np.clip(wave, -1.0, 1.0)
    return np.ascontiguousarray(wave, dtype=np.float32)

  def segments(self) -> Iterator[np.ndarray]:
    """Yields the segments in order; raises AudioError if the file turns out truncated or
    corrupt part-way, so use what was yielded only once the iteration has finished."""
    read = 0
    for start, stop in self.bounds:
      block = self._read(stop - start, start)
      read += len(block)
      if len(block):
        yield self._prepare(block)
      if len(block) < stop - start:
        break
    if read == 0 or self.frames - read > _SHORTFALL_FRAMES:
      raise AudioError(self.path, f"truncated (the header promises {self.frames} samples, "
                                  f"only {read} decode)")

  def close(self) -> None:
    if self._file is not None:
      self._file.close()

  def __enter__(self) -> AudioReader:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
  """Decodes `path` to float32 mono at `sample_rate`: channels averaged, soxr resampling."""
  with AudioReader(path, sample_rate) as reader:
    segments = list(reader.segments())
  return segments[0] if len(segments) == 1 else np.concatenate(segments)


def write_wav(path: str | Path, wave: np.ndarray, sample_rate: int) -> None:
  """Writes a mono waveform as 16-bit PCM WAV (soundfile clips it to [-1, 1])."""
  wave = np.asarray(wave)
  if wave.ndim != 1:
    raise ValueError(f"{path}: write_wav takes a mono 1-D waveform, got shape {wave.shape}.")
  if not np.all(np.isfinite(wave)):
    raise ValueError(f"{path}: waveform contains NaN or inf samples.")
  sf.write(path, wave, sample_rate, subtype="PCM_16", format="WAV")
