"""A 30-layer plain ReLU net: Xavier stalls, Kaiming trains (He et al., 2015, §2.3).

Members, each a training run in its own sub-directory: init ∈ {xavier, kaiming} ×
``--dr_seeds``, an MLP of ``--dr_depth`` hidden ReLU layers of ``--dr_width`` units
without BatchNorm, the same learning rate; the output layer takes the hidden init
with linear gain and no shrinking (``output_scale=1``), as in the paper. Members
differ only in per-run fields (init, seed): ``--vectorize`` trains them together.

Xavier (Glorot & Bengio, 2010) sets Var(W) = 2/(fan_in + fan_out), σ_w² = 1 on square
layers; ReLU keeps half the second moment, E[ReLU(z)²] = q/2, so each layer halves the
variance of the forward signal and of the backward gradient. After L − 1 square layers
both are 2^−(L−1)/2 of their size (4.3e−5 at L = 30): the logits are ≈ 0, the loss sits
at ln N and the first layer gets almost no gradient. Kaiming (He et al., 2015) sets
σ_w² = 2 and keeps both.

Summarizes: ``loss.png`` (train loss and the first layer's gradient std over
training), ``signal_at_init.png`` (per-layer activation and gradient std at init
against the 2^−1/2-per-layer law), a table, and two checks.
"""

import dataclasses
import math

import numpy as np

from fundamentals import losses
from fundamentals import plots
from fundamentals import rundir
from fundamentals import report
from fundamentals import runner
from fundamentals.config import Knobs, knob
from fundamentals.report import markdown_table

INITS = ('xavier', 'kaiming')
DEFAULTS = {'output_init': 'same', 'output_scale': 1.0, 'steps': 300, 'lr': 0.05,
            'log_every': 10, 'eval_every': 300, 'diagnostics_every': 25, 'checkpoint_every': 0}
FIRST_KERNEL = 'dense/0/kernel'
STALL_MARGIN = 0.05
"""Xavier's train loss must stay within this fraction of ln N."""
KAIMING_BELOW = 0.8
"""Kaiming's final train loss must fall below this fraction of ln N."""
LAW_FACTOR = 10.0
"""Xavier's first-layer gradient std at init over Kaiming's must be within this factor
of the halving law 2^−(L−1)/2 (either way): the law, not a fixed number, at any depth."""


@dataclasses.dataclass(frozen=True)
class Settings(Knobs):
  depth: int = knob(30, 'Hidden ReLU layers (the paper: 30; at 22 both inits train).',
                    group='deep_relu')
  width: int = knob(128, 'Units per hidden layer.', group='deep_relu')
  seeds: tuple[int, ...] = knob((0, 1), 'Seeds per init.', group='deep_relu')

  def validate(self):
    for name in ('depth', 'width'):
      if getattr(self, name) < 1:
        raise ValueError(f'dr_{name}={getattr(self, name)} must be a positive integer')
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f'dr_seeds={list(self.seeds)} must be one or more distinct seeds')


def member_name(init: str, seed: int) -> str:
  return f'{init}-s{seed}'


def members(config, s: Settings) -> dict[str, dict]:
  del config  # Every member is the base config with these fields replaced.
  return {member_name(init, seed): dict(init=init, seed=seed, hidden=(s.width,) * s.depth,
                                        batchnorm=False, activation='relu')
          for init in INITS for seed in s.seeds}


def halving_law(depth: int) -> float:
  """2^−(L−1)/2: the std of a signal after L − 1 square ReLU layers with σ_w² = 1
  (each keeps σ_w²·E[ReLU(z)²]/q = 1/2 of the variance), relative to the first."""
  return 2.0 ** (-(depth - 1) / 2)


def first_layer_gradient(points: list[tuple[int, dict]]) -> list[tuple[int, float]]:
  """``(step, std of ∂L/∂W of the first hidden kernel)`` of ``points``
  (``runner.Result.diagnostics_series``); non-finite values are left out."""
  return [(step, scalars['params'][FIRST_KERNEL]['grad_std']) for step, scalars in points
          if rundir.finite(scalars['params'].get(FIRST_KERNEL, {}).get('grad_std'))]


def loss_ratios(result: runner.Result, ln_n: float) -> dict:
  """The train loss over ln N: final (whole training set) and the records' range."""
  records = [r['train_loss'] / ln_n for r in result.records
             if rundir.finite(r.get('train_loss'))]
  final = (result.summary or {}).get('final_train_loss')
  return {'final': final / ln_n if rundir.finite(final) else math.nan,
          'low': min(records, default=math.nan), 'high': max(records, default=math.nan)}


def _by_init(s: Settings, results) -> dict[str, list[runner.Result]]:
  return {init: [results[member_name(init, seed)] for seed in s.seeds] for init in INITS}


def _span(values: list[float], fmt: str = '{:.3f}') -> str:
  lo, hi = fmt.format(min(values)), fmt.format(max(values))
  return lo if lo == hi else f'{lo}–{hi}'


def gradient_ratios(s: Settings, results) -> list[float]:
  """Per seed: Xavier's first-layer gradient std at init over Kaiming's."""
  ratios = []
  for seed in s.seeds:
    grads = [first_layer_gradient(results[member_name(init, seed)].diagnostics_series)
             for init in INITS]
    at_init = all(g and g[0][0] == 0 for g in grads)  # Step 0: the init was measured.
    ratios.append(grads[0][0][1] / grads[1][0][1] if at_init else math.nan)
  return ratios


def check(context: runner.Context, results) -> list[runner.Check]:
  s, ln_n = context.settings, losses.expected_initial_loss(context.dataset.num_classes)
  runs = _by_init(s, results)
  xavier = [loss_ratios(r, ln_n) for r in runs['xavier']]
  kaiming = [loss_ratios(r, ln_n) for r in runs['kaiming']]
  completed = all(r.status == 'completed' for rs in runs.values() for r in rs)
  stalled = all(abs(x[k] - 1) <= STALL_MARGIN for x in xavier for k in ('final', 'low',
                                                                        'high'))
  trained = all(k['final'] < KAIMING_BELOW for k in kaiming)
  status = '' if completed else ' (a run diverged)'
  ratios = gradient_ratios(s, results)
  law = halving_law(s.depth)
  return [
      runner.Check(
          f'{s.depth} ReLU layers, no BN: Xavier\'s train loss stays within '
          f'{STALL_MARGIN:.0%} of ln N = ln {context.dataset.num_classes} (every record '
          f'and the final loss), while Kaiming\'s final train loss falls below '
          f'{KAIMING_BELOW:g} ln N',
          f'final train loss / ln N: Xavier {_span([x["final"] for x in xavier])} '
          f'(records {min(x["low"] for x in xavier):.3f} to '
          f'{max(x["high"] for x in xavier):.3f}), Kaiming '
          f'{_span([k["final"] for k in kaiming])}{status}',
          completed and stalled and trained),
      runner.Check(
          f'Xavier\'s first-layer gradient at init over Kaiming\'s (std of ∂L/∂W) is '
          f'within {LAW_FACTOR:g}× of the mean-field 2^(−{s.depth - 1}/2) = {law:.1e} '
          f'({s.depth - 1} square layers each halving the gradient\'s variance)',
          f'Xavier / Kaiming = {_span(ratios, "{:.2e}")}',
          all(law / LAW_FACTOR <= r <= law * LAW_FACTOR for r in ratios)),
  ]


def _colour(init: str) -> str:
  return {'xavier': 'tab:red', 'kaiming': 'tab:blue'}[init]


def loss_figure(s: Settings, results, *, ln_n: float, steps: int):
  """Train loss (step 0: the initial loss) and first-layer gradient std over steps."""
  loss_lines, grad_lines = [], []
  for init, runs in _by_init(s, results).items():
    for i, r in enumerate(runs):
      label = init if i == 0 else None
      points = [(0, r.summary['initial_loss'])] if rundir.finite(
          r.summary.get('initial_loss')) else []
      points += [(rec['step'], rec['train_loss']) for rec in r.records
                 if rundir.finite(rec.get('train_loss'))]
      grads = first_layer_gradient(r.diagnostics_series)
      for lines, pts in ((loss_lines, points), (grad_lines, grads)):
        if pts:
          x, y = zip(*pts)
          lines.append({'x': x, 'y': y, 'color': _colour(init), 'style': '.-', 'ms': 3,
                        **({'label': label} if label else {})})
  loss_lines.append({'x': [0, steps], 'y': [ln_n, ln_n], 'style': ':', 'color': 'gray',
                     'label': f'ln N = {ln_n:.3f}'})
  return plots.line_panels_figure({
      'train loss (mean over each log window)': {
          'lines': loss_lines, 'xlabel': 'step', 'ylabel': 'cross-entropy (nats)'},
      f'first hidden layer: std of ∂L/∂W ({FIRST_KERNEL})': {
          'lines': grad_lines, 'xlabel': 'step', 'ylabel': 'gradient std',
          'yscale': 'log'}}, size=(11, 4), grid=True, dpi=90)


def signal_figure(s: Settings, results):
  """Per-layer activation std and ∂L/∂h std at init (first seed), with the halving
  law (dashed: 2^−1/2 per layer for Xavier, flat for Kaiming, anchored at the first
  layer for activations and at the last for gradients)."""
  panels = {'std of activations h_l at init': ('activation_std', 0),
            'std of ∂L/∂h_l at init': ('activation_grad_std', -1)}
  out = {}
  layers = np.arange(1, s.depth + 1)
  for title, (key, anchor) in panels.items():
    lines = []
    for init in INITS:
      scalars = results[member_name(init, s.seeds[0])].init_diagnostics
      if not scalars:
        continue
      values = np.array([layer[key] for layer in scalars['layers']], np.float64)
      lines.append({'x': layers, 'y': values, 'style': 'o', 'ms': 3,
                    'color': _colour(init), 'label': f'{init} (measured)'})
      factor = math.sqrt(0.5) if init == 'xavier' else 1.0
      law = values[anchor] * factor ** np.abs(layers - layers[anchor])
      lines.append({'x': layers, 'y': law, 'style': '--', 'color': _colour(init),
                    'label': f'{init}: ×{factor:.3g} per layer'})
    out[title] = {'lines': lines, 'xlabel': 'hidden layer', 'ylabel': 'std',
                  'yscale': 'log'}
  return plots.line_panels_figure(out, size=(11, 4), grid=True, dpi=90)


def summarize(context: runner.Context, results) -> runner.Summary:
  config, s, dataset = context.config, context.settings, context.dataset
  ln_n = losses.expected_initial_loss(dataset.num_classes)
  rows = []
  for init, runs in _by_init(s, results).items():
    for r in runs:
      sm, ratio = r.summary, loss_ratios(r, ln_n)
      grads = first_layer_gradient(r.diagnostics_series)
      rows.append([init, r.config.seed, r.status, report.formatted(sm.get('initial_loss'), '.3f'),
                   report.formatted(sm.get('final_train_loss'), '.3f'), report.formatted(ratio['final'], '.3f'),
                   f'{report.formatted(ratio["low"], ".3f")}–{report.formatted(ratio["high"], ".3f")}',
                   report.formatted(sm.get('final_test_accuracy'), '.1%'),
                   report.formatted(grads[0][1] if grads else None, '.2e'),
                   report.formatted(grads[-1][1] if grads else None, '.2e')])
  table = markdown_table(
      ['init', 'seed', 'status', 'initial loss', 'final train loss', '/ ln N',
       'records / ln N', 'test accuracy', 'first-layer ∂L/∂W std: init', 'end'], rows)
  text = runner.render(__file__, config=config, dataset=dataset, depth=s.depth,
                       width=s.width, seeds=', '.join(map(str, s.seeds)), ln_n=ln_n,
                       law=halving_law(s.depth), table=table)
  values = {'xavier': [loss_ratios(r, ln_n) for r in _by_init(s, results)['xavier']],
            'kaiming': [loss_ratios(r, ln_n) for r in _by_init(s, results)['kaiming']],
            'gradient_ratio_at_init': gradient_ratios(s, results)}
  return runner.Summary(
      f'Deep plain ReLU net ({s.depth} layers): Xavier stalls, Kaiming trains', text,
      figures={'loss.png': loss_figure(s, results, ln_n=ln_n, steps=config.steps),
               'signal_at_init.png': signal_figure(s, results)},
      values=values)


EXPERIMENT = runner.Experiment(
    name='deep_relu',
    description='A 30-layer plain ReLU MLP: Xavier stalls at ln N, Kaiming trains '
                '(loss and first-layer gradient).',
    paper='He et al. (2015), Delving Deep into Rectifiers, §2.3 and Fig. 3',
    members=members, defaults=DEFAULTS, settings=Settings, settings_prefix='dr_',
    summarize=summarize, check=check,
    scales={
        'tiny': runner.Scale(
            config={'steps': 6, 'batch_size': 50, 'log_every': 3, 'eval_every': 6,
                    'diagnostics_every': 3},
            settings={'depth': 4, 'width': 16, 'seeds': (0,)},
            description='seconds: a smoke test'),
        'full': runner.Scale(
            config={'steps': 2000, 'lr': 0.02, 'log_every': 25, 'eval_every': 500,
                    'diagnostics_every': 100},
            settings={'width': 256, 'seeds': (0, 1, 2)},
            description='width 256, 2000 steps at lr 0.02 (0.05 diverges Kaiming '
                        'there), three seeds'),
    })
