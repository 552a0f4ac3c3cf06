"""The labelled-task layouts the evaluation reads (task_data): the house's folder (extra
task.json keys and meta.csv columns kept with a warning, misspelt ones refused, an audio/
subfolder), HEAR 2021 task folders as hear-preprocess writes them (hear_tasks) and EVAR
metadata CSVs in their variants (evar_tasks), each built from generated tones, and
`python -m jepa_jax.evaluate --protocol=linear` on each."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from tiny import tiny_config

from data_pipelines import frontends
from data_pipelines import tasks as tasks_lib
from jepa_jax import embed, evaluate, export, models
from jepa_jax.config import shapes
from jepa_jax.evaluation import hear_tasks, labelled_task, task_data

FREQS = {"low": 400.0, "mid": 1200.0, "high": 3600.0}  # three classes a log-mel tells apart


def write_tone(path: Path, label: str, i: int, rate: int = 16000, seconds: float = 0.5):
  """A tone of the class's frequency (several labels: their sum), a little noise."""
  rng = np.random.default_rng(i)
  t = np.arange(int(seconds * rate)) / rate
  wave = sum(0.3 * np.sin(2 * np.pi * FREQS[name] * t) for name in label.split(","))
  path.parent.mkdir(parents=True, exist_ok=True)
  soundfile.write(path, (wave + 0.01 * rng.normal(size=t.size)).astype(np.float32), rate)


def clips(n_per_class: int) -> list[tuple[str, str]]:
  """(file name, class) of n clips per class, classes interleaved."""
  return [(f"c{k:03d}.wav", name) for k, name in enumerate(list(FREQS) * n_per_class)]


def _lines(text: str) -> list[str]:
  return [line for line in text.splitlines() if line.startswith("warning:")]


# --- the house's folder -----------------------------------------------------------------------

def make_folder(root: Path, n_per_class: int = 5) -> Path:
  """meta.csv with two extra columns, audio in audio/ named both ways, a task.json with
  extra keys; rows split 3 train / 1 valid / 1 test per class."""
  rows = ["filename,label,split,speaker,kit"]
  for i, (name, label) in enumerate(clips(n_per_class)):
    write_tone(root / "audio" / name, label, i)
    split = ("train", "train", "train", "valid", "test")[(i // len(FREQS)) % 5]
    listed = name if i % 2 else f"audio/{name}"  # relative to audio/ or to the folder
    rows.append(f"{listed},{label},{split},spk{i % 4},kit{i % 2}")
  (root / "meta.csv").write_text("\n".join(rows) + "\n")
  (root / "task.json").write_text(json.dumps(
      {"unit_sec": 0.5, "description": "three tones", "classes": sorted(FREQS)}))
  return root


def test_folder_keeps_extra_keys_and_columns_and_warns_once(tmp_path, capsys):
  folder = make_folder(tmp_path / "tones")
  task = task_data.read(folder)
  assert task.unit_sec == 0.5 and len(task) == 15 and task.label_names == ("high", "low", "mid")
  assert task.info == {"description": "three tones", "classes": ["high", "low", "mid"]}
  assert task.columns == {"speaker": tuple(f"spk{i % 4}" for i in range(15)),
                          "kit": tuple(f"kit{i % 2}" for i in range(15))}
  assert [r.path.parent for r in tasks_lib.read_task(folder).rows[:2]] == [folder / "audio"] * 2
  assert _lines(capsys.readouterr().err) == [
      f"warning: {folder / 'task.json'}: key(s) classes, description kept as information, "
      f"not used by the evaluation",
      f"warning: {folder / 'meta.csv'}: column(s) speaker, kit kept as information, not used "
      f"by the evaluation"]
  task_data.read(folder)
  assert _lines(capsys.readouterr().err) == []  # a task is read several times per command


def test_audio_beside_meta_csv_wins_over_audio_subfolder(tmp_path):
  for where in (tmp_path / "a.wav", tmp_path / "audio" / "a.wav"):
    write_tone(where, "low", 0)
  write_tone(tmp_path / "audio" / "b.wav", "mid", 1)
  (tmp_path / "meta.csv").write_text("filename,label\na.wav,low\nb.wav,mid\n")
  assert [r.path for r in tasks_lib.read_task(tmp_path).rows] == [
      tmp_path / "a.wav", tmp_path / "audio" / "b.wav"]
  (tmp_path / "meta.csv").write_text("filename,label\nc.wav,low\n")
  with pytest.raises(FileNotFoundError, match=r"beside it and in audio/\): .*c.wav"):
    tasks_lib.read_task(tmp_path)


@pytest.mark.parametrize("name, known, present, meant", [
    ("lable", ("filename", "label"), ("filename", "lable"), "label"),
    ("spilt", ("filename", "label", "fold", "split"), (), "split"),
    ("filenme", ("filename", "label"), (), "filename"),
    ("file_name", ("filename", "label"), (), "filename"),
    ("Label", ("filename", "label"), (), "label"),
    ("folds", ("fold", "split"), (), "fold"),
    ("unitsec", ("unit_sec",), (), "unit_sec"),
    ("labels", ("filename", "label"), ("label",), None),  # beside label: information
    ("folder", ("fold", "split"), (), None),              # a name of its own
    ("label_id", ("filename", "label"), ("filename",), None),
    ("speaker_id", ("file_name", "label", "split", "fold"), (), None),
    ("target", ("file_name", "label", "split", "fold"), (), None),
    ("description", ("unit_sec",), (), None),
])
def test_misspelt_names_are_told_from_names_of_their_own(name, known, present, meant):
  assert tasks_lib.misspelt(name, known, present) == meant


@pytest.mark.parametrize("meta, settings, message", [
    ("filename,lable\na.wav,low\n", None, "column 'lable' looks like a misspelt 'label'"),
    ("filenme,label\na.wav,low\n", None, "column 'filenme' looks like a misspelt 'filename'"),
    ("file_name,label\na.wav,low\n", None, "column 'file_name' looks like a misspelt 'filename'"),
    ("filename,label\na.wav,low\n", {"unitsec": 1.0}, "key 'unitsec' looks like a misspelt "
     "'unit_sec'"),
])
def test_misspelt_keys_and_columns_are_refused_naming_the_known_one(tmp_path, meta, settings,
                                                                   message):
  write_tone(tmp_path / "a.wav", "low", 0)
  (tmp_path / "meta.csv").write_text(meta)
  if settings:
    (tmp_path / "task.json").write_text(json.dumps(settings))
  with pytest.raises(ValueError, match=message):
    task_data.read(tmp_path)


# --- HEAR 2021 --------------------------------------------------------------------------------

def make_hear(root: Path, split_mode: str = "trainvaltest", multilabel: bool = False,
              rates=(16000,), n_per_class: int = 6) -> Path:
  """A scene task as hear-preprocess's FinalCombine leaves it."""
  kfold = split_mode != "trainvaltest"
  splits = ["fold00", "fold01", "fold02"] if kfold else ["train", "test", "valid"]
  labels = {s: {} for s in splits}
  for i, (name, label) in enumerate(clips(n_per_class)):
    if multilabel and i % 4 == 0:
      label = f"{label},low" if label != "low" else "low,mid"
    split = (splits[i // len(FREQS) % 3] if kfold else
             ("train", "train", "train", "valid", "test", "train")[(i // len(FREQS)) % 6])
    labels[split][name] = label.split(",")
    for rate in rates:
      write_tone(root / str(rate) / split / name, label, i, rate)
  for split, files in labels.items():
    (root / f"{split}.json").write_text(json.dumps(files, indent=True))
  (root / "labelvocabulary.csv").write_text(
      "idx,label\n" + "".join(f"{i},{n}\n" for i, n in enumerate(sorted(FREQS))))
  (root / "task_metadata.json").write_text(json.dumps({
      "task_name": root.name, "version": "v1.0.0", "embedding_type": "scene",
      "prediction_type": "multilabel" if multilabel else "multiclass",
      "split_mode": split_mode, "sample_duration": 0.5,
      "evaluation": ["mAP", "d_prime"] if multilabel else ["top1_acc", "mAP", "aucroc"],
      "download_urls": [], "default_mode": "full", "mode": "full", "splits": splits,
      **({"nfolds": 3} if kfold else {})}, indent=True))
  return root


def edit_metadata(folder: Path, **change) -> None:
  """task_metadata.json with some keys set (None: removed)."""
  path = folder / "task_metadata.json"
  metadata = {**json.loads(path.read_text()), **change}
  path.write_text(json.dumps({k: v for k, v in metadata.items() if v is not None}))


def _rows(task, **where):
  return {i for i in range(len(task)) if all(getattr(task, k)[i] == v for k, v in where.items())}


def test_hear_trainvaltest_reads_its_splits_vocabulary_and_metrics(tmp_path, capsys):
  folder = make_hear(tmp_path / "tones-v1.0.0-full", rates=(48000, 16000))
  task = task_data.read(folder)
  assert len(task) == 18 and not task.multilabel and set(task.folds) == {None}
  assert task.label_names == ("high", "low", "mid") and task.unit_sec == 0.5
  assert task.metrics == (("top1_acc", "accuracy"), ("mAP", None), ("aucroc", None))
  assert task.info["split_mode"] == "trainvaltest"
  (tr, va, te), = task_data.splits(task)
  assert [set(tr), set(va), set(te)] == [_rows(task, splits=s) for s in ("train", "valid",
                                                                            "test")]
  assert [len(tr), len(va), len(te)] == [12, 3, 3]
  _, paths = task_data._open(folder, None)
  assert {p.parent.parent.name for p in paths} == {"16000"}  # preferred over 48000
  train = json.loads((folder / "train.json").read_text())
  for i in sorted(_rows(task, splits="train")):
    assert list(task.labels[i]) == train[paths[i].name]
  assert _lines(capsys.readouterr().err) == [
      f"warning: {folder}: HEAR metric(s) mAP, aucroc have no score here for a multiclass "
      f"task; reported: top1_acc as accuracy"]


def test_hear_reads_48000_when_it_is_the_only_rate(tmp_path):
  folder = make_hear(tmp_path / "t", rates=(48000,), n_per_class=2)
  _, paths = task_data._open(folder, None)
  assert {p.parent.parent.name for p in paths} == {"48000"}


@pytest.mark.parametrize("listed", [True, False])
def test_hear_kfold_validates_on_the_next_fold_as_hear_eval_kit(tmp_path, listed):
  folder = make_hear(tmp_path / "k", split_mode="new_split_kfold", multilabel=True)
  if not listed:  # without `splits`: the fold names nfolds makes
    edit_metadata(folder, splits=None)
  task = task_data.read(folder)
  assert task.multilabel and task.folds.count("fold01") == 6 and set(task.splits) == {None}
  assert task.metrics == (("mAP", "mAP"), ("d_prime", "d_prime"))
  assert task.labels[0] == ("low", "mid")  # a multi-label clip, its labels as listed
  # heareval data_splits_from_folds: test fold i, valid fold i + 1, train the rest
  expected = [("fold00", "fold01", "fold02"), ("fold01", "fold02", "fold00"),
              ("fold02", "fold00", "fold01")]
  for (tr, va, te), (test, valid, train) in zip(task_data.splits(task), expected, strict=True):
    assert (set(tr), set(va), set(te)) == (_rows(task, folds=train), _rows(task, folds=valid),
                                           _rows(task, folds=test))


@pytest.mark.parametrize("change, message", [
    ({"embedding_type": "event"}, "is a HEAR event task .*event tasks are not supported yet"),
    ({"split_mode": "kfold"}, "split_mode is 'kfold'; known: trainvaltest, new_split_kfold"),
    ({"prediction_type": "regression"}, "prediction_type is 'regression'"),
    ({"nfolds": 4}, "nfolds is 4 but splits names 3 folds"),
])
def test_hear_metadata_errors_are_one_line(tmp_path, change, message):
  folder = make_hear(tmp_path / "t", split_mode="presplit_kfold", n_per_class=1)
  edit_metadata(folder, **change)
  with pytest.raises(ValueError, match=message) as err:
    task_data.read(folder)
  assert "\n" not in str(err.value)


def test_hear_labels_outside_the_vocabulary_are_refused(tmp_path):
  folder = make_hear(tmp_path / "t", n_per_class=2)
  (folder / "labelvocabulary.csv").write_text("idx,label\n0,high\n1,low\n")
  with pytest.raises(ValueError, match="label.s. mid missing from labelvocabulary.csv"):
    task_data.read(folder)


# --- EVAR -------------------------------------------------------------------------------------

def make_evar(root: Path, header: str, row, n_per_class: int = 5) -> Path:
  """evar/metadata/<task>.csv with `row(i, file name, label)` cells; audio in root/audio."""
  lines = [header]
  for i, (name, label) in enumerate(clips(n_per_class)):
    if "fsd50k" in root.name and i % 3 == 0:
      label = f"{label},low" if label != "low" else "low,high"
    write_tone(root / "audio" / "sub" / name, label, i)
    lines.append(row(i, f"sub/{name}", label))
  csv_path = root / f"{root.name}.csv"
  csv_path.write_text("\n".join(lines) + "\n")
  return csv_path


SPLIT = ("train", "train", "train", "valid", "test")
EVAR_VARIANTS = {  # task: (header, row cells) as evar/utils/make_metadata.py writes them
    "gtzan": ("file_name,label,split", lambda i, f, lab: f"{f},{lab},{SPLIT[i // 3 % 5]}"),
    "us8k": ("file_name,label,fold", lambda i, f, lab: f"{f},{lab},{i // 3 % 3 + 1}"),
    "esc50": ("file_name,fold,target,label,esc10,src_file,take",
              lambda i, f, lab: f"{f},{i // 3 % 3 + 1},{sorted(FREQS).index(lab)},{lab},False,"
                                f"{100 + i},A"),
    "cremad": ("file_name,label,speaker_id,split",
               lambda i, f, lab: f"{f},{lab},{1000 + i % 4},{SPLIT[i // 3 % 5]}"),
    "fsd50k": (",file_name,label,split",
               lambda i, f, lab: f'{i},{f},"{lab}",{SPLIT[i // 3 % 5]}'),
}


@pytest.mark.parametrize("variant", sorted(EVAR_VARIANTS))
def test_evar_csv_variants(tmp_path, variant, capsys):
  csv_path = make_evar(tmp_path / variant, *EVAR_VARIANTS[variant])
  task = task_data.read(task_data.TaskSource(csv_path, tmp_path / variant / "audio"))
  assert task.name == variant and len(task) == 15 and task.source == csv_path.absolute()
  assert task.info == {"audio_root": str(tmp_path / variant / "audio")}
  if variant in ("us8k", "esc50"):
    assert task.folds[:4] == ("1", "1", "1", "2") and set(task.splits) == {None}
    assert len(task_data.splits(task)) == 3
  else:
    assert task.splits[:4] == ("train",) * 3 + ("train",) and set(task.folds) == {None}
    assert task.splits.count("valid") == 3
  extra = {"esc50": ["target", "esc10", "src_file", "take"], "cremad": ["speaker_id"]}
  assert list(task.columns) == extra.get(variant, [])
  if variant == "esc50":
    assert task.columns["target"][:3] == ("1", "2", "0")  # low, mid, high
  if variant == "cremad":
    assert task.columns["speaker_id"][:5] == ("1000", "1001", "1002", "1003", "1000")
  warnings = _lines(capsys.readouterr().err)
  assert warnings == ([f"warning: {csv_path.absolute()}: column(s) {', '.join(extra[variant])} "
                       f"kept as information, not used by the evaluation"]
                      if variant in extra else [])
  assert task.multilabel == (variant == "fsd50k")
  if variant == "fsd50k":  # the index column dropped, quoted labels split on ','
    assert task.labels[:4] == (("low", "high"), ("mid",), ("high",), ("low", "high"))
    assert task.targets().shape == (15, 3)
  else:
    assert task.labels[:3] == (("low",), ("mid",), ("high",))


def test_evar_split_decides_over_fold_and_fold_is_kept(tmp_path):
  csv_path = make_evar(tmp_path / "both", "file_name,label,split,fold",
                       lambda i, f, lab: f"{f},{lab},{SPLIT[i // 3 % 5]},{i % 2}", 2)
  task = task_data.read(task_data.TaskSource(csv_path, tmp_path / "both" / "audio"))
  assert set(task.folds) == {None} and task.columns["fold"] == ("0", "1", "0", "1", "0", "1")


def test_evar_audio_root_is_named_when_files_are_missing(tmp_path):
  csv_path = make_evar(tmp_path / "gtzan", *EVAR_VARIANTS["gtzan"], n_per_class=1)
  with pytest.raises(FileNotFoundError, match="missing under .*gtzan: .*; give --audio_root="):
    task_data.read(csv_path)  # the default root, the CSV's folder, lacks audio/
  with pytest.raises(ValueError, match="--audio_root applies to EVAR metadata CSVs"):
    task_data.sources([tmp_path], tmp_path)
  assert task_data.sources([csv_path, tmp_path], tmp_path / "gtzan") == [
      task_data.TaskSource(csv_path, tmp_path / "gtzan"), tmp_path]


def test_evar_misspelt_column_is_refused(tmp_path):
  csv_path = make_evar(tmp_path / "t", "filename,label,split",
                       lambda i, f, lab: f"{f},{lab},train", 1)
  with pytest.raises(ValueError, match="'filename' looks like a misspelt 'file_name'"):
    task_data.read(csv_path)


# --- the scores a task's metadata asks for ----------------------------------------------------

def test_reported_keeps_the_metadata_scores_in_its_order():
  result = {"scores": {"mAP": {"mean": 0.5}, "d_prime": {"mean": 1.0}}, "chosen": []}
  task = labelled_task.LabelledTask(
      name="t", source=Path("t"), labels=(), folds=(), splits=(), label_names=(),
      multilabel=True, unit_sec=None, fingerprint="t",
      metrics=(("d_prime", "d_prime"), ("aucroc", None)))
  assert task_data.reported(result, task) == {
      "scores": {"d_prime": {"mean": 1.0}}, "chosen": [],
      "metrics": {"d_prime": "d_prime", "aucroc": None}}
  plain = labelled_task.LabelledTask(**{**task.__dict__, "metrics": ()})
  assert task_data.reported(result, plain) is result
  unmapped = labelled_task.LabelledTask(**{**task.__dict__, "metrics": (("aucroc", None),)})
  assert task_data.reported(result, unmapped) is result  # nothing to report by: all scores


def test_hear_metric_names_map_to_scores_the_task_computes():
  assert hear_tasks.metrics(["top1_acc", "pitch_acc", "chroma_acc", "mAP"], False) == (
      ("top1_acc", "accuracy"), ("pitch_acc", "accuracy"), ("chroma_acc", None), ("mAP", None))
  assert hear_tasks.metrics(["mAP", "d_prime", "top1_acc"], True) == (
      ("mAP", "mAP"), ("d_prime", "d_prime"), ("top1_acc", None))


# --- the command line on each layout ----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """A workdir whose export is a tiny encoder at its random initialisation."""
  import flax.linen as nn  # lazy: jax starts only for the tests that encode
  import jax  # lazy: as above
  workdir = tmp_path_factory.mktemp("run")
  config = tiny_config()
  params = nn.unbox(models.init_encoder(models.build_encoder(config, shapes.grid(config)),
                                        jax.random.key(3)))
  export.export_encoder(workdir / "export", config, params, {
      "frontend": frontends.get_frontend(config.data.frontend).to_dict(),
      "normalization": {"mean": -5.0, "std": 4.0}, "frames": config.data.frames})
  return workdir


@pytest.mark.slow
def test_evaluate_linear_on_each_layout(tiny_run, tmp_path, capsys):
  """The three layouts through the command: labels line up with their audio (k-NN on the
  mean-log-mel baseline tells the tones apart), a HEAR task reports its metadata's
  metrics, an EVAR CSV finds its audio under --audio_root; embed reads the CSV too; an
  event task is refused in one line."""
  folder = make_folder(tmp_path / "tones")
  hear = make_hear(tmp_path / "hear_tones", split_mode="new_split_kfold")
  csv_path = make_evar(tmp_path / "esc50", *EVAR_VARIANTS["esc50"])
  audio_root = tmp_path / "esc50" / "audio"
  for task, extra in ((folder, []), (hear, []), (csv_path, [f"--audio_root={audio_root}",
                                                            "--unit_sec=0.5"])):
    evaluate.main([f"--workdir={tiny_run}", f"--task={task}", "--protocol=linear",
                   "--baselines=mean_logmel", *extra])
    results = json.loads(capsys.readouterr().out.splitlines()[-1])
    (name, by_protocol), = results.items()
    by_set = by_protocol["linear"]
    assert set(by_set) == {"trained", "mean_logmel"}
    assert list(by_set["mean_logmel"]["scores"]) == list(by_set["trained"]["scores"]) == [
        "accuracy"]
    assert 0.0 <= by_set["trained"]["scores"]["accuracy"]["mean"] <= 1.0
    # Labels line up with their clips: k-NN on the (cached) mean log-mel finds the tones.
    evaluate.main([f"--workdir={tiny_run}", f"--task={task}", "--protocol=knn",
                   "--baselines=mean_logmel", *extra])
    knn = json.loads(capsys.readouterr().out.splitlines()[-1])[name]["knn"]["mean_logmel"]
    assert knn["scores"]["accuracy"]["mean"] == 1.0, (name, knn)
    if task == hear:
      assert by_set["trained"]["metrics"] == {"top1_acc": "accuracy", "mAP": None,
                                              "aucroc": None}
    else:
      assert "metrics" not in by_set["trained"]
  embed.main([f"--workdir={tiny_run}", f"--task={csv_path}", f"--audio_root={audio_root}"])
  line = json.loads(capsys.readouterr().out.splitlines()[-1])
  assert line["task"] == "esc50" and line["clips"] == 15
  edit_metadata(hear, embedding_type="event")
  with pytest.raises(SystemExit) as exit_:
    evaluate.main([f"--workdir={tiny_run}", f"--task={hear}", "--protocol=linear"])
  assert exit_.value.code == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      f"error: {hear} is a HEAR event task (timestamped labels): event tasks are not "
      f"supported yet; evaluate HEAR scene tasks"]
