"""Evaluation results on disk: RUN/eval/results.json (merged across calls), a markdown
table and a bar chart."""
import json
from pathlib import Path

import numpy as np

from jepa_jax.evaluation import frozen

RESULTS_DIR = "eval"


def _cell(result: dict, metric: str) -> str:
  s = result["scores"][metric]
  if "ci95" in s:
    return f"{s['mean']:.3f} ± {s['ci95']:.3f} (95 % CI)"
  # One value (k-NN has no seeds): no spread to show.
  return f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if len(s["per_seed"]) > 1 else "")


def rows(results: dict):
  """(task, protocol, metric, {feature set: result}) for every score in `results`."""
  for task, by_protocol in results.items():
    for protocol, by_set in by_protocol.items():
      metrics = next(iter(by_set.values()))["scores"]
      for metric in metrics:
        yield task, protocol, metric, by_set


def _columns(groups) -> list[str]:
  """The feature sets of (task, protocol, metric, by_set) rows: the trained encoder first."""
  return sorted({fs for *_, by_set in groups for fs in by_set},
                key=lambda s: (s != "trained", s))


def markdown(results: dict) -> str:
  sets = _columns(rows(results))
  lines = ["| task | protocol | metric | " + " | ".join(sets) + " |",
           "|---|---|---|" + "---|" * len(sets)]
  for task, protocol, metric, by_set in rows(results):
    cells = [_cell(by_set[fs], metric) if fs in by_set else "" for fs in sets]
    lines.append(f"| {task} | {protocol} | {metric} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def bar_chart(results: dict, path: Path) -> None:
  """One group of bars per (task, protocol, score), one bar per feature set; d-prime,
  on another scale than the [0, 1] scores, is left to the table."""
  # lazy: the Agg backend is chosen only when a picture is drawn, never on import (that
  # would change the backend of a notebook that imports the package)
  import matplotlib  # lazy: see above
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # lazy: after the backend is chosen
  groups = [r for r in rows(results) if r[2] != "d_prime"]
  sets = [fs for fs in _columns(groups) if not fs.startswith(frozen.difference_name(""))]
  width = 0.8 / len(sets)
  fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(groups)), 4))
  for j, fs in enumerate(sets):
    means = [g[3][fs]["scores"][g[2]]["mean"] if fs in g[3] else np.nan for g in groups]
    errs = [(lambda s: s.get("ci95", s.get("std", 0.0)))(g[3][fs]["scores"][g[2]])
            if fs in g[3] else 0.0 for g in groups]
    ax.bar(np.arange(len(groups)) + (j - (len(sets) - 1) / 2) * width, means, width,
           yerr=errs, capsize=2, label=fs)
  ax.set_xticks(np.arange(len(groups)))
  ax.set_xticklabels([f"{t}\n{p}\n{m}" for t, p, m, _ in groups], fontsize=7)
  ax.set_ylim(0, 1)
  ax.set_ylabel("score")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _merge(path: Path, new: dict) -> dict:
  merged = json.loads(path.read_text()) if path.is_file() else {}
  for task, by_protocol in new.items():
    for protocol, by_set in by_protocol.items():
      merged.setdefault(task, {}).setdefault(protocol, {}).update(by_set)
  return merged


def write_results(workdir: str | Path, results: dict, chart: bool) -> dict:
  """Merge into RUN/eval/results.json, render results.md (and results.png)."""
  out = Path(workdir).absolute() / RESULTS_DIR
  out.mkdir(parents=True, exist_ok=True)
  merged = _merge(out / "results.json", results)
  tmp = out / "results.json.tmp"
  tmp.write_text(json.dumps(merged, indent=2))
  tmp.rename(out / "results.json")
  (out / "results.md").write_text(markdown(merged))
  if chart:
    bar_chart(results, out / "results.png")
  return merged
