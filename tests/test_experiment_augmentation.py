import json

from fundamentals import rundir
from fundamentals import runner
from fundamentals.config import Config
from experiments import augmentation


def test_runs_both_variants_and_reports_the_gap(tmp_path, data_dir, capsys):
  config = Config(dataset='synthetic_fruits/small', data_dir=data_dir, hidden=(16,),
                  batch_size=50, steps=20, log_every=10, eval_every=10,
                  augment=('flip', 'crop'), workdir=str(tmp_path / 'aug'))
  results = runner.run(augmentation.EXPERIMENT, config)
  workdir = tmp_path / 'aug'
  summary = {m['name']: m['summary'] for m in results['members']}
  assert set(summary) == {'none', 'augmented'}
  assert [list(m['settings']['augment']) for m in results['members']] == [[], ['flip', 'crop']]
  assert json.loads((workdir / 'augmented' / 'config.json').read_text())['augment'] == ['flip', 'crop']
  assert (workdir / 'augmented' / 'augment_preview.png').stat().st_size > 1000
  assert not (workdir / 'none' / 'augment_preview.png').exists()
  assert (workdir / 'curves.png').stat().st_size > 1000
  report = (workdir / 'report.md').read_text()
  gap = summary['none']['final_train_accuracy'] - summary['none']['final_test_accuracy']
  assert f'{gap:.2%}' in report and '![curves](curves.png)' in report
  [check] = results['checks']
  augmented_gap = (summary['augmented']['final_train_accuracy']
                   - summary['augmented']['final_test_accuracy'])
  assert check['passed'] == (augmented_gap < gap) and f'{gap:.1%} without' in check['observed']
  # Both variants trained on the same data with the same seed: only augmentation differs.
  a = rundir.read_jsonl(workdir / 'none' / 'metrics.jsonl')
  b = rundir.read_jsonl(workdir / 'augmented' / 'metrics.jsonl')
  assert len(a) == len(b) == 2 and a[0]['train_loss'] != b[0]['train_loss']
  assert '| augment | train acc |' in capsys.readouterr().out
