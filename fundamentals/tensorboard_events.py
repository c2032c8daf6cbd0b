"""TensorBoard event files of a run, written with tensorboardX (no TensorFlow needed).

``tensorboard --logdir runs`` then shows every run: losses and accuracy, learning
rate, throughput, the per-layer and per-matrix diagnostics as scalars grouped by
statistic (``saturated_fraction/layer0``, ``update_to_data_log10/dense/0/kernel``),
histograms of the sampled activations, gradients and weights; the doctor's findings
(Text, at the step they were made), the run's figures (Images) and its config with
its final metrics (HParams), all in the run's own event file.

A tag's first part says its unit where the name alone does not: ``loss_nats`` (the
cross-entropy, natural log), ``accuracy_fraction`` (0 to 1), ``norm_l2``,
``update_to_data_log10`` (log10 of std Δw / std w: −3 is healthy), ``grad_to_data_ratio``.
``metrics.jsonl`` keeps its own keys.
"""

import math
import pathlib
from typing import Any

import numpy as np

from fundamentals import config as config_lib
from fundamentals import rundir

HISTOGRAM_BINS = 50
"""Equal-width bins (NumPy's); TensorBoard's own exponential buckets cost 1.5× as much."""

_RECORD_TAGS = {
    'train_loss': 'loss_nats/train',
    'validation_loss': 'loss_nats/validation',
    'test_loss': 'loss_nats/test',
    'train_accuracy': 'accuracy_fraction/train',
    'validation_accuracy': 'accuracy_fraction/validation',
    'test_accuracy': 'accuracy_fraction/test',
    'lr': 'optimizer/lr',
    'examples_per_sec': 'throughput/examples_per_sec',
}
# Diagnostics whose name does not say their unit (the others are std, mean, fraction).
_STAT_TAGS = {'update_to_data': 'update_to_data_log10', 'grad_to_data': 'grad_to_data_ratio'}
# summary.json's final and best metrics: the HParams plugin's metrics, scalars at the end.
_SUMMARY_METRICS = {
    f'{which}_{split}_{metric}': f'{unit}/{which}_{split}'
    for which in ('final', 'best') for split in ('train', 'validation', 'test')
    for metric, unit in (('loss', 'loss_nats'), ('accuracy', 'accuracy_fraction'))}
# The colour channels of a PNG by its IHDR colour type (grey, RGB, palette, grey+α, RGBA).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


class LazyWriter:
  """A ``tensorboardX.SummaryWriter`` made when first used: importing tensorboardX
  (which imports PyTorch whenever it is installed) takes seconds that a run's first
  step need not wait for."""

  def __init__(self, **kwargs):
    self._kwargs = kwargs
    self._writer = None

  def __getattr__(self, name: str):
    if self._writer is None:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writer = SummaryWriter(**self._kwargs)
    return getattr(self._writer, name)


def create_writer(logdir: str | pathlib.Path, *, overwrite: bool = False,
                  purge_step: int | None = None) -> LazyWriter:
  """A writer of ``events.out.tfevents.*`` files in ``logdir`` (the run directory).

  With ``overwrite``, the event files of a previous run there are deleted first:
  TensorBoard would otherwise merge both runs into one set of curves. ``purge_step``
  (a resumed run) tells TensorBoard to drop the earlier files' events from that step on.
  """
  if overwrite:
    for path in pathlib.Path(logdir).glob('events.out.tfevents.*'):
      path.unlink()
  return LazyWriter(logdir=str(logdir), purge_step=purge_step)


def scalar_tags(record: dict[str, Any]) -> dict[str, float]:
  """TensorBoard tag → value for a ``metrics.jsonl`` record (diagnostics included)."""
  tags = {tag: record[key] for key, tag in _RECORD_TAGS.items() if key in record}
  diagnostics = record.get('diagnostics')
  if diagnostics:
    tags['norm_l2/grad'] = diagnostics['grad_norm']
    tags['norm_l2/param'] = diagnostics['param_norm']
    for i, layer in enumerate(diagnostics['layers']):
      tags.update({f'{_STAT_TAGS.get(stat, stat)}/layer{i}': v for stat, v in layer.items()})
    for name, stats in diagnostics['params'].items():
      tags.update({f'{_STAT_TAGS.get(stat, stat)}/{name}': v for stat, v in stats.items()})
  return tags


def write_record(writer: LazyWriter, record: dict[str, Any]):
  """The record's finite scalars (a diverged run's NaNs are in metrics.jsonl)."""
  for tag, value in scalar_tags(record).items():
    if math.isfinite(value):
      writer.add_scalar(tag, value, record['step'])


def write_histograms(writer: LazyWriter, step: int, samples: dict[str, Any]):
  """One histogram per sampled tensor: ``activation/layer0``, ``weight/dense/0/kernel``."""
  for kind, values in samples.items():
    named = (values.items() if isinstance(values, dict)
             else ((f'layer{i}', v) for i, v in enumerate(values)))
    for name, v in named:
      v = np.asarray(v)
      v = v[np.isfinite(v)]
      if v.size:
        writer.add_histogram(f'{kind}/{name}', v, step, bins=HISTOGRAM_BINS)


def write_findings(writer: LazyWriter, phase: str, findings: list[dict[str, Any]], *,
                   step: int):
  """The doctor's findings as Markdown text, ``doctor/<phase>`` at ``step`` (the init's
  at 0, the end's at the last step)."""
  text = '\n\n'.join(f'**{f["severity"]}** `{f["rule"]}`: {f["message"]}  \n'
                      f'fix: {f["suggestion"]}' for f in findings)
  writer.add_text(f'doctor/{phase}', text or 'no findings', step)


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
  """TensorBoard tag → value of ``summary.json``'s finite final and best metrics."""
  return {tag: float(summary[key]) for key, tag in _SUMMARY_METRICS.items()
          if rundir.finite(summary.get(key))}


def write_hparams(writer: LazyWriter, config: dict[str, Any], summary: dict[str, Any],
                  *, step: int):
  """The run's config and final metrics for TensorBoard's HParams plugin.

  ``SummaryWriter.add_hparams`` writes them as a run of their own, in a subdirectory
  named by the time; written here with its summaries (``tensorboardX.summary.hparams``)
  into the run's own event file, so that each run directory is one row of the table.
  The metrics are scalars at ``step`` (:func:`summary_metrics`); a diverged run's
  session ends with the status FAILURE.
  """
  # Here, not at the top: tensorboardX (and PyTorch, which it imports) loads with the
  # writer's first use (LazyWriter).
  from tensorboardX import summary as summary_lib  # pylint: disable=g-import-not-at-top
  from tensorboardX.proto import api_pb2, plugin_hparams_pb2  # pylint: disable=g-import-not-at-top
  hparams = {k: v if isinstance(v, (bool, int, float, str)) else config_lib.format_value(v)
             for k, v in config.items() if v is not None}
  metrics = summary_metrics(summary)
  experiment, session_start, session_end = summary_lib.hparams(hparams, metrics)
  if summary.get('status') == 'diverged':
    plugin_data = session_end.value[0].metadata.plugin_data
    content = plugin_hparams_pb2.HParamsPluginData.FromString(plugin_data.content)
    content.session_end_info.status = api_pb2.Status.Value('STATUS_FAILURE')
    plugin_data.content = content.SerializeToString()
  for summary_proto in (experiment, session_start, session_end):
    writer.file_writer.add_summary(summary_proto, step)
  for tag, value in metrics.items():
    writer.add_scalar(tag, value, step)


def write_figures(writer: LazyWriter, workdir: str | pathlib.Path, names, *, step: int):
  """The run's PNG figures (file names in ``workdir``) as images ``figures/<name>``.

  The PNG bytes go in as they are (a ``Summary.Image``), not decoded and encoded again
  as ``add_image`` would.
  """
  # With the writer, as in write_hparams.
  from tensorboardX.proto.summary_pb2 import Summary  # pylint: disable=g-import-not-at-top
  for name in names:
    path = pathlib.Path(workdir) / name
    data = path.read_bytes()
    width, height = (int.from_bytes(data[i:i + 4], 'big') for i in (16, 20))
    image = Summary.Image(height=height, width=width,
                          colorspace=_PNG_CHANNELS.get(data[25], 4),
                          encoded_image_string=data)
    writer.file_writer.add_summary(
        Summary(value=[Summary.Value(tag=f'figures/{path.stem}', image=image)]), step)
