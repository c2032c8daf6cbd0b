"""Augmentation: each transform against a NumPy reference, and training-only use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fundamentals import augment
from fundamentals import data
from fundamentals import losses
from fundamentals import models
from fundamentals import optimizers
from fundamentals import train
from fundamentals.config import Config


def image(seed=0, size=16):
  return jax.random.uniform(jax.random.key(seed), (size, size, 3))


def test_flip_is_either_identity_or_mirror_and_both_occur():
  x = image()
  outcomes = set()
  for k in range(20):
    y = np.asarray(augment.flip(jax.random.key(k), x))
    if np.array_equal(y, x):
      outcomes.add('same')
    else:
      np.testing.assert_array_equal(y, np.asarray(x)[:, ::-1])
      outcomes.add('mirror')
  assert outcomes == {'same', 'mirror'}


def test_crop_is_a_translation_of_the_edge_padded_image():
  x = np.asarray(image())
  padded = np.pad(x, ((6, 6), (6, 6), (0, 0)), mode='edge')
  windows = {(dy, dx): padded[dy:dy + 16, dx:dx + 16] for dy in range(13) for dx in range(13)}
  for k in range(10):
    y = np.asarray(augment.crop(jax.random.key(k), jnp.asarray(x)))
    assert any(np.array_equal(y, w) for w in windows.values())


def test_rotate_by_zero_is_identity_and_keeps_a_constant_image_constant():
  x = image()
  zero = augment.rotate_by(x, 0.0)
  np.testing.assert_allclose(zero, x, atol=1e-5)
  flat = jnp.full((16, 16, 3), 0.3)
  np.testing.assert_allclose(augment.rotate(jax.random.key(1), flat), 0.3, atol=1e-6)


def test_rotate_by_quarter_turns_matches_numpy_rot90():
  x = image()
  np.testing.assert_allclose(augment.rotate_by(x, jnp.pi / 2), np.rot90(x, -1), atol=1e-5)
  np.testing.assert_allclose(augment.rotate_by(x, jnp.pi), np.rot90(x, 2), atol=1e-5)


def test_color_keeps_range_and_zero_strength_is_identity():
  x = image()
  y = augment.color(jax.random.key(0), x)
  assert float(y.min()) >= 0 and float(y.max()) <= 1 and not np.allclose(y, x)
  same = augment.color(jax.random.key(0), x, brightness=0.0, contrast=0.0, saturation=0.0)
  np.testing.assert_allclose(same, x, atol=1e-6)


def test_one_pass_composition_equals_applying_the_transforms_one_by_one():
  x = image()
  mirror = lambda key, y, x_, shape: (y, shape[1] - 1 - x_)
  shift = lambda key, y, x_, shape: (y + 2, x_ - 3)
  rotation = lambda key, y, x_, shape: augment._rotated(y, x_, shape, 0.3)
  key = jax.random.key(0)
  composed = augment.warp(key, x, mirror, shift)
  sequential = augment.warp(key, augment.warp(key, x, mirror), shift)
  np.testing.assert_allclose(composed, sequential, atol=1e-6)
  # Mirror then shift, checked against NumPy: out[y, x] = in[y+2, W-1-(x-3)] (clamped).
  ys, xs = np.meshgrid(np.arange(16), np.arange(16), indexing='ij')
  expected = np.asarray(x)[np.clip(ys + 2, 0, 15), np.clip(15 - (xs - 3), 0, 15)]
  np.testing.assert_allclose(composed, expected, atol=1e-6)
  # With a rotation the sampling is bilinear: one pass differs from two only by the
  # extra interpolation, so agree closely on a smooth image.
  smooth = jnp.broadcast_to(jnp.linspace(0, 1, 16)[None, :, None], (16, 16, 3))
  np.testing.assert_allclose(augment.warp(key, smooth, shift, rotation)[4:-4, 4:-4],
                             augment.warp(key, augment.warp(key, smooth, shift), rotation)[4:-4, 4:-4],
                             atol=1e-5)


def test_make_augment_is_per_example_and_uint8_in_uint8_out():
  batch = jnp.tile((np.asarray(image()) * 255).astype(np.uint8)[None], (8, 1, 1, 1))
  fn = jax.jit(augment.make_augment(['flip', 'crop', 'color', 'rotate']))
  out = fn(jax.random.key(0), batch)
  assert out.dtype == jnp.uint8 and out.shape == batch.shape
  assert len({np.asarray(o).tobytes() for o in out}) == 8  # each example its own draw
  np.testing.assert_array_equal(out, fn(jax.random.key(0), batch))
  assert augment.make_augment([]) is None
  with pytest.raises(ValueError, match="valid: \\['flip'"):
    augment.make_augment(['mixup'])


def test_augmentation_reaches_training_batches_only(tmp_path, small_dataset):
  """An 'augmentation' that blanks every image: training sees only blanks, so its loss
  stays at ln N; evaluation of the same state sees the real, unaugmented test images."""
  blank = lambda key, images: jnp.zeros_like(images)
  config = Config(dataset='synthetic_fruits/small', hidden=(16,), batch_size=50,
                  steps=10, output_scale=0.0, lr=0.1, workdir=str(tmp_path / 'x'))
  model = models.create_model(config, num_features=small_dataset.num_features,
                              num_classes=small_dataset.num_classes, key=jax.random.key(0))
  tx, _ = optimizers.create(config)
  graphs, state = train.split_model(model, tx, augment_key=jax.random.key(1))
  step = train.make_train_step(graphs, tx, batch_size=50, augment=blank)
  images = jnp.asarray(small_dataset.train_images)
  labels = jnp.asarray(small_dataset.train_labels)
  mean, std = small_dataset.mean, small_dataset.std
  for position in range(10):
    state, metrics = step(state, images, labels, jnp.arange(600), position, mean, std)
    assert float(metrics['loss']) == pytest.approx(np.log(30), abs=0.05)
  result = train.evaluate(train.make_eval_step(graphs), state, small_dataset.test_images,
                          small_dataset.test_labels, mean, std)
  logits, _ = models.apply(graphs.eval, state.params, state.batch_stats,
                                data.normalize(jnp.asarray(small_dataset.test_images), mean, std))
  expected = losses.softmax_cross_entropy(logits, jnp.asarray(small_dataset.test_labels))
  assert result['loss'] == pytest.approx(float(expected), rel=1e-5)


def test_preview_has_one_row_per_class_labelled_with_its_name(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.array([3, 3, 0, 7, 1, 0, 5, 2, 9, 4, 8, 6, 1])
  images = rng.integers(0, 256, (len(labels), 8, 8, 3), dtype=np.uint8)
  class_names = [f'class{k}' for k in range(10)]
  fig = augment.preview_figure(images, labels, ['flip'], class_names=class_names,
                               copies=2, classes=4)
  rows = [ax for ax in fig.axes if ax.get_ylabel()]
  names = [ax.get_ylabel() for ax in rows]
  assert names == ['class0', 'class3', 'class6', 'class9']  # spread over the 10 classes
  for ax, name in zip(rows, names):  # each row starts with an image of its class
    first = int(np.flatnonzero(labels == class_names.index(name))[0])
    np.testing.assert_array_equal(ax.images[0].get_array(), images[first])
  assert len(fig.axes) == 4 * 3
  few = augment.preview_classes(np.array([2, 2, 1]), classes=6)
  np.testing.assert_array_equal(few, [2, 0])  # every class present, when fewer
  augment.save_preview(tmp_path / 'p.png', images, labels, ['crop'], class_names=class_names)
  assert (tmp_path / 'p.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  with pytest.raises(ValueError, match='no augmentation'):
    augment.preview_figure(images, labels, [], class_names=class_names)
