import struct
import subprocess
import sys

import numpy as np
import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.proto import plugin_hparams_pb2

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


def test_scalar_tags_group_statistics_across_layers_and_say_their_units():
  assert tensorboard_events.scalar_tags(RECORD) == {
      'loss_nats/train': 1.5, 'loss_nats/test': 2.0, 'accuracy_fraction/train': 0.5,
      'accuracy_fraction/test': 0.4, 'optimizer/lr': 0.05,
      'throughput/examples_per_sec': 1000.0, 'norm_l2/grad': 0.7, 'norm_l2/param': 12.0,
      'activation_std/layer0': 0.6, 'dead_fraction/layer0': 0.25,
      'update_to_data_log10/dense/0/kernel': -3.0}


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


FINDING = {'rule': 'update_to_data', 'severity': 'warning', 'evidence': {},
           'message': 'updates are large', 'suggestion': 'lower the learning rate'}


def png(path, *, width: int, height: int):
  """A PNG of ``width`` × ``height`` RGBA pixels, as matplotlib writes figures."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  Figure(figsize=(width / 100, height / 100)).savefig(path, dpi=100)
  return path


def summaries(path):
  """Tag → [(step, Summary.Value)] of an event file."""
  values = {}
  for event in read_events(path):
    for v in event.summary.value:
      values.setdefault(v.tag, []).append((event.step, v))
  return values


def hparams_plugin_data(value) -> plugin_hparams_pb2.HParamsPluginData:
  assert value.metadata.plugin_data.plugin_name == 'hparams'
  return plugin_hparams_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)


@pytest.mark.parametrize('status', ['completed', 'diverged'])
def test_findings_figures_and_hparams_land_in_the_runs_own_event_file(tmp_path, status):
  writer = tensorboard_events.create_writer(tmp_path)
  tensorboard_events.write_findings(writer, 'init', [], step=0)
  tensorboard_events.write_findings(writer, 'end', [FINDING], step=40)
  png(tmp_path / 'loss.png', width=300, height=200)
  tensorboard_events.write_figures(writer, tmp_path, ['loss.png'], step=40)
  config = {'hidden': (32, 16), 'lr': 0.05, 'batchnorm': True, 'init': 'kaiming',
            'data_dir': None}
  summary = {'status': status, 'final_test_loss': 1.25, 'final_test_accuracy': 0.5,
             'final_train_loss': float('nan'), 'best_validation_loss': 1.1, 'steps': 40}
  tensorboard_events.write_hparams(writer, config, summary, step=40)
  writer.close()
  [path] = tmp_path.glob('events.out.tfevents.*')  # One file, no hparams subdirectory.
  assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []
  values = summaries(path)

  # The doctor's findings, as text at the step they were made.
  [(step, init)] = values['doctor/init/text_summary']  # tensorboardX's text tag.
  assert step == 0 and init.tensor.string_val == [b'no findings']
  assert init.metadata.plugin_data.plugin_name == 'text'
  [(step, end)] = values['doctor/end/text_summary']
  text = end.tensor.string_val[0].decode()
  assert step == 40 and '`update_to_data`' in text and 'lower the learning rate' in text

  # The figure, its PNG bytes as they are.
  [(step, figure)] = values['figures/loss']
  assert step == 40 and figure.image.encoded_image_string == (tmp_path / 'loss.png').read_bytes()
  assert (figure.image.width, figure.image.height, figure.image.colorspace) == (300, 200, 4)

  # The HParams plugin: the config (tuples as flags write them, None left out), the
  # finite metrics as its metrics and as scalars at the last step, the run's status.
  [(_, experiment)] = values['_hparams_/experiment']
  metrics = {'loss_nats/final_test': 1.25, 'accuracy_fraction/final_test': 0.5,
             'loss_nats/best_validation': 1.1}
  infos = hparams_plugin_data(experiment).experiment
  assert sorted(m.name.tag for m in infos.metric_infos) == sorted(metrics)
  assert sorted(h.name for h in infos.hparam_infos) == ['batchnorm', 'hidden', 'init', 'lr']
  [(_, start)] = values['_hparams_/session_start_info']
  given = hparams_plugin_data(start).session_start_info.hparams
  assert given['hidden'].string_value == '32,16' and given['lr'].number_value == 0.05
  assert given['batchnorm'].bool_value and given['init'].string_value == 'kaiming'
  for tag, value in metrics.items():
    [(step, scalar)] = values[tag]
    assert step == 40 and scalar.simple_value == pytest.approx(value)
  [(_, end_info)] = values['_hparams_/session_end_info']
  assert hparams_plugin_data(end_info).session_end_info.status == (
      1 if status == 'completed' else 2)  # STATUS_SUCCESS, STATUS_FAILURE
