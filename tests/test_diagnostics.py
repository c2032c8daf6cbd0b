import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from fundamentals import activations
from fundamentals import diagnostics
from fundamentals import losses
from fundamentals import models
from fundamentals import train

B, D, HIDDEN, C = 16, 6, (5, 4), 3


def mlp(activation='tanh', batchnorm=False, seed=0):
  return models.MLP(D, HIDDEN, C, activation=activation, init='xavier',
                    batchnorm=batchnorm, output_scale=1.0, rngs=nnx.Rngs(params=seed))


def batch(seed=1):
  key_x, key_y = jax.random.split(jax.random.key(seed))
  return (jax.random.normal(key_x, (B, D)),
          jax.random.randint(key_y, (B,), 0, C))


def numpy_forward(model, x):
  """Dense → tanh per hidden layer, then Dense: pre-activations, activations, logits."""
  zs, activations_ = [], []
  a = np.asarray(x, np.float64)
  for dense in model.dense:
    z = a @ np.asarray(dense.kernel[...], np.float64) + np.asarray(dense.bias[...])
    a = np.tanh(z)
    zs.append(z)
    activations_.append(a)
  out = model.output
  logits = a @ np.asarray(out.kernel[...], np.float64) + np.asarray(out.bias[...])
  return zs, activations_, logits


def test_activation_gradients_match_numpy_backprop():
  model = mlp()
  model.train()
  graph, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  x, y = batch()
  layers, grads = jax.jit(diagnostics.activation_gradients, static_argnums=0)(
      graph, params, batch_stats, x, y)
  zs, acts, logits = numpy_forward(model, x)
  # ∂L/∂logits = (softmax − onehot)/B; back through Dense: ·Wᵀ; through tanh: ·(1 − a²).
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  delta = (p - np.eye(C)[np.asarray(y)]) / B
  expected = [None, None]
  expected[1] = delta @ np.asarray(model.output.kernel[...], np.float64).T
  delta_1 = expected[1] * (1 - acts[1] ** 2)
  expected[0] = delta_1 @ np.asarray(model.dense[1].kernel[...], np.float64).T
  for i in range(2):
    np.testing.assert_allclose(layers[i]['preactivation'], zs[i], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layers[i]['activation'], acts[i], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads[i], expected[i], rtol=1e-4, atol=1e-7)


def test_probes_must_match_the_hidden_layers():
  model = mlp()
  with pytest.raises(ValueError, match='1 probes for 2 hidden layers'):
    model.forward(batch()[0], perturb=[jnp.zeros((B, HIDDEN[0]))])


@pytest.mark.parametrize('name', sorted(activations.ACTIVATIONS))
def test_layer_statistics_match_numpy(name):
  z = np.random.default_rng(0).normal(0, 2.5, (64, 7)).astype(np.float32)
  z[:, 3] = -np.abs(z[:, 3])  # one unit that is ≤ 0 on the whole batch
  a = np.asarray(activations.get_activation(name)(z))
  g = np.random.default_rng(1).normal(0, 1e-3, z.shape).astype(np.float32)
  stats = diagnostics.layer_statistics(
      {'preactivation': jnp.asarray(z), 'activation': jnp.asarray(a)}, jnp.asarray(g),
      activation_name=name)
  assert stats['activation_mean'] == pytest.approx(a.mean(), rel=1e-4, abs=1e-6)
  assert stats['activation_std'] == pytest.approx(a.std(), rel=1e-4)
  assert stats['preactivation_std'] == pytest.approx(z.std(), rel=1e-4)
  assert stats['preactivation_mean'] == pytest.approx(z.mean(), rel=1e-4, abs=1e-6)
  assert stats['activation_grad_std'] == pytest.approx(g.std(), rel=1e-4)
  kind = activations.INACTIVE[name]
  if kind == 'saturated':  # |u| > 0.97 with the range mapped to u ∈ [−1, 1]
    lo, hi = activations.saturation_bounds(name)
    assert stats['saturated_fraction'] == pytest.approx(np.mean((z < lo) | (z > hi)))
    assert 'dead_fraction' not in stats
  elif kind == 'dead':
    assert stats['dead_fraction'] == pytest.approx(1 / 7)  # exactly the unit made ≤ 0
    assert 'saturated_fraction' not in stats
  else:
    assert not {'saturated_fraction', 'dead_fraction'} & set(stats)


def test_tanh_saturation_is_the_fraction_beyond_0_97():
  z = jnp.array([[0.0, 1.0, 2.0, 2.2, -3.0, 10.0]])
  stats = diagnostics.layer_statistics({'preactivation': z, 'activation': jnp.tanh(z)}, z,
                                       activation_name='tanh')
  assert stats['saturated_fraction'] == pytest.approx(3 / 6)  # tanh 2.2 = 0.976


def test_layer_percentiles_match_numpy():
  rng = np.random.default_rng(2)
  z = rng.normal(0.3, 2.0, (61, 9)).astype(np.float32)
  h = 1 / (1 + np.exp(-z))
  stats = diagnostics.layer_percentiles({'preactivation': jnp.asarray(z),
                                         'activation': jnp.asarray(h)})
  p02, p98 = np.percentile(h, [2, 98])  # pooled over examples and units
  assert float(stats['activation_p02']) == pytest.approx(p02, rel=1e-5)
  assert float(stats['activation_p98']) == pytest.approx(p98, rel=1e-5)
  for q in (15, 50, 85):  # over the batch, unit 0 only
    assert float(stats[f'preactivation_unit0_p{q}']) == pytest.approx(
        np.percentile(z[:, 0], q), rel=1e-5)
  assert set(stats) == {'activation_p02', 'activation_p98', 'preactivation_unit0_p15',
                        'preactivation_unit0_p50', 'preactivation_unit0_p85'}


def test_measure_has_the_percentiles_of_every_hidden_layer_in_training_mode():
  model = mlp(activation='sigmoid', batchnorm=True)
  model.train()
  graph, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  x, y = batch()
  grads = jax.tree.map(jnp.zeros_like, params)
  measured = jax.jit(lambda p, b, x, y, g: diagnostics.measure(graph, p, b, x, y, grads=g))(
      params, batch_stats, x, y, grads)
  _, taps = model.forward(x)
  assert len(measured['percentiles']) == len(HIDDEN)
  for row, tap in zip(measured['percentiles'], taps):
    z = np.asarray(tap['preactivation'])  # BN's output: standardized over the batch
    assert float(row['preactivation_unit0_p50']) == pytest.approx(
        np.percentile(z[:, 0], 50), abs=1e-5)
    assert float(row['activation_p98']) == pytest.approx(
        np.percentile(np.asarray(tap['activation']), 98), rel=1e-5)


def test_parameter_statistics_match_numpy():
  rng = np.random.default_rng(0)
  w = rng.normal(0, 0.1, (8, 5)).astype(np.float32)
  g = rng.normal(0, 0.01, (8, 5)).astype(np.float32)
  w_new = w - 0.05 * g
  stats = diagnostics.parameter_statistics(jnp.asarray(w), jnp.asarray(g), jnp.asarray(w_new))
  assert stats['weight_std'] == pytest.approx(w.std(), rel=1e-5)
  assert stats['grad_std'] == pytest.approx(g.std(), rel=1e-5)
  assert stats['grad_to_data'] == pytest.approx(g.std() / w.std(), rel=1e-5)
  assert stats['update_to_data'] == pytest.approx(
      np.log10((w_new - w).std() / w.std()), abs=1e-3)
  zero = diagnostics.parameter_statistics(jnp.asarray(w), jnp.asarray(g), jnp.asarray(w))
  assert zero['update_to_data'] == pytest.approx(-20)  # floored, still finite


def test_update_to_data_is_of_the_update_applied_with_momentum():
  """Δw = w_new − w_old of the optax update: momentum makes it differ from lr·grad."""
  model = mlp(activation='relu', batchnorm=True)
  lr = 0.1
  tx = optax.sgd(lr, momentum=0.9)
  graphs, state = train.split_model(model, tx)
  step = train.make_train_step(graphs, tx, batch_size=B)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (2 * B, 1, 2, 3), np.uint8))
  labels = jnp.asarray(rng.integers(0, C, 2 * B), jnp.int32)
  perm, mean, std = jnp.arange(2 * B), jnp.full(3, 0.5), jnp.full(3, 0.25)
  state, first = step(state, images, labels, perm, 0, mean, std, with_diagnostics=False)
  assert 'diagnostics' not in first
  params_before = jax.device_get(state.params)
  before = np.asarray(params_before['dense'][0]['kernel'][...])
  state, second = step(state, images, labels, perm, 1, mean, std, with_diagnostics=True)
  after = np.asarray(state.params['dense'][0]['kernel'][...])
  stats = second['diagnostics']['params']['dense/0/kernel']
  expected = np.log10((after - before).std() / before.std())
  assert float(stats['update_to_data']) == pytest.approx(expected, abs=1e-3)
  naive = np.log10(lr * float(stats['grad_std']) / before.std())
  assert abs(expected - naive) > 0.05  # the momentum term is not negligible here
  assert set(second['diagnostics']['params']) == {
      'dense/0/kernel', 'dense/1/kernel', 'output/kernel'}
  norm = np.sqrt(sum(np.sum(np.square(np.asarray(leaf, np.float64)))
                     for leaf in jax.tree_util.tree_leaves(params_before)))
  assert float(second['diagnostics']['param_norm']) == pytest.approx(norm, rel=1e-5)


def test_sample_keeps_small_tensors_and_subsamples_large_ones():
  small = jnp.arange(12.0).reshape(3, 4)
  np.testing.assert_array_equal(diagnostics.sample(small), np.arange(12.0))
  large = jnp.arange(10_000.0)
  kept = np.asarray(diagnostics.sample(large, size=100))
  assert kept.shape == (100,) and len(np.unique(kept)) == 100
  assert np.all(np.diff(kept) > 0) and kept.min() < 2_000 and kept.max() > 8_000
  np.testing.assert_array_equal(kept, diagnostics.sample(large, size=100))


def test_histograms_match_numpy_and_drop_non_finite_values():
  values = np.array([0.0, 1.0, 1.0, 2.0, np.nan, np.inf])
  result = diagnostics.histograms(
      {'activation': [values], 'weight': {'dense/0/kernel': values[:4]}}, bins=4)
  counts, edges = np.histogram(values[:4], bins=4)
  assert result['activation']['layer0'] == {'edges': edges.tolist(),
                                            'counts': counts.tolist()}
  assert result['weight']['dense/0/kernel']['counts'] == counts.tolist()


def test_rebin_keeps_the_counts_and_spreads_each_bin_evenly():
  histogram = {'edges': [0.0, 1.0, 2.0], 'counts': [4, 8]}
  np.testing.assert_allclose(diagnostics.rebin(histogram, [0.0, 1.0, 2.0]), [4, 8])
  np.testing.assert_allclose(diagnostics.rebin(histogram, [0.0, 0.5, 1.5, 2.0]), [2, 6, 4])
  wider = diagnostics.rebin(histogram, np.linspace(-3, 5, 9))
  np.testing.assert_allclose(wider, [0, 0, 0, 4, 8, 0, 0, 0])
  rng = np.random.default_rng(0)
  fine = diagnostics.histograms({'x': [rng.normal(size=1000)]}, bins=50)['x']['layer0']
  coarse = diagnostics.rebin(fine, np.linspace(-5, 5, 11))
  assert coarse.sum() == pytest.approx(1000)
  np.testing.assert_allclose(diagnostics.cumulative_counts(fine, fine['edges']),
                             np.concatenate([[0], np.cumsum(fine['counts'])]))


def test_is_finite_checks_the_global_norms():
  scalars = {'grad_norm': 1.0, 'param_norm': 2.0, 'layers': [], 'params': {}}
  assert diagnostics.is_finite(scalars)
  assert not diagnostics.is_finite({**scalars, 'grad_norm': float('nan')})
  assert not diagnostics.is_finite({**scalars, 'param_norm': float('inf')})


@pytest.mark.parametrize('activation, batchnorm', [('tanh', False), ('relu', True)])
def test_taps_equal_the_values_of_the_former_monkeypatched_probes(activation, batchnorm):
  """Before the MLP exposed its taps, diagnostics swapped ``model.activation`` for a
  probing wrapper; the perturbed forward pass must measure exactly the same."""
  model = mlp(activation=activation, batchnorm=batchnorm)
  model.train()
  graph, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  x, y = batch()

  def former(probes):  # The monkeypatch, as diagnostics.probed_forward did it.
    m = nnx.merge(graph, params, jax.tree.map(lambda v: v, batch_stats))
    phi, calls = m.activation, []
    def probed(z):
      calls.append(z)
      return phi(z) + probes[len(calls) - 1]
    m.activation = probed
    logits, layers = m.forward(x)
    return losses.softmax_cross_entropy(logits, y), layers

  zeros = [jnp.zeros((B, w)) for w in HIDDEN]
  expected_grads, expected_layers = jax.grad(former, has_aux=True)(zeros)
  layers, grads = diagnostics.activation_gradients(graph, params, batch_stats, x, y)
  for tap, old, grad, old_grad in zip(layers, expected_layers, grads, expected_grads):
    np.testing.assert_array_equal(tap['preactivation'], old['preactivation'])
    np.testing.assert_array_equal(tap['activation'], old['activation'])
    np.testing.assert_array_equal(grad, old_grad)
