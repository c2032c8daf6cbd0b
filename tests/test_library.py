"""The experiment library run whole: every experiment into one directory, an index."""

import json

import pytest

from conftest import SMALL
from fundamentals import library
from fundamentals import runner
from test_runner import TINY


def failing_check(context, results):
  return [runner.Check('a loss below zero', 'no', False)]


OTHER = runner.Experiment(name='other', description='The same, with a failing check.',
                          members=TINY.members, defaults=TINY.defaults,
                          settings=TINY.settings, summarize=TINY.summarize,
                          check=failing_check)


def overrides(tmp_path, data_dir):
  return {'dataset': SMALL, 'data_dir': data_dir, 'batch_size': 50, 'log_every': 3,
          'eval_every': 6, 'diagnostics_every': 0, 'checkpoint_every': 0,
          'workdir': str(tmp_path / 'all')}


def test_runs_every_experiment_into_one_directory_with_an_index(tmp_path, data_dir):
  lines = []
  work = library.plan_all({'tiny': TINY, 'other': OTHER}, overrides(tmp_path, data_dir),
                          settings={'tiny': {'lrs': (0.1,)}}, options=runner.Options(),
                          echo=lines.append)
  assert not (tmp_path / 'all').exists()  # Planned, nothing written yet.
  index = work()
  root = tmp_path / 'all'
  assert [r['experiment'] for r in index['experiments']] == ['tiny', 'other']
  assert [r['passed'] for r in index['experiments']] == [True, False]
  assert not index['passed']
  for name in ('tiny', 'other'):
    results = json.loads((root / name / 'results.json').read_text())
    row = next(r for r in index['experiments'] if r['experiment'] == name)
    assert row['checks'] == results['checks']
    assert (root / name / 'report.md').exists()
  assert json.loads((root / 'tiny' / 'sweep.json').read_text())['settings'] == {
      'lrs': [0.1]}
  text = (root / 'report.md').read_text()
  assert '1/2 experiments passed every check' in text
  assert '| [tiny](tiny/report.md) | every run completes | 1 of 1 | yes |' in text
  assert '| [other](other/report.md) | a loss below zero | no | **no** |' in text
  assert json.loads((root / library.INDEX).read_text()) == json.loads(json.dumps(index))
  assert any('=== [2/2] other: The same' in line for line in lines)
  # Re-running the same command finishes nothing twice.
  lines.clear()
  library.plan_all({'tiny': TINY, 'other': OTHER}, overrides(tmp_path, data_dir),
                   settings={'tiny': {'lrs': (0.1,)}}, options=runner.Options(),
                   echo=lines.append)()
  assert sum('finished earlier, skipped' in line for line in lines) == 4


def test_refuses_summarize_and_resume_and_checks_every_experiment_first(tmp_path,
                                                                        data_dir):
  with pytest.raises(ValueError, match='re-running the same command'):
    library.plan_all({'tiny': TINY}, overrides(tmp_path, data_dir), settings={},
                     options=runner.Options(summarize=True))
  with pytest.raises(ValueError, match='batch_size=1000 exceeds'):
    library.plan_all({'tiny': TINY, 'other': OTHER},
                     {**overrides(tmp_path, data_dir), 'batch_size': 1000}, settings={},
                     options=runner.Options())
  assert not (tmp_path / 'all').exists()


@pytest.mark.parametrize('occupy, message', [
    (lambda root: root.write_text('x'), 'exists and is not a directory'),
    (lambda root: root.mkdir() or (root / 'config.json').write_text('{}'),
     r'holds a run \(config\.json\); --experiment=all writes one folder per experiment'),
    (lambda root: root.mkdir() or (root / 'sweep.json').write_text('{}'),
     r'holds a sweep or experiment \(sweep\.json\)'),
], ids=['file', 'run', 'sweep'])
def test_a_root_that_holds_something_else_is_refused_and_left_alone(occupy, message,
                                                                   tmp_path, data_dir):
  root = tmp_path / 'all'
  occupy(root)
  before = sorted(root.rglob('*')) if root.is_dir() else root.read_text()
  with pytest.raises(FileExistsError, match=f'--workdir={root} {message}'):
    library.plan_all({'tiny': TINY}, overrides(tmp_path, data_dir), settings={},
                     options=runner.Options())
  assert (sorted(root.rglob('*')) if root.is_dir() else root.read_text()) == before


def test_every_experiment_declares_valid_configs_at_every_scale(tmp_path):
  import experiments  # pylint: disable=g-import-not-at-top
  from fundamentals import sweep  # pylint: disable=g-import-not-at-top
  for name, experiment in experiments.LIBRARY.items():
    assert experiment.description and '\n' not in experiment.description, name
    for scale in ['default', *experiment.scales]:
      assert scale in runner.SCALES, (name, scale)
      config = experiment.configure({'workdir': str(tmp_path / name)}, scale=scale)
      settings = experiment.default_settings(scale=scale)
      if name == 'lr_range_test':  # Its members need the range test run first.
        continue
      if experiment.members is not None:
        members = sweep.named(config, experiment.members(config, settings),
                              workdir=tmp_path / name)
        assert members, (name, scale)
    assert {'tiny', 'full'} <= set(experiment.scales), name  # --experiment=all at any.
    assert experiment.configure(scale='tiny') != experiment.configure(scale='full')
