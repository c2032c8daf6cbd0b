"""Streaming population statistics against NumPy on the whole set at once."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from fundamentals import batchnorm
from fundamentals import data as data_lib
from fundamentals import models
from fundamentals import population_stats
from fundamentals import train

EPS = 1e-5


@pytest.mark.parametrize('loc', [0.0, 1e6])
def test_chan_combine_over_uneven_parts_equals_numpy_on_the_whole(loc):
  x = np.random.default_rng(0).normal(loc, 2.0, size=(1000, 3))
  total = None
  for part in np.split(x, [1, 7, 300, 301, 999]):
    total = population_stats.combine(total, population_stats.moments(part))
  assert total.count == 1000
  np.testing.assert_allclose(total.mean, x.mean(0), rtol=1e-12)
  np.testing.assert_allclose(total.var, x.var(0), rtol=1e-9)


def test_one_at_a_time_is_welford():
  x = np.random.default_rng(1).uniform(size=(50, 2))
  total = None
  for row in x:
    total = population_stats.combine(total, population_stats.moments(row[None]))
  np.testing.assert_allclose(total.var, x.var(0), rtol=1e-12)


def test_empty_batch_is_rejected():
  with pytest.raises(ValueError, match='empty'):
    population_stats.moments(np.zeros((0, 3)))


def split(hidden=(16, 8), batchnorm_=True, num_features=None, seed=0):
  model = models.MLP(num_features, hidden, 30, batchnorm=batchnorm_,
                     rngs=nnx.Rngs(params=seed))
  rng = np.random.default_rng(seed)
  for norm in model.norms:  # Non-trivial γ, β.
    norm.scale[...] = rng.uniform(0.5, 2.0, norm.scale.shape).astype(np.float32)
    norm.bias[...] = rng.normal(size=norm.bias.shape).astype(np.float32)
  graphs, state = train.split_model(model, optax.sgd(0.1))
  return model, graphs, state


def numpy_inputs(model, x, stats_of):
  """BN inputs of an MLP in NumPy float64; ``stats_of(h)`` picks (μ, σ²) for h."""
  inputs = []
  for dense, norm in zip(model.dense, model.norms):
    h = x @ np.asarray(dense.kernel[...], np.float64)
    inputs.append(h)
    mu, var = stats_of(len(inputs) - 1, h)
    z = (np.asarray(norm.scale[...]) * (h - mu) / np.sqrt(var + EPS)
         + np.asarray(norm.bias[...]))
    x = np.maximum(z, 0)  # relu, the MLP default.
  return inputs


def normalized(dataset, images):
  return np.asarray(data_lib.normalize(jnp.asarray(images), dataset.mean, dataset.std),
                    np.float64)


def test_layer_by_layer_statistics_match_numpy_on_the_whole_training_set(small_dataset):
  ds = small_dataset
  model, graphs, state = split(num_features=ds.num_features)
  result = population_stats.population_statistics(
      graphs, state.params, state.batch_stats, ds.train_images, mean=ds.mean,
      std=ds.std, batch_size=64)  # 600 = 9·64 + 24: the last batch is padded.
  # Reference: the whole set at once, each layer normalized by its own exact stats.
  inputs = numpy_inputs(model, normalized(ds, ds.train_images),
                        lambda i, h: (h.mean(0), h.var(0)))
  for got, h in zip(population_stats.read_statistics(result), inputs):
    np.testing.assert_allclose(got.mean, h.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got.var, h.var(0), rtol=1e-4)
  # The running averages (still at init) were not touched.
  first = population_stats.read_statistics(state.batch_stats)[0]
  np.testing.assert_array_equal(first.mean, 0)


def test_with_population_statistics_eval_mode_standardizes_the_training_set(small_dataset):
  ds = small_dataset
  model, graphs, state = split(num_features=ds.num_features)
  result = population_stats.population_statistics(
      graphs, state.params, state.batch_stats, ds.train_images, mean=ds.mean,
      std=ds.std, batch_size=128)
  evaluated = nnx.merge(graphs.eval, state.params, result)
  _, layers = evaluated.forward(
      data_lib.normalize(jnp.asarray(ds.train_images), ds.mean, ds.std))
  for layer, norm, stats in zip(layers, model.norms,
                                population_stats.read_statistics(result)):
    z = np.asarray(layer['preactivation'], np.float64)
    gamma, beta = np.asarray(norm.scale[...]), np.asarray(norm.bias[...])
    np.testing.assert_allclose(z.mean(0), beta, atol=1e-4)
    expected_var = gamma ** 2 * stats.var / (stats.var + EPS)
    np.testing.assert_allclose(z.var(0), expected_var, rtol=1e-3)


def test_one_pass_with_training_mode_upstream_matches_numpy(small_dataset):
  ds = small_dataset
  model, graphs, state = split(num_features=ds.num_features)
  key = jax.random.key(5)
  result = population_stats.population_statistics(
      graphs, state.params, state.batch_stats, ds.train_images, mean=ds.mean,
      std=ds.std, upstream='batch', batch_size=128, key=key)
  perm = np.asarray(jax.random.permutation(key, len(ds.train_images)))
  batches = [perm[s:s + 128] for s in range(0, 600 - 127, 128)]  # 4 full batches.
  per_batch = [numpy_inputs(model, normalized(ds, ds.train_images[idx]),
                            lambda i, h: (h.mean(0), h.var(0)))
               for idx in batches]
  for layer, got in enumerate(population_stats.read_statistics(result)):
    h = np.concatenate([inputs[layer] for inputs in per_batch])
    assert len(h) == 512
    np.testing.assert_allclose(got.mean, h.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got.var, h.var(0), rtol=1e-4)


def test_bn_inputs_walk_the_model_as_forward_does():
  model, _, _ = split(num_features=12, seed=3)
  model.eval()
  x = jax.random.normal(jax.random.key(0), (9, 12))
  inputs = population_stats.bn_inputs(model, x)
  _, layers = model.forward(x)
  for h, norm, layer in zip(inputs, model.norms, layers):
    np.testing.assert_allclose(norm(h), layer['preactivation'], rtol=1e-6, atol=1e-6)


def test_with_statistics_round_trips_and_copies():
  _, _, state = split(num_features=12)
  stats = [batchnorm.Statistics(np.full(16, 2.0), np.full(16, 3.0))]
  new = population_stats.with_statistics(state.batch_stats, stats)
  got = population_stats.read_statistics(new)
  np.testing.assert_array_equal(got[0].mean, 2.0)
  np.testing.assert_array_equal(got[1].var, 1.0)  # Layers not given stay as they were.
  np.testing.assert_array_equal(
      population_stats.read_statistics(state.batch_stats)[0].mean, 0.0)


def test_bad_arguments_raise(small_dataset):
  ds = small_dataset
  _, graphs, state = split(num_features=ds.num_features)
  with pytest.raises(ValueError, match=r"upstream='running'.*'population', 'batch'"):
    population_stats.population_statistics(
        graphs, state.params, state.batch_stats, ds.train_images, mean=ds.mean,
        std=ds.std, upstream='running')
  _, graphs, state = split(num_features=ds.num_features, batchnorm_=False)
  with pytest.raises(ValueError, match='batchnorm=False'):
    population_stats.population_statistics(
        graphs, state.params, state.batch_stats, ds.train_images, mean=ds.mean,
        std=ds.std)


def test_relative_error_is_zero_for_equal_stats_and_matches_hand_values():
  pop = [batchnorm.Statistics(np.array([0.0, 1.0]), np.array([4.0, 1.0]))]
  assert population_stats.relative_error(pop, pop) == {'mean_error': 0.0,
                                                       'var_error': 0.0}
  est = [batchnorm.Statistics(np.array([1.0, 1.0]), np.array([4.0 * np.e, 1.0]))]
  # Mean: |1 − 0|/2 and 0 → 0.25; variance: ln e and 0 → 0.5.
  assert population_stats.relative_error(est, pop) == pytest.approx(
      {'mean_error': 0.25, 'var_error': 0.5})
  with pytest.raises(ValueError, match='same positive number of layers'):
    population_stats.relative_error(est, [])
