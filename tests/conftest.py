"""Test set-up: 8 simulated CPU devices and parsed absl flags, before jax initialises."""
import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402
from absl import flags  # noqa: E402

# Grain's multiprocessing reads absl flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()


@pytest.fixture(autouse=True, scope="session")
def _corpus_cache(tmp_path_factory):
  """Tiny embedded corpora are built once per test session, never in the user cache."""
  os.environ["JEPA_JAX_CACHE"] = str(tmp_path_factory.mktemp("jepa_jax_cache"))
