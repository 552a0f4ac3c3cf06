"""Which recorded samples a SoundFont (SF2, or MuseScore's SF3) plays for a note.

Only the preset data (the `pdta` list) is read: presets point to instruments, instruments
to samples, each zone limited to a key and a velocity range. The benchmark uses it to keep
clips that share a recording in one fold (programs or drum keys of a GM bank often reuse
the same samples), so it never decodes the sample data itself.
"""
from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

# Generator operators (SoundFont 2.04, section 8.1.2).
KEY_RANGE, VEL_RANGE, INSTRUMENT, SAMPLE_ID = 43, 44, 41, 53
FULL_RANGE = (0, 127)


@dataclasses.dataclass(frozen=True)
class Zone:
  keys: tuple[int, int]
  velocities: tuple[int, int]
  target: int  # instrument index (preset zones) or sample index (instrument zones)

  def covers(self, key: int, velocity: int) -> bool:
    return (self.keys[0] <= key <= self.keys[1]
            and self.velocities[0] <= velocity <= self.velocities[1])


@dataclasses.dataclass(frozen=True)
class SoundFont:
  presets: dict[tuple[int, int], tuple[str, tuple[Zone, ...]]]  # (bank, program) -> name, zones
  instruments: tuple[tuple[Zone, ...], ...]
  sample_names: tuple[str, ...]

  def samples(self, bank: int, program: int, key: int, velocity: int) -> set[int]:
    """Indices of the samples sounding for that note (empty: the preset has none)."""
    _, zones = self.presets[(bank, program)]
    return {zone.target for pzone in zones if pzone.covers(key, velocity)
            for zone in self.instruments[pzone.target] if zone.covers(key, velocity)}


def _chunks(data: bytes, start: int, stop: int) -> dict[str, bytes]:
  """RIFF sub-chunks between two offsets, by id; a LIST is filed under its list type."""
  out, pos = {}, start
  while pos + 8 <= stop:
    cid, size = data[pos:pos + 4].decode("latin-1"), struct.unpack("<I", data[pos + 4:pos + 8])[0]
    body = data[pos + 8:pos + 8 + size]
    out[body[:4].decode("latin-1") if cid == "LIST" else cid] = body
    pos += 8 + size
    # RIFF pads odd chunks to even length; MuseScore's SF3 writer does not, so the pad
    # byte is skipped only where the next chunk id does not start right away.
    if size & 1 and not data[pos:pos + 4].isalnum():
      pos += 1
  return out


def _records(chunk: bytes, size: int, fmt: str) -> list[tuple]:
  return [struct.unpack(fmt, chunk[i:i + size]) for i in range(0, len(chunk) - size + 1, size)]


def _zones(bags: list[tuple], gens: list[tuple], first: int, last: int, target_op: int
           ) -> tuple[Zone, ...]:
  """The zones of bags [first, last): a zone without `target_op` is the global zone, whose
  ranges are the defaults of the others."""
  default = {KEY_RANGE: FULL_RANGE, VEL_RANGE: FULL_RANGE}
  zones = []
  for b in range(first, last):
    values = dict(default)
    target = None
    for op, amount in gens[bags[b][0]:bags[b + 1][0]]:
      if op in (KEY_RANGE, VEL_RANGE):
        values[op] = (amount & 0xFF, amount >> 8)
      elif op == target_op:
        target = amount
    if target is None:
      if b == first:
        default = values
      continue
    zones.append(Zone(values[KEY_RANGE], values[VEL_RANGE], target))
  return tuple(zones)


def parse(data: bytes) -> SoundFont:
  """A SoundFont file's bytes -> its presets, instruments and sample names."""
  if data[:4] != b"RIFF" or data[8:12] != b"sfbk":
    raise ValueError("not a SoundFont (no RIFF sfbk header)")
  top = _chunks(data, 12, len(data))
  if "pdta" not in top:
    raise ValueError("SoundFont without preset data (no pdta list)")
  pdta = _chunks(top["pdta"], 4, len(top["pdta"]))
  phdr = _records(pdta["phdr"], 38, "<20sHHHIII")
  pbag = _records(pdta["pbag"], 4, "<HH")
  pgen = _records(pdta["pgen"], 4, "<HH")
  inst = _records(pdta["inst"], 22, "<20sH")
  ibag = _records(pdta["ibag"], 4, "<HH")
  igen = _records(pdta["igen"], 4, "<HH")
  shdr = _records(pdta["shdr"], 46, "<20sIIIIIBbHH")
  presets = {}
  for i in range(len(phdr) - 1):  # the last record is the terminal "EOP"
    name, program, bank, bag = phdr[i][:4]
    presets[(bank, program)] = (name.split(b"\0")[0].decode("latin-1"),
                                _zones(pbag, pgen, bag, phdr[i + 1][3], INSTRUMENT))
  instruments = tuple(_zones(ibag, igen, inst[i][1], inst[i + 1][1], SAMPLE_ID)
                      for i in range(len(inst) - 1))
  names = tuple(s[0].split(b"\0")[0].decode("latin-1") for s in shdr[:-1])
  return SoundFont(presets, instruments, names)


def read(path: str | Path) -> SoundFont:
  try:
    return parse(Path(path).read_bytes())
  except (ValueError, KeyError, struct.error) as err:
    raise ValueError(f"{path}: unreadable SoundFont ({err})") from err
