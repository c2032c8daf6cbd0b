import json
import math

import numpy as np
import pytest

from conftest import run_tiny
from experiments import glorot_saturation as gs
from fundamentals import runner
from fundamentals import sweep
from fundamentals.config import Config


def test_tiny_run_computes_its_checks_from_the_diagnostics(tmp_path, data_dir):
  experiment = gs.EXPERIMENT
  config, settings, results = run_tiny(experiment, tmp_path / 'gs', data_dir)
  workdir = tmp_path / 'gs'
  members = {m['name']: m for m in results['members']}
  assert set(members) == {'sigmoid-standard', 'sigmoid-normalized', 'tanh-standard',
                          'tanh-normalized'}
  collected = runner.collect(experiment, sweep.from_manifest(
      sweep.read_manifest(workdir), workdir=workdir))
  # The lr is per activation; the init the paper's standard U(±1/√n_in) or normalized.
  assert collected['tanh-standard'].config.lr == settings.lrs[1]
  assert collected['sigmoid-standard'].config.init == 'standard_uniform'

  # Saturation check: recomputed from the records' per-layer means (step 0: the init).
  sigmoid = collected['sigmoid-standard']
  init = sigmoid.init_diagnostics
  means = [[l['activation_mean'] for l in init['layers']]] + [
      [l['activation_mean'] for l in r['diagnostics']['layers']]
      for r in sigmoid.records if 'diagnostics' in r]
  steps = [0] + [r['step'] for r in sigmoid.records if 'diagnostics' in r]
  top = np.array(means)[:, -1]
  below = [s for s, m in zip(steps, top) if m < gs.SATURATED_BELOW]
  lower = np.array(means)[:, :-1].min()
  saturation, gradients = results['checks']
  expected = (bool(below) and below[0] <= gs.EARLY_FRACTION * config.steps
              and lower >= gs.SATURATED_BELOW)
  assert saturation['passed'] == expected
  if below:
    assert f'{top[0]:.3f} at init, first below 0.1 at step {below[0]}' in saturation[
        'observed'] and f'below it {lower:.3f}' in saturation['observed']
  else:
    assert f'never below 0.1 (lowest {top.min():.3f})' in saturation['observed']

  # Gradient check: Var(∂L/∂h_1)/Var(∂L/∂h_L) at init, from diagnostics.json.
  ratios = {}
  for name in members:
    layers = collected[name].init_diagnostics['layers']
    ratios[name] = (layers[0]['activation_grad_std'] / layers[-1]['activation_grad_std']) ** 2
  for a in ('sigmoid', 'tanh'):
    assert f'{a}: standard {ratios[f"{a}-standard"]:.3g}, normalized ' \
           f'{ratios[f"{a}-normalized"]:.3g}' in gradients['observed']
  assert gradients['passed'] == all(
      abs(math.log10(ratios[f'{a}-normalized'])) < abs(math.log10(ratios[f'{a}-standard']))
      for a in ('sigmoid', 'tanh'))

  # Percentiles bracket the mean; the report and figures are written.
  t = gs.trace(sigmoid)
  assert np.all(t['p02'] <= t['mean'] + 1e-6) and np.all(t['mean'] <= t['p98'] + 1e-6)
  report = (workdir / 'report.md').read_text()
  for figure in ('activations.png', 'gradients_at_init.png', 'curves.png'):
    assert (workdir / figure).stat().st_size > 1000 and f'({figure})' in report
  assert '| sigmoid-standard |' in report and 'Glorot & Bengio' in report


def test_predicted_gradients_shrink_by_a_third_per_layer_in_the_linear_regime(tmp_path):
  """Identity activation, standard init: Var(∂L/∂h) is multiplied by n·Var(W) = 1/3 per
  square layer going down (eq. 13–14), anchored at the measured last layer."""
  (tmp_path / 'diagnostics.json').write_text(json.dumps({'init': {'scalars': {'layers': [
      {'activation_grad_std': 1.0}, {'activation_grad_std': 1.0},
      {'activation_grad_std': 0.5}]}}}))
  config = Config(hidden=(200, 200, 200), activation='identity', init='standard_uniform',
                  batchnorm=False, workdir=str(tmp_path))
  result = runner.Result('case', {}, config, None, None)
  np.testing.assert_allclose(gs.gradient_variances(result), [1.0, 1.0, 0.25])
  predicted = gs.predicted_gradient_variances(result, num_features=50,
                                              input_second_moment=np.ones(4))
  np.testing.assert_allclose(predicted, [0.25 / 9, 0.25 / 3, 0.25], rtol=1e-6)
  assert gs.gradient_ratio(predicted) == pytest.approx(1 / 9)


@pytest.mark.parametrize('values, message', [
    ({'activations': ('sigmoid',), 'lrs': (0.1, 0.2)}, 'one positive learning rate'),
    ({'depth': 1}, 'gs_depth=1'),
    ({'width': 0}, 'gs_width=0'),
    ({'activations': ('swish',), 'lrs': (0.1,)}, 'swish'),
    ({'inits': ('nope',)}, 'nope'),
])
def test_bad_settings_name_the_value(values, message):
  with pytest.raises(ValueError, match=message):
    gs.Settings(**values)
