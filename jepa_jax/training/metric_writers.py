"""Where training metrics go: a JSONL file keyed by step, TensorBoard event files, and a
console progress line with steps/s and ETA. Only process 0 writes."""
import json
import math
import sys
import time
from pathlib import Path

from tensorboardX import SummaryWriter

from jepa_jax.parallel import distributed


class MetricWriter:
  def __init__(self, workdir: Path, resume_step: int):
    self.enabled = distributed.is_primary()
    self.path = Path(workdir) / "metrics.jsonl"
    self.tb = None
    if not self.enabled:
      return
    if self.path.exists():  # a resumed run recomputes every step after its checkpoint
      keep = [r for r in records(self.path) if r.get("step", math.inf) <= resume_step]
      self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))
    self.tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in metrics.items()}
    with self.path.open("a") as f:
      f.write(json.dumps({"step": step, **values}) + "\n")
    for k, v in values.items():
      self.tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def records(path: Path) -> list[dict]:
  """The records of a metrics.jsonl, in order, less any line that is not one whole JSON
  record (a write cut short by a kill: the run resumes from its checkpoint anyway)."""
  out = []
  for line in path.read_text(errors="replace").splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(record, dict):
      out.append(record)
  return out


def logged(workdir: str | Path) -> list[dict]:
  """Every record of a workdir's metrics.jsonl ({"step": ..., "loss": ..., ...}), in
  order; [] where nothing was logged."""
  path = Path(workdir) / "metrics.jsonl"
  return records(path) if path.exists() else []


def last_logged(workdir: str | Path) -> dict:
  """The last record of a workdir's metrics.jsonl, or {} where nothing was logged: what a
  run resumed with no step left to run last logged."""
  records = logged(workdir)
  return records[-1] if records else {}


DAY_S = 86_400


def duration(seconds: float) -> str:
  """'4m40s', '3h05m', '2d07h'."""
  if not math.isfinite(seconds):
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  d, h = divmod(h, 24)
  return f"{d}d{h:02d}h" if d else f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
  """'step 120/1000 loss 0.53 | 3.1 steps/s | ETA 4m40s' on stderr."""

  def __init__(self, start_step: int, total_steps: int):
    self.total = total_steps
    self.last_step, self.last_time = start_step, time.perf_counter()

  def update(self, step: int, metrics: dict) -> float:
    now = time.perf_counter()
    rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.last_step, self.last_time = step, now
    if distributed.is_primary():
      shown = " ".join(f"{k} {float(metrics[k]):.4g}" for k in ("loss", "lr", "tau")
                       if k in metrics)
      eta = (self.total - step) / rate if rate > 0 else float("inf")
      print(f"step {step}/{self.total} {shown} | {rate:.2f} steps/s | ETA {duration(eta)}",
            file=sys.stderr, flush=True)
    return rate

  def first_step(self, step: int, seconds: float) -> None:
    """As soon as the run's first step is done: its time and the whole run's ETA (a paper
    recipe's step takes minutes on a CPU: no waiting for log_every); past a day, a line
    on how to make it shorter. The run goes on either way."""
    if not distributed.is_primary():
      return
    eta = (self.total - step) * seconds
    print(f"step {step}/{self.total} took {seconds:.1f} s (with one-time start-up; the "
          f"progress lines refine it) | ETA {duration(eta)} for the whole run",
          file=sys.stderr, flush=True)
    if eta > DAY_S:
      print(f"at this speed the run takes {duration(eta)}: for a run that ends today use "
            f"the recipe's :demo variant (e.g. --config=configs/ajepa.py:demo), or more "
            f"devices (README, 'Scale'); going on", file=sys.stderr, flush=True)
