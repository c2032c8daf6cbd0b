import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import pytest

from conftest import REPO, SMALL
from fundamentals import runtime


def test_bad_settings_are_refused_naming_the_valid_ones():
  with pytest.raises(ValueError, match=r"platform='gpu' is not one of \['', 'cpu', 'cuda'"):
    runtime.configure(platform='gpu')
  with pytest.raises(ValueError, match='must be given together'):
    runtime.initialize_distributed(coordinator_address='10.0.0.1:1234')
  with pytest.raises(ValueError, match=r'process_id=2 must be in \[0, 2\)'):
    runtime.initialize_distributed(coordinator_address='10.0.0.1:1234', num_processes=2,
                                   process_id=2)


def test_a_platform_without_devices_names_the_available_ones_and_jax_still_starts():
  absent = [p for p in ('cuda', 'rocm', 'tpu') if not runtime._has_devices(p)]  # pylint: disable=protected-access
  if not absent:
    pytest.skip('this host has every platform')
  before = jax.config.jax_platforms
  with pytest.raises(ValueError, match=rf'^--platform={absent[0]}: JAX finds no '
                                       rf'{absent[0]} device here \(.+\); available: '):
    runtime.configure(platform=absent[0], compilation_cache='')
  assert jax.config.jax_platforms == before and jax.devices()
  runtime.check_platform(jax.devices()[0].platform)  # One that is there passes.


def test_a_compilation_cache_that_is_a_file_is_named(tmp_path):
  (tmp_path / 'file').write_text('x')
  with pytest.raises(FileExistsError, match='^--compilation_cache=.*file is a file, not a '
                                            'folder; .*--compilation_cache= \\(empty\\)'):
    runtime.enable_compilation_cache(tmp_path / 'file')
  with pytest.raises(OSError, match='^--compilation_cache=.*file/cache cannot be made'):
    runtime.enable_compilation_cache(tmp_path / 'file' / 'cache')


def test_a_batch_must_split_evenly_over_the_devices(monkeypatch):
  runtime.check_batch_splits(25)  # One device here (or the test's own count).
  monkeypatch.setattr(jax, 'device_count', lambda: 4)
  runtime.check_batch_splits(128)
  with pytest.raises(ValueError, match=r'^batch_size=30 must be a multiple of the 4 devices '
                                       r'it is split over \(data parallelism\), e\.g\. 28 '
                                       r'or 32; or give --data_parallel=false$'):
    runtime.check_batch_splits(30)
  with pytest.raises(ValueError, match=r'e\.g\. 4; or give'):
    runtime.check_batch_splits(3)


@pytest.mark.skipif(len(jax.devices()) > 1, reason='this host has several devices')
def test_one_device_needs_no_mesh():
  assert runtime.data_mesh(128) is None
  assert runtime.is_main_process()


def test_the_environment_names_versions_devices_and_the_commit():
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import platform  # pylint: disable=g-import-not-at-top
  environment = runtime.environment()
  assert environment['python'] == platform.python_version()
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'tensorflow-datasets'):
    assert environment['packages'][name] == importlib.metadata.version(name)
  assert environment['packages']['jax'] == jax.__version__
  devices = jax.devices()
  assert environment['backend'] == jax.default_backend()
  assert environment['devices'] == {
      'platform': devices[0].platform, 'kinds': sorted({d.device_kind for d in devices}),
      'count': len(devices), 'local_count': jax.local_device_count(),
      'process_count': jax.process_count()}
  head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True,
                        text=True)
  if head.returncode == 0 and (REPO / '.git').exists():  # A clone, not an sdist.
    assert environment['git']['commit'] == head.stdout.strip()
  json.dumps(environment)  # It goes into summary.json as it is.
  environment['packages']['jax'] = 'changed'  # A copy: the next call is untouched.
  assert runtime.environment()['packages']['jax'] == jax.__version__


def test_git_state_of_a_work_tree_and_of_no_repository(tmp_path):
  git = ['git', '-c', 'user.name=t', '-c', 'user.email=t@example.com', '-C', str(tmp_path)]
  assert runtime.git_state(tmp_path) is None  # Not a repository.
  subprocess.run([*git, 'init', '-q'], check=True)
  assert runtime.git_state(tmp_path) is None  # No commit yet.
  (tmp_path / 'code.py').write_text('x = 1\n')
  subprocess.run([*git, 'add', 'code.py'], check=True)
  subprocess.run([*git, 'commit', '-q', '-m', 'code'], check=True)
  commit = subprocess.run([*git, 'rev-parse', 'HEAD'], check=True, capture_output=True,
                          text=True).stdout.strip()
  assert runtime.git_state(tmp_path) == {'commit': commit, 'dirty': False}
  (tmp_path / 'code.py').write_text('x = 2\n')
  assert runtime.git_state(tmp_path) == {'commit': commit, 'dirty': True}
  (tmp_path / 'inner').mkdir()  # Inside the repository but not its top: not its code.
  assert runtime.git_state(tmp_path / 'inner') is None


def test_without_git_the_environment_has_no_commit(tmp_path, monkeypatch):
  monkeypatch.setenv('PATH', str(tmp_path))  # No git on it.
  assert runtime.git_state(REPO) is None


def python(code: str, *, env: dict[str, str] | None = None, timeout: int = 300):
  return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, **(env or {})))


@pytest.mark.slow
def test_data_parallel_on_two_devices_equals_one_device(tmp_path, data_dir):
  """Two CPU devices (XLA_FLAGS): the batch is split over both, BatchNorm's statistics
  are still the whole batch's, and every number equals the one-device run's."""
  code = f'''
      import dataclasses, json, jax, numpy as np
      from fundamentals import data, runtime, train
      from fundamentals.config import Config
      assert len(jax.devices()) == 2, jax.devices()
      dataset = data.load({SMALL!r}, data_dir={data_dir!r})
      base = Config(dataset={SMALL!r}, hidden=(16,), batch_size=50, steps=12, log_every=4,
                    eval_every=12, diagnostics_every=6, lr=0.2)
      out = {{}}
      for name, parallel in (('one', False), ('two', True)):
        fit = train.fit(dataclasses.replace(base, data_parallel=parallel,
                                            workdir={str(tmp_path)!r} + '/' + name),
                        dataset=dataset, echo=lambda line: None)
        kernel = fit.state.params['dense'][0]['kernel'].value
        out[name] = dict(fit.summary, kernel_devices=len(kernel.sharding.device_set))
      # Vectorized runs split their batches too.
      fits = train.fit_group([dataclasses.replace(base, seed=s, data_parallel=True,
                                                  workdir={str(tmp_path)!r} + f'/v{{s}}')
                              for s in (0, 1)], dataset=dataset, echo=lambda line: None)
      out['vectorized'] = fits[0].summary
      try:
        runtime.data_mesh(5)
      except ValueError as e:
        out['odd_batch'] = str(e)
      print(json.dumps(out, default=str))
  '''
  result = python(code, env={'XLA_FLAGS': '--xla_force_host_platform_device_count=2'})
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  one, two = out['one'], out['two']
  assert one['devices'] == 1 and two['devices'] == 2
  assert one['kernel_devices'] == 1 and two['kernel_devices'] == 2
  assert two['status'] == one['status'] == 'completed'
  for key in ('initial_loss', 'final_train_loss', 'final_test_loss', 'final_test_accuracy'):
    assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
  assert out['vectorized']['devices'] == 2
  assert out['vectorized']['final_test_loss'] == pytest.approx(one['final_test_loss'],
                                                               rel=1e-4)
  assert 'batch_size=5 must be a multiple of the 2 devices' in out['odd_batch']


@pytest.mark.slow
def test_data_parallel_on_cpu_devices_at_ordinary_intervals_does_not_deadlock(tmp_path,
                                                                               data_dir):
  """Many train calls queued between two records (2-step epochs, records every
  1000 steps: 500 calls) once deadlocked two CPU devices in their first all-reduce
  (XLA:CPU's rendezvous, aborted after 40 s); the host now keeps at most
  ``runlog.MAX_IN_FLIGHT`` calls ahead. Also the issue's own command (defaults)."""
  code = f'''
      import json
      from fundamentals import data, train
      from fundamentals.config import Config
      dataset = data.load({SMALL!r}, data_dir={data_dir!r})
      out = {{}}
      for name, values in {{
          'defaults': dict(hidden=(64, 64), steps=200),
          'long_windows': dict(hidden=(16,), steps=1000, batch_size=300, log_every=1000,
                               eval_every=1000, diagnostics_every=0)}}.items():
        config = Config(dataset={SMALL!r}, data_parallel=True,
                        workdir={str(tmp_path)!r} + '/' + name, **values)
        out[name] = train.fit(config, dataset=dataset, echo=lambda line: None).summary
      print(json.dumps(out, default=str))
  '''
  result = python(code, env={'XLA_FLAGS': '--xla_force_host_platform_device_count=2'})
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  for name, summary in out.items():
    assert summary['status'] == 'completed' and summary['devices'] == 2, name


@pytest.mark.slow
def test_two_processes_train_as_one_multi_host_run(tmp_path, data_dir):
  """jax.distributed over two local processes (one CPU device each, gloo collectives):
  both see the same numbers, equal to a one-process run's; only process 0 writes."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  code = f'''
      import dataclasses, json, sys, jax
      from fundamentals import runtime
      process = int(sys.argv[1])
      if process >= 0:
        runtime.configure(coordinator_address='localhost:{port}', num_processes=2,
                          process_id=process)
      from fundamentals import data, train
      from fundamentals.config import Config
      dataset = data.load({SMALL!r}, data_dir={data_dir!r})
      config = Config(dataset={SMALL!r}, hidden=(16,), batch_size=50, steps=8, log_every=4,
                      eval_every=8, diagnostics_every=4, lr=0.2, augment=('flip',),
                      checkpoint_every=4,
                      workdir={str(tmp_path)!r} + ('/multi' if process >= 0 else '/single'))
      fit = train.fit(config, dataset=dataset, echo=lambda line: None)
      try:  # The directory holds a run now: process 0 refuses, and no process waits.
        train.fit(config, dataset=dataset, echo=lambda line: None)
      except (FileExistsError, RuntimeError) as e:
        again = type(e).__name__
      class Stop(Exception):
        pass
      def stop_at_8(line):
        if line.startswith('step 8/'):
          raise Stop
      cut = dataclasses.replace(config, workdir=config.workdir + '_cut')
      try:  # Interrupted after its checkpoint at step 4, then resumed.
        train.fit(cut, dataset=dataset, echo=stop_at_8)
      except Stop:
        pass
      resumed = train.fit(cut, dataset=dataset, resume=True, echo=lambda line: None).summary
      print(json.dumps(dict(fit.summary, process_count=jax.process_count(), again=again,
                            resumed=resumed)))
  '''
  script = tmp_path / 'multi_host.py'
  script.write_text(textwrap.dedent(code))
  run = lambda i: subprocess.Popen([sys.executable, str(script), str(i)], cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  processes = [run(0), run(1)]
  outputs = [p.communicate(timeout=300) for p in processes]
  for p, (_, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
  single = python(f'''
      import runpy, sys
      sys.argv = [{str(script)!r}, '-1']
      runpy.run_path({str(script)!r})
  ''')
  assert single.returncode == 0, single.stderr[-3000:]
  alone = json.loads(single.stdout.strip().splitlines()[-1])
  assert [r['process_count'] for r in results] == [2, 2] and alone['process_count'] == 1
  assert [r['devices'] for r in results] == [2, 2]
  assert results[0]['workdir'] == str(tmp_path / 'multi')
  assert [r['again'] for r in results] == ['FileExistsError', 'RuntimeError']
  for r in (*results, alone):  # Checkpointed by process 0, resumed by both.
    assert r['resumed']['resumed_from_step'] == 4
    assert r['resumed']['final_train_loss'] == r['final_train_loss']
  assert not pathlib.Path(results[1]['workdir']).exists()  # Process 1's scratch copy.
  for key in ('final_train_loss', 'final_test_loss', 'final_test_accuracy'):
    assert results[0][key] == results[1][key]
    assert results[0][key] == pytest.approx(alone[key], rel=1e-5, abs=1e-6)
  assert (tmp_path / 'multi' / 'summary.json').exists()


@pytest.mark.slow
def test_the_persistent_compilation_cache_gives_the_same_numbers(tmp_path, data_dir):
  from test_launch import launch  # pylint: disable=g-import-not-at-top
  cache = tmp_path / 'cache'
  args = [f'--dataset={SMALL}', f'--data_dir={data_dir}', '--hidden=16', '--steps=8',
          '--batch_size=50', '--log_every=4', '--eval_every=8', '--diagnostics_every=4',
          f'--compilation_cache={cache}']
  first = launch(*args, f'--workdir={tmp_path / "first"}')
  assert first.returncode == 0, first.stderr
  cached = list(cache.iterdir())
  assert any(p.name.startswith('jit_train_step') for p in cached), cached
  second = launch(*args, f'--workdir={tmp_path / "second"}')
  assert second.returncode == 0, second.stderr
  summaries = [json.loads((tmp_path / name / 'summary.json').read_text())
               for name in ('first', 'second')]
  for key in ('initial_loss', 'final_train_loss', 'final_test_loss'):
    assert summaries[0][key] == summaries[1][key]
  records = [(tmp_path / name / 'metrics.jsonl').read_text() for name in ('first', 'second')]
  losses = [[json.loads(line)['train_loss'] for line in r.splitlines()] for r in records]
  assert losses[0] == losses[1]
