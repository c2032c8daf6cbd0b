"""Runs one experiment: ``python launch.py --flags`` (``--helpfull`` lists them all).

Examples:
  python launch.py                                   # the reference BN-MLP run
  python launch.py --init=normal --activation=tanh --batchnorm=false
  python launch.py --experiment=list
  python launch.py --init=normal,xavier,kaiming --activation=tanh,relu --seed=0,1 \
      --workdir=runs/grid                            # a sweep: 12 runs, resumable
"""

import dataclasses
import logging
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging

import experiments
from fundamentals import activations
from fundamentals import augment
from fundamentals import batchnorm
from fundamentals import initializers
from fundamentals import rundir
from fundamentals import runtime
from fundamentals import schedules
from fundamentals import sweep
from fundamentals import train
from fundamentals.config import OPTIMIZERS, Config

_D = Config()  # Defaults live in one place: the Config dataclass.
_CHOICES: dict[str, list[str]] = {}


def _sweepable(name: str, default, help_text: str, *, choices=None):
  """A flag that takes one value or a comma-separated list (a sweep axis)."""
  if choices:
    _CHOICES[name] = list(choices)
    help_text += f' One or more of: {",".join(choices)}.'
  flags.DEFINE_list(name, [sweep.format_value(default)],
                    help_text + ' A comma-separated list sweeps it.')
  flags.register_validator(name, lambda values: _valid_values(name, values))


def _valid_values(name: str, values: list[str]) -> bool:
  if not values:
    raise flags.ValidationError(f'--{name} needs at least one value')
  if name in _CHOICES:
    unknown = [v for v in values if v not in _CHOICES[name]]
    if unknown:
      raise flags.ValidationError(
          f'--{name}: unknown value(s) {unknown}; valid: {",".join(_CHOICES[name])}')
  try:
    sweep.parse_axes({name: values})
  except ValueError as e:
    raise flags.ValidationError(str(e)) from None
  return True

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
_sweepable('activation', _D.activation, 'Hidden-layer activation.',
           choices=sorted(activations.ACTIVATIONS))
_sweepable('init', _D.init, 'Hidden-kernel initializer (Kaiming and orthogonal take '
           'the activation gain; LeCun and Xavier use gain 1; lsuv: orthogonal, then '
           'each layer rescaled to unit output variance on the first training batch).',
           choices=[*initializers.names(), *initializers.DATA_DEPENDENT])
_sweepable('output_init', _D.output_init,
           'Output-kernel initializer; "same" = --init with linear gain.',
           choices=['same', *initializers.names()])
_sweepable('output_scale', _D.output_scale,
                   'Factor on the output kernel at init (0.01-0.1 keeps the initial '
                   'loss near ln N; 1 shows overconfident logits).')
_sweepable('batchnorm', _D.batchnorm,
           'BatchNorm after each hidden Dense (which then has no bias): true/false.')
_sweepable('bn_momentum', _D.bn_momentum,
           'alpha of the BN running averages mu <- alpha*mu + (1-alpha)*mu_B.')
flags.DEFINE_float('bn_epsilon', _D.bn_epsilon, 'epsilon added to the BN variance.')
_sweepable('bn_impl', _D.bn_impl, 'BatchNorm layer: Flax\'s nnx.BatchNorm or ours '
           '(fundamentals/batchnorm.py); identical results.',
           choices=sorted(batchnorm.IMPLEMENTATIONS))
_sweepable('optimizer', _D.optimizer,
           'sgd: optax SGD on jax.grad; manual_sgd: the hand-written backward '
           'pass and update (fundamentals/backprop.py); equal up to rounding.',
           choices=list(OPTIMIZERS))
_sweepable('lr', _D.lr, 'Peak learning rate.')
_sweepable('momentum', _D.momentum, 'SGD momentum (0 for plain SGD).')
_sweepable('schedule', _D.schedule, 'Learning-rate schedule.',
           choices=sorted(schedules.SCHEDULES))
_sweepable('warmup_steps', _D.warmup_steps, 'Linear warmup steps.')
_sweepable('steps', _D.steps, 'Training steps.')
_sweepable('batch_size', _D.batch_size, 'Training batch size.')
flags.DEFINE_integer('log_every', _D.log_every, 'Steps between metrics records.')
flags.DEFINE_integer('eval_every', _D.eval_every, 'Steps between test evaluations.')
flags.DEFINE_integer('diagnostics_every', _D.diagnostics_every,
                     'Steps between per-layer diagnostics (activation/gradient '
                     'statistics, update:data ratios, histograms); 0 turns them off.')
_sweepable('seed', _D.seed, 'Random seed (init and shuffling).')
flags.DEFINE_string('workdir', _D.workdir,
                    'Run directory (default: runs/<timestamp>-<experiment>).')
flags.DEFINE_boolean('overwrite', False, 'Replace a run already in --workdir.')
flags.DEFINE_integer('checkpoint_every', _D.checkpoint_every,
                     'Steps between checkpoints of the training state (orbax); 0: none. '
                     'Interrupted sweep members resume from theirs.')
flags.DEFINE_boolean('resume', False,
                     'Go on with the interrupted run in --workdir from its last '
                     'checkpoint (same flags); sweeps always do.')
flags.DEFINE_string('sweep_shard', '0/1',
                    'k/n: run only sweep members k, k+n, k+2n, ... (for job arrays).')
flags.DEFINE_boolean('summarize', False,
                     'Only collect the results of the sweep in --workdir (all shards).')
flags.DEFINE_boolean('vectorize', False,
                     'Sweeps: train members that differ only in seed, init, output '
                     'init/scale, lr or momentum together, vmapped in one jitted program '
                     '(members of one structure share one compilation either way).')
flags.DEFINE_boolean('data_parallel', _D.data_parallel,
                     'Split each batch over all devices (of all hosts) when there are '
                     'several; BatchNorm statistics stay those of the whole batch.')
flags.DEFINE_enum('platform', '', list(runtime.PLATFORMS),
                  'JAX platform to run on; empty: JAX chooses (an accelerator when '
                  'present, else CPU).')
flags.DEFINE_string('compilation_cache', runtime.default_compilation_cache(),
                    'Directory of JAX\'s persistent compilation cache, so that later runs '
                    'load compiled steps instead of compiling them (same numbers); empty '
                    'turns it off.')
flags.DEFINE_boolean('distributed', False,
                     'Multi-host: call jax.distributed.initialize(), which detects the '
                     'cluster (SLURM, Open MPI, TPU pods) from the environment.')
flags.DEFINE_string('coordinator_address', '',
                    'Multi-host without a detected cluster: host:port of process 0 '
                    '(with --num_processes and --process_id).')
flags.DEFINE_integer('num_processes', 0, 'Multi-host: number of processes (hosts).')
flags.DEFINE_integer('process_id', -1, 'Multi-host: index of this process, 0-based.')
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


def config_from_flags() -> tuple[Config, dict[str, list]]:
  """The one place flags become a Config: (base config, sweep axes with >1 value).

  Invalid values or combinations raise ValueError.
  """
  values, axes = {}, {}
  for field in dataclasses.fields(Config):
    if field.name not in FLAGS:
      continue
    value = FLAGS[field.name].value
    if field.name in sweep.SWEEPABLE:
      parsed = sweep.parse_axes({field.name: value})[field.name]
      value = parsed[0]
      if len(parsed) > 1:
        axes[field.name] = parsed
    elif field.name == 'hidden':
      value = tuple(int(w) for w in value)
    elif isinstance(value, list):
      value = tuple(value)
    values[field.name] = value
  return Config(**values), axes


def run_sweep(base: Config, axes: dict[str, list]):
  if base.experiment != 'train':
    sys.exit(f'launch.py: sweeps vary the train experiment; --experiment={base.experiment} '
             f'takes single values, but {sorted(axes)} have several')
  workdir = base.workdir or rundir.default_path('sweep')
  print(f'sweep directory {workdir}; re-run the same command with --workdir={workdir} '
        'to resume')
  sweep.run(base, axes, workdir=workdir, run_member=train.train,
            run_group=train.train_group if FLAGS.vectorize else None,
            group_key=train.canonical_config,
            shard_spec=sweep.parse_shard(FLAGS.sweep_shard), overwrite=FLAGS.overwrite)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if FLAGS.experiment == 'list':
    print(experiments.describe())
    return
  if FLAGS.summarize:
    if not FLAGS.workdir:
      sys.exit('launch.py: --summarize needs the sweep\'s --workdir')
    sweep.summarize(FLAGS.workdir)
    return
  try:
    config, axes = config_from_flags()
    sweep.parse_shard(FLAGS.sweep_shard)
    runtime.configure(platform=FLAGS.platform, compilation_cache=FLAGS.compilation_cache,
                      distributed=FLAGS.distributed,
                      coordinator_address=FLAGS.coordinator_address,
                      num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  except ValueError as e:
    sys.exit(f'launch.py: invalid flags: {e}')
  # JAX logs at INFO each accelerator backend it fails to find, TFDS each dataset it
  # opens; only warnings matter, unless --verbosity asks for more.
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
  if not FLAGS['verbosity'].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  if axes:
    try:
      run_sweep(config, axes)
    except (ValueError, FileExistsError) as e:
      sys.exit(f'launch.py: {e}')
    return
  if FLAGS.vectorize:
    print('launch.py: --vectorize trains sweep members together; with one value per '
          'flag there is a single run, trained as usual')
  if FLAGS.resume:
    if config.experiment != 'train' or not config.workdir:
      sys.exit('launch.py: --resume goes on with a training run: it needs '
               '--experiment=train and the run\'s --workdir')
    try:
      train.train(config, overwrite=FLAGS.overwrite, resume=True)
    except FileExistsError as e:
      sys.exit(f'launch.py: {e}')
    return
  experiments.get_experiment(config.experiment)(config, overwrite=FLAGS.overwrite)


if __name__ == '__main__':
  app.run(main)
