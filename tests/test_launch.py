"""launch.py end to end, as a user runs it: a subprocess with flags."""

import json
import os
import subprocess
import sys
import tempfile

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
