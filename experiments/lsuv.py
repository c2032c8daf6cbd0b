"""LSUV vs Kaiming vs Xavier on a deep thin net (Mishkin & Matas, 2016, "All you
need is a good init", §2-3).

Members, each a training run in its own sub-directory: activation ∈
``--lsuv_activations`` × init ∈ {lsuv, kaiming, xavier} × ``--lsuv_seeds``, an MLP of
``--lsuv_depth`` hidden layers of ``--lsuv_width`` units without BatchNorm, all with
the same optimizer, learning rate, batch and seed. Members of one activation differ
only in per-run fields (init, seed): ``--vectorize`` trains them together.

LSUV (layer-sequential unit variance, ``init='lsuv'``): build the net with orthogonal
kernels (times the activation's gain; the paper's are orthonormal), then from the first
layer on, run a batch forward, measure the variance v of the layer's output (its Dense
output W·h + b, the pre-activation: Mishkin & Matas's "output of each layer") and
divide its kernel by √v, until |v − 1| ≤ 0.1 or 10 passes (``initializers.lsuv``,
applied by ``train.apply_data_dependent_init`` on the first 1024 training images,
normalized). Kaiming takes the activation's gain (ReLU √2, tanh 5/3), Xavier gain 1.

Measures of each member at init (``analyze``: its first model, rebuilt from its seed
as ``train.initial_state`` builds it, LSUV included): the variance of every layer's
Dense output on LSUV's own batch and on a held-out one (the first 1024 test images).
Summarizes: ``variance_at_init.png``, ``loss.png``, a table and the checks: LSUV's
per-layer variance is within the tolerance of 1 at every layer on its batch (what
the algorithm guarantees; the held-out value is reported beside it), and LSUV trains
at least as fast as the better of Kaiming and Xavier, for each activation (no more
steps to ``--lsuv_threshold``, final train loss within 2 % of the better one).
"""

import dataclasses
import math

import jax
import numpy as np

from fundamentals import activations
from fundamentals import data as data_lib
from fundamentals import losses
from fundamentals import plots
from fundamentals import rundir
from fundamentals import report
from fundamentals import runner
from fundamentals import train
from fundamentals.config import Knobs, knob
from fundamentals.report import markdown_table

INITS = ('lsuv', 'kaiming', 'xavier')
BASELINES = ('kaiming', 'xavier')
COLOURS = {'lsuv': 'tab:green', 'kaiming': 'tab:blue', 'xavier': 'tab:red'}
TOLERANCE = 0.1
"""Mishkin & Matas's tolerance on |Var − 1| (``initializers.lsuv``'s default)."""
FINAL_MARGIN = 0.02
"""LSUV's final train loss may exceed the better baseline's by this fraction."""
NUM_HELD_OUT = 1024
DEFAULTS = {'output_init': 'same', 'output_scale': 1.0, 'lr': 0.01, 'momentum': 0.9,
            'schedule': 'cosine', 'warmup_steps': 0, 'steps': 500, 'log_every': 10,
            'eval_every': 500, 'diagnostics_every': 0, 'checkpoint_every': 0}


@dataclasses.dataclass(frozen=True)
class Settings(Knobs):
  activations: tuple[str, ...] = knob(('tanh', 'relu'), 'Hidden activations.',
                                      group='lsuv')
  depth: int = knob(11, 'Hidden layers (the paper\'s thin FitNets: 11 and more).',
                    group='lsuv')
  width: int = knob(64, 'Units per hidden layer.', group='lsuv')
  threshold: float = knob(1.1, 'Train loss (nats) whose first crossing is the learning '
                          'time.', group='lsuv')
  seeds: tuple[int, ...] = knob((0, 1), 'Seeds per init and activation (averaged).',
                                group='lsuv')

  def validate(self):
    if not self.activations or len(set(self.activations)) != len(self.activations):
      raise ValueError(f'lsuv_activations={list(self.activations)} must name one or '
                       'more distinct activations')
    for name in self.activations:
      activations.get_activation(name)
    for name in ('depth', 'width'):
      if getattr(self, name) < 1:
        raise ValueError(f'lsuv_{name}={getattr(self, name)} must be a positive integer')
    if not (math.isfinite(self.threshold) and self.threshold > 0):
      raise ValueError(f'lsuv_threshold={self.threshold} must be a positive number (nats)')
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f'lsuv_seeds={list(self.seeds)} must be one or more distinct seeds')


def member_name(activation: str, init: str, seed: int) -> str:
  return f'{activation}/{init}-s{seed}'


def members(config, s: Settings) -> dict[str, dict]:
  del config  # Every member is the base config with these fields replaced.
  return {member_name(activation, init, seed): dict(
      init=init, activation=activation, seed=seed, hidden=(s.width,) * s.depth,
      batchnorm=False)
          for activation in s.activations for init in INITS for seed in s.seeds}


def output_variances(model, x) -> list[float]:
  """Var of each hidden layer's Dense output u_l = W_l·h_{l−1} + b_l over the batch
  and the units (the quantity LSUV sets to 1)."""
  _, taps = model.forward(x)
  return [float(np.var(np.asarray(t['dense'], np.float64))) for t in taps]


def lsuv_batch(dataset: data_lib.Dataset) -> jax.Array:
  """The batch LSUV rescales on: the first ``train.LSUV_EXAMPLES`` training images, normalized."""
  return data_lib.normalize(dataset.train_images[:train.LSUV_EXAMPLES], dataset.mean, dataset.std)


def held_out_batch(dataset: data_lib.Dataset) -> jax.Array:
  """The first ``NUM_HELD_OUT`` test images, normalized: data LSUV never saw."""
  return data_lib.normalize(dataset.test_images[:NUM_HELD_OUT], dataset.mean, dataset.std)


def analyze(context: runner.Context, member, fit: train.Fit) -> dict:
  """Per-layer Dense-output variance of the member's first model (rebuilt from its
  seed by ``train.initial_state``, LSUV included) on LSUV's batch and a held-out one."""
  del fit
  model = train.initial_state(member.config, context.dataset).model
  return {'variance': output_variances(model, lsuv_batch(context.dataset)),
          'variance_held_out': output_variances(model, held_out_batch(context.dataset))}


def speed(s: Settings, results, budget: int) -> dict[tuple[str, str], dict]:
  """Per (activation, init): mean steps to the threshold over seeds (all reached?),
  and mean final train loss (inf if a run diverged)."""
  out = {}
  for activation in s.activations:
    for init in INITS:
      runs = [results[member_name(activation, init, seed)] for seed in s.seeds]
      times = [report.steps_or_budget(r.records, s.threshold, budget=budget) for r in runs]
      finals = [(r.summary or {}).get('final_train_loss') for r in runs]
      out[activation, init] = {
          'steps': float(np.mean([t[0] for t in times])),
          'reached': all(t[1] for t in times),
          'final_train_loss': (float(np.mean(finals)) if all(rundir.finite(f) for f in finals)
                               else math.inf)}
  return out


def worst_deviation(results, activation: str, s: Settings, key: str = 'variance') -> float:
  """max over seeds and layers of |Var − 1| of LSUV's Dense outputs (``key``:
  ``'variance'`` on LSUV's batch, ``'variance_held_out'`` on the held-out one)."""
  return max(abs(v - 1.0) if rundir.finite(v) else math.inf for seed in s.seeds
             for v in (results[member_name(activation, 'lsuv', seed)].output or {}).get(
                 key, [math.inf]))


def _steps_text(t: dict) -> str:
  return f'{t["steps"]:.0f}' if t['reached'] else f'≥ {t["steps"]:.0f}'


def check(context: runner.Context, results) -> list[runner.Check]:
  s, budget = context.settings, context.config.steps
  times = speed(s, results, budget)
  deviation = {a: worst_deviation(results, a, s) for a in s.activations}
  fast, observed = {}, []
  for a in s.activations:
    better_steps = min(BASELINES, key=lambda i: (times[a, i]['steps'],
                                                  times[a, i]['final_train_loss']))
    better_final = min(BASELINES, key=lambda i: times[a, i]['final_train_loss'])
    lsuv = times[a, 'lsuv']
    fast[a] = (lsuv['reached'] and lsuv['steps'] <= times[a, better_steps]['steps'] and
               lsuv['final_train_loss'] <= (1 + FINAL_MARGIN) *
               times[a, better_final]['final_train_loss'])
    observed.append(f'{a}: LSUV {_steps_text(lsuv)} steps, final {lsuv["final_train_loss"]:.3f}'
                    f'; {better_steps} {_steps_text(times[a, better_steps])} steps; best '
                    f'final {better_final} {times[a, better_final]["final_train_loss"]:.3f}')
  held_out = {a: worst_deviation(results, a, s, 'variance_held_out') for a in s.activations}
  dataset = context.dataset
  num_lsuv = min(train.LSUV_EXAMPLES, len(dataset.train_labels))
  num_held_out = min(NUM_HELD_OUT, len(dataset.test_labels))
  return [
      runner.Check(
          f'LSUV: every hidden layer\'s Dense output has variance within {TOLERANCE:g} of 1'
          f' at init on the batch it rescaled with (the first {num_lsuv} training '
          'images; measured again on the trained run\'s own init), for each activation',
          ', '.join(f'{a}: max |Var − 1| = {deviation[a]:.3f}' for a in s.activations)
          + f' (on {num_held_out} held-out test images, not checked: '
          + ', '.join(f'{a} {held_out[a]:.3f}' for a in s.activations) + ')',
          all(d <= TOLERANCE for d in deviation.values())),
      runner.Check(
          f'LSUV trains at least as fast as the better of Kaiming and Xavier, for each '
          f'activation: it reaches train loss {s.threshold:g} in no more steps, and its '
          f'final train loss is ≤ (1 + {FINAL_MARGIN:g}) × the better final one',
          '; '.join(observed), all(fast.values())),
  ]


def variance_figure(s: Settings, results):
  """Per-layer Dense-output variance at init (held-out batch, first seed), one panel
  per activation, log y, with the tolerance band."""
  layers = list(range(1, s.depth + 1))
  panels = {}
  for a in s.activations:
    lines = [{'x': layers, 'y': (results[member_name(a, i, s.seeds[0])].output or {}).get(
        'variance_held_out', [math.nan] * s.depth), 'style': '-o', 'ms': 4, 'color': COLOURS[i],
              'label': i} for i in INITS]
    lines += [{'x': [1, s.depth], 'y': [bound, bound], 'style': ':', 'color': 'gray',
               **({'label': f'1 ± {TOLERANCE:g}'} if bound > 1 else {})}
              for bound in (1 - TOLERANCE, 1 + TOLERANCE)]
    panels[f'{a}: Var of each layer\'s Dense output at init'] = {
        'lines': lines, 'xlabel': 'hidden layer', 'ylabel': 'variance', 'yscale': 'log'}
  return plots.line_panels_figure(panels, size=(5.5 * len(s.activations), 4), grid=True,
                                  dpi=90)


def loss_figure(s: Settings, results, *, ln_n: float):
  """Train-loss curves (first seed), one panel per activation."""
  panels = {}
  for a in s.activations:
    lines = []
    for init in INITS:
      r = results[member_name(a, init, s.seeds[0])]
      points = [(rec['step'], rec['train_loss']) for rec in r.records
                if rundir.finite(rec.get('train_loss'))]
      if points:
        x, y = zip(*points)
        lines.append({'x': x, 'y': y, 'color': COLOURS[init], 'label': init})
    end = max((line['x'][-1] for line in lines), default=1)
    lines += [{'x': [0, end], 'y': [s.threshold, s.threshold], 'style': '--',
               'color': 'black', 'label': f'threshold {s.threshold:g}'},
              {'x': [0, end], 'y': [ln_n, ln_n], 'style': ':', 'color': 'gray',
               'label': f'ln N = {ln_n:.2f}'}]
    panels[f'{a}: train loss'] = {'lines': lines, 'xlabel': 'step',
                                  'ylabel': 'train loss (window mean)'}
  return plots.line_panels_figure(panels, size=(5.5 * len(s.activations), 4), grid=True,
                                  dpi=90)


def summarize(context: runner.Context, results) -> runner.Summary:
  config, s, dataset = context.config, context.settings, context.dataset
  budget, ln_n = config.steps, losses.expected_initial_loss(dataset.num_classes)
  times = speed(s, results, budget)
  rows = []
  for a in s.activations:
    for init in INITS:
      r = results[member_name(a, init, s.seeds[0])]
      variance = (r.output or {}).get('variance_held_out', [])
      own = (r.output or {}).get('variance') if init == 'lsuv' else None
      passes = max(layer['iterations'] for layer in (r.summary or {}).get('lsuv') or [{
          'iterations': 0}])
      accuracy = [(results[member_name(a, init, seed)].summary or {}).get(
          'final_test_accuracy') for seed in s.seeds]
      rows.append([a, init, report.formatted(variance[0] if variance else None, '.3g'),
                   report.formatted(variance[-1] if variance else None, '.3g'),
                   f'{min(variance):.3g}–{max(variance):.3g}' if variance else '—',
                   (f'{max(abs(v - 1) for v in own):.3f} ({passes})' if own else '—'),
                   _steps_text(times[a, init]), report.formatted(times[a, init]['final_train_loss'], '.3f'),
                   ', '.join(report.formatted(acc, '.1%') for acc in accuracy)])
  table = markdown_table(
      ['activation', 'init', 'Var layer 1', f'Var layer {s.depth}', 'Var range',
       'LSUV batch: max |Var − 1| (passes)', f'steps to {s.threshold:g}',
       'final train loss', 'test accuracy'], rows)
  text = runner.render(__file__, config=config, dataset=dataset, s=s, table=table,
                       ln_n=ln_n, seeds=', '.join(map(str, s.seeds)),
                       num_held_out=min(NUM_HELD_OUT, len(dataset.test_labels)),
                       lsuv_examples=min(train.LSUV_EXAMPLES, len(dataset.train_labels)),
                       tolerance=TOLERANCE, margin=FINAL_MARGIN, halvings=s.depth - 1,
                       num_train=len(dataset.train_labels))
  values = {'speed': {f'{a}/{i}': t for (a, i), t in times.items()},
            'max_deviation': {a: worst_deviation(results, a, s) for a in s.activations},
            'max_deviation_held_out': {a: worst_deviation(results, a, s, 'variance_held_out')
                                       for a in s.activations}}
  return runner.Summary(
      'LSUV vs Kaiming vs Xavier on a deep thin net', text,
      figures={'variance_at_init.png': variance_figure(s, results),
               'loss.png': loss_figure(s, results, ln_n=ln_n)}, values=values)


EXPERIMENT = runner.Experiment(
    name='lsuv',
    description='LSUV vs Kaiming vs Xavier on an 11-layer thin MLP: per-layer variance '
                'at init and training speed.',
    paper='Mishkin & Matas (2016), All you need is a good init, §2 (Alg. 1) and §3',
    members=members, defaults=DEFAULTS, settings=Settings, settings_prefix='lsuv_',
    analyze=analyze, summarize=summarize, check=check,
    scales={
        'tiny': runner.Scale(
            config={'steps': 6, 'batch_size': 50, 'log_every': 2, 'eval_every': 6},
            settings={'depth': 3, 'width': 16, 'threshold': 3.3, 'seeds': (0,)},
            description='seconds: a smoke test'),
        'full': runner.Scale(
            config={'steps': 2000, 'eval_every': 500, 'log_every': 20},
            settings={'width': 256, 'threshold': 0.8, 'seeds': (0, 1, 2)},
            description='width 256, 2000 steps, three seeds'),
    })
