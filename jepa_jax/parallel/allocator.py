"""How the commands' memory allocator keeps freed memory on Linux: JEPA_JAX_MALLOC.

XLA's CPU runtime takes a step's temporaries as one block each step (GiBs at the papers'
sizes) and frees it when the step ends. glibc's malloc maps every block over 32 MiB on its
own and unmaps it when freed, so each step the kernel faults in and zeroes all of it again.
Measured on the 2-core CPU machine (2026-12-07, AMD EPYC), Audio-JEPA ViT-B at batch 8 x
512 tokens: 1.09 million page faults and 6.2 s of system time in a 17.5 s step.

JEPA_JAX_MALLOC picks what the commands (`python -m jepa_jax.main`, `.evaluate`, `.embed`)
do about it; they execute themselves again once, first thing, with the environment it needs
(same process id and arguments):
- `glibc` (the default): glibc keeps freed memory in its heap for the next step.
  MALLOC_MMAP_MAX_=0 maps no block on its own; MALLOC_TRIM_THRESHOLD_ never hands the
  heap's top back; MALLOC_ARENA_MAX=1 puts every thread in that one heap (a worker thread's
  own arena maps large blocks whatever the settings). Left alone the heap settles with one
  temporary block too many resident: the second step's block does not fit where the first
  step's was. `release_free_memory` after the first step (the training loop calls it) hands
  that back. The A-JEPA paper step at batch 8 in 2 micro-batches, as the loop runs it: no
  faults from the third step on, 26.3-26.4 s a step against 31.1-33.6 s, 8.56 GiB peak
  resident against 8.47 GiB under glibc's defaults (without the release: 14.7 GiB against
  8.9, on another machine).
- `tcmalloc`: tcmalloc preloaded, where installed (Debian / Ubuntu: `libtcmalloc-minimal4`;
  Colab preloads it). No faults either, but it keeps more: the A-JEPA paper recipe at batch
  64 in 8 micro-batches grew to 23 GiB resident at its third step (14.8-15.0 GiB under
  glibc's defaults) and was killed by the kernel.
- `system`: glibc's defaults, as before the default changed.
Nothing changes in what is computed, only where freed memory waits. Transparent huge pages
for glibc's large blocks (GLIBC_TUNABLES=glibc.malloc.hugetlb=1) cut the faults 400x on the
step above but not the kernel's zeroing: 3.3 s of system time, 15.7-16.3 s a step.
"""
import ctypes
import ctypes.util
import os
import platform
import sys
from collections.abc import Callable, Mapping

ENV = "JEPA_JAX_MALLOC"
CHOICES = ("glibc", "tcmalloc", "system")
LIBRARIES = ("tcmalloc_minimal", "tcmalloc")  # ctypes.util.find_library names, first wins
CACHING = ("tcmalloc", "jemalloc", "mimalloc")  # already preloaded: nothing to do
# glibc's tunables for `glibc`; any of them already set (by the user, or by the first
# execution) leaves the environment as it is.
KEEP_FREED = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 46),
              "MALLOC_ARENA_MAX": "1"}


def restart_environment(environ: Mapping[str, str], system: str, libc: str,
                        find_library: Callable[[str], str | None]) -> dict[str, str] | None:
  """The variables to execute the command again with, or None: nothing to change (not
  Linux; `system`; a caching allocator already preloaded, so a second execution never
  plans a third; `glibc` under another C library or with its tunables already set;
  `tcmalloc` not installed). Raises ValueError on a JEPA_JAX_MALLOC it does not know."""
  choice = environ.get(ENV) or "glibc"
  if choice not in CHOICES:
    raise ValueError(f"{ENV}={choice!r} is not an allocator choice; use one of "
                     f"{', '.join(CHOICES)} (glibc is the default)")
  preload = environ.get("LD_PRELOAD", "")
  if choice == "system" or not system.startswith("linux") \
      or any(name in preload for name in CACHING):
    return None
  if choice == "glibc":
    if libc != "glibc" or any(name in environ for name in KEEP_FREED):
      return None
    return dict(KEEP_FREED)
  found = next((lib for lib in map(find_library, LIBRARIES) if lib), None)
  if found is None:
    return None
  return {"LD_PRELOAD": f"{found}:{preload}" if preload else found}


def use_caching_allocator() -> None:
  """Execute this command again with the environment restart_environment gives, where it
  gives one. Call it first thing, before jax loads (the commands do so at the top of their
  modules): glibc reads its tunables only at a process's start, and a restart after the
  imports would pay for them twice."""
  try:
    changes = restart_environment(os.environ, sys.platform, platform.libc_ver()[0],
                                  ctypes.util.find_library)
  except ValueError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
  if changes is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **changes})


def release_free_memory() -> None:
  """Hand the pages of glibc's free heap memory back to the kernel (malloc_trim). Called
  once after a run's first step, it keeps one step's temporaries resident, not two (see the
  module docstring); called at every step it would bring the faults back. Nothing
  elsewhere than glibc."""
  if platform.libc_ver()[0] == "glibc":
    ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols: no ldconfig run
