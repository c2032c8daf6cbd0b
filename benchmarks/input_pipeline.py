"""Input-pipeline benchmark: time to first batch (cold, warm) and its share of step time.

  python benchmarks/input_pipeline.py                       # built-in dataset
  python benchmarks/input_pipeline.py --dataset=image_folder --data_dir=../shared/data/fruits30

Cold = a fresh cache: TFDS preparation (built-in) or decoding every file (image folder)
plus the copy to device; warm = the same with the cache from the cold run. The share of
step time is the on-device gather + uint8→float normalization of a batch, timed alone,
over the full train step (forward, backward, update) that contains it.
"""

import os
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from fundamentals import data
from fundamentals import models
from fundamentals import optimizers
from fundamentals import train
from fundamentals.config import Config

flags.DEFINE_string('dataset', 'synthetic_fruits', 'Dataset to load.')
flags.DEFINE_string('data_dir', None, 'Image folder (for --dataset=image_folder).')
flags.DEFINE_list('augment', [], 'Augmentations inside the timed step.')
flags.DEFINE_integer('steps', 200, 'Steps to time.')
FLAGS = flags.FLAGS


def first_batch_seconds(dataset_name: str, data_dir) -> float:
  start = time.perf_counter()
  ds = data.load(dataset_name, data_dir=data_dir)
  images = jax.device_put(ds.train_images)
  jax.block_until_ready(data.normalize(images[:128], ds.mean, ds.std))
  return time.perf_counter() - start


def per_call_seconds(fn, *args, steps: int) -> float:
  jax.block_until_ready(fn(*args))  # compile
  start = time.perf_counter()
  for _ in range(steps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as cache:
    os.environ['FUNDAMENTALS_CACHE'] = cache
    data_dir = FLAGS.data_dir if FLAGS.dataset == 'image_folder' else cache
    cold = first_batch_seconds(FLAGS.dataset, data_dir)
    warm = first_batch_seconds(FLAGS.dataset, data_dir)
    ds = data.load(FLAGS.dataset, data_dir=data_dir)
  config = Config(dataset=FLAGS.dataset, augment=tuple(FLAGS.augment))
  model = models.create_model(config, num_features=ds.num_features,
                              num_classes=ds.num_classes, key=jax.random.key(0))
  tx, _ = optimizers.create(config)
  graphs, state = train.split_model(model, tx, augment_key=jax.random.key(1))
  from fundamentals import augment as augment_lib  # pylint: disable=g-import-not-at-top
  augment = augment_lib.make_augment(config.augment)
  step = train.make_train_step(graphs, tx, batch_size=config.batch_size, augment=augment)
  images, labels = jax.device_put(ds.train_images), jax.device_put(ds.train_labels)
  perm = jax.random.permutation(jax.random.key(2), len(labels))
  mean, std = jnp.asarray(ds.mean), jnp.asarray(ds.std)
  b = config.batch_size

  def pipeline(images, perm, position):
    batch = images[jax.lax.dynamic_slice_in_dim(perm, position * b, b)]
    if augment is not None:
      batch = augment(jax.random.key(0), batch)
    return data.normalize(batch, mean, std)

  pipeline_s = per_call_seconds(jax.jit(pipeline), images, perm, 3, steps=FLAGS.steps)
  jitted_step = lambda s: step(s, images, labels, perm, 3, mean, std)[0]
  state = jitted_step(state)
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    state = jitted_step(state)
  jax.block_until_ready(state)
  step_s = (time.perf_counter() - start) / FLAGS.steps
  print(f'dataset {FLAGS.dataset}: {len(labels)} train images, batch {b}, '
        f'augment={",".join(config.augment) or "none"}, backend {jax.default_backend()}')
  print(f'time to first batch: cold {cold:.2f} s, warm {warm:.2f} s')
  print(f'train step {step_s * 1e3:.2f} ms; input pipeline {pipeline_s * 1e3:.3f} ms '
        f'= {pipeline_s / step_s:.1%} of the step')


if __name__ == '__main__':
  app.run(main)
