import json
import os
import pathlib
import stat

import pytest

from fundamentals import rundir


def test_jsonl_round_trips_and_a_last_line_cut_short_is_left_out(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  records = [{'step': 1, 'loss': 2.5}, {'step': 2, 'loss': float('nan')}]
  rundir.write_jsonl(path, records)
  assert rundir.read_jsonl(path) == [{'step': 1, 'loss': 2.5}, {'step': 2, 'loss': 'nan'}]
  rundir.append_jsonl(path, {'step': 3, 'loss': 1.0})
  with open(path, 'a') as f:
    f.write('{"step": 4, "lo')  # Killed while appending.
  assert [r['step'] for r in rundir.read_jsonl(path)] == [1, 2, 3]
  path.write_text('{"step": 1}\n{"step": \n{"step": 3}\n')
  with pytest.raises(ValueError, match=(  # Damage in the middle is not a cut.
      rf'^{path}: line 2 is not JSON \(Expecting value at column 10\); restore')):
    rundir.read_jsonl(path)


@pytest.mark.parametrize('umask', [0o022, 0o077])
def test_written_files_get_the_mode_of_a_plain_open(tmp_path, umask):
  old = os.umask(umask)
  try:
    (tmp_path / 'plain.png').write_bytes(b'')  # How a figure gets its mode.
    rundir.write_json(tmp_path / 'summary.json', {'loss': 1.0})
    rundir.write_jsonl(tmp_path / 'metrics.jsonl', [{'step': 1}])
    rundir.write_text(tmp_path / 'report.md', '# report\n')
  finally:
    os.umask(old)
  modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
  assert modes == dict.fromkeys(['plain.png', 'summary.json', 'metrics.jsonl', 'report.md'],
                                0o666 & ~umask)  # 0o644 with the usual umask: readable.


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / 'summary.json'
  rundir.write_json(path, {'loss': 1.0})
  with pytest.raises(TypeError):
    rundir.write_json(path, {'loss': object()})  # Not JSON.
  assert json.loads(path.read_text()) == {'loss': 1.0}
  assert [p.name for p in tmp_path.iterdir()] == ['summary.json']


def test_a_claim_locks_the_directory_until_its_last_release(tmp_path):
  import fcntl  # pylint: disable=g-import-not-at-top

  def lockable() -> bool:  # As another process sees it: a second open file's flock.
    with open(tmp_path / 'run' / rundir.LOCK) as f:
      try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        return False
      return True

  path = rundir.claim(tmp_path / 'run')  # Made if missing.
  holder = json.loads((path / rundir.LOCK).read_text())
  assert holder['pid'] == os.getpid() and holder['command']
  rundir.claim(tmp_path / 'run' / '.')  # Again, under another name: counted.
  assert rundir.holds(path) and not lockable()
  rundir.release(path)
  assert rundir.holds(path) and not lockable()
  rundir.release(path)
  assert not rundir.holds(path) and lockable()
  rundir.release(path)  # Not held: nothing to do.


def test_a_write_that_fails_names_the_file_and_leaves_no_half_of_it(tmp_path, monkeypatch):
  import errno  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'metrics.jsonl'
  rundir.append_jsonl(path, {'step': 1})
  before = path.read_bytes()
  real_write = os.write

  def full_disk(fd, data):  # Half the record fits, then the disk is full.
    if len(data) > 4:
      return real_write(fd, bytes(data[:len(data) // 2]))
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, 'write', full_disk)
  with pytest.raises(OSError) as info:
    rundir.append_jsonl(path, {'step': 2, 'train_loss': 1.5})
  assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
  assert str(path) in str(info.value) and 'No space left' in str(info.value)
  monkeypatch.undo()
  assert path.read_bytes() == before  # Cut back: no half record for a later append.
  rundir.append_jsonl(path, {'step': 2})
  assert rundir.read_jsonl(path) == [{'step': 1}, {'step': 2}]

  summary = tmp_path / 'summary.json'
  rundir.write_json(summary, {'loss': 1.0})

  class FullFile:  # What open() gives on a full disk: writes that fail.
    def __init__(self, file):
      self.file = file
    def __enter__(self):
      return self
    def __exit__(self, *exc):
      self.file.close()
    def write(self, text):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(rundir, 'open', lambda *a: FullFile(open(*a)), raising=False)
  with pytest.raises(OSError) as info:
    rundir.write_json(summary, {'loss': 2.0})
  assert info.value.errno == errno.ENOSPC and info.value.filename == str(summary)
  assert json.loads(summary.read_text()) == {'loss': 1.0}  # The old file, whole.
  assert sorted(p.name for p in tmp_path.iterdir()) == ['metrics.jsonl', 'summary.json']


def test_a_bad_record_line_is_named_with_its_number(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_bytes(b'{"step": 1}\n\n[1, 2]\n{"step": 3}\n')
  with pytest.raises(ValueError, match=rf'^{path}: line 3 is not a record'):
    rundir.read_jsonl(path)
  path.write_bytes(b'{"step": 1}\n\xff\xfe\n{"step": 3}\n')  # Not text at all.
  with pytest.raises(ValueError, match=rf'^{path}: line 2 is not JSON \('):
    rundir.read_jsonl(path)
  path.write_bytes(b'{"step": 1}\n{"step": 2}')  # Whole, but its newline was cut.
  assert rundir.read_jsonl(path) == [{'step': 1}, {'step': 2}]


def test_a_workdir_that_cannot_be_written_is_refused_before_anything(tmp_path, monkeypatch):
  (tmp_path / 'file').write_text('x')
  with pytest.raises(NotADirectoryError, match=r'file is a file, not a folder'):
    rundir.check_available(tmp_path / 'file' / 'run')
  sweep_dir = tmp_path / 'sweep'
  sweep_dir.mkdir()
  (sweep_dir / 'sweep.json').write_text('{}')
  with pytest.raises(FileExistsError, match='holds a sweep or experiment'):
    rundir.check_available(sweep_dir)
  real_access = os.access  # Root may write anywhere: a read-only folder, simulated.
  monkeypatch.setattr(os, 'access', lambda p, mode: (
      False if pathlib.Path(p) == tmp_path / 'locked' else real_access(p, mode)))
  (tmp_path / 'locked').mkdir()
  for workdir in (tmp_path / 'locked', tmp_path / 'locked' / 'new' / 'run'):
    with pytest.raises(PermissionError, match=(
        rf'^--workdir={workdir} cannot be written: {tmp_path / "locked"} is not writable '
        r'\(EACCES')):
      rundir.check_available(workdir)
  assert list((tmp_path / 'locked').iterdir()) == []
