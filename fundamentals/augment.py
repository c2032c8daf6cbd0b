"""Data augmentation on device: per-example random transforms, jitted and vmapped.

Geometric transforms (flip, crop, rotate) are written as *inverse coordinate maps*:
``(key, y, x, shape) -> (src_y, src_x)`` says where each output pixel samples its
input. :func:`make_augment` composes the named ones into a single map and samples the
image once, bilinearly with edges extended, so any combination costs one gather; the
photometric transform (color) acts on pixel values before it. Each example gets its own key;
images go uint8 → float → uint8, so the augmented batch is normalized like any other.

Augmentation belongs to *training batches only*: evaluation, the normalization
statistics (computed from the raw training split in ``data.load``) and BatchNorm
calibration never see it. ``train.make_train_step`` is its only caller.
"""

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

CoordinateMap = Callable[..., tuple[jax.Array, jax.Array]]


def flip_coordinates(key, y, x, shape):
  """Left–right mirror with probability ½: x ← W − 1 − x."""
  return y, jnp.where(jax.random.bernoulli(key), shape[1] - 1 - x, x)


def crop_coordinates(key, y, x, shape, *, pad: int = 6):
  """Random translation, as cropping an H×W window from the image edge-padded by ``pad``:
  (y, x) ← (y + d_y − pad, x + d_x − pad), d ~ U{0, …, 2·pad}."""
  del shape
  dy, dx = jax.random.randint(key, (2,), 0, 2 * pad + 1)
  return y + dy - pad, x + dx - pad


def rotate_coordinates(key, y, x, shape, *, max_degrees: float = 15.0):
  """Small rotation about the centre, θ ~ U(±max_degrees); see :func:`rotate_by`."""
  theta = jax.random.uniform(key, (), minval=-1, maxval=1) * max_degrees * math.pi / 180
  return _rotated(y, x, shape, theta)


def _rotated(y, x, shape, theta):
  cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
  return (cy + jnp.cos(theta) * (y - cy) - jnp.sin(theta) * (x - cx),
          cx + jnp.sin(theta) * (y - cy) + jnp.cos(theta) * (x - cx))


def color(key: jax.Array, image: jax.Array, *, brightness: float = 0.15,
          contrast: float = 0.25, saturation: float = 0.3) -> jax.Array:
  """Colour jitter: x ← x + b, then (x − mean)·c + mean, then gray + (x − gray)·s.

  b ~ U(±brightness); c ~ U(1 ± contrast); s ~ U(1 ± saturation); gray is the luma
  0.299 R + 0.587 G + 0.114 B; the result is clipped to [0, 1].
  """
  kb, kc, ks = jax.random.split(key, 3)
  image = image + jax.random.uniform(kb, (), minval=-brightness, maxval=brightness)
  mean = image.mean()
  image = (image - mean) * jax.random.uniform(
      kc, (), minval=1 - contrast, maxval=1 + contrast) + mean
  # A weighted sum, not a dot: a batched dot of width 3 is slow on XLA:CPU.
  gray = 0.299 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2]
  image = gray[..., None] + (image - gray[..., None]) * jax.random.uniform(
      ks, (), minval=1 - saturation, maxval=1 + saturation)
  return jnp.clip(image, 0.0, 1.0)


def sample(image: jax.Array, src_y: jax.Array, src_x: jax.Array) -> jax.Array:
  """Bilinear sampling of ``image`` [H, W, C] at fractional positions, edges extended.

  Integer positions return pixels exactly.
  """
  height, width, _ = image.shape
  src_y = jnp.clip(src_y, 0, height - 1)
  src_x = jnp.clip(src_x, 0, width - 1)
  y0 = jnp.clip(jnp.floor(src_y).astype(jnp.int32), 0, height - 2)
  x0 = jnp.clip(jnp.floor(src_x).astype(jnp.int32), 0, width - 2)
  wy = (src_y - y0)[..., None]
  wx = (src_x - x0)[..., None]
  top = image[y0, x0] * (1 - wx) + image[y0, x0 + 1] * wx
  bottom = image[y0 + 1, x0] * (1 - wx) + image[y0 + 1, x0 + 1] * wx
  return top * (1 - wy) + bottom * wy


def _grid(shape):
  return jnp.meshgrid(jnp.arange(shape[0], dtype=jnp.float32),
                      jnp.arange(shape[1], dtype=jnp.float32), indexing='ij')


def warp(key: jax.Array, image: jax.Array, *maps: CoordinateMap) -> jax.Array:
  """Applies geometric transforms ``maps`` (first map first) with one sampling pass.

  Output pixel p of the composition t_n ∘ … ∘ t_1 samples the input at
  t_1⁻¹(… t_n⁻¹(p)), so the inverse maps are applied last-to-first.
  """
  y, x = _grid(image.shape)
  for coordinate_map, k in reversed(list(zip(maps, jax.random.split(key, len(maps))))):
    y, x = coordinate_map(k, y, x, image.shape)
  return sample(image, y, x)


def flip(key: jax.Array, image: jax.Array) -> jax.Array:
  """Mirrors left–right with probability ½."""
  return warp(key, image, flip_coordinates)


def crop(key: jax.Array, image: jax.Array) -> jax.Array:
  """Random translation by up to 6 pixels (edge-padded crop)."""
  return warp(key, image, crop_coordinates)


def rotate(key: jax.Array, image: jax.Array) -> jax.Array:
  """Random rotation by up to ±15°."""
  return warp(key, image, rotate_coordinates)


def rotate_by(image: jax.Array, theta) -> jax.Array:
  """Rotates clockwise by ``theta`` radians about the centre, bilinear, edges extended.

  Output pixel (y, x) samples the input at (c_y + cos θ·(y−c_y) − sin θ·(x−c_x),
  c_x + sin θ·(y−c_y) + cos θ·(x−c_x)).
  """
  return sample(image, *_rotated(*_grid(image.shape), image.shape, theta))


GEOMETRIC: dict[str, CoordinateMap] = {
    'flip': flip_coordinates,
    'crop': crop_coordinates,
    'rotate': rotate_coordinates,
}
PHOTOMETRIC: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    'color': color,
}
AUGMENTATIONS = (*GEOMETRIC, *PHOTOMETRIC)


def validate(names: Sequence[str]):
  unknown = [n for n in names if n not in AUGMENTATIONS]
  if unknown:
    raise ValueError(f'Unknown augmentation(s) {unknown}; valid: {list(AUGMENTATIONS)}')


def make_augment(names: Sequence[str]) -> Callable[[jax.Array, jax.Array], jax.Array] | None:
  """Returns ``augment(key, images_uint8[B, H, W, C]) -> uint8`` or None if no names.

  Transforms run in the order color, then flip, crop, rotate (one sampling pass),
  whatever the order of ``names``; each example gets its own key.
  """
  validate(names)
  maps = [GEOMETRIC[n] for n in GEOMETRIC if n in names]
  pixel_transforms = [PHOTOMETRIC[n] for n in PHOTOMETRIC if n in names]
  if not maps and not pixel_transforms:
    return None

  def one(key, image):
    key_geometry, *keys = jax.random.split(key, 1 + len(pixel_transforms))
    # Pixel transforms first: XLA:CPU fuses a gather into the channel-wise arithmetic
    # that follows it and recomputes it, 3-4x slower than this (equivalent) order.
    for transform, k in zip(pixel_transforms, keys):
      image = transform(k, image)
    if maps:
      image = warp(key_geometry, image, *maps)
    return image

  def augment(key: jax.Array, images: jax.Array) -> jax.Array:
    x = images.astype(jnp.float32) / 255.0
    x = jax.vmap(one)(jax.random.split(key, images.shape[0]), x)
    return jnp.clip(jnp.round(x * 255.0), 0, 255).astype(jnp.uint8)

  return augment


def preview_classes(labels: np.ndarray, *, classes: int) -> np.ndarray:
  """Indices of one example (the first) from each of up to ``classes`` classes,
  spread evenly over the classes present, in class order."""
  present, first = np.unique(np.asarray(labels), return_index=True)
  chosen = np.unique(np.linspace(0, len(present) - 1, min(classes, len(present))).round()
                     .astype(int))
  return first[chosen]


def preview_figure(images: np.ndarray, labels: np.ndarray, names: Sequence[str], *,
                   class_names: Sequence[str], seed: int = 0, copies: int = 7,
                   classes: int = 6):
  """A grid (``matplotlib.figure.Figure``): one row per class (:func:`preview_classes`)
  labelled with its name, its original image then ``copies`` augmented draws."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  augment = make_augment(names)
  if augment is None:
    raise ValueError('no augmentation to preview')
  chosen = preview_classes(labels, classes=classes)
  originals = np.asarray(images)[chosen]
  augment = jax.jit(augment)
  columns = [originals] + [np.asarray(augment(jax.random.key(seed * 1000 + i), originals))
                           for i in range(copies)]
  fig = Figure(figsize=(1.2 * (copies + 1) + 1.4, 1.2 * len(chosen) + 0.4),
               layout='constrained')
  axes = fig.subplots(len(chosen), copies + 1, squeeze=False)
  for c, column in enumerate(columns):
    for r, img in enumerate(column):
      ax = axes[r, c]
      ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap='gray', vmin=0, vmax=255)
      ax.set_xticks([])
      ax.set_yticks([])
      for spine in ax.spines.values():
        spine.set_visible(False)
  for r, index in enumerate(chosen):
    axes[r, 0].set_ylabel(class_names[labels[index]], rotation=0, ha='right',
                          va='center', fontsize=7)
  axes[0, 0].set_title('original', fontsize=8)
  for c in range(1, copies + 1):
    axes[0, c].set_title(f'draw {c}', fontsize=8)
  fig.suptitle(f'augment={",".join(names)}', fontsize=9)
  return fig


def save_preview(path, images: np.ndarray, labels: np.ndarray, names: Sequence[str], *,
                 class_names: Sequence[str], seed: int = 0, copies: int = 7,
                 classes: int = 6):
  """Saves :func:`preview_figure` as a PNG: a row per class, each an image of it then
  ``copies`` augmented draws."""
  preview_figure(images, labels, names, class_names=class_names, seed=seed,
                 copies=copies, classes=classes).savefig(path, dpi=80)
