import errno
import hashlib
import json
import logging as py_logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fundamentals import checkpoints
from fundamentals import rundir
from fundamentals.config import Config


def state(seed: int):
  keys = jax.random.split(jax.random.key(seed), 2)
  return {'step': jnp.array(seed, jnp.int32),
          'params': {'w': jax.random.normal(keys[0], (3, 2))},
          'key': keys[1]}


def test_save_and_restore_give_back_the_state_with_its_key(tmp_path):
  saved = state(7)
  checkpoints.save(tmp_path, 10, saved, host={'status': 'completed'})
  files = checkpoints.file_digests(tmp_path / 'checkpoint' / '10')
  assert '_METADATA' in files and len(files) > 3
  assert checkpoints.available(tmp_path) == {10: {
      'step': 10, 'status': 'completed', 'files': files,
      'checksum': checkpoints.checksum(checkpoints.raw_leaves(saved))}}
  restored = checkpoints.from_raw_leaves(checkpoints.restore_leaves(tmp_path, 10),
                                         like=state(0))
  np.testing.assert_array_equal(restored['params']['w'], saved['params']['w'])
  assert restored['step'] == 7 and restored['step'].dtype == np.int32
  np.testing.assert_array_equal(jax.random.key_data(restored['key']),
                                jax.random.key_data(saved['key']))
  assert jax.random.uniform(restored['key']) == jax.random.uniform(saved['key'])


def test_older_checkpoints_go_only_when_pruned_and_half_saved_ones_do_not_count(tmp_path):
  checkpoints.save(tmp_path, 10, state(1), host={})
  checkpoints.save(tmp_path, 20, state(2), host={})
  assert sorted(checkpoints.available(tmp_path)) == [10, 20]  # A group prunes last.
  checkpoints.prune(tmp_path, keep=20)  # By default, step 20 alone stays.
  assert sorted(p.name for p in (tmp_path / 'checkpoint').iterdir()) == ['20', '20.json']
  (tmp_path / 'checkpoint' / '30').mkdir()  # Killed before its host file was written.
  assert sorted(checkpoints.available(tmp_path)) == [20]
  checkpoints.remove(tmp_path)
  assert checkpoints.available(tmp_path) == {} and not (tmp_path / 'checkpoint').exists()


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
  checkpoints.save(tmp_path, 5, state(1), host={})
  with pytest.raises(ValueError, match='a different model or optimizer'):
    checkpoints.from_raw_leaves(checkpoints.restore_leaves(tmp_path, 5),
                                like={'a': jnp.zeros(2), 'b': jnp.zeros(3), 'c': jnp.zeros(1)})


def names(workdir: pathlib.Path) -> list[str]:
  return sorted(p.name for p in (workdir / 'checkpoint').iterdir())


def test_the_checksum_is_sha256_of_dtypes_shapes_and_bytes_and_sees_one_bit():
  a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.array(7, np.uint32)
  reference = hashlib.sha256(b'<f4(2, 3);' + a.tobytes() + b'<u4();' + b.tobytes())
  assert checkpoints.checksum([a, b]) == 'sha256:' + reference.hexdigest()
  flipped = a.copy()
  flipped.view(np.uint32)[1, 2] ^= 1  # The lowest bit of one mantissa.
  others = [[flipped, b], [a.reshape(3, 2), b], [a.astype(np.int32), b], [b, a]]
  assert len({checkpoints.checksum(x) for x in [[a, b], *others]}) == 5


def test_group_saves_keep_the_newest_k_steps_and_leave_newer_ones_and_clean_stale_ones(
    tmp_path):
  for step in (4, 8, 12):
    checkpoints.save_group([tmp_path], [state(step)], [{}], step, keep=2)
  assert names(tmp_path) == ['12', '12.json', '8', '8.json']
  root = tmp_path / 'checkpoint'
  (root / '16.orbax-checkpoint-tmp').mkdir()  # Left by a save killed at step 16,
  (root / '.16.json.0123456789ab.tmp').write_text('{')  # or while writing its host file.
  (root / '2').mkdir()  # Killed before its host file was written.
  checkpoints.save_group([tmp_path], [state(5)], [{}], 16, keep=3)
  assert names(tmp_path) == ['12', '12.json', '16', '16.json', '8', '8.json']
  checkpoints.save(tmp_path, 24, state(6), host={})  # A damaged one a resume fell back from.
  checkpoints.save_group([tmp_path], [state(7)], [{}], 20, keep=1)
  assert names(tmp_path) == ['20', '20.json', '24', '24.json']
  with pytest.raises(ValueError, match='newest=0 must be >= 1'):
    checkpoints.prune(tmp_path, keep=20, newest=0)


def _flip_saved_value(workdir: pathlib.Path, step: int):
  """Rewrites step's arrays with one value changed, keeping its host file: what a flipped
  byte in the data file restores as."""
  leaves = checkpoints.restore_arrays(workdir / 'checkpoint' / str(step))
  leaves[-1] = leaves[-1] + 1
  checkpoints.save_arrays(workdir / 'checkpoint' / str(step), leaves)


def _edit_host(workdir: pathlib.Path, step: int, edit):
  path = workdir / 'checkpoint' / f'{step}.json'
  host = json.loads(path.read_text())
  edit(host)
  path.write_text(json.dumps(host))


def test_a_checkpoint_verifies_only_whole_and_with_its_checksums(tmp_path):
  for step in (4, 8, 12):
    checkpoints.save(tmp_path, step, state(step), host={})
  assert checkpoints.verify(tmp_path, 8) == ''
  _flip_saved_value(tmp_path, 8)
  assert checkpoints.verify(tmp_path, 8).startswith(
      'checksum mismatch of its file ')  # Seen before orbax reads it,
  _edit_host(tmp_path, 8, lambda host: host.pop('files'))
  assert checkpoints.verify(tmp_path, 8).startswith(  # and in the values orbax restores.
      'checksum mismatch (saved sha256:')
  with pytest.raises(ValueError, match=rf'^{tmp_path}/checkpoint/8: checksum mismatch'):
    checkpoints.restore_leaves(tmp_path, 8)
  (tmp_path / 'checkpoint' / '4' / '_METADATA').unlink()
  assert checkpoints.verify(tmp_path, 4) == 'its file _METADATA is missing'
  _edit_host(tmp_path, 4, lambda host: host.pop('files'))
  assert checkpoints.verify(tmp_path, 4).startswith(
      'orbax cannot restore it (FileNotFoundError: Metadata file (named _METADATA)')
  # Saved before checksums were kept: trusted once it restores.
  _edit_host(tmp_path, 12, lambda host: [host.pop('files'), host.pop('checksum')])
  assert checkpoints.verify(tmp_path, 12) == ''
  host = tmp_path / 'checkpoint' / '12.json'
  host.write_text('{"step": 12, "sta')
  assert checkpoints.verify(tmp_path, 12).startswith(
      'its host file 12.json is unreadable (JSONDecodeError: ')
  host.write_text('{"step": 4}')
  assert checkpoints.verify(tmp_path, 12) == (
      'its host file 12.json is damaged (not the host side of step 12)')
  host.write_text('{"step": 12, "files": {"_METADATA": 7}}')
  assert checkpoints.verify(tmp_path, 12) == (
      'its host file 12.json is damaged (its checksums are not strings)')
  assert sorted(checkpoints.available(tmp_path)) == [4, 8]


def test_orbax_errors_of_the_disk_become_one_os_error_naming_path_and_errno():
  path = pathlib.Path('/runs/a/checkpoint/8')
  full = ValueError('RESOURCE_EXHAUSTED: Error writing "leaves.0/0.0": Failed to write 35710 '
                    "bytes to file 11: No space left on device [os_error_code='28']")
  assert str(checkpoints.disk_error(full, path)) == (
      "[Errno 28] No space left on device: '/runs/a/checkpoint/8'")
  assert checkpoints.disk_error(ValueError('RESOURCE_EXHAUSTED: out'), path).errno == errno.ENOSPC
  wrapped = RuntimeError('commit failed')
  wrapped.__cause__ = PermissionError(errno.EROFS, 'Read-only file system', '/tmp/x.tmp')
  error = checkpoints.disk_error(wrapped, path)
  assert (error.errno, error.filename) == (errno.EROFS, str(path))
  assert checkpoints.disk_error(ValueError('a bug, not the disk'), path) is None


def test_a_full_disk_during_a_save_leaves_the_older_checkpoint_and_no_partial_one(
    tmp_path, monkeypatch):
  checkpoints.save(tmp_path, 4, state(1), host={})
  real = checkpoints._checkpointer

  class Full:  # Writes part of the step, then fails as tensorstore does.
    def save(self, path, tree):
      del tree
      (pathlib.Path(f'{path}.orbax-checkpoint-tmp') / 'd').mkdir(parents=True)

    def wait_until_finished(self):
      raise ValueError("RESOURCE_EXHAUSTED: Failed writing [os_error_code='28']")

  monkeypatch.setattr(checkpoints, '_checkpointer', Full)
  with pytest.raises(OSError) as raised:
    checkpoints.save_group([tmp_path], [state(2)], [{}], 8, keep=1)
  assert str(raised.value) == (
      f"[Errno 28] No space left on device: '{tmp_path}/checkpoint/8'")
  monkeypatch.setattr(checkpoints, '_checkpointer', real)
  assert names(tmp_path) == ['4', '4.json'] and checkpoints.verify(tmp_path, 4) == ''


def _run_dir(path: pathlib.Path, **overrides) -> Config:
  config = Config(workdir=str(path), hidden=(8,), **overrides)
  path.mkdir()
  rundir.write_json(path / 'config.json', config.to_dict())
  return config


def test_resume_goes_on_from_the_newest_step_every_run_can_trust_warning_once(
    tmp_path, caplog):
  a, b = _run_dir(tmp_path / 'a'), _run_dir(tmp_path / 'b')
  for step in (4, 8, 12):
    checkpoints.save_group([a.workdir, b.workdir], [state(1), state(2)], [{}, {}], step,
                           keep=3)
  _flip_saved_value(tmp_path / 'a', 12)
  (tmp_path / 'b' / 'checkpoint' / '8.json').write_text('')
  before = {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()}
  with caplog.at_level(py_logging.WARNING):
    assert checkpoints.resume_step([a, b], overwrite=False)[0] == 4
    assert checkpoints.resume_step([a, b], overwrite=False)[0] == 4  # Warned once.
  assert {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()} == before
  warnings = [r.getMessage() for r in caplog.records]
  assert len(warnings) == 2, warnings
  assert warnings[0].startswith(f'{a.workdir}/checkpoint/12: checksum mismatch of its file ')
  assert warnings[0].endswith('; going on from step 4')
  assert warnings[1] == (f'{b.workdir}/checkpoint/8: its host file 8.json is unreadable '
                         '(JSONDecodeError: Expecting value: line 1 column 1 (char 0)); '
                         'going on from step 4')
  _flip_saved_value(tmp_path / 'b', 4)
  with pytest.raises(FileExistsError) as refused:
    checkpoints.resume_step([a, b], overwrite=False)
  message = str(refused.value)
  assert message.startswith(
      f'cannot resume {a.workdir}, {b.workdir}: no checkpoint step these runs share can be '
      f'trusted: {a.workdir}/checkpoint/12: checksum mismatch')
  assert f'{b.workdir}/checkpoint/8: its host file' in message
  assert f'{b.workdir}/checkpoint/4: checksum mismatch' in message
  assert message.endswith('(--overwrite starts afresh)') and '\n' not in message
  assert checkpoints.resume_step([a, b], overwrite=True) == (0, [])


def test_a_run_whose_only_host_file_is_damaged_is_not_said_to_have_saved_none(tmp_path):
  config = _run_dir(tmp_path / 'a')
  checkpoints.save(config.workdir, 4, state(1), host={})
  (tmp_path / 'a' / 'checkpoint' / '4.json').write_text('[1, 2]')
  found, why = checkpoints.resumable(config)
  assert found == {} and why == (
      f'none of its checkpoints can be trusted: {config.workdir}/checkpoint/4: its host '
      'file 4.json is damaged (not the host side of step 4)')
  with pytest.raises(FileExistsError, match='none of its checkpoints can be trusted'):
    checkpoints.resume_step([config], overwrite=False)


@pytest.mark.parametrize('summary, why', [
    ({'status': 'interrupted', 'steps': 4}, ''),
    ({'status': 'completed'}, 'that run finished'),
    ({'status': 'diverged'}, 'that run finished'),
    ('{"status": "interr', 'its summary.json is unreadable (JSONDecodeError: '),
])
def test_a_run_stopped_gracefully_is_resumable_and_any_other_summary_is_finished(
    tmp_path, summary, why):
  config = _run_dir(tmp_path / 'a')
  checkpoints.save(config.workdir, 4, state(1), host={})
  path = tmp_path / 'a' / 'summary.json'
  path.write_text(summary if isinstance(summary, str) else json.dumps(summary))
  found, reason = checkpoints.resumable(config)
  assert reason.startswith(why) and (sorted(found) == [4]) == (not why)


def test_pruning_never_keeps_a_damaged_checkpoint_in_place_of_a_good_one(tmp_path):
  for step in (10, 13):
    checkpoints.save_group([tmp_path], [state(step)], [{}], step, keep=2)
  _flip_saved_value(tmp_path, 13)  # An off-schedule step a resumed run fell back from.
  assert checkpoints.verify(tmp_path, 13) and not checkpoints.verify(tmp_path, 10)
  checkpoints.save_group([tmp_path], [state(15)], [{}], 15, keep=2)
  assert names(tmp_path) == ['10', '10.json', '15', '15.json']
