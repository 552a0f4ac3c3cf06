"""metrics.jsonl (jepa_jax/training/metric_writers.py): read back and resumed."""
from jepa_jax.training import metric_writers


def test_a_metrics_line_cut_by_a_kill_is_skipped_when_read_and_when_resuming(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 50, "loss": 0.5}\n{"step": 100, "loss": 0.4}\n{"step": 150, "lo')
  assert metric_writers.logged(tmp_path) == [{"step": 50, "loss": 0.5},
                                             {"step": 100, "loss": 0.4}]
  assert metric_writers.last_logged(tmp_path) == {"step": 100, "loss": 0.4}
  writer = metric_writers.MetricWriter(tmp_path, resume_step=60)
  writer.write(100, {"loss": 0.45})
  writer.close()
  assert metric_writers.logged(tmp_path) == [{"step": 50, "loss": 0.5},
                                             {"step": 100, "loss": 0.45}]
