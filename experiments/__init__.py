"""Experiments: a plain-dict registry of ``runner.Experiment`` declarations.

Each module declares which runs it needs, how it summarizes them and what it checks
(``fundamentals.runner``); none copies the training loop or runs its members itself.
"""

from experiments import augmentation
from experiments import backprop
from experiments import batchnorm
from experiments import signal_propagation
from experiments import train
from fundamentals import runner

EXPERIMENTS: dict[str, runner.Experiment] = {
    module.EXPERIMENT.name: module.EXPERIMENT
    for module in (augmentation, backprop, batchnorm, signal_propagation, train)
}


def get_experiment(name: str) -> runner.Experiment:
  """Returns the experiment ``name``; raises ValueError listing the valid names."""
  try:
    return EXPERIMENTS[name]
  except KeyError:
    raise ValueError(f'Unknown experiment {name!r}; valid: list, '
                     f'{", ".join(sorted(EXPERIMENTS))}') from None


def describe() -> str:
  """One line per experiment: its name and description."""
  return '\n'.join(f'{name:<20} {e.description}' for name, e in sorted(EXPERIMENTS.items()))
