"""A minimal Standard MIDI File writer: enough to have fluidsynth play a list of notes.

One track (format 0) at 1 ms per tick (tempo 500,000 us per quarter note, 500 ticks per
quarter), so event times are whole milliseconds.
"""
from __future__ import annotations

import struct

TICKS_PER_QUARTER = 500
TEMPO_US_PER_QUARTER = 500_000
ALL_SOUND_OFF = 120  # controller number: silences the channel at once, tails included
BANK_SELECT_MSB = 0


def variable_length(value: int) -> bytes:
  """MIDI's variable-length quantity: 7 bits per byte, high bit set on all but the last."""
  if value < 0:
    raise ValueError(f"negative delta time {value}")
  out = [value & 0x7F]
  value >>= 7
  while value:
    out.append(0x80 | (value & 0x7F))
    value >>= 7
  return bytes(reversed(out))


def note_on(channel: int, key: int, velocity: int) -> bytes:
  return bytes([0x90 | channel, key, velocity])


def note_off(channel: int, key: int) -> bytes:
  return bytes([0x80 | channel, key, 0])


def bank_select(channel: int, bank: int) -> bytes:
  """Bank select (MSB); takes effect at the next program change."""
  return bytes([0xB0 | channel, BANK_SELECT_MSB, bank])


def program_change(channel: int, program: int) -> bytes:
  return bytes([0xC0 | channel, program])


def sound_off(channel: int) -> bytes:
  return bytes([0xB0 | channel, ALL_SOUND_OFF, 0])


def midi_file(events: list[tuple[int, bytes]]) -> bytes:
  """[(time in ms, one message's bytes)] -> the bytes of a format-0 MIDI file (events sorted
  by time, ties kept in the given order)."""
  track = bytearray(b"\x00\xFF\x51\x03" + TEMPO_US_PER_QUARTER.to_bytes(3, "big"))
  now = 0
  for time_ms, message in sorted(events, key=lambda e: e[0]):
    track += variable_length(time_ms - now) + message
    now = time_ms
  track += b"\x00\xFF\x2F\x00"  # end of track
  header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_QUARTER)
  return header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)
