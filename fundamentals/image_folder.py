"""Image folders (``train/<class>/*.png``, ``test/<class>/*``, optional ``validation/``).

Every file is checked and decoded with Pillow, converted to RGB (grayscale expanded,
alpha composited onto white, palettes resolved) and resized to ``image_size`` when its
size differs. Files that are not images, or are corrupt, are skipped with a warning that
names them and counts them; structural problems (missing folder, empty class folder,
class lists that differ between splits) raise an error naming the offending path.

Why not ``tfds.folder_dataset.ImageFolder``: it decodes with TensorFlow at read time, so
one corrupt file fails deep inside a TF stack trace, and it cannot convert modes or
resize mixed sizes. The decoded arrays are cached (uint8 ``.npz``, keyed by the paths,
sizes and modification times of the files and by ``image_size``), so a second run does
not decode again.
"""

import hashlib
import os
import pathlib
import tempfile

from absl import logging
import numpy as np
from PIL import Image

from fundamentals import rundir

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')
SPLITS = ('train', 'validation', 'test')
_MAX_NAMED = 5  # Files named in one warning; the rest are counted.


class ImageFolderError(ValueError):
  """The folder's layout cannot be read as an image-folder dataset."""


def _class_dirs(split_dir: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith('.'))


def scan(root: str | os.PathLike) -> tuple[tuple[str, ...], dict[str, list[tuple[pathlib.Path, int]]]]:
  """Returns the sorted class names and, per split present, its (file, label) pairs.

  Raises:
    ImageFolderError: naming the missing folder, empty class folder, or the classes
      that differ between splits.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise ImageFolderError(
        f'image folder {str(root)!r} does not exist; expected {root}/train/<class>/*.png '
        f'and {root}/test/<class>/*.png')
  for required in ('train', 'test'):
    if not (root / required).is_dir():
      raise ImageFolderError(f'{root} has no {required}/ folder; expected '
                             f'{root}/{required}/<class>/<images>')
  classes = tuple(p.name for p in _class_dirs(root / 'train'))
  if not classes:
    raise ImageFolderError(f'{root / "train"} has no class folders')
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
    named = ', '.join(str(p) for p in paths[:_MAX_NAMED])
    more = f' and {len(paths) - _MAX_NAMED} more' if len(paths) > _MAX_NAMED else ''
    logging.warning('%d %s: %s%s', len(paths), what, named, more)


def read_split(pairs: list[tuple[pathlib.Path, int]], image_size: int):
  """Decodes a split; skips non-images and corrupt files with one warning each kind."""
  images, labels, not_images, corrupt, resized = [], [], [], [], []
  for path, label in pairs:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
      not_images.append(path)
      continue
    try:
      array, was_resized = decode(path, image_size)
    except (OSError, ValueError, SyntaxError) as e:  # Pillow's errors for bad files.
      logging.debug('cannot decode %s: %s', path, e)
      corrupt.append(path)
      continue
    images.append(array)
    labels.append(label)
    if was_resized:
      resized.append(path)
  _warn('files skipped (not an image by extension)', not_images)
  _warn('files skipped (corrupt or unreadable images)', corrupt)
  if resized:
    logging.info('%d images resized to %dx%d', len(resized), image_size, image_size)
  if not images:
    raise ImageFolderError(
        f'no readable images among {len(pairs)} files, e.g. {pairs[0][0]}')
  return np.stack(images), np.asarray(labels, np.int32)


def _fingerprint(files, image_size: int) -> str:
  digest = hashlib.sha256(str(image_size).encode())
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
  if cache.exists():
    with np.load(cache) as f:
      return classes, {k: f[k] for k in f.files}
  arrays = {}
  for split, pairs in files.items():
    arrays[f'{split}_images'], arrays[f'{split}_labels'] = read_split(pairs, image_size)
  cache.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=cache.parent, suffix='.npz', delete=False) as f:
    np.savez(f, **arrays)
  os.replace(f.name, cache)
  return classes, arrays
