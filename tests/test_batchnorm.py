"""The pure BatchNorm against NumPy formulas and Flax's nnx.BatchNorm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fundamentals import batchnorm
from fundamentals.batchnorm import Statistics

EPS = 1e-5


def sample(shape=(16, 5), seed=0, loc=2.0, scale=3.0):
  return (np.random.default_rng(seed).normal(size=shape) * scale + loc).astype(np.float32)


def affine(features=5, seed=1):
  rng = np.random.default_rng(seed)
  return (rng.uniform(0.5, 2.0, features).astype(np.float32),
          rng.normal(size=features).astype(np.float32))


@pytest.mark.parametrize('shape', [(16, 5), (4, 3, 2, 5)])
def test_batch_statistics_are_the_biased_mean_and_variance_per_feature(shape):
  x = sample(shape)
  stats = batchnorm.batch_statistics(jnp.asarray(x))
  flat = x.reshape(-1, shape[-1]).astype(np.float64)
  np.testing.assert_allclose(stats.mean, flat.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats.var, flat.var(0, ddof=0), rtol=1e-5)
  assert batchnorm.batch_size(jnp.asarray(x)) == len(flat)


def test_batch_variance_survives_a_large_offset():
  # E[x²] − E[x]² in float32 would lose every digit of a unit variance at μ = 1e4.
  x = sample(loc=1e4, scale=1.0)
  stats = batchnorm.batch_statistics(jnp.asarray(x))
  np.testing.assert_allclose(stats.var, x.astype(np.float64).var(0), rtol=1e-3)


def test_training_mode_matches_the_numpy_formulas():
  x = sample()
  scale, bias = affine()
  running = Statistics(np.full(5, 0.5, np.float32), np.full(5, 2.0, np.float32))
  y, new = batchnorm.batch_norm_train(jnp.asarray(x), scale=scale, bias=bias,
                                      running=running, momentum=0.8, epsilon=EPS)
  x64 = x.astype(np.float64)
  mu, var = x64.mean(0), x64.var(0)
  np.testing.assert_allclose(y, scale * (x64 - mu) / np.sqrt(var + EPS) + bias,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(new.mean, 0.8 * 0.5 + 0.2 * mu, rtol=1e-5)
  np.testing.assert_allclose(new.var, 0.8 * 2.0 + 0.2 * var, rtol=1e-5)


def test_at_init_output_is_standardized():
  x = sample()
  y, _ = batchnorm.batch_norm_train(
      jnp.asarray(x), scale=jnp.ones(5), bias=jnp.zeros(5),
      running=Statistics(jnp.zeros(5), jnp.ones(5)))
  np.testing.assert_allclose(np.mean(y, 0), 0, atol=1e-5)
  np.testing.assert_allclose(np.var(y, 0), 1, atol=1e-4)


def test_unbiased_running_variance_follows_the_pytorch_convention():
  # PyTorch: running_var = (1 − m)·running_var + m·unbiased_var with m = 1 − α,
  # while the batch itself is normalized with the biased variance.
  x = sample(shape=(6, 5))
  alpha = 0.9
  running = Statistics(np.zeros(5, np.float32), np.ones(5, np.float32))
  y, new = batchnorm.batch_norm_train(jnp.asarray(x), scale=jnp.ones(5),
                                      bias=jnp.zeros(5), running=running,
                                      momentum=alpha, unbiased_running_var=True)
  torch_momentum = 1 - alpha
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(
      new.var, (1 - torch_momentum) * 1.0 + torch_momentum * x64.var(0, ddof=1),
      rtol=1e-5)
  np.testing.assert_allclose(y, (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + EPS),
                             rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match='count=1'):
    batchnorm.batch_norm_train(jnp.asarray(x[:1]), scale=jnp.ones(5), bias=jnp.zeros(5),
                               running=running, unbiased_running_var=True)


def test_backward_pass_matches_the_closed_form():
  # ∂L/∂x = γ/√(σ²+ε) · (g − mean(g) − x̂·mean(g·x̂)), g = ∂L/∂y (Ioffe & Szegedy,
  # 2015, section 3).
  x = sample()
  scale, bias = affine()
  g = np.random.default_rng(2).normal(size=x.shape)

  def loss(x, scale, bias):
    y, _ = batchnorm.batch_norm_train(x, scale=scale, bias=bias,
                                      running=Statistics(jnp.zeros(5), jnp.ones(5)))
    return jnp.sum(y * g)

  dx, dscale, dbias = jax.grad(loss, argnums=(0, 1, 2))(jnp.asarray(x), scale, bias)
  x64 = x.astype(np.float64)
  inv_std = 1 / np.sqrt(x64.var(0) + EPS)
  x_hat = (x64 - x64.mean(0)) * inv_std
  expected_dx = scale * inv_std * (g - g.mean(0) - x_hat * (g * x_hat).mean(0))
  np.testing.assert_allclose(dx, expected_dx, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dscale, (g * x_hat).sum(0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dbias, g.sum(0), rtol=1e-5, atol=1e-5)


def flax_layer(momentum, features=5):
  layer = nnx.BatchNorm(features, momentum=momentum, epsilon=EPS, rngs=nnx.Rngs(0))
  scale, bias = affine(features)
  layer.scale[...] = scale
  layer.bias[...] = bias
  return layer


def test_pure_functions_agree_with_flax_batchnorm_over_several_steps():
  alpha = 0.9
  flax_bn = flax_layer(alpha)
  scale, bias = affine()
  running = Statistics(jnp.zeros(5), jnp.ones(5))
  for step in range(3):
    x = jnp.asarray(sample(seed=10 + step, loc=step))
    flax_bn.train()
    expected = flax_bn(x)
    y, running = batchnorm.batch_norm_train(x, scale=scale, bias=bias, running=running,
                                            momentum=alpha, epsilon=EPS)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(running.mean, flax_bn.mean[...], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(running.var, flax_bn.var[...], rtol=1e-5)
  flax_bn.eval()
  x = jnp.asarray(sample(seed=99))
  np.testing.assert_allclose(
      batchnorm.batch_norm_eval(x, scale=scale, bias=bias, stats=running, epsilon=EPS),
      flax_bn(x), rtol=1e-5, atol=1e-5)


def test_our_layer_agrees_with_flax_in_values_and_gradients():
  ours = batchnorm.BatchNorm(5, momentum=0.9, epsilon=EPS, rngs=nnx.Rngs(0))
  theirs = flax_layer(0.9)
  ours.scale[...], ours.bias[...] = theirs.scale[...], theirs.bias[...]
  x = jnp.asarray(sample())
  g = jnp.asarray(np.random.default_rng(3).normal(size=x.shape), jnp.float32)

  def grads(layer):
    graph, params, rest = nnx.split(layer, nnx.Param, ...)
    def loss(params, x):
      # Fresh BatchStat variables in this trace, which training mode updates.
      layer = nnx.merge(graph, params, jax.tree.map(lambda v: v, rest))
      return jnp.sum(layer(x) * g)
    return jax.grad(loss, argnums=(0, 1))(params, x)

  (p_ours, x_ours), (p_theirs, x_theirs) = grads(ours), grads(theirs)
  np.testing.assert_allclose(x_ours, x_theirs, rtol=1e-4, atol=1e-5)
  for name in ('scale', 'bias'):
    np.testing.assert_allclose(p_ours[name][...], p_theirs[name][...],
                               rtol=1e-4, atol=1e-5)


def test_layer_switches_modes_like_flax():
  layer = batchnorm.BatchNorm(5, rngs=nnx.Rngs(0))
  x = jnp.asarray(sample())
  layer(x)  # training mode by default: updates the running averages.
  assert not np.allclose(layer.mean[...], 0)
  before = np.asarray(layer.mean[...])
  layer.eval()
  assert layer.use_running_average
  y = layer(x)
  np.testing.assert_array_equal(layer.mean[...], before)
  np.testing.assert_allclose(y, (x - before) / np.sqrt(layer.var[...] + EPS), rtol=1e-5,
                             atol=1e-5)
  layer.train()
  assert not layer.use_running_average
  assert nnx.view(layer, use_running_average=True).use_running_average


def test_layer_variables_mirror_flax_names_and_types():
  ours = nnx.state(batchnorm.BatchNorm(5, rngs=nnx.Rngs(0)))
  theirs = nnx.state(nnx.BatchNorm(5, rngs=nnx.Rngs(0)))
  assert (jax.tree.map(lambda v: (type(v), v.shape), ours, is_leaf=_is_variable)
          == jax.tree.map(lambda v: (type(v), v.shape), theirs, is_leaf=_is_variable))


def _is_variable(x):
  return isinstance(x, nnx.Variable)


def test_eval_mode_on_one_example_equals_that_example_inside_a_large_batch():
  scale, bias = affine()
  stats = Statistics(jnp.asarray(sample(shape=(5,), seed=4)),
                     jnp.asarray(np.abs(sample(shape=(5,), seed=5))))
  x = jnp.asarray(sample(shape=(64, 5)))
  batch = batchnorm.batch_norm_eval(x, scale=scale, bias=bias, stats=stats)
  for i in (0, 17, 63):
    one = batchnorm.batch_norm_eval(x[i:i + 1], scale=scale, bias=bias, stats=stats)
    np.testing.assert_allclose(one[0], batch[i], rtol=1e-6, atol=1e-6)


def test_a_bias_before_batchnorm_changes_nothing_and_gets_zero_gradient():
  x = jnp.asarray(sample(shape=(32, 4)))
  kernel = jnp.asarray(sample(shape=(4, 5), seed=6, loc=0.0, scale=1.0))
  dense_bias = jnp.asarray(sample(shape=(5,), seed=7, loc=0.0, scale=10.0))
  scale, bias = affine()
  g = jnp.asarray(np.random.default_rng(8).normal(size=(32, 5)), jnp.float32)
  running = Statistics(jnp.zeros(5), jnp.ones(5))

  def output(dense_bias):
    y, _ = batchnorm.batch_norm_train(x @ kernel + dense_bias, scale=scale, bias=bias,
                                      running=running)
    return y

  np.testing.assert_allclose(output(dense_bias), output(jnp.zeros(5)), atol=2e-5)
  grad = jax.grad(lambda b: jnp.sum(output(b) * g))(dense_bias)
  # Compare with the gradient the same bias would get without BN: Σ_i g_i.
  assert np.max(np.abs(grad)) < 1e-5 * np.max(np.abs(g.sum(0)))


@pytest.mark.parametrize('kwargs, match', [
    (dict(momentum=1.0), 'momentum=1.0'),
    (dict(momentum=-0.1), 'momentum=-0.1'),
    (dict(epsilon=0.0), 'epsilon=0.0'),
])
def test_layer_rejects_bad_settings(kwargs, match):
  with pytest.raises(ValueError, match=match):
    batchnorm.BatchNorm(5, rngs=nnx.Rngs(0), **kwargs)


@pytest.mark.parametrize('name', sorted(batchnorm.IMPLEMENTATIONS))
def test_every_implementation_builds_a_layer_with_the_shared_signature(name):
  layer = batchnorm.get_implementation(name)(5, momentum=0.9, epsilon=EPS,
                                             rngs=nnx.Rngs(0))
  assert layer(jnp.asarray(sample())).shape == (16, 5)


def test_unknown_implementation_lists_the_valid_ones():
  with pytest.raises(ValueError, match=r"'torch'.*\['flax', 'ours'\]"):
    batchnorm.get_implementation('torch')


def test_training_with_our_batchnorm_matches_flax_end_to_end(tmp_path, small_dataset):
  from fundamentals import train  # pylint: disable=g-import-not-at-top
  from fundamentals.config import Config  # pylint: disable=g-import-not-at-top
  results = {}
  for impl in ('flax', 'ours'):
    config = Config(dataset='synthetic_fruits/small', hidden=(16, 8), batch_size=50,
                    steps=10, log_every=5, eval_every=5, diagnostics_every=0,
                    bn_impl=impl,
                    workdir=str(tmp_path / impl))
    results[impl] = train.fit(config, dataset=small_dataset, echo=lambda line: None)
  flax_run, ours = results['flax'], results['ours']
  for key in ('final_train_loss', 'final_test_loss', 'initial_loss'):
    assert ours.summary[key] == pytest.approx(flax_run.summary[key], rel=1e-4)
  for a, b in zip(jax.tree.leaves(ours.state.batch_stats),
                  jax.tree.leaves(flax_run.state.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
  # The summary counts parameters without and with the redundant Dense biases.
  s = ours.summary
  assert s['num_params_with_redundant_bias'] - s['num_params'] == 16 + 8


def test_config_rejects_an_unknown_bn_impl_with_the_valid_ones():
  from fundamentals.config import Config  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r"'torch'.*\['flax', 'ours'\]"):
    Config(bn_impl='torch')
  assert Config.from_json(Config(bn_impl='ours').to_json()).bn_impl == 'ours'


def test_running_mean_converges_as_the_exponential_average_predicts():
  # Batches of B iid N(μ, σ²) values from μ_run = 0: after t steps
  #   E[μ_run] = (1 − α^t)·μ,  Var[μ_run] = (1 − α)(1 − α^{2t})/(1 + α) · σ²/B.
  alpha, steps, b, mu, sigma, replicas = 0.9, 20, 16, 3.0, 2.0, 4000

  def final_running_mean(key):
    def step(running, key):
      x = mu + sigma * jax.random.normal(key, (b, 1))
      _, running = batchnorm.batch_norm_train(x, scale=jnp.ones(1), bias=jnp.zeros(1),
                                              running=running, momentum=alpha)
      return running, None
    running, _ = jax.lax.scan(step, Statistics(jnp.zeros(1), jnp.ones(1)),
                              jax.random.split(key, steps))
    return running.mean[0]

  means = np.asarray(jax.vmap(final_running_mean)(
      jax.random.split(jax.random.key(0), replicas)), np.float64)
  expected_mean = (1 - alpha ** steps) * mu
  expected_var = (1 - alpha) * (1 - alpha ** (2 * steps)) / (1 + alpha) * sigma ** 2 / b
  assert abs(means.mean() - expected_mean) < 4 * np.sqrt(expected_var / replicas)
  # The sample variance of n normals has relative standard error √(2/(n − 1)).
  assert abs(means.var(ddof=1) / expected_var - 1) < 4 * np.sqrt(2 / (replicas - 1))


@pytest.mark.parametrize('ratio', [1.0, 100.0, 1000.0])
def test_the_two_pass_variance_keeps_its_digits_at_large_mean_over_std(ratio):
  """|μ|/σ = 1000 in float32: ours (two passes) to ~1e-6, like float64; Flax's layer
  (E[x²] − E[x]², its default ``use_fast_variance``) agrees with ours to rounding
  only while |μ|/σ is moderate: the module docstring's precise claim."""
  x = sample(shape=(256, 5), loc=ratio, scale=1.0)
  exact = x.astype(np.float64).var(0)
  ours = batchnorm.batch_statistics(jnp.asarray(x)).var
  np.testing.assert_allclose(ours, exact, rtol=2e-6)
  theirs = flax_layer(0.0)  # α = 0: the running variance is the batch's.
  theirs.train()
  theirs(jnp.asarray(x))
  if ratio <= 1.0:
    np.testing.assert_allclose(theirs.var[...], ours, rtol=1e-5)


def test_pytorchs_running_variance_convention_is_a_config_flag(tmp_path, small_dataset):
  """--bn_unbiased_running_var: after one step from σ² = 1 with α, the running
  variance is α + (1 − α)·m/(m − 1)·σ²_B instead of α + (1 − α)·σ²_B."""
  from fundamentals import train  # pylint: disable=g-import-not-at-top
  from fundamentals.config import Config  # pylint: disable=g-import-not-at-top
  alpha, m = 0.9, 50
  stats = {}
  for unbiased in (False, True):
    config = Config(dataset='synthetic_fruits/small', hidden=(8,), batch_size=m,
                    steps=1, diagnostics_every=0, bn_impl='ours', bn_momentum=alpha,
                    bn_unbiased_running_var=unbiased, workdir=str(tmp_path / str(unbiased)))
    fit = train.fit(config, dataset=small_dataset, echo=lambda line: None)
    stats[unbiased] = np.asarray(fit.state.batch_stats['norms'][0]['var'][...], np.float64)
  np.testing.assert_allclose((stats[True] - alpha) / (stats[False] - alpha), m / (m - 1),
                             rtol=1e-4)
  with pytest.raises(ValueError, match="needs bn_impl='ours'"):
    Config(bn_unbiased_running_var=True)
