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
