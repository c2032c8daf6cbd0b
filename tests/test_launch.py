"""launch.py end to end, as a user runs it: a subprocess with flags."""

import contextlib
import errno
import io
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
from fundamentals import cli
from fundamentals import rundir
from fundamentals import runner
from fundamentals import train


# The runs' caches (JAX's persistent compilation cache, decoded image folders): one
# per test session, shared by its subprocesses, never the user's.
CACHE = tempfile.mkdtemp(prefix='fundamentals-test-cache-')


def launch(*args, timeout=300):
  return subprocess.run([sys.executable, str(REPO / 'launch.py'), *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, FUNDAMENTALS_CACHE=CACHE))


def launch_here(*args) -> subprocess.CompletedProcess:
  """launch.py's flag parsing and main in this process (no JAX start-up per case), for
  the refusals that stop before any work; the same exit status and stderr."""
  import launch as program  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  argv = ['launch.py', *args, '--compilation_cache=']
  stderr, code = io.StringIO(), 0
  flags.FLAGS.unparse_flags()
  with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
    try:
      program.main(program.cli.parse_flags(argv))
    except SystemExit as e:
      code = e.code
  flags.FLAGS.unparse_flags()
  return subprocess.CompletedProcess(argv, code, '', stderr.getvalue())


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
  # At once, before the blank of compilation; before the first record.
  assert result.stdout.index('compiling the train step…') < result.stdout.index('step 10/30')
  # What repeating it takes, also in a file written at the start; config.json is the
  # Config alone.
  environment = json.loads((workdir / 'environment.json').read_text())
  assert summary['environment'] == environment and environment['packages']['jax']
  from fundamentals.config import Config  # pylint: disable=g-import-not-at-top
  assert config == json.loads(Config.from_dict(config).to_json())
  assert 'environment' not in config
  umask = os.umask(0o022)
  os.umask(umask)
  for name in ('config.json', 'environment.json', 'metrics.jsonl', 'summary.json',
               'report.md', 'loss.png'):  # As readable as a figure.
    assert (workdir / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


@pytest.mark.parametrize('flag, message', [
    ('--init=kaimin', 'kaiming_normal'),
    ('--activation=sigmoidd', 'relu'),
    ('--schedule=linear', 'cosine'),
    ('--hidden=512,x', '--hidden=512,x: every comma-separated value must be an integer'),
    ('--hidden=0', 'hidden=(0,) must be one or more positive widths'),
    ('--experiment=nope', "Unknown experiment 'nope'; valid: list, "),
    ('--lr=-1', 'lr=-1.0 must be a positive'),
    ('--lr=fast', '--lr=fast: must be a number'),
    ('--steps=0', 'steps=0 must be positive'),
    ('--steps=1.5', '--steps=1.5: must be an integer'),
    ('--batchnorm=maybe', '--batchnorm=maybe: must be true or false'),
    ('--platform=gpu', "platform='gpu' is not one of ['', 'cpu', 'cuda', 'rocm', 'tpu']"),
    ('--process_id=1', "coordinator_address='', num_processes=0 and process_id=1 must be "
                       'given together'),
    ('--sweep_shard=3/2', "--sweep_shard='3/2' needs 0 <= k < n"),
    ('--hidden=8,8 --hidden=4 --bogus', "Unknown command line flag 'bogus'"),
    ('--vectorize=perhaps', "Non-boolean argument to boolean flag"),
    ('--experiment=signal_propagation --sp_depth=0', 'sp_depth=0 must be positive'),
    ('--sp_depth=3', '--sp_depth apply to --experiment=signal_propagation only'),
    ('--experiment=batchnorm --batchnorm_lrs=0.5', 'batchnorm_histogram_lr=0.1 must be one of'),
    ('--experiment=batchnorm --seed=0,1', "--experiment=batchnorm takes single values, but "
                                          "['seed'] have several"),
    ('--bn_unbiased_running_var', "needs bn_impl='ours'"),
])
def test_bad_flags_exit_nonzero_with_a_message_before_any_work(flag, message, tmp_path):
  result = launch_here(*flag.split(), f'--workdir={tmp_path / "never"}',
                       '--data_dir=/nonexistent')
  assert result.returncode == 2, result.stderr
  assert message in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # One line.
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'never').exists()


@pytest.mark.parametrize('make_args, message', [
    (lambda tmp, data: ['--dataset=fruits30'], "Unknown dataset 'fruits30'"),
    (lambda tmp, data: ['--data_dir=/nonexistent'], '--data_dir=/nonexistent is not a '
                                                    'directory'),
    (lambda tmp, data: ['--dataset=image_folder', f'--data_dir={tmp / "none"}'],
     'does not exist'),
    (lambda tmp, data: [f'--dataset={SMALL}', f'--data_dir={data}', '--batch_size=1000'],
     'batch_size=1000 exceeds the 600 training examples'),
    (lambda tmp, data: [f'--dataset={SMALL}', f'--data_dir={data}', '--batch_size=1000',
                        '--experiment=augmentation'], 'batch_size=1000 exceeds'),
    (lambda tmp, data: ['--resume'], 'holds no run to go on with'),
    (lambda tmp, data: ['--summarize'], 'holds no sweep or experiment'),
])
def test_data_and_workdir_errors_are_one_line_and_write_nothing(make_args, message,
                                                                  tmp_path, data_dir):
  result = launch_here(*make_args(tmp_path, data_dir), f'--workdir={tmp_path / "never"}')
  assert result.returncode == 2, result.stderr
  assert message in result.stderr and 'Traceback' not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert not (tmp_path / 'never').exists()


def test_an_occupied_workdir_is_refused_in_one_line_and_left_as_it_was(tmp_path, data_dir):
  occupied = tmp_path / 'occupied'
  occupied.mkdir()
  (occupied / 'config.json').write_text('{}')
  for extra in ([], ['--init=xavier,kaiming'], ['--experiment=augmentation']):
    result = launch_here(f'--dataset={SMALL}', f'--data_dir={data_dir}', *extra,
                         f'--workdir={occupied}')
    assert result.returncode == 2 and 'already holds a run' in result.stderr, result.stderr
    assert sorted(p.name for p in occupied.iterdir()) == ['config.json']
  (tmp_path / 'file').write_text('x')
  result = launch_here(f'--workdir={tmp_path / "file"}')
  assert result.returncode == 2 and 'is not a directory' in result.stderr


@pytest.mark.parametrize('args, message', [
    (['--bogus'], "launch.py: error: Unknown command line flag 'bogus'"),
    (['--lr=-1'], 'launch.py: error: lr=-1.0 must be a positive'),
    (['--dataset=fruits30'], "launch.py: error: Unknown dataset 'fruits30'"),
])
def test_as_a_subprocess_a_user_error_is_one_line_and_exit_status_2(args, message,
                                                                    tmp_path):
  result = launch(*args, f'--workdir={tmp_path / "never"}')
  assert result.returncode == 2 and result.stderr.strip().startswith(message), result.stderr
  assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / 'never').exists()


def test_helpfull_documents_every_flag():
  result = launch('--helpfull')  # absl's help exits with status 1 by design.
  assert 'Runs one experiment' in result.stdout
  for group in ('data:', 'model:', 'optimization:', 'run:', 'sweep:', 'devices:',
                'batchnorm:', 'signal_propagation:', 'backprop:'):
    assert f'\n{group}\n' in result.stdout, group
  for flag in ('init', 'activation', 'batchnorm', 'hidden', 'steps', 'lr', 'schedule',
               'seed', 'workdir', 'output_scale', 'dataset', 'data_dir', 'experiment',
               'vectorize', 'data_parallel', 'platform', 'compilation_cache', 'distributed',
               'coordinator_address', 'num_processes', 'process_id'):
    assert f'--{flag}' in result.stdout or f'--[no]{flag}' in result.stdout


def test_experiment_list():
  result = launch('--experiment=list')
  assert result.returncode == 0
  listed = [line.split()[0] for line in result.stdout.splitlines()
             if not line.startswith(' ')]
  assert sorted(listed) == sorted([*experiments.EXPERIMENTS, 'all', 'docs'])
  for e in experiments.EXPERIMENTS.values():  # Each paper is named under its experiment.
    assert not e.paper or f'reproduces: {e.paper}' in result.stdout


# What --helpfull and --experiment=list must not load: JAX's backends (checked apart),
# TensorBoard writers, checkpoints, plotting, PyTorch (tensorboardX imports it when it is
# installed), TensorFlow (TFDS) and SciPy; each costs from 0.2 s to seconds of start-up.
HEAVY_MODULES = ('tensorboardX', 'tensorboard', 'orbax', 'matplotlib', 'torch',
                 'tensorflow', 'tensorflow_datasets', 'scipy')
# launch.py as ``python launch.py ARGS`` runs it; then (before exit, when JAX clears its
# backends) the heavy modules it imported and the JAX backends it started, as one JSON
# line on stderr.
_LOADED = """
import json, runpy, sys
HEAVY = %r
sys.argv = ['launch.py', *sys.argv[1:]]
try:
  runpy.run_path('launch.py', run_name='__main__')
finally:
  bridge = sys.modules.get('jax._src.xla_bridge')
  print(json.dumps({'modules': sorted({m.split('.')[0] for m in sys.modules} & set(HEAVY)),
                    'backends': sorted(getattr(bridge, '_backends', {}))}), file=sys.stderr)
"""


@pytest.mark.parametrize('flag', ['--helpfull', '--experiment=list'])
def test_help_and_list_start_no_backend_and_import_nothing_heavy(flag):
  result = subprocess.run([sys.executable, '-c', _LOADED % (HEAVY_MODULES,), flag],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, FUNDAMENTALS_CACHE=CACHE))
  assert result.returncode == (1 if flag == '--helpfull' else 0), result.stderr
  assert len(result.stdout.splitlines()) > 20  # It did list or document.
  loaded = json.loads(result.stderr.strip().splitlines()[-1])
  assert loaded == {'modules': [], 'backends': []}


def test_the_import_check_sees_heavy_modules():
  """The check above can fail: a run's imports (the figures, TensorBoard) are seen."""
  code = _LOADED.replace("runpy.run_path('launch.py', run_name='__main__')",
                         'import jax, matplotlib.figure; jax.devices()')
  result = subprocess.run([sys.executable, '-c', code % (HEAVY_MODULES,)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  loaded = json.loads(result.stderr.strip().splitlines()[-1])
  assert 'matplotlib' in loaded['modules'] and loaded['backends']


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
  assert wrong.returncode == 2 and '--resume goes on with one training run' in wrong.stderr


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


SWEPT = {'members': [{'name': 'lr-0.1', 'status': 'completed'},
                     {'name': 'lr-1000000.0', 'status': 'diverged'},
                     {'name': 'lr-2000000.0', 'status': 'diverged'}]}


@pytest.mark.parametrize('args, result, status, line', [
    ([], {'status': 'completed', 'workdir': 'runs/a'}, 0, ''),
    ([], {'status': 'diverged', 'diverged_at_step': 7, 'workdir': 'runs/a'}, 3,
     'launch.py: the run diverged at step 7 (a loss that is not finite): '
     'runs/a/summary.json'),
    (['--lr=0.1,1e6,2e6'], SWEPT, 3,
     'launch.py: 2 of 3 runs diverged: lr-1000000.0, lr-2000000.0'),
    (['--lr=0.1,1e6,2e6', '--sweep_shard=0/2'], SWEPT, 3,  # Its job's members only.
     'launch.py: 1 of 2 runs diverged: lr-2000000.0'),
    # A lesson may diverge on purpose; --summarize runs nothing.
    (['--experiment=init_activation'], SWEPT, 0, ''),
    (['--lr=0.1,1e6,2e6', '--summarize'], SWEPT, 0, ''),
])
def test_the_exit_status_says_whether_a_train_run_or_sweep_diverged(
    args, result, status, line, monkeypatch):
  monkeypatch.setattr(runner, 'plan', lambda *a, **k: lambda: result)
  got = launch_here(*args, '--workdir=/nonexistent/never')
  assert (got.returncode or 0, got.stderr.strip()) == (status, line)


@pytest.mark.parametrize('error, status, line', [
    (OSError(errno.ENOSPC, 'No space left on device', '/runs/a/metrics.jsonl'), 1,
     'launch.py: error: /runs/a/metrics.jsonl: No space left on device (ENOSPC)'),
    (PermissionError(errno.EROFS, 'Read-only file system', '/runs/a/summary.json'), 1,
     'launch.py: error: /runs/a/summary.json: Read-only file system (EROFS)'),
    (PermissionError(errno.EACCES, 'Permission denied', '/runs/a/checkpoint/8'), 1,
     'launch.py: error: /runs/a/checkpoint/8: Permission denied (EACCES)'),
    (FileExistsError('--workdir=runs/a is in use by process 12 (launch.py)'), 2,
     'launch.py: error: --workdir=runs/a is in use by process 12 (launch.py)'),
    (FileNotFoundError(errno.ENOENT, 'No such file or directory', '/runs/a/config.json'), 2,
     'launch.py: error: /runs/a/config.json: No such file or directory (ENOENT)'),
])
def test_an_error_during_the_work_is_one_line_with_its_exit_status(error, status, line,
                                                                    monkeypatch):
  def work():
    raise error
  monkeypatch.setattr(runner, 'plan', lambda *a, **k: work)
  got = launch_here('--workdir=/nonexistent/never')
  assert (got.returncode, got.stderr) == (status, line + '\n')


def test_a_library_value_error_during_the_work_is_a_user_error_and_others_crash(
    tmp_path, monkeypatch):
  damaged = tmp_path / 'metrics.jsonl'
  damaged.write_text('{"step": 1}\nnot json\n')
  monkeypatch.setattr(runner, 'plan', lambda *a, **k: lambda: rundir.read_jsonl(damaged))
  got = launch_here('--workdir=/nonexistent/never')
  assert got.returncode == 2 and got.stderr == (
      f'launch.py: error: {damaged}: line 2 is not JSON (Expecting value at column 1); '
      'restore the file from a copy, or start the run afresh (--overwrite)\n')
  monkeypatch.setattr(runner, 'plan', lambda *a, **k: lambda: int('not a number'))
  with pytest.raises(ValueError, match='invalid literal'):  # A bug: its traceback.
    launch_here('--workdir=/nonexistent/never')


def test_a_full_disk_while_training_is_one_line_naming_the_file(tmp_path, data_dir,
                                                                monkeypatch):
  def disk_full(path, record):
    raise OSError(errno.ENOSPC, 'No space left on device', str(path))
  monkeypatch.setattr(rundir, 'append_jsonl', disk_full)
  workdir = tmp_path / 'run'
  got = launch_here(f'--dataset={SMALL}', f'--data_dir={data_dir}', '--hidden=8',
                    '--steps=4', '--batch_size=50', '--log_every=2', '--diagnostics_every=0',
                    f'--workdir={workdir}')
  assert (got.returncode, got.stderr) == (
      1, f'launch.py: error: {workdir}/metrics.jsonl: No space left on device (ENOSPC)\n')


def test_a_bug_inside_the_library_during_the_work_is_not_called_a_user_error(monkeypatch):
  def work():  # A ValueError of a builtin in a frame of fundamentals/: a bug, a crash.
    exec(compile('max([])', rundir.__file__, 'exec'), {})  # pylint: disable=exec-used
  monkeypatch.setattr(runner, 'plan', lambda *a, **k: work)
  with pytest.raises(ValueError, match='empty'):
    launch_here('--workdir=/nonexistent/never')


@pytest.mark.parametrize('member, levels, expected', [
    ('run', 0, 'run'),  # A single run: --resume added.
    ('sweep/seed-1', 1, 'sweep'),
    ('lesson/grid/bn-lr1', 1, 'lesson'),  # A member deeper than one folder (batchnorm's).
    ('library/batchnorm/grid/bn-lr1', 2, 'library'),  # --experiment=all.
])
def test_the_command_that_goes_on_names_the_directory_that_was_run(
    member, levels, expected, tmp_path, monkeypatch):
  from absl import flags  # pylint: disable=g-import-not-at-top
  for folder in ('sweep', 'lesson', 'library/batchnorm'):
    (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    (tmp_path / folder / 'sweep.json').write_text('{}')
  monkeypatch.setattr(sys, 'argv', ['launch.py', '--steps=9', '-overwrite'])
  flags.FLAGS.unparse_flags()
  flags.FLAGS(['launch.py', '--steps=9'])
  try:
    stopped = train.Stopped('SIGTERM', 4, [tmp_path / member])
    command = cli.go_on_command(stopped, levels=levels)
  finally:
    flags.FLAGS.unparse_flags()
  assert command == (f'python launch.py --steps=9 --workdir={tmp_path / expected}'
                     + (' --resume' if not levels else ''))
