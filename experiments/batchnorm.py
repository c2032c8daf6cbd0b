"""BatchNorm vs none over inits × activations × learning rates; inference modes; α.

Members, each a training run in its own sub-directory:

* ``grid/``: batchnorm ∈ {no, yes} × ``--batchnorm_inits`` × ``--batchnorm_activations``
  × ``--batchnorm_lrs``, in-step diagnostics off. BN should tolerate the higher
  learning rates and make the result nearly independent of the init.
* ``inference``: one BN model of the given config, evaluated with running averages,
  population statistics and each test batch's own statistics
  (``population_stats.compare_inference_statistics``).
* ``momentum/``: α ∈ ``--batchnorm_alphas`` × steps ∈ ``--batchnorm_alpha_steps`` at a
  constant learning rate (shorter runs are prefixes of longer ones): how far the
  running averages are from the population statistics early on, and what they give.

Defaults: hidden 64,64 and 300 steps (minutes on a 2-core CPU) unless given.
Summarizes: ``report.md`` (tables; prose in ``batchnorm.md``), ``grid.png``,
``activations_<activation>.png``, ``momentum.png``, ``inference.png``.
"""

import dataclasses
import math

import jax
import numpy as np

from fundamentals import data as data_lib
from fundamentals import diagnostics
from fundamentals import models
from fundamentals import plots
from fundamentals import population_stats as pop
from fundamentals import runner
from fundamentals import train
from fundamentals.config import Knobs, knob
from fundamentals.report import markdown_table

DEFAULTS = {'hidden': (64, 64), 'steps': 300}
NUM_HISTOGRAM_EXAMPLES = 512
STAGES = [(stage, bn) for stage in ('init', 'trained') for bn in (False, True)]
GRID_COLOURS = ('tab:red', 'tab:orange', 'tab:green', 'tab:blue', *plots.CYCLE[4:])


@dataclasses.dataclass(frozen=True)
class Settings(Knobs):
  inits: tuple[str, ...] = knob(('normal', 'lecun', 'xavier', 'kaiming'),
                                'Initializers of the grid.', group='batchnorm')
  activations: tuple[str, ...] = knob(('tanh', 'relu'), 'Activations of the grid.',
                                      group='batchnorm')
  lrs: tuple[float, ...] = knob((0.01, 0.1, 1.0), 'Peak learning rates of the grid.',
                                group='batchnorm')
  histogram_lr: float = knob(0.1, 'The grid runs whose trained activations are '
                             'plotted (one of --batchnorm_lrs).', group='batchnorm')
  alphas: tuple[float, ...] = knob((0.0, 0.9, 0.99, 0.999), 'Running-average momenta '
                                   'of the momentum study.', group='batchnorm')
  alpha_steps: tuple[int, ...] = knob((10, 30, 100, 300), 'Run lengths of the momentum '
                                      'study (constant lr).', group='batchnorm')
  test_batch_sizes: tuple[int, ...] = knob(
      (8, 1), 'Test batches normalized by their own statistics, besides the training '
      'batch size and the whole test set.', group='batchnorm')

  def validate(self):
    if not all((self.inits, self.activations, self.lrs, self.alphas, self.alpha_steps)):
      raise ValueError('the batchnorm settings need at least one value each')
    if self.histogram_lr not in self.lrs:
      raise ValueError(f'batchnorm_histogram_lr={self.histogram_lr} must be one of '
                       f'batchnorm_lrs={list(self.lrs)}')


def grid_name(bn: bool, init: str, activation: str, lr: float) -> str:
  return f'grid/{"bn" if bn else "nobn"}-{init}-{activation}-lr{lr:g}'


def momentum_name(alpha: float, steps: int) -> str:
  return f'momentum/alpha{alpha:g}-steps{steps}'


def members(config, s: Settings) -> dict[str, dict]:
  grid = {grid_name(bn, i, a, lr): dict(batchnorm=bn, init=i, activation=a, lr=lr,
                                        diagnostics_every=0)
          for a in s.activations for i in s.inits for bn in (False, True) for lr in s.lrs}
  momentum = {momentum_name(alpha, steps): dict(
      batchnorm=True, bn_momentum=alpha, schedule='constant', warmup_steps=0, steps=steps,
      log_every=min(10, steps), eval_every=min(10, steps), diagnostics_every=0)
              for steps in s.alpha_steps for alpha in s.alphas}
  return {**grid, 'inference': dict(batchnorm=True), **momentum}


def layer_activations(model: models.MLP, dataset: data_lib.Dataset) -> dict:
  """Per hidden layer, the std and saturated/dead fraction of the activations in
  training mode on the first training images, and their densities (shared bins)."""
  x = data_lib.normalize(dataset.train_images[:NUM_HISTOGRAM_EXAMPLES], dataset.mean,
                         dataset.std)
  _, taps = model.forward(x)
  values = [np.asarray(t['activation']).ravel() for t in taps]
  finite = np.concatenate(values)
  finite = finite[np.isfinite(finite)]
  edges = np.linspace(finite.min(), finite.max() + 1e-6, 60)
  return {'layers': [jax.tree.map(float, diagnostics.layer_statistics(
              t, activation_name=model.activation_name)) for t in taps],
          'edges': edges.tolist(),
          'density': [np.histogram(v, edges, density=True)[0].tolist() for v in values]}


def analyze(context: runner.Context, member, fit: train.Fit) -> dict:
  config, dataset = member.config, context.dataset
  if member.name.startswith('grid/'):
    if config.lr != context.settings.histogram_lr:
      return {}
    fresh = models.create_model(config, num_features=dataset.num_features,  # A new draw.
                                num_classes=dataset.num_classes,
                                key=jax.random.key(config.seed))
    trained = models.merge(fit.graphs.train, fit.state.params, fit.state.batch_stats)
    return {'init': layer_activations(fresh, dataset),
            'trained': (layer_activations(trained, dataset)
                        if fit.summary['status'] == 'completed' else None)}
  if fit.summary['status'] != 'completed':
    return {}
  if member.name == 'inference':
    return pop.compare_inference_statistics(
        fit.graphs, fit.state, dataset, batch_size=config.batch_size,
        test_batch_sizes=context.settings.test_batch_sizes, key=jax.random.key(config.seed),
        running=f'α = {config.bn_momentum}, after {config.steps} steps')
  stats = pop.population_statistics(
      fit.graphs, fit.state.params, fit.state.batch_stats, dataset.train_images,
      mean=dataset.mean, std=dataset.std, batch_size=config.batch_size)
  population = train.evaluate(train.make_eval_step(fit.graphs),
                              fit.state._replace(batch_stats=stats), dataset.test_images,
                              dataset.test_labels, dataset.mean, dataset.std)
  return {**pop.relative_error(pop.read_statistics(fit.state.batch_stats),
                               pop.read_statistics(stats)),
          'test_accuracy_population': population['accuracy']}


def _accuracy(r: runner.Result) -> float | None:
  return r.summary.get('final_test_accuracy') if r.status == 'completed' else None


def _pct(value) -> str:
  return '—' if value is None else f'{value:.1%}'


def _identical_across_alpha(s: Settings, results) -> bool:
  """Whether the momentum runs of each length trained alike for every α."""
  losses = [[[r['train_loss'] for r in results[momentum_name(alpha, steps)].records]
             for alpha in s.alphas] for steps in s.alpha_steps]
  return all(all(run == runs[0] for run in runs) for runs in losses)


def check(context: runner.Context, results) -> list[runner.Check]:
  s, top = context.settings, max(context.settings.lrs)
  best = {(a, bn): max(_accuracy(results[grid_name(bn, i, a, top)]) or 0.0
                       for i in s.inits) for a in s.activations for bn in (False, True)}
  inference = results['inference'].output or {}
  alone = {r['statistics']: r['test_accuracy'] for r in inference.get('rows', [])
           }.get('test batch, B = 1', math.nan)
  gap = inference.get('single_example_max_abs_diff', math.inf)
  identical = _identical_across_alpha(s, results)
  chance = 1 / context.dataset.num_classes
  return [
      runner.Check(f'at the largest lr ({top:g}) BN trains better than no BN, for every '
                   'activation (best test accuracy over the inits)',
                   ', '.join(f'{a}: {best[a, True]:.1%} with BN vs {best[a, False]:.1%}'
                             for a in s.activations),
                   all(best[a, True] > best[a, False] for a in s.activations)),
      runner.Check('evaluation mode treats each example alone (logits within 1e-4 of '
                   'those in a batch); a batch of one normalized by its own statistics '
                   f'gives chance accuracy (≤ 2/N = {2 * chance:.1%})',
                   f'largest logit difference {gap:.1e}; batch of one {alone:.1%}',
                   gap <= 1e-4 and alone <= 2 * chance),
      runner.Check('α changes the running averages only: the same training losses for '
                   'every α', 'identical' if identical else 'different', identical),
  ]


def summarize(context: runner.Context, results) -> runner.Summary:
  config, s, dataset = context.config, context.settings, context.dataset
  grid = lambda bn, i, a, lr: results[grid_name(bn, i, a, lr)]
  columns = [(lr, bn) for lr in s.lrs for bn in (False, True)]
  spread = []
  for a, bn, lr in [(a, bn, lr) for a in s.activations for bn in (False, True)
                    for lr in s.lrs]:
    acc = {i: _accuracy(grid(bn, i, a, lr)) or 0.0 for i in s.inits}
    worst, best = min(acc, key=acc.get), max(acc, key=acc.get)
    spread.append([a, 'yes' if bn else 'no', f'{lr:g}', f'{worst} {acc[worst]:.1%}',
                   f'{best} {acc[best]:.1%}', f'{acc[best] - acc[worst]:.1%}'])
  health = lambda a: diagnostics.unit_health(a) or 'activation_std'
  samples = {(a, i, bn, stage): (grid(bn, i, a, s.histogram_lr).output or {}).get(stage)
             for a in s.activations for i in s.inits for stage, bn in STAGES}
  inference, model = results['inference'].output or {}, results['inference']
  momentum = {key: results[momentum_name(*key)] for key in
              sorted((alpha, steps) for alpha in s.alphas for steps in s.alpha_steps)}
  quick = ', '.join(f'{k}={v}' for k, v in DEFAULTS.items() if getattr(config, k) == v)
  tables = {
      'grid_table': markdown_table(
          ['activation', 'init', *(f'lr={lr:g} {"BN" if bn else "no BN"}'
                                   for lr, bn in columns)],
          [[a, i, *(_pct(_accuracy(grid(bn, i, a, lr))) if grid(bn, i, a, lr).status ==
                    'completed' else grid(bn, i, a, lr).status for lr, bn in columns)]
           for a in s.activations for i in s.inits]),
      'spread_table': markdown_table(['activation', 'BN', 'lr', 'worst init', 'best init',
                                      'spread (best − worst)'], spread),
      'activation_table': markdown_table(
          ['activation', 'init', 'BN', 'stage', *(f'layer {l + 1}: std / saturated or dead'
                                                  for l in range(len(config.hidden)))],
          [[a, i, 'yes' if bn else 'no', stage, *(
              f'{layer["activation_std"]:.3g} / {layer[health(a)]:.0%}'
              for layer in samples[a, i, bn, stage]['layers'])]
           for a in s.activations for i in s.inits for bn in (False, True)
           for stage in ('init', 'trained') if samples[a, i, bn, stage]]),
      'momentum_table': markdown_table(
          ['α', 'steps', 'running mean err (σ)', 'running var err (ln)',
           'test acc, running', 'test acc, population'],
          [[f'{alpha:g}', steps, *([f'{r.output["mean_error"]:.3f}',
                                    f'{r.output["var_error"]:.3f}', _pct(_accuracy(r)),
                                    _pct(r.output['test_accuracy_population'])]
                                   if r.status == 'completed' else [r.status, '', '', ''])]
           for (alpha, steps), r in momentum.items()]),
  }
  inference_text = (markdown_table(
      ['statistics', 'how', 'test accuracy', 'test loss', 'running vs these: mean err (σ)',
       'var err (ln)'],
      [[r['statistics'], r['description'], f'{r["test_accuracy"]:.2%}',
        f'{r["test_loss"]:.4f}', *([f'{r["mean_error"]:.4f}', f'{r["var_error"]:.4f}']
                                   if 'mean_error' in r else ['—', '—'])]
       for r in inference['rows']]) +
      f'\n\nSingle-example inference: in evaluation mode, the logits of each of 20 test '
      f'examples evaluated alone differ from the same example inside a batch of 500 by at '
      f'most {inference["single_example_max_abs_diff"]:.2e}.\n\nParameters: '
      f'{model.summary["num_params"]:,} without the redundant Dense biases before BN; '
      f'{model.summary["num_params_with_redundant_bias"]:,} with them (`summary.json`: '
      '`num_params`, `num_params_with_redundant_bias`). A bias before BN is cancelled by '
      'the batch mean and receives zero gradient (`tests/test_batchnorm.py`).\n\n'
      '![inference](inference.png)' if model.status == 'completed'
      else f'The inference model {model.status}.')
  text = runner.render(
      __file__, **tables, config=config, settings=s, dataset=dataset,
      num_train=len(dataset.train_labels), num_test=len(dataset.test_labels),
      hidden=list(config.hidden), num_inits=len(s.inits), num_examples=NUM_HISTOGRAM_EXAMPLES,
      inference_text=inference_text, identical=_identical_across_alpha(s, results),
      activation_figures='\n'.join(f'![{a}](activations_{a}.png)' for a in s.activations),
      quick_note=(f'Quick defaults in effect ({quick}; pass other `--hidden` / `--steps` '
                  'to scale up).' if quick else ''))
  figures = {'grid.png': plots.line_panels_figure({
      f'{a}: solid = BN, dashed = none, x = diverged': {
          'xlabel': 'peak learning rate', 'ylabel': 'final test accuracy', 'xscale': 'log',
          'legend': {'ncol': 2}, 'lines': [line for colour, i in zip(GRID_COLOURS, s.inits)
                                           for bn in (False, True) for line in (
              {'x': s.lrs, 'y': [_accuracy(grid(bn, i, a, lr)) or math.nan for lr in s.lrs],
               'style': '-o' if bn else '--s', 'color': colour,
               'label': f'{i}{" + BN" if bn else ""}'},
              {'x': [lr for lr in s.lrs if _accuracy(grid(bn, i, a, lr)) is None],
               'y': [0] * sum(_accuracy(grid(bn, i, a, lr)) is None for lr in s.lrs),
               'style': 'x', 'color': colour, 'ms': 9})]}
      for a in s.activations}, size=(5.5 * len(s.activations), 4))}
  for a in s.activations:
    figures[f'activations_{a}.png'] = plots.histogram_grid_figure(
        {(i, f'{i}, {"BN" if bn else "no BN"}, {stage}'): samples[a, i, bn, stage]
         for i in s.inits for stage, bn in STAGES}, columns=len(STAGES), dpi=90,
        log_density=a == 'relu', title=f'{a} activations per hidden layer (training mode)',
        label=lambda l, layer, a=a: f'layer {l + 1}: std {layer["activation_std"]:.2g}, '
                                    f'{health(a).split("_")[0]} {layer[health(a)]:.0%}')
  done = {key: r.output for key, r in momentum.items() if r.status == 'completed'}
  curve = lambda alpha: [(r['step'], r['test_accuracy']) for r in results[momentum_name(
      alpha, max(s.alpha_steps))].records if 'test_accuracy' in r]
  population = {steps: o['test_accuracy_population'] for (_, steps), o in done.items()}
  figures['momentum.png'] = plots.line_panels_figure({
      'running vs population: mean (σ units), var (|ln ratio|)': {
          'xlabel': 'training steps', 'ylabel': 'error of running averages',
          'xscale': 'log', 'yscale': 'log', 'legend': {'ncol': 2}, 'lines': [
              {'x': [st for (al, st) in done if al == alpha],
               'y': [o[key] for (al, _), o in done.items() if al == alpha],
               'style': style, 'color': colour, 'label': f'α={alpha:g} {what}'}
              for colour, alpha in zip(plots.CYCLE, s.alphas)
              for key, style, what in (('mean_error', '-o', 'mean'), ('var_error', ':', 'var'))]},
      'eval with running averages, early training': {
          'xlabel': 'training steps', 'ylabel': 'test accuracy (eval mode)',
          'legend': {'fontsize': 8}, 'lines': [
              *({'x': [st for st, _ in curve(alpha)], 'y': [v for _, v in curve(alpha)],
                 'color': colour, 'label': f'α={alpha:g}'}
                for colour, alpha in zip(plots.CYCLE, s.alphas)),
              {'x': sorted(population), 'y': [population[st] for st in sorted(population)],
               'style': 'k*', 'ms': 10, 'label': 'population stats'}]}}, size=(12, 4))
  if inference.get('rows'):
    figures['inference.png'] = plots.bar_figure(
        [r['statistics'] for r in inference['rows']],
        [r['test_accuracy'] for r in inference['rows']], xlabel='test accuracy',
        title='BatchNorm statistics used at inference')
  return runner.Summary('BatchNorm: BN vs none, inference statistics, momentum α', text,
                        figures=figures)


EXPERIMENT = runner.Experiment(
    name='batchnorm',
    description='BN vs no BN (init × activation × lr), inference modes and the '
                'momentum α study.',
    members=members, defaults=DEFAULTS, settings=Settings, settings_prefix='batchnorm_',
    analyze=analyze, summarize=summarize, check=check,
    scales={'tiny': runner.Scale(
                config={'hidden': (16, 8), 'batch_size': 50, 'steps': 10, 'log_every': 10,
                        'eval_every': 10, 'diagnostics_every': 0},
                settings={'inits': ('kaiming',), 'activations': ('tanh',), 'lrs': (0.1,),
                          'alphas': (0.0, 0.9), 'alpha_steps': (10,)}),
            'full': runner.Scale(config={'hidden': (512, 512, 512), 'steps': 1500},
                                 settings={'alpha_steps': (10, 30, 100, 300, 1000)})})
