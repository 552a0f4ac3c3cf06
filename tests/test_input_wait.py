"""The train loop counts the host time spent getting batches: in all
(timings["input_wait"]) and per log interval (metrics.jsonl)."""
import json
import time

import pytest

from jepa_jax.training import datasets, loop
from tests.tiny import tiny_config

DELAY_S = 0.05  # added to every batch, so the count has a known floor


@pytest.mark.slow
def test_input_wait_counts_a_slow_pipeline(monkeypatch, tmp_path):
  real = datasets.train_dataset

  def slow(b):
    time.sleep(DELAY_S)
    return b

  monkeypatch.setattr(datasets, "train_dataset", lambda *a: real(*a).map(slow))
  result = loop.train(tiny_config(checkpoint_every=100), tmp_path)
  assert result.step == 6
  wait, total = result.timings["input_wait"], result.timings["train"]
  assert 6 * DELAY_S <= wait < total
  assert result.input_wait_fraction == wait / total
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
  assert [row["step"] for row in logged] == [2, 4, 6]
  for row in logged:  # >= 2 x DELAY_S of the interval's 2 / steps_per_sec seconds
    assert 0.9 * DELAY_S * row["steps_per_sec"] <= row["input_wait_fraction"] < 1
