"""Ioffe & Szegedy (2015), Fig. 1: with BatchNorm a sigmoid's input distribution
stays put during training, and the network trains faster.

Members, each a training run in its own sub-directory: ``no_bn`` and ``bn``, an MLP of
``--bni_depth`` fully connected hidden layers of ``--bni_width`` sigmoid units (the
paper: 3 × 100) without and with BatchNorm before each sigmoid, the same init (LeCun's
N(0, 1/fan_in), the paper's "small random Gaussian values"), plain SGD at a constant
lr, batch 60, as in the paper.

What it measures, from each member's diagnostics (``fundamentals.diagnostics``, every
``diagnostics_every`` steps on the step's batch of 60, in training mode; step 0 is the
init): the 15th, 50th and 85th percentiles over the batch of the first unit of the last
hidden layer's sigmoid input, ``preactivation_unit0_p15/p50/p85`` (with BN the BN
output γ·x̂ + β, what the sigmoid sees): Fig. 1(b, c); and the test accuracy over
training: Fig. 1(a). Without BN the unit's input distribution moves as the weights
below it change (internal covariate shift); with BN only γ and β move it.

How much the distribution moves, two ways:

- drift: the mean over diagnostics steps t > 0 and q ∈ {15, 50, 85} of
  |p_q(t) − p_q(0)|, the distance from the init's distribution;
- median range: max − min of the median p_50(t) over the steps after the first
  :data:`SETTLE_FRACTION` of training.

Summarizes: ``figure1.png`` (the paper's three panels), a table and two checks.
"""

import dataclasses
import math

import numpy as np

from fundamentals import plots
from fundamentals import rundir
from fundamentals import report
from fundamentals import runner
from fundamentals.config import Knobs, knob
from fundamentals.report import markdown_table

MEMBERS = {'no_bn': False, 'bn': True}
LABELS = {'no_bn': 'without BN', 'bn': 'with BN'}
COLOURS = {'no_bn': 'tab:red', 'bn': 'tab:blue'}
PERCENTILES = (15, 50, 85)
DEFAULTS = {'activation': 'sigmoid', 'init': 'lecun', 'output_init': 'same',
            'output_scale': 1.0, 'momentum': 0.0, 'schedule': 'constant',
            'warmup_steps': 0, 'lr': 0.1, 'batch_size': 60, 'steps': 2000,
            'log_every': 20, 'eval_every': 100, 'diagnostics_every': 20,
            'checkpoint_every': 1000}
SETTLE_FRACTION = 0.1
"""The median's range is taken after this fraction of the training steps."""


@dataclasses.dataclass(frozen=True)
class Settings(Knobs):
  depth: int = knob(3, 'Fully connected sigmoid hidden layers (the paper: 3).',
                    group='batchnorm_ioffe')
  width: int = knob(100, 'Units per hidden layer (the paper: 100).',
                    group='batchnorm_ioffe')

  def validate(self):
    for name in ('depth', 'width'):
      if getattr(self, name) < 1:
        raise ValueError(f'bni_{name}={getattr(self, name)} must be a positive integer')


def members(config, s: Settings) -> dict[str, dict]:
  del config  # Every member is the base config with these fields replaced.
  return {name: dict(batchnorm=bn, hidden=(s.width,) * s.depth)
          for name, bn in MEMBERS.items()}


def unit_percentiles(result: runner.Result) -> dict[str, np.ndarray]:
  """``step`` [T] (0: the init) and ``percentiles`` [T, 3]: the 15th, 50th and 85th
  percentiles of the last hidden layer's first unit's sigmoid input over the batch."""
  init = result.init_diagnostics
  points = ([(0, init)] if init else []) + [(r['step'], r['diagnostics'])
                                            for r in result.records if 'diagnostics' in r]
  return {'step': np.array([step for step, _ in points], np.int64),
          'percentiles': np.array(
              [[report.number(d['percentiles'][-1][f'preactivation_unit0_p{q}'])
                for q in PERCENTILES] for _, d in points], np.float64).reshape(-1, 3)}


def drift(percentiles: np.ndarray) -> float:
  """Mean over steps t > 0 and the three percentiles of |p_q(t) − p_q(0)|."""
  if len(percentiles) < 2:
    return math.nan
  return float(np.mean(np.abs(percentiles[1:] - percentiles[0])))


def median_range(steps: np.ndarray, percentiles: np.ndarray, *, after: float) -> float:
  """max − min of the median p_50(t) over the steps t ≥ ``after``."""
  medians = percentiles[steps >= after, 1]
  return float(np.ptp(medians)) if medians.size else math.nan


def movement(result: runner.Result, *, steps: int) -> dict[str, float]:
  """How far the unit's input distribution moved (module docstring)."""
  t = unit_percentiles(result)
  p = t['percentiles']
  return {'drift': drift(p),
          'median_range': median_range(t['step'], p, after=SETTLE_FRACTION * steps),
          'init': p[0].tolist() if len(p) else None,
          'end': p[-1].tolist() if len(p) else None}


def accuracy_curve(result: runner.Result) -> tuple[list[int], list[float]]:
  """The steps and test accuracies of the member's held-out evaluations."""
  tested = [r for r in result.records if rundir.finite(r.get('test_accuracy'))]
  return [r['step'] for r in tested], [r['test_accuracy'] for r in tested]


def mean_test_accuracy(result: runner.Result) -> float:
  """The mean test accuracy over the evaluations: the area under Fig. 1(a)'s curve
  per step, larger for the net that learns faster."""
  _, accuracies = accuracy_curve(result)
  return float(np.mean(accuracies)) if accuracies else math.nan


def check(context: runner.Context, results) -> list[runner.Check]:
  steps = context.config.steps
  moved = {name: movement(results[name], steps=steps) for name in MEMBERS}
  completed = all(results[name].status == 'completed' for name in MEMBERS)
  status = '' if completed else ' (a run diverged)'
  accuracy = {name: mean_test_accuracy(results[name]) for name in MEMBERS}
  less = lambda key: moved['bn'][key] < moved['no_bn'][key]
  return [
      runner.Check(
          'with BN the last hidden layer\'s sigmoid input (unit 0: 15th/50th/85th '
          'percentiles over the batch) moves less during training than without: both '
          'its drift from the init (mean |p(t) − p(0)|) and the range of its median after '
          f'the first {SETTLE_FRACTION:.0%} of the steps are smaller (Fig. 1b, c)',
          f'drift: {moved["bn"]["drift"]:.3f} with BN vs {moved["no_bn"]["drift"]:.3f} '
          f'without; median range: {moved["bn"]["median_range"]:.3f} vs '
          f'{moved["no_bn"]["median_range"]:.3f}{status}',
          completed and less('drift') and less('median_range')),
      runner.Check(
          'with BN the network learns faster: a higher test accuracy averaged over the '
          'evaluations during training (Fig. 1a)',
          f'{accuracy["bn"]:.1%} with BN vs {accuracy["no_bn"]:.1%} without (final '
          f'{_pct(results["bn"])} vs {_pct(results["no_bn"])}){status}',
          completed and accuracy['bn'] > accuracy['no_bn']),
  ]


def _pct(result: runner.Result) -> str:
  value = (result.summary or {}).get('final_test_accuracy')
  return format(value, '.1%') if rundir.finite(value) else '—'


def figure(results):
  """Fig. 1: (a) test accuracy over training, (b, c) the unit's 15th, 50th and 85th
  input percentiles without and with BN, on one y-scale."""
  panels = {'(a) test accuracy': {'xlabel': 'step', 'ylabel': 'test accuracy', 'lines': [
      {'x': accuracy_curve(results[name])[0], 'y': accuracy_curve(results[name])[1],
       'style': '-o', 'ms': 3, 'color': COLOURS[name], 'label': LABELS[name]}
      for name in MEMBERS]}}
  for letter, name in zip('bc', MEMBERS):
    t = unit_percentiles(results[name])
    panels[f'({letter}) {LABELS[name]}: sigmoid input, last layer, unit 0'] = {
        'xlabel': 'step', 'ylabel': 'percentiles over the batch', 'lines': [
            {'x': t['step'], 'y': t['percentiles'][:, k], 'style': style,
             'color': COLOURS[name], 'label': f'{q}th'}
            for k, (q, style) in enumerate(zip(PERCENTILES, (':', '-', '--')))]}
  fig = plots.line_panels_figure(panels, size=(14, 4), grid=True, dpi=90)
  shared = [ax.get_ylim() for ax in fig.axes[1:]]
  for ax in fig.axes[1:]:
    ax.set_ylim(min(lo for lo, _ in shared), max(hi for _, hi in shared))
  return fig


def summarize(context: runner.Context, results) -> runner.Summary:
  config, s, dataset = context.config, context.settings, context.dataset
  rows = []
  for name in MEMBERS:
    r, moved = results[name], movement(results[name], steps=config.steps)
    sm = r.summary or {}
    fmt = lambda p: '—' if p is None else ' / '.join(f'{v:.2f}' for v in p)
    rows.append([LABELS[name], r.status, fmt(moved['init']), fmt(moved['end']),
                 f'{moved["drift"]:.3f}', f'{moved["median_range"]:.3f}',
                 f'{mean_test_accuracy(r):.1%}', _pct(r),
                 '—' if not rundir.finite(sm.get('final_train_loss'))
                 else f'{sm["final_train_loss"]:.3f}'])
  table = markdown_table(
      ['network', 'status', 'p15 / p50 / p85: init', 'end', 'drift', 'median range',
       'test accuracy: mean over evals', 'final', 'final train loss'], rows)
  text = runner.render(__file__, config=config, dataset=dataset, depth=s.depth,
                       width=s.width, num_train=len(dataset.train_labels),
                       num_test=len(dataset.test_labels), table=table,
                       settle=int(SETTLE_FRACTION * config.steps))
  values = {name: {**movement(results[name], steps=config.steps),
                   'mean_test_accuracy': mean_test_accuracy(results[name])}
            for name in MEMBERS}
  return runner.Summary(
      f'Ioffe & Szegedy (2015), Fig. 1: a sigmoid\'s input with and without BatchNorm '
      f'({s.depth} × {s.width})', text, figures={'figure1.png': figure(results)},
      values=values)


EXPERIMENT = runner.Experiment(
    name='batchnorm_ioffe',
    description='3 × 100 sigmoid MLP with and without BN: a unit\'s input percentiles '
                'over training, and test accuracy.',
    paper='Ioffe & Szegedy (2015), Batch Normalization: Accelerating Deep Network '
          'Training by Reducing Internal Covariate Shift, §4.1, Fig. 1',
    members=members, defaults=DEFAULTS, settings=Settings, settings_prefix='bni_',
    summarize=summarize, check=check,
    scales={
        'tiny': runner.Scale(
            config={'steps': 8, 'batch_size': 20, 'log_every': 2, 'eval_every': 4,
                    'diagnostics_every': 2, 'checkpoint_every': 0},
            settings={'width': 16}, description='seconds: a smoke test'),
        'full': runner.Scale(
            config={'steps': 10000, 'log_every': 50, 'eval_every': 250,
                    'diagnostics_every': 50, 'checkpoint_every': 2000},
            description='10,000 steps of batch 60 (100 epochs; the paper: 50,000)'),
    })
