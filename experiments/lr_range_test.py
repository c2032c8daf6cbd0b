"""The learning-rate range test against a grid of real runs (Smith, 2017, §3.3).

The range test (``fundamentals.lr_finder``) runs the configured model from its own
init for ``--lrt_num_steps`` steps while the rate grows exponentially from
``--lrt_min_lr`` to ``--lrt_max_lr``, and reads two suggestions off the smoothed loss
against log η: the steepest descent and minimum/10 (fastai's ``lr_find``);
``lr_finder.choose`` picks the rate ``--lr=auto`` trains at. Is it a good one?

Members, each a full training run in its own sub-directory, the same config but the
peak rate: ``grid/lr<η>`` for η ∈ ``--lrt_grid`` (log-spaced) and ``suggested`` at the
chosen rate. The suggestion is computed when the members are declared (the range
test is deterministic: a re-run declares the same members and resumes); the
``suggested`` member keeps the whole test curve in its ``analysis.json``. Members
differ only in lr: ``--vectorize`` trains them together.

Summarizes: ``range_test.png`` (raw and smoothed loss against η, both suggestions
marked), ``grid.png`` (final train loss and test accuracy against η, the suggested
run marked), the members' loss curves, a table and the check: the suggested run ends
within a stated margin of the grid's best.
"""

import dataclasses
import json
import math
import pathlib

import numpy as np

from fundamentals import data as data_lib
from fundamentals import lr_finder
from fundamentals import plots
from fundamentals import runner
from fundamentals import sweep
from fundamentals.config import Knobs, knob
from fundamentals.report import markdown_table

DEFAULTS = {'hidden': (128, 128), 'batchnorm': False, 'steps': 500, 'log_every': 25,
            'eval_every': 250, 'diagnostics_every': 0, 'checkpoint_every': 0}
LOSS_MARGIN = 1.25
"""The suggested run's final train loss must be at most this × the grid's best."""
ACCURACY_MARGIN = 0.03
"""… and its final test accuracy at most this below the grid's best (3 points: about
2.4 standard errors of an accuracy near 60% on 1500 test examples)."""
SUGGESTED = 'suggested'


@dataclasses.dataclass(frozen=True)
class Settings(Knobs):
  grid: tuple[float, ...] = knob(
      (0.001, 0.003, 0.01, 0.03, 0.1, 0.3), 'Peak learning rates trained to judge the '
      'suggestion, increasing (log-spaced: half decades).', group='lr_range_test')
  min_lr: float = knob(lr_finder.MIN_LR, 'First rate of the range test.',
                       group='lr_range_test')
  max_lr: float = knob(lr_finder.MAX_LR, 'Last rate of the range test.',
                       group='lr_range_test')
  num_steps: int = knob(lr_finder.NUM_STEPS, 'Steps of the range test, min_lr to '
                        'max_lr (fastai: 100).', group='lr_range_test')

  def validate(self):
    if not self.grid or not all(lr > 0 and math.isfinite(lr) for lr in self.grid):
      raise ValueError(f'lrt_grid={list(self.grid)} must be one or more positive rates')
    if list(self.grid) != sorted(set(self.grid)):
      raise ValueError(f'lrt_grid={list(self.grid)} must be increasing, without repeats')
    if not 0 < self.min_lr < self.max_lr or not math.isfinite(self.max_lr):
      raise ValueError(f'need 0 < lrt_min_lr < lrt_max_lr < inf; got lrt_min_lr='
                       f'{self.min_lr}, lrt_max_lr={self.max_lr}')
    if self.num_steps < 10:
      raise ValueError(f'lrt_num_steps={self.num_steps} must be at least 10')


_TESTS: dict[str, lr_finder.RangeTest] = {}


def range_test(config, s: Settings, dataset: data_lib.Dataset | None = None
               ) -> lr_finder.RangeTest:
  """The range test of the base ``config`` (its lr and workdir aside), once per
  process: the members and the analysis of the ``suggested`` member both ask."""
  key = json.dumps({**config.to_dict(), 'lr': None, 'workdir': '', 'experiment': '',
                    'range': [s.min_lr, s.max_lr, s.num_steps]}, sort_keys=True)
  if key not in _TESTS:
    dataset = dataset if dataset is not None else data_lib.load_configured(config)
    _TESTS[key] = lr_finder.range_test(config, dataset, min_lr=s.min_lr,
                                       max_lr=s.max_lr, num_steps=s.num_steps)
  return _TESTS[key]


def grid_name(lr: float) -> str:
  return f'grid/lr{lr:g}'


def recorded_suggestion(config, s: Settings) -> float | None:
  """The suggested lr an earlier invocation of this very experiment (same base config
  and settings) declared in its ``sweep.json``: a resumed run keeps it even where the
  range test would not repeat bit for bit (e.g. on an accelerator)."""
  path = pathlib.Path(config.workdir or '.') / sweep.MANIFEST
  try:
    manifest = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError):
    return None
  same = lambda a, b: json.loads(json.dumps(a)) == json.loads(json.dumps(b))
  base = {k: v for k, v in manifest.get('base', {}).items() if k != 'workdir'}
  if not (same(base, {k: v for k, v in config.to_dict().items() if k != 'workdir'})
          and same(manifest.get('settings'), dataclasses.asdict(s))):
    return None
  return next((m['settings'].get('lr') for m in manifest.get('members', [])
               if m['name'] == SUGGESTED), None)


def members(config, s: Settings) -> dict[str, dict]:
  lr = recorded_suggestion(config, s)
  if lr is None:
    lr, _ = lr_finder.choose(range_test(config, s))
  return {**{grid_name(g): {'lr': g} for g in s.grid}, SUGGESTED: {'lr': lr}}


def analyze(context: runner.Context, member, fit) -> dict:
  """The ``suggested`` member keeps the range test it was chosen by."""
  del fit
  if member.name != SUGGESTED:
    return {}
  test = range_test(context.config, context.settings, context.dataset)
  lr, how = lr_finder.choose(test)
  return {'range_test': test.to_dict(), 'lr': lr, 'how': how}


def _grid(results) -> list[runner.Result]:
  return [r for name, r in results.items() if name != SUGGESTED]


def _best(results) -> runner.Result | None:
  """The grid's run of lowest final train loss (None if every one diverged)."""
  completed = [r for r in _grid(results) if r.status == 'completed']
  return min(completed, key=lambda r: r.summary['final_train_loss'], default=None)


def comparison(results) -> dict | None:
  """The suggested run against the grid's best: their rates, final train losses and
  test accuracies, the loss ratio and the accuracy difference; None if either the
  suggested run or the whole grid diverged."""
  best, suggested = _best(results), results[SUGGESTED]
  if best is None or suggested.status != 'completed':
    return None
  s, b = suggested.summary, best.summary
  best_accuracy = max(r.summary['final_test_accuracy'] for r in _grid(results)
                      if r.status == 'completed')  # Of any grid run, not only ``best``.
  return {'suggested_lr': suggested.config.lr, 'best_lr': best.config.lr,
          'suggested_loss': s['final_train_loss'], 'best_loss': b['final_train_loss'],
          'loss_ratio': s['final_train_loss'] / b['final_train_loss'],
          'suggested_accuracy': s['final_test_accuracy'], 'best_accuracy': best_accuracy,
          'accuracy_gap': best_accuracy - s['final_test_accuracy']}


def check(context: runner.Context, results) -> list[runner.Check]:
  del context
  c = comparison(results)
  failed = ('the suggested run diverged' if results[SUGGESTED].status != 'completed'
            else 'every grid run diverged')
  return [
      runner.Check(
          f'training at the range test\'s suggestion ends with a final train loss '
          f'≤ {LOSS_MARGIN:g} × the best of the lr grid\'s',
          (f'suggested lr {c["suggested_lr"]:.3g}: {c["suggested_loss"]:.4f}; best grid '
           f'lr {c["best_lr"]:g}: {c["best_loss"]:.4f} (ratio {c["loss_ratio"]:.3f})')
          if c else failed, c is not None and c['loss_ratio'] <= LOSS_MARGIN),
      runner.Check(
          f'… and a final test accuracy at most {ACCURACY_MARGIN:.0%} below the grid\'s '
          'best',
          (f'suggested {c["suggested_accuracy"]:.2%}, grid\'s best '
           f'{c["best_accuracy"]:.2%} (best − suggested: {100 * c["accuracy_gap"]:+.1f} '
           'points)') if c else failed,
          c is not None and c['accuracy_gap'] <= ACCURACY_MARGIN)]


def range_test_figure(test: lr_finder.RangeTest, chosen: float):
  """Raw and smoothed loss against η (log axis), the suggestions and the chosen rate
  marked, the skipped start shaded, the stop marked."""
  fig, axes = plots.figure(1, 1, size=(8, 4.5))
  ax, s = axes[0][0], test.suggestions
  ax.axvline(chosen, color='tab:red', lw=4, alpha=0.3, label=f'chosen {chosen:.3g}')
  ax.plot(test.lrs, test.losses, color='tab:blue', alpha=0.35, lw=1, label='batch loss')
  ax.plot(test.lrs, test.smoothed, color='tab:blue', lw=2,
          label=f'smoothed (β = {lr_finder.SMOOTHING:g}, bias-corrected)')
  if test.skip_start:
    ax.axvspan(test.lrs[0], test.lrs[test.skip_start], color='gray', alpha=0.12,
               label=f'first {test.skip_start} steps: not read')
  if s.steepest is not None:
    ax.axvline(s.steepest, color='tab:green', ls='--', label=f'steepest descent '
               f'{s.steepest:.3g}')
  ax.axvline(s.minimum, color='gray', ls=':', label=f'minimum {s.minimum:.3g}')
  ax.axvline(s.minimum_over_10, color='tab:orange', ls='--',
             label=f'minimum/10 {s.minimum_over_10:.3g}')
  if test.stopped_at is not None:  # Marked at the top where the loss is off the chart.
    last = test.smoothed[-1]
    ax.plot(test.lrs[-1], min(last, 0.97 * _top(test)) if np.isfinite(last)
            else 0.97 * _top(test), 'x', color='tab:red', ms=9,
            label=f'stopped: > {lr_finder.STOP_FACTOR:g} × minimum or not finite '
                  f'(step {test.stopped_at})')
  ax.set(xscale='log', xlabel='learning rate η (log)', ylabel='training loss (nats)',
         ylim=(0.9 * float(np.nanmin(test.losses)), _top(test)),
         title=f'LR range test: {len(test.lrs)} of {test.num_steps} steps')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc='lower left')
  return fig


def _top(test: lr_finder.RangeTest) -> float:
  """The plot's top: the start's loss and a margin; divergence leaves the frame."""
  return 1.4 * float(np.nanmax(test.smoothed[:max(test.skip_start, 1) + 1]))


def grid_figure(results, test: lr_finder.RangeTest):
  """Final train loss and test accuracy against η: the grid (line), the suggested run
  (star), the range test's suggestions (lines)."""
  fig, axes = plots.figure(1, 2, size=(10, 4))
  grid = sorted(_grid(results), key=lambda r: r.config.lr)
  suggested, s = results[SUGGESTED], test.suggestions
  for ax, key, label in ((axes[0][0], 'final_train_loss', 'final train loss'),
                         (axes[0][1], 'final_test_accuracy', 'final test accuracy')):
    done = [r for r in grid if r.status == 'completed']
    ax.plot([r.config.lr for r in done], [r.summary[key] for r in done], 'o-',
            color='tab:blue', label='lr grid')
    diverged = [r.config.lr for r in grid if r.status != 'completed']
    if diverged:
      for lr in diverged:
        ax.axvline(lr, color='black', ls=':', lw=1)
      ax.plot([], [], 'k:', label='diverged')
    if suggested.status == 'completed':
      ax.plot([suggested.config.lr], [suggested.summary[key]], '*', ms=16,
              color='tab:red', label=f'suggested {suggested.config.lr:.3g}')
    if s.steepest is not None:
      ax.axvline(s.steepest, color='tab:green', ls='--', lw=1, label='steepest descent')
    ax.axvline(s.minimum_over_10, color='tab:orange', ls='--', lw=1, label='minimum/10')
    ax.set(xscale='log', xlabel='peak learning rate η (log)', ylabel=label, title=label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  return fig


def _auto_note(s: Settings) -> str:
  """Whether ``--lr=auto`` (the default range test) picks this report's rate."""
  default = (lr_finder.MIN_LR, lr_finder.MAX_LR, lr_finder.NUM_STEPS)
  if (s.min_lr, s.max_lr, s.num_steps) == default:
    return ('given this config\'s flags, `python launch.py --lr=auto` runs this same test '
            'and trains at this rate')
  return ('`python launch.py --lr=auto` runs the default test ({:g} → {:g} in {} steps), '
          'not this one, and may pick another rate'.format(*default))


def _grid_spacing(grid: tuple[float, ...]) -> str:
  """How far apart the grid's rates are, and so how far its best may lie from the
  best rate: at most √(ratio) of the widest neighbouring pair, within the grid."""
  if len(grid) < 2:
    return 'a single rate, so the best rate may lie anywhere off it'
  ratio = max(b / a for a, b in zip(grid, grid[1:]))
  return (f'neighbouring rates at most ×{ratio:.3g} apart, so the best grid rate may '
          f'itself be up to ~{math.sqrt(ratio):.2g}× off the best rate')


def summarize(context: runner.Context, results) -> runner.Summary:
  config, s = context.config, context.settings
  output = results[SUGGESTED].output
  test = lr_finder.RangeTest.from_dict(output['range_test'])
  sug, c = test.suggestions, comparison(results)
  rows = []
  for name, r in sorted(results.items(), key=lambda item: item[1].config.lr):
    mark = (lambda text: f'**{text}**') if name == SUGGESTED else str
    if r.status != 'completed':
      rows.append([mark(name), f'{r.config.lr:.3g}', r.status, '', ''])
      continue
    rows.append([mark(name), f'{r.config.lr:.3g}', r.status,
                 f'{r.summary["final_train_loss"]:.4f}',
                 f'{r.summary["final_test_accuracy"]:.2%}'])
  table = markdown_table(['member', 'lr', 'status', 'final train loss',
                          'final test accuracy'], rows)
  curves = {name: r.records for name, r in results.items() if r.records}
  stopped = (f'stopped at step {test.stopped_at} (η = {test.lrs[-1]:.3g}), the smoothed '
             f'loss above {lr_finder.STOP_FACTOR:g} × its minimum (or not finite)'
             if test.stopped_at is not None else
             f'ran all {test.num_steps} steps without diverging')
  text = runner.render(
      __file__, config=config, dataset=context.dataset, s=s, test=test, sug=sug, stopped=stopped,
      steepest=(f'{sug.steepest:.3g} (slope {sug.steepest_slope:.3f} nats per e-fold)'
                if sug.steepest is not None else 'none (the loss never fell)'),
      chosen=output['lr'], how=output['how'], table=table, auto=_auto_note(s),
      spacing=_grid_spacing(s.grid), grid=', '.join(f'{g:g}' for g in s.grid),
      loss_margin=LOSS_MARGIN, accuracy_margin=f'{ACCURACY_MARGIN:.0%}',
      best=(f'The grid\'s best lr is {c["best_lr"]:g} (final train loss '
            f'{c["best_loss"]:.4f}); the suggested {c["suggested_lr"]:.3g} ends at '
            f'{c["suggested_loss"]:.4f}, {c["loss_ratio"]:.3f} × it') if c else
      'The suggested run or the whole grid diverged')
  return runner.Summary(
      'LR range test: the suggestion against a grid of runs', text,
      figures={'range_test.png': range_test_figure(test, output['lr']),
               'grid.png': grid_figure(results, test),
               'loss_curves.png': plots.overlaid_loss_figure(curves)},
      values={'suggested_lr': output['lr'], 'how': output['how'],
              'steepest': sug.steepest, 'minimum': sug.minimum,
              'minimum_over_10': sug.minimum_over_10, 'stopped_at': test.stopped_at,
              'comparison': c})


EXPERIMENT = runner.Experiment(
    name='lr_range_test',
    description='LR range test: loss vs exponentially growing lr, its suggestions, and '
                'a grid of runs to judge them.',
    paper='Smith (2017), Cyclical Learning Rates for Training Neural Networks, §3.3 '
          '(LR range test); fastai lr_find',
    members=members, defaults=DEFAULTS, settings=Settings, settings_prefix='lrt_',
    analyze=analyze, summarize=summarize, check=check,
    scales={
        'tiny': runner.Scale(
            config={'hidden': (16,), 'steps': 20, 'batch_size': 50, 'log_every': 10,
                    'eval_every': 20},
            settings={'grid': (0.01, 0.1), 'num_steps': 30},
            description='seconds: a smoke test'),
        'full': runner.Scale(
            config={'hidden': (512, 512, 512), 'steps': 2000, 'log_every': 50,
                    'eval_every': 500},
            settings={'grid': tuple(float(f'{10 ** (k / 4):.3g}') for k in range(-12, 1)),
                      'num_steps': 200},
            description='the README\'s 512×3 ReLU MLP, 2000 steps, a quarter-decade grid '
                        '1e-3 … 1, a 200-step range test'),
    })
