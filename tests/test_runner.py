"""The shared runner: declared members through the sweep engine, resumable, sharded,
vectorized; defaults that explicit flags beat; a config.json that says what ran."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, SMALL
from fundamentals import rundir
from fundamentals import runner
from fundamentals import sweep
from fundamentals.config import Config, Knobs, knob
from test_train import Interrupted


@dataclasses.dataclass(frozen=True)
class Settings(Knobs):
  lrs: tuple[float, ...] = knob((0.05, 0.2, 0.4), 'Learning rates.', group='tiny')

  def validate(self):
    if not self.lrs:
      raise ValueError('tiny_lrs needs a value')


def members(config, settings):
  return {f'lr{lr:g}': {'lr': lr} for lr in settings.lrs}


def analyze(context, member, fit):
  return {'final_step': int(fit.state.step), 'lr': member.config.lr}


def summarize(context, results):
  rows = [[name, r.summary['final_train_loss']] for name, r in results.items()]
  return runner.Summary('Tiny', 'A table:\n\n' + '\n'.join(map(str, rows)),
                        values={'losses': {name: r.summary['final_train_loss']
                                           for name, r in results.items()}})


def check(context, results):
  done = [r.status == 'completed' for r in results.values()]
  return [runner.Check('every run completes', f'{sum(done)} of {len(done)}', all(done))]


TINY = runner.Experiment(name='tiny', description='Three learning rates.',
                         members=members, defaults={'hidden': (8,), 'steps': 6},
                         settings=Settings, settings_prefix='tiny_', analyze=analyze,
                         summarize=summarize, check=check, scales={
                             'tiny': runner.Scale(config={'steps': 3},
                                                  settings={'lrs': (0.1,)}),
                             'full': runner.Scale(config={'steps': 9, 'hidden': (16,)})})


def base(tmp_path, data_dir, **overrides):
  return TINY.configure({'dataset': SMALL, 'data_dir': data_dir, 'batch_size': 50,
                         'log_every': 3, 'eval_every': 6, 'diagnostics_every': 0,
                         'checkpoint_every': 0, 'workdir': str(tmp_path / 'tiny'),
                         **overrides})


def test_defaults_fill_only_what_is_not_given_and_config_json_is_what_ran(
    tmp_path, data_dir, small_dataset):
  assert TINY.configure().hidden == (8,) and TINY.configure().steps == 6
  config = base(tmp_path, data_dir, hidden=(256, 256), steps=3)  # Config's defaults.
  assert (config.hidden, config.steps, config.experiment) == ((256, 256), 3, 'tiny')
  results = runner.run(TINY, config, dataset=small_dataset, echo=lambda line: None)
  workdir = tmp_path / 'tiny'
  assert Config.from_json((workdir / 'config.json').read_text()) == config
  for m in results['members']:
    ran = Config.from_json((workdir / m['name'] / 'config.json').read_text())
    assert ran == dataclasses.replace(config, experiment='train', lr=m['settings']['lr'],
                                      workdir=str(workdir / m['name']))
    assert m['output'] == {'final_step': 3, 'lr': m['settings']['lr']}
  assert results['passed'] and results['finished'] == results['of'] == 3
  report = (workdir / 'report.md').read_text()
  assert report.startswith('# Tiny\n\n## Check: passed\n') and 'A table:' in report
  saved = json.loads((workdir / 'results.json').read_text())
  assert saved['values'] == results['values'] and saved['settings'] == {
      'lrs': [0.05, 0.2, 0.4]}


def test_an_experiment_killed_midway_finishes_without_redoing_finished_members(
    tmp_path, data_dir, small_dataset):
  config = base(tmp_path, data_dir)
  lines = []

  def killed(line):
    lines.append(line)
    if line.startswith('[2/3]'):
      raise Interrupted  # As kill -9 after the first member finished.

  with pytest.raises(Interrupted):
    runner.run(TINY, config, dataset=small_dataset, echo=killed)
  first = tmp_path / 'tiny' / 'lr0.05'
  done_before = (first / 'summary.json').read_text(), (first / 'analysis.json').read_text()
  assert not (tmp_path / 'tiny' / 'lr0.2').exists()
  lines.clear()
  results = runner.run(TINY, config, dataset=small_dataset, echo=lines.append)
  assert '[1/3] lr0.05: finished earlier, skipped' in lines
  assert [line for line in lines if line.startswith('[')] == [
      '[1/3] lr0.05: finished earlier, skipped', '[2/3] lr0.2', '[3/3] lr0.4']
  assert ((first / 'summary.json').read_text(),
          (first / 'analysis.json').read_text()) == done_before
  assert results['finished'] == 3 and (tmp_path / 'tiny' / 'report.md').exists()
  # A member whose analysis is missing (killed after training) is trained again.
  (tmp_path / 'tiny' / 'lr0.4' / 'analysis.json').unlink()
  lines.clear()
  runner.run(TINY, config, dataset=small_dataset, echo=lines.append)
  assert [line for line in lines if line.startswith('[')][-1] == '[3/3] lr0.4'


def test_shards_run_disjoint_members_and_the_last_writes_the_report(
    tmp_path, data_dir, small_dataset):
  config = base(tmp_path, data_dir)
  first = runner.run(TINY, config, dataset=small_dataset, shard=(0, 2), echo=lambda l: None)
  assert first['finished'] == 2 and 'checks' not in first
  assert not (tmp_path / 'tiny' / 'report.md').exists()
  assert json.loads((tmp_path / 'tiny' / 'results.json').read_text())['finished'] == 2
  second = runner.run(TINY, config, dataset=small_dataset, shard=(1, 2), echo=lambda l: None)
  assert second['finished'] == 3 and second['passed']
  assert (tmp_path / 'tiny' / 'report.md').exists()
  again = runner.summarize(TINY, tmp_path / 'tiny', echo=lambda l: None)
  assert again['values'] == second['values']


def test_vectorized_members_match_sequential_ones(tmp_path, data_dir, small_dataset):
  sequential = runner.run(TINY, base(tmp_path, data_dir), dataset=small_dataset,
                          echo=lambda l: None)
  lines = []
  together = runner.run(TINY, base(tmp_path, data_dir, workdir=str(tmp_path / 'v')),
                        dataset=small_dataset, vectorize=True, echo=lines.append)
  assert any('3 members together' in line for line in lines)
  for a, b in zip(sequential['values']['losses'].values(),
                  together['values']['losses'].values()):
    assert a == pytest.approx(b, rel=1e-4)
  summary = json.loads((tmp_path / 'v' / 'lr0.2' / 'summary.json').read_text())
  assert summary['vectorized_runs'] == 3


def test_everything_is_checked_before_anything_is_written(tmp_path, data_dir,
                                                          small_dataset):
  with pytest.raises(ValueError, match=r'1 invalid sweep member\(s\): lr-1: lr=-1.0'):
    runner.prepare(TINY, base(tmp_path, data_dir), settings=Settings(lrs=(0.1, -1.0)),
                   dataset=small_dataset)
  with pytest.raises(ValueError, match='batch_size=1000 exceeds'):
    runner.prepare(TINY, base(tmp_path, data_dir, batch_size=1000), dataset=small_dataset)
  with pytest.raises(ValueError, match='sweeps vary the train experiment'):
    runner.prepare(TINY, base(tmp_path, data_dir), axes={'seed': [0, 1]},
                   dataset=small_dataset)
  assert not (tmp_path / 'tiny').exists()
  (tmp_path / 'tiny').mkdir()
  (tmp_path / 'tiny' / 'config.json').write_text('{}')  # A plain run is there.
  with pytest.raises(FileExistsError, match='already holds a run'):
    runner.prepare(TINY, base(tmp_path, data_dir), dataset=small_dataset)


def test_summarize_says_what_the_directory_is_instead_of_a_sweep(tmp_path):
  with pytest.raises(FileNotFoundError, match='holds no sweep or experiment: it does not '
                                              'exist'):
    runner.check_summarizable(tmp_path / 'nowhere')
  (tmp_path / 'file').write_text('x')
  with pytest.raises(NotADirectoryError, match='holds no sweep or experiment: it is a file'):
    runner.check_summarizable(tmp_path / 'file')
  member = tmp_path / 'sweep' / 'seed-0'
  member.mkdir(parents=True)
  (member / 'config.json').write_text('{}')
  with pytest.raises(ValueError, match='holds a single run, not a sweep or experiment: its '
                                       r'results are its summary\.json and report\.md$'):
    runner.check_summarizable(member)
  (tmp_path / 'sweep' / 'sweep.json').write_text('{}')
  with pytest.raises(ValueError, match=f'it is a member of the sweep in {tmp_path}/sweep: '
                                       f'--summarize --workdir={tmp_path}/sweep$'):
    runner.check_summarizable(member)
  runner.check_summarizable(tmp_path / 'sweep')  # sweep.read_manifest reads it next.


def test_members_whose_batch_does_not_split_over_the_devices_are_refused_at_planning(
    tmp_path, data_dir, small_dataset, monkeypatch):
  from fundamentals import runtime  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(runtime.jax, 'device_count', lambda: 4)
  with pytest.raises(ValueError, match='batch_size=50 must be a multiple of the 4 devices'):
    runner.prepare(TINY, base(tmp_path, data_dir), dataset=small_dataset)
  runner.prepare(TINY, base(tmp_path, data_dir, data_parallel=False), dataset=small_dataset)
  assert not (tmp_path / 'tiny').exists()


def test_manifest_records_the_experiment_and_refuses_another(tmp_path, data_dir,
                                                             small_dataset):
  config = base(tmp_path, data_dir, steps=3)
  runner.run(TINY, config, dataset=small_dataset, settings=Settings(lrs=(0.1,)),
             echo=lambda l: None)
  manifest = sweep.read_manifest(tmp_path / 'tiny')
  assert manifest['experiment'] == 'tiny' and manifest['settings'] == {'lrs': [0.1]}
  with pytest.raises(FileExistsError, match='different sweep'):
    runner.prepare(TINY, config, settings=Settings(lrs=(0.2,)), dataset=small_dataset)
  with pytest.raises(FileExistsError, match='different sweep'):
    runner.prepare(TINY, dataclasses.replace(config, seed=1),
                   settings=Settings(lrs=(0.1,)), dataset=small_dataset)


@pytest.mark.slow
def test_a_lesson_killed_with_sigkill_resumes_its_unfinished_members(tmp_path, data_dir):
  """launch.py as a user runs it: kill -9 once the first member finished, re-run."""
  from test_launch import CACHE, launch  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'aug'
  args = ['--experiment=augmentation', f'--dataset={SMALL}', f'--data_dir={data_dir}',
          '--hidden=8', '--steps=600', '--batch_size=50', '--log_every=100',
          '--eval_every=600', '--diagnostics_every=0', '--checkpoint_every=100',
          f'--workdir={workdir}']
  process = subprocess.Popen([sys.executable, str(REPO / 'launch.py'), *args], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=dict(os.environ, FUNDAMENTALS_CACHE=CACHE))
  deadline = time.time() + 180
  while (not list(workdir.glob('augmented/checkpoint/*.json'))
         and time.time() < deadline and process.poll() is None):
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert (workdir / 'none' / 'summary.json').exists()  # The first member finished,
  assert not (workdir / 'augmented' / 'summary.json').exists()  # the second did not.
  before = (workdir / 'none' / 'summary.json').read_text()
  resumed = launch(*args)
  assert resumed.returncode == 0, resumed.stderr
  assert '[1/2] none: finished earlier, skipped' in resumed.stdout
  assert 'resumed from the checkpoint at step' in resumed.stdout
  assert (workdir / 'none' / 'summary.json').read_text() == before
  results = json.loads((workdir / 'results.json').read_text())
  assert results['finished'] == 2 and len(results['checks']) == 1
  assert rundir.read_jsonl(workdir / 'augmented' / 'metrics.jsonl')[-1]['step'] == 600


def test_a_scale_replaces_defaults_and_explicit_values_win_over_it(tmp_path, data_dir,
                                                                   small_dataset):
  assert TINY.configure(scale='full').steps == 9 and TINY.configure().steps == 6
  assert TINY.configure({'steps': 4}, scale='full').steps == 4  # Explicit wins.
  assert TINY.configure(scale='full').hidden == (16,)
  assert TINY.default_settings(scale='tiny').lrs == (0.1,)
  assert TINY.default_settings({'lrs': (0.3,)}, scale='tiny').lrs == (0.3,)
  assert TINY.default_settings().lrs == (0.05, 0.2, 0.4)
  with pytest.raises(ValueError, match='--experiment=tiny has the scales default, full, tiny'):
    TINY.configure(scale='huge')
  other = runner.Experiment(name='plain', description='No scales.')
  with pytest.raises(ValueError, match='has the scales default$'):
    other.configure(scale='full')
  with pytest.raises(ValueError, match='--scale=huge: must be one of tiny, default, full'):
    runner.Options(scale='huge')
  # The scale is recorded, named in the report, and a directory of another scale refused.
  config = dataclasses.replace(TINY.configure(base(tmp_path, data_dir).to_dict()
                                              | {'steps': 3}, scale='tiny'))
  results = runner.run(TINY, config, settings=TINY.default_settings(scale='tiny'),
                       dataset=small_dataset, scale='tiny', echo=lambda l: None)
  assert results['scale'] == 'tiny' and [m['name'] for m in results['members']] == ['lr0.1']
  report = (tmp_path / 'tiny' / 'report.md').read_text()
  assert 'Scale: tiny.' in report and '--experiment=tiny --scale=tiny`' in report
  with pytest.raises(FileExistsError, match='holds a different sweep'):
    runner.prepare(TINY, config, settings=TINY.default_settings(scale='tiny'),
                   dataset=small_dataset, scale='default')


def test_plan_builds_settings_from_the_scale_under_explicit_ones(tmp_path, data_dir,
                                                                 small_dataset):
  overrides = {k: v for k, v in base(tmp_path, data_dir).to_dict().items()
               if k in ('dataset', 'data_dir', 'batch_size', 'log_every', 'eval_every',
                        'diagnostics_every', 'checkpoint_every', 'workdir')}
  work = runner.plan(TINY, overrides, settings={'lrs': (0.2,)},
                     options=runner.Options(scale='tiny'), echo=lambda l: None)
  results = work()
  assert [m['name'] for m in results['members']] == ['lr0.2']
  assert results['config']['steps'] == 3 and results['settings'] == {'lrs': (0.2,)}
  with pytest.raises(ValueError, match='--lr=auto takes one value'):
    runner.plan(TINY, {**overrides, 'lr': 'auto'}, axes={'lr': ['auto', 0.1]})


def test_a_results_diagnostics_series_is_its_init_then_every_diagnostic_record(tmp_path):
  workdir = tmp_path / 'member'
  workdir.mkdir()
  config = Config(workdir=str(workdir))
  result = runner.Result('member', {}, config, summary=None, output=None)
  assert result.init_diagnostics is None and result.diagnostics_series == []
  rundir.write_json(workdir / 'diagnostics.json', {
      'init': {'step': 1, 'scalars': {'grad_norm': 1.0}},
      'end': {'step': 20, 'scalars': {'grad_norm': 3.0}}})
  rundir.write_jsonl(workdir / 'metrics.jsonl', [
      {'step': 10, 'train_loss': 2.0, 'diagnostics': {'grad_norm': 2.0}},
      {'step': 15, 'train_loss': 1.5},
      {'step': 20, 'train_loss': 1.0, 'diagnostics': {'grad_norm': 3.0}}])
  fresh = runner.Result('member', {}, config, summary=None, output=None)
  assert fresh.init_diagnostics == {'grad_norm': 1.0}
  assert fresh.diagnostics_series == [(0, {'grad_norm': 1.0}), (10, {'grad_norm': 2.0}),
                                      (20, {'grad_norm': 3.0})]


def test_a_config_file_is_the_base_and_explicit_flags_win(tmp_path, data_dir):
  """--config=runs/X/config.json: its values replace the defaults, given flags win,
  and the run gets a new directory (the file's workdir and experiment are not taken)."""
  from experiments import train as train_experiment  # pylint: disable=g-import-not-at-top
  ran = Config(dataset=SMALL, data_dir=data_dir, hidden=(24, 8), lr=0.02, steps=7,
               seed=3, workdir=str(tmp_path / 'old'), experiment='batchnorm')
  path = tmp_path / 'config.json'
  path.write_text(ran.to_json())
  base = runner.config_file_overrides(path)
  assert 'workdir' not in base and 'experiment' not in base
  assert runner.config_file_overrides(tmp_path) == base  # A run directory works too.
  work = runner.plan(train_experiment.EXPERIMENT,
                     {'seed': 4, 'workdir': str(tmp_path / 'new')},
                     options=runner.Options(config=str(path)))
  summary = work()
  rerun = Config.from_json((tmp_path / 'new' / 'config.json').read_text())
  assert rerun == dataclasses.replace(ran, seed=4, workdir=str(tmp_path / 'new'),
                                      experiment='train')
  assert summary['steps'] == 7
  for bad, message in ((tmp_path / 'none.json', 'no such file'),
                       (tmp_path / 'bad.json', 'not a readable config')):
    if bad.name == 'bad.json':
      bad.write_text('{"hidden": [8], "lr": -1}')
    with pytest.raises((FileNotFoundError, ValueError), match=message):
      runner.plan(train_experiment.EXPERIMENT, {}, options=runner.Options(config=str(bad)))
