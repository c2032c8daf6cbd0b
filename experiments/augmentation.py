"""With vs without augmentation: train/test curves and the generalization gap.

Varies: ``augment`` ∈ {none, the ``--augment`` list (default flip,crop,rotate,color)};
everything else is the given config. Summarizes: final train and test accuracy and
loss, the gap train − test, curves in ``curves.png`` and a table in ``report.md``.
"""

import dataclasses
from typing import Any

from fundamentals import data
from fundamentals import rundir
from fundamentals import train
from fundamentals.config import Config

DEFAULT_AUGMENT = ('flip', 'crop', 'rotate', 'color')


def run(config: Config, *, overwrite: bool = False) -> dict[str, Any]:
  """With vs without augmentation: curves, final accuracies and the generalization gap."""
  workdir = rundir.start(config, overwrite=overwrite)
  dataset = data.load_configured(config)
  variants = {'none': (), 'augmented': config.augment or DEFAULT_AUGMENT}
  results = {}
  for name, names in variants.items():
    print(f'--- {name}: augment={",".join(names) or "none"}')
    member = dataclasses.replace(config, augment=names, workdir=str(workdir / name),
                                 experiment='train')
    summary = train.train(member, dataset=dataset, overwrite=overwrite)
    records = rundir.read_jsonl(workdir / name / 'metrics.jsonl')
    results[name] = {'augment': list(names), 'summary': summary, 'records': records}
  _plot_curves(workdir / 'curves.png', results, dataset.name)
  table = _table(results)
  (workdir / 'report.md').write_text(
      f'# Augmentation: with vs without\n\n'
      f'Dataset `{dataset.name}` ({len(dataset.train_labels)} train / '
      f'{len(dataset.test_labels)} test), MLP {list(config.hidden)}, '
      f'{config.activation}, init={config.init}, batchnorm={config.batchnorm}, '
      f'{config.steps} steps, seed {config.seed}. Augmentation is applied to training '
      f'batches only.\n\n{table}\n\n![curves](curves.png)\n\n'
      f'![augmented samples](augmented/augment_preview.png)\n')
  summary = {name: {k: r['summary'].get(k) for k in (
      'final_train_accuracy', 'final_test_accuracy', 'final_train_loss',
      'final_test_loss', 'status')} | {'augment': r['augment']}
             for name, r in results.items()}
  rundir.write_json(workdir / 'summary.json', summary)
  print(table)
  print(f'wrote {workdir}/report.md')
  return summary


def _table(results) -> str:
  lines = ['| augment | train acc | test acc | gap (train − test) | train loss | test loss |',
           '| --- | --- | --- | --- | --- | --- |']
  for name, r in results.items():
    s = r['summary']
    if s['status'] != 'completed':
      lines.append(f'| {name} | {s["status"]} | | | | |')
      continue
    lines.append(
        f'| {",".join(r["augment"]) or "none"} | {s["final_train_accuracy"]:.2%} | '
        f'{s["final_test_accuracy"]:.2%} | '
        f'{s["final_train_accuracy"] - s["final_test_accuracy"]:.2%} | '
        f'{s["final_train_loss"]:.3f} | {s["final_test_loss"]:.3f} |')
  return '\n'.join(lines)


def _plot_curves(path, results, dataset_name: str):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
  for (name, r), colour in zip(results.items(), ('tab:blue', 'tab:orange')):
    steps = [rec['step'] for rec in r['records']]
    ax_loss.plot(steps, [rec['train_loss'] for rec in r['records']], color=colour,
                 label=f'{name} train')
    ax_acc.plot(steps, [rec['train_accuracy'] for rec in r['records']], color=colour,
                label=f'{name} train')
    tested = [rec for rec in r['records'] if 'test_loss' in rec]
    ax_loss.plot([rec['step'] for rec in tested], [rec['test_loss'] for rec in tested],
                 '--o', color=colour, label=f'{name} test')
    ax_acc.plot([rec['step'] for rec in tested], [rec['test_accuracy'] for rec in tested],
                '--o', color=colour, label=f'{name} test')
  ax_loss.set(xlabel='step', ylabel='cross-entropy', title='loss')
  ax_acc.set(xlabel='step', ylabel='accuracy', title='accuracy')
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(f'{dataset_name}: with vs without augmentation (dashed: test)')
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
