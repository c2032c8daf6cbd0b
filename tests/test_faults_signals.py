"""Fault injection: SIGTERM and SIGINT stop a run gracefully (exit 4, a checkpoint and
an interrupted summary) and ``--resume`` gives the numbers of a run never stopped; a
second signal ends it at once; a vectorized group stops together; a signal between
two runs starts none; a diverged run exits 3."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading

import pytest

from conftest import REPO, SMALL
from test_launch import CACHE, launch, launch_here
from test_tensorboard_events import summaries
from fundamentals import rundir
from fundamentals import train
from fundamentals.config import Config

pytestmark = pytest.mark.faults

# Records every 50 steps, the test set at 150 and 300; no checkpoint but the stop's.
FLAGS = [f'--dataset={SMALL}', '--hidden=8', '--steps=300', '--batch_size=50',
         '--log_every=50', '--eval_every=150', '--diagnostics_every=0',
         '--checkpoint_every=0', '--noclassification_figures', '--nokeep_model']
TIMING = ('examples_per_sec', 'wall_time_s', 'train_loop_s', 'first_step_s',
          'resumed_from_step', 'workdir', 'environment')
STOPPED = re.compile(r'launch\.py: interrupted by (SIG\w+) at step (\d+): checkpoint saved '
                     r'in (\S+); go on with: (.+)')


def numbers(workdir) -> tuple[list[dict], dict]:
  """metrics.jsonl and summary.json but their timings (and where the run went on)."""
  records = [{k: v for k, v in r.items() if k not in TIMING}
             for r in rundir.read_jsonl(workdir / 'metrics.jsonl')]
  summary = json.loads((workdir / 'summary.json').read_text())
  return records, {k: v for k, v in summary.items() if k not in TIMING}


@pytest.fixture(scope='module')
def reference(tmp_path_factory, data_dir):
  """The run never stopped."""
  workdir = tmp_path_factory.mktemp('reference') / 'run'
  result = launch(*FLAGS, f'--data_dir={data_dir}', f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr
  return workdir


def start(*args) -> subprocess.Popen:
  """launch.py in a subprocess whose output lines come as they are printed."""
  process = subprocess.Popen([sys.executable, str(REPO / 'launch.py'), *args], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, FUNDAMENTALS_CACHE=CACHE,
                                      PYTHONUNBUFFERED='1'))
  threading.Timer(120, process.kill).start()  # A hung run fails the test, never CI.
  return process


def wait_for(process: subprocess.Popen, text: str) -> list[str]:
  """The output lines up to the first that holds ``text``."""
  lines = []
  for line in process.stdout:
    lines.append(line)
    if text in line:
      return lines
  raise AssertionError(f'{text!r} never printed: {lines}; {process.stderr.read()}')


def test_sigterm_stops_at_a_record_step_and_resume_matches_a_run_never_stopped(
    reference, tmp_path, data_dir):
  workdir = tmp_path / 'stopped'
  process = start(*FLAGS, f'--data_dir={data_dir}', f'--workdir={workdir}')
  wait_for(process, 'step  50/300')
  process.send_signal(signal.SIGTERM)
  _, err = process.communicate(timeout=120)
  assert process.returncode == 4, err
  assert len(err.strip().splitlines()) == 1, err  # No traceback, no KeyboardInterrupt.
  name, step, saved_in, command = STOPPED.fullmatch(err.strip()).groups()
  step = int(step)
  # At the record step of the line, or a later one: the signal may come before its end.
  assert name == 'SIGTERM' and saved_in == str(workdir) and 50 <= step < 300
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['status'] == 'interrupted' and summary['signal'] == 'SIGTERM'
  assert summary['interrupted_at_step'] == summary['steps'] == step
  assert [p.name for p in (workdir / 'checkpoint').glob('*.json')] == [f'{step}.json']
  records = numbers(workdir)[0]
  assert records == numbers(reference)[0][:step // 50]  # The same numbers so far.
  events, = workdir.glob('events.out.tfevents.*')  # Flushed and closed at the stop.
  assert [t for t, _ in summaries(events)['loss_nats/train']] == list(range(50, step + 1, 50))
  args = shlex.split(command)
  assert args[0] == 'python' and args[-2:] == [f'--workdir={workdir}', '--resume']
  resumed = subprocess.run([sys.executable, *args[1:]], cwd=REPO, capture_output=True,
                           text=True, timeout=300,
                           env=dict(os.environ, FUNDAMENTALS_CACHE=CACHE))
  assert resumed.returncode == 0, resumed.stderr
  assert f'resumed from the checkpoint at step {step}' in resumed.stdout
  assert numbers(workdir) == numbers(reference)  # Every record and summary number.
  assert json.loads((workdir / 'summary.json').read_text())['resumed_from_step'] == step
  assert not (workdir / 'checkpoint').exists()


def test_sigint_stops_without_a_traceback_and_a_second_one_ends_the_run_at_once(
    tmp_path, data_dir):
  workdir = tmp_path / 'killed'
  # The next record step is 1200 steps away: the second signal comes before it.
  process = start(*FLAGS, '--steps=2400', '--log_every=1200', '--eval_every=1200',
                  f'--data_dir={data_dir}', f'--workdir={workdir}')
  wait_for(process, 'initial loss')  # Inside the work: the handlers are there.
  process.send_signal(signal.SIGINT)
  wait_for(process, 'SIGINT: stopping at step 1200, the next record step')
  process.send_signal(signal.SIGINT)
  _, err = process.communicate(timeout=10)
  assert process.returncode == -signal.SIGINT, err  # Its default action: killed by it.
  assert 'KeyboardInterrupt' not in err and 'Traceback' not in err
  assert not (workdir / 'summary.json').exists() and not (workdir / 'checkpoint').exists()


def signal_at(step: int, sent=signal.SIGTERM):
  """An echo that sends ``sent`` to this process once, at the first line of record
  ``step`` (a vectorized group prints one per run: a second signal would kill)."""
  sent_at = []
  def echo(line):
    if f'step {step}/' in line and not sent_at:
      sent_at.append(step)
      os.kill(os.getpid(), sent)
  return echo


GROUP = dict(dataset=SMALL, hidden=(8,), steps=30, batch_size=50, log_every=10,
             eval_every=20, diagnostics_every=0, checkpoint_every=0,
             classification_figures=False, keep_model=False)


def group(tmp_path, name):  # Seed 1 diverges at once: stopped with the others.
  return [Config(workdir=str(tmp_path / f'{name}{seed}'), seed=seed,
                 **{**GROUP, 'lr': 1e6 if seed == 1 else 0.1}) for seed in (0, 1)]


def test_a_vectorized_group_stops_together_and_resumes_bit_identical(tmp_path,
                                                                     small_dataset):
  assert threading.current_thread() is threading.main_thread()  # Signals reach it.
  before = signal.getsignal(signal.SIGINT)
  whole = train.fit_group(group(tmp_path, 'whole'), dataset=small_dataset,
                          echo=lambda line: None)
  with pytest.raises(train.Stopped) as stopped:
    train.fit_group(group(tmp_path, 'cut'), dataset=small_dataset,
                    echo=signal_at(10, signal.SIGINT))  # No KeyboardInterrupt.
  assert signal.getsignal(signal.SIGINT) == before  # Given back.
  assert stopped.value.step == 10 and stopped.value.signal_name == 'SIGINT'
  assert stopped.value.workdirs == [str(tmp_path / 'cut0'), str(tmp_path / 'cut1')]
  for seed in (0, 1):
    summary = json.loads((tmp_path / f'cut{seed}' / 'summary.json').read_text())
    assert summary['status'] == 'interrupted' and summary['interrupted_at_step'] == 10
    assert (summary['diverged_at_step'] is None) == (seed == 0)
  resumed = train.fit_group(group(tmp_path, 'cut'), dataset=small_dataset, resume=True,
                            echo=lambda line: None)
  assert [f.summary['status'] for f in resumed] == ['completed', 'diverged']
  for seed in (0, 1):
    assert numbers(tmp_path / f'cut{seed}') == numbers(tmp_path / f'whole{seed}')
  assert whole[0].summary['final_test_loss'] == resumed[0].summary['final_test_loss']


def test_a_signal_between_two_runs_starts_neither_and_writes_nothing(tmp_path,
                                                                     small_dataset):
  config = Config(workdir=str(tmp_path / 'next'), **GROUP)
  with train.stop_on_signals():  # As launch.py holds it around a whole sweep.
    os.kill(os.getpid(), signal.SIGINT)
    assert train.stop_requested() == 'SIGINT'
    with pytest.raises(train.Stopped, match='interrupted by SIGINT before .*next started'):
      train.fit(config, dataset=small_dataset)
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  assert not (tmp_path / 'next').exists()
  with train.stop_on_signals():  # A new block asks anew.
    assert train.stop_requested() is None


def test_a_diverged_run_exits_3_and_a_sweep_names_its_diverged_members(tmp_path,
                                                                        data_dir):
  flags = [f'--dataset={SMALL}', f'--data_dir={data_dir}', '--hidden=8', '--steps=10',
           '--batch_size=50', '--log_every=5', '--eval_every=10', '--diagnostics_every=0',
           '--batchnorm=false', '--init=normal', '--momentum=0', '--schedule=constant',
           '--noclassification_figures', '--nokeep_model']
  single = launch_here(*flags, '--lr=1e6', f'--workdir={tmp_path / "single"}')
  assert single.returncode == 3, single.stderr
  assert re.fullmatch(r'launch\.py: the run diverged at step \d+ \(a loss that is not '
                      r'finite\): \S+/single/summary\.json\n', single.stderr)
  swept = launch_here(*flags, '--lr=0.01,1e6', f'--workdir={tmp_path / "sweep"}')
  assert swept.returncode == 3, swept.stderr
  assert swept.stderr == 'launch.py: 1 of 2 runs diverged: lr-1000000.0\n'
