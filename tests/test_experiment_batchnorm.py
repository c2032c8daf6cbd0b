"""The batchnorm experiment end to end, on a shrunken grid."""

import json

import pytest

from experiments import batchnorm as experiment
from fundamentals.config import Config


def test_quick_defaults_replace_only_fields_left_at_their_default():
  assert experiment.with_quick_defaults(Config()).hidden == experiment.QUICK['hidden']
  assert experiment.with_quick_defaults(Config()).steps == experiment.QUICK['steps']
  config = experiment.with_quick_defaults(Config(hidden=(32,), steps=7, lr=0.3))
  assert (config.hidden, config.steps, config.lr) == ((32,), 7, 0.3)


@pytest.mark.slow
def test_writes_tables_figures_and_consistent_numbers(tmp_path, data_dir, monkeypatch):
  monkeypatch.setattr(experiment, 'INITS', ('kaiming',))
  monkeypatch.setattr(experiment, 'ACTIVATIONS', ('tanh',))
  monkeypatch.setattr(experiment, 'LEARNING_RATES', (0.1,))
  monkeypatch.setattr(experiment, 'MOMENTA', (0.0, 0.9))
  monkeypatch.setattr(experiment, 'MOMENTUM_STEPS', (10,))
  workdir = tmp_path / 'bn'
  config = Config(experiment='batchnorm', dataset='synthetic_fruits/small',
                  data_dir=data_dir, hidden=(16, 8), batch_size=50, steps=10,
                  log_every=10, eval_every=10, diagnostics_every=0,
                  workdir=str(workdir))
  summary = experiment.run(config)

  for name in ('config.json', 'summary.json', 'report.md', 'grid.png',
               'activations_tanh.png', 'momentum.png', 'inference.png'):
    assert (workdir / name).stat().st_size > 500, name
  assert json.loads((workdir / 'config.json').read_text())['experiment'] == 'batchnorm'
  member = Config.from_json((workdir / 'grid' / 'bn-kaiming-tanh-lr0.1' / 'config.json')
                            .read_text())
  assert member.experiment == 'train' and member.batchnorm and member.hidden == (16, 8)

  assert len(summary['grid']) == 2  # 1 init × 1 activation × BN on/off × 1 lr.
  for row in summary['grid']:
    omitted = 16 + 8 if row['batchnorm'] else 0
    assert row['num_params_with_redundant_bias'] - row['num_params'] == omitted

  inference = summary['inference']
  statistics = [r['statistics'] for r in inference['rows']]
  assert statistics == ['running averages', 'population, layer by layer',
                        'population, one pass', 'test batch, B = 300',
                        'test batch, B = 50', 'test batch, B = 8', 'test batch, B = 1']
  assert inference['single_example_max_abs_diff'] < 1e-4
  by_name = {r['statistics']: r for r in inference['rows']}
  # A batch of one in training mode maps every input to the same logits: one class.
  assert by_name['test batch, B = 1']['test_accuracy'] <= 0.1

  momentum = summary['momentum']
  assert momentum['training_identical_across_alpha']
  rows = {r['alpha']: r for r in momentum['rows']}
  # α = 0 keeps only the last batch's statistics; α = 0.9 still remembers the init
  # (μ = 0, σ² = 1) after 10 steps, 0.9¹⁰ ≈ 35 % of it.
  assert rows[0.0]['mean_error'] < rows[0.9]['mean_error']

  report = (workdir / 'report.md').read_text()
  for heading in ('BN vs no BN', 'Per-layer activations', 'Inference', 'Momentum'):
    assert heading in report
  assert '| tanh | kaiming |' in report and '| running averages |' in report
