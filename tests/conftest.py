"""Test set-up: 8 simulated CPU devices, a compilation cache shared by the run, and parsed
absl flags, before jax initialises."""
import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Many tests compile the same tiny steps, in this process and in the commands they start:
# one XLA cache for the whole run (pytest-xdist's workers and the commands inherit the
# environment of the process that made it) took tests/test_train.py from 133 s to 82 s.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jepa_jax_tests_xla_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # noqa: E402
from absl import flags  # noqa: E402

# Grain's multiprocessing reads absl flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()


@pytest.fixture(autouse=True, scope="session")
def _corpus_cache(tmp_path_factory):
  """Tiny embedded corpora are built once per test session, never in the user cache."""
  os.environ["JEPA_JAX_CACHE"] = str(tmp_path_factory.mktemp("jepa_jax_cache"))
