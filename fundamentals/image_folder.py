"""Image folders (``train/<class>/*.png``, ``test/<class>/*``, optional ``validation/``).

Every file is checked and decoded with Pillow, converted to RGB (grayscale expanded,
alpha composited onto white, palettes resolved) and resized to ``image_size`` when its
size differs. Files whose names are not those of images (``notes.txt``) are skipped
with one warning that names and counts them. A file named as an image that Pillow
cannot decode (corrupt, truncated, or another format) is refused, naming the first few
and their count: a course's dataset should not silently lack images, and which ones
are wrong is for the person who made the folder to decide. Structural problems
(missing folder, a file instead of one, no or a single class folder, an empty class
folder, a class with no readable image, class lists that differ between splits) raise
an error naming the offending path.

Why not ``tfds.folder_dataset.ImageFolder``: it decodes with TensorFlow at read time, so
one corrupt file fails deep inside a TF stack trace, and it cannot convert modes or
resize mixed sizes. The decoded arrays are cached (uint8 ``.npz``, keyed by the paths,
sizes and modification times of the files and by ``image_size``), so a second run does
not decode again; a cache that cannot be written or read is only a warning.
"""

import hashlib
import os
import pathlib

from absl import logging
import numpy as np
from PIL import Image

from fundamentals import data
from fundamentals import rundir

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')
SPLITS = ('train', 'validation', 'test')
_MAX_NAMED = 5  # Files named in one message; the rest are counted.


class ImageFolderError(ValueError):
  """The folder's layout cannot be read as an image-folder dataset."""


def _class_dirs(split_dir: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith('.'))


def _some(names: list[str], count: int = _MAX_NAMED) -> str:
  """``a, b, c`` or ``a, b, c and 4 more``."""
  more = f' and {len(names) - count} more' if len(names) > count else ''
  return ', '.join(names[:count]) + more


def _check_root(root: pathlib.Path):
  layout = f'expected {root}/train/<class>/<images> and {root}/test/<class>/<images>'
  if not root.exists():
    raise ImageFolderError(f'--data_dir={root}: the image folder does not exist; {layout}')
  if not root.is_dir():
    raise ImageFolderError(f'--data_dir={root} is a file, not an image folder; {layout}')
  for required in ('train', 'test'):
    if not (root / required).is_dir():
      held = sorted(p.name + ('/' if p.is_dir() else '') for p in root.iterdir()
                    if not p.name.startswith('.'))
      raise ImageFolderError(
          f'--data_dir={root} has no {required}/ folder; {layout} (it holds '
          + (_some(held) if held else 'nothing') + ')')


def scan(root: str | os.PathLike) -> tuple[tuple[str, ...], dict[str, list[tuple[pathlib.Path, int]]]]:
  """Returns the sorted class names and, per split present, its (file, label) pairs.

  Raises:
    ImageFolderError: naming the missing folder (or the file in its place), a train
      split of fewer than two class folders, an empty class folder, or the classes
      that differ between splits.
  """
  root = pathlib.Path(root)
  _check_root(root)
  classes = tuple(p.name for p in _class_dirs(root / 'train'))
  if not classes:
    loose = [p.name for p in sorted((root / 'train').iterdir()) if p.is_file()]
    raise ImageFolderError(
        f'{root / "train"} has no class folders; expected one folder of images per '
        f'class, {root}/train/<class>/<images>'
        + (f' (it holds {len(loose)} file{"s" * (len(loose) != 1)} directly, e.g. '
           f'{_some(loose, 3)})'
           if loose else ''))
  if len(classes) < 2:
    raise ImageFolderError(f'{root / "train"} has one class folder ({classes[0]}); a '
                           'classifier needs two or more')
  files = {}
  for split in SPLITS:
    split_dir = root / split
    if not split_dir.is_dir():
      continue
    split_classes = tuple(p.name for p in _class_dirs(split_dir))
    if split_classes != classes:
      extra = sorted(set(split_classes) - set(classes))
      missing = sorted(set(classes) - set(split_classes))
      raise ImageFolderError(
          f'{split_dir} has different classes from {root / "train"}: '
          f'not in train: {extra}; missing from {split}: {missing}')
    files[split] = []
    for label, name in enumerate(classes):
      entries = sorted(p for p in (split_dir / name).iterdir()
                       if p.is_file() and not p.name.startswith('.'))
      if not entries:
        raise ImageFolderError(f'class folder {split_dir / name} is empty')
      files[split].extend((p, label) for p in entries)
  return classes, files


def _to_rgb(image: Image.Image) -> Image.Image:
  if image.mode in ('RGBA', 'LA') or (image.mode == 'P' and 'transparency' in image.info):
    rgba = image.convert('RGBA')
    white = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert('RGB')
  return image.convert('RGB')


def decode(path: pathlib.Path, image_size: int) -> tuple[np.ndarray, bool]:
  """Decodes one file to ``[image_size, image_size, 3]`` uint8; returns (array, resized).

  Raises:
    OSError / ValueError from Pillow when the file is not a readable image.
  """
  with Image.open(path) as image:
    image.load()
    rgb = _to_rgb(image)
  resized = rgb.size != (image_size, image_size)
  if resized:
    rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
  return np.asarray(rgb, np.uint8), resized


def _warn(what: str, paths: list[pathlib.Path]):
  if paths:
    logging.warning('%d %s: %s', len(paths), what, _some([str(p) for p in paths]))


def read_split(pairs: list[tuple[pathlib.Path, int]], image_size: int, *,
               classes: tuple[str, ...] = ()):
  """Decodes a split (module docstring): skips files not named as images, with one
  warning; refuses a class with no readable image, then any corrupt image.

  Raises:
    ImageFolderError: naming the class folder left without an image, or the first
      few files that cannot be decoded and how many there are.
  """
  images, labels, not_images, corrupt, resized = [], [], [], [], []
  for path, label in pairs:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
      not_images.append(path)
      continue
    try:
      array, was_resized = decode(path, image_size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
      logging.debug('cannot decode %s: %s', path, e)  # Pillow's errors for bad files.
      corrupt.append(path)
      continue
    images.append(array)
    labels.append(label)
    if was_resized:
      resized.append(path)
  without = sorted({label for _, label in pairs} - set(labels))
  if without:  # Every file of the class is corrupt or no image: name the class.
    files = [p for p, label in pairs if label == without[0]]
    bad = len(set(files) & set(corrupt))
    raise ImageFolderError(
        f'class {classes[without[0]] if classes else without[0]} has no readable image '
        f'in {files[0].parent}: of its {len(files)} files, {bad} cannot be decoded and '
        f'{len(files) - bad} are not named as images ({", ".join(IMAGE_SUFFIXES)}), '
        f'e.g. {_some([p.name for p in files], 3)}')
  if corrupt:
    raise ImageFolderError(
        f'{len(corrupt)} of {len(pairs) - len(not_images)} image files cannot be decoded '
        f'(corrupt, truncated or not the format their name says): '
        f'{_some([str(p) for p in corrupt])}; fix or remove them (a dataset silently '
        'missing images would skew what it teaches)')
  _warn('files skipped (not named as images: '
        f'{", ".join(IMAGE_SUFFIXES)})', not_images)
  if resized:
    logging.info('%d images resized to %dx%d', len(resized), image_size, image_size)
  return np.stack(images), np.asarray(labels, np.int32)


# Part of the cache key: caches written under other rules (before corrupt images were
# refused, when they were skipped) are not read.
_CACHE_VERSION = 2


def _fingerprint(files, image_size: int) -> str:
  digest = hashlib.sha256(f'v{_CACHE_VERSION}|{image_size}'.encode())
  for split, pairs in sorted(files.items()):
    for path, label in pairs:
      stat = path.stat()
      digest.update(f'{split}|{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n'.encode())
  return digest.hexdigest()[:20]


def load(root: str | os.PathLike, *, image_size: int = 64,
         cache_dir: str | os.PathLike | None = None):
  """Returns ``(class_names, arrays)`` with ``{split}_images``/``{split}_labels``.

  Decoded arrays are cached under ``cache_dir`` (default ``$FUNDAMENTALS_CACHE`` or
  ``~/.cache/fundamentals``); the source folder is only read, never written.
  """
  if image_size < 1:
    raise ValueError(f'{image_size=} must be positive')
  classes, files = scan(root)
  cache_dir = pathlib.Path(cache_dir) if cache_dir else rundir.default_cache_dir()
  cache = cache_dir / 'image_folder' / f'{_fingerprint(files, image_size)}.npz'
  cached = data.read_cache(cache)
  if cached is not None:
    return classes, cached
  arrays = {}
  for split, pairs in files.items():
    arrays[f'{split}_images'], arrays[f'{split}_labels'] = read_split(
        pairs, image_size, classes=classes)
  data.save_cache(cache, arrays)
  return classes, arrays
