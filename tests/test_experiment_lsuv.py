"""The lsuv experiment: its helpers against NumPy, and a tiny run whose checks are
recomputed from the members' records and measurements."""

import json

import jax
import numpy as np
import pytest

from conftest import run_tiny
from experiments import lsuv as experiment
from fundamentals import data as data_lib
from fundamentals import models
from fundamentals import rundir
from fundamentals.config import Config

def test_output_variances_are_those_of_the_dense_outputs():
  config = Config(hidden=(6,), batchnorm=False, bias_std=0.5, activation='tanh')
  model = models.create_model(config, num_features=10, num_classes=3,
                              key=jax.random.key(0))
  x = np.random.default_rng(0).normal(size=(50, 10)).astype(np.float32)
  dense = model.dense[0]
  u = x.astype(np.float64) @ np.asarray(dense.kernel[...]) + np.asarray(dense.bias[...])
  np.testing.assert_allclose(experiment.output_variances(model, x), [np.var(u)],
                             rtol=1e-5)


def test_tiny_run_writes_the_report_and_consistent_checks(tmp_path, data_dir,
                                                          small_dataset):
  workdir = tmp_path / 'lsuv'
  e = experiment.EXPERIMENT
  config, s, results = run_tiny(e, workdir, data_dir)

  for name in ('report.md', 'variance_at_init.png', 'loss.png', 'results.json'):
    assert (workdir / name).stat().st_size > 500, name
  deviation, fast = {}, {}
  for a in s.activations:
    speed = {}
    for init in experiment.INITS:
      run = workdir / experiment.member_name(a, init, 0)
      summary = json.loads((run / 'summary.json').read_text())
      output = json.loads((run / 'analysis.json').read_text())
      assert len(output['variance']) == len(output['variance_held_out']) == s.depth
      if init == 'lsuv':
        # The rebuilt init is the trained run's: LSUV's own report on its batch agrees.
        np.testing.assert_allclose(output['variance'],
                                   [layer['variance'] for layer in summary['lsuv']],
                                   rtol=1e-4)
        deviation[a] = max(abs(v - 1) for v in output['variance'])
      records = rundir.read_jsonl(run / 'metrics.jsonl')
      crossed = [r['step'] for r in records if r['train_loss'] <= s.threshold]
      speed[init] = (crossed[0] if crossed else config.steps, summary['final_train_loss'],
                     bool(crossed))
    better_steps = min(speed[i][0] for i in experiment.BASELINES)
    better_final = min(speed[i][1] for i in experiment.BASELINES)
    fast[a] = (speed['lsuv'][2] and speed['lsuv'][0] <= better_steps
               and speed['lsuv'][1] <= (1 + experiment.FINAL_MARGIN) * better_final)
  variance_check, speed_check = results['checks']
  for a in s.activations:
    assert f'{a}: max |Var − 1| = {deviation[a]:.3f}' in variance_check['observed']
  assert variance_check['passed'] == all(d <= experiment.TOLERANCE for d in deviation.values())
  assert speed_check['passed'] == all(fast.values())
  # Kaiming's first layer: Var(u) = gain² · E[x²] on the held-out batch (fan_in = 12288).
  x = data_lib.normalize(small_dataset.test_images[:experiment.NUM_HELD_OUT],
                         small_dataset.mean, small_dataset.std)
  second_moment = float(np.mean(np.square(np.asarray(x, np.float64))))
  relu = json.loads((workdir / 'relu' / 'kaiming-s0' / 'analysis.json').read_text())
  assert relu['variance_held_out'][0] == pytest.approx(2 * second_moment, rel=0.15)
  report = (workdir / 'report.md').read_text()
  assert '| activation | init | Var layer 1 |' in report and '## Check:' in report
  assert '![variance at init](variance_at_init.png)' in report


def test_settings_are_validated():
  with pytest.raises(ValueError, match='lsuv_activations'):
    experiment.Settings(activations=())
  with pytest.raises(ValueError, match='Unknown activation|activation'):
    experiment.Settings(activations=('nope',))
  with pytest.raises(ValueError, match='lsuv_depth'):
    experiment.Settings(depth=0)
