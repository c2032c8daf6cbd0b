"""With vs without augmentation: train/test curves and the generalization gap.

Members: ``none`` (no augmentation) and ``augmented`` (the ``--augment`` list, default
flip,crop,rotate,color), everything else the given config; augmentation transforms
training batches only. Summarizes: final train and test accuracy and loss, the gap
train − test, the curves in ``curves.png`` and a table in ``report.md``.
"""

from fundamentals import plots
from fundamentals import runner
from fundamentals.report import markdown_table

DEFAULT_AUGMENT = ('flip', 'crop', 'rotate', 'color')


def members(config, settings) -> dict[str, dict]:
  del settings  # None: the augmentations are the run's own --augment.
  return {'none': {'augment': ()}, 'augmented': {'augment': config.augment or DEFAULT_AUGMENT}}


def _gap(r: runner.Result) -> float:
  return r.summary['final_train_accuracy'] - r.summary['final_test_accuracy']


def check(context: runner.Context, results) -> list[runner.Check]:
  done = all(r.status == 'completed' for r in results.values())
  none, augmented = results['none'], results['augmented']
  return [runner.Check(
      'augmenting the training batches shrinks the generalization gap (train − test '
      'accuracy)', f'{_gap(none):.1%} without, {_gap(augmented):.1%} with' if done
      else 'a run diverged', done and _gap(augmented) < _gap(none))]


def summarize(context: runner.Context, results) -> runner.Summary:
  config, dataset = context.config, context.dataset
  rows = []
  for name, r in results.items():
    if r.status != 'completed':
      rows.append([name, r.status, '', '', '', ''])
      continue
    s = r.summary
    rows.append([','.join(r.config.augment) or 'none', f'{s["final_train_accuracy"]:.2%}',
                 f'{s["final_test_accuracy"]:.2%}', f'{_gap(r):.2%}',
                 f'{s["final_train_loss"]:.3f}', f'{s["final_test_loss"]:.3f}'])
  table = markdown_table(['augment', 'train acc', 'test acc', 'gap (train − test)',
                          'train loss', 'test loss'], rows)
  panels = {}
  for metric, title in (('loss', 'loss'), ('accuracy', 'accuracy')):
    lines = []
    for (name, r), colour in zip(results.items(), ('tab:blue', 'tab:orange')):
      records = r.records
      tested = [rec for rec in records if f'test_{metric}' in rec]
      lines += [{'x': [rec['step'] for rec in records],
                 'y': [rec[f'train_{metric}'] for rec in records], 'color': colour,
                 'label': f'{name} train'},
                {'x': [rec['step'] for rec in tested], 'y': [rec[f'test_{metric}']
                                                             for rec in tested],
                 'style': '--o', 'color': colour, 'label': f'{name} test'}]
    panels[title] = {'lines': lines, 'xlabel': 'step', 'ylabel': (
        'cross-entropy' if metric == 'loss' else 'accuracy'), 'legend': {'fontsize': 8}}
  figure = plots.line_panels_figure(panels, size=(11, 4), dpi=90, grid=True)
  figure.suptitle(f'{dataset.name}: with vs without augmentation (dashed: test)')
  text = (f'Dataset `{dataset.name}` ({len(dataset.train_labels)} train / '
          f'{len(dataset.test_labels)} test), MLP {list(config.hidden)}, '
          f'{config.activation}, init={config.init}, batchnorm={config.batchnorm}, '
          f'{config.steps} steps, seed {config.seed}. Augmentation is applied to training '
          f'batches only.\n\n{table}\n\n![curves](curves.png)\n\n'
          f'![augmented samples](augmented/augment_preview.png)\n')
  return runner.Summary('Augmentation: with vs without', text,
                        figures={'curves.png': figure})


EXPERIMENT = runner.Experiment(
    name='augmentation',
    description='With vs without augmentation: curves, final accuracies and the '
                'generalization gap.',
    members=members, summarize=summarize, check=check, verbose=True,
    scales={'tiny': runner.Scale(config={'hidden': (16,), 'batch_size': 50, 'steps': 20,
                                         'log_every': 10, 'eval_every': 10}),
            'full': runner.Scale(config={'hidden': (512, 512, 512), 'steps': 3000})})
