import numpy as np
import pytest

from conftest import run_tiny
from experiments import batchnorm_ioffe as bni
from fundamentals import runner
from fundamentals import sweep


def test_tiny_run_computes_its_checks_from_the_unit_percentiles(tmp_path, data_dir):
  experiment = bni.EXPERIMENT
  config, _, results = run_tiny(experiment, tmp_path / 'bni', data_dir)
  workdir = tmp_path / 'bni'
  collected = runner.collect(experiment, sweep.from_manifest(
      sweep.read_manifest(workdir), workdir=workdir))
  assert [collected[n].config.batchnorm for n in ('no_bn', 'bn')] == [False, True]
  moved = {}
  for name, r in collected.items():
    points = [r['diagnostics']['percentiles'][-1] for r in r.records if 'diagnostics' in r]
    init = np.array([r.init_diagnostics['percentiles'][-1][f'preactivation_unit0_p{q}']
                     for q in (15, 50, 85)])  # diagnostics.json, read here
    p = np.array([[row[f'preactivation_unit0_p{q}'] for q in (15, 50, 85)]
                  for row in points])
    steps = np.r_[0, [rec['step'] for rec in r.records if 'diagnostics' in rec]]
    medians = np.r_[init[1], p[:, 1]][steps >= bni.SETTLE_FRACTION * config.steps]
    moved[name] = (np.mean(np.abs(p - init)), np.ptp(medians))
    assert init[0] <= init[1] <= init[2]
  percentiles, accuracy = results['checks']
  assert (f'drift: {moved["bn"][0]:.3f} with BN vs {moved["no_bn"][0]:.3f} without'
          in percentiles['observed'])
  assert f'median range: {moved["bn"][1]:.3f} vs {moved["no_bn"][1]:.3f}' in percentiles[
      'observed']
  assert percentiles['passed'] == (moved['bn'][0] < moved['no_bn'][0]
                                   and moved['bn'][1] < moved['no_bn'][1])
  means = {name: np.mean([rec['test_accuracy'] for rec in r.records
                          if 'test_accuracy' in rec]) for name, r in collected.items()}
  assert f'{means["bn"]:.1%} with BN vs {means["no_bn"]:.1%} without' in accuracy['observed']
  assert accuracy['passed'] == (means['bn'] > means['no_bn'])
  report = (workdir / 'report.md').read_text()
  assert (workdir / 'figure1.png').stat().st_size > 1000 and '(figure1.png)' in report
  assert '| with BN |' in report and 'Ioffe & Szegedy' in report


def test_drift_and_median_range_match_their_definitions():
  p = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.5, 1.0], [-1.0, -0.5, 3.0]])
  assert bni.drift(p) == pytest.approx(np.mean([1, 0.5, 0, 0, 0.5, 2]))
  steps = np.array([0, 10, 20])
  assert bni.median_range(steps, p, after=5) == pytest.approx(1.0)
  assert bni.median_range(steps, p, after=15) == pytest.approx(0.0)


@pytest.mark.parametrize('values, message', [({'depth': 0}, 'bni_depth=0'),
                                             ({'width': -1}, 'bni_width=-1')])
def test_bad_settings_name_the_value(values, message):
  with pytest.raises(ValueError, match=message):
    bni.Settings(**values)
