"""Fault drills: the faults a long pretraining run meets, each provoked on a small run of
the main command (started as a user starts it, one process per run) and checked.

    python benchmarks/drills.py                        # the default drill (~20-30 min, 2 cores)
    python benchmarks/drills.py --kills=1 --terms=1 --bad_configs=3 --skip=disk_full  # fast

Trials (the run: configs/audio_jepa.py:demo shrunk to a few seconds, 24 steps, a checkpoint
every 3; it is first run uninterrupted as the reference):
  kill        SIGKILL at a random moment of training, then the same command again: the
              logged losses (the last value logged for each step), the exported parameters
              (bitwise, CPU) and the summary line's steps and final loss equal the reference's;
  term        SIGTERM at a random moment: exit 130 with a checkpoint, then the same;
  corrupt     bytes flipped in every data file of the newest checkpoint of a finished run
              whose export was removed: one warning line, the previous checkpoint restored,
              the export equal to the reference's;
  concurrent  a second run started on the workdir of a running one: exit 2 with one line
              naming the holder, the first run's result unchanged;
  disk_full   the workdir on a small tmpfs (needs root to mount it), filled so that the
              second checkpoint cannot be written: exit 2 with one line naming the folder,
              the first checkpoint intact; once space is freed the same command finishes
              and equals the reference;
  nan         a poisoned batch (NaN input at one step, injected by this script): exit 2 with
              one line naming the last good checkpoint, nothing saved after it;
  bad_config  wrong settings, each: exit 2, one line, nothing written.
Prints a table (trials passed per fault) and writes JSON (--out).
"""
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

flags.DEFINE_integer("kills", 20, "SIGKILL trials")
flags.DEFINE_integer("terms", 5, "SIGTERM trials")
flags.DEFINE_integer("bad_configs", 20, "how many of BAD_CONFIGS to try (in order)")
flags.DEFINE_list("skip", [], "faults not to drill: kill, term, corrupt, concurrent, disk_full, "
                  "nan, bad_config")
flags.DEFINE_string("root", "/tmp/jepa_jax_drills", "scratch folder (emptied first)")
flags.DEFINE_integer("seed", 0, "seed of the random kill moments")
flags.DEFINE_string("out", "benchmarks/results/drills.json", "JSON output")
FLAGS = flags.FLAGS

CONFIG = "--config=configs/audio_jepa.py:demo"
# Shrunk like tests/tiny.py, 4 epochs of 6 steps; no probe.
RUN_FLAGS = ["--config.data.frames=64", "--config.data.synthetic.num_pretrain=48",
             "--config.data.synthetic.num_probe=36", "--config.model.width=32",
             "--config.model.depth=1", "--config.model.num_heads=2",
             "--config.model.mlp_dim=64", "--config.predictor.width=16",
             "--config.predictor.depth=1", "--config.predictor.num_heads=2",
             "--config.predictor.mlp_dim=32", "--config.train.batch_size=8",
             "--config.train.epochs=4.0", "--config.optim.warmup_epochs=0.25",
             "--config.train.checkpoint_every=3", "--config.train.log_every=1",
             "--config.train.keep_checkpoints=2", "--probe=false"]
TOTAL_STEPS = 24
# (what is wrong, the flags): each must stop before anything is written.
BAD_CONFIGS = [
    ("batch size 0", ["--config.train.batch_size=0"]),
    ("negative batch size", ["--config.train.batch_size=-8"]),
    ("micro-batches that do not divide the batch", ["--config.train.micro_batches=3"]),
    ("width not divisible by heads", ["--config.model.width=33"]),
    ("zero heads", ["--config.model.num_heads=0"]),
    ("fewer frames than a patch", ["--config.data.frames=8"]),
    ("negative learning rate", ["--config.optim.base_lr=-1"]),
    ("zero epochs", ["--config.train.epochs=0"]),
    ("unknown attention implementation", ["--config.model.attention_impl=fastest"]),
    ("unknown front end", ["--config.data.frontend=mfcc"]),
    ("predictor depth 0", ["--config.predictor.depth=0"]),
    ("missing config file", ["--config=configs/nonexistent.py"]),
    ("unknown recipe variant", ["--config=configs/ajepa.py:fast"]),
    ("model axis larger than the devices", ["--config.mesh.model=3"]),
    ("log every 0 steps", ["--config.train.log_every=0"]),
    ("keep no checkpoint", ["--config.train.keep_checkpoints=0"]),
    ("unknown normalisation", ["--config.data.normalization=global"]),
    ("warm start from a missing folder", ["--config.init_from=/nonexistent/run"]),
    ("negative gain jitter", ["--config.data.gain_jitter_db=-3"]),
    ("unknown field", ["--config.train.batchsize=8"]),
]


@dataclasses.dataclass
class Run:
  """A finished (or stopped) command: its exit code and output."""
  code: int
  out: str
  err: str

  def last_json(self) -> dict:
    return json.loads(self.out.strip().splitlines()[-1])

  def err_lines(self) -> list[str]:
    return [line for line in self.err.strip().splitlines() if line.strip()]


def command(workdir: Path, extra=(), fault: str = "") -> list[str]:
  """The main command on `workdir`; with `fault`, run through this script's child mode,
  which injects it first (the NaN drill)."""
  head = [sys.executable, str(Path(__file__).resolve()), "--child_fault=" + fault, "--"] \
      if fault else [sys.executable, "-m", "jepa_jax.main"]
  return [*head, CONFIG, f"--workdir={workdir}", *RUN_FLAGS, *extra]


def environment() -> dict:
  # Compiled steps are reused between the drill's many short runs of one config.
  return {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(Path(FLAGS.root) / "xla_cache"),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def run(workdir: Path, extra=(), fault: str = "", interrupt=None) -> Run:
  """Run the command to its end; `interrupt(process, started)` may signal it, where
  `started` is set once its first step is done."""
  process = subprocess.Popen(command(workdir, extra, fault), cwd=ROOT, env=environment(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  started, err = threading.Event(), []

  def read_err():
    for line in process.stderr:
      err.append(line)
      if line.startswith("step 1/") or line.startswith("resumed from"):
        started.set()
  reader = threading.Thread(target=read_err, daemon=True)
  reader.start()
  if interrupt is not None:
    threading.Thread(target=interrupt, args=(process, started), daemon=True).start()
  out = process.stdout.read()
  process.wait()
  reader.join()
  return Run(process.returncode, out, "".join(err))


def signal_after(signum: int, delay_s: float):
  def interrupt(process, started):
    if started.wait(600):
      time.sleep(delay_s)
      if process.poll() is None:
        process.send_signal(signum)
  return interrupt


def losses(workdir: Path) -> dict[int, float]:
  """The last loss logged for each step (a resumed run logs again the steps after its
  checkpoint)."""
  out = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    out[row["step"]] = row["loss"]
  return out


def params(workdir: Path) -> dict:
  import jax  # noqa: PLC0415 - only the comparing parent needs it
  import numpy as np  # noqa: PLC0415

  from jepa_jax import export  # noqa: PLC0415
  _, _, tree, _ = export.load_encoder(workdir / "export")
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


@dataclasses.dataclass
class Reference:
  losses: dict
  params: dict
  summary: dict
  train_s: float


def same_as(reference: Reference, workdir: Path, final: Run) -> list[str]:
  """What differs from the uninterrupted run ([] when nothing)."""
  problems = []
  if final.code != 0:
    return [f"exit {final.code}: {final.err_lines()[-1:]}"]
  if losses(workdir) != reference.losses:
    problems.append("logged losses differ")
  mine = params(workdir)
  if mine.keys() != reference.params.keys() or any(
      mine[k].tobytes() != reference.params[k].tobytes() for k in mine):
    problems.append("exported parameters differ")
  summary = {k: final.last_json()[k] for k in ("steps", "final_loss")}
  if summary != reference.summary:
    problems.append(f"summary {summary} != {reference.summary}")
  return problems


def one_line_exit_2(result: Run, starts_with: str = "error: ") -> list[str]:
  lines = result.err_lines()
  problems = []
  if result.code != 2:
    problems.append(f"exit code {result.code}")
  if any("Traceback" in line for line in lines):
    problems.append(f"a traceback: {' | '.join(lines[-6:])[-600:]}")
  errors = [line for line in lines if line.startswith("error: ")]
  if len(errors) != 1 or not lines or not lines[-1].startswith(starts_with):
    problems.append(f"not one closing error line: {lines[-3:]}")
  return problems


def drill_kill(reference, workdir, rng, signum):
  import signal  # noqa: PLC0415
  # Mostly within the loop (train_s: the reference's loop); some land after its end.
  delay = rng.uniform(0, reference.train_s * 0.9)
  first = run(workdir, interrupt=signal_after(signum, delay))
  expected = {signal.SIGKILL: -signal.SIGKILL, signal.SIGTERM: 130}[signum]
  # After the summary line nothing is left to lose: a signal then ends the process as
  # its default action does.
  done = bool(first.out.strip())
  ok = first.code in (expected, 0) or (done and first.code == -signum)
  problems = [] if ok else [f"first run exit {first.code}"]
  final = run(workdir)
  detail = (f"signal after {delay:.2f} s: first run exit {first.code}"
            + (" (after its summary)" if done and first.code == -signum else ""))
  return problems + same_as(reference, workdir, final), detail


def flip_bytes(step_dir: Path) -> None:
  for path in (step_dir / "state").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      data = bytearray(path.read_bytes())
      middle = len(data) // 2
      data[middle:middle + 8] = bytes(b ^ 0x5A for b in data[middle:middle + 8])
      path.write_bytes(bytes(data))


def drill_corrupt(reference, workdir):
  first = run(workdir)
  newest = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  flip_bytes(workdir / "checkpoints" / str(newest))
  shutil.rmtree(workdir / "export")
  final = run(workdir)
  warnings = [line for line in final.err_lines() if line.startswith("warning:")]
  problems = [] if first.code == 0 else [f"first run exit {first.code}"]
  if len(warnings) != 1 or f"step {newest}" not in warnings[0]:
    problems.append(f"warnings: {warnings}")
  if not (workdir / "corrupt" / str(newest)).is_dir():
    problems.append("the corrupt checkpoint was not set aside")
  return problems + same_as(reference, workdir, final), (warnings or [""])[0][:120]


def drill_concurrent(reference, workdir):
  """The second run starts while the first holds the workdir: the first is paused
  (SIGSTOP, a live but stalled job) from the moment its lock exists until the second
  has answered, then finishes."""
  import signal  # noqa: PLC0415
  second = {}

  def start_second(process, started):
    del started
    while process.poll() is None and not (workdir / "run.lock").exists():
      time.sleep(0.05)
    process.send_signal(signal.SIGSTOP)
    try:
      second["run"] = run(workdir)
    finally:
      process.send_signal(signal.SIGCONT)
  first = run(workdir, interrupt=start_second)
  problems = same_as(reference, workdir, first)
  if "run" not in second:
    return problems + ["the second run never started"], ""
  problems += one_line_exit_2(second["run"], "error: ")
  line = (second["run"].err_lines() or [""])[-1]
  if "is in use by run" not in line:
    problems.append(f"the refusal does not name the holder: {line}")
  return problems, line[:120]


def drill_disk_full(reference, workdir):
  """The workdir on a tmpfs: what the run writes before its second checkpoint (measured
  on the reference), plus half a checkpoint, is all the space there is."""
  mount = workdir.parent / "small_disk"
  mount.mkdir(parents=True, exist_ok=True)
  # Space the reference run's files take: one checkpoint, and the rest (no export).
  ref_dir = Path(FLAGS.root) / "reference"
  checkpoint_bytes = max(_size(p) for p in (ref_dir / "checkpoints").iterdir()
                         if p.name.isdigit())
  rest_bytes = _size(ref_dir) - _size(ref_dir / "checkpoints") - _size(ref_dir / "export")
  size_mib = 64
  if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(mount)],
                    capture_output=True).returncode != 0:
    return None, "not run: mounting a tmpfs needs root"
  try:
    target = mount / "run"
    target.mkdir()
    # Leave room for the run's other files and 1.5 checkpoints, then the disk is full.
    free = shutil.disk_usage(mount).free
    room = rest_bytes + int(1.5 * checkpoint_bytes)
    with open(mount / "filler", "wb") as f:
      f.truncate(0)
      f.write(b"\0" * max(free - room, 0))
    full = run(target)
    (workdir.parent / "disk_full_stderr.txt").write_text(full.err)
    problems = one_line_exit_2(full)
    line = (full.err_lines() or [""])[-1]
    if "no space left on the disk of" not in line:
      problems.append(f"not the disk-full line: {line[:120]}")
    kept = sorted(int(p.name) for p in (target / "checkpoints").iterdir() if p.name.isdigit())
    if not kept:
      problems.append("no checkpoint intact")
    (mount / "filler").unlink()
    final = run(target)
    shutil.copytree(target, workdir)
    return problems + same_as(reference, workdir, final), \
        f"stopped with checkpoints {kept}: {line[:100]}"
  finally:
    subprocess.run(["umount", str(mount)], capture_output=True)


def _size(path: Path) -> int:
  """Bytes allocated on disk (whole blocks: a tmpfs charges a page per small file)."""
  return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def drill_nan(workdir):
  result = run(workdir, fault="nan:8")
  problems = one_line_exit_2(result)
  line = (result.err_lines() or [""])[-1]
  if "loss became nan" not in line or "checkpoint (step 6)" not in line:
    problems.append(f"does not name the last good checkpoint: {line[:160]}")
  kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  if kept[-1:] != [6]:
    problems.append(f"checkpoints after the poisoned step: {kept}")
  return problems, line[:120]


def drill_bad_config(workdir, flags_):
  extra = [f for f in flags_ if not f.startswith("--config=")]
  config = next((f for f in flags_ if f.startswith("--config=")), CONFIG)
  done = subprocess.run([sys.executable, "-m", "jepa_jax.main", config, f"--workdir={workdir}",
                         *[f for f in RUN_FLAGS if f.split("=")[0] not in
                           {e.split("=")[0] for e in extra}], *extra],
                        cwd=ROOT, env=environment(), capture_output=True, text=True)
  result = Run(done.returncode, done.stdout, done.stderr)
  problems = one_line_exit_2(result)
  if workdir.exists():
    problems.append("something was written")
  return problems, (result.err_lines() or [""])[-1][:120]


def child(fault: str, argv: list[str]) -> None:
  """Run jepa_jax.main with `fault` injected: 'nan:K' poisons the K-th batch."""
  import jax  # noqa: PLC0415 - the child alone patches
  import numpy as np  # noqa: PLC0415
  kind, _, at = fault.partition(":")
  assert kind == "nan", fault
  real, seen = jax.make_array_from_process_local_data, []

  def poisoned(sharding, local, *args, **kwargs):
    if np.ndim(local) == 3:
      seen.append(1)
      if len(seen) == int(at):
        local = np.full_like(local, np.nan)
    return real(sharding, local, *args, **kwargs)
  jax.make_array_from_process_local_data = poisoned
  from jepa_jax import main as entry  # noqa: PLC0415
  entry.main(argv)


def main(_):
  root = Path(FLAGS.root)
  shutil.rmtree(root, ignore_errors=True)
  root.mkdir(parents=True)
  rng = random.Random(FLAGS.seed)
  t0 = time.perf_counter()
  ref_run = run(root / "reference")
  if ref_run.code != 0:
    raise SystemExit(f"the reference run failed:\n{ref_run.err[-3000:]}")
  reference = Reference(losses(root / "reference"), params(root / "reference"),
                        {k: ref_run.last_json()[k] for k in ("steps", "final_loss")},
                        ref_run.last_json()["timings_s"]["train"])
  assert sorted(reference.losses) == list(range(1, TOTAL_STEPS + 1))
  import signal  # noqa: PLC0415
  plan = [("kill", lambda w: drill_kill(reference, w, rng, signal.SIGKILL))] * FLAGS.kills
  plan += [("term", lambda w: drill_kill(reference, w, rng, signal.SIGTERM))] * FLAGS.terms
  plan += [("corrupt", lambda w: drill_corrupt(reference, w)),
           ("concurrent", lambda w: drill_concurrent(reference, w)),
           ("disk_full", lambda w: drill_disk_full(reference, w)),
           ("nan", drill_nan)]
  plan += [("bad_config", lambda w, f=f: drill_bad_config(w, f))
           for _, f in BAD_CONFIGS[:FLAGS.bad_configs]]
  trials = []
  for i, (fault, drill) in enumerate(p for p in plan if p[0] not in FLAGS.skip):
    t = time.perf_counter()
    problems, detail = drill(root / f"{fault}_{i}")
    trials.append({"fault": fault, "passed": problems == [] if problems is not None else None,
                   "problems": problems or [], "detail": detail,
                   "seconds": round(time.perf_counter() - t, 1)})
    status = {True: "passed", False: "FAILED", None: "not run"}[trials[-1]["passed"]]
    print(f"{fault:10s} {status:7s} {trials[-1]['seconds']:6.1f} s  {detail}"
          + (f"  {problems}" if problems else ""), flush=True)
  table = {}
  for t in trials:
    row = table.setdefault(t["fault"], {"trials": 0, "passed": 0, "not_run": 0, "seconds": 0.0})
    row["trials"] += 1
    row["passed"] += t["passed"] is True
    row["not_run"] += t["passed"] is None
    row["seconds"] += t["seconds"]
  total = time.perf_counter() - t0
  print("\n| fault | trials | passed | seconds |\n|---|---|---|---|")
  for fault, row in table.items():
    print(f"| {fault} | {row['trials']} | {row['passed']}"
          + (f" ({row['not_run']} not run)" if row["not_run"] else "")
          + f" | {row['seconds']:.0f} |")
  print(f"\nall {len(trials)} trials in {total / 60:.1f} min (reference run included)")
  out = Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"trials": trials, "table": table, "minutes": total / 60},
                            indent=2))
  failed = [t for t in trials if t["passed"] is False]
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  if len(sys.argv) > 1 and sys.argv[1].startswith("--child_fault="):
    child(sys.argv[1].split("=", 1)[1], sys.argv[3:])
  else:
    flags.DEFINE_string("child_fault", "", "internal: run the main command with a fault")
    app.run(main)
