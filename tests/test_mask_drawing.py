"""A batch's masks drawn on its log-mels (jepa_jax/masks/drawing.py): the patch roles and
the overlay against hand-built index sets, and the picture written."""
import jax
import numpy as np
import pytest
from matplotlib import image
from matplotlib.colors import to_rgba

from jepa_jax import masks
from jepa_jax.masks import drawing


def _mask_set() -> masks.MaskSet:
  """Two clips on a 2 x 3 grid, one mask set, two target groups of two slots.
  Clip 0: context tokens 0, 1 (slot 2 padding), targets 5 and 3 (one padding slot each).
  Clip 1: context 3, 4, 5; targets 0 and 2."""
  return masks.MaskSet(
      context_idx=np.array([[[0, 1, 0]], [[3, 4, 5]]]),
      context_valid=np.array([[[True, True, False]], [[True, True, True]]]),
      target_idx=np.array([[[[5, 0], [3, 0]]], [[[0, 2], [0, 0]]]]),
      target_valid=np.array([[[[True, False], [True, False]]],
                             [[[True, True], [False, False]]]]))


def test_patch_roles_put_each_token_at_its_frequency_major_place():
  m = _mask_set()
  # token n sits at (f, t) = divmod(n, 3); padding slots (index 0, invalid) mark nothing
  np.testing.assert_array_equal(drawing.patch_roles(m, 0, (2, 3)), [[1, 1, 0], [2, 0, 2]])
  np.testing.assert_array_equal(drawing.patch_roles(m, 1, (2, 3)), [[2, 0, 2], [1, 1, 1]])


def test_overlay_spreads_each_patch_role_over_its_bins():
  roles = np.array([[1, 1, 0], [2, 0, 2]])
  rgba = drawing.overlay_rgba(roles, (4, 2))  # 8 mels x 6 frames
  assert rgba.shape == (8, 6, 4)
  context = to_rgba(drawing.COLOURS["context"], drawing.OVERLAY_ALPHA["context"])
  target = to_rgba(drawing.COLOURS["target"], drawing.OVERLAY_ALPHA["target"])
  unused = to_rgba(drawing.COLOURS["unused"], drawing.OVERLAY_ALPHA["unused"])
  np.testing.assert_allclose(rgba[0:4, 0:4], np.broadcast_to(context, (4, 4, 4)))
  np.testing.assert_allclose(rgba[0:4, 4:6], np.broadcast_to(unused, (4, 2, 4)))
  np.testing.assert_allclose(rgba[4:8, 0:2], np.broadcast_to(target, (4, 2, 4)))
  np.testing.assert_allclose(rgba[4:8, 2:4], np.broadcast_to(unused, (4, 2, 4)))
  np.testing.assert_allclose(rgba[4:8, 4:6], np.broadcast_to(target, (4, 2, 4)))


def test_masks_on_logmel_picture_is_drawn(tmp_path):
  mels = np.random.default_rng(0).normal(size=(2, 32, 48))
  path = tmp_path / "masks.png"
  drawing.draw_masks_on_logmel(mels, _mask_set(), (16, 16), ["clip 0", "clip 1"], path)
  pixels = image.imread(path)
  assert pixels.ndim == 3 and pixels[..., :3].std() > 0.01
  # orange targets are there: some pixel is far redder than it is blue
  assert ((pixels[..., 0] - pixels[..., 2]) > 0.3).any()


def test_sampled_masks_of_a_strategy_draw_on_their_grid(tmp_path):
  grid, patch = (4, 6), (8, 8)
  m = masks.sample(jax.random.key(0), 3, grid, masks.default_config("multi_block"))
  for clip in range(3):  # the sampler's targets and context, as roles on the grid
    roles = drawing.patch_roles(m, clip, grid).ravel()
    targets = np.asarray(m.target_idx[clip, 0])[np.asarray(m.target_valid[clip, 0])]
    assert set(np.flatnonzero(roles == 2)) == set(targets.tolist())
  drawing.draw_masks_on_logmel(np.zeros((3, 32, 48)), m, patch, ["a", "b", "c"],
                               tmp_path / "m.png")
  assert (tmp_path / "m.png").stat().st_size > 0


def test_bad_shapes_are_named():
  m = _mask_set()
  with pytest.raises(ValueError, match=r"log-mels of shape \(2, 30, 48\) are not"):
    drawing.draw_masks_on_logmel(np.zeros((2, 30, 48)), m, (16, 16), ["a", "b"], "x.png")
  with pytest.raises(ValueError, match="3 titles for 2 log-mels"):
    drawing.draw_masks_on_logmel(np.zeros((2, 32, 48)), m, (16, 16), ["a", "b", "c"],
                                 "x.png")
