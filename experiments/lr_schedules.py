"""Learning-rate schedules at one budget and one peak: constant vs decaying ones.

SGD with a constant learning rate η settles into a noise floor whose height grows
with η (the gradient noise of the mini-batches keeps it bouncing); decaying η towards
the end of the run lowers that floor (Robbins & Monro, 1951; Bottou, Curtis & Nocedal,
2018, §4). At a peak high enough for the decay to matter, every decaying schedule ends
at a lower training loss than the constant one with the same steps and the same peak;
the cosine (Loshchilov & Hutter, 2017), with or without a linear warmup (Goyal et al.,
2017), decays smoothly from the peak to 0, with no milestones to place.

Members, each a training run: schedule variant (``--sched_schedules``: a name of
``fundamentals.schedules.SCHEDULES``, or ``<name>_warmup`` for it after a linear warmup
over ``--sched_warmup_fraction`` of the steps) × seed (``--sched_seeds``), everything
else the given config (peak ``--lr``, ``--steps``). Summarizes: ``report.md`` (a table
of final train loss and test accuracy, mean ± std over seeds; prose in
``lr_schedules.md``) and ``schedules.png`` (η(t), train loss and test accuracy against
steps). The check: every decaying variant's mean final train loss is below the
constant schedule's.
"""

import dataclasses
import math
import statistics

import jax.numpy as jnp
import numpy as np

from fundamentals import optimizers
from fundamentals import plots
from fundamentals import rundir
from fundamentals import runner
from fundamentals import schedules
from fundamentals.config import Knobs, knob
from fundamentals.report import markdown_table

WARMUP = '_warmup'
BASELINE = 'constant'


@dataclasses.dataclass(frozen=True)
class Settings(Knobs):
  schedules: tuple[str, ...] = knob(
      ('constant', 'step', 'exponential', 'cosine', 'cosine_warmup'),
      'Schedule variants: names of --schedule, or NAME_warmup for NAME after a linear '
      'warmup; must include constant (the baseline).', group='lr_schedules')
  seeds: tuple[int, ...] = knob((0, 1, 2), 'Seeds of every variant.',
                                group='lr_schedules')
  warmup_fraction: float = knob(0.1, 'Share of the steps a _warmup variant warms up '
                                'over, linearly from 0 to the peak.',
                                group='lr_schedules')

  def validate(self):
    if BASELINE not in self.schedules:
      raise ValueError(f'sched_schedules={list(self.schedules)} must include '
                       f'{BASELINE!r}, the baseline the decaying schedules are compared '
                       'with')
    for variant in self.schedules:
      if schedule_of(variant) not in schedules.SCHEDULES:
        raise ValueError(f'sched_schedules: unknown variant {variant!r}; valid: '
                         f'{sorted(schedules.SCHEDULES)}, each optionally + {WARMUP!r}')
    if len(self.schedules) < 2:
      raise ValueError(f'sched_schedules={list(self.schedules)} needs a decaying '
                       'schedule besides constant')
    if len(set(self.schedules)) < len(self.schedules):
      raise ValueError(f'sched_schedules={list(self.schedules)} repeats a variant')
    if not self.seeds or len(set(self.seeds)) < len(self.seeds):
      raise ValueError(f'sched_seeds={list(self.seeds)} must be one or more distinct '
                       'seeds')
    if not 0 < self.warmup_fraction < 1:
      raise ValueError(f'sched_warmup_fraction={self.warmup_fraction} must be in (0, 1)')


def schedule_of(variant: str) -> str:
  """The schedule name of a variant: ``'cosine_warmup'`` → ``'cosine'``."""
  return variant.removesuffix(WARMUP)


def warmup_steps(variant: str, *, steps: int, fraction: float) -> int:
  """Warmup steps of a variant: ⌊fraction·steps⌋ (at least 1) for ``*_warmup``, else 0."""
  return max(1, int(fraction * steps)) if variant.endswith(WARMUP) else 0


def member_name(variant: str, seed: int) -> str:
  return f'{variant}/seed{seed}'


def members(config, s: Settings) -> dict[str, dict]:
  return {member_name(v, seed): dict(
      schedule=schedule_of(v), seed=seed,
      warmup_steps=warmup_steps(v, steps=config.steps, fraction=s.warmup_fraction))
          for v in s.schedules for seed in s.seeds}


def learning_rates(config) -> np.ndarray:
  """η_t for t = 0..steps−1 of ``config``'s schedule, the one its run trains with
  (``optimizers.create``): the rate of the update at step t + 1."""
  _, schedule = optimizers.create(config)
  rates = np.asarray(schedule(jnp.arange(config.steps)), np.float64)
  return np.broadcast_to(rates, (config.steps,)).copy()  # A constant one is a scalar.


def mean_std(values: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (n − 1; 0 for one value); NaN if any value
  is missing."""
  if not values or not all(rundir.finite(v) for v in values):
    return math.nan, math.nan
  return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def final(results, variant: str, seeds, key: str) -> list[float | None]:
  """``key`` of the summary of each seed's run (None for a run that did not finish)."""
  return [(results[member_name(variant, seed)].summary or {}).get(key) for seed in seeds]


def _pm(mean: float, std: float, fmt: str) -> str:
  return 'n/a' if not math.isfinite(mean) else f'{mean:{fmt}} ± {std:{fmt}}'


def check(context: runner.Context, results) -> list[runner.Check]:
  s = context.settings
  loss = {v: mean_std(final(results, v, s.seeds, 'final_train_loss')) for v in s.schedules}
  baseline = loss[BASELINE][0]
  decaying = [v for v in s.schedules if v != BASELINE]
  beats = {v: math.isfinite(loss[v][0]) and math.isfinite(baseline)
           and loss[v][0] < baseline for v in decaying}
  return [runner.Check(
      f'at one budget ({context.config.steps} steps) and peak lr '
      f'{context.config.lr:g}, every decaying schedule ends at a lower train loss than '
      f'{BASELINE} (mean over {len(s.seeds)} seeds)',
      f'{BASELINE} {baseline:.4f}; ' + ', '.join(
          f'{v} {loss[v][0]:.4f} ({"lower" if beats[v] else "not lower"})'
          for v in decaying), all(beats.values()))]


def _mean_curve(results, variant: str, seeds, key: str) -> tuple[list, list]:
  """Steps and the mean over the seeds' records of ``key``, where every seed has it."""
  per_seed = [{r['step']: r[key] for r in results[member_name(variant, seed)].records
               if rundir.finite(r.get(key))} for seed in seeds]
  steps = sorted(set.intersection(*(set(p) for p in per_seed)))
  return steps, [statistics.fmean(p[t] for p in per_seed) for t in steps]


def figure(context: runner.Context, results):
  """η(t), train loss and test accuracy (means over seeds) against steps."""
  s, config = context.settings, context.config
  lines = {'lr': [], 'loss': [], 'accuracy': []}
  for colour, v in zip(plots.CYCLE, s.schedules):
    run_config = results[member_name(v, s.seeds[0])].config
    lines['lr'].append({'x': np.arange(1, config.steps + 1),
                        'y': learning_rates(run_config), 'color': colour, 'label': v})
    for key, panel, style in (('train_loss', 'loss', '-'),
                              ('test_accuracy', 'accuracy', '-o')):
      steps, mean = _mean_curve(results, v, s.seeds, key)
      lines[panel].append({'x': steps, 'y': mean, 'color': colour, 'label': v,
                           'style': style, 'ms': 3})
  return plots.line_panels_figure({
      f'learning rate (peak {config.lr:g})': {
          'lines': lines['lr'], 'xlabel': 'step', 'ylabel': 'η'},
      f'train loss, mean over {len(s.seeds)} seeds': {
          'lines': lines['loss'], 'xlabel': 'step', 'ylabel': 'cross-entropy (nats)',
          'yscale': 'log'},
      'test accuracy (evaluation mode), mean over seeds': {
          'lines': lines['accuracy'], 'xlabel': 'step', 'ylabel': 'accuracy'},
  }, size=(15, 4), grid=True, dpi=90)


def summarize(context: runner.Context, results) -> runner.Summary:
  config, s, dataset = context.config, context.settings, context.dataset
  rows, values = [], []
  for v in s.schedules:
    run_config = results[member_name(v, s.seeds[0])].config
    lr = learning_rates(run_config)
    loss = mean_std(final(results, v, s.seeds, 'final_train_loss'))
    accuracy = mean_std(final(results, v, s.seeds, 'final_test_accuracy'))
    completed = sum(results[member_name(v, seed)].status == 'completed' for seed in s.seeds)
    rows.append([v, run_config.warmup_steps, f'{np.mean(lr):.3g}', f'{lr[-1]:.3g}',
                 _pm(*loss, '.4f'), _pm(*accuracy, '.2%'), f'{completed}/{len(s.seeds)}'])
    values.append({'schedule': v, 'warmup_steps': run_config.warmup_steps,
                   'mean_lr': float(np.mean(lr)), 'final_lr': float(lr[-1]),
                   'final_train_loss': loss, 'final_test_accuracy': accuracy,
                   'completed': completed})
  table = markdown_table(
      ['schedule', 'warmup steps', 'mean η', 'last η', 'final train loss (mean ± std)',
       'final test accuracy (mean ± std)', 'completed'], rows, align='lrrrrrr')
  text = runner.render(
      __file__, config=config, settings=s, dataset=dataset, table=table,
      num_train=len(dataset.train_labels), num_test=len(dataset.test_labels),
      hidden=list(config.hidden), seeds=', '.join(map(str, s.seeds)),
      num_seeds=len(s.seeds),
      epochs=config.steps * config.batch_size / len(dataset.train_labels))
  return runner.Summary('Learning-rate schedules at one budget and one peak', text,
                        figures={'schedules.png': figure(context, results)},
                        values={'schedules': values})


DEFAULTS = {'hidden': (128, 128), 'steps': 600, 'lr': 0.5, 'log_every': 10,
            'eval_every': 100, 'diagnostics_every': 0}

EXPERIMENT = runner.Experiment(
    name='lr_schedules',
    description='Constant, step, exponential, cosine and warmup+cosine at one budget '
                'and peak: η(t), curves, final loss and accuracy over seeds.',
    members=members, defaults=DEFAULTS, settings=Settings, settings_prefix='sched_',
    summarize=summarize, check=check,
    scales={
        'tiny': runner.Scale(config={'hidden': (16,), 'steps': 20, 'log_every': 5,
                                     'eval_every': 10, 'batch_size': 50},
                             settings={'seeds': (0, 1)},
                             description='a smoke test: seconds'),
        'full': runner.Scale(config={'hidden': (512, 512, 512), 'steps': 3000,
                                     'log_every': 20, 'eval_every': 250},
                             settings={'seeds': (0, 1, 2, 3, 4)},
                             description='three hidden layers of 512, 3000 steps, '
                                         '5 seeds'),
    })
