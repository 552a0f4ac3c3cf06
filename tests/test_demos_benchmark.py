"""benchmarks/demos.py's summary over training seeds (the README's command-(a) bar: the
seed mean of the margin, each seed's margin and its size in probe seed-stds)."""
import pytest

from benchmarks import demos


def test_margins_are_summarised_over_seeds():
  rows = [{"seed": 0, "margin": 0.106, "margin_in_seed_std": 8.3, "wall_s": 540.0},
          {"seed": 1, "margin": 0.081, "margin_in_seed_std": 4.0, "wall_s": 560.5},
          {"seed": 2, "margin": 0.125, "margin_in_seed_std": 12.1, "wall_s": 530.0}]
  s = demos.over_seeds(rows)
  assert s["seeds"] == [0, 1, 2]
  assert s["margin_mean"] == pytest.approx((0.106 + 0.081 + 0.125) / 3)
  assert (s["margin_min"], s["margin_in_seed_std_min"], s["wall_s_max"]) == (0.081, 4.0, 560.5)
