"""The real-audio benchmark's logic on generated data (no Debian packages needed): grouped
folds, merged groups, the task-folder writer, the MIDI and SoundFont readers' formats, and
the baseline features against hand computations."""
import struct

import numpy as np
import pytest

from benchmarks.real_audio import baselines, features, folds, midi, soundfont, sources
from benchmarks.real_audio.task_clips import Clip, Task, write_task
from data_pipelines import tasks as tasks_lib

# --- folds ---------------------------------------------------------------------------------

def test_grouped_folds_never_split_a_group_and_balance_classes():
  rng = np.random.default_rng(0)
  # 40 groups nested in 4 classes (a program in an instrument family), sizes 3..12.
  groups, labels = [], []
  for g in range(40):
    groups += [f"g{g}"] * int(rng.integers(3, 13))
    labels += [f"c{g % 4}"] * (len(groups) - len(labels))
  fold = folds.grouped_folds(labels, groups)
  for g in set(groups):
    assert len({f for f, gg in zip(fold, groups) if gg == g}) == 1, g
  assert set(fold) == set(range(5))
  for c in set(labels):  # every fold sees every class
    counts = [sum(1 for f, lab in zip(fold, labels) if f == k and lab == c) for k in range(5)]
    assert min(counts) > 0, (c, counts)


def test_grouped_folds_with_groups_spanning_classes():
  # A prompt recorded in several languages: the group spans classes; 5 groups -> 5 folds.
  groups = [p for p in "abcde" for _ in range(3)]
  labels = ["en", "fr", "it"] * 5
  fold = folds.grouped_folds(labels, groups)
  assert sorted(set(fold)) == [0, 1, 2, 3, 4]
  assert all(fold[i] == fold[i - i % 3] for i in range(15))


def test_grouped_folds_refuses_too_few_groups():
  with pytest.raises(ValueError, match="4 group"):
    folds.grouped_folds(list("aaaa"), list("wxyz"))


def test_merged_groups_joins_groups_sharing_a_recording():
  merged = folds.merged_groups({"A": {1, 2}, "B": {3}, "C": {2, 4}, "D": {4}, "E": set()})
  assert merged == {"A": "A", "B": "B", "C": "A", "D": "A", "E": "E"}


def test_write_task_is_a_basic_task_folder_with_grouped_folds(tmp_path):
  rng = np.random.default_rng(1)
  wave = lambda: rng.standard_normal(8000).astype(np.float32) * 0.1  # noqa: E731
  clips = tuple(Clip(f"t/{g}_{i}", wave(), f"class{i % 2}", f"group{g}")
                for g in range(6) for i in range(4))
  written = {}
  summary = write_task(Task("toy", 0.25, "toy task", clips), tmp_path / "toy", written, 0)
  task = tasks_lib.read_task(tmp_path / "toy")
  assert (tmp_path / "toy" / "meta.csv").read_text().splitlines()[0] == "filename,label,fold"
  assert (tmp_path / "toy" / "task.json").read_text().strip() == '{"unit_sec": 0.25}'
  assert task.extra == () and len(task.rows) == 24 and summary["groups"] == 6
  fold_of_group = {}
  for clip, row in zip(clips, task.rows):
    assert fold_of_group.setdefault(clip.group, row.fold) == row.fold
  assert len(set(fold_of_group.values())) == 5
  import soundfile as sf
  assert sf.info(str(task.rows[0].path)).frames == 4000  # cut to unit_sec
  # A second task naming the same clips links the files instead of writing them again.
  write_task(Task("toy2", 0.25, "", clips), tmp_path / "toy2", written, 0)
  again = tasks_lib.read_task(tmp_path / "toy2")
  assert again.rows[0].path.stat().st_ino == task.rows[0].path.stat().st_ino


def test_missing_packages():
  assert sources.missing({"colobot-common-sounds": None, "lomiri-sounds": "1.0"}) == [
      "colobot-common-sounds"]
  assert sources.install_command(["a"])[-1] == "a"
  reserved = {"fluid-soundfont-gm", "fluid-soundfont-gs", "timgm6mb-soundfont", "espeak-ng",
              "ktuberling-data", "hedgewars-data", "hydrogen-drumkits", "sonic-pi-samples"}
  assert not reserved & set(sources.SOURCES)


# --- MIDI and SoundFont ---------------------------------------------------------------------

def test_midi_variable_length_and_file():
  assert midi.variable_length(0x40) == b"\x40"
  assert midi.variable_length(0x80) == b"\x81\x00"
  assert midi.variable_length(0x3FFF) == b"\xff\x7f"
  assert midi.variable_length(0x200000) == b"\x81\x80\x80\x00"
  data = midi.midi_file([(300, midi.note_off(0, 60)), (0, midi.note_on(0, 60, 100))])
  assert data[:14] == b"MThd" + struct.pack(">IHHH", 6, 0, 1, 500)
  track = data[22:]
  # tempo, note on at 0, note off 300 ms later (delta 0x82 0x2C), end of track
  assert track == (b"\x00\xff\x51\x03\x07\xa1\x20" + b"\x00\x90\x3c\x64"
                   + b"\x82\x2c\x80\x3c\x00" + b"\x00\xff\x2f\x00")


def _chunk(cid: bytes, body: bytes) -> bytes:
  return cid + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


def _tiny_soundfont() -> bytes:
  """One preset (bank 0, program 5) with a global zone limiting velocities to 1..100 and
  two zones: keys 0..59 -> instrument 0, keys 60..127 -> instrument 1. Instrument 0 plays
  sample 0; instrument 1 plays sample 1 below key 72 and sample 2 from 72 up."""
  rng = lambda lo, hi: lo | (hi << 8)  # noqa: E731
  name = lambda s: s.encode().ljust(20, b"\0")  # noqa: E731
  phdr = (name("Tiny") + struct.pack("<HHHIII", 5, 0, 0, 0, 0, 0)
          + name("EOP") + struct.pack("<HHHIII", 0, 0, 3, 0, 0, 0))
  pbag = struct.pack("<" + "HH" * 4, 0, 0, 1, 0, 3, 0, 5, 0)
  pgen = struct.pack("<" + "HH" * 5, 44, rng(1, 100), 43, rng(0, 59), 41, 0,
                     43, rng(60, 127), 41, 1)
  inst = name("I0") + struct.pack("<H", 0) + name("I1") + struct.pack("<H", 1) + \
      name("EOI") + struct.pack("<H", 3)
  igen = struct.pack("<" + "HH" * 5, 53, 0, 43, rng(0, 71), 53, 1, 43, rng(72, 127), 53, 2)
  ibag = struct.pack("<" + "HH" * 4, 0, 0, 1, 0, 3, 0, 5, 0)
  shdr = b"".join(name(s) + bytes(26) for s in ("S0", "S1", "S2", "EOS"))
  pdta = b"pdta" + b"".join(_chunk(c, b) for c, b in (
      (b"phdr", phdr), (b"pbag", pbag), (b"pmod", bytes(10)), (b"pgen", pgen),
      (b"inst", inst), (b"ibag", ibag), (b"imod", bytes(10)), (b"igen", igen),
      (b"shdr", shdr)))
  body = b"sfbk" + _chunk(b"LIST", b"INFO") + _chunk(b"LIST", b"sdta") + _chunk(b"LIST", pdta)
  return b"RIFF" + struct.pack("<I", len(body)) + body


def test_soundfont_samples_follow_key_and_velocity_ranges():
  bank = soundfont.parse(_tiny_soundfont())
  assert bank.presets[(0, 5)][0] == "Tiny" and bank.sample_names == ("S0", "S1", "S2")
  assert bank.samples(0, 5, 40, 80) == {0}
  assert bank.samples(0, 5, 65, 80) == {1}
  assert bank.samples(0, 5, 90, 80) == {2}
  assert bank.samples(0, 5, 90, 120) == set()  # above the global zone's velocity range
  with pytest.raises(ValueError, match="RIFF sfbk"):
    soundfont.parse(b"RIFF\0\0\0\0WAVE")


# --- baseline features ----------------------------------------------------------------------

def test_power_spectrogram_of_a_cosine_on_a_bin():
  # 1000 Hz = bin 25 of a 400-point FFT at 16 kHz. A periodic-Hann-windowed cosine of
  # amplitude A has exactly three non-zero bins: A N / 4 at k0 and -A N / 8 beside it.
  a, n, k0 = 0.5, 400, 25
  wave = a * np.cos(2 * np.pi * 1000 * np.arange(16000) / 16000)
  power = features.power_spectrogram(wave)
  assert power.shape == (201, 101)
  expected = np.zeros(201)
  expected[k0] = (a * n / 4) ** 2
  expected[k0 - 1] = expected[k0 + 1] = (a * n / 8) ** 2
  np.testing.assert_allclose(power[:, 2:-2], np.repeat(expected[:, None], 97, 1), atol=1e-6)
  fb = features.mel_filterbank()
  logmel = features.log_mel(wave)
  np.testing.assert_allclose(logmel[:, 50], np.log(fb @ expected + 1e-6), rtol=1e-9, atol=1e-9)


def _slaney_mel(f):
  """Slaney's mel scale: linear (3 / 200 per Hz) to 1 kHz, logarithmic above."""
  f = np.asarray(f, float)
  return np.where(f < 1000, 3 * f / 200, 15 + np.log(np.maximum(f, 1e-9) / 1000)
                  / (np.log(6.4) / 27))


def _slaney_hz(m):
  m = np.asarray(m, float)
  return np.where(m < 15, 200 * m / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))


def test_filterbank_is_the_slaney_one_of_80_bins_50_to_8000():
  # 82 edges evenly spaced on Slaney's mel scale from 50 to 8000 Hz; triangle i rises
  # from edge i to i+1 and falls to i+2, scaled by 2 / (edge i+2 - edge i) (area 1).
  edges = _slaney_hz(np.linspace(_slaney_mel(50.0), _slaney_mel(8000.0), 82))
  freqs = np.arange(201) * 40.0
  lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  tri = np.maximum(0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
  np.testing.assert_allclose(features.mel_filterbank(), tri * 2 / (hi - lo), atol=1e-9)


def test_silence_features_are_the_log_offset():
  wave = np.zeros(16000)
  f = features.logmel_features(wave)
  np.testing.assert_allclose(f[:80], np.log(1e-6))
  np.testing.assert_allclose(f[80:], 0, atol=1e-12)
  m = features.mfcc_features(wave)
  assert m.shape == (120,)
  np.testing.assert_allclose(m[0], np.log(1e-6) * np.sqrt(80))  # DCT-II ortho of a constant
  np.testing.assert_allclose(m[1:], 0, atol=1e-9)


def test_mfcc_is_the_orthonormal_dct_ii():
  x = np.random.default_rng(2).standard_normal((80, 7))
  n = np.arange(80)
  hand = np.stack([np.sqrt((1 if k == 0 else 2) / 80)
                   * (x * np.cos(np.pi * k * (2 * n + 1) / 160)[:, None]).sum(0)
                   for k in range(20)])
  np.testing.assert_allclose(features.mfcc(x), hand, atol=1e-10)


def test_deltas_by_hand():
  ramp = np.arange(6.0)[None]
  # edges repeated: t=0 -> (1*(1-0) + 2*(2-0)) / 10, t=1 -> (1*(2-0) + 2*(3-0)) / 10
  np.testing.assert_allclose(features.deltas(ramp)[0], [0.5, 0.8, 1, 1, 0.8, 0.5])
  np.testing.assert_allclose(features.deltas(np.full((2, 5), 3.0)), 0)


def test_mfcc_features_layout():
  wave = np.random.default_rng(3).standard_normal(8000) * 0.1
  c = features.mfcc(features.log_mel(wave))
  d = features.deltas(c)
  full = np.concatenate([c, d, features.deltas(d)])
  np.testing.assert_allclose(features.mfcc_features(wave),
                             np.concatenate([full.mean(1), full.std(1)]))


def test_fold_accuracies_train_on_the_other_folds():
  rng = np.random.default_rng(4)
  labels = ["a", "b"] * 50
  x = rng.standard_normal((100, 3)) + np.array([[4.0 if lab == "a" else -4.0, 0, 0]
                                                for lab in labels])
  fold_names = [f"fold{i % 5 + 1}" for i in range(100)]
  assert baselines.fold_accuracies(x, labels, fold_names) == [1.0] * 5
