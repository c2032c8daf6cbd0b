import json
import os
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


def test_one_device_needs_no_mesh():
  assert len(jax.devices()) == 1  # The test process: XLA's default, one CPU device.
  assert runtime.data_mesh(128) is None
  assert runtime.is_main_process()


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
