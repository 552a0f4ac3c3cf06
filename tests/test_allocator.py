"""The commands' allocator (JEPA_JAX_MALLOC, jepa_jax/parallel/allocator.py): what each
choice asks for, that a command executes itself again once with it and keeps its
arguments, and that glibc then really keeps a freed large block for the next one (no page
faults the second time) and hands it back on release_free_memory."""
import ctypes.util
import os
import platform
import subprocess
import sys

import pytest

from jepa_jax.parallel import allocator
from tests.tiny import ROOT

FOUND = {"tcmalloc_minimal": "libtcmalloc_minimal.so.4"}.get
TCMALLOC = {"JEPA_JAX_MALLOC": "tcmalloc"}
KEEP = allocator.KEEP_FREED


@pytest.mark.parametrize("environ, system, libc, find, expected", [
    ({}, "linux", "glibc", FOUND, KEEP),                                  # the default
    ({"JEPA_JAX_MALLOC": "glibc"}, "linux", "glibc", FOUND, KEEP),
    ({"JEPA_JAX_MALLOC": ""}, "linux", "glibc", FOUND, KEEP),
    ({"MALLOC_ARENA_MAX": "4"}, "linux", "glibc", FOUND, None),           # the user's own
    (KEEP, "linux", "glibc", FOUND, None),                                # executed again
    ({}, "linux", "", FOUND, None),                                       # musl
    ({}, "darwin", "", FOUND, None),
    ({"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}, "linux", "glibc", FOUND, None),  # Colab's
    ({"JEPA_JAX_MALLOC": "system"}, "linux", "glibc", FOUND, None),
    (TCMALLOC, "linux", "glibc", FOUND, {"LD_PRELOAD": "libtcmalloc_minimal.so.4"}),
    ({**TCMALLOC, "LD_PRELOAD": "libfoo.so"}, "linux", "glibc", FOUND,
     {"LD_PRELOAD": "libtcmalloc_minimal.so.4:libfoo.so"}),
    (TCMALLOC, "darwin", "", FOUND, None),
    ({**TCMALLOC, "LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}, "linux", "glibc", FOUND, None),
    ({**TCMALLOC, "LD_PRELOAD": "libjemalloc.so.2"}, "linux", "glibc", FOUND, None),
    (TCMALLOC, "linux", "glibc", lambda name: None, None),               # not installed
    (TCMALLOC, "linux", "glibc", {"tcmalloc": "libtcmalloc.so.4"}.get,
     {"LD_PRELOAD": "libtcmalloc.so.4"}),
])
def test_restart_environment(environ, system, libc, find, expected):
  assert allocator.restart_environment(environ, system, libc, find) == expected


def test_an_unknown_choice_is_refused():
  with pytest.raises(ValueError, match="'tcmaloc' is not an allocator choice; use one of "
                                       "glibc, tcmalloc, system"):
    allocator.restart_environment({"JEPA_JAX_MALLOC": "tcmaloc"}, "linux", "glibc", FOUND)


COMMAND = """
import os, sys
from jepa_jax.parallel import allocator
print("run", os.environ.get("MALLOC_MMAP_MAX_", "-"), os.environ.get("LD_PRELOAD", ""),
      sys.argv[1:], flush=True)
allocator.use_caching_allocator()
print("tcmalloc mapped:", "tcmalloc" in open("/proc/self/maps").read())
"""


def _command(tmp_path, script: str, args=(), **env) -> subprocess.CompletedProcess:
  path = tmp_path / "command.py"
  path.write_text(script)
  environ = {k: v for k, v in os.environ.items()
             if k not in ("LD_PRELOAD", allocator.ENV, *KEEP)}
  return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True,
                        env={**environ, "PYTHONPATH": str(ROOT), **env})


GLIBC_LINUX = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's tunables: Linux with glibc only")


@GLIBC_LINUX
def test_a_command_executes_itself_again_once_with_the_chosen_allocator(tmp_path):
  out = _command(tmp_path, COMMAND, ["--flag=1"]).stdout.splitlines()
  assert out == ["run -  ['--flag=1']", "run 0  ['--flag=1']", "tcmalloc mapped: False"]
  out = _command(tmp_path, COMMAND, JEPA_JAX_MALLOC="system").stdout.splitlines()
  assert out == ["run -  []", "tcmalloc mapped: False"]
  bad = _command(tmp_path, COMMAND, JEPA_JAX_MALLOC="jemalloc")
  assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
      "error: JEPA_JAX_MALLOC='jemalloc' is not an allocator choice; use one of glibc, "
      "tcmalloc, system (glibc is the default)"]


@pytest.mark.skipif(not sys.platform.startswith("linux")
                    or not any(map(ctypes.util.find_library, allocator.LIBRARIES)),
                    reason="tcmalloc is not installed here (Debian: libtcmalloc-minimal4)")
def test_a_command_executes_itself_again_once_with_tcmalloc(tmp_path):
  out = _command(tmp_path, COMMAND, ["--flag=1"], JEPA_JAX_MALLOC="tcmalloc").stdout
  out = out.splitlines()
  assert out[0] == "run -  ['--flag=1']"
  assert out[1].startswith("run - lib") and "tcmalloc" in out[1]
  assert out[2:] == ["tcmalloc mapped: True"]


# A step as XLA's CPU runtime takes it: one 256 MiB block of temporaries, written, freed;
# a small allocation in between (a batch, an output) as the loop makes them.
STEPS = """
import ctypes, ctypes.util, resource
from jepa_jax.parallel import allocator
allocator.use_caching_allocator()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 256 << 20
kept = []
def rss_mib():
  return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
for step in range(4):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  block = libc.malloc(SIZE)
  ctypes.memset(block, 1, SIZE)
  kept.append(libc.malloc(4096))
  libc.free(block)
  print(step, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, rss_mib())
allocator.release_free_memory()
print("released", rss_mib())
"""


@GLIBC_LINUX
def test_glibc_keeps_a_freed_block_for_the_next_step_and_releases_it(tmp_path):
  def run(**env):
    lines = _command(tmp_path, STEPS, **env).stdout.splitlines()
    steps = [tuple(map(int, line.split()[1:])) for line in lines[:4]]
    return steps, int(lines[4].split()[1])

  pages = (256 << 20) // 4096
  steps, released = run()
  assert steps[0][0] > 0.9 * pages  # the first step faults its block in
  assert all(faults < 0.01 * pages for faults, _ in steps[1:])  # then it is kept
  assert all(rss >= 256 for _, rss in steps[1:]) and released < steps[-1][1] - 200
  steps, _ = run(JEPA_JAX_MALLOC="system")  # glibc's defaults: every step faults again
  assert all(faults > 0.9 * pages for faults, _ in steps)
