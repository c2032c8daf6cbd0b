import csv
import dataclasses
import json
import re

import pytest

from experiments import train as train_experiment
from fundamentals import plots
from fundamentals import report
from fundamentals import rundir
from fundamentals import runner
from fundamentals import sweep
from fundamentals import train
from fundamentals.config import Config

BASE = Config(dataset='synthetic_fruits/small', hidden=(8,), steps=5, batch_size=20)
TRAIN = train_experiment.EXPERIMENT


def fake_member(calls, fail_on=None, resumes=None):
  """Stands in for training one member: records the call, writes a summary as
  train.train does."""
  resumes = [] if resumes is None else resumes
  def run(member, *, overwrite=False, resume=False):
    config = member.config if isinstance(member, sweep.Member) else member
    calls.append(config)
    resumes.append(resume)
    workdir = rundir.create(config.workdir, overwrite=overwrite)
    status = 'diverged' if config.lr == fail_on else 'completed'
    summary = {'status': status, 'initial_loss': 3.4, 'wall_time_s': 1.0,
               'diverged_at_step': 3 if status == 'diverged' else None}
    if status == 'completed':
      summary.update(final_train_loss=1.0, final_train_accuracy=0.5 + config.seed / 10,
                     final_test_loss=2.0, final_test_accuracy=0.3 + config.seed / 10)
    rundir.write_json(workdir / 'summary.json', summary)
    return summary
  return run


def run_sweep(base, axes, *, workdir, run_member, **kwargs):
  """A grid through the sweep engine as the runner drives it, with fake members;
  returns the results rows (results.csv's) once every member finished."""
  members = sweep.expand(base, axes, workdir=workdir)
  sweep.run(members, workdir=workdir, manifest=sweep.manifest(base, members, axes=axes),
            run_member=run_member, **kwargs)
  return runner.summarize(TRAIN, workdir, echo=print).get('values', {}).get('rows')


def test_grid_is_the_cartesian_product_named_by_what_varies(tmp_path):
  axes = sweep.parse_axes({'init': ['normal', 'kaiming'], 'activation': ['tanh', 'relu', 'identity'],
                           'batchnorm': ['false', 'true'], 'lr': ['0.1']})
  members = sweep.expand(BASE, axes, workdir=tmp_path)
  assert len(members) == 12
  assert members[0].name == 'init-normal__activation-tanh__batchnorm-false'
  assert len({m.name for m in members}) == 12
  assert all(m.config.lr == 0.1 and m.config.steps == 5 for m in members)
  assert {(m.config.init, m.config.activation, m.config.batchnorm) for m in members} == {
      (i, a, b) for i in ('normal', 'kaiming') for a in ('tanh', 'relu', 'identity')
      for b in (False, True)}
  assert members[3].config.workdir == str(tmp_path / members[3].name)


def test_invalid_combinations_are_all_reported_before_anything_runs(tmp_path):
  axes = sweep.parse_axes({'warmup_steps': ['0', '10'], 'steps': ['5', '20']})
  with pytest.raises(ValueError, match='1 invalid sweep member') as info:
    runner.prepare(TRAIN, dataclasses.replace(BASE, workdir=str(tmp_path / 'never')),
                   axes=axes)
  assert 'warmup_steps-10__steps-5' in str(info.value)
  assert not (tmp_path / 'never').exists()
  with pytest.raises(ValueError, match="'hidden' cannot be swept"):
    sweep.parse_axes({'hidden': ['8']})
  with pytest.raises(ValueError, match='--lr=fast: must be a number'):
    sweep.parse_axes({'lr': ['0.1', 'fast']})
  with pytest.raises(ValueError, match='--lr=0.1,0.1 repeats a value'):
    sweep.parse_axes({'lr': ['0.1', '0.1']})


def test_shards_are_disjoint_and_cover_the_sweep(tmp_path):
  members = sweep.expand(BASE, sweep.parse_axes({'seed': list('0123456')}), workdir=tmp_path)
  shards = [sweep.shard(members, k, 3) for k in range(3)]
  names = [m.name for s in shards for m in s]
  assert sorted(names) == sorted(m.name for m in members) and len(set(names)) == 7
  assert sweep.parse_shard('2/3') == (2, 3)
  for bad in ('3/3', 'x', '1'):
    with pytest.raises(ValueError, match='sweep_shard'):
      sweep.parse_shard(bad)


def test_rerun_skips_finished_members_and_restarts_interrupted_ones(tmp_path):
  axes = sweep.parse_axes({'seed': ['0', '1', '2']})
  calls = []
  run_sweep(BASE, axes, workdir=tmp_path, run_member=fake_member(calls), echo=print)
  assert len(calls) == 3
  before = (tmp_path / 'seed-0' / 'summary.json').read_text()
  # seed-1 was killed mid-run: its directory exists but holds no summary.
  (tmp_path / 'seed-1' / 'summary.json').unlink()
  calls.clear()
  resumes = []
  rows = run_sweep(BASE, axes, workdir=tmp_path,
                   run_member=fake_member(calls, resumes=resumes), echo=print)
  assert [c.seed for c in calls] == [1]
  assert resumes == [True]  # From its checkpoint, when it saved one.
  assert (tmp_path / 'seed-0' / 'summary.json').read_text() == before
  assert [r['status'] for r in rows] == ['completed'] * 3
  run_sweep(BASE, axes, workdir=tmp_path, run_member=fake_member(calls, resumes=resumes),
            overwrite=True, echo=print)
  assert resumes[1:] == [False] * 3  # Redone from scratch: no stale checkpoint.


def test_a_sweep_written_before_a_config_field_existed_still_resumes(tmp_path):
  axes = sweep.parse_axes({'seed': ['0', '1']})
  run_sweep(BASE, axes, workdir=tmp_path, run_member=fake_member([]), echo=print)
  manifest = json.loads((tmp_path / 'sweep.json').read_text())
  del manifest['base']['data_parallel']  # As an older version wrote it,
  del manifest['experiment'], manifest['settings']  # before experiments ran as sweeps.
  (tmp_path / 'sweep.json').write_text(json.dumps(manifest))
  calls = []
  run_sweep(BASE, axes, workdir=tmp_path, run_member=fake_member(calls), echo=print)
  assert calls == []


def test_a_different_sweep_in_the_same_directory_is_refused(tmp_path):
  run_sweep(BASE, sweep.parse_axes({'seed': ['0', '1']}), workdir=tmp_path,
            run_member=fake_member([]), echo=print)
  with pytest.raises(FileExistsError, match='different sweep'):
    run_sweep(BASE, sweep.parse_axes({'seed': ['0', '2']}), workdir=tmp_path,
              run_member=fake_member([]), echo=print)


def test_a_moved_sweep_is_the_same_sweep(tmp_path):
  axes = sweep.parse_axes({'seed': ['0', '1']})
  run_sweep(BASE, axes, workdir=tmp_path / 'a', run_member=fake_member([]), echo=print)
  (tmp_path / 'a').rename(tmp_path / 'b')
  calls = []
  run_sweep(BASE, axes, workdir=tmp_path / 'b', run_member=fake_member(calls), echo=print)
  assert calls == []


def test_results_aggregate_over_seeds_and_record_divergence(tmp_path):
  axes = sweep.parse_axes({'lr': ['0.1', '0.5'], 'seed': ['0', '1', '2']})
  rows = run_sweep(BASE, axes, workdir=tmp_path, run_member=fake_member([], fail_on=0.5),
                   echo=print)
  assert [r['status'] for r in rows] == ['completed'] * 3 + ['diverged'] * 3
  with open(tmp_path / 'results.csv') as f:
    table = list(csv.DictReader(f))
  assert len(table) == 6 and table[3]['diverged_at_step'] == '3'
  groups = report.aggregate(rows, ['lr', 'seed'])
  ok = next(g for g in groups if g['lr'] == 0.1)
  mean, std = ok['final_test_accuracy']
  assert mean == pytest.approx(0.4) and std == pytest.approx(0.1)
  assert next(g for g in groups if g['lr'] == 0.5)['diverged'] == 3
  markdown = (tmp_path / 'results.md').read_text()
  assert '40.00% ± 10.00%' in markdown and 'diverged @ 3' in markdown
  manifest = json.loads((tmp_path / 'sweep.json').read_text())
  assert manifest['axes'] == {'lr': [0.1, 0.5], 'seed': [0, 1, 2]}
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['finished'] == results['of'] == 6
  assert [m['status'] for m in results['members']] == ['completed'] * 3 + ['diverged'] * 3


def test_summarize_collects_the_shards_of_other_jobs(tmp_path):
  axes = sweep.parse_axes({'seed': ['0', '1', '2', '3']})
  first = run_sweep(BASE, axes, workdir=tmp_path, run_member=fake_member([]),
                    shard_spec=(0, 2), echo=print)
  assert first is None  # Half of the members: no report yet.
  assert json.loads((tmp_path / 'results.json').read_text())['finished'] == 2
  run_sweep(BASE, axes, workdir=tmp_path, run_member=fake_member([]), shard_spec=(1, 2),
            echo=print)
  rows = runner.summarize(TRAIN, tmp_path, echo=print)['values']['rows']
  assert [r['status'] for r in rows] == ['completed'] * 4


def test_heatmaps_put_init_by_activation_with_a_panel_per_other_setting():
  assert plots.heatmap_axes(['seed', 'activation', 'batchnorm', 'init']) == (
      'init', 'activation', ['batchnorm'])
  assert plots.heatmap_axes(['lr', 'seed']) == ('lr', None, [])
  assert plots.heatmap_axes(['seed']) is None


def test_a_real_sweep_through_launch_writes_results_and_figures_and_resumes(tmp_path, data_dir):
  from test_launch import launch  # pylint: disable=g-import-not-at-top
  args = ['--dataset=synthetic_fruits/small', f'--data_dir={data_dir}', '--hidden=8',
          '--steps=6', '--batch_size=50', '--log_every=3', '--eval_every=6',
          '--diagnostics_every=0', '--init=normal,kaiming', '--activation=tanh,relu',
          '--batchnorm=false,true', '--lr=0.1,100000', '--momentum=0',
          f'--workdir={tmp_path}']
  first = launch(*args, '--sweep_shard=0/2')
  assert first.returncode == 0, first.stderr
  assert 'sweep: 16 runs varying' in first.stdout
  for axis in ('init (2: normal,kaiming)', 'activation (2: tanh,relu)', 'batchnorm (2: false,true)'):
    assert axis in first.stdout
  assert 'this job runs 8' in first.stdout
  second = launch(*args)  # Its lr=1e5 relu members diverge: exit status 3, named.
  assert second.returncode == 3, second.stderr
  assert re.match(r'launch\.py: \d+ of 16 runs diverged: ',
                  second.stderr.strip().splitlines()[-1]), second.stderr
  assert second.stdout.count('finished earlier, skipped') == 8
  with open(tmp_path / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 16 and all(r['status'] in ('completed', 'diverged') for r in rows)
  assert any(r['status'] == 'diverged' for r in rows if r['lr'] == '100000.0')
  for name in ('heatmap_test_accuracy.png', 'heatmap_initial_loss.png', 'loss_curves.png'):
    assert (tmp_path / name).stat().st_size > 5000
  assert '![heatmap_test_accuracy.png](heatmap_test_accuracy.png)' in (
      tmp_path / 'results.md').read_text()
  summarized = launch('--summarize', f'--workdir={tmp_path}')
  assert summarized.returncode == 0 and '16/16 members finished' in summarized.stdout


def test_members_of_one_structure_run_together_when_grouped(tmp_path):
  axes = sweep.parse_axes({'activation': ['tanh', 'relu'], 'seed': ['0', '1', '2']})
  singles, groups = [], []

  def run_group(batch, *, overwrite=False, resume=False):
    groups.append([m.config.seed for m in batch])
    return [fake_member([])(m, overwrite=overwrite, resume=resume) for m in batch]

  # seed-2 of tanh finished earlier: it is not run again, the rest of its group is.
  first = sweep.expand(BASE, axes, workdir=tmp_path)[2]
  assert first.name == 'activation-tanh__seed-2'
  fake_member([])(first, resume=True)
  rows = run_sweep(BASE, axes, workdir=tmp_path, run_member=fake_member(singles),
                   run_group=run_group, group_key=lambda c: c.activation, echo=print)
  assert groups == [[0, 1], [0, 1, 2]] and not singles
  assert [r['status'] for r in rows] == ['completed'] * 6
  assert [[m.name for m in g] for g in sweep.group(
      sweep.expand(BASE, axes, workdir=tmp_path), lambda c: c.seed)][0] == [
          'activation-tanh__seed-0', 'activation-relu__seed-0']


@pytest.mark.slow
def test_a_vectorized_sweep_through_launch_trains_each_structure_once(tmp_path, data_dir):
  from test_launch import launch  # pylint: disable=g-import-not-at-top
  result = launch('--dataset=synthetic_fruits/small', f'--data_dir={data_dir}',
                  '--hidden=8', '--steps=6', '--batch_size=50', '--log_every=3',
                  '--eval_every=6', '--diagnostics_every=0', '--vectorize',
                  '--activation=tanh,relu', '--seed=0,1', '--lr=0.1,0.2',
                  f'--workdir={tmp_path}')
  assert result.returncode == 0, result.stderr
  assert result.stdout.count('4 members together') == 2
  with open(tmp_path / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 8 and all(r['status'] == 'completed' for r in rows)
  summary = json.loads((tmp_path / rows[0]['member'] / 'summary.json').read_text())
  assert summary['vectorized_runs'] == 4


def test_heatmap_cells_say_what_they_hold():
  rows = [dict(init=i, activation=a, seed=s, member=f'{i}-{a}-{s}',
               status='diverged' if (i, a) == ('normal', 'relu') else 'completed',
               final_test_accuracy=None if (i, a) == ('normal', 'relu') else 0.5 + s / 10)
          for i in ('normal', 'kaiming') for a in ('tanh', 'relu') for s in (0, 1)]
  groups = report.aggregate(rows, ['init', 'activation', 'seed'])
  fig = plots.sweep_heatmap_figure(groups, metric='final_test_accuracy', row='init',
                                   column='activation', panel_keys=[], fmt='{:.0%}')
  texts = sorted(t.get_text() for t in fig.axes[0].texts)
  assert texts == ['55%', '55%', '55%', 'diverged']


def test_a_member_stopped_by_a_signal_is_resumed_not_skipped(tmp_path):
  axes = sweep.parse_axes({'seed': ['0', '1']})
  run_sweep(BASE, axes, workdir=tmp_path, run_member=fake_member([]), echo=print)
  # SIGTERM: its checkpoint and a summary that says so (train.fit_group).
  rundir.write_json(tmp_path / 'seed-1' / 'summary.json',
                    {'status': 'interrupted', 'steps': 3})
  members = sweep.expand(BASE, axes, workdir=tmp_path)
  assert [sweep.is_finished(m) for m in members] == [True, False]
  calls, resumes, lines = [], [], []
  run_sweep(BASE, axes, workdir=tmp_path, run_member=fake_member(calls, resumes=resumes),
            echo=lines.append)
  assert [c.seed for c in calls] == [1] and resumes == [True]
  assert lines == ['[1/2] seed-0: finished earlier, skipped', '[2/2] seed-1']


def test_members_run_in_their_own_taken_directory_and_files_are_checked_first(tmp_path):
  axes = sweep.parse_axes({'seed': ['0', '1']})
  held = []

  def run_member(member, **kwargs):
    held.append(rundir.holds(member.config.workdir))
    summary = fake_member([])(member, **kwargs)  # Claims it too (rundir.create), and
    rundir.release(member.config.workdir)  # gives that back at its end, as a run does.
    return summary

  run_sweep(BASE, axes, workdir=tmp_path / 'a', run_member=run_member, echo=print)
  assert held == [True, True]  # Taken while they ran, given back after.
  assert not rundir.holds(tmp_path / 'a' / 'seed-0')
  assert not rundir.holds(tmp_path / 'a')  # The sweep's own: shared by its shards.
  (tmp_path / 'b').mkdir()
  (tmp_path / 'b' / 'seed-1').write_text('not a folder')
  members = sweep.expand(BASE, axes, workdir=tmp_path / 'b')
  with pytest.raises(FileExistsError, match=r'b/seed-1, the folder of the member seed-1 '
                     r'of --workdir=.*, is a file'):
    sweep.check_manifest(tmp_path / 'b', sweep.manifest(BASE, members, axes=axes),
                         overwrite=True)


def test_a_signal_during_a_member_starts_no_other(tmp_path, monkeypatch):
  axes = sweep.parse_axes({'seed': ['0', '1', '2']})
  calls = []
  record = fake_member(calls)

  def run_member(member, **kwargs):  # SIGTERM while the first member runs.
    record(member, **kwargs)
    rundir.release(member.config.workdir)
    monkeypatch.setattr(train, 'stop_requested', lambda: 'SIGTERM')

  with pytest.raises(train.Stopped, match='interrupted by SIGTERM before .*seed-1 started'):
    run_sweep(BASE, axes, workdir=tmp_path, run_member=run_member, echo=print)
  assert [c.seed for c in calls] == [0]
  assert not (tmp_path / 'seed-1').exists()
