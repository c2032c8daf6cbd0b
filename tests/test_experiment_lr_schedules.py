import json
import math

import numpy as np
import optax
import pytest

from conftest import run_tiny
from experiments import lr_schedules
from fundamentals import rundir
from fundamentals.config import Config


def test_variants_name_a_schedule_and_an_optional_warmup():
  assert lr_schedules.schedule_of('cosine_warmup') == 'cosine'
  assert lr_schedules.schedule_of('step') == 'step'
  assert lr_schedules.warmup_steps('cosine_warmup', steps=600, fraction=0.1) == 60
  assert lr_schedules.warmup_steps('cosine_warmup', steps=5, fraction=0.1) == 1
  assert lr_schedules.warmup_steps('cosine', steps=600, fraction=0.1) == 0
  members = lr_schedules.members(Config(steps=600), lr_schedules.Settings())
  assert len(members) == 15
  assert members['cosine_warmup/seed2'] == dict(schedule='cosine', seed=2, warmup_steps=60)
  assert members['constant/seed0'] == dict(schedule='constant', seed=0, warmup_steps=0)


def test_learning_rates_follow_the_closed_forms():
  config = Config(lr=0.5, steps=100, schedule='cosine', warmup_steps=10)
  lr = lr_schedules.learning_rates(config)
  assert lr.shape == (100,) and lr[0] == 0 and lr[10] == pytest.approx(0.5)
  t = np.arange(10, 100) - 10
  np.testing.assert_allclose(lr[10:], 0.25 * (1 + np.cos(np.pi * t / 90)), rtol=1e-5,
                             atol=1e-7)
  exponential = lr_schedules.learning_rates(Config(lr=0.5, steps=100, schedule='exponential',
                                                   warmup_steps=0))
  np.testing.assert_allclose(exponential, 0.5 * 0.01 ** (np.arange(100) / 100), rtol=1e-5)
  constant = lr_schedules.learning_rates(Config(lr=0.5, steps=100, schedule='constant',
                                                warmup_steps=0))
  np.testing.assert_array_equal(constant, np.full(100, 0.5))
  step = lr_schedules.learning_rates(Config(lr=0.5, steps=100, schedule='step',
                                            warmup_steps=0))
  np.testing.assert_allclose(step, np.select([np.arange(100) < 50, np.arange(100) < 75],
                                             [0.5, 0.05], 0.005), rtol=1e-5)


def test_mean_std_is_the_sample_standard_deviation():
  mean, std = lr_schedules.mean_std([1.0, 2.0, 4.0])
  assert mean == pytest.approx(7 / 3) and std == pytest.approx(np.std([1, 2, 4], ddof=1))
  assert lr_schedules.mean_std([3.0]) == (3.0, 0.0)
  assert all(math.isnan(v) for v in lr_schedules.mean_std([1.0, None]))
  assert all(math.isnan(v) for v in lr_schedules.mean_std([1.0, 'nan']))


def test_settings_are_validated():
  for kwargs, match in [
      (dict(schedules=('step', 'cosine')), "must include 'constant'"),
      (dict(schedules=('constant', 'linear')), "'linear'"),
      (dict(schedules=('constant', 'cosine_warmupp')), 'cosine_warmupp'),
      (dict(schedules=('constant',)), 'needs a decaying'),
      (dict(schedules=('constant', 'step', 'step')), 'repeats'),
      (dict(seeds=()), 'sched_seeds'),
      (dict(seeds=(1, 1)), 'sched_seeds'),
      (dict(warmup_fraction=1.0), 'sched_warmup_fraction=1.0'),
  ]:
    with pytest.raises(ValueError, match=match):
      lr_schedules.Settings(**kwargs)
  assert not any(name.startswith('sched_') for name in Config().to_dict())


def test_runs_schedules_times_seeds_and_computes_the_check(tmp_path, data_dir):
  experiment = lr_schedules.EXPERIMENT
  config, settings, results = run_tiny(
      experiment, tmp_path / 'lrs', data_dir,
      settings={'schedules': ('constant', 'step', 'cosine_warmup')})
  assert settings.seeds == (0, 1)
  workdir = tmp_path / 'lrs'
  for name in ('report.md', 'schedules.png', 'results.json'):
    assert (workdir / name).stat().st_size > 1000, name
  members = {m['name']: m for m in results['members']}
  assert list(members) == [f'{v}/seed{s}' for v in settings.schedules for s in (0, 1)]
  # The runs used the schedules the figure draws: the records' lr is η at their step.
  for name in members:
    member_config = Config.from_json((workdir / name / 'config.json').read_text())
    reference = optax.join_schedules(
        [optax.linear_schedule(0.0, 0.5, 2), optax.cosine_decay_schedule(0.5, 18)], [2]
    ) if name.startswith('cosine_warmup') else None
    lr = lr_schedules.learning_rates(member_config)
    for record in rundir.read_jsonl(workdir / name / 'metrics.jsonl'):
      assert record['lr'] == pytest.approx(lr[record['step'] - 1], rel=1e-6, abs=1e-7)
      if reference is not None:
        assert record['lr'] == pytest.approx(float(reference(record['step'] - 1)), abs=1e-7)
  assert Config.from_json((workdir / 'cosine_warmup/seed1/config.json').read_text()
                          ).warmup_steps == 2
  # The check, recomputed from the members' summaries.
  loss = {v: [members[f'{v}/seed{s}']['summary']['final_train_loss'] for s in (0, 1)]
          for v in settings.schedules}
  mean = {v: float(np.mean(values)) for v, values in loss.items()}
  [check] = results['checks']
  assert check['passed'] == (mean['step'] < mean['constant']
                             and mean['cosine_warmup'] < mean['constant'])
  assert f'constant {mean["constant"]:.4f}; step {mean["step"]:.4f}' in check['observed']
  report = (workdir / 'report.md').read_text()
  accuracy = [members[f'step/seed{s}']['summary']['final_test_accuracy'] for s in (0, 1)]
  assert (f'| step | 0 | {0.5 * (10 + 5 * 0.1 + 5 * 0.01) / 20:.3g} | 0.005 | '
          f'{mean["step"]:.4f} ± {np.std(loss["step"], ddof=1):.4f} | '
          f'{np.mean(accuracy):.2%} ± {np.std(accuracy, ddof=1):.2%} | 2/2 |') in report
  values = json.loads((workdir / 'results.json').read_text())['values']['schedules']
  assert [v['schedule'] for v in values] == list(settings.schedules)


def test_is_registered_with_its_scales():
  import experiments  # pylint: disable=import-outside-toplevel
  assert experiments.get_experiment('lr_schedules') is lr_schedules.EXPERIMENT
  full = lr_schedules.EXPERIMENT.default_settings(scale='full')
  assert len(full.seeds) == 5 and lr_schedules.EXPERIMENT.configure(
      scale='full').hidden == (512, 512, 512)
