"""The speech tasks: spoken language (recorded telephone prompts), speaker and keyword
(rendered by flite's and festival's voices, each voice built from one person's
recordings)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.real_audio import clips, sources, synth
from benchmarks.real_audio.task_clips import Clip, Task

# asterisk-core-sounds voice folders: en and es are both read by Allison Smith, so the
# language task cannot be solved by the voice alone.
LANGUAGES = {"en": "en_US_f_Allison", "es": "es_MX_f_Allison", "fr": "fr_CA_f_June",
             "it": "it_IT_m_Carlo", "ru": "ru_RU_f_IvrvoiceRU"}
PROMPTS_PER_LANGUAGE = 150
PROMPT_SECONDS = (1.0, 12.0)

# speaker -> the (engine, voice) renderings of that one person's recordings: flite's kal
# and kal16 and festival's kal_diphone are all Kal; flite's slt and festival's HTS slt
# are both SLT (CMU ARCTIC).
SPEAKERS = {
    "awb": (("flite", "awb"),),
    "rms": (("flite", "rms"),),
    "slt": (("flite", "slt"), ("festival", "cmu_us_slt_arctic_hts")),
    "kal": (("flite", "kal16"), ("flite", "kal"), ("festival", "kal_diphone")),
    "ked": (("festival", "ked_diphone"),),
}
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
KEYWORD_TAKES = 12  # renderings of each word per speaker, spread over its engines
SENTENCES = 50  # per speaker, the same sentences for every speaker
STRETCH = (0.8, 1.3)

_SUBJECTS = ("the old man", "my sister", "a small dog", "the pilot", "our teacher",
             "the farmer", "a young girl", "the doctor", "his friend", "the baker")
_VERBS = ("painted", "carried", "found", "opened", "cleaned", "watched", "counted",
          "moved", "sold", "fixed")
_OBJECTS = ("the green door", "a heavy box", "seven apples", "the broken clock",
            "a paper boat", "the kitchen table", "two silver coins", "the garden gate",
            "a long letter", "the red bicycle")
_TIMES = ("this morning", "last week", "after dinner", "at noon", "in the rain",
          "before school", "on sunday", "every night", "by the river", "near the station")


def sentences(n: int, seed: int) -> list[str]:
  """n distinct short sentences from fixed word lists (deterministic for a seed)."""
  rng = np.random.default_rng(seed)
  out: list[str] = []
  while len(out) < n:
    s = " ".join(str(rng.choice(part)) for part in (_SUBJECTS, _VERBS, _OBJECTS, _TIMES))
    if s not in out:
      out.append(s.capitalize() + ".")
  return out


def _say(engine: str, voice: str, utterances: list[synth.Utterance]) -> list[np.ndarray]:
  say = synth.flite_say if engine == "flite" else synth.festival_say
  return [clips.trim_silence(w) for w in say(voice, utterances)]


def _spoken(jobs: list[tuple[str, str, str, synth.Utterance]]) -> dict[str, np.ndarray]:
  """{key: wave} for jobs (key, engine, voice, utterance), one call per voice."""
  by_voice: dict[tuple[str, str], list] = {}
  for key, engine, voice, utterance in jobs:
    by_voice.setdefault((engine, voice), []).append((key, utterance))
  out = {}
  for (engine, voice), items in by_voice.items():
    waves = _say(engine, voice, [u for _, u in items])
    out.update({key: w for (key, _), w in zip(items, waves)})
  return out


def keyword_task(seed: int) -> Task:
  """10 command words, 12 takes per speaker (slower to faster); folds by speaker."""
  jobs = []
  for speaker, voices in SPEAKERS.items():
    for word in KEYWORDS:
      for take, stretch in enumerate(np.linspace(*STRETCH, KEYWORD_TAKES)):
        engine, voice = voices[take % len(voices)]
        jobs.append((f"keyword/{speaker}_{word}_{take:02d}", engine, voice,
                     synth.Utterance(word, float(stretch))))
  waves = _spoken(jobs)
  return Task("keyword", 1.5, "spoken command word (10), rendered by 5 speakers' voices; "
              "group: speaker", tuple(
                  Clip(key, waves[key], key.split("_")[1], key.split("/")[1].split("_")[0])
                  for key, *_ in jobs))


def speaker_task(seed: int) -> Task:
  """The same 50 sentences read by each of 5 speakers; folds by sentence."""
  rng = np.random.default_rng(seed)
  jobs = []
  for i, text in enumerate(sentences(SENTENCES, seed)):
    for speaker, voices in SPEAKERS.items():
      engine, voice = voices[i % len(voices)]
      jobs.append((f"speaker/{speaker}_{i:03d}", engine, voice,
                   synth.Utterance(text, float(rng.uniform(0.85, 1.2)))))
  waves = _spoken(jobs)
  return Task("speaker", 3.0, "speaker (5 voices, flite and festival) reading generated "
              "sentences; group: sentence", tuple(
                  Clip(key, waves[key], key.split("/")[1].split("_")[0],
                       f"sentence{key.split('_')[-1]}") for key, *_ in jobs))


def _prompts(folder: Path) -> dict[str, Path]:
  """{prompt id (path without extension, e.g. digits/5): file}, the silence/ files left out."""
  return {str(p.relative_to(folder).with_suffix("")): p for p in sorted(folder.rglob("*.wav"))
          if p.relative_to(folder).parts[0] != "silence"}


def language_task(seed: int, root: Path = sources.SOUNDS) -> Task:
  """Up to 150 prompts per language, those recorded in most languages first; folds by
  prompt (one prompt's recordings in every language stay in one fold)."""
  rng = np.random.default_rng(seed)
  usable = {}
  for lang, folder in LANGUAGES.items():
    usable[lang] = {pid: path for pid, path in _prompts(root / folder).items()
                    if PROMPT_SECONDS[0] <= clips.duration(path) <= PROMPT_SECONDS[1]}
  counts: dict[str, int] = {}
  for prompts in usable.values():
    for pid in prompts:
      counts[pid] = counts.get(pid, 0) + 1
  out = []
  for lang, prompts in usable.items():
    ids = sorted(prompts, key=lambda pid: (-counts[pid], rng.random()))[:PROMPTS_PER_LANGUAGE]
    for pid in sorted(ids):
      wave = clips.trim_silence(clips.read_span(prompts[pid], 0, 6.0))
      out.append(Clip(f"language/{lang}_{pid}", wave, lang, f"prompt:{pid}"))
  return Task("spoken_language", 4.0, "language of a telephone prompt (en, es, fr, it, ru; "
              "en and es by the same speaker); group: prompt", tuple(out))
