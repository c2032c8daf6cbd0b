import json
import os
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
  with pytest.raises(json.JSONDecodeError):  # Damage in the middle is not a cut.
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
