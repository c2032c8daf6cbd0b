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


# BatchNorm: ours (fundamentals/batchnorm.py) against Flax's, inside the MLP.


def loss_and_grads(graph, params, batch_stats, x, y):
  def loss_fn(params):
    model = nnx.merge(graph, params, jax.tree.map(lambda v: v, batch_stats))
    logits = model(x)
    loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))
    return loss, (logits, nnx.state(model, nnx.BatchStat))
  return jax.value_and_grad(loss_fn, has_aux=True)(params)


def assert_trees_close(a, b, **tolerance):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(u, v, **tolerance)


@pytest.mark.parametrize('activation', ['relu', 'tanh'])
def test_our_batchnorm_matches_flax_over_training_steps_and_in_eval_mode(activation):
  splits = {}
  for impl in ('flax', 'ours'):
    model = make(True, bn_impl=impl, activation=activation, bn_momentum=0.8)
    model.train()
    splits[impl] = list(nnx.split(model, nnx.Param, nnx.BatchStat))
  # Same keys drawn in the same order: identical initialization.
  assert_trees_close(splits['flax'][1], splits['ours'][1], rtol=0, atol=0)
  rng = np.random.default_rng(0)
  tolerance = dict(rtol=2e-4, atol=2e-5)
  for _ in range(4):
    x = jnp.asarray(rng.normal(size=(32, 12)) * 2 + 1, jnp.float32)
    y = jnp.asarray(rng.integers(0, 5, 32))
    results = {}
    for impl, (graph, params, stats) in splits.items():
      (loss, (logits, new_stats)), grads = loss_and_grads(graph, params, stats, x, y)
      results[impl] = logits, grads, new_stats
      splits[impl][1] = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
      splits[impl][2] = new_stats
    for got, expected in zip(results['ours'], results['flax']):
      assert_trees_close(got, expected, **tolerance)
  x = jnp.asarray(rng.normal(size=(7, 12)), jnp.float32)
  outputs = {}
  for impl, (graph, params, stats) in splits.items():
    model = nnx.merge(graph, params, stats)
    model.eval()
    outputs[impl] = model(x)
  np.testing.assert_allclose(outputs['ours'], outputs['flax'], **tolerance)


@pytest.mark.parametrize('impl', ['flax', 'ours'])
def test_eval_mode_batch_of_one_equals_the_example_inside_a_large_batch(impl):
  model = make(True, bn_impl=impl)
  model(jax.random.normal(jax.random.key(0), (64, 12)) + 1)  # Move the running stats.
  model.eval()
  x = jax.random.normal(jax.random.key(1), (200, 12))
  batch = model(x)
  for i in (0, 99, 199):
    np.testing.assert_allclose(model(x[i:i + 1])[0], batch[i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('impl', ['flax', 'ours'])
def test_in_training_mode_a_batch_of_one_loses_its_input(impl):
  # The contrast that makes evaluation mode necessary: x − μ_B = 0 for B = 1.
  model = make(True, bn_impl=impl)
  a = model(jax.random.normal(jax.random.key(2), (1, 12)))
  b = model(jax.random.normal(jax.random.key(3), (1, 12)))
  np.testing.assert_allclose(a, b, atol=1e-6)


def test_omitted_bias_count_is_the_hidden_widths_with_batchnorm_only():
  with_bn, without_bn = make(True), make(False)
  assert models.omitted_bias_count(with_bn) == 16 + 8
  assert models.omitted_bias_count(without_bn) == 0
  assert (models.count_params(nnx.state(with_bn, nnx.Param))
          + models.omitted_bias_count(with_bn)
          == models.count_params(nnx.state(without_bn, nnx.Param)) + 2 * (16 + 8))


def test_unknown_bn_impl_lists_the_valid_ones():
  with pytest.raises(ValueError, match=r"'torch'.*\['flax', 'ours'\]"):
    make(True, bn_impl='torch')


@pytest.mark.parametrize('batchnorm', [False, True])
def test_taps_are_each_layers_dense_output_preactivation_and_activation(batchnorm):
  """The one walk through the layers, against Flax's own layers applied one by one."""
  model = make(batchnorm, activation='tanh')
  x = jax.random.normal(jax.random.key(2), (32, 12)) * 2 + 1
  logits, layers = model.forward(x)
  assert len(layers) == 2 and all(set(t) == {'dense', 'preactivation', 'activation'}
                                  for t in layers)
  reference = nnx.clone(model)  # Its BatchNorm statistics update as forward's did.
  h = x
  for i, tap in enumerate(layers):
    u = reference.dense[i](h)
    z = reference.norms[i](u) if batchnorm else u
    h = jnp.tanh(z)
    np.testing.assert_allclose(tap['dense'], u, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(tap['preactivation'], z, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(tap['activation'], h, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(logits, reference.output(h), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(model(x), logits)  # __call__ is forward's logits.


def test_create_model_is_the_config_made_concrete():
  from fundamentals.config import Config  # pylint: disable=g-import-not-at-top
  config = Config(hidden=(16, 8), activation='tanh', init='xavier', bn_impl='ours',
                  bn_momentum=0.8, bn_unbiased_running_var=True, output_scale=0.5)
  model = models.create_model(config, num_features=12, num_classes=5,
                              key=jax.random.key(0))
  assert [d.kernel.shape for d in model.dense] == [(12, 16), (16, 8)]
  assert model.activation_name == 'tanh' and model.output.kernel.shape == (8, 5)
  assert all(n.momentum == 0.8 and n.unbiased_running_var for n in model.norms)
  same = models.MLP(12, (16, 8), 5, activation='tanh', init='xavier', bn_impl='ours',
                    bn_momentum=0.8, bn_unbiased_running_var=True, output_scale=0.5,
                    rngs=nnx.Rngs(params=jax.random.key(0)))
  for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(same))):
    np.testing.assert_array_equal(a, b)


def test_init_gain_scales_the_hidden_kernels_and_bias_std_draws_the_biases():
  # LeCun with gain g is N(0, g²/fan_in): σ_w² = g² in mean-field terms.
  model = models.MLP(2000, (500, 500), 3, activation='tanh', init='lecun', init_gain=1.5,
                     bias_std=0.3, batchnorm=False, rngs=nnx.Rngs(params=0))
  for dense in model.dense:
    fan_in = dense.kernel.shape[0]
    assert float(dense.kernel[...].var()) == pytest.approx(2.25 / fan_in, rel=0.03)
    # The std of 500 normal draws has a relative standard error of 1/sqrt(2·500) ≈ 3%.
    assert float(dense.bias[...].std()) == pytest.approx(0.3, rel=0.15)
  reference = models.MLP(2000, (500, 500), 3, activation='tanh', init='lecun',
                         batchnorm=False, rngs=nnx.Rngs(params=0))
  assert not np.any(reference.dense[0].bias[...])
  # The gain multiplies the same draw; the output layer keeps its own init.
  np.testing.assert_allclose(model.dense[0].kernel[...],
                             1.5 * reference.dense[0].kernel[...], rtol=1e-6)
  np.testing.assert_array_equal(model.output.kernel[...], reference.output.kernel[...])
  with pytest.raises(ValueError, match='bias_std=0.3 needs batchnorm=False'):
    models.MLP(12, (8,), 3, bias_std=0.3, batchnorm=True, rngs=nnx.Rngs(params=0))
