"""Runs one experiment: ``python launch.py --flags`` (``--helpfull`` lists them all).

Examples:
  python launch.py                                   # the reference BN-MLP run
  python launch.py --init=normal --activation=tanh --batchnorm=false
  python launch.py --experiment=list
"""

import logging
import sys

from absl import app
from absl import flags

import experiments
from fundamentals import activations
from fundamentals import augment
from fundamentals import batchnorm
from fundamentals import initializers
from fundamentals import schedules
from fundamentals.config import OPTIMIZERS, Config

_D = Config()  # Defaults live in one place: the Config dataclass.

flags.DEFINE_string('experiment', _D.experiment,
                    'Experiment to run; "list" prints them all.')
flags.DEFINE_string('dataset', _D.dataset,
                    'TFDS dataset name[/config]: the built-in "synthetic_fruits" '
                    '(offline), "synthetic_fruits/small", or a prepared TFDS dataset.')
flags.DEFINE_string('data_dir', _D.data_dir,
                    'TFDS data directory (default: $TFDS_DATA_DIR or '
                    '~/tensorflow_datasets).')
flags.DEFINE_float('validation_fraction', _D.validation_fraction,
                   'Share of each training class held out as validation when the '
                   'dataset has no validation split.')
flags.DEFINE_integer('image_size', _D.image_size,
                     'Side length image folders are resized to.')
flags.DEFINE_list('augment', list(_D.augment),
                  'Training-batch augmentations, comma-separated, from: '
                  + ','.join(augment.AUGMENTATIONS) + ' (empty: none).')
flags.DEFINE_list('hidden', [str(w) for w in _D.hidden],
                  'Comma-separated hidden-layer widths, e.g. 512,512,512.')
flags.DEFINE_enum('activation', _D.activation, sorted(activations.ACTIVATIONS),
                  'Hidden-layer activation.')
flags.DEFINE_enum('init', _D.init, initializers.names(),
                  'Hidden-kernel initializer (Kaiming and orthogonal take the '
                  'activation gain; LeCun and Xavier use gain 1).')
flags.DEFINE_enum('output_init', _D.output_init, ['same', *initializers.names()],
                  'Output-kernel initializer; "same" = --init with linear gain.')
flags.DEFINE_float('output_scale', _D.output_scale,
                   'Factor on the output kernel at init (0.01-0.1 keeps the initial '
                   'loss near ln N; 1 shows overconfident logits).')
flags.DEFINE_boolean('batchnorm', _D.batchnorm,
                     'BatchNorm after each hidden Dense (which then has no bias).')
flags.DEFINE_float('bn_momentum', _D.bn_momentum,
                   'alpha of the BN running averages mu <- alpha*mu + (1-alpha)*mu_B.')
flags.DEFINE_float('bn_epsilon', _D.bn_epsilon, 'epsilon added to the BN variance.')
flags.DEFINE_enum('bn_impl', _D.bn_impl, sorted(batchnorm.IMPLEMENTATIONS),
                  'BatchNorm layer: Flax\'s nnx.BatchNorm or ours '
                  '(fundamentals/batchnorm.py); identical results.')
flags.DEFINE_enum('optimizer', _D.optimizer, list(OPTIMIZERS),
                  'sgd: optax SGD on jax.grad; manual_sgd: the hand-written backward '
                  'pass and update (fundamentals/backprop.py); equal up to rounding.')
flags.DEFINE_float('lr', _D.lr, 'Peak learning rate.')
flags.DEFINE_float('momentum', _D.momentum, 'SGD momentum (0 for plain SGD).')
flags.DEFINE_enum('schedule', _D.schedule, sorted(schedules.SCHEDULES),
                  'Learning-rate schedule.')
flags.DEFINE_integer('warmup_steps', _D.warmup_steps, 'Linear warmup steps.')
flags.DEFINE_integer('steps', _D.steps, 'Training steps.')
flags.DEFINE_integer('batch_size', _D.batch_size, 'Training batch size.')
flags.DEFINE_integer('log_every', _D.log_every, 'Steps between metrics records.')
flags.DEFINE_integer('eval_every', _D.eval_every, 'Steps between test evaluations.')
flags.DEFINE_integer('diagnostics_every', _D.diagnostics_every,
                     'Steps between per-layer diagnostics (activation/gradient '
                     'statistics, update:data ratios, histograms); 0 turns them off.')
flags.DEFINE_integer('seed', _D.seed, 'Random seed (init and shuffling).')
flags.DEFINE_string('workdir', _D.workdir,
                    'Run directory (default: runs/<timestamp>-<experiment>).')
flags.DEFINE_boolean('overwrite', False, 'Replace a run already in --workdir.')
flags.DEFINE_list('sp_inits', list(_D.sp_inits),
                  'signal_propagation: initializers to compare (names as --init, or '
                  'lsuv).')
flags.DEFINE_list('sp_activations', list(_D.sp_activations),
                  'signal_propagation: activations to compare.')
flags.DEFINE_integer('sp_depth', _D.sp_depth, 'signal_propagation: hidden layers.')
flags.DEFINE_integer('sp_width', _D.sp_width, 'signal_propagation: units per layer.')
flags.DEFINE_enum('sp_batchnorm', _D.sp_batchnorm, ['off', 'on', 'both'],
                  'signal_propagation: without BatchNorm, with it, or both.')
flags.DEFINE_integer('sp_draws', _D.sp_draws,
                     'signal_propagation: independent weight draws per case.')

FLAGS = flags.FLAGS


@flags.validator('experiment')
def _valid_experiment(name):
  if name != 'list' and name not in experiments.EXPERIMENTS:
    raise flags.ValidationError(
        f'unknown experiment {name!r}; valid: list, {", ".join(sorted(experiments.EXPERIMENTS))}')
  return True


@flags.validator('hidden')
def _valid_hidden(widths):
  if not widths or not all(w.isdigit() and int(w) > 0 for w in widths):
    raise flags.ValidationError(
        f'--hidden={",".join(widths)} must be comma-separated positive integers, '
        'e.g. 512,512,512')
  return True


@flags.validator('augment')
def _valid_augment(names):
  unknown = [n for n in names if n not in augment.AUGMENTATIONS]
  if unknown:
    raise flags.ValidationError(
        f'unknown augmentation(s) {unknown}; valid: {",".join(augment.AUGMENTATIONS)}')
  return True


def config_from_flags() -> Config:
  """The one place flags become a Config; invalid combinations raise ValueError."""
  return Config(
      experiment=FLAGS.experiment, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
      validation_fraction=FLAGS.validation_fraction, image_size=FLAGS.image_size,
      augment=tuple(FLAGS.augment),
      hidden=tuple(int(w) for w in FLAGS.hidden), activation=FLAGS.activation,
      init=FLAGS.init, output_init=FLAGS.output_init, output_scale=FLAGS.output_scale,
      batchnorm=FLAGS.batchnorm, bn_momentum=FLAGS.bn_momentum,
      bn_epsilon=FLAGS.bn_epsilon, bn_impl=FLAGS.bn_impl, optimizer=FLAGS.optimizer,
      lr=FLAGS.lr, momentum=FLAGS.momentum,
      schedule=FLAGS.schedule, warmup_steps=FLAGS.warmup_steps, steps=FLAGS.steps,
      batch_size=FLAGS.batch_size, log_every=FLAGS.log_every,
      eval_every=FLAGS.eval_every, diagnostics_every=FLAGS.diagnostics_every,
      seed=FLAGS.seed, workdir=FLAGS.workdir,
      sp_inits=tuple(FLAGS.sp_inits), sp_activations=tuple(FLAGS.sp_activations),
      sp_depth=FLAGS.sp_depth, sp_width=FLAGS.sp_width,
      sp_batchnorm=FLAGS.sp_batchnorm, sp_draws=FLAGS.sp_draws)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if FLAGS.experiment == 'list':
    print(experiments.describe())
    return
  try:
    config = config_from_flags()
  except ValueError as e:
    sys.exit(f'launch.py: invalid flags: {e}')
  # JAX logs at INFO each accelerator backend it fails to find; only its warnings matter.
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
  experiments.get_experiment(config.experiment)(config, overwrite=FLAGS.overwrite)


if __name__ == '__main__':
  app.run(main)
