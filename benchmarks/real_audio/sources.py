"""The Debian packages the benchmark is built from, what each is used for, and the check
that they are installed.

The corpus and the tasks come from different packages (SOURCES' `use`). Reserved for a
separate evaluation, never used here: fluid-soundfont-gm / -gs, timgm6mb-soundfont,
espeak-ng and espeak voices, ktuberling-data, hedgewars-data, hydrogen-drumkits,
sonic-pi-samples.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CORPUS, TASKS, TOOL = "corpus", "tasks", "tool"

# package -> (use, what it gives)
SOURCES: dict[str, tuple[str, str]] = {
    "colobot-common-sounds": (CORPUS, "game music (21 tracks) and sound effects"),
    "asterisk-moh-opsound-wav": (CORPUS, "music on hold (5 recorded tracks, 8 kHz)"),
    "lomiri-sounds": (CORPUS, "ringtones and notification sounds"),
    "deepin-sound-theme": (CORPUS, "desktop sound theme"),
    "oxygen-sounds": (CORPUS, "desktop sound theme"),
    "festvox-suopuhe-lj": (CORPUS, "Finnish female diphone voice (read text)"),
    "festvox-suopuhe-mv": (CORPUS, "Finnish male diphone voice (read text)"),
    "asterisk-core-sounds-en-wav": (TASKS, "English telephone prompts (Allison Smith)"),
    "asterisk-core-sounds-es-wav": (TASKS, "Mexican Spanish prompts (Allison Smith)"),
    "asterisk-core-sounds-fr-wav": (TASKS, "Canadian French prompts (June)"),
    "asterisk-core-sounds-it-wav": (TASKS, "Italian prompts (Carlo)"),
    "asterisk-core-sounds-ru-wav": (TASKS, "Russian prompts"),
    "musescore-general-soundfont-small": (TASKS, "MuseScore General SF3: GM instruments, "
                                                 "drum kits"),
    "avldrums.lv2-soundfont": (TASKS, "two multi-velocity recorded drum kits (SF2)"),
    "csound-soundfont": (TASKS, "a small GM bank's drum kits (SF2)"),
    "flite": (TASKS, "voices awb, rms, slt, kal, kal16"),
    "festvox-kallpc16k": (TASKS, "festival voice kal_diphone"),
    "festvox-kdlpc16k": (TASKS, "festival voice ked_diphone"),
    "festvox-us-slt-hts": (TASKS, "festival voice cmu_us_slt_arctic_hts"),
    "festival": (TOOL, "speech synthesis (text2wave)"),
    "fluidsynth": (TOOL, "renders SoundFont notes"),
}
PROGRAMS = {"flite": "flite", "festival": "text2wave", "fluidsynth": "fluidsynth"}

SOUNDS = Path("/usr/share/asterisk/sounds")
MOH = Path("/usr/share/asterisk/moh")
COLOBOT = Path("/usr/share/games/colobot")
LOMIRI = Path("/usr/share/sounds/lomiri")
DEEPIN = Path("/usr/share/sounds/deepin/stereo")
OXYGEN = Path("/usr/share/sounds")  # oxygen's files are Oxygen-*.ogg at its top level
MUSESCORE = Path("/usr/share/sounds/sf3/MuseScore_General_Lite.sf3")
AVL_KITS = (Path("/usr/share/sounds/sf2/Black_Pearl_4_LV2.sf2"),
            Path("/usr/share/sounds/sf2/Red_Zeppelin_4_LV2.sf2"))
CSOUND_BANK = Path("/usr/share/sounds/sf2/sf_GMbank.sf2")
LICENSE_TEXT = Path("/usr/share/common-licenses/GPL-3")  # base-files: text read aloud
APT_INSTALL = ["apt-get", "install", "-y", "--no-install-recommends"]


def installed_versions(packages: list[str]) -> dict[str, str | None]:
  """{package: installed version, None when not installed} (dpkg-query)."""
  if shutil.which("dpkg-query") is None:
    return {p: None for p in packages}
  out = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Status}\t${Version}\n",
                        *packages], capture_output=True, text=True).stdout
  found = {}
  for line in out.splitlines():
    name, status, version = line.split("\t")
    if status.endswith(" installed"):
      found[name] = version
  return {p: found.get(p) for p in packages}


def missing(versions: dict[str, str | None]) -> list[str]:
  """Packages not installed, or whose program is not on PATH."""
  return [p for p, v in versions.items()
          if v is None or (p in PROGRAMS and shutil.which(PROGRAMS[p]) is None)]


def install_command(packages: list[str]) -> list[str]:
  return APT_INSTALL + list(packages)
