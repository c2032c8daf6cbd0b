"""Evaluates a run's kept model: ``--experiment=evaluate --from=runs/X``.

Loads ``runs/X/model/`` (``fundamentals.saved_model``: the best model on the
validation split when the run kept one, else the final one; ``--model`` chooses) and
evaluates it on the splits of a dataset: by default the data the run trained on (its
config's dataset, data_dir, image size and validation fraction), or any other given by
``--dataset`` / ``--data_dir`` (an image folder with the same classes). Inputs are
normalized with the statistics of the run's *training* split, as it was trained.

Writes, per split, the loss, accuracy, per-class accuracy and confusion matrix
(``evaluation/measurement.json``), the confusion-matrix and misclassified-examples
figures, and ``report.md`` with the table; the loss of the run's own test split is
compared with the one it recorded.
"""

import dataclasses
import pathlib
import types
from typing import Any

import numpy as np

from fundamentals import losses
from fundamentals import plots
from fundamentals import report
from fundamentals import runner
from fundamentals import runtime
from fundamentals import saved_model
from fundamentals import train
from fundamentals.config import Knobs, knob

SPLITS = ('train', 'validation', 'test')


@dataclasses.dataclass(frozen=True)
class Settings(Knobs):
  """The kept model to use (``--experiment=evaluate`` and ``--experiment=predict``)."""
  from_: str = knob('', 'The run directory whose kept model to use (runs/X).',
                    group='kept model', flag='from')
  model: str = knob('auto', 'Which kept model: best (lowest validation loss), final, '
                    'or auto (best when the run kept one).', group='kept model')
  splits: tuple[str, ...] = knob(('validation', 'test'), '--experiment=evaluate: the '
                                 'splits to evaluate (train, validation, test; one the '
                                 'dataset lacks is skipped).', group='kept model')
  images: str = knob('', '--experiment=predict: the folder of images to classify '
                     '(searched recursively).', group='kept model')
  top_k: int = knob(5, '--experiment=predict: classes listed per image.',
                    group='kept model')

  def validate(self):
    if not self.from_:
      raise ValueError('--from is needed: the run directory whose kept model to use '
                       '(e.g. --from=runs/X)')
    unknown = [s for s in self.splits if s not in SPLITS]
    if unknown or not self.splits:
      raise ValueError(f'--splits={",".join(self.splits)}: valid: {", ".join(SPLITS)}')
    if self.top_k < 1:
      raise ValueError(f'--top_k={self.top_k} must be positive')
    meta = saved_model.read_meta(self.from_)  # Fails fast, naming what is missing.
    saved_model.resolve_kind(meta, self.model, workdir=self.from_)


def members(config, s: Settings) -> dict[str, dict]:
  del config
  if s.images or s.top_k != 5:
    raise ValueError('--images and --top_k apply to --experiment=predict; evaluate takes '
                     '--from, --model, --splits and the data flags')
  return {'evaluation': {}}


def check_inputs(context: runner.Context):
  """The data against the kept model, at planning (what :func:`measure` would
  otherwise meet at work): the model's class names, images of its shape, and one of
  ``--splits`` with examples."""
  s = context.settings
  meta = saved_model.read_meta(s.from_)
  dataset = context.dataset
  # label_map reads only the model's class names.
  saved_model.label_map(types.SimpleNamespace(class_names=tuple(meta['class_names'])),
                        dataset.class_names)
  shape, theirs = tuple(meta['image_shape']), tuple(dataset.train_images.shape[1:])
  if shape != theirs:
    raise ValueError(f'{dataset.name} has images of shape {theirs}; the model of '
                     f'--from={s.from_} takes {shape}'
                     + (f' (--image_size={shape[0]})' if shape[0] == shape[1] else ''))
  if not any(len(train.split_of(dataset, split)[1]) for split in s.splits):
    raise ValueError(f'{dataset.name} has none of the splits --splits='
                     f'{",".join(s.splits)}')


def measure(context: runner.Context, member) -> dict[str, Any]:
  s = context.settings
  loaded = saved_model.load(s.from_, s.model)
  dataset = context.dataset
  to_model = saved_model.label_map(loaded, dataset.class_names)
  workdir = pathlib.Path(member.config.workdir)
  out = {'from': s.from_, 'model': loaded.kind, 'step': loaded.step,
         'dataset': dataset.name, 'data_dir': context.config.data_dir, 'splits': {}}
  for split in s.splits:
    images, labels = train.split_of(dataset, split)
    if not len(labels):
      continue
    labels = to_model[labels]  # The model's class order.
    logits = saved_model.logits(loaded, images)
    probabilities = saved_model.softmax(logits)
    predictions = np.argmax(logits, -1)
    confusion = losses.confusion_matrix(labels, predictions, len(loaded.class_names))
    out['splits'][split] = {
        'examples': int(len(labels)),
        'loss': saved_model.cross_entropy(logits, labels),
        'accuracy': float(np.mean(predictions == labels)),
        # None for a class the split has no example of.
        'per_class_accuracy': {name: (acc if np.isfinite(acc) else None) for name, acc in
                               zip(loaded.class_names,
                                   losses.per_class_accuracy(confusion).tolist())},
        'confusion': confusion.tolist(),
    }
    out.setdefault('figures', {}).update(runtime.on_main_process(
        lambda: plots.save_classification_figures(
            workdir, split=split, images=images, labels=labels, predictions=predictions,
            probabilities=probabilities.max(-1), class_names=loaded.class_names,
            confusion=confusion)) or {})
  if not out['splits']:
    raise ValueError(f'{dataset.name} has none of the splits {list(s.splits)}')
  return out


def summarize(context: runner.Context, results: dict[str, runner.Result]
              ) -> runner.Summary:
  out = results['evaluation'].output
  own = saved_model.as_config_overrides(out['from'])
  recorded = (_recorded(out['from'], out['model'])
              if (own.get('dataset'), own.get('data_dir')) == (
                  context.config.dataset, context.config.data_dir) else {})
  rows = [[split, m['examples'], f'{m["loss"]:.4f}', f'{m["accuracy"]:.2%}',
           _format(recorded.get(f'{split}_loss'))]
          for split, m in _in_order(out['splits'])]
  text = (f'The {out["model"]} model of [{out["from"]}]({out["from"]}) (step '
          f'{out["step"]}) on {out["dataset"]}'
          + (f' ({out["data_dir"]})' if out['data_dir'] else '') + '.\n\n'
          + report.markdown_table(['split', 'examples', 'loss', 'accuracy',
                                   'loss the run recorded'], rows, align='lrrrr')
          + '\n')
  for split, m in _in_order(out['splits']):
    worst = sorted(((name, acc) for name, acc in m['per_class_accuracy'].items()
                    if acc is not None), key=lambda kv: kv[1])[:5]
    text += (f'\n## {split}\n\nLowest per-class accuracy: '
             + ', '.join(f'{name} {acc:.0%}' for name, acc in worst) + '\n')
    for name, caption in out.get('figures', {}).items():
      if name.endswith(f'_{split}.png'):
        text += f'\n![{caption}](evaluation/{name})\n'
  values = {split: {k: m[k] for k in ('examples', 'loss', 'accuracy')}
            for split, m in out['splits'].items()}
  return runner.Summary(f'Evaluation of {out["from"]}', text, values=values)


def _in_order(splits: dict[str, Any]) -> list[tuple[str, Any]]:
  return sorted(splits.items(), key=lambda kv: SPLITS.index(kv[0]))


def _recorded(workdir: str, kind: str) -> dict[str, float]:
  """The losses the run recorded for this model (summary.json): the final ones, or
  those at the best step."""
  summary = runner._read_json(pathlib.Path(workdir) / 'summary.json') or {}  # pylint: disable=protected-access
  prefix = 'best_' if kind == 'best' else 'final_'
  recorded = {k[len(prefix):]: v for k, v in summary.items() if k.startswith(prefix)}
  if kind == 'best' and 'best_validation_loss' in summary:
    recorded['validation_loss'] = summary['best_validation_loss']
  return recorded


def _format(value) -> str:
  return f'{value:.4f}' if isinstance(value, (int, float)) else '–'


def inherits(s: Settings, overrides: dict[str, Any]) -> dict[str, Any]:
  """The run's data settings; with --dataset or --data_dir given, its image size
  only (the other data is described by the flags, not mixed with the run's)."""
  inherited = saved_model.as_config_overrides(s.from_)
  if 'dataset' in overrides or 'data_dir' in overrides:
    return {'image_size': inherited['image_size']} if 'image_size' in inherited else {}
  return inherited


EXPERIMENT = runner.Experiment(
    name='evaluate',
    description='Evaluates a run\'s kept model (--from=runs/X) on its data or any other '
                '(--dataset/--data_dir): loss, accuracy, confusion matrix.',
    members=members, settings=Settings, measure=measure, summarize=summarize,
    inherits=inherits, needs_data=False, check_inputs=check_inputs)
