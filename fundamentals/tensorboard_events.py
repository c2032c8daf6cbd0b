"""TensorBoard event files of a run, written with tensorboardX (no TensorFlow needed).

``tensorboard --logdir runs`` then shows every run: losses and accuracy, learning
rate, throughput, the per-layer and per-matrix diagnostics as scalars grouped by
statistic (``saturated_fraction/layer0``, ``update_to_data/dense/0/kernel``), and
histograms of the sampled activations, gradients and weights.
"""

import math
import pathlib
from typing import Any

import numpy as np

HISTOGRAM_BINS = 50
"""Equal-width bins (NumPy's); TensorBoard's own exponential buckets cost 1.5× as much."""

_RECORD_TAGS = {
    'train_loss': 'loss/train',
    'validation_loss': 'loss/validation',
    'test_loss': 'loss/test',
    'train_accuracy': 'accuracy/train',
    'validation_accuracy': 'accuracy/validation',
    'test_accuracy': 'accuracy/test',
    'lr': 'optimizer/lr',
    'examples_per_sec': 'throughput/examples_per_sec',
}


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
    tags['norm/grad'] = diagnostics['grad_norm']
    tags['norm/param'] = diagnostics['param_norm']
    for i, layer in enumerate(diagnostics['layers']):
      tags.update({f'{stat}/layer{i}': v for stat, v in layer.items()})
    for name, stats in diagnostics['params'].items():
      tags.update({f'{stat}/{name}': v for stat, v in stats.items()})
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
