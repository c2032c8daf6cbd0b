import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import SMALL
from experiments import signal_propagation as experiment
from fundamentals import activations
from fundamentals import config as config_lib
from fundamentals import data
from fundamentals import models
from fundamentals import runner
from fundamentals import signal_propagation as sp
from fundamentals.config import Config

RNG = np.random.default_rng(0)
STANDARD_NORMALS = RNG.normal(size=400_000)


# --- Quadrature --------------------------------------------------------------------

@pytest.mark.parametrize('q', [1e-6, 0.5, 3.0, 1e20])
def test_quadrature_matches_closed_forms(q):
  expect = lambda f: float(sp.gaussian_expectation(f, q))
  relu = activations.relu
  assert expect(relu) == pytest.approx(math.sqrt(q / (2 * math.pi)), rel=1e-9)
  assert expect(lambda z: relu(z) ** 2) == pytest.approx(q / 2, rel=1e-9)
  assert expect(lambda z: activations.d_relu(z) ** 2) == pytest.approx(0.5, rel=1e-9)
  assert expect(lambda z: z ** 2) == pytest.approx(q, rel=1e-9)
  assert expect(lambda z: z ** 4) == pytest.approx(3 * q ** 2, rel=1e-9)
  assert expect(activations.sigmoid) == pytest.approx(0.5, rel=1e-9)
  # E[tanh′(z)] = E[1 − tanh²] and E[z·tanh z] = q·E[tanh′(z)] (Stein's lemma).
  assert expect(lambda z: z * jnp.tanh(z)) == pytest.approx(
      q * expect(activations.d_tanh), rel=1e-7)


def test_quadrature_gelu_second_moment_closed_form():
  # E[(zΦ(z))²] = 1/3 + 1/(2π√3) for z ~ N(0, 1) (Stein's lemma twice).
  assert float(sp.gaussian_expectation(lambda z: activations.gelu(z) ** 2, 1.0)) == (
      pytest.approx(1 / 3 + 1 / (2 * math.pi * math.sqrt(3)), rel=1e-10))


@pytest.mark.parametrize('name', sorted(activations.ACTIVATIONS))
@pytest.mark.parametrize('q', [0.3, 4.0, 400.0])
def test_quadrature_matches_monte_carlo(name, q):
  phi = activations.get_activation(name)
  d_phi = activations.get_derivative(name)
  z = math.sqrt(q) * STANDARD_NORMALS
  for f in (phi, lambda x: phi(x) ** 2, lambda x: d_phi(x) ** 2):
    samples = np.asarray(f(z), np.float64)
    standard_error = samples.std() / math.sqrt(samples.size)
    quadrature = float(sp.gaussian_expectation(f, q))
    assert abs(quadrature - samples.mean()) < 5 * standard_error + 1e-6 * abs(quadrature)


def test_gauss_hermite_agrees_where_it_is_accurate():
  for f in (lambda z: jnp.tanh(z) ** 2, activations.sigmoid, activations.d_gelu):
    assert float(sp.gauss_hermite_expectation(f, 1.0)) == pytest.approx(
        float(sp.gaussian_expectation(f, 1.0)), rel=1e-9)


def test_quadrature_shapes_zero_and_negative_variance():
  q = np.array([[0.0, 1.0], [4.0, 9.0]])
  result = sp.gaussian_expectation(lambda z: z ** 2 + 1, q)
  assert result.shape == (2, 2)
  np.testing.assert_allclose(result, q + 1, rtol=1e-9)
  assert float(sp.gaussian_expectation(jnp.cos, 0.0)) == 1.0
  with pytest.raises(ValueError, match='variances'):
    sp.gaussian_expectation(jnp.cos, -1.0)


@pytest.mark.parametrize('name', ['tanh', 'sigmoid', 'selu'])
@pytest.mark.parametrize('q', [0.5, 3.0, 50.0])
def test_saturated_probability_matches_monte_carlo(name, q):
  z = math.sqrt(q) * STANDARD_NORMALS
  fraction = float(activations.inactive_fraction(name, z[:, None]))
  p = float(sp.saturated_probability(name, q))
  assert abs(p - fraction) < 5 * math.sqrt(p * (1 - p) / z.size) + 1e-6


# --- The mean-field recursion ----------------------------------------------------

def test_predict_closed_forms():
  n = 100
  # Linear net, Var(W) = 1/fan_in: q stays at the input's second moment.
  linear = sp.predict('identity', weight_variances=[1 / n] * 3, widths=[n] * 4,
                      input_second_moment=2.0)
  np.testing.assert_allclose([r['q'] for r in linear], 2.0, rtol=1e-9)
  np.testing.assert_allclose([r['chi'] for r in linear], 1.0, rtol=1e-9)
  # ReLU with σ_w² = 1 (Xavier on square layers): q halves per layer.
  relu = sp.predict('relu', weight_variances=[1 / n] * 4, widths=[n] * 5,
                    input_second_moment=1.0)
  np.testing.assert_allclose([r['q'] for r in relu], [1, 0.5, 0.25, 0.125], rtol=1e-9)
  np.testing.assert_allclose([r['activation_std'] for r in relu],
                             np.sqrt(np.array([1, 0.5, 0.25, 0.125]) *
                                     (0.5 - 1 / (2 * math.pi))), rtol=1e-9)
  # He: σ_w² = 2 gives χ = 1; a layer twice as wide as its input doubles χ.
  he = sp.predict('relu', weight_variances=[2 / n, 2 / (2 * n)], widths=[n, 2 * n, n],
                  input_second_moment=1.0, last_activation_grad_std=3.0)
  assert he[1]['chi'] == pytest.approx(0.5) and he[0]['chi'] == pytest.approx(2.0)
  assert [r['activation_grad_std'] for r in he] == pytest.approx([3 * math.sqrt(0.5), 3])
  # BatchNorm: every pre-activation standardized; no backward prediction.
  bn = sp.predict('tanh', weight_variances=[1.0] * 2, widths=[n] * 3,
                  input_second_moment=5.0, batchnorm=True, last_activation_grad_std=1.0)
  assert [r['q'] for r in bn] == [1.0, 1.0]
  assert bn[0]['saturated_fraction'] == pytest.approx(math.erfc(math.atanh(0.97) / math.sqrt(2)))
  assert all(math.isnan(r['activation_grad_std']) for r in bn)
  with pytest.raises(ValueError, match='widths'):
    sp.predict('tanh', weight_variances=[1.0], widths=[n], input_second_moment=1.0)


def make_model(init, activation, *, batchnorm=False, hidden=(16, 8), features=12,
               seed=0):
  return models.MLP(features, hidden, 5, activation=activation, init=init,
                    batchnorm=batchnorm, output_scale=1.0, rngs=nnx.Rngs(params=seed))


@pytest.mark.parametrize('batchnorm', [False, True])
def test_perturbed_forward_is_the_models_forward(batchnorm):
  """Zero perturbations (what signal propagation differentiates) change nothing."""
  model = make_model('kaiming', 'tanh', batchnorm=batchnorm)
  x = jax.random.normal(jax.random.key(1), (9, 12))
  probes = [jnp.zeros((9, 16)), jnp.zeros((9, 8))]
  logits, layers = model.forward(x, perturb=probes)
  expected_logits, expected_layers = model.forward(x)
  np.testing.assert_allclose(logits, expected_logits, rtol=1e-6, atol=1e-6)
  for ours, theirs in zip(layers, expected_layers):
    for key in ('dense', 'preactivation', 'activation'):
      np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-6, atol=1e-6)


def test_measure_matches_numpy_backprop():
  """Every statistic against a hand-written NumPy forward and backward pass."""
  model = make_model('kaiming', 'tanh')
  x = np.asarray(jax.random.normal(jax.random.key(1), (32, 12)), np.float64)
  labels = np.arange(32) % 5
  rows = sp.measure(model, x, labels)
  kernels = [np.asarray(d.kernel[...], np.float64) for d in model.dense]
  biases = [np.asarray(d.bias[...], np.float64) for d in model.dense]
  w_out = np.asarray(model.output.kernel[...], np.float64)
  b_out = np.asarray(model.output.bias[...], np.float64)
  h, zs, hs = x, [], []
  for kernel, bias in zip(kernels, biases):
    zs.append(h @ kernel + bias)
    h = np.tanh(zs[-1])
    hs.append(h)
  logits = h @ w_out + b_out
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  grad_h = (p - np.eye(5)[labels]) / len(x) @ w_out.T
  expected = []
  for l in reversed(range(len(kernels))):
    grad_z = grad_h * (1 - np.tanh(zs[l]) ** 2)
    inputs = x if l == 0 else hs[l - 1]
    expected.append({'activation_grad_std': grad_h.std(),
                     'kernel_grad_std': (inputs.T @ grad_z).std()})
    grad_h = grad_z @ kernels[l].T
  expected.reverse()
  loss = -np.mean(np.log(p[np.arange(len(x)), labels]))
  lo, hi = activations.saturation_bounds('tanh')
  for row, z, h, want in zip(rows, zs, hs, expected):
    assert row['preactivation_mean'] == pytest.approx(z.mean(), abs=1e-6)
    assert row['preactivation_std'] == pytest.approx(z.std(), rel=1e-5)
    assert row['activation_mean'] == pytest.approx(h.mean(), abs=1e-6)
    assert row['activation_std'] == pytest.approx(h.std(), rel=1e-5)
    assert row['saturated_fraction'] == pytest.approx(np.mean((z < lo) | (z > hi)))
    assert row['activation_grad_std'] == pytest.approx(want['activation_grad_std'], rel=1e-4)
    assert row['kernel_grad_std'] == pytest.approx(want['kernel_grad_std'], rel=1e-4)
    assert row['loss'] == pytest.approx(loss, rel=1e-5)


WIDE = dict(features=256, hidden=(512,) * 4)


def wide_measurement(init, activation, seed=0):
  x = jax.random.normal(jax.random.key(100), (256, 256))
  labels = np.arange(256) % 5
  model = make_model(init, activation, seed=seed, **WIDE)
  measured = sp.measure(model, x, labels)
  predicted = sp.predict(
      activation, weight_variances=sp.model_weight_variances(model, init),
      widths=sp.model_widths(model),
      input_second_moment=np.mean(np.square(np.asarray(x, np.float64)), axis=1),
      last_activation_grad_std=measured[-1]['activation_grad_std'])
  return measured, predicted


def finite_width_tolerance(layer, width, *, excess=5.0, sigmas=3.0):
  """Relative s.e. of an activation std after ``layer`` random layers of ``width``.

  Each layer's q̂ = (σ_w²/N)·Σ_j φ(z_j)² is a mean over N units: relative variance
  Var(φ²)/E[φ²]²/N per layer (5/N for ReLU), adding up over layers; std halves it.
  """
  return sigmas * 0.5 * math.sqrt(excess * layer / width)


def test_theory_matches_a_wide_tanh_net():
  for init in ('kaiming', 'normal'):
    measured, predicted = wide_measurement(init, 'tanh')
    for l, (m, p) in enumerate(zip(measured, predicted), start=1):
      # Independent inputs average the finite-width noise over the batch: ≪ 1%.
      assert m['preactivation_std'] == pytest.approx(p['preactivation_std'], rel=0.01)
      assert m['activation_std'] == pytest.approx(p['activation_std'], rel=0.01)
      assert m['saturated_fraction'] == pytest.approx(p['saturated_fraction'], abs=0.01)
      assert m['activation_grad_std'] == pytest.approx(
          p['activation_grad_std'], rel=finite_width_tolerance(l, 512, excess=1.0))
  # The claims: N(0, 1) saturates most tanh units; tanh-gain Kaiming does not.
  assert min(r['saturated_fraction'] for r in wide_measurement('normal', 'tanh')[0]) > 0.85
  assert wide_measurement('kaiming', 'tanh')[0][-1]['saturated_fraction'] < 0.08


def test_theory_matches_a_wide_relu_net():
  xavier, predicted = wide_measurement('xavier', 'relu')
  for l, (m, p) in enumerate(zip(xavier, predicted), start=1):
    assert m['activation_std'] == pytest.approx(
        p['activation_std'], rel=finite_width_tolerance(l, 512))
    assert m['activation_grad_std'] == pytest.approx(
        p['activation_grad_std'], rel=finite_width_tolerance(l, 512))
  # Xavier shrinks the activation std by 1/√2 per layer; Kaiming keeps it flat.
  kaiming, _ = wide_measurement('kaiming', 'relu')
  for previous, current in zip(xavier[1:-1], xavier[2:]):
    ratio = current['activation_std'] / previous['activation_std']
    assert ratio == pytest.approx(1 / math.sqrt(2), rel=finite_width_tolerance(1, 512))
  assert kaiming[-1]['activation_std'] == pytest.approx(
      kaiming[0]['activation_std'], rel=finite_width_tolerance(len(kaiming), 512))


def test_model_weight_variances_formula_and_empirical():
  model = make_model('kaiming', 'relu', features=300, hidden=(200,))
  assert sp.model_weight_variances(model, 'kaiming') == [pytest.approx(2 / 300)]
  assert sp.model_weight_variances(model)[0] == pytest.approx(2 / 300, rel=0.02)
  assert sp.model_widths(model) == [300, 200]


@pytest.mark.parametrize('activation', ['tanh', 'relu'])
def test_lsuv_gives_unit_variance_on_a_real_batch(small_dataset, activation):
  x = data.normalize(small_dataset.train_images[:64], small_dataset.mean,
                     small_dataset.std)
  model = models.MLP(small_dataset.num_features, (64, 64, 64), 30,
                     activation=activation, init='orthogonal', batchnorm=False,
                     rngs=nnx.Rngs(params=0))
  info = sp.apply_lsuv(model, x, tolerance=0.05)
  _, layers = model.forward(x)
  for layer, layer_info in zip(layers, info):
    assert abs(float(jnp.var(layer['preactivation'])) - 1) <= 0.05
    assert layer_info['iterations'] <= 10


# --- Configuration and the experiment --------------------------------------------

def test_the_experiment_validates_its_settings():
  settings = experiment.Settings(inits=['lsuv', 'orthogonal', 'xavier_uniform'],
                                 batchnorm='both')
  assert settings.inits == ('lsuv', 'orthogonal', 'xavier_uniform')
  assert config_lib.build(experiment.Settings, settings.to_dict()) == settings
  for kwargs, match in [
      (dict(inits=('kaimin',)), 'kaimin'),
      (dict(activations=('swish',)), 'swish'),
      (dict(inits=()), 'at least one'),
      (dict(batchnorm='maybe'), 'maybe'),
      (dict(depth=0), 'sp_depth=0'),
      (dict(draws=0), 'sp_draws=0'),
  ]:
    with pytest.raises(ValueError, match=match):
      experiment.Settings(**kwargs)
  assert not any(name.startswith('sp_') for name in Config().to_dict())


@pytest.mark.slow
def test_experiment_writes_figures_report_and_table(tmp_path, data_dir):
  config = Config(experiment='signal_propagation', dataset=SMALL, data_dir=data_dir,
                  batch_size=32, workdir=str(tmp_path / 'run'))
  settings = experiment.Settings(inits=('normal', 'lsuv'), activations=('tanh',), depth=3,
                                 width=32, batchnorm='both', draws=2)
  results = runner.run(experiment.EXPERIMENT, config, settings=settings)
  run = tmp_path / 'run'
  for name in ('config.json', 'results.json', 'report.md', 'sweep.json',
               'activation_histograms.png', 'signal_std.png', 'inactive.png'):
    assert (run / name).stat().st_size > 0, name
  cases = results['values']['last_layer']
  assert [(r['init'], r['batchnorm']) for r in cases] == [
      ('normal', False), ('lsuv', False), ('normal', True), ('lsuv', True)]
  normal = cases[0]
  assert normal['sigma_w2_hidden'] == 32  # N(0, 1): σ_w² = fan_in.
  assert normal['inactive'] > 0.5
  measured = [json.loads((run / m['name'] / 'measurement.json').read_text())['measured']
              for m in results['members']]
  assert [len(draws) for draws in measured] == [2] * 4  # cases × draws ...
  assert all(len(layers) == 3 for draws in measured for layers in draws)  # ... × layers
  report = (run / 'report.md').read_text()
  assert '| normal | tanh | off | 32 |' in report and '## LSUV' in report
  written = json.loads((run / 'results.json').read_text())['values']['last_layer']
  assert [r['activation_std'] for r in written] == [r['activation_std'] for r in cases]
  assert [c['passed'] for c in results['checks']] == [True]  # No Kaiming: one check.
  # The same command again finds every member measured; another one is refused.
  again = runner.run(experiment.EXPERIMENT, config, settings=settings, echo=lambda l: None)
  assert json.dumps(again['values']) == json.dumps(results['values'])  # NaN ≠ NaN.
  with pytest.raises(FileExistsError, match='different sweep'):
    runner.run(experiment.EXPERIMENT, config,
               settings=dataclasses.replace(settings, draws=3))


def test_experiment_is_registered():
  import experiments  # pylint: disable=import-outside-toplevel
  assert experiments.get_experiment('signal_propagation') is experiment.EXPERIMENT
  assert 'signal_propagation' in experiments.describe()


@pytest.mark.slow
def test_launch_runs_the_experiment_with_its_flags(tmp_path, data_dir):
  from test_launch import launch  # pylint: disable=g-import-not-at-top
  result = launch('--experiment=signal_propagation',
                  f'--dataset={SMALL}', f'--data_dir={data_dir}', '--batch_size=16',
                  '--sp_inits=xavier,kaiming', '--sp_activations=relu', '--sp_depth=2',
                  '--sp_width=16', '--sp_draws=1', f'--workdir={tmp_path / "run"}')
  assert result.returncode == 0, result.stderr
  assert 'kaiming-relu' in result.stdout
  settings = json.loads((tmp_path / 'run' / 'sweep.json').read_text())['settings']
  assert settings['inits'] == ['xavier', 'kaiming'] and settings['depth'] == 2
  config = json.loads((tmp_path / 'run' / 'config.json').read_text())
  assert config['experiment'] == 'signal_propagation' and 'sp_depth' not in config
  member = json.loads((tmp_path / 'run' / 'kaiming-relu' / 'config.json').read_text())
  assert member['hidden'] == [16, 16] and member['init'] == 'kaiming'
  assert (tmp_path / 'run' / 'report.md').exists()


# --- Depth scales (Schoenholz et al., 2017) ------------------------------------------

def _pair(q, c, size=200_000, seed=1):
  """Monte Carlo pairs (u₁, u₂) of variance q and correlation c."""
  z1, z2 = np.random.default_rng(seed).normal(size=(2, size))
  return math.sqrt(q) * z1, math.sqrt(q) * (c * z1 + math.sqrt(1 - c * c) * z2)


def _within_sampling_error(samples, value, sigmas=5.0):
  return abs(np.mean(samples) - value) <= sigmas * np.std(samples) / math.sqrt(samples.size)


@pytest.mark.parametrize('q,c', [(0.3, 0.0), (1.0, 0.5), (2.2, 0.9), (1.5, -0.7), (0.8, 1.0)])
def test_bivariate_expectation_matches_the_arcsine_kernel(q, c):
  # Williams (1997): E[erf(a·u₁) erf(a·u₂)] = (2/π) arcsin(2a²qc / (1 + 2a²q)).
  a = 0.8
  erf = lambda z: jax.scipy.special.erf(a * z)
  exact = 2 / math.pi * math.asin(2 * a * a * q * c / (1 + 2 * a * a * q))
  assert float(sp.bivariate_expectation(erf, erf, q, c)) == pytest.approx(exact, abs=1e-10)
  # Bilinear moments: E[u₁u₂] = qc, E[u₁²u₂²] = q²(1 + 2c²).
  assert float(sp.bivariate_expectation(lambda z: z, lambda z: z, q, c)) == pytest.approx(q * c)
  assert float(sp.bivariate_expectation(lambda z: z ** 2, lambda z: z ** 2, q, c)
               ) == pytest.approx(q * q * (1 + 2 * c * c))


def test_bivariate_expectation_matches_monte_carlo_for_tanh():
  u1, u2 = _pair(1.4, 0.3)
  samples = np.tanh(u1) * np.tanh(u2)
  assert _within_sampling_error(samples, float(sp.bivariate_expectation(
      jnp.tanh, jnp.tanh, 1.4, 0.3)))
  c = np.array([[0.0, 0.3], [0.6, 1.0]])
  assert sp.bivariate_expectation(jnp.tanh, jnp.tanh, 1.4, c).shape == (2, 2)
  with pytest.raises(ValueError, match=r'\[-1, 1\]'):
    sp.bivariate_expectation(jnp.tanh, jnp.tanh, 1.0, 1.5)


@pytest.mark.parametrize('sigma_w2', [0.5, 0.9, 1.0])
def test_tanh_without_bias_has_q_star_zero_up_to_sigma_w2_one(sigma_w2):
  q = sp.fixed_point_variance('tanh', sigma_w2=sigma_w2, sigma_b2=0.0)
  assert q == pytest.approx(0.0, abs=1e-6)
  # At q* = 0, χ₁ = σ_w² tanh′(0)² = σ_w², and the depth scale is −1/ln σ_w².
  scales = sp.depth_scales('tanh', sigma_w2=sigma_w2, sigma_b2=0.0)
  assert scales['chi_1'] == pytest.approx(sigma_w2, abs=1e-5)
  assert scales['c_star'] == 1.0
  if sigma_w2 < 1:
    assert scales['xi_c'] == pytest.approx(-1 / math.log(sigma_w2), rel=1e-4)
  else:
    assert scales['xi_c'] > 1e4


@pytest.mark.parametrize('sigma_w2,sigma_b2', [(1.5, 0.0), (1.0, 0.05), (3.0, 0.05)])
def test_q_star_is_a_fixed_point_of_the_monte_carlo_map(sigma_w2, sigma_b2):
  q = sp.fixed_point_variance('tanh', sigma_w2=sigma_w2, sigma_b2=sigma_b2)
  assert q > 0.05
  # The map by sampling returns q* within its sampling error.
  samples = sigma_w2 * np.tanh(math.sqrt(q) * STANDARD_NORMALS) ** 2 + sigma_b2
  assert _within_sampling_error(samples, q)
  # And from any start the iterated map reaches the same q*.
  assert sp.fixed_point_variance('tanh', sigma_w2=sigma_w2, sigma_b2=sigma_b2,
                                 q0=20.0) == pytest.approx(q, rel=1e-9)


def test_no_finite_fixed_point_is_refused():
  # ReLU: q^l = (σ_w²/2) q^{l−1} + σ_b² grows without bound for σ_w² > 2.
  with pytest.raises(ValueError, match='no finite fixed point'):
    sp.fixed_point_variance('relu', sigma_w2=2.25, sigma_b2=0.05)
  with pytest.raises(ValueError, match='no finite fixed point'):
    sp.fixed_point_variance('relu', sigma_w2=2.25, sigma_b2=0.05, iterations=2000)
  # Below: the fixed point of the linear map, σ_b² / (1 − σ_w²/2).
  assert sp.fixed_point_variance('relu', sigma_w2=1.5, sigma_b2=0.05) == pytest.approx(0.2)


def test_variance_map_slope_is_the_derivative_of_the_map():
  for activation in ('tanh', 'gelu'):
    q, h = 0.7, 1e-5
    numeric = (sp.variance_map(activation, q + h, sigma_w2=2.0, sigma_b2=0.1)
               - sp.variance_map(activation, q - h, sigma_w2=2.0, sigma_b2=0.1)) / (2 * h)
    assert float(sp.variance_map_slope(activation, q, sigma_w2=2.0)) == pytest.approx(
        float(numeric), rel=1e-6)
  # ReLU: E[ReLU(√q z)²] = q/2, so the slope is σ_w²/2 (φ″ = 0 off the kink).
  assert float(sp.variance_map_slope('relu', 1.3, sigma_w2=2.0)) == pytest.approx(1.0)


@pytest.mark.parametrize('sigma_w2', [1.2, 2.5, 4.0])
def test_chi_1_matches_monte_carlo_at_q_star(sigma_w2):
  q = sp.fixed_point_variance('tanh', sigma_w2=sigma_w2, sigma_b2=0.05)
  samples = sigma_w2 * (1 - np.tanh(math.sqrt(q) * STANDARD_NORMALS) ** 2) ** 2
  assert _within_sampling_error(samples, sp.chi_1('tanh', q=q, sigma_w2=sigma_w2))
  # χ₁ is the slope of the correlation map at c = 1.
  assert float(sp.correlation_slope('tanh', 1.0, q=q, sigma_w2=sigma_w2)) == pytest.approx(
      sp.chi_1('tanh', q=q, sigma_w2=sigma_w2), rel=1e-5)


def test_correlation_map_fixes_c_equal_one_and_slope_is_its_derivative():
  q = sp.fixed_point_variance('tanh', sigma_w2=2.5, sigma_b2=0.05)
  kwargs = dict(q=q, sigma_w2=2.5, sigma_b2=0.05)
  assert float(sp.correlation_map('tanh', 1.0, **kwargs)) == pytest.approx(1.0, abs=1e-9)
  assert float(sp.correlation_map('tanh', 1.0, **kwargs, num_points=64)) == pytest.approx(
      1.0, abs=1e-7)
  c, h = 0.4, 1e-5
  numeric = (sp.correlation_map('tanh', c + h, **kwargs)
             - sp.correlation_map('tanh', c - h, **kwargs)) / (2 * h)
  assert float(sp.correlation_slope('tanh', c, q=q, sigma_w2=2.5)) == pytest.approx(
      float(numeric), rel=1e-6)
  # Monte Carlo of one layer of the map.
  u1, u2 = _pair(q, c)
  samples = (2.5 * np.tanh(u1) * np.tanh(u2) + 0.05) / q
  assert _within_sampling_error(samples, float(sp.correlation_map('tanh', c, **kwargs)))


def test_chaotic_phase_fixed_correlation_below_one_and_finite_depth_scale():
  scales = sp.depth_scales('tanh', sigma_w2=3.0, sigma_b2=0.05)
  assert scales['chi_1'] > 1 and 0 < scales['c_star'] < 1
  c, q = scales['c_star'], scales['q_star']
  # c* is a fixed point of the Monte Carlo correlation map, and attracting: χ_c < 1.
  u1, u2 = _pair(q, c)
  assert _within_sampling_error((3.0 * np.tanh(u1) * np.tanh(u2) + 0.05) / q, c)
  assert 0 < scales['chi_c'] < 1
  assert scales['xi_c'] == pytest.approx(-1 / math.log(scales['chi_c']))
  # Iterating the map from c = 0.9 converges there at the rate χ_c per layer.
  kwargs = dict(q=q, sigma_w2=3.0, sigma_b2=0.05)
  path = [0.9]
  for _ in range(120):
    path.append(float(sp.correlation_map('tanh', path[-1], **kwargs)))
  assert path[-1] == pytest.approx(c, abs=1e-5)
  assert (path[91] - c) / (path[90] - c) == pytest.approx(scales['chi_c'], rel=1e-3)


def test_ordered_phase_depth_scale_is_that_of_chi_1():
  scales = sp.depth_scales('tanh', sigma_w2=1.25, sigma_b2=0.05)
  assert scales['c_star'] == 1.0 and scales['chi_c'] == scales['chi_1'] < 1
  assert scales['xi_c'] == pytest.approx(-1 / math.log(scales['chi_1']))
  assert 0 < scales['xi_q'] < scales['xi_c']


def test_xi_c_diverges_at_the_paper_critical_line():
  critical = sp.critical_weight_variance('tanh', sigma_b2=0.05)
  assert critical == pytest.approx(1.76, abs=0.01)  # Schoenholz et al., Fig. 1.
  xi = [sp.depth_scales('tanh', sigma_w2=critical + d, sigma_b2=0.05)['xi_c']
        for d in (-0.3, -0.03, 0.03, 0.3)]
  assert xi[1] > 5 * xi[0] and xi[2] > 5 * xi[3] and min(xi[1:3]) > 100
  assert sp.depth_scale(1.0) == math.inf and sp.depth_scale(math.exp(-0.5)) == 2.0
  with pytest.raises(ValueError, match='no order-to-chaos'):
    sp.critical_weight_variance('tanh', sigma_b2=0.05, bracket=(2.0, 3.0))
