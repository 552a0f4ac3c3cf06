"""Reading a checkpoint file as untrusted input: tensors and plain containers only.

A PyTorch checkpoint is a pickle, and unpickling runs whatever code the file names. Files
are read with `torch.load(..., weights_only=True)` (PyTorch's restricted unpickler: it
refuses any global outside tensors and plain containers before calling it) or from
safetensors (a JSON header and raw arrays: nothing to execute). Tensors come back as
NumPy arrays (bfloat16 / float16 widened to float32), containers as dicts and lists.
"""
import json
import struct
from pathlib import Path

import numpy as np

SAFETENSORS_SUFFIX = ".safetensors"
_ZIP_MAGIC = b"PK\x03\x04"   # torch.save's default (zip) format
_PICKLE_PROTOCOL = 0x80      # a legacy torch.save file starts with a pickle PROTO opcode


class CheckpointError(ValueError):
  """A checkpoint file that cannot be read safely or is not a checkpoint; one line."""


def _one_line(err: BaseException, limit: int = 200) -> str:
  text = " ".join(str(err).split()) or type(err).__name__
  return text if len(text) <= limit else text[:limit - 3] + "..."


def is_safetensors(path: Path) -> bool:
  """A safetensors file: 8 bytes of little-endian header length, then a JSON object."""
  with open(path, "rb") as f:
    head = f.read(9)
  if len(head) < 9:
    return False
  size = struct.unpack("<Q", head[:8])[0]
  return head[8:9] == b"{" and 0 < size < Path(path).stat().st_size


def load(path: str | Path):
  """The file's contents: a dict (or list) of NumPy arrays and plain values. Raises
  FileNotFoundError, or CheckpointError naming what is wrong (a pickle needing code, a
  truncated or foreign file)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint {path} not found")
  if path.suffix == SAFETENSORS_SUFFIX or is_safetensors(path):
    return _load_safetensors(path)
  return _load_torch(path)


def _load_safetensors(path: Path) -> dict:
  from safetensors import SafetensorError  # optional dependency, only for these files
  from safetensors.numpy import load_file  # optional, as above
  try:
    return {k: _widened(v) for k, v in load_file(str(path)).items()}
  except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as err:
    raise CheckpointError(f"{path} is not a readable safetensors file ({_one_line(err)}); "
                          f"it may be truncated: copy it again") from None


def _load_torch(path: Path):
  with open(path, "rb") as f:
    head = f.read(4)
  if not (head == _ZIP_MAGIC or (head and head[0] == _PICKLE_PROTOCOL)):
    raise CheckpointError(f"{path} is neither a PyTorch checkpoint (torch.save) nor a "
                          f"safetensors file")
  import pickle  # noqa: PLC0415 - only for the error type torch raises
  try:
    import torch  # optional dependency (the 'torch' extra), needed for .pt files only
  except ImportError:
    raise CheckpointError(f"{path} is a PyTorch checkpoint: reading it needs torch "
                          f"(pip install '.[torch]'), or convert it to safetensors") from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as err:
    # The restricted unpickler stopped at a global it does not allow, before calling it.
    culprit = next((ln.strip() for ln in str(err).splitlines()
                    if "Unsupported global" in ln or "Unsupported operand" in ln), "")
    culprit = culprit.partition(" was not an allowed")[0].removeprefix("WeightsUnpickler error: ")
    raise CheckpointError(
        f"{path} was refused: it needs more than tensors and plain containers to load "
        f"({culprit or _one_line(err)}); only weights are read from a checkpoint, never "
        f"code") from None
  except (RuntimeError, EOFError, OSError, ValueError) as err:
    raise CheckpointError(f"{path} cannot be read as a PyTorch checkpoint "
                          f"({_one_line(err)}); it may be truncated: copy it again") from None
  return _to_numpy(obj, torch)


def _widened(a: np.ndarray) -> np.ndarray:
  return a.astype(np.float32) if a.dtype == np.float16 else a


def _to_numpy(obj, torch):
  """Tensors -> NumPy arrays (float16 / bfloat16 -> float32), through dicts and lists."""
  if isinstance(obj, torch.Tensor):
    t = obj.detach().cpu()
    if t.is_floating_point() and t.dtype != torch.float64:
      t = t.float()
    return t.numpy()
  if isinstance(obj, dict):
    return {k: _to_numpy(v, torch) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_to_numpy(v, torch) for v in obj)
  return obj
