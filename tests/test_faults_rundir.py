"""Faults in run and sweep directories: two writers, a race to create one, folders that
cannot be written, a full disk, damaged files, a sweep moved elsewhere."""

import contextlib
import dataclasses
import errno
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading

import pytest

from conftest import REPO, SMALL
from test_launch import launch_here
from test_sweep import BASE, fake_member, run_sweep
from test_train import copy_of, stopped_run
from experiments import train as train_experiment
from fundamentals import rundir
from fundamentals import runner
from fundamentals import sweep
from fundamentals import train
from fundamentals.config import Config

pytestmark = pytest.mark.faults

FLAGS = dict(dataset=SMALL, hidden=(8,), steps=8, batch_size=50, log_every=2,
             eval_every=8, diagnostics_every=0, checkpoint_every=4)
QUIET = lambda line: None


@pytest.fixture(scope='module')
def interrupted(tmp_path_factory, data_dir, small_dataset) -> Config:
  """A run stopped after its checkpoint at step 4, as by kill -9: --resume goes on."""
  workdir = tmp_path_factory.mktemp('interrupted') / 'run'
  return stopped_run(Config(workdir=str(workdir), data_dir=data_dir, **FLAGS),
                     small_dataset, at=6)


def contents(root: pathlib.Path) -> dict[str, bytes | None]:
  """Every file's bytes (None for a folder) under ``root`` but the lock file's."""
  return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
          for p in sorted(root.rglob('*')) if p.name != rundir.LOCK}


@contextlib.contextmanager
def held_by_another_process(path: pathlib.Path):
  """A process that took ``path`` (``rundir.claim``) and holds it until the block ends."""
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys; from fundamentals import rundir; '
       'rundir.claim(sys.argv[1]); print("held", flush=True); sys.stdin.read()', str(path)],
      cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline() == 'held\n'
    yield holder.pid
  finally:
    holder.stdin.close()
    holder.wait(timeout=30)


def one_line(result) -> str:
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1, result.stderr
  return lines[0]


def test_a_second_writer_is_refused_naming_the_holder_until_it_ends(
    interrupted, tmp_path, data_dir, small_dataset):
  config = copy_of(interrupted, tmp_path / 'run')
  workdir = pathlib.Path(config.workdir)
  before = contents(workdir)
  with held_by_another_process(workdir) as pid:
    refusal = f'--workdir={workdir} is in use by process {pid} (-c {workdir}); wait for it'
    with pytest.raises(FileExistsError) as info:  # --resume, at the lock.
      train.fit(config, dataset=small_dataset, resume=True, echo=QUIET)
    assert str(info.value).startswith(refusal)
    fresh = launch_here(f'--dataset={SMALL}', f'--data_dir={data_dir}', '--hidden=8',
                        '--steps=8', '--batch_size=50', f'--workdir={workdir}',
                        '--overwrite')  # Refused when planning, before any work.
    assert one_line(fresh).startswith(f'launch.py: error: {refusal}')
    assert contents(workdir) == before  # metrics.jsonl not cut back, nothing added.
  resumed = train.fit(config, dataset=small_dataset, resume=True, echo=QUIET).summary
  assert resumed['status'] == 'completed' and resumed['resumed_from_step'] == 4


RACER = '''import pathlib, sys, time
from fundamentals import rundir
from fundamentals.config import Config
print('ready', flush=True)
while not pathlib.Path(sys.argv[2]).exists():
  time.sleep(0.001)
try:
  rundir.start(Config(workdir=sys.argv[1], seed=int(sys.argv[3])))
  print('won', flush=True)
except FileExistsError as e:
  print('refused:', e, flush=True)
sys.stdin.read()
'''


def test_of_runs_started_into_one_new_directory_at_once_exactly_one_gets_it(tmp_path):
  workdir, go = tmp_path / 'run', tmp_path / 'go'
  racers = [subprocess.Popen([sys.executable, '-c', RACER, str(workdir), str(go), str(i)],
                             cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True) for i in range(4)]
  try:
    assert [r.stdout.readline() for r in racers] == ['ready\n'] * 4
    go.touch()
    outcomes = [r.stdout.readline().rstrip('\n') for r in racers]
  finally:
    for r in racers:
      r.stdin.close()
      r.wait(timeout=30)
  winners = [i for i, line in enumerate(outcomes) if line == 'won']
  assert len(winners) == 1, outcomes
  assert json.loads((workdir / 'config.json').read_text())['seed'] == winners[0]
  for line in outcomes:  # The holder named, or (after it wrote) its run.
    assert line == 'won' or (line.startswith(f'refused: --workdir={workdir} ') and (
        'is in use by process' in line or 'already holds a run' in line)), line
  # Threads of one process, which share its claims: one too.
  threads_dir, barrier, won, refused = tmp_path / 'threads', threading.Barrier(4), [], []

  def start(seed):
    barrier.wait()
    try:
      won.append(rundir.start(Config(workdir=str(threads_dir), seed=seed)))
    except FileExistsError as e:
      refused.append(str(e))

  threads = [threading.Thread(target=start, args=(i,)) for i in range(4)]
  for t in (*threads,):
    t.start()
  for t in threads:
    t.join()
  assert len(won) == 1 and len(refused) == 3
  assert all('already holds a run' in message for message in refused)
  rundir.release(threads_dir)


@contextlib.contextmanager
def mounted_tmpfs(path: pathlib.Path, options: str):
  """A tmpfs at ``path`` (root only, where mounts are allowed), else the test skips."""
  path.mkdir()
  if os.geteuid() != 0 or subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)],
      capture_output=True, check=False).returncode:
    pytest.skip('mounting a tmpfs needs root')
  try:
    yield path
  finally:
    subprocess.run(['umount', str(path)], check=True)


@pytest.mark.parametrize('how', ['chmod', 'read-only mount'])
def test_a_workdir_that_cannot_be_written_is_refused_before_any_work(tmp_path, data_dir,
                                                                      how):
  folder = tmp_path / 'folder'
  with contextlib.ExitStack() as stack:
    if how == 'chmod':
      if os.geteuid() == 0:
        pytest.skip('root writes into read-only folders')
      folder.mkdir()
      folder.chmod(0o555)
      stack.callback(folder.chmod, 0o755)
      why = 'is not writable (EACCES: Permission denied)'
    else:
      stack.enter_context(mounted_tmpfs(folder, 'ro,size=1m'))
      why = 'is on a read-only file system (EROFS: Read-only file system)'
    for workdir, extra in ((folder, []), (folder / 'new' / 'run', []),
                           (folder / 'sweep', ['--seed=0,1'])):
      result = launch_here(f'--dataset={SMALL}', f'--data_dir={data_dir}', '--hidden=8',
                           '--steps=8', *extra, f'--workdir={workdir}')
      assert one_line(result) == (f'launch.py: error: --workdir={workdir} cannot be '
                                  f'written: {folder} {why}; choose another --workdir')
    assert list(folder.iterdir()) == []


def test_a_full_disk_leaves_the_files_whole_and_names_them(tmp_path):
  disk = tmp_path / 'disk'
  with mounted_tmpfs(disk, 'size=64k'):
    metrics, summary = disk / 'metrics.jsonl', disk / 'summary.json'
    rundir.append_jsonl(metrics, {'step': 1})
    rundir.write_json(summary, {'status': 'completed'})
    with contextlib.suppress(OSError):  # Fill it.
      with open(disk / 'filler', 'wb') as f:
        while True:
          f.write(b'\0' * 4096)
          f.flush()
    before = metrics.read_bytes(), summary.read_bytes()
    for write, path in ((lambda: rundir.append_jsonl(metrics, {'step': 2, 'x': 'y' * 9000}),
                         metrics),
                        (lambda: rundir.write_json(summary, {'x': 'y' * 9000}), summary)):
      with pytest.raises(OSError) as info:
        write()
      assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert (metrics.read_bytes(), summary.read_bytes()) == before
    assert sorted(p.name for p in disk.iterdir()) == ['filler', 'metrics.jsonl',
                                                      'summary.json']  # No temporary.
    assert rundir.read_jsonl(metrics) == [{'step': 1}]


def test_a_damaged_metrics_line_is_named_and_the_file_kept(interrupted, tmp_path,
                                                           small_dataset):
  config = copy_of(interrupted, tmp_path / 'run')
  metrics = pathlib.Path(config.workdir) / 'metrics.jsonl'
  lines = metrics.read_bytes().split(b'\n')
  damaged = b'\n'.join([lines[0][:10], *lines[1:]])
  metrics.write_bytes(damaged)
  with pytest.raises(ValueError, match=rf'^{metrics}: line 1 is not JSON \(.*\); '
                     r'restore the file from a copy, or start the run afresh'):
    train.fit(config, dataset=small_dataset, resume=True, echo=QUIET)
  assert metrics.read_bytes() == damaged


@pytest.mark.parametrize('damage', [
    lambda text: text[:len(text) // 2],  # Cut short.
    lambda text: '[]',
    lambda text: json.dumps({**json.loads(text), 'members': 'seed-0'}),
    lambda text: '\udcff\udcfe',  # Not text.
])
def test_a_damaged_sweep_json_is_named_in_one_line(tmp_path, damage):
  axes = sweep.parse_axes({'seed': ['0', '1']})
  run_sweep(BASE, axes, workdir=tmp_path, run_member=fake_member([]), echo=QUIET)
  path = tmp_path / sweep.MANIFEST
  path.write_bytes(damage(path.read_text()).encode('utf-8', 'surrogateescape'))
  before = contents(tmp_path)
  members = sweep.expand(BASE, axes, workdir=tmp_path)
  with pytest.raises(ValueError, match=rf'^{path} is damaged \(.+\); restore it from a '
                     'copy, or pass --overwrite to run the whole sweep again$'):
    sweep.check_manifest(tmp_path, sweep.manifest(BASE, members, axes=axes),
                         overwrite=False)
  for args in (['--summarize'], [f'--dataset={SMALL}', '--hidden=8', '--steps=5',
                                 '--batch_size=20', '--seed=0,1']):
    line = one_line(launch_here(*args, f'--workdir={tmp_path}'))
    assert line.startswith(f'launch.py: error: {path} is damaged ('), line
  assert contents(tmp_path) == before


def test_a_member_whose_summary_is_unreadable_is_said_to_run_again(tmp_path):
  axes = sweep.parse_axes({'seed': ['0', '1']})
  run_sweep(BASE, axes, workdir=tmp_path, run_member=fake_member([]), echo=QUIET)
  path = tmp_path / 'seed-1' / 'summary.json'
  path.write_text(path.read_text()[:20])
  calls, lines = [], []
  rows = run_sweep(BASE, axes, workdir=tmp_path, run_member=fake_member(calls),
                   echo=lines.append)
  assert lines[0] == '[1/2] seed-0: finished earlier, skipped'
  assert lines[1].startswith(f'[2/2] seed-1: {path} is unreadable (')
  assert lines[1].endswith('); running it again')
  assert [c.seed for c in calls] == [1]
  assert [r['status'] for r in rows] == ['completed'] * 2


def test_a_sweep_moved_elsewhere_is_the_same_sweep(tmp_path, data_dir, small_dataset):
  config = train_experiment.EXPERIMENT.configure(dict(
      FLAGS, data_dir=data_dir, checkpoint_every=0, keep_model=False,
      classification_figures=False, workdir=str(tmp_path / 'here')))
  axes = {'seed': [0, 1]}
  first = runner.run(train_experiment.EXPERIMENT, config, axes=axes,
                     dataset=small_dataset, echo=QUIET)
  assert first['finished'] == 2
  shutil.move(tmp_path / 'here', tmp_path / 'there')
  moved = dataclasses.replace(config, workdir=str(tmp_path / 'there'))
  lines = []
  again = runner.run(train_experiment.EXPERIMENT, moved, axes=axes, dataset=small_dataset,
                     echo=lines.append)
  assert '[1/2] seed-0: finished earlier, skipped' in lines
  assert '[2/2] seed-1: finished earlier, skipped' in lines
  summarized = runner.summarize(train_experiment.EXPERIMENT, tmp_path / 'there', echo=QUIET)
  for content in (again, summarized):
    assert content['finished'] == 2
    assert [m['summary'] for m in content['members']] == [
        m['summary'] for m in first['members']]
