import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_tiny
from experiments import benchmark as benchmark_experiment
from fundamentals import benchmark


def test_matmul_flops_match_xla_count_of_a_linear_mlp_step():
  widths, batch = [96, 64, 32, 10], 16
  params = [jnp.ones((a, b)) for a, b in zip(widths[:-1], widths[1:])]

  def loss(params, x):
    for w in params:
      x = x @ w
    return jnp.sum(x)

  cost = jax.jit(jax.grad(loss)).lower(params, jnp.ones((batch, widths[0]))).cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  # XLA counts 2·m·n·k per dot plus a few elementwise flops (the seed of the backward).
  assert benchmark.matmul_flops(widths, batch) == pytest.approx(cost['flops'], rel=0.02)
  assert benchmark.matmul_flops([12288, 512, 512, 512, 30], 256) == 2 * 256 * (
      2 * (12288 * 512 + 2 * 512 * 512 + 512 * 30) + 2 * 512 * 512 + 512 * 30)


def test_plan_pairs_every_jax_case_with_a_pytorch_case_of_the_same_model():
  cases = benchmark.plan(models=(512, 64), sweep_members=8)
  labels = [c['label'] for c in cases]
  assert len(labels) == len(set(labels))
  for c in cases:
    if c['library'] == 'jax':
      assert benchmark.reference_of(c, 'float32') in labels
  assert 'jax 64 float32 one-step' in labels
  assert {c['mode'] for c in cases} == {'single', 'sequential', 'vectorized'}
  assert not [c for c in benchmark.plan(with_torch=False) if c['library'] == 'torch']


def test_summary_takes_the_median_of_per_round_ratios():
  a = benchmark.case('jax', 64, 'float32', chunk=16)
  t = benchmark.case('torch', 64, 'float32')
  runs = []
  for r, (jax_rate, torch_rate) in enumerate([(30, 10), (20, 20), (50, 10)], start=1):
    for c, rate in ((t, torch_rate), (a, jax_rate)):
      runs.append({'label': c['label'], 'case': c, 'round': r, 'steps_per_s': rate,
                   'examples_per_s': rate * 256, 'flops_per_s': rate, 'first_step_s': 1,
                   'peak_resident_mb': 1, 'first_loss': 3.4})
  runs.append({'label': 'jax 512 float32', 'case': benchmark.case('jax', 512, 'float32'),
               'round': 1, 'error': 'exit status 1: boom'})
  rows = {row['label']: row for row in benchmark.summarize(runs)}
  assert rows[a['label']]['vs_torch_float32'] == 3.0  # median of 3, 1, 5
  assert rows[a['label']]['steps_per_s'] == 30
  assert rows['jax 512 float32']['error'].endswith('boom')
  assert 'failed' in benchmark.table(list(rows.values()))


def test_a_tiny_benchmark_runs_each_case_in_its_own_process(tmp_path, data_dir):
  _, _, results = run_tiny(benchmark_experiment.EXPERIMENT, tmp_path / 'b', data_dir,
                           settings={'sweep_members': 0, 'torch': False})
  written = json.loads((tmp_path / 'b' / 'benchmark.json').read_text())
  rows = {r['label']: r for r in written['rows']}
  assert set(rows) == {'jax 16 float32', 'jax 16 float32 one-step'}
  for row in rows.values():
    assert row['steps_per_s'] > 0 and row['first_step_s'] > 0
    assert 0 < row['peak_fraction'] < 1 and 0 < row['input_share']
    assert row['first_loss'] == pytest.approx(np.log(30), abs=0.5)
  # Both formulations train the same numbers from the same init.
  assert rows['jax 16 float32']['first_loss'] == rows['jax 16 float32 one-step']['first_loss']
  assert written['machine']['cores'] >= 1 and 'jax' in written['machine']
  assert '| jax 16 float32 |' in (tmp_path / 'b' / 'report.md').read_text()


def test_the_pytorch_reference_starts_from_the_same_numbers(tmp_path):
  pytest.importorskip('torch', reason='PyTorch is the optional bench extra')
  cases = [benchmark.case('torch', 16, 'float32'), benchmark.case('jax', 16, 'float32',
                                                                  chunk=4)]
  runs = benchmark.run_rounds(cases, rounds=1, directory=tmp_path, echo=lambda line: None,
                              timing={'warmup_s': 0.05, 'window_s': 0.05, 'windows': 1})
  torch_run, jax_run = runs
  assert 'error' not in torch_run and 'error' not in jax_run
  # Same init, batch, normalization and loss: the first losses agree to float32 rounding.
  assert torch_run['first_loss'] == pytest.approx(jax_run['first_loss'], rel=1e-5)
