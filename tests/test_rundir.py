import json

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
