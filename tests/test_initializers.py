import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fundamentals import initializers

SHAPE = (400, 300)  # fan_in 400, fan_out 300: 120,000 samples per draw.


def reference_variance(name, fan_in, fan_out, activation):
  """The papers' formulas, written independently of the library."""
  gains = {'identity': 1.0, 'tanh': 5 / 3, 'relu': math.sqrt(2)}
  return {
      'normal': 1.0,
      'zeros': 0.0,
      'lecun_normal': 1 / fan_in,
      'xavier_normal': 2 / (fan_in + fan_out),
      'kaiming_normal': gains[activation] ** 2 / fan_in,
  }[name]


@pytest.mark.parametrize('activation', ['identity', 'tanh', 'relu'])
@pytest.mark.parametrize('name', sorted(initializers.INITIALIZERS))
def test_variance_matches_formula_within_sampling_error(name, activation):
  init = initializers.get_initializer(name, activation=activation)
  w = np.asarray(init(jax.random.key(0), SHAPE, jnp.float32), np.float64)
  assert w.shape == SHAPE and w.dtype == np.float64
  expected = reference_variance(name, *SHAPE, activation)
  if expected == 0:
    assert np.all(w == 0)
    return
  # Var of the sample variance of n normals is 2σ⁴/(n−1): allow 5 standard errors.
  n = w.size
  assert abs(w.var() - expected) < 5 * expected * math.sqrt(2 / (n - 1))
  assert abs(w.mean()) < 5 * math.sqrt(expected / n)
  # Untruncated normal: excess kurtosis ≈ 0 (a ±2σ truncation gives about −0.9).
  kurtosis = np.mean((w - w.mean()) ** 4) / w.var() ** 2 - 3
  assert abs(kurtosis) < 5 * math.sqrt(24 / n)


@pytest.mark.parametrize('name', initializers.names())
def test_deterministic_dtype_and_distinct_keys(name):
  init = initializers.get_initializer(name, activation='relu')
  a = init(jax.random.key(1), (8, 4), jnp.float32)
  b = init(jax.random.key(1), (8, 4), jnp.float32)
  assert a.dtype == jnp.float32 and a.shape == (8, 4)
  np.testing.assert_array_equal(a, b)
  if name != 'zeros':
    assert not np.array_equal(a, init(jax.random.key(2), (8, 4), jnp.float32))


def test_aliases_match_canonical():
  for alias, canonical in initializers.ALIASES.items():
    a = initializers.get_initializer(alias, activation='tanh')(jax.random.key(0), (5, 3))
    b = initializers.get_initializer(canonical, activation='tanh')(jax.random.key(0), (5, 3))
    np.testing.assert_array_equal(a, b)


def test_kaiming_matches_jax_he_normal_variance_scaling():
  # jax's he_normal is a truncated normal rescaled to the same variance 2/fan_in.
  ours = initializers.kaiming_normal()(jax.random.key(0), SHAPE)
  theirs = jax.nn.initializers.he_normal()(jax.random.key(0), SHAPE)
  assert abs(float(ours.var()) / float(theirs.var()) - 1) < 0.02


def test_gain_table():
  assert initializers.gain('identity') == 1.0
  assert initializers.gain('tanh') == pytest.approx(5 / 3)
  assert initializers.gain('relu') == pytest.approx(math.sqrt(2))
  with pytest.raises(ValueError, match='relu'):
    initializers.gain('swish')


def test_fans_dense_and_conv():
  assert initializers.compute_fans((12288, 256)) == (12288, 256)
  assert initializers.compute_fans((3, 3, 16, 32)) == (9 * 16, 9 * 32)
  with pytest.raises(ValueError, match='rank'):
    initializers.compute_fans((5,))


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match='kaiming_normal') as info:
    initializers.get_initializer('kaimin')
  assert 'kaimin' in str(info.value)
