"""Datasets as in-memory uint8 arrays, read through tensorflow-datasets.

TFDS prepares and reads the data without TensorFlow wherever it can: the built-in
dataset is stored as ArrayRecord and every dataset stored in a random-access format
(ArrayRecord, Parquet) is read through ``builder.as_data_source()``, which decodes
images with Pillow or OpenCV. Only a dataset stored as TFRecord (``tfds build``'s
default) needs TensorFlow (the ``tensorflow`` extra), imported here, CPU-only; without
it, loading one fails at once saying so. The decoded splits are cached as one ``.npz``
beside the prepared data so later runs skip decoding. Images stay uint8 in memory;
batches are gathered and normalized on device by :func:`normalize`.
"""

import contextlib
import dataclasses
import importlib
import json
import logging as py_logging
import os
import pathlib
import tempfile
import zipfile

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

BUILTIN = 'synthetic_fruits'
IMAGE_FOLDER = 'image_folder'
_CACHE_NAME = 'fundamentals_arrays.npz'
INSTALL_TENSORFLOW = "pip install -e '.[tensorflow]'"


class TensorFlowMissingError(ImportError, ValueError):
  """A dataset needs TensorFlow, which is not installed (a user error for the CLI)."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Train and test splits held in memory.

  Attributes:
    train_images, validation_images, test_images: uint8 ``[N, H, W, C]``; the
      validation split may be empty (N = 0).
    train_labels, validation_labels, test_labels: int32 ``[N]``.
    class_names: one name per label.
    mean, std: per-channel statistics of the *training* images scaled to [0, 1]
      (never of validation or test, never of augmented images).
  """
  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  class_names: tuple[str, ...]
  mean: np.ndarray
  std: np.ndarray
  validation_images: np.ndarray | None = None
  validation_labels: np.ndarray | None = None

  def __post_init__(self):
    if self.validation_images is None:
      object.__setattr__(self, 'validation_images', self.train_images[:0])
      object.__setattr__(self, 'validation_labels', self.train_labels[:0])

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_features(self) -> int:
    return int(np.prod(self.train_images.shape[1:]))


def channel_stats(images: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of uint8 images scaled to [0, 1], in float64 chunks."""
  if len(images) == 0:
    raise ValueError('cannot compute statistics of an empty split')
  if images.dtype == np.uint8:  # Exact integer sums from per-channel histograms (10× faster).
    values = np.arange(256, dtype=np.float64) / 255.0
    counts = np.stack([np.bincount(images[..., c].reshape(-1), minlength=256)
                       for c in range(images.shape[-1])]).astype(np.float64)
    count = images.size / images.shape[-1]
    mean = counts @ values / count
    std = np.sqrt(np.maximum(counts @ values**2 / count - mean ** 2, 1e-12))
    return mean.astype(np.float32), std.astype(np.float32)
  total = np.zeros(images.shape[-1])
  total_sq = np.zeros(images.shape[-1])
  for start in range(0, len(images), chunk):
    x = images[start:start + chunk].astype(np.float64) / 255.0
    total += x.sum(axis=tuple(range(x.ndim - 1)))
    total_sq += (x ** 2).sum(axis=tuple(range(x.ndim - 1)))
  count = images.size / images.shape[-1]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-12))
  return mean.astype(np.float32), std.astype(np.float32)


def normalize(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  """x = (image/255 − μ_c)/σ_c per channel, flattened to ``[B, H·W·C]`` float32.

  Flattened first, with μ and σ tiled over the pixels: the same arithmetic per element
  (so the same numbers), but a minor dimension of H·W·C instead of C = 3, which
  XLA:CPU vectorizes (7× faster: this was 40% of the 64-wide model's train step).
  """
  flat = jnp.reshape(images, (images.shape[0], -1))
  pixels = flat.shape[1] // jnp.shape(mean)[-1]
  return (flat.astype(jnp.float32) / 255.0 - jnp.tile(mean, pixels)) / jnp.tile(std, pixels)


def padded_batches(images: np.ndarray, batch_size: int):
  """Yields ``(batch, mask)`` over consecutive examples; the last batch is padded with
  zeros to ``batch_size`` (one compiled shape) and ``mask`` marks the real examples."""
  for start in range(0, len(images), batch_size):
    x = images[start:start + batch_size]
    mask = np.ones(len(x), np.float32)
    pad = batch_size - len(x)
    if pad:
      x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
      mask = np.concatenate([mask, np.zeros(pad, np.float32)])
    yield x, mask


def _tensorflow_on_cpu_only(needed_for: str, *, otherwise: str):
  """Imports TensorFlow with every GPU hidden, so it never claims accelerator memory.

  Raises:
    TensorFlowMissingError: naming ``needed_for``, the extra to install, and the
      ``otherwise`` that avoids TensorFlow.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise TensorFlowMissingError(f'{needed_for} needs TensorFlow, which is not '
                                 f'installed: {INSTALL_TENSORFLOW}; or {otherwise}') from None
  tf.config.set_visible_devices([], 'GPU')
  return tf


def _storage_format() -> str:
  """The file format the built-in dataset is prepared in: ArrayRecord, written and
  read without TensorFlow, where it is installed (everywhere but Windows); else
  TFRecord, which needs TensorFlow."""
  try:
    importlib.import_module('array_record')
  except ImportError:
    return 'tfrecord'
  return 'array_record'


def _reads_without_tensorflow(builder) -> bool:
  """Whether ``builder`` is stored in a random-access format (ArrayRecord, Parquet),
  which ``as_data_source`` reads without TensorFlow."""
  from tensorflow_datasets.core import file_adapters  # pylint: disable=g-import-not-at-top
  return bool(builder.info.available_file_formats()
              & file_adapters.FileFormat.with_random_access())


VALID_DATASETS = (
    f'valid: {BUILTIN}, {BUILTIN}/small (built in, prepared offline on first use), '
    f'{IMAGE_FOLDER} with --data_dir=FOLDER (FOLDER/train/<class>/<images> and '
    'FOLDER/test/<class>/<images>), or a TFDS catalog dataset prepared where there is '
    'network with `tfds build NAME --data_dir=DIR --file_format=array_record` and read '
    'with --data_dir=DIR (or $TFDS_DATA_DIR)')


@contextlib.contextmanager
def _quiet_tfds():
  """TFDS's warnings while it looks a name up (e.g. "Variant folder … has no
  dataset_info.json" for one never prepared) are kept from the user, whose one line
  is the error that follows, if any."""
  absl_logger = py_logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.setLevel(py_logging.ERROR)
  try:
    yield
  finally:
    absl_logger.setLevel(level)


def _configs(name: str) -> list[str]:
  """The config names of the TFDS builder ``name`` (none if it has none or is unknown)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return [c.name for c in tfds.builder_cls(name).BUILDER_CONFIGS]
  except (ValueError, AttributeError):
    return []


def _builder(name: str, data_dir):
  """The TFDS builder of ``name``; raises a one-line ValueError for a name TFDS does
  not know, cannot parse, or cannot open offline (a version or config it has not, a
  community namespace), saying what would be valid (:data:`VALID_DATASETS`)."""
  namespace, colon, rest = name.split('/')[0].partition(':')
  if colon and not rest[:1].isdigit() and not rest.startswith('*'):  # Not a version.
    raise ValueError(f'Unknown dataset {name!r}: {namespace}: names a TFDS community '
                     'namespace, whose datasets TFDS looks up over the network, which '
                     f'this project never does; {VALID_DATASETS}')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if name.split('/')[0] == BUILTIN:
    from fundamentals import synthetic_fruits  # pylint: disable=unused-import,g-import-not-at-top
  try:
    with _quiet_tfds():
      return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f'Unknown dataset {name!r}: neither built in nor in the TFDS catalog; '
                     f'{VALID_DATASETS}') from None
  except (ValueError, AssertionError, ImportError) as e:  # TFDS's errors for a bad name.
    base, _, config = name.partition('/')
    if config and 'BuilderConfig' in str(e):
      configs = _configs(base)
      raise ValueError(f'Unknown dataset {name!r}: {base} has no config '
                       f'{config.split(":")[0]!r}; valid: '
                       + (', '.join(f'{base}/{c}' for c in configs) if configs
                          else f'{base} (it has no configs)')) from None
    why = next((line.strip() for line in str(e).splitlines() if line.strip()),
               type(e).__name__)
    raise ValueError(f'Unknown dataset {name!r}: TFDS cannot open it offline ({why}); '
                     f'{VALID_DATASETS}') from None


def _prepare(builder, name: str):
  """Prepares the built-in dataset offline; refuses to download anything else."""
  with _quiet_tfds():
    prepared = builder.is_prepared()
  if prepared:
    return
  if name.split('/')[0] != BUILTIN:
    raise FileNotFoundError(
        f'Dataset {name!r} is not prepared under {builder.data_dir_root} and this '
        f'machine will not download it. Prepare it where there is network with '
        f'`tfds build {name} --data_dir=DIR --file_format=array_record` (read '
        'without TensorFlow; the default TFRecord needs it) and pass --data_dir=DIR.')
  file_format = _storage_format()
  logging.info('Preparing %s under %s as %s (once)...', name, builder.data_dir,
               file_format)
  if file_format == 'tfrecord':
    _tensorflow_on_cpu_only(f'Preparing {name} without ArrayRecord',
                            otherwise='pip install array_record')
  builder.download_and_prepare(file_format=file_format)


def _decode(builder) -> dict[str, np.ndarray]:
  """``{split}_images`` and ``{split}_labels`` of the train and test splits, through
  ``as_data_source`` (no TensorFlow) or, for TFRecord, TensorFlow's ``as_dataset``."""
  for split in ('train', 'test'):
    if split not in builder.info.splits:
      raise ValueError(f'{builder.name} has no {split!r} split; it has '
                       f'{sorted(builder.info.splits)}')
  if not builder.info.supervised_keys:
    raise ValueError(f'{builder.name} has no supervised keys (image, label)')
  if not _reads_without_tensorflow(builder):
    return _decode_with_tensorflow(builder)
  image_key, label_key = builder.info.supervised_keys
  arrays = {}
  for split in ('train', 'test'):
    source = builder.as_data_source(split=split)
    examples = source.__getitems__(range(len(source)))
    arrays[f'{split}_images'] = np.stack([e[image_key] for e in examples]).astype(np.uint8)
    arrays[f'{split}_labels'] = np.asarray([e[label_key] for e in examples], np.int32)
  return arrays


def _decode_with_tensorflow(builder) -> dict[str, np.ndarray]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name = builder.name + (f'/{builder.builder_config.name}' if builder.builder_config else '')
  stored = builder.info.file_format.value if builder.info.file_format else 'tfrecord'
  _tensorflow_on_cpu_only(
      f'Reading {name}, stored as {stored} under {builder.data_dir},',
      otherwise=(f'delete {builder.data_dir} to prepare it again as ArrayRecord'
                 if builder.name == BUILTIN else
                 f'rebuild it with `tfds build {name} --file_format=array_record`')
      + ', which reads without TensorFlow')
  arrays = {}
  for split in ('train', 'test'):
    images, labels = tfds.as_numpy(builder.as_dataset(
        split=split, batch_size=-1, as_supervised=True))
    arrays[f'{split}_images'] = images.astype(np.uint8)
    arrays[f'{split}_labels'] = labels.astype(np.int32)
  return arrays


def save_cache(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> bool:
  """Writes decoded arrays atomically to the ``.npz`` ``path``; returns whether it
  could. A cache is an optimization: where it cannot be written (a read-only or full
  data directory) the run goes on with one warning, and decodes again next time."""
  temporary = None
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix='.npz', delete=False) as f:
      temporary = f.name
      np.savez(f, **arrays)
    os.replace(temporary, path)
  except OSError as e:
    if temporary:
      with contextlib.suppress(OSError):
        os.unlink(temporary)
    logging.warning('cannot cache the decoded arrays in %s (%s); going on without',
                    path.parent, e.strerror or e)
    return False
  return True


def read_cache(path: pathlib.Path) -> dict[str, np.ndarray] | None:
  """The arrays cached at ``path``; None when there are none, or (with a warning) when
  the file cannot be read: they are decoded again."""
  if not path.exists():
    return None
  try:
    return _read_npz(path)
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    logging.warning('cannot read the cached arrays %s (%s); decoding again', path, e)
    return None


def split_validation(images: np.ndarray, labels: np.ndarray, fraction: float, *,
                     seed: int = 0, class_names: tuple[str, ...] = ()):
  """Carves a stratified validation split: ``round(fraction·n_c)`` of each class c.

  Deterministic for a given ``seed`` (independent of the training seed), so model
  selection on validation never looks at test. Returns (train, validation) pairs.
  Raises ValueError naming the first class (by ``class_names``, if given) that it
  would leave without a training example.
  """
  if not 0 <= fraction < 1:
    raise ValueError(f'validation_fraction={fraction} must be in [0, 1)')
  rng = np.random.default_rng(seed)
  held_out = []
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    count = int(round(fraction * len(members)))
    if count >= len(members):
      name = f' ({class_names[label]})' if 0 <= label < len(class_names) else ''
      raise ValueError(f'--validation_fraction={fraction} leaves no training example of '
                       f'class {label}{name}: it would hold out round({fraction}·'
                       f'{len(members)}) = {count} of its {len(members)}; use a smaller '
                       'fraction')
    held_out.extend(rng.permutation(members)[:count])
  mask = np.zeros(len(labels), bool)
  mask[np.asarray(held_out, int)] = True
  return (images[~mask], labels[~mask]), (images[mask], labels[mask])


def _locator_path() -> pathlib.Path:
  from fundamentals import rundir  # pylint: disable=g-import-not-at-top
  return rundir.default_cache_dir() / 'tfds_arrays.json'


def _locator_key(name: str, data_dir: str | None) -> str:
  root = data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
  return f'{name}@{pathlib.Path(root).expanduser().resolve()}'


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def _located_arrays(name: str, data_dir: str | None):
  """``(class_names, arrays)`` of a dataset an earlier load decoded, found through
  the locator (``$FUNDAMENTALS_CACHE/tfds_arrays.json``) without importing TFDS and
  TensorFlow (seconds at start-up); None when there is none or it cannot be read."""
  try:
    entry = json.loads(_locator_path().read_text())[_locator_key(name, data_dir)]
    return tuple(entry['class_names']), _read_npz(pathlib.Path(entry['arrays']))
  except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
    return None


def _locate(name: str, data_dir: str | None, arrays_path: pathlib.Path,
            class_names: tuple[str, ...]):
  """Records where ``name``'s decoded arrays are (best effort: a read-only cache
  directory only costs the next start-up the TFDS import)."""
  path = _locator_path()
  try:
    entries = json.loads(path.read_text()) if path.exists() else {}
    entries[_locator_key(name, data_dir)] = {'arrays': str(arrays_path),
                                             'class_names': list(class_names)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile('w', dir=path.parent, suffix='.json',
                                     delete=False) as f:
      json.dump(entries, f)
    os.replace(f.name, path)
  except (OSError, ValueError):
    pass


def _load_tfds(name: str, data_dir: str | None):
  located = _located_arrays(name, data_dir)
  if located is not None:
    return located
  builder = _builder(name, data_dir)
  _prepare(builder, name)
  cache = pathlib.Path(builder.data_dir) / _CACHE_NAME
  class_names = tuple(builder.info.features['label'].names)
  arrays = read_cache(cache)
  if arrays is None:
    arrays = _decode(builder)
    if not save_cache(cache, arrays):
      return class_names, arrays
  _locate(name, data_dir, cache, class_names)
  return class_names, arrays


def load(name: str = BUILTIN, *, data_dir: str | None = None,
         validation_fraction: float = 0.0, image_size: int = 64) -> Dataset:
  """Loads ``name`` into memory as uint8 arrays.

  Args:
    name: ``'synthetic_fruits'`` (built-in, prepared offline on first use),
      ``'synthetic_fruits/small'``, ``'image_folder'`` (``data_dir`` is then the
      folder, see ``fundamentals.image_folder``), or a prepared TFDS catalog dataset.
    data_dir: TFDS data directory (default: TFDS's, ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``), or the image folder.
    validation_fraction: share of each training class held out as validation when
      the source has no validation split.
    image_size: side length image folders are resized to.
  """
  if name == IMAGE_FOLDER:
    if not data_dir:
      raise ValueError('--dataset=image_folder needs --data_dir=<folder with train/ '
                       'and test/>')
    from fundamentals import image_folder  # pylint: disable=g-import-not-at-top
    class_names, arrays = image_folder.load(data_dir, image_size=image_size)
  else:
    if data_dir and not os.path.isdir(data_dir):
      raise FileNotFoundError(
          f'--data_dir={data_dir} is not a directory; create it (the built-in dataset is '
          'prepared there on first use), or leave --data_dir unset for TFDS\'s default '
          '($TFDS_DATA_DIR or ~/tensorflow_datasets)')
    class_names, arrays = _load_tfds(name, data_dir)
  if arrays['train_images'].ndim != 4:
    raise ValueError(f'{name} images have shape {arrays["train_images"].shape[1:]}; '
                     'expected [height, width, channels]')
  check_classes(name, class_names, arrays)
  if 'validation_images' not in arrays and validation_fraction > 0:
    (arrays['train_images'], arrays['train_labels']), (
        arrays['validation_images'], arrays['validation_labels']) = split_validation(
            arrays['train_images'], arrays['train_labels'], validation_fraction,
            class_names=class_names)
  mean, std = channel_stats(arrays['train_images'])
  return Dataset(name=name, class_names=class_names, mean=mean, std=std, **arrays)


def check_classes(name: str, class_names: tuple[str, ...], arrays: dict[str, np.ndarray]):
  """Raises ValueError unless there are two or more classes (a classifier of one
  has nothing to learn: its loss is 0 from the start) and every label of every
  split names one of them."""
  if len(class_names) < 2:
    noun = 'class' if len(class_names) == 1 else 'classes'
    raise ValueError(f'{name} has {len(class_names)} {noun} ({", ".join(class_names) or "none"})'
                     '; a classifier needs two or more')
  for key in sorted(arrays):
    if key.endswith('_labels') and len(arrays[key]) and not (
        0 <= arrays[key].min() and arrays[key].max() < len(class_names)):
      raise ValueError(f'{name}: its {key.removesuffix("_labels")} labels span '
                       f'[{arrays[key].min()}, {arrays[key].max()}], but it names '
                       f'{len(class_names)} classes')


def load_configured(config) -> Dataset:
  """:func:`load` with the data settings of a ``Config``."""
  return load(config.dataset, data_dir=config.data_dir,
              validation_fraction=config.validation_fraction,
              image_size=config.image_size)
