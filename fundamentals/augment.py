"""Data augmentation on device: per-example random transforms, jitted and vmapped.

Each transform maps ``(key, image) -> image`` for one float32 ``[H, W, C]`` image in
[0, 1]; :func:`make_augment` composes the named ones (always in the registry's order),
vmaps them over the batch with one key per example, and converts uint8 → float → uint8
so the augmented batch goes through the same normalization as every other batch.

Augmentation belongs to *training batches only*: evaluation, the normalization
statistics (computed from the raw training split in ``data.load``) and BatchNorm
calibration never see it. ``train.make_train_step`` is its only caller.
"""

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Transform = Callable[[jax.Array, jax.Array], jax.Array]


def flip(key: jax.Array, image: jax.Array) -> jax.Array:
  """Mirrors left–right with probability ½."""
  return jnp.where(jax.random.bernoulli(key), image[:, ::-1, :], image)


def crop(key: jax.Array, image: jax.Array, *, pad: int = 6) -> jax.Array:
  """Random translation: edge-pads by ``pad`` pixels, then crops a random H×W window."""
  height, width, _ = image.shape
  padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode='edge')
  dy, dx = jax.random.randint(key, (2,), 0, 2 * pad + 1)
  return jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)


def color(key: jax.Array, image: jax.Array, *, brightness: float = 0.15,
          contrast: float = 0.25, saturation: float = 0.3) -> jax.Array:
  """Colour jitter: x ← x + b, then (x − mean)·c + mean, then gray + (x − gray)·s.

  b ~ U(±brightness); c ~ U(1 ± contrast); s ~ U(1 ± saturation); the result is
  clipped to [0, 1].
  """
  kb, kc, ks = jax.random.split(key, 3)
  image = image + jax.random.uniform(kb, (), minval=-brightness, maxval=brightness)
  mean = image.mean()
  image = (image - mean) * jax.random.uniform(
      kc, (), minval=1 - contrast, maxval=1 + contrast) + mean
  gray = image @ jnp.array([0.299, 0.587, 0.114])
  image = gray[..., None] + (image - gray[..., None]) * jax.random.uniform(
      ks, (), minval=1 - saturation, maxval=1 + saturation)
  return jnp.clip(image, 0.0, 1.0)


def rotate_by(image: jax.Array, theta: jax.Array) -> jax.Array:
  """Rotates clockwise by ``theta`` radians about the centre, bilinear, edges extended.

  Output pixel (y, x) samples the input at the inverse-rotated position
  (c_y + cos θ·(y−c_y) − sin θ·(x−c_x), c_x + sin θ·(y−c_y) + cos θ·(x−c_x)).
  """
  height, width, channels = image.shape
  cy, cx = (height - 1) / 2, (width - 1) / 2
  yy, xx = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing='ij')
  src_y = cy + jnp.cos(theta) * (yy - cy) - jnp.sin(theta) * (xx - cx)
  src_x = cx + jnp.sin(theta) * (yy - cy) + jnp.cos(theta) * (xx - cx)
  return jnp.stack([
      jax.scipy.ndimage.map_coordinates(image[..., c], [src_y, src_x], order=1,
                                        mode='nearest')
      for c in range(channels)], axis=-1)


def rotate(key: jax.Array, image: jax.Array, *, max_degrees: float = 15.0) -> jax.Array:
  """Small random rotation: θ ~ U(±max_degrees)."""
  theta = jax.random.uniform(key, (), minval=-1, maxval=1) * max_degrees * math.pi / 180
  return rotate_by(image, theta)


AUGMENTATIONS: dict[str, Transform] = {
    'flip': flip,
    'crop': crop,
    'rotate': rotate,
    'color': color,
}


def validate(names: Sequence[str]):
  unknown = [n for n in names if n not in AUGMENTATIONS]
  if unknown:
    raise ValueError(f'Unknown augmentation(s) {unknown}; valid: {list(AUGMENTATIONS)}')


def make_augment(names: Sequence[str]) -> Callable[[jax.Array, jax.Array], jax.Array] | None:
  """Returns ``augment(key, images_uint8[B, H, W, C]) -> uint8`` or None if no names.

  The transforms run in the registry's order (flip, crop, rotate, color) whatever
  the order of ``names``; each example gets its own key.
  """
  validate(names)
  transforms = [AUGMENTATIONS[n] for n in AUGMENTATIONS if n in names]
  if not transforms:
    return None

  def one(key, image):
    for transform, k in zip(transforms, jax.random.split(key, len(transforms))):
      image = transform(k, image)
    return image

  def augment(key: jax.Array, images: jax.Array) -> jax.Array:
    x = images.astype(jnp.float32) / 255.0
    x = jax.vmap(one)(jax.random.split(key, images.shape[0]), x)
    return jnp.clip(jnp.round(x * 255.0), 0, 255).astype(jnp.uint8)

  return augment


def save_preview(path, images: np.ndarray, names: Sequence[str], *, seed: int = 0,
                 copies: int = 7):
  """Saves a PNG grid: each row one training image, then ``copies`` augmented draws."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  augment = make_augment(names)
  if augment is None:
    raise ValueError('no augmentation to preview')
  augment = jax.jit(augment)
  rows = [[img for img in images]]
  for i in range(copies):
    rows.append(list(np.asarray(augment(jax.random.key(seed * 1000 + i), images))))
  fig, axes = plt.subplots(len(images), copies + 1,
                           figsize=(1.2 * (copies + 1), 1.2 * len(images)), squeeze=False)
  for c, column in enumerate(rows):
    for r, img in enumerate(column):
      axes[r, c].imshow(img)
      axes[r, c].axis('off')
  axes[0, 0].set_title('original', fontsize=8)
  for c in range(1, copies + 1):
    axes[0, c].set_title(f'draw {c}', fontsize=8)
  fig.suptitle(f'augment={",".join(names)}', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
