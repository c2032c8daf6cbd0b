"""The orthogonal_depth experiment: its helpers against NumPy, and a tiny run whose
check is recomputed from the members' records."""

import json

import jax
import numpy as np
import pytest

from conftest import run_tiny
from experiments import orthogonal_depth as experiment
from fundamentals import initializers
from fundamentals import rundir

def test_end_to_end_singular_values():
  rng = np.random.default_rng(0)
  kernels = [rng.normal(size=(40, 8)), rng.normal(size=(8, 8)), rng.normal(size=(8, 3))]
  np.testing.assert_allclose(experiment.end_to_end_singular_values(kernels),
                             np.linalg.svd(kernels[0] @ kernels[1] @ kernels[2],
                                           compute_uv=False), rtol=1e-10)
  # A bottleneck narrower than the output: only its rank's worth of values.
  narrow = [rng.normal(size=(40, 2)), rng.normal(size=(2, 3))]
  assert len(experiment.end_to_end_singular_values(narrow)) == 2
  # A product of (semi-)orthogonal kernels with orthonormal columns is an isometry.
  keys = jax.random.split(jax.random.key(0), 3)
  orthogonal = [np.asarray(initializers.orthogonal()(k, shape))
                for k, shape in zip(keys, [(40, 8), (8, 8), (8, 3)])]
  np.testing.assert_allclose(experiment.end_to_end_singular_values(orthogonal), 1.0,
                             atol=1e-5)


def test_tiny_run_writes_the_report_and_a_consistent_check(tmp_path, data_dir):
  workdir = tmp_path / 'od'
  e = experiment.EXPERIMENT
  config, settings, results = run_tiny(e, workdir, data_dir)

  for name in ('report.md', 'steps_to_threshold.png', 'loss.png', 'results.json'):
    assert (workdir / name).stat().st_size > 500, name
  lo, hi = min(settings.depths), max(settings.depths)
  steps = {}
  for init in experiment.INITS:
    for depth in (lo, hi):
      name = experiment.member_name(init, depth, 0)
      member = json.loads((workdir / name / 'config.json').read_text())
      assert (member['activation'], member['batchnorm'], member['init']) == (
          'identity', False, init)
      assert len(member['hidden']) == depth
      records = rundir.read_jsonl(workdir / name / 'metrics.jsonl')
      crossed = [r['step'] for r in records if r['train_loss'] <= settings.threshold]
      steps[init, depth] = crossed[0] if crossed else config.steps
      sigma = np.array(json.loads((workdir / name / 'analysis.json').read_text())[
          'singular_values'])
      assert len(sigma) == min(settings.width, 30)  # The rank of a 12288 → 30 map.
      if init == 'orthogonal':
        np.testing.assert_allclose(sigma, 1.0, atol=1e-4)
      else:
        assert sigma.max() - sigma.min() > 0.1
  ratio = {init: steps[init, hi] / steps[init, lo] for init in experiment.INITS}
  [check] = results['checks']
  assert f'= {ratio["orthogonal"]:.2f}, Gaussian' in check['observed']
  assert check['observed'].split('Gaussian ')[1].startswith(
      f'{"" if steps["lecun", hi] < config.steps else "≥ "}{steps["lecun", hi]}/')
  assert check['passed'] == (ratio['orthogonal'] < ratio['lecun'])
  report = (workdir / 'report.md').read_text()
  assert '| hidden layers | orthogonal: steps |' in report and '## Check:' in report
  assert '![steps to threshold](steps_to_threshold.png)' in report


def test_settings_are_validated():
  with pytest.raises(ValueError, match='od_depths'):
    experiment.Settings(depths=(1, 0))
  with pytest.raises(ValueError, match='od_threshold'):
    experiment.Settings(threshold=-1.0)
  with pytest.raises(ValueError, match='od_seeds'):
    experiment.Settings(seeds=(0, 0))
