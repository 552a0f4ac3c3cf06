"""The labelled-task format: meta.csv parsing, writing and its errors."""
from pathlib import Path

import numpy as np
import pytest

from data_pipelines.audio_io import write_wav
from data_pipelines.tasks import TaskRow, read_task, write_task


def _task_dir(tmp_path, csv_text, files=("a.wav", "b.wav", "c.wav")):
  for name in files:
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    write_wav(tmp_path / name, np.zeros(160, np.float32), 16000)
  (tmp_path / "meta.csv").write_text(csv_text)
  return tmp_path


def test_reads_single_label_task_with_folds_and_splits(tmp_path):
  task = read_task(_task_dir(tmp_path, "filename,label,fold,split\n"
                                       "a.wav,dog,1,train\nb.wav,cat,2,valid\nc.wav,dog,,\n"))
  assert task.dir == tmp_path and not task.multilabel
  assert task.label_names == ("cat", "dog")
  assert task.rows[0] == TaskRow(tmp_path / "a.wav", ("dog",), "1", "train")
  assert task.rows[2].fold is None and task.rows[2].split is None


def test_reads_multilabel_task(tmp_path):
  task = read_task(_task_dir(tmp_path, "filename,label\na.wav,dog; bark\nb.wav,cat\n"))
  assert task.multilabel and task.rows[0].labels == ("dog", "bark")
  assert task.label_names == ("bark", "cat", "dog")


@pytest.mark.parametrize("csv_text, error, message", [
    ("filename,fold\na.wav,1\n", ValueError, "lacks label"),
    ("filename,label,spilt\na.wav,dog,train\n", ValueError,
     "column 'spilt' looks like a misspelt 'split'"),
    ("filename,label\na.wav,dog\nmissing.wav,cat\n", FileNotFoundError, "missing.wav"),
    ("filename,label\na.wav,dog\nb.wav,\n", ValueError, r"meta.csv:3: empty label"),
    ("filename,label\na.wav,dog;;cat\n", ValueError, "empty label"),
    ("filename,label,split\na.wav,dog,training\n", ValueError, "unknown split 'training'"),
    ("filename,label\n", ValueError, "no rows"),
])
def test_errors_name_the_problem(tmp_path, csv_text, error, message):
  with pytest.raises(error, match=message):
    read_task(_task_dir(tmp_path, csv_text))


def test_missing_meta_csv(tmp_path):
  with pytest.raises(FileNotFoundError, match="no meta.csv"):
    read_task(tmp_path)


def test_write_then_read(tmp_path):
  _task_dir(tmp_path, "", files=("audio/a.wav", "audio/b.wav"))
  rows = [TaskRow(Path("audio/a.wav"), ("x", "y"), split="test"),
          TaskRow(tmp_path / "audio/b.wav", ("y",), split="train")]
  meta = write_task(tmp_path, rows)
  assert meta.read_text().splitlines() == [
      "filename,label,split", "audio/a.wav,x;y,test", "audio/b.wav,y,train"]
  task = read_task(tmp_path)
  assert task.rows == (TaskRow(tmp_path / "audio/a.wav", ("x", "y"), None, "test"),
                       TaskRow(tmp_path / "audio/b.wav", ("y",), None, "train"))


def test_write_refuses_files_outside_the_folder(tmp_path):
  (tmp_path / "task").mkdir()
  write_wav(tmp_path / "outside.wav", np.zeros(160, np.float32), 16000)
  with pytest.raises(ValueError, match="outside the task folder"):
    write_task(tmp_path / "task", [TaskRow(tmp_path / "outside.wav", ("x",))])
