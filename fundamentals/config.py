"""The run configuration: one frozen dataclass, serialized as ``config.json``."""

import dataclasses
import json
import math
from typing import Any

# 'sgd': optax.sgd on jax.grad; 'manual_sgd': backprop.py's hand gradients and update.
OPTIMIZERS = ('sgd', 'manual_sgd')


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that defines a run. Defaults are the reference BatchNorm-MLP run."""
  experiment: str = 'train'
  # Data.
  dataset: str = 'synthetic_fruits'
  data_dir: str | None = None
  validation_fraction: float = 0.0
  image_size: int = 64
  augment: tuple[str, ...] = ()
  # Model.
  hidden: tuple[int, ...] = (256, 256)
  activation: str = 'relu'
  init: str = 'kaiming'
  output_init: str = 'same'
  output_scale: float = 0.1
  batchnorm: bool = True
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_impl: str = 'flax'
  # Optimization.
  optimizer: str = 'sgd'
  lr: float = 0.05
  momentum: float = 0.9
  schedule: str = 'cosine'
  warmup_steps: int = 0
  steps: int = 1500
  batch_size: int = 128
  # Split each batch over all devices (all hosts) when there are several.
  data_parallel: bool = True
  # Bookkeeping.
  log_every: int = 100
  eval_every: int = 500
  diagnostics_every: int = 100  # 0: no in-step diagnostics (no histograms either).
  checkpoint_every: int = 500  # Steps between checkpoints (removed once finished); 0: none.
  seed: int = 0
  workdir: str = ''
  # The signal_propagation experiment (experiments/signal_propagation.py).
  sp_inits: tuple[str, ...] = ('normal', 'xavier', 'kaiming')
  sp_activations: tuple[str, ...] = ('tanh', 'relu')
  sp_depth: int = 10
  sp_width: int = 512
  sp_batchnorm: str = 'off'  # 'off', 'on' or 'both'.
  sp_draws: int = 8

  def __post_init__(self):
    object.__setattr__(self, 'hidden', tuple(int(w) for w in self.hidden))
    object.__setattr__(self, 'augment', tuple(self.augment))
    object.__setattr__(self, 'sp_inits', tuple(self.sp_inits))
    object.__setattr__(self, 'sp_activations', tuple(self.sp_activations))
    validate(self)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  def differences(self, other: 'Config') -> list[str]:
    """The names of the fields whose values differ from ``other``'s, sorted."""
    theirs = other.to_dict()
    return sorted(k for k, v in self.to_dict().items() if theirs[k] != v)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> 'Config':
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f'Unknown config keys {unknown}; valid: {sorted(known)}')
    return cls(**values)

  @classmethod
  def from_json(cls, text: str) -> 'Config':
    return cls.from_dict(json.loads(text))


def validate(config: Config):
  """Raises ValueError naming the first invalid setting and what would be valid."""
  # Imported here so that building a Config stays cheap for callers that only parse.
  from fundamentals import activations, augment, initializers, schedules  # pylint: disable=g-import-not-at-top
  from fundamentals import batchnorm  # pylint: disable=g-import-not-at-top
  augment.validate(config.augment)
  if not 0 <= config.validation_fraction < 1:
    raise ValueError(f'validation_fraction={config.validation_fraction} must be in '
                     '[0, 1)')
  if config.image_size < 1:
    raise ValueError(f'image_size={config.image_size} must be positive')
  activations.get_activation(config.activation)
  # Data-dependent schemes (LSUV) start from a per-tensor one, checked here.
  initializers.get_initializer(initializers.DATA_DEPENDENT.get(config.init, config.init),
                               activation=config.activation)
  if config.output_init != 'same':
    initializers.get_initializer(config.output_init)
  if not config.sp_inits or not config.sp_activations:
    raise ValueError(f'sp_inits={list(config.sp_inits)} and sp_activations='
                     f'{list(config.sp_activations)} must each name at least one')
  for name in config.sp_inits:
    if name not in initializers.DATA_DEPENDENT:
      initializers.get_scheme(name)
  for name in config.sp_activations:
    activations.get_activation(name)
  if config.sp_batchnorm not in ('off', 'on', 'both'):
    raise ValueError(f"sp_batchnorm={config.sp_batchnorm!r} must be 'off', 'on' or "
                     "'both'")
  for name in ('sp_depth', 'sp_width', 'sp_draws'):
    if getattr(config, name) < 1:
      raise ValueError(f'{name}={getattr(config, name)} must be positive')
  if config.schedule not in schedules.SCHEDULES:
    raise ValueError(f'Unknown schedule {config.schedule!r}; valid: '
                     f'{sorted(schedules.SCHEDULES)}')
  if not config.hidden or any(w < 1 for w in config.hidden):
    raise ValueError(f'hidden={config.hidden} must be one or more positive widths')
  if config.checkpoint_every < 0:
    raise ValueError(f'checkpoint_every={config.checkpoint_every} must be >= 0 '
                     '(0: no checkpoints)')
  if config.diagnostics_every < 0:
    raise ValueError(f'diagnostics_every={config.diagnostics_every} must be >= 0 '
                     '(0 turns diagnostics off)')
  for name in ('steps', 'batch_size', 'log_every', 'eval_every'):
    if getattr(config, name) < 1:
      raise ValueError(f'{name}={getattr(config, name)} must be positive')
  if not (math.isfinite(config.lr) and config.lr > 0):
    raise ValueError(f'lr={config.lr} must be a positive finite number')
  if not (math.isfinite(config.output_scale) and config.output_scale >= 0):
    raise ValueError(f'output_scale={config.output_scale} must be finite and >= 0')
  if config.optimizer not in OPTIMIZERS:
    raise ValueError(f'Unknown optimizer {config.optimizer!r}; valid: {list(OPTIMIZERS)}')
  if not 0 <= config.momentum < 1:
    raise ValueError(f'momentum={config.momentum} must be in [0, 1)')
  if not 0 <= config.bn_momentum < 1:
    raise ValueError(f'bn_momentum={config.bn_momentum} must be in [0, 1)')
  if not config.bn_epsilon > 0:
    raise ValueError(f'bn_epsilon={config.bn_epsilon} must be positive')
  batchnorm.get_implementation(config.bn_impl)
  if not 0 <= config.warmup_steps < config.steps:
    raise ValueError(f'warmup_steps={config.warmup_steps} must be in [0, '
                     f'steps={config.steps})')
