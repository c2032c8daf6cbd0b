"""The built-in offline dataset: procedurally rendered "synthetic fruits", via TFDS.

30 classes, 64×64×3 uint8 images. A class is a family: a hue, a body shape (round,
elongated or lobed) and a skin texture (plain, stripes or spots). Every image draws
its own position, size, aspect, rotation, hue/saturation/brightness jitter, lighting
direction, background colour and pixel noise, so an MLP on raw pixels has to learn
colour, shape and texture under nuisance variation: well above chance, below 100%.

Rendering is deterministic: image ``i`` of split ``s`` is drawn from
``numpy.random.default_rng([seed, s, i])``. The builder is a real
``tfds.core.GeneratorBasedBuilder`` so it is prepared and read like any TFDS dataset,
offline, in seconds, and without TensorFlow: the images are handed to TFDS as Pillow
images, which TFDS encodes with Pillow (NumPy arrays it encodes with
``tf.image.encode_png``), and ``fundamentals.data`` stores them as ArrayRecord.
"""

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

IMAGE_SIZE = 64
HUE_NAMES = ('red', 'orange', 'yellow', 'lime', 'green', 'teal', 'cyan', 'blue',
             'purple', 'magenta')
SHAPES = ('round', 'elongated', 'lobed')
TEXTURES = ('plain', 'stripes', 'spots')
NUM_CLASSES = len(HUE_NAMES) * len(SHAPES)
_SPLIT_IDS = {'train': 0, 'test': 1}


def class_prototype(label: int) -> dict:
  """The fixed family of class ``label``: hue in [0, 1), shape and texture names.

  Ten hues × three shapes; the texture cycles with a different period so that
  classes sharing a hue or a shape differ in another attribute.
  """
  if not 0 <= label < NUM_CLASSES:
    raise ValueError(f'{label=} must be in [0, {NUM_CLASSES})')
  return {
      'hue': (label % 10) / 10.0,
      'shape': SHAPES[label // 10],
      'texture': TEXTURES[(label + label // 10) % 3],
  }


def class_name(label: int) -> str:
  """``'<hue>_<shape>_<texture>'``, e.g. ``'red_round_plain'``."""
  proto = class_prototype(label)
  return f"{HUE_NAMES[label % 10]}_{proto['shape']}_{proto['texture']}"


CLASS_NAMES = tuple(class_name(label) for label in range(NUM_CLASSES))


def _hsv_to_rgb(h, s, v):
  """Vectorized HSV → RGB, all inputs broadcastable arrays in [0, 1]."""
  h6 = (h % 1.0) * 6.0
  k = lambda n: (n + h6) % 6.0
  f = lambda n: v - v * s * np.clip(np.minimum(k(n), 4.0 - k(n)), 0.0, 1.0)
  return np.stack([f(5.0), f(3.0), f(1.0)], axis=-1)


def render(label: int, rng: np.random.Generator,
           size: int = IMAGE_SIZE) -> np.ndarray:
  """Renders one image of class ``label`` as a ``[size, size, 3]`` uint8 array."""
  proto = class_prototype(label)
  coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0  # pixel centres in [-1, 1]
  yy, xx = np.meshgrid(coords, coords, indexing='ij')
  cy, cx = rng.uniform(-0.3, 0.3, size=2)
  radius = rng.uniform(0.35, 0.65)
  angle = rng.uniform(0.0, 2.0 * np.pi)
  # Body coordinates: translate, rotate, then scale by the body radius.
  dy, dx = yy - cy, xx - cx
  u = (np.cos(angle) * dx + np.sin(angle) * dy) / radius
  w = (-np.sin(angle) * dx + np.cos(angle) * dy) / radius
  if proto['shape'] == 'round':
    aspect = rng.uniform(0.85, 1.15)
    body = (u / aspect) ** 2 + (w * aspect) ** 2
  elif proto['shape'] == 'elongated':
    aspect = rng.uniform(1.6, 2.2)
    body = (u / aspect) ** 2 * aspect ** 0.5 + (w * aspect / 1.6) ** 2
  else:  # lobed: a star-like outline r(θ) = 1 + a·cos(kθ)
    lobes = rng.integers(4, 7)
    theta = np.arctan2(w, u)
    outline = 1.0 + rng.uniform(0.15, 0.3) * np.cos(lobes * theta)
    body = (u ** 2 + w ** 2) / outline ** 2
  mask = np.clip((1.0 - body) * size * radius / 2.0, 0.0, 1.0)  # antialiased edge

  hue = proto['hue'] + rng.normal(0.0, 0.025)
  sat = np.clip(rng.uniform(0.55, 0.95), 0.0, 1.0)
  val = rng.uniform(0.55, 0.95)
  if proto['texture'] == 'stripes':
    freq = rng.uniform(3.0, 5.0)
    pattern = 0.5 + 0.5 * np.sin(freq * np.pi * w + rng.uniform(0, 2 * np.pi))
    val_map = val * (1.0 - 0.45 * pattern)
  elif proto['texture'] == 'spots':
    freq = rng.uniform(4.0, 6.0)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    spots = np.sin(freq * np.pi * u + phase[0]) * np.sin(freq * np.pi * w + phase[1])
    val_map = val * (1.0 - 0.5 * (spots > 0.55))
  else:
    val_map = np.full_like(u, val)
  # Lambertian-looking shading from a random light direction.
  light = rng.uniform(0.0, 2.0 * np.pi)
  shade = 1.0 + 0.25 * (np.cos(light) * u + np.sin(light) * w) - 0.15 * np.clip(body, 0, 1)
  fruit = _hsv_to_rgb(np.full_like(u, hue), np.full_like(u, sat),
                      np.clip(val_map * shade, 0.0, 1.0))

  background = rng.uniform(0.7, 1.0, size=3) * rng.uniform(0.8, 1.0)
  background = background + 0.08 * rng.normal(size=(1, 1, 3)) * yy[..., None]
  image = mask[..., None] * fruit + (1.0 - mask[..., None]) * background
  image = image + rng.normal(0.0, 0.04, size=image.shape)
  return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def generate(split: str, num_per_class: int, *, seed: int = 0):
  """Yields ``(key, image, label)`` for ``num_per_class`` images of every class."""
  if split not in _SPLIT_IDS:
    raise ValueError(f'Unknown {split=}; valid: {sorted(_SPLIT_IDS)}')
  for index in range(num_per_class * NUM_CLASSES):
    label = index % NUM_CLASSES
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    yield index, render(label, rng), label


class SyntheticFruitsConfig(tfds.core.BuilderConfig):
  """Number of images per class in each split."""

  def __init__(self, *, train_per_class: int, test_per_class: int, **kwargs):
    super().__init__(version=tfds.core.Version('1.0.0'), **kwargs)
    self.train_per_class = train_per_class
    self.test_per_class = test_per_class


class SyntheticFruits(tfds.core.GeneratorBasedBuilder):
  """30-class procedurally rendered fruit images, 64×64×3, prepared offline."""

  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [
      SyntheticFruitsConfig(name='default', train_per_class=200, test_per_class=50,
                            description='6,000 train and 1,500 test images.'),
      SyntheticFruitsConfig(name='small', train_per_class=20, test_per_class=10,
                            description='600 train and 300 test images, for tests.'),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data is rendered.
    return {
        'train': self._generate_examples('train', self.builder_config.train_per_class),
        'test': self._generate_examples('test', self.builder_config.test_per_class),
    }

  def _generate_examples(self, split, num_per_class):
    for key, image, label in generate(split, num_per_class):
      # PNG is lossless: Pillow's encoding decodes to the pixels TensorFlow's did.
      yield key, {'image': Image.fromarray(image), 'label': label}
