import dataclasses
import json

import numpy as np
import pytest

from conftest import run_tiny
from experiments import lr_range_test as lrt
from fundamentals import lr_finder
from fundamentals import runner


@pytest.fixture(scope='module')
def ran(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp('lrt') / 'run'
  config, settings, results = run_tiny(lrt.EXPERIMENT, workdir, data_dir)
  return workdir, config, settings, results


def test_members_are_the_grid_and_the_deterministic_suggestion(ran, small_dataset):
  workdir, config, settings, results = ran
  by_name = {m['name']: m for m in results['members']}
  assert list(by_name) == ['grid/lr0.01', 'grid/lr0.1', 'suggested']
  # The suggestion is the range test's, recomputed afresh (no cache): deterministic.
  test = lr_finder.range_test(config, small_dataset, min_lr=settings.min_lr,
                              max_lr=settings.max_lr, num_steps=settings.num_steps)
  lr, how = lr_finder.choose(test)
  assert by_name['suggested']['settings']['lr'] == lr
  written = json.loads((workdir / 'suggested' / 'config.json').read_text())
  assert written['lr'] == lr and written['hidden'] == [16]
  analysis = json.loads((workdir / 'suggested' / 'analysis.json').read_text())
  assert analysis['how'] == how
  np.testing.assert_array_equal(analysis['range_test']['smoothed'], test.smoothed)
  assert results['values']['suggested_lr'] == lr


def test_check_recomputes_from_the_members_summaries(ran):
  workdir, _, _, results = ran
  summaries = {m['name']: m['summary'] for m in results['members']}
  grid = {n: s for n, s in summaries.items() if n != 'suggested'
          and s['status'] == 'completed'}
  best = min(grid.values(), key=lambda s: s['final_train_loss'])
  suggested = summaries['suggested']
  ratio = suggested['final_train_loss'] / best['final_train_loss']
  gap = (max(s['final_test_accuracy'] for s in grid.values())
         - suggested['final_test_accuracy'])
  loss_check, accuracy_check = results['checks']
  assert loss_check['passed'] == (ratio <= lrt.LOSS_MARGIN)
  assert f'(ratio {ratio:.3f})' in loss_check['observed']
  assert f'{best["final_train_loss"]:.4f}' in loss_check['observed']
  assert accuracy_check['passed'] == (gap <= lrt.ACCURACY_MARGIN)
  assert f'(best − suggested: {100 * gap:+.1f} points)' in accuracy_check['observed']
  assert results['values']['comparison']['loss_ratio'] == pytest.approx(ratio)
  report = (workdir / 'report.md').read_text()
  assert '## Check:' in report and '| **suggested** |' in report
  assert '![range test](range_test.png)' in report and 'Scale: tiny' in report
  for name in ('range_test.png', 'grid.png', 'loss_curves.png'):
    assert (workdir / name).stat().st_size > 1000


def test_a_rerun_resumes_with_the_same_members(ran):
  workdir, config, settings, results = ran
  finished = {p: p.stat().st_mtime_ns for p in workdir.glob('*/**/summary.json')}
  assert len(finished) == 3
  again = runner.run(lrt.EXPERIMENT, config, settings=settings, scale='tiny',
                     echo=lambda line: None)
  assert again['checks'] == results['checks']
  # Nothing trained again.
  assert {p: p.stat().st_mtime_ns for p in workdir.glob('*/**/summary.json')} == finished


def test_comparison_handles_diverged_runs():
  def result(name, lr, status, loss=None, accuracy=None):
    summary = {'status': status, 'final_train_loss': loss, 'final_test_accuracy': accuracy}
    config = lrt.EXPERIMENT.configure({'lr': lr})
    return runner.Result(name, {'lr': lr}, config, summary, None)
  results = {'grid/lr0.1': result('grid/lr0.1', 0.1, 'completed', 0.5, 0.6),
             'grid/lr1': result('grid/lr1', 1.0, 'diverged'),
             'grid/lr0.01': result('grid/lr0.01', 0.01, 'completed', 0.8, 0.62),
             'suggested': result('suggested', 0.05, 'completed', 0.6, 0.58)}
  c = lrt.comparison(results)
  assert c['best_lr'] == 0.1 and c['loss_ratio'] == pytest.approx(1.2)
  assert c['best_accuracy'] == 0.62 and c['accuracy_gap'] == pytest.approx(0.04)
  loss_check, accuracy_check = lrt.check(None, results)
  assert loss_check.passed and not accuracy_check.passed
  results['suggested'] = result('suggested', 3.0, 'diverged')
  assert lrt.comparison(results) is None
  assert [c.passed for c in lrt.check(None, results)] == [False, False]
  assert 'diverged' in lrt.check(None, results)[0].observed


@pytest.mark.parametrize('values, message', [
    ({'grid': ()}, 'one or more positive rates'),
    ({'grid': (0.1, 0.01)}, 'must be increasing'),
    ({'min_lr': 1.0, 'max_lr': 0.1}, 'lrt_min_lr < lrt_max_lr'),
    ({'num_steps': 5}, 'lrt_num_steps=5 must be at least 10'),
])
def test_bad_settings_are_refused(values, message):
  with pytest.raises(ValueError, match=message):
    lrt.EXPERIMENT.default_settings(values)


def test_a_resumed_run_keeps_the_suggestion_its_sweep_json_declared(ran, monkeypatch):
  workdir, config, settings, results = ran
  declared = next(m for m in results['members'] if m['name'] == 'suggested')
  assert lrt.recorded_suggestion(config, settings) == declared['settings']['lr']
  monkeypatch.setattr(lrt, 'range_test', lambda *a, **k: pytest.fail('ran the test again'))
  assert lrt.members(config, settings)['suggested'] == {'lr': declared['settings']['lr']}
  # Another config or other settings in the same directory: nothing is reused.
  other = config.__class__(**{**config.to_dict(), 'seed': config.seed + 1})
  assert lrt.recorded_suggestion(other, settings) is None
  assert lrt.recorded_suggestion(config, dataclasses.replace(settings, num_steps=11)) is None
