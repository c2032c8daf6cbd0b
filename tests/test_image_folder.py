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


def test_files_not_named_as_images_are_skipped_with_one_counted_warning(folder, tmp_path,
                                                                        caplog):
  (folder / 'train' / 'apple' / 'notes.txt').write_text('hello')
  (folder / 'train' / 'apple' / 'labels.csv').write_text('a,b')
  with caplog.at_level(py_logging.WARNING):
    _, arrays = image_folder.load(folder, image_size=8, cache_dir=tmp_path / 'c')
  assert len(arrays['train_labels']) == 6
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= py_logging.WARNING]
  assert len(warnings) == 1, warnings
  assert warnings[0].startswith('2 files skipped (not named as images: .png, ')
  assert 'apple/labels.csv' in warnings[0] and 'apple/notes.txt' in warnings[0]


def test_corrupt_images_are_refused_naming_the_first_few_and_their_count(folder, tmp_path):
  """Refused, not skipped: a course's dataset must not silently lack images."""
  for i in range(7):
    (folder / 'train' / 'apple' / f'broken{i}.png').write_bytes(b'\x89PNG not really')
  with pytest.raises(image_folder.ImageFolderError) as refused:
    image_folder.load(folder, image_size=8, cache_dir=tmp_path / 'c')
  message = str(refused.value)
  assert re.match(r'7 of 13 image files cannot be decoded \(corrupt, truncated or not the '
                  r'format their name says\): .*apple/broken0\.png, .*apple/broken4\.png '
                  r'and 2 more; fix or remove them', message), message
  assert '\n' not in message and not (tmp_path / 'c').exists()  # Nothing cached.


@pytest.mark.parametrize('spoil, message', [
    (lambda f: f.write_bytes(b'truncated'), 'of its 3 files, 3 cannot be decoded and 0 are '
                                            'not named as images'),
    (lambda f: f.rename(f.with_suffix('.txt')), 'of its 3 files, 0 cannot be decoded and 3 '
                                                'are not named as images'),
], ids=['corrupt', 'not images'])
def test_a_class_without_a_readable_image_is_refused_naming_it(folder, tmp_path, spoil,
                                                               message):
  for f in sorted((folder / 'train' / 'banana').iterdir()):
    spoil(f)
  with pytest.raises(image_folder.ImageFolderError,
                     match=f'^class banana has no readable image in .*train/banana: '
                           f'{message}'):
    image_folder.load(folder, image_size=8, cache_dir=tmp_path / 'c')


def keep_only(root, *classes):
  for split in ('train', 'test'):
    for name in ('apple', 'banana'):
      if name not in classes:
        shutil.rmtree(root / split / name)


@pytest.mark.parametrize('damage, message', [
    (lambda root: (root / 'test' / 'cherry').mkdir(), "not in train: ['cherry']"),
    (lambda root: [p.unlink() for p in (root / 'test' / 'apple').iterdir()],
     'apple is empty'),
    (lambda root: shutil.rmtree(root / 'test'), 'has no test/ folder'),
    (lambda root: keep_only(root, 'apple'), 'train has one class folder (apple); a '
                                            'classifier needs two or more'),
    (lambda root: keep_only(root) or write(root / 'train' / 'loose.png', rgb(0)),
     'fruits/train/<class>/<images> (it holds 1 file directly, e.g. loose.png)'),
])
def test_structural_problems_raise_naming_the_path(folder, tmp_path, damage, message):
  damage(folder)
  with pytest.raises(image_folder.ImageFolderError, match=re.escape(message)):
    image_folder.load(folder, image_size=8, cache_dir=tmp_path / 'c')


def test_missing_folder_says_what_layout_is_expected(tmp_path):
  with pytest.raises(image_folder.ImageFolderError, match='does not exist.*train/<class>'):
    image_folder.load(tmp_path / 'nope', cache_dir=tmp_path / 'c')
  (tmp_path / 'file').write_text('x')
  with pytest.raises(image_folder.ImageFolderError, match='file is a file, not an image '
                                                          'folder; expected .*train/<class>'):
    image_folder.load(tmp_path / 'file', cache_dir=tmp_path / 'c')


def test_a_folder_without_train_says_what_it_holds(folder, tmp_path):
  """The usual slip: --data_dir naming the train/ folder itself."""
  with pytest.raises(image_folder.ImageFolderError,
                     match=r'train has no train/ folder; .*\(it holds apple/, banana/\)'):
    image_folder.load(folder / 'train', cache_dir=tmp_path / 'c')


def test_a_cache_that_cannot_be_written_or_read_is_only_a_warning(folder, tmp_path,
                                                                  caplog):
  (tmp_path / 'ro').write_text('a file where the cache folder would be')
  with caplog.at_level(py_logging.WARNING):
    _, arrays = image_folder.load(folder, image_size=8, cache_dir=tmp_path / 'ro')
  assert len(arrays['train_labels']) == 6
  assert 'cannot cache the decoded arrays in' in caplog.text
  cache = tmp_path / 'c'
  image_folder.load(folder, image_size=8, cache_dir=cache)
  [written] = (cache / 'image_folder').iterdir()
  written.write_bytes(b'damaged')
  caplog.clear()
  with caplog.at_level(py_logging.WARNING):
    _, again = image_folder.load(folder, image_size=8, cache_dir=cache)
  np.testing.assert_array_equal(again['train_images'], arrays['train_images'])
  assert 'decoding again' in caplog.text


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
