"""The batchnorm experiment end to end, on a shrunken grid."""

import json

import pytest

from experiments import batchnorm as experiment
from fundamentals import runner
from fundamentals.config import Config


def test_experiment_defaults_fill_only_the_fields_not_given():
  assert experiment.EXPERIMENT.configure().hidden == experiment.DEFAULTS['hidden']
  assert experiment.EXPERIMENT.configure().steps == experiment.DEFAULTS['steps']
  config = experiment.EXPERIMENT.configure({'hidden': (32,), 'steps': 7, 'lr': 0.3})
  assert (config.hidden, config.steps, config.lr) == ((32,), 7, 0.3)
  # Given explicitly, a value wins even when it equals the Config default.
  reference = experiment.EXPERIMENT.configure({'hidden': (256, 256), 'steps': 1500})
  assert (reference.hidden, reference.steps) == ((256, 256), 1500) == (
      Config().hidden, Config().steps)


TINY = experiment.Settings(inits=('kaiming',), activations=('tanh',), lrs=(0.1,),
                           alphas=(0.0, 0.9), alpha_steps=(10,))


@pytest.mark.slow
def test_writes_tables_figures_and_consistent_numbers(tmp_path, data_dir, capsys):
  workdir = tmp_path / 'bn'
  config = Config(experiment='batchnorm', dataset='synthetic_fruits/small',
                  data_dir=data_dir, hidden=(16, 8), batch_size=50, steps=10,
                  log_every=10, eval_every=10, diagnostics_every=0,
                  workdir=str(workdir))
  results = runner.run(experiment.EXPERIMENT, config, settings=TINY)

  for name in ('config.json', 'results.json', 'report.md', 'grid.png',
               'activations_tanh.png', 'momentum.png', 'inference.png'):
    assert (workdir / name).stat().st_size > 500, name
  assert json.loads((workdir / 'config.json').read_text())['experiment'] == 'batchnorm'
  assert Config.from_json((workdir / 'config.json').read_text()) == config  # What ran.
  member = Config.from_json((workdir / 'grid' / 'bn-kaiming-tanh-lr0.1' / 'config.json')
                            .read_text())
  assert member.experiment == 'train' and member.batchnorm and member.hidden == (16, 8)

  by_name = {m['name']: m for m in results['members']}
  grid = [m for name, m in by_name.items() if name.startswith('grid/')]
  assert len(grid) == 2  # 1 init × 1 activation × BN on/off × 1 lr.
  for row in grid:
    summary = json.loads((workdir / row['name'] / 'summary.json').read_text())
    omitted = 16 + 8 if row['name'].startswith('grid/bn-') else 0
    assert summary['num_params_with_redundant_bias'] - summary['num_params'] == omitted

  inference = by_name['inference']['output']
  statistics = [r['statistics'] for r in inference['rows']]
  assert statistics == ['running averages', 'population, layer by layer',
                        'population, one pass', 'test batch, B = 300',
                        'test batch, B = 50', 'test batch, B = 8', 'test batch, B = 1']
  assert inference['single_example_max_abs_diff'] < 1e-4
  rows = {r['statistics']: r for r in inference['rows']}
  # A batch of one in training mode maps every input to the same logits: one class.
  assert rows['test batch, B = 1']['test_accuracy'] <= 0.1

  checks = {c['expected'].split(':')[0]: c['passed'] for c in results['checks']}
  assert checks['α changes the running averages only']  # Identical across α.
  momentum = {by_name[f'momentum/alpha{a:g}-steps10']['output']['mean_error']: a
              for a in (0.0, 0.9)}
  # α = 0 keeps only the last batch's statistics; α = 0.9 still remembers the init
  # (μ = 0, σ² = 1) after 10 steps, 0.9¹⁰ ≈ 35 % of it.
  assert momentum[min(momentum)] == 0.0

  report = (workdir / 'report.md').read_text()
  for heading in ('BN vs no BN', 'Per-layer activations', 'Inference', 'Momentum',
                  '## Check:'):
    assert heading in report
  assert '| tanh | kaiming |' in report and '| running averages |' in report
  assert '## 1. Final test accuracy' in capsys.readouterr().out  # The report, printed.


def test_settings_are_validated():
  with pytest.raises(ValueError, match='batchnorm_histogram_lr=0.5 must be one of'):
    experiment.Settings(histogram_lr=0.5)
  with pytest.raises(ValueError, match='at least one value'):
    experiment.Settings(inits=())
