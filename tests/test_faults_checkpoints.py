"""Faults in checkpoints: damaged data, host files and metadata, saves killed or out of
disk space. A run with checkpoints at steps 4 and 8 (of 12) is copied, its newest
checkpoint damaged, and --resume must fall back to step 4 with a warning naming what was
wrong, then end with the numbers of a run never interrupted."""

import contextlib
import errno
import json
import logging as py_logging
import os
import pathlib
import shutil
import subprocess

import jax
import numpy as np
import pytest

from conftest import SMALL
from test_launch import launch_here
from test_train import Interrupted, copy_of, interrupt_at, stopped_run
from fundamentals import checkpoints
from fundamentals import rundir
from fundamentals import train
from fundamentals.config import Config

pytestmark = pytest.mark.faults

FLAGS = dict(dataset=SMALL, hidden=(8,), steps=12, batch_size=50, log_every=2,
             eval_every=12, diagnostics_every=0, checkpoint_every=4)
QUIET = lambda line: None


def numbers(workdir: str | pathlib.Path) -> tuple[list[dict], dict]:
  """metrics.jsonl and summary.json but what the wall clock or the path decides."""
  def timeless(d):
    return {k: v for k, v in d.items() if k != 'examples_per_sec' and not k.endswith('_s')
            and k not in ('environment', 'workdir', 'resumed_from_step')}
  workdir = pathlib.Path(workdir)
  return ([timeless(r) for r in rundir.read_jsonl(workdir / 'metrics.jsonl')],
          timeless(json.loads((workdir / 'summary.json').read_text())))


@pytest.fixture(scope='module')
def reference(tmp_path_factory, data_dir, small_dataset) -> tuple[list[dict], dict]:
  """The numbers of the run never interrupted."""
  workdir = tmp_path_factory.mktemp('reference') / 'run'
  train.fit(Config(workdir=str(workdir), data_dir=data_dir, **FLAGS), dataset=small_dataset,
            echo=QUIET)
  return numbers(workdir)


@pytest.fixture(scope='module')
def interrupted(tmp_path_factory, data_dir, small_dataset) -> Config:
  """A run stopped at step 10, as by kill -9: checkpoints at steps 4 and 8
  (keep_checkpoints=2)."""
  workdir = tmp_path_factory.mktemp('interrupted') / 'run'
  return stopped_run(Config(workdir=str(workdir), data_dir=data_dir, **FLAGS),
                     small_dataset, at=10)


def names(workdir: str) -> list[str]:
  return sorted(p.name for p in (pathlib.Path(workdir) / 'checkpoint').iterdir())


def contents(root: pathlib.Path) -> dict[str, bytes | None]:
  return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
          for p in sorted(root.rglob('*')) if p.name != rundir.LOCK}


def data_file(step_dir: pathlib.Path) -> pathlib.Path:
  """The checkpoint's largest data file (the kernel's or its momentum's chunk)."""
  return max((p for p in step_dir.rglob('*') if p.is_file() and p.parent.name == 'd'),
             key=lambda p: (p.stat().st_size, p.name))


def flip_64_bytes(step_dir: pathlib.Path):
  path = data_file(step_dir)
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
  path.write_bytes(bytes(data))


def truncate(step_dir: pathlib.Path):
  path = data_file(step_dir)
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def saved_without_checksums(step_dir: pathlib.Path):
  """The host file as written before checksums were kept."""
  path = step_dir.with_name(f'{step_dir.name}.json')
  host = json.loads(path.read_text())
  del host['files'], host['checksum']
  path.write_text(json.dumps(host))


DAMAGE = {
    'flipped 64 bytes': (flip_64_bytes, 'checksum mismatch of its file ocdbt.process_0/d/'),
    'truncated data file': (truncate, 'checksum mismatch of its file ocdbt.process_0/d/'),
    'truncated, saved without checksums': (
        lambda d: [saved_without_checksums(d), truncate(d)],
        'orbax cannot restore it (ValueError: OUT_OF_RANGE: Error reading "leaves.'),
    'emptied data file': (lambda d: data_file(d).write_bytes(b''),
                          'checksum mismatch of its file ocdbt.process_0/d/'),
    'deleted metadata': (lambda d: (d / '_METADATA').unlink(), 'its file _METADATA is missing'),
    'damaged host file': (lambda d: d.with_name('8.json').write_text('{"step": 8, "sta'),
                          'its host file 8.json is unreadable (JSONDecodeError: '),
}


def resume(config: Config, dataset, echo=QUIET) -> train.Fit:
  return train.fit(config, dataset=dataset, resume=True, echo=echo)


# Orbax's reads of a checkpoint it fails to restore finish after its event loop closed
# (tensorstore's callbacks report 'Event loop is closed'): only without file checksums.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('damage', list(DAMAGE))
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before_with_a_warning(
    tmp_path, interrupted, reference, small_dataset, damage, caplog):
  config = copy_of(interrupted, tmp_path / 'run')
  step_dir = tmp_path / 'run' / 'checkpoint' / '8'
  assert checkpoints.verify(config.workdir, 8) == ''
  harm, why = DAMAGE[damage]
  harm(step_dir)
  metrics = (tmp_path / 'run' / 'metrics.jsonl').read_bytes()
  before = contents(tmp_path / 'run')
  with caplog.at_level(py_logging.WARNING):
    assert checkpoints.resume_step([config], overwrite=False)[0] == 4  # Planning:
  assert contents(tmp_path / 'run') == before  # it changed nothing, metrics.jsonl neither.
  assert (tmp_path / 'run' / 'metrics.jsonl').read_bytes() == metrics
  with caplog.at_level(py_logging.WARNING):
    fit = resume(config, small_dataset)
  warnings = [r.getMessage() for r in caplog.records if 'checkpoint/8' in r.getMessage()]
  assert len(warnings) == 1, warnings  # Once, though planning and training both check.
  assert warnings[0].startswith(f'{step_dir}: {why}'), warnings[0]
  assert warnings[0].endswith('; going on from step 4') and '\n' not in warnings[0]
  assert fit.summary['resumed_from_step'] == 4
  assert numbers(config.workdir) == reference


def test_a_save_killed_midway_leaves_temporaries_the_next_save_removes(
    tmp_path, interrupted, reference, small_dataset, caplog):
  config = copy_of(interrupted, tmp_path / 'run')
  root = tmp_path / 'run' / 'checkpoint'
  shutil.rmtree(root / '8')  # Killed while orbax wrote step 8, and its host file:
  shutil.copytree(interrupted.workdir + '/checkpoint/8', root / '8.orbax-checkpoint-tmp')
  data_file(root / '8.orbax-checkpoint-tmp').unlink()
  (root / '8.json').rename(root / '.8.json.0123456789ab.tmp')
  with caplog.at_level(py_logging.WARNING), pytest.raises(Interrupted):
    resume(config, small_dataset, echo=interrupt_at(10))
  assert not caplog.records  # A save that never finished is no damaged checkpoint.
  assert names(config.workdir) == ['4', '4.json', '8', '8.json']
  assert checkpoints.verify(config.workdir, 8) == ''
  assert resume(config, small_dataset).summary['resumed_from_step'] == 8
  assert numbers(config.workdir) == reference


def test_when_no_checkpoint_can_be_trusted_resume_is_refused_in_one_line_naming_each(
    tmp_path, interrupted, reference, data_dir):
  config = copy_of(interrupted, tmp_path / 'run')
  for step in (4, 8):
    flip_64_bytes(tmp_path / 'run' / 'checkpoint' / str(step))
  before = contents(tmp_path / 'run')
  args = [f'--{k}={",".join(map(str, v)) if isinstance(v, tuple) else v}'
          for k, v in FLAGS.items()] + [f'--data_dir={data_dir}',
                                        f'--workdir={config.workdir}', '--resume']
  refused = launch_here(*args)
  assert refused.returncode == 2, refused.stderr
  line = refused.stderr.strip()
  assert '\n' not in line and line.startswith(
      f'launch.py: error: cannot resume {config.workdir}: none of its checkpoints can be '
      f'trusted: {config.workdir}/checkpoint/8: checksum mismatch of its file '), line
  assert f'{config.workdir}/checkpoint/4: checksum mismatch of its file ' in line
  assert line.endswith('(--overwrite starts afresh)')
  assert contents(tmp_path / 'run') == before  # Nothing deleted or rewritten.
  afresh = launch_here(*args, '--overwrite')
  assert afresh.returncode == 0, afresh.stderr
  assert numbers(config.workdir) == reference


def test_a_run_keeps_its_newest_k_checkpoints(tmp_path, data_dir, small_dataset, reference):
  config = Config(workdir=str(tmp_path / 'run'), data_dir=data_dir,
                  **{**FLAGS, 'checkpoint_every': 2}, keep_checkpoints=3)
  with pytest.raises(Interrupted):  # Checkpoints at steps 2, 4, 6, 8 and 10.
    train.fit(config, dataset=small_dataset, echo=interrupt_at(12))
  assert names(config.workdir) == ['10', '10.json', '6', '6.json', '8', '8.json']
  assert resume(config, small_dataset).summary['resumed_from_step'] == 10
  assert numbers(config.workdir) == reference  # Checkpoints change no number.


class _FullAt:
  """Orbax's checkpointer, but the disk is full when step ``step`` is saved: part of it
  is written, then it fails as tensorstore does."""

  def __init__(self, step: int, real):
    self.step, self.real, self.failing = step, real(), False

  def save(self, path, tree):
    self.failing = pathlib.Path(path).name == str(self.step)
    if self.failing:
      (pathlib.Path(f'{path}.orbax-checkpoint-tmp') / 'd').mkdir(parents=True)
    else:
      self.real.save(path, tree)

  def wait_until_finished(self):
    if self.failing:
      raise ValueError('RESOURCE_EXHAUSTED: Error writing "leaves.0/0.0": Failed to write '
                       "35710 bytes: No space left on device [os_error_code='28']")
    self.real.wait_until_finished()

  def restore(self, path):
    return self.real.restore(path)


def test_a_full_disk_during_a_save_is_one_os_error_and_the_older_checkpoint_stays(
    tmp_path, interrupted, reference, small_dataset, monkeypatch):
  config = copy_of(interrupted, tmp_path / 'run')
  shutil.rmtree(tmp_path / 'run' / 'checkpoint' / '8')  # Stopped after its checkpoint
  (tmp_path / 'run' / 'checkpoint' / '8.json').unlink()  # at step 4.
  real = checkpoints._checkpointer
  monkeypatch.setattr(checkpoints, '_checkpointer', lambda: _FullAt(8, real))
  with pytest.raises(OSError) as raised:
    resume(config, small_dataset)
  assert str(raised.value) == (
      f"[Errno 28] No space left on device: '{config.workdir}/checkpoint/8'")
  monkeypatch.setattr(checkpoints, '_checkpointer', real)
  assert names(config.workdir) == ['4', '4.json']  # Nothing of step 8 left.
  assert checkpoints.verify(config.workdir, 4) == ''
  assert resume(config, small_dataset).summary['resumed_from_step'] == 4
  assert numbers(config.workdir) == reference


@contextlib.contextmanager
def small_disk(path: pathlib.Path, size: str):
  """A tmpfs of ``size`` mounted on ``path`` (root only; skips where it cannot be)."""
  path.mkdir()
  if os.geteuid() != 0 or shutil.which('mount') is None:
    pytest.skip('mounting a tmpfs needs root')
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
                           capture_output=True, text=True)
  if mounted.returncode:
    pytest.skip(f'cannot mount a tmpfs: {mounted.stderr.strip()}')
  try:
    yield path
  finally:
    subprocess.run(['umount', '-l', str(path)], check=False)


def test_a_real_full_disk_during_a_save_is_one_os_error_and_the_older_checkpoint_stays(
    tmp_path):
  state = {'w': jax.random.normal(jax.random.key(0), (256, 256))}  # 256 KiB, random.
  with small_disk(tmp_path / 'disk', '1m') as disk:
    checkpoints.save_group([disk], [state], [{}], 4, keep=2)
    free = shutil.disk_usage(disk).free
    (disk / 'filler').write_bytes(b'\0' * (free - 64 * 1024))  # 64 KiB left.
    with pytest.raises(OSError) as raised:
      checkpoints.save_group([disk], [jax.tree.map(lambda x: -x, state)], [{}], 8, keep=1)
    assert raised.value.errno == errno.ENOSPC and str(raised.value) == (
        f"[Errno 28] No space left on device: '{disk}/checkpoint/8'")
    assert names(disk) == ['4', '4.json']  # No partial step 8, no orbax temporary.
    assert checkpoints.verify(disk, 4) == ''
    np.testing.assert_array_equal(checkpoints.restore_leaves(disk, 4)[0], state['w'])
