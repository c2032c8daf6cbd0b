"""Experiments: a plain-dict registry of ``runner.Experiment`` declarations.

Each module declares which runs it needs, how it summarizes them and what it checks
(``fundamentals.runner``); none copies the training loop or runs its members itself.
``LIBRARY`` is what ``--experiment=all`` runs, in the course's order: the lessons,
then the papers reproduced (not the ``TOOLS``: ``train``, the plain run, ``benchmark``,
the step's speed, and ``evaluate`` and ``predict``, which use a run's kept model).
"""

from experiments import augmentation
from experiments import backprop
from experiments import batchnorm
from experiments import batchnorm_ioffe
from experiments import benchmark
from experiments import deep_relu
from experiments import edge_of_chaos
from experiments import evaluate
from experiments import glorot_saturation
from experiments import init_activation
from experiments import loss_init
from experiments import lr_range_test
from experiments import lr_schedules
from experiments import lsuv
from experiments import orthogonal_depth
from experiments import predict
from experiments import signal_propagation
from experiments import train
from fundamentals import runner

MODULES = (
    augmentation,
    backprop,
    batchnorm,
    batchnorm_ioffe,
    benchmark,
    deep_relu,
    edge_of_chaos,
    evaluate,
    glorot_saturation,
    init_activation,
    loss_init,
    lr_range_test,
    lr_schedules,
    lsuv,
    orthogonal_depth,
    predict,
    signal_propagation,
    train,
)

EXPERIMENTS: dict[str, runner.Experiment] = {
    module.EXPERIMENT.name: module.EXPERIMENT for module in MODULES}

TOOLS = ('train', 'benchmark', 'evaluate', 'predict')

COURSE_ORDER = ('loss_init', 'signal_propagation', 'backprop', 'batchnorm',
                'lr_schedules', 'lr_range_test', 'init_activation', 'augmentation',
                'deep_relu', 'glorot_saturation', 'batchnorm_ioffe', 'edge_of_chaos',
                'orthogonal_depth', 'lsuv')

LIBRARY: dict[str, runner.Experiment] = {
    name: EXPERIMENTS[name]
    for name in sorted(set(EXPERIMENTS) - set(TOOLS),
                       key=lambda n: (COURSE_ORDER.index(n) if n in COURSE_ORDER
                                      else len(COURSE_ORDER), n))}


def get_experiment(name: str) -> runner.Experiment:
  """Returns the experiment ``name``; raises ValueError listing the valid names."""
  try:
    return EXPERIMENTS[name]
  except KeyError:
    raise ValueError(f'Unknown experiment {name!r}; valid: list, all, docs, '
                     f'{", ".join(sorted(EXPERIMENTS))}') from None


def describe() -> str:
  """One line per experiment: its name, its purpose and the paper it reproduces;
  the library's order, then ``train``."""
  lines = []
  for name, e in [*LIBRARY.items(), *((n, EXPERIMENTS[n]) for n in TOOLS)]:
    lines.append(f'{name:<20} {e.description}')
    if e.paper:
      lines.append(f'{"":<20}   reproduces: {e.paper}')
  lines.append(f'{"all":<20} Every experiment above but {", ".join(TOOLS)}, at one --scale, into one '
               'directory with an index report.md.')
  lines.append(f'{"docs":<20} The experiments docs/ shows, at their default scale, then its figures '
               'and tables rewritten (docs/README.md).')
  return '\n'.join(lines)
