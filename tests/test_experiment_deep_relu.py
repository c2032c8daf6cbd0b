import json
import math

import pytest

from conftest import run_tiny
from experiments import deep_relu as dr
from fundamentals import rundir

@pytest.fixture(scope='module')
def ran(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp('deep_relu')
  _, settings, results = run_tiny(dr.EXPERIMENT, workdir, data_dir)
  return workdir, settings, results


def _first_layer_grad_at_init(member_dir) -> float:
  init = json.loads((member_dir / 'diagnostics.json').read_text())['init']['scalars']
  return init['params']['dense/0/kernel']['grad_std']


def test_trains_both_inits_and_computes_the_checks_from_the_members(ran):
  workdir, settings, results = ran
  summaries = {m['name']: m['summary'] for m in results['members']}
  assert set(summaries) == {'xavier-s0', 'kaiming-s0'}
  for name in summaries:
    config = json.loads((workdir / name / 'config.json').read_text())
    assert config['hidden'] == [settings.width] * settings.depth
    assert not config['batchnorm'] and config['output_scale'] == 1.0
    assert config['lr'] == dr.DEFAULTS['lr']  # The same learning rate for both.
  ln_n = math.log(30)
  records = rundir.read_jsonl(workdir / 'xavier-s0' / 'metrics.jsonl')
  ratios = [r['train_loss'] / ln_n for r in records]
  xavier = summaries['xavier-s0']['final_train_loss'] / ln_n
  kaiming = summaries['kaiming-s0']['final_train_loss'] / ln_n
  stalled, trained = [abs(x - 1) <= 0.05 for x in [xavier, *ratios]], kaiming < 0.8
  loss_check, grad_check = results['checks']
  assert (f'Xavier {xavier:.3f} (records {min(ratios):.3f} to {max(ratios):.3f}), '
          f'Kaiming {kaiming:.3f}') in loss_check['observed']
  assert loss_check['passed'] == (all(stalled) and trained)
  ratio = (_first_layer_grad_at_init(workdir / 'xavier-s0')
           / _first_layer_grad_at_init(workdir / 'kaiming-s0'))
  assert f'Xavier / Kaiming = {ratio:.2e}' in grad_check['observed']
  law = 2.0 ** (-(settings.depth - 1) / 2)  # Independently of dr.halving_law.
  assert grad_check['passed'] == (law / dr.LAW_FACTOR <= ratio <= law * dr.LAW_FACTOR)
  assert f'2^(−{settings.depth - 1}/2) = {2 ** (-(settings.depth - 1) / 2):.1e}' in (
      grad_check['expected'])
  report = (workdir / 'report.md').read_text()
  for name in ('loss.png', 'signal_at_init.png'):
    assert (workdir / name).stat().st_size > 1000 and f'({name})' in report
  assert f'{summaries["kaiming-s0"]["final_train_loss"]:.3f}' in report
  assert results['values']['gradient_ratio_at_init'] == [pytest.approx(ratio)]


def test_halving_law_is_two_to_the_minus_half_per_square_layer():
  assert dr.halving_law(1) == 1.0
  assert dr.halving_law(30) == pytest.approx(math.sqrt(0.5) ** 29)
  assert dr.halving_law(30) == pytest.approx(4.3e-5, rel=0.01)


def test_first_layer_gradient_reads_the_first_kernel_leaving_out_non_finite_values():
  scalars = lambda g: {'params': {'dense/0/kernel': {'grad_std': g},
                                  'dense/1/kernel': {'grad_std': 1.0}}}
  series = [(0, scalars(1e-8)), (20, scalars(2e-9)), (30, scalars('nan'))]
  assert dr.first_layer_gradient(series) == [(0, 1e-8), (20, 2e-9)]
  assert dr.first_layer_gradient([]) == []


def test_members_are_the_two_inits_per_seed():
  s = dr.Settings(depth=3, width=8, seeds=(0, 1))
  got = dr.members(None, s)
  assert list(got) == ['xavier-s0', 'xavier-s1', 'kaiming-s0', 'kaiming-s1']
  assert got['kaiming-s1'] == dict(init='kaiming', seed=1, hidden=(8, 8, 8),
                                   batchnorm=False, activation='relu')


@pytest.mark.parametrize('values, match', [
    ({'depth': 0}, 'dr_depth=0'), ({'width': -1}, 'dr_width=-1'),
    ({'seeds': ()}, 'dr_seeds'), ({'seeds': (1, 1)}, 'distinct'),
])
def test_settings_reject_bad_values(values, match):
  with pytest.raises(ValueError, match=match):
    dr.Settings(**values)
