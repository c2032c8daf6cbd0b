import struct
import subprocess
import sys

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from conftest import REPO
from fundamentals import tensorboard_events

RECORD = {
    'step': 100, 'train_loss': 1.5, 'train_accuracy': 0.5, 'lr': 0.05,
    'examples_per_sec': 1000.0, 'test_loss': 2.0, 'test_accuracy': 0.4,
    'diagnostics': {
        'grad_norm': 0.7, 'param_norm': 12.0,
        'layers': [{'activation_std': 0.6, 'dead_fraction': 0.25}],
        'params': {'dense/0/kernel': {'update_to_data': -3.0}}},
}


def read_events(path):
  """Events of a TFRecord file: [u64 length][u32 crc][data][u32 crc] repeated."""
  events, data = [], path.read_bytes()
  offset = 0
  while offset < len(data):
    (length,) = struct.unpack('<Q', data[offset:offset + 8])
    events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
    offset += 12 + length + 4
  return events


def test_scalar_tags_group_statistics_across_layers():
  assert tensorboard_events.scalar_tags(RECORD) == {
      'loss/train': 1.5, 'loss/test': 2.0, 'accuracy/train': 0.5, 'accuracy/test': 0.4,
      'optimizer/lr': 0.05, 'throughput/examples_per_sec': 1000.0,
      'norm/grad': 0.7, 'norm/param': 12.0, 'activation_std/layer0': 0.6,
      'dead_fraction/layer0': 0.25, 'update_to_data/dense/0/kernel': -3.0}


def test_written_events_read_back(tmp_path):
  writer = tensorboard_events.create_writer(tmp_path)
  tensorboard_events.write_record(writer, RECORD)
  values = np.arange(100.0)
  tensorboard_events.write_histograms(
      writer, 100, {'activation': [values, np.array([np.nan])],
                    'weight': {'output/kernel': values}})
  writer.close()
  [path] = tmp_path.glob('events.out.tfevents.*')
  scalars, histograms = {}, {}
  for event in read_events(path):
    for v in event.summary.value:
      if v.HasField('histo'):
        histograms[v.tag] = (event.step, v.histo)
      else:
        scalars[v.tag] = (event.step, v.simple_value)
  assert scalars == {tag: (100, pytest.approx(value)) for tag, value in
                     tensorboard_events.scalar_tags(RECORD).items()}
  assert set(histograms) == {'activation/layer0', 'weight/output/kernel'}  # NaNs: none
  step, histo = histograms['activation/layer0']
  assert step == 100 and histo.num == 100 and histo.min == 0 and histo.max == 99
  assert histo.sum == pytest.approx(values.sum())


def test_overwrite_removes_the_previous_runs_events(tmp_path):
  old = tmp_path / 'events.out.tfevents.1.old'
  old.write_bytes(b'')
  writer = tensorboard_events.create_writer(tmp_path, overwrite=True)
  writer.close()
  assert not old.exists() and len(list(tmp_path.glob('events.out.tfevents.*'))) == 1
  old.write_bytes(b'')
  tensorboard_events.create_writer(tmp_path).close()
  assert old.exists()  # kept without overwrite


def test_writing_events_does_not_import_tensorflow(tmp_path):
  code = ('import sys; from fundamentals import tensorboard_events as t; '
          f'w = t.create_writer({str(tmp_path)!r}); '
          't.write_record(w, {"step": 1, "train_loss": 1.0}); w.close(); '
          'assert not [m for m in sys.modules if m.startswith("tensorflow")], "TF imported"')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True)
  assert result.returncode == 0, result.stderr
