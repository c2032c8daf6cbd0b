import math

from fundamentals import doctor
from fundamentals import report
from fundamentals.config import Config

CONFIG = Config(hidden=(32, 16), activation='tanh', init='normal', batchnorm=False,
                workdir='runs/x')
SUMMARY = {'status': 'completed', 'diverged_at_step': None, 'steps': 40,
           'initial_loss': 12.0, 'expected_initial_loss': math.log(30),
           'final_train_loss': 0.5, 'final_train_accuracy': 0.9,
           'final_test_loss': 2.0, 'final_test_accuracy': 0.4, 'num_params': 394334,
           'examples_per_sec': 2000.0, 'wall_time_s': 12.3, 'workdir': 'runs/x'}
FINDING = doctor.finding('initial_loss', 'warning', 'initial loss 12.000 is 3.5× ln N',
                         {'ratio': 3.5}, 'scale the last layer down')


def layers(saturated, grad_std):
  return {'layers': [{'activation_std': 0.9, 'saturated_fraction': s,
                      'activation_grad_std': g} for s, g in zip(saturated, grad_std)]}


def test_report_has_the_table_findings_layers_figures_and_config():
  text = report.markdown(
      config=CONFIG, summary=SUMMARY, findings=[FINDING],
      figures={'loss.png': 'Loss and accuracy', 'update_to_data.png': 'Update:data'},
      diagnostics={'init': layers([0.9, 0.5], [1e-6, 1e-3]),
                   'end': layers([0.95, 0.4], [2e-6, 1e-3])})
  assert text.startswith('# Run report: `runs/x`\n')
  assert '| initial loss | 12.0000 (ln N = 3.4012, ratio 3.53) |' in text
  assert '| final test loss / accuracy | 2.0000 / 40.00% |' in text
  assert '| parameters | 394,334 |' in text
  assert ('- **warning** `initial_loss`: initial loss 12.000 is 3.5× ln N. '
          '*Fix:* scale the last layer down.') in text
  assert '| layer0 | 0.900 → 0.900 | 90.0% → 95.0% | 1.00e-06 → 2.00e-06 |' in text
  assert '![Loss and accuracy](loss.png)' in text
  assert '![Update:data](update_to_data.png)' in text
  assert '| batchnorm | `False` |' in text


def test_report_of_a_diverged_run_without_diagnostics():
  summary = {**SUMMARY, 'status': 'diverged', 'diverged_at_step': 7,
             'initial_loss': float('nan')}
  for key in ('final_train_loss', 'final_test_loss'):
    del summary[key]
  text = report.markdown(config=CONFIG, summary=summary, findings=[], figures={},
                         diagnostics={})
  assert '| status | diverged |' in text and '| diverged at step | 7 |' in text
  assert '| initial loss | nan' in text and 'final train' not in text
  assert f'No findings: all {len(doctor.RULES)} rules pass.' in text
  assert '## Layers' not in text


def test_steps_to_threshold_is_the_first_window_at_or_below_it_and_none_after_divergence():
  records = [{'step': 5, 'train_loss': 3.5}, {'step': 10, 'train_loss': 2.0},
             {'step': 15, 'train_loss': 1.0}]
  assert report.steps_to_threshold(records, 2.0) == 10  # At or below: 2.0 counts.
  assert report.steps_to_threshold(records, 0.5) is None
  assert report.steps_to_threshold([], 1.0) is None
  diverged = [{'step': 5, 'train_loss': 'nan'}, *records]  # JSON holds NaN as text.
  assert report.steps_to_threshold(diverged, 2.0) is None
  assert report.steps_to_threshold(records, 0.3, key='train_accuracy') is None
  assert report.steps_or_budget(records, 1.0, budget=99) == (15, True)
  assert report.steps_or_budget(records, 0.1, budget=99) == (99, False)
  assert report.steps_or_budget(diverged, 3.0, budget=7) == (7, False)


def test_number_and_formatted_treat_json_non_finite_values_as_missing():
  assert report.number(0.25) == 0.25 and report.number(3) == 3.0
  for missing in (None, 'nan', 'inf', float('nan'), float('-inf')):
    assert math.isnan(report.number(missing))
    assert report.formatted(missing, '.3f') == '—'
  assert report.formatted(0.12345, '.3f') == '0.123'
  assert report.formatted(0.5, '.1%') == '50.0%'
  assert report.formatted(None, '.3f', missing='n/a') == 'n/a'


def test_a_pipe_inside_a_cell_is_escaped_and_does_not_split_it():
  table = report.markdown_table(['check', 'observed'], [['mean |p(t) − p(0)| small', 0.5]])
  row = table.splitlines()[2]
  assert row == '| mean \\|p(t) − p(0)\\| small | 0.5 |'
  assert len(row.replace('\\|', '').split('|')) == 4  # Two cells between three bars.
