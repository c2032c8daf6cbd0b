import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fundamentals import models


def make(batchnorm, **kwargs):
  return models.MLP(12, (16, 8), 5, batchnorm=batchnorm, rngs=nnx.Rngs(params=0),
                    **kwargs)


def test_no_bias_before_batchnorm_and_parameter_count():
  model = make(True)
  assert all(dense.bias is None for dense in model.dense)
  assert model.output.bias is not None
  params = nnx.state(model, nnx.Param)
  # Dense kernels + BN (γ, β) per hidden unit + output kernel and bias.
  expected = 12 * 16 + 16 * 8 + 2 * (16 + 8) + 8 * 5 + 5
  assert models.count_params(params) == expected


def test_without_batchnorm_every_dense_has_a_bias():
  model = make(False)
  assert all(dense.bias is not None for dense in model.dense)
  assert not model.norms
  expected = (12 * 16 + 16) + (16 * 8 + 8) + (8 * 5 + 5)
  assert models.count_params(nnx.state(model, nnx.Param)) == expected


def test_batchnorm_output_is_standardized_per_feature_in_training_mode():
  model = make(True)
  x = jax.random.normal(jax.random.key(1), (256, 12)) * 3 + 2
  _, layers = model.forward(x)
  for layer in layers:
    z = np.asarray(layer['preactivation'], np.float64)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    # Biased batch variance of the normalized output is var/(var + ε) ≈ 1.
    np.testing.assert_allclose(z.var(0), 1, atol=1e-3)


def test_forward_without_batchnorm_matches_numpy():
  model = make(False, activation='tanh')
  x = np.random.default_rng(0).normal(size=(7, 12)).astype(np.float32)
  h = x
  for dense in model.dense:
    h = np.tanh(h @ np.asarray(dense.kernel[...]) + np.asarray(dense.bias[...]))
  expected = h @ np.asarray(model.output.kernel[...]) + np.asarray(model.output.bias[...])
  np.testing.assert_allclose(model(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-5)


def test_output_scale_multiplies_the_output_kernel():
  one = make(True, output_scale=1.0)
  small = make(True, output_scale=0.01)
  np.testing.assert_allclose(small.output.kernel[...], 0.01 * one.output.kernel[...],
                             rtol=1e-6)
  zeros = make(True, output_init='zeros')
  assert not np.any(zeros.output.kernel[...])


def test_kaiming_hidden_kernels_use_the_activation_gain():
  model = models.MLP(2000, (500,), 3, activation='relu', init='kaiming',
                     batchnorm=False, rngs=nnx.Rngs(params=0))
  assert float(model.dense[0].kernel[...].var()) == pytest.approx(2 / 2000, rel=0.02)


@pytest.mark.parametrize('kwargs, match', [
    (dict(activation='sigmoidal'), 'sigmoidal'),
    (dict(init='glorott'), 'glorott'),
])
def test_bad_names_raise_with_valid_choices(kwargs, match):
  with pytest.raises(ValueError, match=match):
    make(True, **kwargs)


def test_impossible_sizes_raise():
  with pytest.raises(ValueError, match='hidden'):
    models.MLP(12, (16, 0), 5, rngs=nnx.Rngs(params=0))
