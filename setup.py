"""jepa_jax: JEPA and masked-autoencoder audio representation learning in JAX/Flax."""
from setuptools import find_packages, setup

# Versions pinned to one set that installs together on Python 3.11, 3.12 and 3.13 (README,
# "Install": what each resolves; CI runs 3.11). The accelerator wheels go with this jaxlib:
# pip install "jax[cuda12]==0.10.2" (NVIDIA GPU) or "jax[tpu]==0.10.2" (TPU).
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
  python_requires=">=3.11,<3.14",
  packages=find_packages(include=["jepa_jax", "jepa_jax.*", "data_pipelines", "data_pipelines.*"]),
  install_requires=CORE,
  extras_require={
    # The torch extra too, so that CI runs the PyTorch parity tests (jepa_jax/convert), and
    # nnAudio (torch only) for M2D's front end (tests/test_data_frontends.py).
    "test": ["pytest>=8", "pytest-xdist>=3.6", "scikit-learn>=1.4", "torch==2.14.1",
             "torchvision==0.29.1", "timm==1.0.31", "safetensors", "nnAudio==0.3.4"],
    "dev": ["pytest>=8", "pytest-xdist>=3.6", "scikit-learn>=1.4", "ruff"],
    "notebooks": ["jupyter"],
    "plots": ["scikit-learn>=1.4"],  # t-SNE embedding maps (else PCA)
    "torch": ["torch==2.14.1", "torchvision==0.29.1", "timm==1.0.31", "safetensors"],
  },
)
