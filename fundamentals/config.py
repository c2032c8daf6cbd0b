"""The run configuration: one frozen dataclass, serialized as ``config.json``.

Every field is a *knob*, declared once with :func:`knob`: its default, its help text,
its group in ``--helpfull`` and how it may vary. ``launch.py`` makes its flags from
these declarations (``fundamentals.cli``), sweeps parse their values with them
(:func:`parse_value`), and ``train`` reads which fields are per-run values
(:func:`per_run_fields`). Adding a knob is one field here, plus its use.
"""

import dataclasses
import json
import math
import types
import typing
from typing import Any, Callable, Sequence

GROUPS = ('data', 'model', 'optimization', 'run', 'sweep', 'devices')
"""The flag groups of ``--helpfull``; experiments add one each for their settings."""


def knob(default: Any, help: str, *, group: str, sweep: bool = False,  # pylint: disable=redefined-builtin
         per_run: bool = False,
         choices: Callable[[], Sequence[str]] | None = None,
         words: Sequence[str] = (), flag: str | None = None) -> Any:
  """A dataclass field that describes itself.

  Args:
    default: the default value (immutable: tuples, not lists).
    help: one or two sentences for ``--helpfull``.
    group: where the flag is listed (one of ``GROUPS``, or an experiment's name).
    sweep: whether a comma-separated list of values sweeps it.
    per_run: whether it enters the compiled train step as a value rather than as a
      constant, so runs that differ only in per-run fields share one compilation and
      can train together (``--vectorize``).
    choices: the valid names, for the help text (validation stays with the
      registries).
    words: words a flag may give instead of a value (``--lr=auto``), read as
      themselves; whoever launches resolves them before the dataclass is built.
    flag: the flag's name when it cannot be the field's (``--from``: ``from_``).
  """
  return dataclasses.field(default=default, metadata={
      'help': help, 'group': group, 'sweep': sweep, 'per_run': per_run,
      'choices': choices, 'words': tuple(words), 'flag': flag})


def _names(module: str, registry: str) -> Callable[[], list[str]]:
  def names():
    import importlib  # pylint: disable=g-import-not-at-top
    return sorted(getattr(importlib.import_module(f'fundamentals.{module}'), registry))
  return names


def _initializer_names() -> list[str]:
  from fundamentals import initializers  # pylint: disable=g-import-not-at-top
  return [*initializers.names(), *initializers.DATA_DEPENDENT]


class Knobs:
  """Base of the frozen dataclasses made of knobs (``Config``, experiments'
  settings, launch options): tuple fields take any sequence (a flag's list, JSON's
  list), then ``validate()`` checks the values."""

  def __post_init__(self):
    for field in dataclasses.fields(self):
      if is_tuple(field.type):
        object.__setattr__(self, field.name, tuple(
            _element_type(field.type)(v) for v in getattr(self, field.name)))
    self.validate()

  def validate(self):
    """Raises ValueError naming an invalid value and what would be valid."""

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def build(cls, values: dict[str, Any]):
  """``cls(**values)``, refusing unknown keys with the valid ones."""
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f'Unknown {cls.__name__} keys {unknown}; valid: {sorted(known)}')
  return cls(**values)


@dataclasses.dataclass(frozen=True)
class Config(Knobs):
  """Everything that defines a run. Defaults are the reference BatchNorm-MLP run."""
  experiment: str = knob('train', 'Experiment to run; "list" prints them all.',
                         group='run')
  # Data.
  dataset: str = knob(
      'synthetic_fruits', 'TFDS dataset name[/config]: the built-in "synthetic_fruits" '
      '(offline), "synthetic_fruits/small", "image_folder" (with --data_dir), or a '
      'prepared TFDS dataset.', group='data')
  data_dir: str | None = knob(
      None, 'TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets); '
      'with --dataset=image_folder, the folder holding train/ and test/.', group='data')
  validation_fraction: float = knob(
      0.0, 'Share of each training class held out as validation when the dataset has '
      'no validation split.', group='data')
  image_size: int = knob(64, 'Side length image folders are resized to.', group='data')
  augment: tuple[str, ...] = knob(
      (), 'Training-batch augmentations, comma-separated (empty: none).', group='data',
      choices=_names('augment', 'AUGMENTATIONS'))
  # Model.
  hidden: tuple[int, ...] = knob((256, 256), 'Comma-separated hidden-layer widths, '
                                 'e.g. 512,512,512.', group='model')
  activation: str = knob('relu', 'Hidden-layer activation.', group='model', sweep=True,
                         choices=_names('activations', 'ACTIVATIONS'))
  init: str = knob(
      'kaiming', 'Hidden-kernel initializer (Kaiming and orthogonal take the '
      'activation gain; LeCun and Xavier use gain 1; lsuv: orthogonal, then each layer '
      'rescaled to unit output variance on the first training batch).', group='model',
      sweep=True, per_run=True, choices=_initializer_names)
  output_init: str = knob('same', 'Output-kernel initializer; "same" = --init with '
                          'linear gain.', group='model', sweep=True, per_run=True,
                          choices=lambda: ['same', *_initializer_names()])
  output_scale: float = knob(
      0.1, 'Factor on the output kernel at init (0.01-0.1 keeps the initial loss near '
      'ln N; 1 shows overconfident logits).', group='model', sweep=True, per_run=True)
  init_gain: float = knob(
      0.0, 'Gain g on the hidden-kernel initializer (LeCun with gain g: N(0, g²/fan_in), '
      'σ_w² = g²); 0: the scheme\'s own (the activation\'s for Kaiming/orthogonal, 1 '
      'for LeCun/Xavier).', group='model', sweep=True, per_run=True)
  bias_std: float = knob(
      0.0, 'Std σ_b of the hidden biases at init, N(0, σ_b²) (mean-field theory\'s '
      'σ_b); 0: zeros. Needs --batchnorm=false (before BN a Dense has no bias).',
      group='model', sweep=True, per_run=True)
  batchnorm: bool = knob(True, 'BatchNorm after each hidden Dense (which then has no '
                         'bias): true/false.', group='model', sweep=True)
  bn_momentum: float = knob(0.9, 'alpha of the BN running averages mu <- alpha*mu + '
                            '(1-alpha)*mu_B (Flax\'s momentum; PyTorch\'s is 1-alpha).',
                            group='model', sweep=True)
  bn_epsilon: float = knob(1e-5, 'epsilon added to the BN variance.', group='model')
  bn_impl: str = knob('flax', 'BatchNorm layer: Flax\'s nnx.BatchNorm or ours '
                      '(fundamentals/batchnorm.py); the same up to the variance\'s '
                      'rounding.', group='model', sweep=True,
                      choices=_names('batchnorm', 'IMPLEMENTATIONS'))
  precision: str = knob(
      'float32', 'Matmul precision: float32, or bfloat16 (bf16 matmul inputs with '
      'float32 accumulation, forward and backward; parameters, optimizer state and BN '
      'statistics stay float32).', group='model', sweep=True,
      choices=_names('precision', 'DOT_GENERALS'))
  bn_unbiased_running_var: bool = knob(
      False, 'PyTorch\'s convention: the running variance averages the unbiased '
      'm/(m-1)*var_B (needs --bn_impl=ours); default: the biased var_B, as Flax.',
      group='model')
  # Optimization.
  optimizer: str = knob(
      'sgd', 'sgd (--momentum, --nesterov), adam, adamw: optax on jax.grad '
      '(fundamentals/optimizers.py); manual_sgd: the hand-written backward pass and '
      'heavy-ball update (fundamentals/backprop.py).', group='optimization', sweep=True,
      choices=_names('optimizers', 'OPTIMIZERS'))
  lr: float = knob(0.05, 'Peak learning rate; "auto": the suggestion of the lr range '
                   'test (Smith, 2017; --experiment=lr_range_test) on this config.',
                   group='optimization', sweep=True, per_run=True, words=('auto',))
  momentum: float = knob(0.9, 'SGD momentum mu: v <- g + mu*v, theta <- theta - lr*v '
                         '(0 for plain SGD; sgd and manual_sgd).', group='optimization',
                         sweep=True, per_run=True)
  nesterov: bool = knob(False, 'Nesterov momentum for sgd: theta <- theta - lr*(g + '
                        'mu*v) with the new v (PyTorch\'s form); needs --momentum > 0.',
                        group='optimization', sweep=True)
  weight_decay: float = knob(
      0.0, 'Weight decay lambda on the kernels (not biases, not BatchNorm scale/shift); '
      '0: off. adamw: decoupled, theta <- theta - lr_t*(adam_step + lambda*theta) '
      '(Loshchilov & Hutter, 2019, as optax.adamw); sgd and adam: L2 in the gradient, '
      'g <- g + lambda*theta (as PyTorch\'s SGD/Adam weight_decay).',
      group='optimization', sweep=True, per_run=True)
  grad_clip_norm: float = knob(
      0.0, 'Clip the gradient to this global L2 norm before the update, g <- '
      'g*min(1, c/||g||) (optax.clip_by_global_norm); 0: no clipping. sgd, adam, '
      'adamw.', group='optimization', sweep=True, per_run=True)
  adam_b1: float = knob(0.9, 'Adam\'s beta1, the decay of the gradient average m '
                        '(adam, adamw).', group='optimization', sweep=True, per_run=True)
  adam_b2: float = knob(0.999, 'Adam\'s beta2, the decay of the squared-gradient '
                        'average v (adam, adamw).', group='optimization', sweep=True,
                        per_run=True)
  adam_eps: float = knob(1e-8, 'Adam\'s epsilon in m_hat/(sqrt(v_hat) + eps) (adam, '
                         'adamw).', group='optimization', sweep=True, per_run=True)
  schedule: str = knob('cosine', 'Learning-rate schedule.', group='optimization',
                       sweep=True, choices=_names('schedules', 'SCHEDULES'))
  warmup_steps: int = knob(0, 'Linear warmup steps.', group='optimization', sweep=True)
  steps: int = knob(1500, 'Training steps.', group='optimization', sweep=True)
  batch_size: int = knob(128, 'Training batch size.', group='optimization', sweep=True)
  # Bookkeeping.
  log_every: int = knob(100, 'Steps between metrics records.', group='run')
  eval_every: int = knob(500, 'Steps between held-out evaluations.', group='run')
  early_stopping_patience: int = knob(
      0, 'Stop once the validation loss has not improved for this many evaluations '
      '(one every --eval_every steps); the model of the best step is kept either way. '
      '0: never stop early. Needs a validation split (--validation_fraction, or the '
      'dataset\'s own).', group='run', sweep=True)
  keep_model: bool = knob(
      True, 'Keep the trained model in <workdir>/model/ (the final one, and the best '
      'on the validation split when there is one), for --experiment=evaluate and '
      '--experiment=predict (the members of a lesson keep none unless asked).',
      group='run')
  classification_figures: bool = knob(
      True, 'Draw the final model\'s confusion matrix (with per-class accuracy) and its '
      'misclassified examples for the test and validation splits (a few seconds a '
      'run; the members of a lesson skip them unless asked).', group='run')
  diagnostics_every: int = knob(
      100, 'Steps between per-layer diagnostics (activation/gradient statistics, '
      'update:data ratios, histograms); 0 turns them off.', group='run')
  checkpoint_every: int = knob(
      500, 'Steps between checkpoints of the training state (orbax, removed once the '
      'run finishes); 0: none.', group='run')
  keep_checkpoints: int = knob(
      2, 'How many of the newest checkpoints a run keeps while training: one that '
      'fails to verify on --resume (damaged, truncated) falls back to the one before.',
      group='run')
  seed: int = knob(0, 'Random seed (init, shuffling, augmentation).', group='run',
                   sweep=True, per_run=True)
  data_seed: int = knob(
      -1, 'Seed of the training-data order (the shuffling); -1: --seed\'s. Vectorized '
      'runs that share it share one batch sequence, so their first layers are one '
      'wide matmul.', group='run', sweep=True, per_run=True)
  workdir: str = knob('', 'Run directory (default: runs/<timestamp>-<experiment>).',
                      group='run')
  # Devices.
  data_parallel: bool = knob(
      True, 'Split each batch over all devices (of all hosts) when there are several; '
      'BatchNorm statistics stay those of the whole batch.', group='devices')

  def validate(self):
    validate(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  def differences(self, other: 'Config') -> list[str]:
    """The names of the fields whose values differ from ``other``'s, sorted."""
    theirs = other.to_dict()
    return sorted(k for k, v in self.to_dict().items() if theirs[k] != v)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> 'Config':
    return build(cls, values)

  @classmethod
  def from_json(cls, text: str) -> 'Config':
    return cls.from_dict(json.loads(text))


def validate(config: Config):
  """Raises ValueError naming the first invalid setting and what would be valid."""
  if config.data_seed < -1:
    raise ValueError(f'data_seed={config.data_seed} must be >= 0, or -1 for --seed\'s')
  # Imported here so that building a Config stays cheap for callers that only parse.
  from fundamentals import activations, augment, batchnorm, initializers  # pylint: disable=g-import-not-at-top
  from fundamentals import optimizers, precision, schedules  # pylint: disable=g-import-not-at-top
  augment.validate(config.augment)
  precision.get_dot_general(config.precision)
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
  if config.schedule not in schedules.SCHEDULES:
    raise ValueError(f'Unknown schedule {config.schedule!r}; valid: '
                     f'{sorted(schedules.SCHEDULES)}')
  if not config.hidden or any(w < 1 for w in config.hidden):
    raise ValueError(f'hidden={config.hidden} must be one or more positive widths')
  if config.checkpoint_every < 0:
    raise ValueError(f'checkpoint_every={config.checkpoint_every} must be >= 0 '
                     '(0: no checkpoints)')
  if config.keep_checkpoints < 1:
    raise ValueError(f'keep_checkpoints={config.keep_checkpoints} must be >= 1 (the '
                     'newest checkpoints a run keeps)')
  if config.diagnostics_every < 0:
    raise ValueError(f'diagnostics_every={config.diagnostics_every} must be >= 0 '
                     '(0 turns diagnostics off)')
  if config.early_stopping_patience < 0:
    raise ValueError(f'early_stopping_patience={config.early_stopping_patience} must be '
                     '>= 0 (0: never stop early)')
  for name in ('steps', 'batch_size', 'log_every', 'eval_every'):
    if getattr(config, name) < 1:
      raise ValueError(f'{name}={getattr(config, name)} must be positive')
  if config.lr == 'auto':
    raise ValueError('lr=\'auto\' is resolved by the launcher (runner.plan runs the lr '
                     'range test, fundamentals.lr_finder); a Config needs a number')
  if not (isinstance(config.lr, (int, float)) and math.isfinite(config.lr)
          and config.lr > 0):
    raise ValueError(f'lr={config.lr} must be a positive finite number')
  for name in ('init_gain', 'bias_std'):
    if not (math.isfinite(getattr(config, name)) and getattr(config, name) >= 0):
      raise ValueError(f'{name}={getattr(config, name)} must be finite and >= 0')
  if config.init_gain:
    scheme = initializers.get_scheme(initializers.DATA_DEPENDENT.get(config.init,
                                                                     config.init))
    if scheme.gain is None:
      raise ValueError(f'init_gain={config.init_gain}: init={config.init!r} takes no '
                       'gain; gain-aware inits: lecun, xavier, kaiming, orthogonal (and '
                       'their variants)')
  if config.bias_std and config.batchnorm:
    raise ValueError(f'bias_std={config.bias_std} needs batchnorm=False (a Dense '
                     'before BatchNorm has no bias)')
  if not (math.isfinite(config.output_scale) and config.output_scale >= 0):
    raise ValueError(f'output_scale={config.output_scale} must be finite and >= 0')
  optimizers.validate(config)  # The optimizer and its knobs.
  if config.precision != 'float32' and config.optimizer == 'manual_sgd':
    raise ValueError(f'precision={config.precision!r} applies to jax.grad\'s matmuls; '
                     'optimizer=\'manual_sgd\' (the hand-written backward) runs in '
                     'float32 only')
  if not 0 <= config.bn_momentum < 1:
    raise ValueError(f'bn_momentum={config.bn_momentum} must be in [0, 1)')
  if not config.bn_epsilon > 0:
    raise ValueError(f'bn_epsilon={config.bn_epsilon} must be positive')
  batchnorm.get_implementation(config.bn_impl)
  if config.bn_unbiased_running_var and config.bn_impl != 'ours':
    raise ValueError(f'bn_unbiased_running_var=True needs bn_impl=\'ours\' (got '
                     f'{config.bn_impl!r}: nnx.BatchNorm averages the biased variance)')
  if not 0 <= config.warmup_steps < config.steps:
    raise ValueError(f'warmup_steps={config.warmup_steps} must be in [0, '
                     f'steps={config.steps})')


# The knobs of any dataclass declared with ``knob`` (Config, experiment settings,
# launch options): their types, how to parse a flag value, which may vary.


def is_tuple(kind) -> bool:
  return typing.get_origin(kind) is tuple


def _element_type(kind):
  return typing.get_args(kind)[0] if is_tuple(kind) else kind


def _is_optional(kind) -> bool:
  return isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind)


_BOOLEANS = {'true': True, 'false': False, '1': True, '0': False}
_KIND_WORDS = {str: 'a name', int: 'an integer', float: 'a number', bool: 'true or false'}


def parse_value(field: dataclasses.Field, text: str) -> Any:
  """One flag value of ``field`` from its text; raises ValueError saying what it must be.

  Tuples take the elements one by one (see :func:`parse_values`); optional strings
  read the empty text as None.
  """
  kind = _element_type(field.type)
  if text in field.metadata.get('words', ()):
    return text
  if _is_optional(kind):
    return text or None
  try:
    if kind is bool:
      return _BOOLEANS[text.lower()]
    return kind(text)
  except (KeyError, ValueError):
    raise ValueError(f'--{field.name}={text}: must be {_KIND_WORDS.get(kind, kind)}'
                     ) from None


def parse_values(field: dataclasses.Field, texts: Sequence[str]) -> list[Any]:
  """The values of a comma-separated flag: a tuple field's one value, or a sweep axis
  (each element one value of the field); raises ValueError on a bad or repeated one."""
  if is_tuple(field.type):
    try:
      return [tuple(parse_value(field, text) for text in texts)]
    except ValueError:
      kind = _KIND_WORDS.get(_element_type(field.type), 'valid')
      raise ValueError(f'--{field.name}={",".join(texts)}: every comma-separated value '
                       f'must be {kind}') from None
  values = [parse_value(field, text) for text in texts]
  if not values:
    raise ValueError(f'--{field.name} needs at least one value')
  if len(values) > 1 and not field.metadata.get('sweep'):
    raise ValueError(f'--{field.name}={",".join(texts)}: {field.name!r} takes one value '
                     f'(it cannot be swept); sweepable: {sweepable_fields()}')
  if len(set(values)) != len(values):
    raise ValueError(f'--{field.name}={",".join(texts)} repeats a value')
  return values


def format_value(value: Any) -> str:
  """A value as a flag writes it: booleans as true/false, tuples comma-separated."""
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, (tuple, list)):
    return ','.join(map(format_value, value))
  return '' if value is None else str(value)


def fields_of(cls) -> dict[str, dataclasses.Field]:
  """The knobs of a dataclass, by name."""
  return {f.name: f for f in dataclasses.fields(cls)}


def sweepable_fields() -> list[str]:
  """The Config fields a sweep may vary, sorted."""
  return sorted(f.name for f in dataclasses.fields(Config) if f.metadata['sweep'])


def per_run_fields() -> tuple[str, ...]:
  """The Config fields that are values, not constants, of the compiled train step."""
  return tuple(f.name for f in dataclasses.fields(Config) if f.metadata['per_run'])
