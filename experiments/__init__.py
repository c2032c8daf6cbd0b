"""Experiments: a plain-dict registry of ``run(config, *, overwrite) -> summary``.

Each module declares what it varies and how it summarizes, and calls
``fundamentals`` for the training itself; none copies the training loop.
"""

from typing import Any, Callable

from experiments import augmentation
from experiments import backprop
from experiments import batchnorm
from experiments import signal_propagation
from experiments import train

Experiment = Callable[..., dict[str, Any]]

EXPERIMENTS: dict[str, Experiment] = {
    'augmentation': augmentation.run,
    'backprop': backprop.run,
    'batchnorm': batchnorm.run,
    'signal_propagation': signal_propagation.run,
    'train': train.run,
}


def get_experiment(name: str) -> Experiment:
  """Returns the experiment ``name``; raises ValueError listing valid names."""
  try:
    return EXPERIMENTS[name]
  except KeyError:
    raise ValueError(
        f'Unknown experiment {name!r}; valid: {sorted(EXPERIMENTS)}') from None


def describe() -> str:
  """One line per experiment: its name and the first line of its docstring."""
  return '\n'.join(
      f'{name:<20} {(fn.__doc__ or "").strip().splitlines()[0]}'
      for name, fn in sorted(EXPERIMENTS.items()))
