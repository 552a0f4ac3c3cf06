"""Evaluation protocols against independent computations (scikit-learn, formulas), the
task sources (folders, shards, folds, unit_sec), the embedding cache and the CLI."""
import dataclasses
import json

import numpy as np
import pytest
import soundfile
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid
from tiny import tiny_config

from data_pipelines import frontends
from data_pipelines import tasks as tasks_lib
from jepa_jax import embed, evaluate, export, models
from jepa_jax.config import shapes
from jepa_jax.evaluation import embeddings, features, fewshot, knn, scores, suite, task_data

RATE = 16000


# --- scores --------------------------------------------------------------------------------

def test_average_precision_and_auc_match_scikit_learn_with_ties():
  rng = np.random.default_rng(0)
  y = (rng.random((200, 6)) < 0.3).astype(np.float32)
  s = np.round(y * 0.8 + rng.normal(size=y.shape), 1)  # rounding makes ties
  for c in range(6):
    assert scores.average_precision(s[:, c], y[:, c]) == pytest.approx(
        average_precision_score(y[:, c], s[:, c]))
    assert scores.auc(s[:, c], y[:, c]) == pytest.approx(roc_auc_score(y[:, c], s[:, c]))
  assert scores.mean_average_precision(s, y) == pytest.approx(
      average_precision_score(y, s, average="macro"))
  from scipy.stats import norm
  mean_auc = roc_auc_score(y, s, average="macro")
  assert scores.d_prime(s, y) == pytest.approx(np.sqrt(2) * norm.ppf(mean_auc))


def test_classes_without_positives_are_left_out_of_the_means():
  y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], np.float32)
  s = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.7, 0.6, 0.5]])
  assert scores.mean_average_precision(s, y) == pytest.approx(
      np.mean([average_precision_score(y[:, c], s[:, c]) for c in (0, 1)]))


# --- k-NN and few-shot ---------------------------------------------------------------------

def _blobs(n, d, classes, seed, spread=1.0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, d)) * spread
  y = rng.integers(0, classes, n)
  return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_knn_matches_scikit_learn_cosine_neighbours_with_softmax_weights():
  x, y = _blobs(500, 12, 5, 0, spread=0.8)
  votes = knn.knn_scores(x[:400], y[:400], x[400:], 5)
  ref = KNeighborsClassifier(n_neighbors=10, metric="cosine", algorithm="brute",
                             weights=lambda d: np.exp((1 - d) / 0.07)).fit(x[:400], y[:400])
  np.testing.assert_array_equal(votes.argmax(1), ref.predict(x[400:]))
  np.testing.assert_allclose(votes, ref.predict_proba(x[400:]), atol=1e-6)
  assert 0.4 < scores.accuracy(votes, y[400:]) < 1.0  # neither trivial nor broken


def test_knn_multilabel_scores_are_weighted_label_fractions():
  train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
  y = np.array([[1, 0], [1, 1], [0, 1]], np.float32)
  got = knn.knn_scores(train, y, np.array([[1.0, 0.05]]), 2, k=2)
  sim = knn.l2_normalize(train) @ knn.l2_normalize(np.array([1.0, 0.05]))
  w = np.exp(sim[:2] / 0.07) / np.exp(sim[:2] / 0.07).sum()
  np.testing.assert_allclose(got[0], [w[0] + w[1], w[1]], rtol=1e-9)


def test_fewshot_episodes_and_nearest_centroid_match_a_direct_computation():
  x, y = _blobs(300, 8, 7, 1, spread=0.7)
  episodes = fewshot.sample_episodes(y, ways=5, shots=2, queries=4, episodes=50, seed=3)
  assert episodes.shape == (50, 5, 6)
  np.testing.assert_array_equal(
      episodes, fewshot.sample_episodes(y, ways=5, shots=2, queries=4, episodes=50, seed=3))
  acc = fewshot.episode_accuracies(x, episodes, shots=2, block=7)
  z = knn.l2_normalize(x)
  for e in range(50):
    labels = y[episodes[e]]
    assert (labels == labels[:, :1]).all() and len(set(labels[:, 0])) == 5  # 5 classes
    assert len(set(episodes[e].ravel())) == 30  # all clips distinct
    support, query = episodes[e, :, :2].ravel(), episodes[e, :, 2:].ravel()
    ref = NearestCentroid().fit(z[support], y[support])
    assert acc[e] == pytest.approx((ref.predict(z[query]) == y[query]).mean())


def test_fewshot_reports_the_95_percent_interval_of_the_episode_mean():
  x, y = _blobs(400, 8, 6, 2, spread=0.6)
  got = fewshot.fewshot(x, y, ways=5, shots=1, queries=15, episodes=600, seed=0)
  acc = fewshot.episode_accuracies(
      x, fewshot.sample_episodes(y, 5, 1, 15, 600, seed=0), shots=1)
  assert got["mean"] == pytest.approx(acc.mean())
  assert got["ci95"] == pytest.approx(1.96 * acc.std(ddof=1) / np.sqrt(600))
  assert 0.2 < got["mean"] < 1.0 and got["episodes"] == 600


def test_fewshot_among_some_classes_and_the_paired_difference_of_two_feature_sets():
  x, y = _blobs(400, 8, 8, 4, spread=0.6)
  other = x + np.random.default_rng(5).normal(size=x.shape).astype(np.float32)
  kept = np.array([0, 2, 3, 5, 7])
  episodes = fewshot.sample_episodes(y, 5, 1, 15, 200, seed=1, classes=kept)
  assert set(np.unique(y[episodes])) == set(kept)
  a = fewshot.fewshot(x, y, shots=1, episodes=200, seed=1, classes=kept)
  b = fewshot.fewshot(other, y, shots=1, episodes=200, seed=1, classes=kept)
  diff = fewshot.paired_difference(x, other, y, shots=1, episodes=200, seed=1, classes=kept)
  per_episode = (fewshot.episode_accuracies(x, episodes, 1)
                 - fewshot.episode_accuracies(other, episodes, 1))
  assert diff["mean"] == pytest.approx(a["mean"] - b["mean"]) == pytest.approx(
      per_episode.mean())
  assert diff["ci95"] == pytest.approx(1.96 * per_episode.std(ddof=1) / np.sqrt(200))
  assert diff["mean"] > 0.05 and diff["ci95"] < diff["mean"]  # the noise really hurts
  with pytest.raises(ValueError, match="the task has 4 among the 4 classes asked for"):
    fewshot.sample_episodes(y, 5, 1, 15, 10, classes=kept[:4])


def test_fewshot_refuses_tasks_without_enough_classes():
  with pytest.raises(ValueError, match="need 5 classes of at least 16 clips"):
    fewshot.sample_episodes(np.repeat(np.arange(4), 30), 5, 1, 15, 10)


# --- task sources ----------------------------------------------------------------------------

def _tone(freq, seconds, rng):
  t = np.arange(int(seconds * RATE)) / RATE
  return (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.normal(size=t.size)).astype(np.float32)


FREQS = (300.0, 700.0, 1500.0, 3000.0, 5000.0)


def make_tone_task(folder, per_class=21, multilabel=False, column="split", seed=0):
  """Clips of 0.4-1.2 s; single-label: a tone of one of 5 frequencies; multi-label:
  the sum of one or two of them. Rows split 60/20/20 or spread over 3 folds."""
  rng = np.random.default_rng(seed)
  (folder / "audio").mkdir(parents=True)
  rows = []
  for i in range(per_class * len(FREQS)):
    classes = [i % len(FREQS)]
    if multilabel and rng.random() < 0.5:
      classes.append(int(rng.integers(len(FREQS))))
    classes = sorted(set(classes))
    wave = sum(_tone(FREQS[c], 1.0, rng) for c in classes)[: int(rng.uniform(0.4, 1.2) * RATE)]
    path = folder / "audio" / f"{i:04d}.wav"
    soundfile.write(path, wave, RATE)
    part = ("train", "train", "train", "valid", "test")[(i // len(FREQS)) % 5]
    rows.append(tasks_lib.TaskRow(path, tuple(f"f{c}" for c in classes),
                                  fold=str(i % 3) if column == "fold" else None,
                                  split=part if column == "split" else None))
  tasks_lib.write_task(folder, rows)
  return folder


def test_splits_from_split_and_fold_columns(tmp_path):
  split_task = task_data.read(make_tone_task(tmp_path / "s", per_class=5))
  (tr, va, te), = task_data.splits(split_task)
  assert len(tr) == 15 and len(va) == 5 and len(te) == 5 and not set(tr) & set(va)
  fold_task = task_data.read(make_tone_task(tmp_path / "f", per_class=6, column="fold"))
  splits = task_data.splits(fold_task)
  assert len(splits) == 3
  for k, (tr, va, te) in enumerate(splits):
    assert all(fold_task.folds[i] == str(k) for i in te)
    assert not (set(tr) | set(va)) & set(te) and len(tr) + len(va) + len(te) == 30
    assert len(va) == 2  # 10 % of the 20 other-fold rows held out for early stopping


def test_unit_sec_crops_from_the_start_and_pads_short_clips(tmp_path):
  folder = make_tone_task(tmp_path / "t", per_class=2)
  meta = {"frontend": frontends.get_frontend("audio_jepa").to_dict(),
          "normalization": {"mean": -5.0, "std": 4.0}, "frames": 64}
  _, whole = task_data.load_mels(folder, meta)
  (folder / "task.json").write_text(json.dumps({"unit_sec": 0.8}))
  task, cut, pads = task_data.load_clips(folder, meta)
  frames = frontends.get_frontend("audio_jepa").frames(0.8)
  assert task.unit_sec == 0.8 and {m.shape[1] for m in cut} == {frames}
  for w, c, pad in zip(whole, cut, pads):
    n = min(w.shape[1], frames)
    np.testing.assert_array_equal(c[:, :n], w[:, :n])
    assert (c[:, n:] == pad).all()
  assert task.fingerprint != task_data.read(folder, unit_sec=0.5).fingerprint
  (folder / "task.json").write_text(json.dumps({"unit_sec": -1}))
  with pytest.raises(ValueError, match="positive number of seconds"):
    task_data.read(folder)


def test_multilabel_targets_are_multi_hot(tmp_path):
  task = task_data.read(make_tone_task(tmp_path / "m", per_class=4, multilabel=True))
  y = task.targets()
  assert task.multilabel and y.shape == (20, 5) and y.sum(1).min() >= 1
  for row, labels in zip(y, task.labels):
    assert {task.label_names[i] for i in np.flatnonzero(row)} == set(labels)


def test_labelled_shards_are_a_task_with_split_files_joined(tmp_path):
  from data_pipelines import prepare
  folder = make_tone_task(tmp_path / "t", per_class=3)
  out = tmp_path / "shards"
  prepare.prepare(out, input_dir=folder, labels_csv=folder / "meta.csv",
                  options=prepare.Options(max_seconds=0.5, min_seconds=0.1), workers=1,
                  progress=False, log=lambda message: None)
  from_folder, from_shards = task_data.read(folder), task_data.read(out)
  assert sorted(zip(from_shards.labels, from_shards.splits)) == sorted(
      zip(from_folder.labels, from_folder.splits))
  meta = {"frontend": frontends.get_frontend("audio_jepa").to_dict(),
          "normalization": {"mean": -5.0, "std": 4.0}, "frames": 64}
  _, mels = task_data.load_mels(out, meta)
  _, direct = task_data.load_mels(folder, meta)
  # Files longer than 0.5 s were split into segments; joined, they are about as long.
  assert sorted(m.shape[1] for m in mels) == pytest.approx(
      sorted(m.shape[1] for m in direct), abs=3)
  other = {**meta, "frontend": frontends.get_frontend("dasheng").to_dict()}
  with pytest.raises(ValueError, match="prepare the task again with --frontend=dasheng"):
    task_data.load_mels(out, other)


def test_missing_or_unknown_task_sources_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    task_data.read(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="is none of a task folder"):
    task_data.read(tmp_path / "empty")


# --- embeddings and the CLI ------------------------------------------------------------------

@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
  """A workdir whose export is a tiny encoder at its random initialisation."""
  import flax.linen as nn
  import jax
  workdir = tmp_path_factory.mktemp("run")
  config = tiny_config()
  config.finetune.update(epochs=2, warmup_epochs=0.5, seeds=1, batch_size=16)
  encoder = models.build_encoder(config, shapes.grid(config))
  params = nn.unbox(models.init_encoder(encoder, jax.random.key(7)))
  meta = {"frontend": frontends.get_frontend(config.data.frontend).to_dict(),
          "normalization": {"mean": -5.0, "std": 4.0}, "frames": config.data.frames}
  export.export_encoder(workdir / "export", config, params, meta)
  return workdir


def test_embeddings_are_cached_and_recomputed_when_the_task_changes(random_run, tmp_path,
                                                                    monkeypatch):
  folder = make_tone_task(tmp_path / "t", per_class=4)
  _, meta, sets = embeddings.load_feature_sets(random_run, ("trained", embeddings.MEAN_LOGMEL))
  (task, x), = embeddings.embed_tasks(random_run, [folder], sets, meta, chunk_batch=8)
  assert x["trained"].shape == (20, 5 * 32) and x[embeddings.MEAN_LOGMEL].shape == (20, 80)
  paths = [embeddings.cache_path(random_run, task, fs, meta, "concat") for fs in sets]
  assert all(p.is_file() for p in paths)

  def no_audio(*args, **kwargs):
    raise AssertionError("the cache should have answered")
  monkeypatch.setattr(task_data, "load_clips", no_audio)
  (_, again), = embeddings.embed_tasks(random_run, [folder], sets, meta, chunk_batch=8)
  np.testing.assert_array_equal(again["trained"], x["trained"])
  monkeypatch.undo()
  (_, mean), = embeddings.embed_tasks(random_run, [folder], sets[:1], meta, freq_pool="mean",
                                      chunk_batch=8)
  assert mean["trained"].shape == (20, 32)
  (folder / "task.json").write_text(json.dumps({"unit_sec": 0.5}))
  task2, cut = embeddings.embed_tasks(random_run, [folder], sets[:1], meta, chunk_batch=8)[0]
  assert task2.fingerprint != task.fingerprint and not np.allclose(cut["trained"], x["trained"])


def test_mean_std_time_pooling_appends_each_clips_std_over_its_time_steps(random_run,
                                                                          tmp_path, capsys):
  folder = make_tone_task(tmp_path / "t", per_class=5)  # 5: a test split
  _, meta, sets = embeddings.load_feature_sets(random_run, ("trained", embeddings.MEAN_LOGMEL))
  (task, x), = embeddings.embed_tasks(random_run, [folder], sets, meta, chunk_batch=8,
                                      time_pool="mean_std")
  _, mels, pads = task_data.load_clips(folder, meta)
  steps = features.frame_embeddings(sets[0].encoder, sets[0].params, mels, meta["frames"],
                                    pads, 8)
  assert min(len(f) for f in steps) > 1  # a std over one step would test nothing
  np.testing.assert_allclose(x["trained"], np.stack(
      [np.concatenate([f.mean(0), f.std(0)]) for f in steps]), rtol=1e-6)
  np.testing.assert_allclose(x[embeddings.MEAN_LOGMEL], np.stack(
      [np.concatenate([m.mean(1), m.std(1)]) for m in mels]), rtol=1e-6)
  # Cached apart from the mean, whose key is unchanged by the option's existence.
  mean_path = embeddings.cache_path(random_run, task, sets[0], meta, "concat")
  assert embeddings.cache_path(random_run, task, sets[0], meta, "concat", (), "mean") \
      == mean_path != embeddings.cache_path(random_run, task, sets[0], meta, "concat", (),
                                            "mean_std")
  with pytest.raises(ValueError, match="unknown time_pool 'max'"):
    embeddings.embed_tasks(random_run, [folder], sets, meta, time_pool="max")
  evaluate.main([f"--workdir={random_run}", f"--task={folder}", "--protocol=knn",
                 "--baselines=mean_logmel", "--time_pool=mean_std"])
  results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert {fs["time_pool"] for fs in results["t"]["knn"].values()} == {"mean_std"}


def test_clips_shared_by_tasks_are_encoded_once(random_run, tmp_path, monkeypatch):
  import os
  a = make_tone_task(tmp_path / "a", per_class=3)
  b = tmp_path / "b"
  (b / "audio").mkdir(parents=True)
  rows = []
  for row in tasks_lib.read_task(a).rows:
    os.link(row.path, b / "audio" / row.path.name)  # same files, other labels
    rows.append(tasks_lib.TaskRow(b / "audio" / row.path.name, ("x",), split=row.split))
  tasks_lib.write_task(b, rows)
  _, meta, sets = embeddings.load_feature_sets(random_run)
  encoded = []
  real = embeddings.features.clip_embeddings
  monkeypatch.setattr(embeddings.features, "clip_embeddings",
                      lambda enc, p, mels, *a, **k: encoded.append(len(mels)) or
                      real(enc, p, mels, *a, **k))
  (_, xa), (_, xb) = embeddings.embed_tasks(random_run, [a, b], sets, meta, chunk_batch=8,
                                            cache=False)
  assert encoded == [15]
  np.testing.assert_array_equal(xa["trained"], xb["trained"])


@pytest.mark.slow
def test_evaluate_all_protocols_writes_results_table_and_chart(random_run, tmp_path):
  folder = make_tone_task(tmp_path / "tones")
  evaluate.main([f"--workdir={random_run}", f"--task={folder}", "--protocol=all",
                 "--baselines=mean_logmel"])
  out = random_run / "eval"
  results = json.loads((out / "results.json").read_text())["tones"]
  assert set(results) == {"linear", "linear_validated", "mlp", "knn", "fewshot"}
  for protocol, by_set in results.items():
    # Few-shot also compares the two on the same episodes.
    assert set(by_set) == {"trained", "mean_logmel"} | (
        {"trained - mean_logmel"} if protocol == "fewshot" else set())
    for name in ("trained", "mean_logmel"):
      for metric, s in by_set[name]["scores"].items():
        assert 0.0 <= s["mean"] <= 1.0, (protocol, metric, s)
  shot = results["fewshot"]
  assert set(shot["trained"]["scores"]) == {"accuracy_1shot", "accuracy_5shot"}
  for metric, s in shot["trained - mean_logmel"]["scores"].items():
    assert s["mean"] == pytest.approx(shot["trained"]["scores"][metric]["mean"]
                                      - shot["mean_logmel"]["scores"][metric]["mean"])
  # Five pure tones: the mean log-mel separates them perfectly.
  assert results["knn"]["mean_logmel"]["scores"]["accuracy"]["mean"] > 0.9
  table = (out / "results.md").read_text()
  assert "| tones | fewshot | accuracy_1shot |" in table and "(95 % CI)" in table
  assert (out / "results.png").stat().st_size > 10_000


def test_main_probe_runs_the_validated_linear_protocol_and_names_it(random_run, monkeypatch):
  """The main job's summary: the export's probe.protocol (linear_validated by default)
  on the three feature sets, named in `probe_protocol`, with each probe's lr."""
  asked = []

  def fake_evaluate(workdir, sources, protocols, feature_sets):
    asked.append((protocols, feature_sets))
    def result(acc, lr):
      return {"scores": {"accuracy": {"per_seed": [acc, acc + 0.02], "mean": acc + 0.01,
                                      "std": 0.01}},
              "chosen": [{"hidden_layers": 0, "lr": lr, "valid_scores": {}}]}
    return {"tones": {protocols[0]: {"trained": result(0.8, 1e-3),
                                     "random_init": result(0.5, 3e-4),
                                     "mean_logmel": result(0.6, 1e-3)}}}

  monkeypatch.setattr(suite, "evaluate", fake_evaluate)
  summary = suite.probe_workdir(random_run, ["tones"])
  assert asked == [(("linear_validated",), ("trained", "random_init", "mean_logmel"))]
  assert summary["probe_protocol"] == "linear_validated"
  assert summary["probe_accuracy"] == pytest.approx(0.81)
  assert summary["tasks"]["tones"]["random_init"] == {"mean": 0.51, "std": 0.01, "lr": 3e-4}


@pytest.mark.slow
def test_fewshot_on_held_out_classes_against_the_run_it_started_from(random_run, tmp_path):
  import flax.linen as nn
  import jax
  config = export.load_config(random_run / "export")
  _, _, params, meta = export.load_encoder(random_run / "export")
  tuned = tmp_path / "tuned"
  start = tmp_path / "start"
  start_encoder = models.build_encoder(config, shapes.grid(config))
  start_params = nn.unbox(models.init_encoder(start_encoder, jax.random.key(9)))
  export.export_encoder(start / "export", config, start_params, meta)
  # Six classes: every other f3 clip relabelled f5 (20 clips each; f3 and f5 are one tone,
  # so the episodes are not all solved and their scores spread); f4 is not held out.
  folder = make_tone_task(tmp_path / "tones", per_class=40)
  rows = tasks_lib.read_task(folder).rows
  tasks_lib.write_task(folder, [dataclasses.replace(r, labels=("f5",)) if r.labels == ("f3",)
                                and k % 2 else r for k, r in enumerate(rows)])
  config.data.exclude_classes = "tones:f0,f1,f2,f3,f5"
  export.export_encoder(tuned / "export", config, jax.tree.map(lambda p: p * 1.5, params), meta)
  got = suite.evaluate(tuned, [folder], ("fewshot",), ("trained", str(start)),
                          fewshot_classes_spec="held_out")["tones"]["fewshot"]
  assert set(got) == {"trained", "start", "trained - start"}
  assert all(r["classes"] == ["f0", "f1", "f2", "f3", "f5"] for r in got.values())
  # The same as episodes drawn by hand among those five (never f4).
  _, _, sets = embeddings.load_feature_sets(tuned)
  (task, x), = embeddings.embed_tasks(tuned, [folder], sets, meta, chunk_batch=16)
  kept = np.array([task.label_names.index(c) for c in ("f0", "f1", "f2", "f3", "f5")])
  assert task.label_names.index("f4") not in kept
  assert got["trained"]["scores"]["accuracy_1shot"] == fewshot.fewshot(
      x["trained"], task.targets(), shots=1, classes=kept)
  for metric, s in got["trained - start"]["scores"].items():
    assert s["mean"] == pytest.approx(got["trained"]["scores"][metric]["mean"]
                                      - got["start"]["scores"][metric]["mean"])
    assert s["ci95"] > 0 and s["episodes"] == 600
  assert "| tones | fewshot | accuracy_1shot |" in (tuned / "eval" / "results.md").read_text()
  with pytest.raises(ValueError, match="held no classes out"):
    suite.evaluate(random_run, [folder], ("fewshot",), fewshot_classes_spec="held_out")
  with pytest.raises(ValueError, match="task tones has no class 'f9'"):
    suite.evaluate(tuned, [folder], ("fewshot",), fewshot_classes_spec="tones:f9")
  with pytest.raises(ValueError, match="other inputs than"):
    other_meta = {**meta, "frames": meta["frames"] * 2}
    export.export_encoder(tmp_path / "wide" / "export", config, params, other_meta)
    embeddings.load_feature_sets(tuned, ("trained", str(tmp_path / "wide")))


def test_multilabel_task_reports_map_and_d_prime(random_run, tmp_path):
  folder = make_tone_task(tmp_path / "multi", per_class=12, multilabel=True)
  # The lr chosen on validation: at EVAR's 3e-5 the tiny probe budget (20 epochs of
  # 36 clips) hardly moves the probe.
  results = suite.evaluate(random_run, [folder], ("linear_validated", "knn"), ("mean_logmel",))
  for protocol in ("linear_validated", "knn"):
    got = results["multi"][protocol]["mean_logmel"]["scores"]
    # Chance mAP is the class prevalence (~0.3 here); the tiny probe budget stops short.
    assert set(got) == {"mAP", "d_prime"} and got["mAP"]["mean"] > 0.55
  chosen, = results["multi"]["linear_validated"]["mean_logmel"]["chosen"]
  grid = export.load_config(random_run / "export").probe.lr_grid
  assert list(chosen["valid_scores"]) == [f"{lr:g}" for lr in grid] and chosen["lr"] in grid


def test_evaluate_cli_errors_name_the_problem(random_run, tmp_path, capsys):
  for argv, fragment in [([f"--workdir={random_run}", f"--task={tmp_path / 'nope'}"],
                          "does not exist"),
                         ([f"--workdir={tmp_path}", f"--task={tmp_path}"], "no encoder export"),
                         ([f"--workdir={random_run}", "--protocol=lnear"], "one of <linear|"),
                         ([f"--workdir={random_run}", "--finetune=epochs"], "name=value"),
                         ([f"--task={tmp_path}"], "--workdir is required")]:
    with pytest.raises(SystemExit) as exited:
      evaluate.main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith("error: ") and fragment in err, err
    assert err.count("\n") == 1


def test_embed_cli_prints_where_the_cached_features_are(random_run, tmp_path, capsys):
  folder = make_tone_task(tmp_path / "t", per_class=2)
  embed.main([f"--workdir={random_run}", f"--task={folder}", "--random_init",
              "--freq_pool=mean"])
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert (out["task"], out["clips"], out["dim"]) == ("t", 10, 32)
  with np.load(out["features"]) as f:
    assert f["x"].shape == (10, 32)
  assert "-random_init-" in out["features"]


def test_evaluate_finetune_uses_the_exported_settings_and_reports_progress(random_run, tmp_path,
                                                                           capsys):
  folder = make_tone_task(tmp_path / "ft", per_class=5)
  evaluate.main([f"--workdir={random_run}", f"--task={folder}", "--protocol=finetune",
                 "--baselines="])
  captured = capsys.readouterr()
  assert "finetune ft trained: seed 0 fold 0 epoch 2" in captured.err
  result = json.loads(captured.out.strip().splitlines()[-1])["ft"]["finetune"]["trained"]
  assert [len(run["history"]) for run in result["runs"]] == [2]  # epochs=2, seeds=1
  assert 0.0 <= result["scores"]["accuracy"]["mean"] <= 1.0
  assert "| ft | finetune | accuracy |" in (random_run / "eval" / "results.md").read_text()


def test_finetune_overrides_parse_literals_and_refuse_garbage():
  assert evaluate.settings("epochs=3,mixup=0.0,balanced_sampling=False") == {
      "epochs": 3, "mixup": 0.0, "balanced_sampling": False}
  assert evaluate.settings("") == {}
  for bad in ("epochs", "base_lr=fast"):
    with pytest.raises(ValueError):
      evaluate.settings(bad)
