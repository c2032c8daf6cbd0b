"""The run configuration's knobs: parsing, words such as --lr=auto, validation."""

import dataclasses

import pytest

from fundamentals import config as config_lib
from fundamentals.config import Config

FIELDS = config_lib.fields_of(Config)


def test_lr_takes_the_word_auto_and_a_config_refuses_it():
  assert config_lib.parse_value(FIELDS['lr'], 'auto') == 'auto'
  assert config_lib.parse_value(FIELDS['lr'], '0.3') == 0.3
  with pytest.raises(ValueError, match='--steps=auto: must be an integer'):
    config_lib.parse_value(FIELDS['steps'], 'auto')
  with pytest.raises(ValueError, match="lr='auto' is resolved by the launcher"):
    Config(lr='auto')


@pytest.mark.parametrize('overrides, match', [
    (dict(init_gain=-1.0), 'init_gain=-1.0 must be finite and >= 0'),
    (dict(bias_std=float('nan')), 'bias_std=nan must be finite'),
    (dict(init='normal', init_gain=2.0), "init='normal' takes no gain"),
    (dict(bias_std=0.2), 'bias_std=0.2 needs batchnorm=False'),
])
def test_init_gain_and_bias_std_are_validated(overrides, match):
  with pytest.raises(ValueError, match=match):
    Config(**overrides)


def test_init_gain_and_bias_std_are_per_run_values():
  # They only change the initial state, so members differing in them share one
  # compiled step and vectorize.
  from fundamentals import train  # pylint: disable=g-import-not-at-top
  assert {'init_gain', 'bias_std'} <= set(config_lib.per_run_fields())
  a = Config(batchnorm=False, init='lecun', init_gain=1.3, bias_std=0.2)
  b = dataclasses.replace(a, init_gain=2.0, bias_std=0.0)
  assert train.canonical_config(a) == train.canonical_config(b)
  assert train.canonical_config(a) != train.canonical_config(
      dataclasses.replace(a, activation='tanh'))


def test_optimizer_knobs_are_sweepable_and_their_numbers_per_run_values():
  numbers = {'lr', 'momentum', 'weight_decay', 'grad_clip_norm', 'adam_b1', 'adam_b2',
             'adam_eps'}
  for name in numbers | {'optimizer', 'nesterov'}:
    assert FIELDS[name].metadata['group'] == 'optimization', name
    assert FIELDS[name].metadata['sweep'], name
  per_run = set(config_lib.per_run_fields())
  assert numbers <= per_run and not {'optimizer', 'nesterov'} & per_run
  assert config_lib.parse_values(FIELDS['weight_decay'], ['0', '1e-4']) == [0.0, 1e-4]
  assert config_lib.parse_values(FIELDS['nesterov'], ['true', 'false']) == [True, False]
  defaults = Config()
  assert (defaults.weight_decay, defaults.grad_clip_norm, defaults.nesterov) == (
      0.0, 0.0, False)
  assert (defaults.adam_b1, defaults.adam_b2, defaults.adam_eps) == (0.9, 0.999, 1e-8)


def test_keep_checkpoints_is_a_run_knob_of_at_least_one():
  field = FIELDS['keep_checkpoints']
  assert Config().keep_checkpoints == 2 and field.metadata['group'] == 'run'
  assert not field.metadata['sweep'] and 'keep_checkpoints' not in config_lib.per_run_fields()
  assert config_lib.parse_value(field, '5') == 5
  for bad in (0, -1):
    with pytest.raises(ValueError, match=rf'^keep_checkpoints={bad} must be >= 1 \(the '
                                         'newest checkpoints a run keeps\)$'):
      Config(keep_checkpoints=bad)
