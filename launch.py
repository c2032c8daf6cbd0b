r"""Runs one experiment: ``python launch.py --flags`` (``--helpfull`` lists them all).

Examples:
  python launch.py                                   # the reference BN-MLP run
  python launch.py --init=normal --activation=tanh --batchnorm=false
  python launch.py --experiment=list
  python launch.py --experiment=batchnorm            # a lesson: report.md, figures, check
  python launch.py --experiment=all --workdir=runs/library   # every lesson and paper, an index
  python launch.py --experiment=docs                 # regenerate docs/: figures, tables
  python launch.py --init=normal,xavier,kaiming --activation=tanh,relu --seed=0,1 \
      --workdir=runs/grid                            # a sweep: 12 runs, resumable

Every flag is a field of ``fundamentals.config.Config``, of an experiment's settings,
or of ``runner.Options`` / ``runtime.Options``, declared once there (``config.knob``).

Exit status (``cli.EXIT_*``, README "Exit status"): 0 completed; 1 crashed, or the
disk refused a write (one line naming the file and errno); 2 a user error; 3 the run,
or a member of a sweep of the train experiment, diverged; 4 stopped by SIGTERM or
SIGINT with a checkpoint (the line says how to go on).
"""

import logging
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging

import experiments
from fundamentals import cli
from fundamentals import docs
from fundamentals import library
from fundamentals import runner
from fundamentals import runtime
from fundamentals.config import Config

cli.define(Config)
cli.define(runner.Options)
cli.define(runtime.Options)
# Experiments may share one settings class (evaluate and predict): defined once.
for _settings, _prefix in dict.fromkeys(
    (e.settings, e.settings_prefix) for e in experiments.EXPERIMENTS.values()
    if e.settings is not None):
  cli.define(_settings, prefix=_prefix)
for _name in ('experiment', 'dataset', 'hidden', 'activation', 'init', 'batchnorm', 'lr',
              'schedule', 'steps', 'seed', 'workdir'):
  flags.declare_key_flag(_name)  # Also listed by --help; --helpfull has them all.
FLAGS = flags.FLAGS


def main(argv):
  with cli.user_errors(argv[0]):
    if len(argv) > 1:
      raise ValueError(f'unexpected arguments {argv[1:]} (flags look like --name=value)')
    overrides, axes = cli.values(Config)
    name = overrides.get('experiment', 'train')
    if name == 'list':
      print(experiments.describe())
      return
    chosen = (experiments.LIBRARY if name == 'all'
              else {n: experiments.EXPERIMENTS[n] for n in docs.experiments_needed()}
              if name == 'docs' else {name: experiments.get_experiment(name)})
    chosen_settings = {e.settings for e in chosen.values()}
    for other in experiments.EXPERIMENTS.values():
      stray = (cli.given(other.settings, prefix=other.settings_prefix)
               if other.settings not in chosen_settings and other.settings is not None
               else [])
      if stray:
        raise ValueError(f'{", ".join(stray)} apply to --experiment={other.name} only')
    settings = {n: cli.explicit(e.settings, prefix=e.settings_prefix)
                for n, e in chosen.items() if e.settings is not None}
    options, devices = cli.build(runner.Options), cli.build(runtime.Options)
    runtime.configure(devices)
    # JAX logs at INFO each accelerator backend it fails to find, TFDS each dataset it
    # opens; only warnings matter, unless --verbosity asks for more.
    logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
    if not FLAGS['verbosity'].present:
      absl_logging.set_verbosity(absl_logging.WARNING)
    if name in ('all', 'docs') and axes:
      raise ValueError(f'--experiment={name} takes single values; {sorted(axes)} have '
                       'several')
    if name == 'all':
      work = library.plan_all(chosen, overrides, settings=settings, options=options)
    elif name == 'docs':
      work = docs.plan(chosen, overrides, settings=settings, options=options)
    else:
      work = runner.plan(chosen[name], overrides, axes=axes, settings=settings.get(name),
                         options=options, experiments=experiments.EXPERIMENTS)
  sys.exit(cli.run_work(
      work, program=pathlib.Path(argv[0]).name, shard=options.shard,
      levels=0 if name == 'train' and not axes else 1 if name != 'all' else 2,
      root=docs.workdir(overrides) if name == 'docs' else None,
      # Only the train experiment's runs exit 3: a lesson may diverge on purpose (its
      # check says whether it showed what it should); --summarize runs nothing.
      judged=name == 'train' and not options.summarize))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
