"""launch.py end to end, as a user runs it: a subprocess with flags."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import REPO, SMALL
import experiments
from fundamentals import rundir


# The runs' caches (JAX's persistent compilation cache, decoded image folders): one
# per test session, shared by its subprocesses, never the user's.
CACHE = tempfile.mkdtemp(prefix='fundamentals-test-cache-')


def launch(*args, timeout=300):
  return subprocess.run([sys.executable, str(REPO / 'launch.py'), *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, FUNDAMENTALS_CACHE=CACHE))


@pytest.mark.slow
def test_few_step_run_writes_files_and_learns(tmp_path, data_dir):
  workdir = tmp_path / 'run'
  result = launch(f'--dataset={SMALL}', f'--data_dir={data_dir}', '--hidden=32,16',
                  '--steps=30', '--batch_size=50', '--log_every=10', '--eval_every=10',
                  '--lr=0.2', '--init=xavier', '--activation=tanh', '--seed=3',
                  f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr
  assert 'initial loss' in result.stdout and 'expected ln(30) = 3.4012' in result.stdout
  assert 'final: train loss' in result.stdout
  config = json.loads((workdir / 'config.json').read_text())
  assert config['hidden'] == [32, 16] and config['init'] == 'xavier'
  assert config['activation'] == 'tanh' and config['seed'] == 3 and config['lr'] == 0.2
  records = rundir.read_jsonl(workdir / 'metrics.jsonl')
  losses = [r['train_loss'] for r in records]
  assert len(losses) == 3 and losses[-1] < losses[0]
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['status'] == 'completed' and summary['steps'] == 30


@pytest.mark.parametrize('flag, message', [
    ('--init=kaimin', 'kaiming_normal'),
    ('--activation=sigmoidd', 'relu'),
    ('--schedule=linear', 'cosine'),
    ('--hidden=512,x', '--hidden=512,x must be comma-separated positive integers'),
    ('--experiment=nope', "unknown experiment 'nope'; valid: list, "),
    ('--lr=-1', 'lr=-1.0 must be a positive'),
    ('--steps=0', 'steps=0 must be positive'),
    ('--platform=gpu', 'flag --platform=gpu: value should be one of <|cpu|cuda|rocm|tpu>'),
    ('--process_id=1', "coordinator_address='', num_processes=0 and process_id=1 must be "
                       'given together'),
])
def test_bad_flags_exit_nonzero_with_a_message_before_any_work(flag, message, tmp_path):
  result = launch(flag, f'--workdir={tmp_path / "never"}', '--data_dir=/nonexistent')
  assert result.returncode != 0
  assert message in result.stderr
  assert not (tmp_path / 'never').exists()


def test_helpfull_documents_every_flag():
  result = launch('--helpfull')  # absl's help exits with status 1 by design.
  assert 'Runs one experiment' in result.stdout
  for flag in ('init', 'activation', 'batchnorm', 'hidden', 'steps', 'lr', 'schedule',
               'seed', 'workdir', 'output_scale', 'dataset', 'data_dir', 'experiment',
               'vectorize', 'data_parallel', 'platform', 'compilation_cache', 'distributed',
               'coordinator_address', 'num_processes', 'process_id'):
    assert f'--{flag}' in result.stdout or f'--[no]{flag}' in result.stdout


def test_experiment_list():
  result = launch('--experiment=list')
  assert result.returncode == 0
  listed = [line.split()[0] for line in result.stdout.splitlines()]
  assert listed == sorted(experiments.EXPERIMENTS)


@pytest.mark.slow
def test_resume_goes_on_with_an_interrupted_run(tmp_path, data_dir, small_dataset):
  from fundamentals import train  # pylint: disable=g-import-not-at-top
  from fundamentals.config import Config  # pylint: disable=g-import-not-at-top
  from test_train import Interrupted, interrupt_at  # pylint: disable=g-import-not-at-top
  flags = dict(dataset=SMALL, data_dir=data_dir, hidden=(8,), steps=12, batch_size=50,
               log_every=4, eval_every=12, diagnostics_every=0, checkpoint_every=4)
  workdir = tmp_path / 'run'
  with pytest.raises(Interrupted):
    train.train(Config(workdir=str(workdir), **flags), dataset=small_dataset,
                echo=interrupt_at(8))
  args = [f'--dataset={SMALL}', f'--data_dir={data_dir}', '--hidden=8', '--steps=12',
          '--batch_size=50', '--log_every=4', '--eval_every=12', '--diagnostics_every=0',
          '--checkpoint_every=4', f'--workdir={workdir}']
  refused = launch(*args)
  assert refused.returncode != 0 and 'already holds a run' in refused.stderr
  result = launch(*args, '--resume')
  assert result.returncode == 0, result.stderr
  # Stopped at the line of step 8, before its checkpoint: it goes on from step 4.
  assert 'resumed from the checkpoint at step 4' in result.stdout
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['status'] == 'completed' and summary['resumed_from_step'] == 4
  assert [r['step'] for r in rundir.read_jsonl(workdir / 'metrics.jsonl')] == [4, 8, 12]
  wrong = launch('--experiment=batchnorm', '--resume', f'--workdir={workdir}')
  assert wrong.returncode != 0 and '--resume goes on with a training run' in wrong.stderr


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_numbers_of_one_never_killed(tmp_path,
                                                                               data_dir):
  args = [f'--dataset={SMALL}', f'--data_dir={data_dir}', '--hidden=16', '--steps=3000',
          '--batch_size=50', '--log_every=100', '--eval_every=3000',
          '--diagnostics_every=0', '--checkpoint_every=100']
  killed = tmp_path / 'killed'
  process = subprocess.Popen([sys.executable, str(REPO / 'launch.py'), *args,
                              f'--workdir={killed}'], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL,
                             env=dict(os.environ, FUNDAMENTALS_CACHE=CACHE))
  deadline = time.time() + 120
  while not list(killed.glob('checkpoint/*.json')) and time.time() < deadline:
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (killed / 'summary.json').exists()  # Killed mid-run.
  resumed = launch(*args, f'--workdir={killed}', '--resume')
  assert resumed.returncode == 0, resumed.stderr
  whole = launch(*args, f'--workdir={tmp_path / "whole"}')
  assert whole.returncode == 0, whole.stderr
  a, b = (json.loads((tmp_path / name / 'summary.json').read_text())
          for name in ('whole', 'killed'))
  assert b['resumed_from_step'] >= 100
  for key in ('final_train_loss', 'final_test_loss', 'final_test_accuracy'):
    assert a[key] == b[key]
  losses = [[r['train_loss'] for r in rundir.read_jsonl(tmp_path / name / 'metrics.jsonl')]
            for name in ('whole', 'killed')]
  assert losses[0] == losses[1] and len(losses[0]) == 30
