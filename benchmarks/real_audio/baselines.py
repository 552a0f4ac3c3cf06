"""The benchmark's two fixed baselines on every task: log-mel and MFCC statistics
(features.py), each through StandardScaler and LogisticRegression(C=1, max_iter=2000),
trained on four folds and tested on the fifth, for each of the 5 grouped folds.

    python benchmarks/real_audio/baselines.py [--root=DIR] [--out=JSON]

--root: a built benchmark (default: the cached build, built first if missing:
build.py). Each clip is cut to its task's unit_sec from the start, as the evaluation
does, and not padded. Prints per task the accuracy mean +- std over folds (std over the
5 folds, ddof 0) and the average over tasks; writes JSON (--out).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from benchmarks.real_audio import build, features  # noqa: E402
from data_pipelines import audio_io, cli_flags  # noqa: E402
from data_pipelines import tasks as tasks_lib  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "real_audio_baselines.json"


def fold_accuracies(x: np.ndarray, labels: list[str], folds: list[str]) -> list[float]:
  """Test accuracy on each fold (sorted by name) of the scaler + logistic regression
  trained on the other folds."""
  y, folds = np.asarray(labels), np.asarray(folds)
  out = []
  for fold in sorted(set(folds)):
    test = folds == fold
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    model.fit(x[~test], y[~test])
    out.append(float((model.predict(x[test]) == y[test]).mean()))
  return out


def task_features(task_dir: Path) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
  """{feature name: (clips, dims)}, labels and folds of a task folder."""
  task = tasks_lib.read_task(task_dir)
  unit_sec = json.loads((task_dir / "task.json").read_text())["unit_sec"]
  samples = round(unit_sec * features.SAMPLE_RATE)
  waves = [audio_io.load_audio(row.path, features.SAMPLE_RATE)[:samples] for row in task.rows]
  feats = {name: np.stack([fn(w) for w in waves]) for name, fn in features.FEATURES.items()}
  return feats, [row.labels[0] for row in task.rows], [row.fold for row in task.rows]


def run(root: Path) -> dict:
  results = {}
  for task_dir in sorted(p for p in (root / "tasks").iterdir() if p.is_dir()):
    started = time.perf_counter()
    feats, labels, folds = task_features(task_dir)
    results[task_dir.name] = {"clips": len(labels), "classes": len(set(labels)), **{
        name: {"fold_accuracy": acc, "mean": float(np.mean(acc)), "std": float(np.std(acc))}
        for name, acc in ((n, fold_accuracies(x, labels, folds)) for n, x in feats.items())},
        "seconds": round(time.perf_counter() - started, 1)}
  average = {name: float(np.mean([r[name]["mean"] for r in results.values()]))
             for name in features.FEATURES}
  return {"root": str(root), "tasks": results, "average": average}


def table(result: dict) -> str:
  names = list(features.FEATURES)
  lines = [f"{'task':20s} {'clips':>6s} {'classes':>7s} " +
           " ".join(f"{n + ' acc %':>15s}" for n in names)]
  for task, r in result["tasks"].items():
    lines.append(f"{task:20s} {r['clips']:6d} {r['classes']:7d} " + " ".join(
        f"{100 * r[n]['mean']:8.1f} +- {100 * r[n]['std']:4.1f}" for n in names))
  lines.append(f"{'average':20s} {'':6s} {'':7s} " +
               " ".join(f"{100 * result['average'][n]:8.1f}        " for n in names))
  return "\n".join(lines)


def _define_flags(values: flags.FlagValues, command_line: list[str]) -> None:
  del command_line
  flags.DEFINE_string("root", None, "a built benchmark folder (default: the cached build)",
                      flag_values=values)
  flags.DEFINE_string("out", str(DEFAULT_OUT), "JSON file written", flag_values=values)


def main(argv: list[str] | None = None) -> int:
  values = cli_flags.parse(argv, _define_flags, __doc__)
  try:
    root = Path(values.root) if values.root else build.ensure_benchmark()
    if not (root / "tasks").is_dir():
      raise FileNotFoundError(f"{root} holds no tasks/ folder; give a folder build.py made")
    result = run(root)
  except (FileNotFoundError, ValueError, RuntimeError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  print(table(result))
  Path(values.out).parent.mkdir(parents=True, exist_ok=True)
  Path(values.out).write_text(json.dumps(result, indent=1) + "\n")
  print(f"wrote {values.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
