import json
import math

import numpy as np
import pytest

from conftest import run_tiny
from experiments import init_activation as ia
from fundamentals import runner
from fundamentals.config import Config

@pytest.fixture(scope='module')
def ran(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp('init_activation')
  _, settings, results = run_tiny(ia.EXPERIMENT, workdir, data_dir)
  return workdir, settings, results


def _score(summary) -> float:
  return -math.inf if summary['status'] == 'diverged' else summary['final_test_accuracy']


def test_runs_the_grid_and_computes_the_check_from_the_members(ran):
  workdir, settings, results = ran
  summaries = {m['name']: m['summary'] for m in results['members']}
  assert set(summaries) == {ia.member_name(bn, init, a, seed) for bn in (False, True)
                            for init in settings.inits for a in settings.activations
                            for seed in settings.seeds}
  config = json.loads((workdir / 'bn-kaiming-relu-s0' / 'config.json').read_text())
  assert config['batchnorm'] and config['init'] == 'kaiming' and config['hidden'] == [16]
  [check] = results['checks']
  for a in settings.activations:
    normal = summaries[ia.member_name(False, 'normal', a, 0)]
    others = {ia.row_label(init, bn): summaries[ia.member_name(bn, init, a, 0)]
              for bn in (False, True) for init in settings.inits
              if (init, bn) != ('normal', False)}
    nxt = min(others, key=lambda k: _score(others[k]))
    assert f'next-worst {nxt}' in check['observed']
    if normal['status'] == 'completed':
      assert f'N(0, 1) {normal["final_test_accuracy"]:.1%}' in check['observed']
    assert check['passed'] == (_score(normal) < _score(others[nxt]))
  report = (workdir / 'report.md').read_text()
  for name in ('heatmap_test_accuracy.png', 'heatmap_initial_loss.png', 'inactive.png'):
    assert (workdir / name).stat().st_size > 1000 and f'({name})' in report
  kaiming = summaries['nobn-kaiming-relu-s0']
  loss = kaiming['initial_loss']
  assert (f'| kaiming | no | {kaiming["final_test_accuracy"]:.1%} | {loss:.3g} |' in report
          and 'Scale: tiny.' in report)
  cells = {(c['init'], c['batchnorm'], c['activation']): c for c in results['values']['cells']}
  assert cells['kaiming', False, 'relu']['initial_loss'] == pytest.approx(loss)


def test_inactive_series_is_per_layer_leaving_out_non_finite_values():
  layer = lambda x: {'dead_fraction': x}
  series = [(0, {'layers': [layer(0.1), layer(0.2)]}),
            (10, {'layers': [layer(0.3), layer('nan')]})]
  assert ia.inactive_series(series, key='dead_fraction', num_layers=2) == [
      [(0, 0.1), (10, 0.3)], [(0, 0.2)]]
  assert ia.inactive_series(series[1:], key='dead_fraction', num_layers=2) == [
      [(10, 0.3)], []]


def _result(status, accuracy=None, initial=2.0, step=None):
  summary = {'status': status, 'initial_loss': initial, 'diverged_at_step': step}
  if accuracy is not None:
    summary['final_test_accuracy'] = accuracy
  return runner.Result('r', {}, Config(workdir='/nonexistent'), summary, None)


def test_cells_rank_diverged_runs_worst_and_average_over_seeds():
  cell = ia.Cell([_result('completed', 0.4), _result('completed', 0.6)])
  assert cell.accuracy == pytest.approx(0.5) and cell.score == pytest.approx(0.5)
  assert cell.describe() == f'50.0% ± {np.std([0.4, 0.6], ddof=1):.1%}'
  diverged = ia.Cell([_result('diverged', initial=1e4, step=5), _result('completed', 0.9)])
  assert diverged.score == -math.inf and diverged.describe() == 'diverged 1/2 (step 5)'
  assert diverged.initial_loss == pytest.approx((1e4 + 2.0) / 2)
  s = ia.Settings(inits=('normal', 'xavier'), activations=('relu',))
  grid = {('normal', False, 'relu'): diverged, ('xavier', False, 'relu'): cell,
          ('normal', True, 'relu'): ia.Cell([_result('completed', 0.3)]),
          ('xavier', True, 'relu'): ia.Cell([_result('completed', 0.7)])}
  worst = ia.worst_rows(s, grid)['relu']
  assert worst['next_row'] == 'normal +BN' and worst['passed']
  grid['xavier', True, 'relu'] = ia.Cell([_result('diverged', step=2)])
  assert not ia.worst_rows(s, grid)['relu']['passed']  # A tie at −∞ is not "worst".


def test_heatmap_writes_each_cell_and_blanks_missing_values():
  values = np.array([[0.5, np.nan], [0.2, 0.9]])
  text = np.array([['50%', 'diverged'], ['20%', '90%']], dtype=object)
  fig = ia.heatmap_figure(values, text, rows=['normal', 'kaiming'], columns=['tanh', 'relu'],
                          title='t', label='acc')
  ax = fig.axes[0]
  assert [t.get_text() for t in ax.texts] == ['50%', 'diverged', '20%', '90%']
  assert ax.images[0].get_array().mask[0, 1]
  log = ia.heatmap_figure(np.array([[3.4, 1e4]]), np.array([['3.4', '1e4']], dtype=object),
                          rows=['r'], columns=['a', 'b'], title='t', label='l', log=True)
  assert log.axes[0].images[0].norm.vmax == pytest.approx(1e4)


@pytest.mark.parametrize('values, match', [
    ({'inits': ('xavier', 'kaiming')}, 'must hold .normal.'),
    ({'inits': ('normal', 'bogus')}, 'Unknown initializer'),
    ({'activations': ('bogus',)}, 'bogus'),
    ({'seeds': (0, 0)}, 'distinct seeds'),
])
def test_settings_reject_bad_values(values, match):
  with pytest.raises(ValueError, match=match):
    ia.Settings(**values)
