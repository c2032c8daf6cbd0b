import jax.numpy as jnp
import numpy as np
import pytest

from fundamentals import data


def test_small_dataset_shapes_dtypes_and_labels(small_dataset):
  ds = small_dataset
  assert ds.train_images.shape == (600, 64, 64, 3) and ds.train_images.dtype == np.uint8
  assert ds.test_images.shape == (300, 64, 64, 3)
  assert ds.num_classes == 30 and ds.num_features == 12288
  assert ds.class_names[0] == 'red_round_plain'
  for labels, per_class in ((ds.train_labels, 20), (ds.test_labels, 10)):
    np.testing.assert_array_equal(np.bincount(labels, minlength=30), per_class)


def test_normalization_statistics_come_from_the_training_split(small_dataset):
  x = small_dataset.train_images.astype(np.float64) / 255
  np.testing.assert_allclose(small_dataset.mean, x.mean((0, 1, 2)), rtol=1e-5)
  np.testing.assert_allclose(small_dataset.std, x.std((0, 1, 2)), rtol=1e-4)
  test_mean = small_dataset.test_images.astype(np.float64).mean((0, 1, 2)) / 255
  assert not np.allclose(small_dataset.mean, test_mean, rtol=1e-6)
  z = np.asarray(data.normalize(jnp.asarray(small_dataset.train_images),
                                small_dataset.mean, small_dataset.std))
  assert z.shape == (600, 12288)
  per_channel = z.reshape(600, 64, 64, 3).astype(np.float64)
  np.testing.assert_allclose(per_channel.mean((0, 1, 2)), 0, atol=1e-4)
  np.testing.assert_allclose(per_channel.std((0, 1, 2)), 1, atol=1e-4)


def test_second_load_reads_the_cache_without_decoding(data_dir, monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('decoded again instead of reading the cache')
  monkeypatch.setattr(data, '_decode', fail)
  ds = data.load('synthetic_fruits/small', data_dir=data_dir)
  assert len(ds.train_labels) == 600


def test_loading_is_deterministic(small_dataset, tmp_path):
  again = data.load('synthetic_fruits/small', data_dir=str(tmp_path))
  # A fresh preparation gives the same images (TFDS may order them differently).
  order_a = np.lexsort(small_dataset.train_images.reshape(600, -1)[:, :64].T)
  order_b = np.lexsort(again.train_images.reshape(600, -1)[:, :64].T)
  np.testing.assert_array_equal(small_dataset.train_images[order_a], again.train_images[order_b])
  np.testing.assert_array_equal(small_dataset.train_labels[order_a], again.train_labels[order_b])


def test_unprepared_catalog_dataset_fails_fast_with_instructions(tmp_path):
  with pytest.raises(FileNotFoundError, match='tfds build mnist'):
    data.load('mnist', data_dir=str(tmp_path))


def test_unknown_dataset_is_named(tmp_path):
  with pytest.raises(ValueError, match='no_such_dataset'):
    data.load('no_such_dataset', data_dir=str(tmp_path))
