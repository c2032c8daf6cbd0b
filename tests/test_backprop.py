"""Backprop by hand vs jax.grad, Flax and finite differences; manual SGD vs optax SGD."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from fundamentals import activations
from fundamentals import backprop
from fundamentals import batchnorm
from fundamentals import gradient_check
from fundamentals import models
from fundamentals import rundir
from fundamentals import runner
from fundamentals import train
from fundamentals.config import Config
from experiments import backprop as backprop_experiment

COMBINATIONS = [(name, bn) for name in sorted(activations.ACTIVATIONS)
                for bn in (True, False)]


def make_model(activation='relu', batchnorm=True, **kwargs):
  return models.MLP(6, (5, 4), 3, activation=activation, batchnorm=batchnorm,
                    rngs=nnx.Rngs(params=0), **kwargs)


def make_batch(size=8):
  # Offset and scaled inputs, so that BatchNorm's centring and scaling both matter.
  x = 2 * jax.random.normal(jax.random.key(1), (size, 6)) + 1
  return x, jnp.arange(size) % 3


@pytest.mark.parametrize('activation, batchnorm', COMBINATIONS)
def test_hand_matches_autodiff_float64_and_float32(activation, batchnorm):
  model = make_model(activation, batchnorm)
  x, y = make_batch()
  rows64 = gradient_check.compare_with_autodiff(model, x, y, dtype=jnp.float64)
  kinds = {row.name: row.kind for row in rows64}
  num_params = len(jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert sum(kind == 'parameter' for kind in kinds.values()) == num_params
  per_layer = 3 if batchnorm else 2  # [dense u,] preactivation z, activation h.
  assert sum(kind == 'intermediate' for kind in kinds.values()) == 2 * per_layer + 1
  for row in rows64:
    assert row.max_abs_diff < 1e-10, row
    assert row.verdict in ('exact', 'approx'), row
  for row in gradient_check.compare_with_autodiff(model, x, y, dtype=jnp.float32):
    assert row.verdict in ('exact', 'approx'), row  # approx: relative diff ≤ 1e-5.


def test_our_batchnorm_layer_gets_the_same_hand_gradients():
  model = make_model('tanh', True, bn_impl='ours', bn_momentum=0.8)
  x, y = make_batch()
  for row in gradient_check.compare_with_autodiff(model, x, y, dtype=jnp.float64):
    assert row.max_abs_diff < 1e-10, row


@pytest.mark.parametrize('activation, batchnorm', [('relu', True), ('tanh', False)])
def test_hand_gradients_match_central_finite_differences(activation, batchnorm):
  rows = gradient_check.compare_with_finite_differences(make_model(activation, batchnorm),
                                                  *make_batch())
  for row in rows:
    assert row.verdict == 'approx' and row.max_abs_diff < 1e-8, row
  assert sum(int(np.prod(r.shape)) for r in rows) == models.count_params(
      nnx.state(make_model(activation, batchnorm), nnx.Param))


def test_finite_differences_of_a_quadratic():
  params = {'a': jnp.arange(6.0).reshape(2, 3), 'b': jnp.array([0.5, -2.0])}
  loss = lambda p, w: jnp.sum(w * p['a'] ** 2) + jnp.sum(p['b'] ** 3)
  estimates = gradient_check.finite_differences(loss, params, 3.0, max_per_leaf=4)
  indices, values = estimates['a']
  assert len(indices) == 4
  np.testing.assert_allclose(values, 6.0 * np.arange(6.0)[indices], atol=1e-8)
  np.testing.assert_allclose(estimates['b'][1], [0.75, 12.0], atol=1e-8)
  with pytest.raises(ValueError, match='step=0'):
    gradient_check.finite_differences(loss, params, 3.0, step=0)


def test_batchnorm_backward_matches_vjp_of_its_forward():
  with jax.enable_x64(True):
    u = 3 * jax.random.normal(jax.random.key(0), (7, 4), jnp.float64) - 1
    scale = jnp.array([1.0, 0.5, -2.0, 3.0])
    bias = jnp.array([0.0, 1.0, 2.0, -1.0])
    dz = jax.random.normal(jax.random.key(1), (7, 4), jnp.float64)
    z, cache = backprop.batchnorm_forward(u, scale, bias, epsilon=1e-5)
    _, vjp = jax.vjp(lambda u, s, b: backprop.batchnorm_forward(
        u, s, b, epsilon=1e-5)[0], u, scale, bias)
    du_ref, dscale_ref, dbias_ref = vjp(dz)
    grads, du = backprop.batchnorm_backward(dz, cache['normalized'], cache['inv_std'],
                                            scale)
    np.testing.assert_allclose(du, du_ref, atol=1e-12)
    np.testing.assert_allclose(grads['scale'], dscale_ref, atol=1e-12)
    np.testing.assert_allclose(grads['bias'], dbias_ref, atol=1e-12)
    # The compact form projects dz off the batch mean: Σ_b ∂L/∂u = 0.
    np.testing.assert_allclose(du.sum(0), 0, atol=1e-12)
    np.testing.assert_allclose(z.mean(0), bias, atol=1e-12)


def test_dense_and_cross_entropy_backward_match_jax_grad():
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (5, 3), jnp.float64)
    kernel = jax.random.normal(jax.random.key(1), (3, 4), jnp.float64)
    bias = jnp.arange(4.0)
    labels = jnp.array([0, 3, 1, 1, 2])
    logits = x @ kernel + bias
    loss, log_probs = backprop.softmax_cross_entropy(logits, labels)
    reference = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels).mean()
    np.testing.assert_allclose(loss, reference(logits), rtol=1e-14)
    dlogits = backprop.softmax_cross_entropy_backward(log_probs, labels)
    np.testing.assert_allclose(dlogits, jax.grad(reference)(logits), atol=1e-15)
    grads, dx = backprop.dense_backward(dlogits, x, kernel, bias=True)
    ref = jax.grad(lambda x, w, b: reference(x @ w + b), argnums=(0, 1, 2))(x, kernel, bias)
    for value, expected in zip((dx, grads['kernel'], grads['bias']), ref):
      np.testing.assert_allclose(value, expected, atol=1e-15)


def test_comparison_verdicts():
  a = np.linspace(-1, 1, 5)
  rows = gradient_check.compare(
      {'same': a, 'close': a * (1 + 1e-13), 'off': a + 1e-3, 'both_zero': a * 1e-17},
      {'same': a, 'close': a, 'off': a, 'both_zero': a * 2e-17}, kind='test')
  assert {r.name: r.verdict for r in rows} == {
      'same': 'exact', 'close': 'approx', 'off': 'WRONG', 'both_zero': 'approx'}
  off = next(r for r in rows if r.name == 'off')
  assert off.max_abs_diff == pytest.approx(1e-3) and off.relative_diff == pytest.approx(1e-3)
  assert '| off | test | 5 | 1.00e-03 |' in gradient_check.format_table(rows)
  with pytest.raises(ValueError, match='shape'):
    gradient_check.compare({'a': a}, {'a': a[:2]}, kind='test')


def test_a_naive_batchnorm_backward_is_reported_wrong(monkeypatch):
  """Treating μ_B and σ²_B as constants (du = γ/σ·dz) is the classic BN backprop bug."""
  model = make_model('tanh', True)
  x, y = make_batch()
  with jax.enable_x64(True):
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                          nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    x = jnp.asarray(x, jnp.float64)
    reference = jax.grad(lambda p: backprop.softmax_cross_entropy(
        backprop.forward(p, x, activation='tanh')[0], y)[0])(params)

    def naive(dz, normalized, inv_std, scale):
      return {'scale': jnp.sum(dz * normalized, 0), 'bias': jnp.sum(dz, 0)}, (
          dz * scale * inv_std)

    monkeypatch.setattr(backprop, 'batchnorm_backward', naive)
    _, grads, _ = backprop.loss_and_grads(params, x, y, activation='tanh')
    verdicts = {r.name: r.verdict for r in gradient_check.compare(grads, reference,
                                                            kind='parameter')}
  assert verdicts['dense/0/kernel'] == 'WRONG' and verdicts['norms/0/scale'] == 'WRONG'
  assert verdicts['output/kernel'] != 'WRONG' and verdicts['norms/1/scale'] != 'WRONG'


def test_value_and_grad_by_hand_returns_states_like_jax_grad():
  model = make_model()
  x, y = make_batch()
  graph, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  loss, logits, grads, new_stats = backprop.value_and_grad_by_hand(model, x, y)
  (ref_loss, (ref_logits, ref_stats)), ref_grads = jax.value_and_grad(
      _flax_loss, has_aux=True)(params, graph, stats, x, y)
  assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
  assert jax.tree.structure(new_stats) == jax.tree.structure(ref_stats)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves((logits, grads, new_stats)),
                  jax.tree.leaves((ref_logits, ref_grads, ref_stats))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # The model itself is not modified.
  np.testing.assert_array_equal(nnx.state(model, nnx.BatchStat)['norms'][0]['mean'][...],
                                stats['norms'][0]['mean'][...])


def _flax_loss(params, graph, stats, x, y):
  logits, new_stats = models.apply(graph, params, stats, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (
      logits, new_stats)


def test_manual_sgd_is_p_minus_lr_g_and_heavy_ball_matches_optax():
  params = {'w': jnp.array([1.0, -2.0, 3.0]), 'b': jnp.array(0.5)}
  grads = [{'w': jnp.array([0.1, 0.2, -0.3]) * k, 'b': jnp.array(0.7) / k}
           for k in (1.0, 2.0, 3.0)]
  schedule = optax.cosine_decay_schedule(0.1, decay_steps=3)
  plain = backprop.ManualSGD(schedule)
  updates, state = plain.update(grads[0], plain.init(params), params)
  updated = optax.apply_updates(params, updates)
  assert state.velocity == () and int(state.count) == 1
  np.testing.assert_array_equal(updated['w'], params['w'] - 0.1 * grads[0]['w'])

  tx, manual = optax.sgd(schedule, momentum=0.9), backprop.ManualSGD(schedule, 0.9)
  p_optax, p_manual = params, params
  opt_state, manual_state = tx.init(params), manual.init(params)
  for g in grads:  # optax's protocol: the step count lives in the state.
    updates, opt_state = tx.update(g, opt_state, p_optax)
    p_optax = optax.apply_updates(p_optax, updates)
    updates, manual_state = manual.update(g, manual_state, p_manual)
    p_manual = optax.apply_updates(p_manual, updates)
  for a, b in zip(jax.tree.leaves(p_manual), jax.tree.leaves(p_optax)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match='momentum=1.0'):
    backprop.ManualSGD(schedule, 1.0)


@pytest.mark.parametrize('dtype, tolerance', [(jnp.float64, 1e-10), (jnp.float32, 1e-5)])
@pytest.mark.parametrize('overrides', [
    dict(),  # BN-MLP, momentum 0.9, cosine.
    dict(batchnorm=False, activation='tanh', momentum=0.0, schedule='step',
         warmup_steps=3),
])
def test_manual_sgd_trajectory_equals_optax_sgd(overrides, dtype, tolerance,
                                               small_dataset):
  config = Config(dataset='synthetic_fruits/small', hidden=(8,), batch_size=50,
                  steps=12, lr=0.1, **overrides)
  (sgd_losses, sgd_state), (manual_losses, manual_state) = (
      backprop_experiment.trajectory(config, small_dataset, optimizer, steps=12,
                                     dtype=dtype)
      for optimizer in ('sgd', 'manual_sgd'))
  assert sgd_losses[-1] < sgd_losses[0]  # It trains.
  np.testing.assert_allclose(manual_losses, sgd_losses, rtol=tolerance)
  assert jax.tree.structure(manual_state) == jax.tree.structure(sgd_state)
  for a, b in zip(jax.tree.leaves(manual_state), jax.tree.leaves(sgd_state)):
    assert a.dtype == dtype
    np.testing.assert_allclose(a, b, rtol=0, atol=tolerance)


def test_train_with_manual_sgd_learns_and_evaluates(tmp_path, small_dataset):
  config = Config(dataset='synthetic_fruits/small', hidden=(16,), batch_size=50,
                  steps=15, log_every=5, eval_every=15, lr=0.2, optimizer='manual_sgd',
                  workdir=str(tmp_path / 'manual'))
  summary = train.train(config, dataset=small_dataset, echo=lambda line: None)
  assert summary['status'] == 'completed'
  records = rundir.read_jsonl(tmp_path / 'manual' / 'metrics.jsonl')
  assert records[-1]['train_loss'] < 0.95 * records[0]['train_loss']
  # Evaluation uses the running averages, updated by hand.
  assert summary['final_test_loss'] < summary['initial_loss']


def test_config_rejects_an_unknown_optimizer():
  with pytest.raises(ValueError, match="'manual_sgd'"):
    Config(optimizer='lbfgs')


@pytest.mark.slow
def test_experiment_writes_the_comparison_table(tmp_path, data_dir, capsys):
  config = Config(experiment='backprop', dataset='synthetic_fruits/small',
                  data_dir=data_dir, hidden=(8,), batch_size=20, steps=4,
                  workdir=str(tmp_path / 'bp'))
  results = runner.run(backprop_experiment.EXPERIMENT, config)
  report = (tmp_path / 'bp' / 'report.md').read_text()
  assert '| dense/0/kernel | parameter | 12288×8 |' in report
  assert '| layers/0/dense | intermediate | 20×8 |' in report
  assert 'WRONG' not in report.split('## Manual SGD')[0].replace('*WRONG*', '').replace(
      'no WRONG row', '')
  summary = results['values']
  assert summary['float64']['max_abs_diff'] < 1e-10 and results['passed']
  assert [c['passed'] for c in results['checks']] == [True, True]
  trajectory = {m['name'].split('_')[1]: m['output'] for m in results['members']
                if m['name'].startswith('trajectory_')}
  assert trajectory['float32']['steps'] == 4
  assert trajectory['float32']['max_abs_loss_diff'] < 1e-5
  assert trajectory['float64']['max_abs_loss_diff'] < 1e-12
  assert trajectory['float64']['final_max_abs_state_diff'] < 1e-12
  assert '| quantity | kind |' in capsys.readouterr().out


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('offset', [0.0, 1000.0])
def test_hand_batchnorm_uses_the_two_pass_variance_of_batchnorm_py(dtype, offset):
  """The hand forward pass normalizes as batchnorm.py does (two passes), so it keeps
  the variance where E[u²] − E[u]² loses it: |μ|/σ = 1000 in float32."""
  with jax.enable_x64(dtype == np.float64):
    u = jnp.asarray(np.random.default_rng(0).normal(offset, 1.0, (64, 5)), dtype)
    scale, bias = jnp.full(5, 1.5, dtype), jnp.full(5, -0.5, dtype)
    z, cache = backprop.batchnorm_forward(u, scale, bias, epsilon=1e-5)
    reference, _ = batchnorm.batch_norm_train(
        u, scale=scale, bias=bias, running=batchnorm.Statistics(
            jnp.zeros(5, dtype), jnp.ones(5, dtype)))
    np.testing.assert_allclose(z, reference, rtol=0, atol=4 * np.finfo(dtype).eps * 10)
    exact = np.var(np.asarray(u, np.float64), axis=0)
    np.testing.assert_allclose(cache['var'], exact, rtol=1e-5 if dtype == np.float32 else 1e-12)
