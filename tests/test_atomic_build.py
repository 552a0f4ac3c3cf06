"""data_pipelines/atomic_build.py: a cache folder appears whole or not at all."""
import pytest

from data_pipelines.atomic_build import build_atomically


def _write(folder, text="built"):
  folder.mkdir()
  (folder / "done").write_text(text)
  return text


def test_the_build_appears_under_its_name_and_no_temporary_is_left(tmp_path):
  root = tmp_path / "cache"
  assert build_atomically(root, _write, lambda f: (f / "done").exists()) == "built"
  assert (root / "done").read_text() == "built"
  assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_a_failed_build_leaves_nothing(tmp_path):
  def fail(folder):
    _write(folder)
    raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    build_atomically(tmp_path / "cache", fail, lambda f: (f / "done").exists())
  assert list(tmp_path.iterdir()) == []


def test_a_build_another_process_finished_first_is_kept_and_ours_dropped(tmp_path):
  root = tmp_path / "cache"

  def race(folder):  # the other process renames its finished copy meanwhile
    _write(root, "theirs")
    return _write(folder, "ours")
  assert build_atomically(root, race, lambda f: (f / "done").exists()) == "ours"
  assert (root / "done").read_text() == "theirs"
  assert [p.name for p in tmp_path.iterdir()] == ["cache"]
  with pytest.raises(OSError):  # a root that is there but unfinished is not taken as done
    build_atomically(tmp_path / "other", lambda f: (_write(tmp_path / "other", "junk"),
                                                    _write(f))[1], lambda f: False)
