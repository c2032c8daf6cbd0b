"""The lr range test: smoothing, stop rule and suggestions on hand-made curves (against
closed forms), and the run itself on a tiny model (functional, deterministic, the
run's own batches and optimizer)."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from conftest import SMALL
from fundamentals import data as data_lib
from fundamentals import lr_finder
from fundamentals import rundir
from fundamentals import train
from fundamentals.config import Config


def test_exponential_lrs_are_log_spaced_from_min_to_max():
  lrs = lr_finder.exponential_lrs(1e-4, 1.0, 5)
  np.testing.assert_allclose(lrs, [1e-4, 1e-3, 1e-2, 1e-1, 1.0], rtol=1e-12)
  with pytest.raises(ValueError, match='min_lr < max_lr'):
    lr_finder.exponential_lrs(1.0, 0.1, 5)
  with pytest.raises(ValueError, match='num_steps=2 must be at least 3'):
    lr_finder.exponential_lrs(1e-3, 1.0, 2)


def test_smoothing_is_the_bias_corrected_average_in_closed_form():
  x = np.random.default_rng(0).normal(3.0, 1.0, 40)
  beta = 0.9
  t = np.arange(1, len(x) + 1)
  # s_t = Σ_{i≤t} (1−β) β^{t−i} x_i / (1 − β^t)
  weights = np.tril((1 - beta) * beta ** (t[:, None] - t[None, :]))
  expected = weights @ x / (1 - beta ** t)
  np.testing.assert_allclose(lr_finder.smooth(x, beta), expected, rtol=1e-12)
  assert lr_finder.smooth(x, beta)[0] == x[0]  # Corrected: no pull towards 0.
  np.testing.assert_allclose(lr_finder.smooth(np.full(30, 2.5), 0.98), 2.5, rtol=1e-12)
  np.testing.assert_array_equal(lr_finder.smooth(x, 0.0), x)
  with pytest.raises(ValueError, match='smoothing=1.0 must be in'):
    lr_finder.smooth(x, 1.0)


def test_stop_rule_fires_above_the_factor_times_the_minimum_or_when_not_finite():
  assert lr_finder.stop_index([3.0, 1.0, 3.9, 4.0, 4.1], 4.0) == 4
  assert lr_finder.stop_index([3.0, 1.0, 2.1], 2.0) == 2
  assert lr_finder.stop_index([3.0, 2.0, np.nan, 1.0]) == 2
  assert lr_finder.stop_index([3.0, np.inf]) == 1
  assert lr_finder.stop_index(np.linspace(3, 1, 50)) is None  # Never diverges.
  # The minimum so far, not the final one: a later low does not move an earlier stop.
  assert lr_finder.stop_index([1.0, 5.0, 0.1]) == 1
  with pytest.raises(ValueError, match='stop_factor=1.0 must exceed 1'):
    lr_finder.stop_index([1.0], 1.0)


def descent(u, centre, width=0.5):
  """3.4 → 1.4 in a tanh step centred at ``centre``: the steepest at u = centre,
  slope −1/width."""
  return 2.4 - np.tanh((u - centre) / width)


def test_steepest_descent_is_taken_against_log_lr_on_uneven_spacing():
  # Fine steps around the true steepest point u0 = ln 0.01, coarse ones away from it:
  # a difference per step would favour the coarse ones.
  u0 = np.log(0.01)
  u = np.concatenate([u0 - 4.0 + np.arange(3) * 1.0, u0 + np.arange(-20, 21) * 0.05,
                      u0 + 2.0 + np.arange(3) * 1.0])
  lrs, curve = np.exp(u), descent(u, u0, width=1.0)
  s = lr_finder.suggestions(lrs, curve)
  assert s.steepest == pytest.approx(0.01, rel=1e-9)
  assert s.steepest_slope == pytest.approx(-1.0, rel=1e-2)  # Central differences: O(h²).
  per_step = np.gradient(curve)  # What ignoring the spacing would pick: e-fold off.
  assert abs(np.log(lrs[np.argmin(per_step)] / 0.01)) > np.log(2)
  # The minimum is the last point (the curve never turns up): minimum/10 is its tenth.
  assert s.minimum == lrs[-1] and s.minimum_over_10 == pytest.approx(lrs[-1] / 10)


def spiky_curve():
  """100 log-spaced rates 1e-5 … 10; a plateau, the descent centred at 0.03 and a
  blow-up after 1; a start that falls from 6 (the first losses, each followed by a
  bias-corrected average) and a spike at 1e-4 that falls back faster than the
  descent falls."""
  lrs = lr_finder.exponential_lrs(1e-5, 10.0, 100)
  u = np.log(lrs)
  curve = descent(u, np.log(0.03), width=1.0) + np.where(lrs > 1, (u - np.log(1)) ** 2, 0)
  curve[:4] += [2.6, 1.5, 0.6, 0.1]
  spike = int(np.argmin(np.abs(lrs - 1e-4)))
  curve[spike:spike + 3] += [1.0, 2.0, 0.0]
  return lrs, curve, spike


def test_suggestions_are_not_fooled_by_early_spikes():
  lrs, curve, spike = spiky_curve()
  s = lr_finder.suggestions(lrs, curve, skip_start=10)
  steepest_true = lrs[np.argmin(np.abs(lrs - 0.03))]
  assert s.steepest == pytest.approx(steepest_true, rel=0.15)
  assert s.steepest_index < s.minimum_index
  assert 0.5 < s.minimum < 1.5  # Where the blow-up starts.
  # Plain slopes would pick the spike's fall back, and without the skip the start.
  plain = np.gradient(curve[10:], np.log(lrs[10:]))
  assert abs(10 + np.argmin(plain) - spike) <= 3
  assert lr_finder.suggestions(lrs, curve, skip_start=0).steepest_index < 4


def test_a_curve_that_never_falls_has_no_steepest_point_and_chooses_minimum_over_10():
  lrs = lr_finder.exponential_lrs(1e-3, 1.0, 20)
  s = lr_finder.suggestions(lrs, np.linspace(3.0, 4.0, 20))
  assert s.steepest is None and s.minimum == lrs[0]
  test = lr_finder.RangeTest(lrs, np.zeros(20), np.zeros(20), None, 20, 0, s)
  assert lr_finder.choose(test)[0] == pytest.approx(lrs[0] / 10)


def test_suggestions_read_the_finite_prefix_and_refuse_too_few_points():
  lrs = lr_finder.exponential_lrs(1e-3, 1.0, 30)
  curve = descent(np.log(lrs), np.log(0.03))
  curve[25:] = np.nan
  assert lr_finder.suggestions(lrs, curve).minimum_index == 24
  with pytest.raises(ValueError, match='slopes need at least 3'):
    lr_finder.suggestions(lrs, curve, skip_start=23)
  with pytest.raises(ValueError, match='increasing'):
    lr_finder.suggestions(lrs[::-1], curve)


def test_choose_is_the_steepest_descent():
  s = lr_finder.Suggestions(steepest=0.01, steepest_index=5, steepest_slope=-1.0,
                            minimum=1.0, minimum_index=9)
  test = lr_finder.RangeTest(np.ones(10), np.ones(10), np.ones(10), None, 10, 0, s)
  lr, how = lr_finder.choose(test)
  assert lr == 0.01 and 'steepest descent' in how and 'minimum/10 = 0.1' in how


TINY = dict(dataset=SMALL, hidden=(16,), batch_size=50, log_every=1, eval_every=1000,
            diagnostics_every=0, checkpoint_every=0, batchnorm=False)


@pytest.fixture(scope='module')
def tiny(data_dir, small_dataset):
  return Config(**TINY, data_dir=data_dir), small_dataset


def test_range_test_is_functional_deterministic_and_stops_on_divergence(tiny):
  config, dataset = tiny
  start = train.initial_state(config, dataset)
  before = jax.tree.map(np.array, start.state.params)
  first = lr_finder.range_test(config, dataset, min_lr=1e-3, max_lr=100.0, num_steps=40,
                               start=start)
  # The given state is neither donated nor changed, and equals a fresh init.
  jax.tree.map(np.testing.assert_array_equal, before,
               jax.tree.map(np.array, start.state.params))
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(
      np.array, train.initial_state(config, dataset).state.params))
  again = lr_finder.range_test(config, dataset, min_lr=1e-3, max_lr=100.0, num_steps=40)
  np.testing.assert_array_equal(first.losses, again.losses)
  assert first.suggestions == again.suggestions
  # Up to lr 100 a plain MLP diverges: the test stops at the first step past the rule.
  assert first.stopped_at is not None and len(first.losses) == first.stopped_at + 1
  assert lr_finder.stop_index(first.smoothed) == first.stopped_at
  np.testing.assert_allclose(first.smoothed, lr_finder.smooth(first.losses))
  np.testing.assert_array_equal(first.lrs, lr_finder.exponential_lrs(1e-3, 100.0, 40)[
      :len(first.losses)])
  restored = lr_finder.RangeTest.from_dict(json.loads(json.dumps(first.to_dict())))
  np.testing.assert_array_equal(restored.smoothed, first.smoothed)
  assert restored.suggestions == first.suggestions


def test_range_test_trains_as_the_run_would_and_runs_to_the_end_below_divergence(
    tiny, tmp_path):
  config, dataset = tiny
  test = lr_finder.range_test(config, dataset, min_lr=1e-4, max_lr=1e-3, num_steps=5)
  assert test.stopped_at is None and len(test.losses) == 5
  # Its first two steps are a run's at a constant rate lrs[0]: the same init,
  # batches, SGD with the config's momentum (the second loss is after one update).
  run = dataclasses.replace(config, lr=float(test.lrs[0]), schedule='constant', steps=2,
                            workdir=str(tmp_path / 'run'))
  train.fit(run, dataset=dataset, echo=lambda line: None)
  records = rundir.read_jsonl(tmp_path / 'run' / 'metrics.jsonl')
  np.testing.assert_allclose([r['train_loss'] for r in records], test.losses[:2],
                             rtol=1e-6)


def test_range_test_refuses_bad_settings(tiny):
  config, dataset = tiny
  with pytest.raises(ValueError, match='skip_start=50 must be in'):
    lr_finder.range_test(config, dataset, num_steps=20, skip_start=50)
  with pytest.raises(ValueError, match='stop_factor=0.5 must exceed 1'):
    lr_finder.range_test(config, dataset, stop_factor=0.5)
  with pytest.raises(ValueError, match='diverged at step .* lower min_lr=1e\\+06'):
    lr_finder.range_test(config, dataset, min_lr=1e6, max_lr=1e7, num_steps=5)


def test_lr_auto_through_launch_trains_at_the_suggestion(tiny, tmp_path):
  from test_launch import launch_here  # pylint: disable=g-import-not-at-top
  config, dataset = tiny
  workdir = tmp_path / 'auto'
  result = launch_here('--lr=auto', f'--dataset={SMALL}', f'--data_dir={config.data_dir}',
                       '--hidden=16', '--batchnorm=false', '--batch_size=50', '--steps=3',
                       '--log_every=1', '--diagnostics_every=0', '--checkpoint_every=0',
                       f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr
  written = json.loads((workdir / 'config.json').read_text())
  expected, _ = lr_finder.suggest(dataclasses.replace(config, steps=3), dataset)
  assert written['lr'] == expected
  assert json.loads((workdir / 'summary.json').read_text())['steps'] == 3


def test_a_dataset_too_small_for_the_batch_is_refused(tiny):
  config, dataset = tiny
  small = dataclasses.replace(dataset, train_images=dataset.train_images[:10],
                              train_labels=dataset.train_labels[:10])
  assert isinstance(small, data_lib.Dataset)
  with pytest.raises(ValueError, match='exceeds the 10 training examples'):
    lr_finder.range_test(config, small)
