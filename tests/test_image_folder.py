"""Image folders: layout, conversions, bad input, caching, and the real fruits30 set."""

import logging as py_logging
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import FRUITS30
from fundamentals import data
from fundamentals import image_folder


def write(path, array, mode=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array, mode).save(path)


def rgb(value, size=8):
  return np.full((size, size, 3), value, np.uint8)


@pytest.fixture
def folder(tmp_path):
  root = tmp_path / 'fruits'
  for split, count in (('train', 3), ('test', 2)):
    for label, name in enumerate(('banana', 'apple')):  # sorted: apple=0, banana=1
      for i in range(count):
        write(root / split / name / f'{i}.png', rgb(40 * label + i))
  return root


def test_classes_are_sorted_folder_names_and_images_keep_their_pixels(folder, tmp_path):
  classes, arrays = image_folder.load(folder, image_size=8, cache_dir=tmp_path / 'c')
  assert classes == ('apple', 'banana')
  assert arrays['train_images'].shape == (6, 8, 8, 3)
  assert arrays['train_images'].dtype == np.uint8
  np.testing.assert_array_equal(arrays['train_labels'], [0, 0, 0, 1, 1, 1])
  # banana (folder order) was written with value 0..2, apple with 40..42.
  np.testing.assert_array_equal(arrays['train_images'][:, 0, 0, 0], [40, 41, 42, 0, 1, 2])
  assert 'validation_images' not in arrays


def test_grayscale_rgba_and_mixed_sizes_are_converted(folder, tmp_path):
  write(folder / 'train' / 'apple' / 'gray.png', np.full((8, 8), 100, np.uint8), 'L')
  rgba = np.zeros((8, 8, 4), np.uint8)
  rgba[..., 0] = 200
  rgba[..., 3] = 0  # fully transparent: composited onto white
  write(folder / 'train' / 'apple' / 'rgba.png', rgba, 'RGBA')
  write(folder / 'train' / 'apple' / 'big.png', rgb(77, size=32))
  classes, arrays = image_folder.load(folder, image_size=8, cache_dir=tmp_path / 'c')
  images = arrays['train_images']
  assert images.shape == (9, 8, 8, 3)
  pixels = {tuple(img[0, 0]) for img in images}
  assert (100, 100, 100) in pixels and (255, 255, 255) in pixels and (77, 77, 77) in pixels


def test_corrupt_and_non_image_files_are_skipped_with_a_counted_warning(folder, tmp_path, caplog):
  (folder / 'train' / 'apple' / 'broken.png').write_bytes(b'\x89PNG not really')
  (folder / 'train' / 'apple' / 'notes.txt').write_text('hello')
  with caplog.at_level(py_logging.WARNING):
    _, arrays = image_folder.load(folder, image_size=8, cache_dir=tmp_path / 'c')
  assert len(arrays['train_labels']) == 6
  text = caplog.text
  assert '1 files skipped (corrupt or unreadable images)' in text and 'broken.png' in text
  assert '1 files skipped (not an image by extension)' in text and 'notes.txt' in text


@pytest.mark.parametrize('damage, message', [
    (lambda root: (root / 'test' / 'cherry').mkdir(), "not in train: ['cherry']"),
    (lambda root: [p.unlink() for p in (root / 'test' / 'apple').iterdir()],
     'apple is empty'),
    (lambda root: shutil.rmtree(root / 'test'), 'has no test/ folder'),
])
def test_structural_problems_raise_naming_the_path(folder, tmp_path, damage, message):
  damage(folder)
  with pytest.raises(image_folder.ImageFolderError, match=re.escape(message)):
    image_folder.load(folder, image_size=8, cache_dir=tmp_path / 'c')


def test_missing_folder_says_what_layout_is_expected(tmp_path):
  with pytest.raises(image_folder.ImageFolderError, match='does not exist.*train/<class>'):
    image_folder.load(tmp_path / 'nope', cache_dir=tmp_path / 'c')


def test_second_load_reads_the_cache_and_a_changed_file_invalidates_it(folder, tmp_path, monkeypatch):
  cache = tmp_path / 'c'
  _, first = image_folder.load(folder, image_size=8, cache_dir=cache)
  calls = []
  original = image_folder.decode
  monkeypatch.setattr(image_folder, 'decode', lambda *a: calls.append(a) or original(*a))
  _, second = image_folder.load(folder, image_size=8, cache_dir=cache)
  assert not calls
  np.testing.assert_array_equal(first['train_images'], second['train_images'])
  write(folder / 'train' / 'apple' / '0.png', rgb(250))
  _, third = image_folder.load(folder, image_size=8, cache_dir=cache)
  assert calls and third['train_images'][0, 0, 0, 0] == 250


def test_validation_folder_is_used_when_present(folder, tmp_path):
  for label, name in enumerate(('apple', 'banana')):
    write(folder / 'validation' / name / '0.png', rgb(9))
  ds = data.load('image_folder', data_dir=str(folder), image_size=8,
                 validation_fraction=0.5)
  assert len(ds.validation_labels) == 2 and len(ds.train_labels) == 6


@pytest.mark.skipif(not FRUITS30.is_dir(), reason=f'real data not found at {FRUITS30}')
def test_fruits30_loads_as_30_classes_of_75_train_and_25_test(tmp_path, monkeypatch):
  monkeypatch.setenv('FUNDAMENTALS_CACHE', str(tmp_path))
  ds = data.load('image_folder', data_dir=str(FRUITS30), validation_fraction=0.2)
  assert ds.num_classes == 30
  assert ds.class_names == tuple((FRUITS30 / 'classes.txt').read_text().split())
  assert ds.train_images.shape[1:] == (64, 64, 3)
  np.testing.assert_array_equal(np.bincount(ds.train_labels), 60)
  np.testing.assert_array_equal(np.bincount(ds.validation_labels), 15)
  np.testing.assert_array_equal(np.bincount(ds.test_labels), 25)
