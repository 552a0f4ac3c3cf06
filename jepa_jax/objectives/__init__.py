"""Objectives: small pure modules the train loop runs without knowing which.

Each objective class is built from the config and provides
  init(rng) -> params (logically boxed, a dict of named modules)
  init_aux() -> aux: the non-trained state at the start
  loss(params, aux, batch, rng, step) -> (loss, (metrics, new_aux))
  monitors(params, aux, batch, rng, step) -> metrics: label-free collapse monitors,
      too costly for every step; the loop computes them on logging steps
  encoder / encoder_params(params): the encoder to export and evaluate
  input_transform(params, aux) -> {"scale", "shift"} per mel bin or None: a learned
      input normaliser the exported encoder's input must go through (Dasheng's BatchNorm)
  ema_subtree: name of the params entry the optimizer keeps an EMA of, or None.
  splits_batch(config) (static): whether the loss is a mean of per-example terms, so
      that the batch may run as micro-batches (training/fit.py) without changing it.
Optionally, the class's dataset_errors(config, num_examples) -> list of errors that need
the training set's size (checked once the data is resolved).
`aux` carries non-trained state (BatchNorm statistics, queues) and, under 'ema', the
EMA target the optimizer holds.
"""
import ml_collections

from jepa_jax.objectives import jepa, mae, uamix

OBJECTIVES = {"jepa": jepa.JEPA, "mae": mae.MAE, "uamix": uamix.UaMix}


def build(config: ml_collections.ConfigDict, total_steps: int = 1):
  """The objective of a config; `total_steps` feeds step-dependent schedules (the
  curriculum mask)."""
  if config.objective not in OBJECTIVES:
    raise ValueError(f"unknown objective {config.objective!r}; known: {sorted(OBJECTIVES)}")
  return OBJECTIVES[config.objective](config, total_steps)
