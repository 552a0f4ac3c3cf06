"""PyTorch checkpoints <-> jepa_jax exports (`python -m jepa_jax.convert`, __main__.py).

  safe_load.py    read a checkpoint as tensors only (torch weights_only / safetensors)
  vit_layout.py   the timm-style ViT key layout <-> models/vit.Encoder, both directions
  timm_vit.py     timm VisionTransformer: to_jax and from_jax (export's layout)
  audiomae.py, m2d.py, dasheng.py   those projects' checkpoints -> our encoder
  importer.py     checkpoint -> the export/ every run writes
"""
