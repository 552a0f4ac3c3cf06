"""An optional caching memory allocator for the commands on Linux: JEPA_JAX_MALLOC=tcmalloc.

XLA's CPU runtime allocates a step's temporaries afresh each step, and glibc's malloc
gives every allocation over 32 MiB straight back to the kernel when it is freed, so each
step faults all of its temporaries in again. Measured on the 2-core CPU machine, the
A-JEPA paper step at batch 4: 1.4 million page faults and 2.4-5 s of system time in an
8-10 s step; under tcmalloc, which keeps freed memory for the next step, no faults and
steps 25-35 % shorter (A-JEPA 6.6-7.1 s, AudioMAE 2.9-3.5 s against 3.9-4.1 s).
It is not the default: the paper recipe at batch 64 in 8 micro-batches (11.7 GiB by
XLA's analysis) stayed at 14.8-15.0 GiB resident under glibc for 5 steps, but grew to 23 GiB
under tcmalloc at its third step and was killed by the kernel (jemalloc without decay: at
its second). At batch 8 in 2 micro-batches (7.0 GiB by XLA's analysis): glibc 8.5 GiB
resident, tcmalloc 8.3 GiB after the first step and 13.4-14.2 GiB from the second on, the
same whether or not the host waits for step n before dispatching step n+1, so it is not a
queued step's buffers but what the cache keeps beside the live ones. Transparent huge pages
for glibc's large blocks (GLIBC_TUNABLES=glibc.malloc.hugetlb=1) cut the faults 20x but
tripled the system time (compaction), and the step got slower.
With JEPA_JAX_MALLOC=tcmalloc and the library installed (Debian / Ubuntu:
`libtcmalloc-minimal4`), the commands (`python -m jepa_jax.main`, `.evaluate`, `.embed`)
execute themselves again once with it preloaded. Nothing changes in what is computed, only
where freed memory waits.
"""
import ctypes.util
import os
import sys
from collections.abc import Callable, Mapping

ENV = "JEPA_JAX_MALLOC"
LIBRARIES = ("tcmalloc_minimal", "tcmalloc")  # ctypes.util.find_library names, first wins
CACHING = ("tcmalloc", "jemalloc", "mimalloc")  # already preloaded: nothing to do


def preload_plan(environ: Mapping[str, str], platform: str,
                 find_library: Callable[[str], str | None]) -> str | None:
  """The LD_PRELOAD to execute again with, or None: not asked for (`JEPA_JAX_MALLOC`
  other than 'tcmalloc'), not Linux, a caching allocator already preloaded (so a second
  execution never plans a third), or none installed."""
  preload = environ.get("LD_PRELOAD", "")
  if environ.get(ENV) != "tcmalloc" or not platform.startswith("linux") \
      or any(name in preload for name in CACHING):
    return None
  found = next((lib for lib in map(find_library, LIBRARIES) if lib), None)
  if found is None:
    return None
  return f"{found}:{preload}" if preload else found


def use_caching_allocator() -> None:
  """Execute this command again with tcmalloc preloaded where preload_plan says so
  (same process id, arguments and environment otherwise). Call it first thing in a
  command's `__main__` block, before any device is used."""
  plan = preload_plan(os.environ, sys.platform, ctypes.util.find_library)
  if plan is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]],
            {**os.environ, "LD_PRELOAD": plan})
