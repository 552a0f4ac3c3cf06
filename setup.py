"""jepa_jax: JEPA and masked-autoencoder audio representation learning in JAX/Flax."""
from setuptools import find_packages, setup

# Versions pinned to the set that installs together on Python 3.11.
CORE = [
  "jax==0.10.2",
  "jaxlib==0.10.2",
  "flax==0.12.8",
  "optax==0.2.8",
  "orbax-checkpoint==0.12.8",
  "grain==0.2.18",
  "librosa==0.11.0",
  "ml-collections==1.1.0",
  "tensorflow-datasets==4.9.10",
  "absl-py>=2.1",
  "numpy>=1.26",
  "soundfile>=0.12",
  "tensorboardX>=2.6",
  "tqdm>=4.66",
  "scipy>=1.11",       # evaluation scores (d-prime); librosa needs it too
  "matplotlib>=3.8",  # mask pictures, evaluation bar chart
]

setup(
  name="jepa_jax",
  version="0.1.0",
  description="Self-supervised audio representation learning (Audio-JEPA, A-JEPA, "
  "Dasheng MAE, uaMix-MAE) in JAX/Flax.",
  python_requires=">=3.11,<3.12",
  packages=find_packages(include=["jepa_jax", "jepa_jax.*", "data_pipelines", "data_pipelines.*"]),
  install_requires=CORE,
  extras_require={
    "test": ["pytest>=8", "scikit-learn>=1.4"],
    "dev": ["pytest>=8", "scikit-learn>=1.4", "ruff"],
    "notebooks": ["jupyter"],
    "torch": ["torch==2.13.0"],
  },
)
