"""The commands' optional caching allocator (JEPA_JAX_MALLOC=tcmalloc): when they execute
themselves again with tcmalloc preloaded, and that they do so once, keeping their
arguments."""
import ctypes.util
import os
import subprocess
import sys

import pytest

from jepa_jax.parallel import allocator
from tests.tiny import ROOT

FOUND = {"tcmalloc_minimal": "libtcmalloc_minimal.so.4"}.get


ASKED = {"JEPA_JAX_MALLOC": "tcmalloc"}


@pytest.mark.parametrize("environ, platform, find, expected", [
    (ASKED, "linux", FOUND, "libtcmalloc_minimal.so.4"),
    ({**ASKED, "LD_PRELOAD": "libfoo.so"}, "linux", FOUND, "libtcmalloc_minimal.so.4:libfoo.so"),
    ({}, "linux", FOUND, None),                                            # not asked
    ({"JEPA_JAX_MALLOC": "system"}, "linux", FOUND, None),
    (ASKED, "darwin", FOUND, None),
    ({**ASKED, "LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}, "linux", FOUND, None),  # Colab's
    ({**ASKED, "LD_PRELOAD": "libjemalloc.so.2"}, "linux", FOUND, None),
    (ASKED, "linux", lambda name: None, None),                             # not installed
    (ASKED, "linux", {"tcmalloc": "libtcmalloc.so.4"}.get, "libtcmalloc.so.4"),
])
def test_preload_plan(environ, platform, find, expected):
  assert allocator.preload_plan(environ, platform, find) == expected


SCRIPT = """
import os, sys
from jepa_jax.parallel import allocator
print("run", os.environ.get("LD_PRELOAD", ""), sys.argv[1:], flush=True)
allocator.use_caching_allocator()
maps = open("/proc/self/maps").read()
print("tcmalloc mapped:", "tcmalloc" in maps)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux")
                    or not any(map(ctypes.util.find_library, allocator.LIBRARIES)),
                    reason="tcmalloc is not installed here (Debian: libtcmalloc-minimal4)")
def test_a_command_executes_itself_again_once_with_tcmalloc(tmp_path):
  script = tmp_path / "command.py"
  script.write_text(SCRIPT)
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV)}
  env["PYTHONPATH"] = str(ROOT)
  out = subprocess.run([sys.executable, str(script)], env=env, check=True,
                       capture_output=True, text=True).stdout.splitlines()
  assert out == ["run  []", "tcmalloc mapped: False"]  # the default: the system's
  env[allocator.ENV] = "tcmalloc"
  out = subprocess.run([sys.executable, str(script), "--flag=1"], env=env, check=True,
                       capture_output=True, text=True).stdout.splitlines()
  assert out[0] == "run  ['--flag=1']"
  assert out[1].startswith("run lib") and "tcmalloc" in out[1] and out[1].endswith("['--flag=1']")
  assert out[2:] == ["tcmalloc mapped: True"]
