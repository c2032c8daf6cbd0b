import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from conftest import REPO, SMALL
from fundamentals import data

# sha256 of the small dataset's train/test images and labels, in order, as TensorFlow
# prepared (TFRecord) and decoded them (tensorflow-cpu 2.21, TFDS 4.9.10) before the
# dataset moved to ArrayRecord; the default config's was eed3cc0b76a58f43…
TENSORFLOW_DIGEST = 'c7433ff5779f0964e7e5682ed4f89b04eb5a82661ced0f56d2eb0d66f435a829'
_SPLIT_ARRAYS = ('train_images', 'train_labels', 'test_images', 'test_labels')


def digest(arrays) -> str:
  h = hashlib.sha256()
  for name in _SPLIT_ARRAYS:
    h.update(np.ascontiguousarray(arrays[name]).tobytes())
  return h.hexdigest()


def as_arrays(ds: data.Dataset) -> dict:
  return {name: getattr(ds, name) for name in _SPLIT_ARRAYS}


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
  with pytest.raises(FileNotFoundError,
                     match='tfds build mnist .*--file_format=array_record'):
    data.load('mnist', data_dir=str(tmp_path))


def test_the_built_in_dataset_is_bit_identical_to_the_tensorflow_prepared_one(
    small_dataset, data_dir):
  stored = pathlib.Path(data_dir, SMALL, '1.0.0')
  assert list(stored.glob('*.array_record-*')) and not list(stored.glob('*.tfrecord-*'))
  assert small_dataset.train_images.dtype == np.uint8
  assert small_dataset.train_labels.dtype == np.int32
  assert digest(as_arrays(small_dataset)) == TENSORFLOW_DIGEST


@pytest.mark.skipif(importlib.util.find_spec('tensorflow') is None,
                    reason='the tensorflow extra is not installed')
def test_tfrecord_through_tensorflow_gives_the_same_arrays(small_dataset, tmp_path,
                                                           monkeypatch):
  monkeypatch.setattr(data, '_storage_format', lambda: 'tfrecord')  # As on Windows.
  ds = data.load(SMALL, data_dir=str(tmp_path))
  assert list(pathlib.Path(tmp_path, SMALL, '1.0.0').glob('*.tfrecord-*'))
  for name, array in as_arrays(small_dataset).items():
    np.testing.assert_array_equal(getattr(ds, name), array)


# Hides TensorFlow from imports, as if it were not installed, keeping it from
# importlib.util.find_spec too (which a None in sys.modules would not; TFDS then takes
# TensorFlow for loaded and fails).
_WITHOUT_TENSORFLOW = """
import importlib.machinery, sys
class PathFinderWithoutTensorFlow(importlib.machinery.PathFinder):
  @classmethod
  def find_spec(cls, name, path=None, target=None):
    if name.partition('.')[0] == 'tensorflow':
      return None
    return super().find_spec(name, path, target)
sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = (
    PathFinderWithoutTensorFlow)
"""


def test_without_tensorflow_the_built_in_dataset_and_image_folders_load_and_tfrecord_says_why(
    data_dir, tmp_path):
  # A TFRecord copy of the prepared dataset: its metadata is all that is read before
  # TensorFlow would be needed (TFRecord cannot be written without TensorFlow).
  tfrecord = tmp_path / 'tfrecord' / SMALL / '1.0.0'
  shutil.copytree(pathlib.Path(data_dir, SMALL, '1.0.0'), tfrecord,
                  ignore=shutil.ignore_patterns(data._CACHE_NAME))
  info = json.loads((tfrecord / 'dataset_info.json').read_text())
  (tfrecord / 'dataset_info.json').write_text(json.dumps({**info, 'fileFormat': 'tfrecord'}))
  folder = tmp_path / 'folder'
  for split in ('train', 'test'):
    for name in ('apple', 'pear'):
      (folder / split / name).mkdir(parents=True)
      Image.new('RGB', (8, 8), (9, 9, 9)).save(folder / split / name / '0.png')
  code = _WITHOUT_TENSORFLOW + f"""
import hashlib, numpy as np
from fundamentals import data
ds = data.load({SMALL!r}, data_dir={str(tmp_path)!r})
h = hashlib.sha256()
for name in {_SPLIT_ARRAYS!r}:
  h.update(np.ascontiguousarray(getattr(ds, name)).tobytes())
print(h.hexdigest())
print(data.load('image_folder', data_dir={str(folder)!r}, image_size=8).train_images.shape)
try:
  data.load({SMALL!r}, data_dir={str(tmp_path / 'tfrecord')!r})
except data.TensorFlowMissingError as e:
  print(e)
assert not [m for m in sys.modules if m.partition('.')[0] == 'tensorflow'], 'TF imported'
"""
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ,
                                          'FUNDAMENTALS_CACHE': str(tmp_path / 'cache')})
  assert result.returncode == 0, result.stderr[-3000:]
  digest_line, folder_line, message = result.stdout.strip().splitlines()[-3:]
  assert digest_line == TENSORFLOW_DIGEST
  assert folder_line == '(2, 8, 8, 3)'
  assert message.startswith(f'Reading {SMALL}, stored as tfrecord under {tfrecord},')
  assert "needs TensorFlow, which is not installed: pip install -e '.[tensorflow]'" in message
  assert f'or delete {tfrecord} to prepare it again as ArrayRecord' in message


def test_unknown_dataset_is_named_with_the_valid_ones_and_how_to_prepare_one(tmp_path):
  with pytest.raises(ValueError) as refused:
    data.load('no_such_dataset', data_dir=str(tmp_path))
  message = str(refused.value)
  assert message.startswith("Unknown dataset 'no_such_dataset': neither built in nor in "
                            'the TFDS catalog; valid: synthetic_fruits, '
                            'synthetic_fruits/small (built in'), message
  assert 'image_folder with --data_dir=FOLDER' in message
  assert '`tfds build NAME --data_dir=DIR --file_format=array_record`' in message


@pytest.mark.parametrize('name, message', [
    ('synthetic_fruits/huge', "synthetic_fruits has no config 'huge'; valid: "
                              'synthetic_fruits/default, synthetic_fruits/small'),
    ('mnist/huge', "mnist has no config 'huge'; valid: mnist (it has no configs)"),
    ('mnist:9.9.9', 'cannot be loaded at version 9.9.9'),
    ('two words', 'TFDS cannot open it offline (Parsing builder name string two words'),
    ('', "Unknown dataset '': TFDS cannot open it offline"),
])
def test_a_name_tfds_cannot_open_is_one_line_naming_what_is_valid(name, message, tmp_path):
  with pytest.raises(ValueError) as refused:
    data.load(name, data_dir=str(tmp_path))
  assert message in str(refused.value) and '\n' not in str(refused.value)


def test_a_community_namespace_is_refused_before_tfds_looks_it_up(tmp_path, monkeypatch):
  """TFDS would fetch the community index over the network (and, without gcsfs and
  TensorFlow, fail with an ImportError traceback)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(tfds, 'builder', lambda *a, **k: pytest.fail('TFDS was asked'))
  with pytest.raises(ValueError, match="^Unknown dataset 'huggingface:mnist': huggingface: "
                                       'names a TFDS community namespace'):
    data.load('huggingface:mnist', data_dir=str(tmp_path))


def test_a_cache_that_cannot_be_written_is_one_warning(tmp_path, caplog):
  (tmp_path / 'file').write_text('where the folder would be')
  arrays = {'train_labels': np.zeros(3, np.int32)}
  with caplog.at_level('WARNING'):
    assert not data.save_cache(tmp_path / 'file' / 'arrays.npz', arrays)
  assert 'cannot cache the decoded arrays in' in caplog.text
  assert data.save_cache(tmp_path / 'ok' / 'arrays.npz', arrays)
  assert [p.name for p in (tmp_path / 'ok').iterdir()] == ['arrays.npz']  # No temporary.


def test_a_dataset_of_one_class_or_labels_beyond_its_classes_is_refused():
  arrays = {'train_labels': np.zeros(4, np.int32), 'test_labels': np.zeros(2, np.int32)}
  with pytest.raises(ValueError, match=r'^d has 1 class \(a\); a classifier needs two or more'):
    data.check_classes('d', ('a',), arrays)
  arrays['test_labels'] = np.array([0, 2], np.int32)
  with pytest.raises(ValueError, match=r'^d: its test labels span \[0, 2\], but it names 2 '
                                       'classes'):
    data.check_classes('d', ('a', 'b'), arrays)


def test_validation_split_is_stratified_deterministic_and_disjoint(small_dataset):
  images, labels = small_dataset.train_images, small_dataset.train_labels
  (tr_x, tr_y), (va_x, va_y) = data.split_validation(images, labels, 0.25)
  np.testing.assert_array_equal(np.bincount(va_y, minlength=30), 5)
  np.testing.assert_array_equal(np.bincount(tr_y, minlength=30), 15)
  (_, _), (va_x2, va_y2) = data.split_validation(images, labels, 0.25)
  np.testing.assert_array_equal(va_x, va_x2)
  flat = lambda x: {img.tobytes() for img in x}
  assert not flat(tr_x) & flat(va_x)
  with pytest.raises(ValueError, match='validation_fraction=1.0'):
    data.split_validation(images, labels, 1.0)
  with pytest.raises(ValueError, match=r'--validation_fraction=0.98 leaves no training '
                                       r'example of class 0 \(red_round_plain\): it would '
                                       r'hold out round\(0.98·20\) = 20 of its 20'):
    data.split_validation(images, labels, 0.98, class_names=small_dataset.class_names)


def test_normalization_statistics_exclude_the_validation_split(data_dir):
  ds = data.load('synthetic_fruits/small', data_dir=data_dir, validation_fraction=0.25)
  assert len(ds.validation_labels) == 150 and len(ds.train_labels) == 450
  mean, _ = data.channel_stats(ds.train_images)
  np.testing.assert_array_equal(ds.mean, mean)
  everything, _ = data.channel_stats(np.concatenate([ds.train_images, ds.validation_images]))
  assert not np.array_equal(ds.mean, everything)


def test_run_summary_records_the_training_split_normalization(tmp_path, small_dataset):
  from fundamentals import train  # pylint: disable=g-import-not-at-top
  from fundamentals.config import Config  # pylint: disable=g-import-not-at-top
  summary = train.train(Config(dataset='synthetic_fruits/small', hidden=(8,), steps=2,
                               batch_size=50, diagnostics_every=0,
                               workdir=str(tmp_path / 'run')),
                        dataset=small_dataset, echo=lambda line: None)
  np.testing.assert_allclose(summary['normalization']['mean'], small_dataset.mean)
  np.testing.assert_allclose(summary['normalization']['std'], small_dataset.std)
  assert summary['normalization']['train_examples'] == 600


def test_a_located_dataset_loads_without_tfds_and_falls_back_when_stale(
    data_dir, tmp_path, monkeypatch):
  monkeypatch.setenv('FUNDAMENTALS_CACHE', str(tmp_path / 'cache'))
  first = data.load('synthetic_fruits/small', data_dir=data_dir)  # Records the locator.
  assert (tmp_path / 'cache' / 'tfds_arrays.json').exists()

  def no_tfds(*args, **kwargs):
    raise AssertionError('built a TFDS builder although the arrays were located')
  with monkeypatch.context() as m:
    m.setattr(data, '_builder', no_tfds)
    again = data.load('synthetic_fruits/small', data_dir=data_dir)
  np.testing.assert_array_equal(first.train_images, again.train_images)
  assert again.class_names == first.class_names and again.name == first.name
  # A locator that points at nothing (or at a damaged file) is ignored, not trusted.
  (tmp_path / 'cache' / 'tfds_arrays.json').write_text(
      '{"synthetic_fruits/small@%s": {"arrays": "%s", "class_names": ["x"]}}'
      % (pathlib.Path(data_dir).resolve(), tmp_path / 'gone.npz'))
  assert data.load('synthetic_fruits/small', data_dir=data_dir).class_names == first.class_names
  (tmp_path / 'cache' / 'tfds_arrays.json').write_text('{not json')
  assert len(data.load('synthetic_fruits/small', data_dir=data_dir).train_labels) == 600


def test_channel_stats_from_histograms_equal_the_float_computation():
  images = np.random.default_rng(0).integers(0, 256, (37, 5, 4, 3), dtype=np.uint8)
  mean, std = data.channel_stats(images)
  x = images.astype(np.float64) / 255.0
  np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-6)
  wide = data.channel_stats(images.astype(np.int16))  # The chunked float64 path.
  np.testing.assert_allclose(mean, wide[0], rtol=1e-7)
  np.testing.assert_allclose(std, wide[1], rtol=1e-7)
