import dataclasses
import math

import numpy as np
import pytest

from conftest import run_tiny
from experiments import edge_of_chaos as eoc
from fundamentals import signal_propagation as sp
from fundamentals import train


def test_members_vary_the_init_scale_only_within_a_depth():
  s = eoc.Settings(weight_variances=(1.0, 2.25), depths=(3, 5), width=8, bias_variance=0.05)
  config = eoc.EXPERIMENT.configure()
  members = eoc.members(config, s)
  assert list(members) == ['L3-w1', 'L3-w2.25', 'L5-w1', 'L5-w2.25']
  assert members['L5-w2.25'] == {'hidden': (8,) * 5, 'init_gain': 1.5,
                                 'bias_std': math.sqrt(0.05)}
  built = {name: dataclasses.replace(config, **o) for name, o in members.items()}
  # One depth: one structure, so --vectorize trains its σ_w² values together.
  assert train.canonical_config(built['L3-w1']) == train.canonical_config(built['L3-w2.25'])
  assert train.canonical_config(built['L3-w1']) != train.canonical_config(built['L5-w1'])
  assert config.activation == 'tanh' and not config.batchnorm and config.init == 'lecun'
  # ReLU with σ_w² > 2 has no finite q*: refused before anything runs.
  with pytest.raises(ValueError, match='no finite fixed point'):
    eoc.members(dataclasses.replace(config, activation='relu'), s)


@pytest.mark.parametrize('bad,match', [
    ({'weight_variances': ()}, 'eoc_weight_variances'),
    ({'weight_variances': (1.0, -2.0)}, 'positive'),
    ({'depths': (0, 4)}, 'eoc_depths'),
    ({'depths': (4, 4)}, 'repeats'),
    ({'width': 0}, 'eoc_width'),
    ({'bias_variance': -0.1}, 'eoc_bias_variance'),
    ({'trainable_ratio': 1.0}, 'chance'),
])
def test_bad_settings_are_refused(bad, match):
  with pytest.raises(ValueError, match=match):
    eoc.Settings(**bad)


def test_edges_and_layers_to_fixed_point():
  np.testing.assert_allclose(eoc._edges([1.0, 2.0, 4.0]), [0.5, 1.5, 3.0, 5.0])
  np.testing.assert_allclose(eoc._edges([10]), [9.5, 10.5])
  # Iterating the length map by hand from q¹ = σ_w² + σ_b² reaches 1% of q* at the same layer.
  q_star = sp.fixed_point_variance('tanh', sigma_w2=3.0, sigma_b2=0.05)
  q, layer = 3.05, 1
  while abs(q - q_star) > 0.01 * q_star:
    q = 3.0 * float(sp.gaussian_expectation(lambda z: np.tanh(z) ** 2, q)) + 0.05
    layer += 1
  assert eoc.layers_to_fixed_point('tanh', sigma_w2=3.0, sigma_b2=0.05, q1=3.05) == layer


def test_fractions_count_trainable_cells_on_each_side():
  cell = lambda depth, accuracy, status='completed': eoc.Cell(
      'x', depth, 2.0, accuracy, status, bound=30.0)
  grid = [cell(10, 0.5), cell(30, 0.05), cell(20, math.nan, 'diverged'), cell(40, 0.2),
          cell(50, 0.03)]
  assert eoc.fractions(grid, threshold=0.1) == {'inside': (1, 3), 'outside': (1, 2)}
  assert not eoc.is_trainable(cell(10, math.nan, 'diverged'), 0.1)


def test_runs_the_grid_and_computes_the_check(tmp_path, data_dir):
  config, settings, results = run_tiny(
      eoc.EXPERIMENT, tmp_path / 'eoc', data_dir, vectorize=True,
      settings={'weight_variances': (1.0, 4.0), 'depths': (2, 24)})
  workdir = tmp_path / 'eoc'
  members = {m['name']: m for m in results['members']}
  assert set(members) == {'L2-w1', 'L2-w4', 'L24-w1', 'L24-w4'}
  # Recompute the check from the members' summaries and theory.
  threshold = settings.trainable_ratio / 30
  counts = {'inside': [0, 0], 'outside': [0, 0]}
  for name, m in members.items():
    depth, sigma_w2 = int(name[1:].split('-')[0]), float(name.split('-w')[1])
    bound = 6 * sp.depth_scales('tanh', sigma_w2=sigma_w2, sigma_b2=0.05)['xi_c']
    side = counts['inside' if depth <= bound else 'outside']
    side[1] += 1
    side[0] += (m['status'] == 'completed'
                and m['summary']['final_train_accuracy'] >= threshold)
  assert counts['inside'][1] == 3 and counts['outside'][1] == 1  # L = 24 > 6ξ_c(1) ≈ 22.
  trainability, critical = results['checks']
  assert (f'inside {counts["inside"][0]}/3' in trainability['observed']
          and f'outside {counts["outside"][0]}/1' in trainability['observed'])
  assert trainability['passed'] == (counts['inside'][0] / 3 >= eoc.INSIDE_AT_LEAST
                                    and counts['outside'][0] <= eoc.OUTSIDE_AT_MOST)
  computed = sp.critical_weight_variance('tanh', sigma_b2=0.05)
  assert f'{computed:.4f}' in critical['observed'] and critical['passed']
  values = results['values']
  assert values['inside'] == {'trainable': counts['inside'][0], 'cells': 3}
  report = (workdir / 'report.md').read_text()
  accuracy = members['L2-w4']['summary']['final_train_accuracy']
  assert f'{accuracy:.1%}' in report and '![trainability](trainability.png)' in report
  assert '| σ_w² | q* | χ₁ |' in report and '†' in report
  for name in ('trainability.png', 'depth_scales.png'):
    assert (workdir / name).stat().st_size > 5000
