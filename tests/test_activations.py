import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from fundamentals import activations

LAMBDA, ALPHA = 1.0507009873554805, 1.6732632423543772  # Klambauer et al. (2017).

# Independent NumPy references.
REFERENCE = {
    'tanh': np.tanh,
    'sigmoid': lambda x: 1 / (1 + np.exp(-x)),
    'relu': lambda x: np.maximum(x, 0),
    'leaky_relu': lambda x: np.where(x >= 0, x, 0.01 * x),
    'gelu': lambda x: x * 0.5 * (1 + special.erf(x / math.sqrt(2))),
    'selu': lambda x: LAMBDA * np.where(x > 0, x, ALPHA * (np.exp(np.minimum(x, 0)) - 1)),
    'identity': lambda x: x,
}
# Points include the kinks (0) and the saturated tails.
X = np.concatenate([np.linspace(-6, 6, 121), [-30.0, -1e-3, 1e-3, 30.0]]).astype(np.float32)


def test_registries_share_their_keys():
  assert set(activations.ACTIVATIONS) == set(REFERENCE)
  assert set(activations.DERIVATIVES) == set(activations.ACTIVATIONS)
  assert set(activations.INACTIVE) == set(activations.ACTIVATIONS)


@pytest.mark.parametrize('name', sorted(activations.ACTIVATIONS))
def test_matches_numpy(name):
  np.testing.assert_allclose(activations.get_activation(name)(X), REFERENCE[name](X),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name, library', [
    ('tanh', jnp.tanh), ('sigmoid', jax.nn.sigmoid), ('relu', jax.nn.relu),
    ('leaky_relu', jax.nn.leaky_relu), ('selu', jax.nn.selu),
    ('gelu', lambda x: jax.nn.gelu(x, approximate=False)),
])
def test_matches_jax_nn(name, library):
  np.testing.assert_allclose(activations.get_activation(name)(X), library(X),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', sorted(activations.ACTIVATIONS))
def test_derivative_equals_jax_grad(name):
  phi = activations.get_activation(name)
  expected = jax.vmap(jax.grad(phi))(jnp.asarray(X))
  np.testing.assert_allclose(activations.get_derivative(name)(X), expected,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', sorted(activations.ACTIVATIONS))
def test_gradient_is_finite_far_out(name):
  # A where() whose discarded branch overflows (e^x at x = 1e4) gives 0·∞ = NaN.
  x = jnp.array([-1e4, -100.0, 100.0, 1e4])
  assert np.all(np.isfinite(jax.vmap(jax.grad(activations.get_activation(name)))(x)))
  assert np.all(np.isfinite(activations.get_derivative(name)(x)))


@pytest.mark.parametrize('threshold', [0.97, 0.9])
def test_saturation_is_the_distance_to_an_asymptote(threshold):
  z = np.random.default_rng(0).normal(size=(200, 50)).astype(np.float32) * 3
  sigmoid = 1 / (1 + np.exp(-z))
  expected = {
      'tanh': np.abs(np.tanh(z)) > threshold,
      'sigmoid': np.abs(2 * sigmoid - 1) > threshold,
      'selu': REFERENCE['selu'](z) / (-LAMBDA * ALPHA) > threshold,
  }
  for name, saturated in expected.items():
    assert activations.INACTIVE[name] == 'saturated'
    fraction = activations.inactive_fraction(name, z, threshold=threshold)
    assert float(fraction) == pytest.approx(saturated.mean(), abs=1e-3)
    assert 0.01 < saturated.mean() < 0.99  # the test distinguishes something


def test_saturation_threshold_default_and_bounds():
  assert activations.SATURATION_THRESHOLD == 0.97
  lo, hi = activations.saturation_bounds('tanh')
  assert math.tanh(hi) == pytest.approx(0.97) and lo == -hi
  with pytest.raises(ValueError, match='does not saturate'):
    activations.saturation_bounds('relu')
  with pytest.raises(ValueError, match='threshold'):
    activations.saturation_bounds('tanh', 1.5)


@pytest.mark.parametrize('name', ['relu', 'leaky_relu'])
def test_dead_means_nonpositive_for_the_whole_batch(name):
  z = np.random.default_rng(1).normal(size=(64, 10)).astype(np.float32)
  z[:, 3] = -np.abs(z[:, 3])  # dead
  z[:, 7] = -np.abs(z[:, 7])  # dead
  z[:, 7][5] = 0.0            # zero counts as dead: ReLU outputs exactly 0
  z[:, 5] = -np.abs(z[:, 5])
  z[0, 5] = 0.1               # alive through a single example
  assert float(activations.inactive_fraction(name, z)) == pytest.approx(0.2)
  if name == 'relu':
    h = np.asarray(activations.relu(z))
    assert float(activations.inactive_fraction(name, z)) == pytest.approx(
        np.all(h == 0, axis=0).mean())


@pytest.mark.parametrize('name', ['gelu', 'identity'])
def test_no_inactive_state_is_nan(name):
  assert activations.INACTIVE[name] is None
  assert np.isnan(activations.inactive_fraction(name, np.zeros((4, 3))))


def test_unknown_activation_lists_valid_names():
  with pytest.raises(ValueError, match="'relu'"):
    activations.get_activation('rleu')
  with pytest.raises(ValueError, match='rleu'):
    activations.get_derivative('rleu')
