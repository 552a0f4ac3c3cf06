"""The pictures (jepa_jax/evaluation/plots.py): PCA and cosine neighbours against hand
computations, and every picture written as a PNG that is not blank, also from the
command lines of a finished demo run (main's training.png, evaluate --plots)."""
import numpy as np
import pytest
from matplotlib import image

from jepa_jax import evaluate, main
from jepa_jax.evaluation import embeddings, plots, report
from jepa_jax.evaluation.labelled_task import LabelledTask
from tests.tiny import TINY_FLAGS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_drawn(path):
  """A valid PNG whose pixels are not all the same (a blank canvas has no variance)."""
  assert path.read_bytes()[:8] == PNG_SIGNATURE, path
  pixels = image.imread(path)
  assert pixels.ndim == 3 and pixels[..., :3].std() > 0.01, path


def _task(labels, name="toy", multilabel=False):
  labels = tuple(tuple(x) if isinstance(x, tuple) else (x,) for x in labels)
  return LabelledTask(name=name, source=None, labels=labels, folds=(None,) * len(labels),
                      splits=(None,) * len(labels),
                      label_names=tuple(sorted({c for x in labels for c in x})),
                      multilabel=multilabel, unit_sec=None, fingerprint="toy")


def test_pca_coordinates_equal_a_hand_computation():
  # Points at +-3 on one axis and +-1 on another, rotated in 3-D and shifted: centred,
  # their principal axes are the two rotated axes (variances 4.5 and 0.5), so the
  # coordinates are the unrotated ones, each axis's largest coordinate made positive.
  planar = np.array([[3, 0, 0], [-3, 0, 0], [0, 1, 0], [0, -1, 0]], float)
  c, s = np.cos(0.7), np.sin(0.7)
  rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array(
      [[1, 0, 0], [0, c, -s], [0, s, c]])
  x = planar @ rotation.T + np.array([5.0, -2.0, 7.0])
  np.testing.assert_allclose(plots.pca(x), [[3, 0], [-3, 0], [0, 1], [0, -1]], atol=1e-12)


def test_pca_projects_on_the_covariance_eigenvectors():
  x = np.random.default_rng(0).normal(size=(30, 6)) * np.arange(1, 7)
  centred = x - x.mean(0)
  _, vectors = np.linalg.eigh(centred.T @ centred)
  expected = centred @ vectors[:, ::-1][:, :3]  # the largest eigenvalues first
  got = plots.pca(x, 3)
  np.testing.assert_allclose(np.abs(got), np.abs(expected), atol=1e-9)
  assert (got[np.abs(got).argmax(0), range(3)] > 0).all()
  # A rank-1 matrix has one axis: the rest are zeros.
  np.testing.assert_array_equal(plots.pca([[1.0, 2.0], [2.0, 4.0]])[:, 1], [0.0, 0.0])


def test_nearest_clips_by_cosine_similarity_leave_the_query_out():
  x = np.array([[1.0, 0.0], [10.0, 1.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
  order, sims = plots.nearest(x, 0, 3)
  # cos(query, row): row 1: 10/sqrt(101), row 3: 1/sqrt(2), row 2: 0, row 4: -1.
  np.testing.assert_array_equal(order, [1, 3, 2])
  np.testing.assert_allclose(sims, [10 / np.sqrt(101), 1 / np.sqrt(2), 0.0])
  assert len(plots.nearest(x, 2, 10)[0]) == 4  # at most every other clip


def test_map_method_is_tsne_where_scikit_learn_is_installed_and_known_names_only():
  pytest.importorskip("sklearn")
  assert plots.projection("auto", 50) == "tsne"
  assert plots.projection("auto", plots.TSNE_MIN_CLIPS - 1) == "pca"
  assert plots.projection("pca", 50) == "pca"
  with pytest.raises(ValueError, match="unknown embedding map method 'umap'"):
    plots.projection("umap", 50)


def _three_classes(rng):
  """24 clips of 3 classes: well-separated trained embeddings, noise at random init."""
  labels = [f"class{i % 3}" for i in range(24)]
  centres = rng.normal(size=(3, 16)) * 4
  trained = np.stack([centres[i % 3] + rng.normal(size=16) for i in range(24)])
  return _task(labels), {"trained": trained, "random_init": rng.normal(size=(24, 16))}


@pytest.mark.slow  # scikit-learn's import and t-SNE: seconds on a busy 2-core machine
def test_tsne_embedding_map_is_drawn(tmp_path):
  pytest.importorskip("sklearn")
  task, sets = _three_classes(np.random.default_rng(0))
  path = tmp_path / "map.png"
  assert plots.embedding_map(sets, task, path, "tsne") == "tsne"
  assert_drawn(path)


def test_embedding_map_and_neighbour_sheet_are_drawn(tmp_path):
  rng = np.random.default_rng(0)
  task, sets = _three_classes(rng)
  labels, trained = [x[0] for x in task.labels], sets["trained"]
  path = tmp_path / "map.png"
  assert plots.embedding_map(sets, task, path, "pca") == "pca"
  assert_drawn(path)
  mels = [rng.normal(size=(80, 40 + i)) for i in range(24)]
  sheet = tmp_path / "sheet.png"
  neighbours = plots.neighbour_sheet(mels, trained, task, sheet, query=0, k=4)
  assert neighbours == list(plots.nearest(trained, 0, 4)[0])
  assert all(labels[i] == "class0" for i in neighbours)  # well separated classes
  assert_drawn(sheet)
  with pytest.raises(ValueError, match="query clip 24 is not in toy"):
    plots.neighbour_sheet(mels, trained, task, sheet, query=24)


def test_multilabel_map_colours_each_clip_by_its_first_class(tmp_path):
  task = _task([("a", "b"), ("b",), ("a",), ("c", "a")] * 3, multilabel=True)
  assert plots._first_labels(task)[:4] == ["a", "b", "a", "c"]
  path = tmp_path / "map.png"
  plots.embedding_map({"trained": np.random.default_rng(1).normal(size=(12, 5))}, task,
                      path, "pca")
  assert_drawn(path)


def test_training_curves_draw_the_loss_and_each_monitor(tmp_path):
  records = [{"step": s, "loss": 1.0 / s, "lr": 1e-3, "target_feature_std": 0.5 + 0.01 * s,
              "context_feature_std": 0.4, "target_effective_rank": 10.0 + s,
              "context_effective_rank": 8.0} for s in range(2, 12, 2)]
  assert plots.monitor_names(records) == {
      "_feature_std": ["context_feature_std", "target_feature_std"],
      "_effective_rank": ["context_effective_rank", "target_effective_rank"]}
  path = tmp_path / "training.png"
  plots.training_curves(records, path)
  assert_drawn(path)
  with pytest.raises(ValueError, match="no metrics were logged"):
    plots.training_curves([], path)


@pytest.mark.slow
def test_a_finished_demo_run_draws_its_training_and_evaluation_pictures(tmp_path,
                                                                        monkeypatch):
  workdir = tmp_path / "demo"
  main.main(["--config=configs/audio_jepa.py:demo", f"--workdir={workdir}", *TINY_FLAGS,
             "--config.train.log_every=2", "--config.train.micro_batches=1"])
  assert_drawn(workdir / plots.TRAINING_PICTURE)

  encoded = []  # the pictures reuse the protocol's embeddings: each set is encoded once
  real = embeddings.features.clip_embeddings
  monkeypatch.setattr(embeddings.features, "clip_embeddings",
                      lambda *a, **k: encoded.append(1) or real(*a, **k))
  evaluate.main([f"--workdir={workdir}", "--protocol=knn", "--plots"])
  assert len(encoded) == 2  # trained and random_init, all tasks at once
  for task in ("pitch", "source", "envelope"):
    for picture in ("embedding_map", "neighbours"):
      assert_drawn(workdir / report.RESULTS_DIR / f"{task}_{picture}.png")


def test_legend_classes_in_natural_order():
  names = ["1245-1760Hz", "110-156Hz", "156-220Hz", "a10", "a9", "b"]
  assert plots.natural_order(names) == ["110-156Hz", "156-220Hz", "1245-1760Hz", "a9", "a10",
                                        "b"]

