"""Faults the file system cannot make for root, simulated for audio_io."""
from data_pipelines import audio_io


def deny_opening(monkeypatch, name: str) -> None:
  """audio_io cannot open files whose name ends with `name` (chmod does not stop root, who
  may run these tests)."""
  real_open = open

  def deny(path, *args, **kwargs):
    if str(path).endswith(name):
      raise PermissionError(13, "Permission denied", str(path))
    return real_open(path, *args, **kwargs)

  monkeypatch.setattr(audio_io, "open", deny, raising=False)
