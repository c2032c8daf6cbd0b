"""Glorot & Bengio (2010): the top sigmoid layer saturates; the normalized init keeps
back-propagated gradients flat.

Members, each a training run in its own sub-directory: activation (``--gs_activations``,
default sigmoid and tanh) × init (``--gs_inits``): the paper's "standard"
initialization W ~ U(±1/√n_in) (``standard_uniform``, eq. 1; PyTorch's ``nn.Linear``
default) and its "normalized" one W ~ U(±√6/√(n_in + n_out)) (``xavier_uniform``,
eq. 16). An MLP of ``--gs_depth`` hidden layers of ``--gs_width`` units (the paper: 5 ×
1000), no BatchNorm, biases 0, the output layer drawn by the same init
(``output_scale=1``), plain SGD at a constant learning rate, as in the paper. Members of
one activation differ only in the init: ``--vectorize`` trains them together.

What it measures, from every member's diagnostics (``fundamentals.diagnostics``, every
``diagnostics_every`` steps on the step's batch; step 0 is the init):

- per hidden layer over training, the mean activation and its 2nd–98th percentile band
  (``percentiles``: ``activation_p02``/``activation_p98``): the paper's Fig. 2 (sigmoid)
  and Fig. 3 (tanh). With a sigmoid the top hidden layer is pushed to 0 within the first
  steps while the layers below sit above 0.5;
- per hidden layer at init, Var(∂L/∂h_l) (Fig. 7; the paper plots ∂L/∂s, which differs
  by one factor φ′). Backwards through a layer the variance is multiplied by
  n·Var(W)·E[φ′(z)²] (eq. 13–14 in the linear regime, ``signal_propagation.predict``
  in general): n·Var(W) = 1/3 for the standard init, 1 for the normalized one on square
  layers, so only the latter keeps the variance flat where φ′ ≈ 1 (tanh).

Summarizes: ``activations.png``, ``gradients_at_init.png``, ``curves.png``, two tables
and two checks (prose in ``glorot_saturation.md``).
"""

import dataclasses
import math

import numpy as np

from fundamentals import activations
from fundamentals import data as data_lib
from fundamentals import initializers
from fundamentals import losses
from fundamentals import plots
from fundamentals import rundir
from fundamentals import report
from fundamentals import runner
from fundamentals import signal_propagation as sp
from fundamentals.config import Knobs, knob
from fundamentals.report import markdown_table

STANDARD, NORMALIZED = 'standard_uniform', 'xavier_uniform'
LABELS = {STANDARD: 'standard', NORMALIZED: 'normalized'}
DEFAULTS = {'output_init': 'same', 'output_scale': 1.0, 'momentum': 0.0,
            'schedule': 'constant', 'warmup_steps': 0, 'batch_size': 32,
            'steps': 300, 'log_every': 10, 'eval_every': 100, 'diagnostics_every': 10,
            'checkpoint_every': 0}
SATURATED_BELOW = 0.1
"""The top sigmoid layer counts as saturated at 0 once its mean activation is below this."""
EARLY_FRACTION = 0.2
"""'Early': within this fraction of the training steps."""
SECOND_MOMENT_EXAMPLES = 512
"""Training images whose ‖x‖²/N_0 feed the mean-field prediction of the gradients."""
BOUNDED = {'sigmoid': (-0.02, 1.02), 'tanh': (-1.05, 1.05)}


@dataclasses.dataclass(frozen=True)
class Settings(Knobs):
  activations: tuple[str, ...] = knob(('sigmoid', 'tanh'), 'Activations to train (the '
                                      'saturation check needs sigmoid).',
                                      group='glorot_saturation')
  lrs: tuple[float, ...] = knob((0.3, 0.03), 'Learning rate per activation of '
                                '--gs_activations (the paper chose one per model on '
                                'validation; tanh with the normalized init is unstable at '
                                'sigmoid\'s), replacing --lr.', group='glorot_saturation')
  inits: tuple[str, ...] = knob((STANDARD, NORMALIZED), 'Initializers to compare (the '
                                'gradient check needs standard_uniform and xavier_uniform).',
                                group='glorot_saturation')
  depth: int = knob(5, 'Hidden layers (the paper: 5).', group='glorot_saturation')
  width: int = knob(1000, 'Units per hidden layer (the paper: 1000).',
                    group='glorot_saturation')

  def validate(self):
    if not self.activations or not self.inits:
      raise ValueError(f'gs_activations={list(self.activations)} and gs_inits='
                       f'{list(self.inits)} must each name at least one')
    for name in self.activations:
      activations.get_activation(name)
    if len(self.lrs) != len(self.activations) or not all(
        math.isfinite(lr) and lr > 0 for lr in self.lrs):
      raise ValueError(f'gs_lrs={list(self.lrs)} must be one positive learning rate per '
                       f'activation of gs_activations={list(self.activations)}')
    for name in self.inits:
      initializers.get_scheme(name)
    if self.depth < 2:
      raise ValueError(f'gs_depth={self.depth} must be at least 2 (the gradient ratio '
                       'compares the first and last hidden layers)')
    if self.width < 1:
      raise ValueError(f'gs_width={self.width} must be a positive integer')


def member_name(activation: str, init: str) -> str:
  return f'{activation}-{LABELS.get(init, init)}'


def members(config, s: Settings) -> dict[str, dict]:
  del config  # Every member is the base config with these fields replaced.
  return {member_name(a, i): dict(activation=a, init=i, lr=lr, hidden=(s.width,) * s.depth,
                                  batchnorm=False)
          for a, lr in zip(s.activations, s.lrs) for i in s.inits}


def trace(result: runner.Result) -> dict[str, np.ndarray]:
  """Per-layer activation statistics over training: ``step`` [T] (0: the init) and
  ``mean``, ``p02``, ``p98`` [T, layers], from the diagnostics."""
  init = result.init_diagnostics
  points = ([(0, init)] if init else []) + [(r['step'], r['diagnostics'])
                                            for r in result.records if 'diagnostics' in r]
  per_layer = lambda part, key: np.array([[report.number(row[key]) for row in d[part]]
                                          for _, d in points], np.float64)
  return {'step': np.array([step for step, _ in points]),
          'mean': per_layer('layers', 'activation_mean'),
          'p02': per_layer('percentiles', 'activation_p02'),
          'p98': per_layer('percentiles', 'activation_p98')}


def saturation(result: runner.Result) -> dict:
  """The top hidden layer's mean activation at init, lowest and last, the first step
  it is below :data:`SATURATED_BELOW`, and the lowest mean of any layer below it."""
  t = trace(result)
  if not len(t['step']):
    return {}
  top, below = t['mean'][:, -1], t['mean'][:, :-1]
  finite = np.isfinite(top)
  under = np.flatnonzero(finite & (top < SATURATED_BELOW))
  return {'init': float(top[0]), 'lowest': float(np.nanmin(top)), 'end': float(top[-1]),
          'first_step_below': int(t['step'][under[0]]) if under.size else None,
          'lower_layers_lowest': float(np.nanmin(below)),
          'end_means': t['mean'][-1].tolist()}


def gradient_variances(result: runner.Result) -> np.ndarray:
  """Var(∂L/∂h_l) per hidden layer at init (the square of the diagnostics' std)."""
  init = result.init_diagnostics
  if not init:
    return np.full(len(result.config.hidden), math.nan)
  return np.array([report.number(layer['activation_grad_std']) for layer in init['layers']]) ** 2


def predicted_gradient_variances(result: runner.Result, *, num_features: int,
                                 input_second_moment: np.ndarray) -> np.ndarray:
  """Mean-field Var(∂L/∂h_l) at init, anchored at the measured last layer's
  (``signal_propagation.predict``: the variance is multiplied by
  N_l·Var(W_l)·E[φ′(z_l)²] from layer l to l − 1)."""
  config = result.config
  measured = gradient_variances(result)
  widths = [num_features, *config.hidden]
  variances = [initializers.weight_variance(config.init, (n_in, n_out),
                                            activation=config.activation)
               for n_in, n_out in zip(widths[:-1], widths[1:])]
  predicted = sp.predict(config.activation, weight_variances=variances, widths=widths,
                         input_second_moment=input_second_moment,
                         last_activation_grad_std=math.sqrt(measured[-1]))
  return np.array([row['activation_grad_std'] for row in predicted]) ** 2


def gradient_ratio(variances: np.ndarray) -> float:
  """Var(∂L/∂h_1)/Var(∂L/∂h_L): 1 when the back-propagated gradient stays flat."""
  return float(variances[0] / variances[-1])


def _distance_from_one(ratio: float) -> float:
  return abs(math.log10(ratio)) if ratio > 0 and math.isfinite(ratio) else math.inf


def gradient_comparisons(s: Settings, results) -> dict[str, dict[str, float]]:
  """Per activation with both inits: each init's first/last gradient variance ratio."""
  if not {STANDARD, NORMALIZED} <= set(s.inits):
    return {}
  return {a: {LABELS[i]: gradient_ratio(gradient_variances(results[member_name(a, i)]))
              for i in (STANDARD, NORMALIZED)} for a in s.activations}


def check(context: runner.Context, results) -> list[runner.Check]:
  s, steps = context.settings, context.config.steps
  checks = []
  if 'sigmoid' in s.activations and STANDARD in s.inits:
    r = results[member_name('sigmoid', STANDARD)]
    sat = saturation(r)
    early = EARLY_FRACTION * steps
    first = sat.get('first_step_below')
    passed = (r.status == 'completed' and first is not None and first <= early
              and sat['lower_layers_lowest'] >= SATURATED_BELOW)
    observed = (f'top layer\'s mean {sat["init"]:.3f} at init, first below '
                f'{SATURATED_BELOW:g} at step {first}, {sat["end"]:.3f} at the end; '
                f'lowest mean of the layers below it {sat["lower_layers_lowest"]:.3f}'
                if sat and first is not None else
                f'top layer\'s mean never below {SATURATED_BELOW:g} (lowest '
                f'{sat.get("lowest", math.nan):.3f})' if sat else 'no diagnostics')
    checks.append(runner.Check(
        f'sigmoid, standard init: the top hidden layer\'s mean activation falls below '
        f'{SATURATED_BELOW:g} early (by step {early:.0f}, {EARLY_FRACTION:.0%} of '
        f'training) while every layer below it stays above {SATURATED_BELOW:g} (Fig. 2)',
        observed + ('' if r.status == 'completed' else f' ({r.status})'), passed))
  ratios = gradient_comparisons(s, results)
  if ratios:
    checks.append(runner.Check(
        'at init, the normalized init\'s gradient variance ratio Var(∂L/∂h_1)/'
        'Var(∂L/∂h_L) is closer to 1 (in log) than the standard init\'s, for every '
        'activation (Fig. 7)',
        '; '.join(f'{a}: standard {v["standard"]:.3g}, normalized {v["normalized"]:.3g}'
                  for a, v in ratios.items()),
        all(_distance_from_one(v['normalized']) < _distance_from_one(v['standard'])
            for v in ratios.values())))
  return checks


def _cases(s: Settings) -> list[tuple[str, str]]:
  return [(a, i) for a in s.activations for i in s.inits]


def activations_figure(s: Settings, results):
  """Fig. 2/3 style: per member, one line per hidden layer (its mean activation over
  training), shaded between its 2nd and 98th percentiles."""
  # matplotlib when drawing, not with the module (as plots.Figure): --helpfull draws nothing.
  from matplotlib import cm  # pylint: disable=g-import-not-at-top
  fig, axes = plots.figure(len(s.activations), len(s.inits),
                           size=(4.6 * len(s.inits), 3.3 * len(s.activations)), dpi=90)
  colors = cm.viridis(np.linspace(0, 0.9, s.depth))
  for (a, i), ax in zip(_cases(s), axes.flat):
    t = trace(results[member_name(a, i)])
    for l in range(s.depth if len(t['step']) else 0):
      ax.plot(t['step'], t['mean'][:, l], color=colors[l], label=f'layer {l + 1}')
      ax.fill_between(t['step'], t['p02'][:, l], t['p98'][:, l], color=colors[l],
                      alpha=0.15, linewidth=0)
    ax.set(title=f'{a}, {LABELS.get(i, i)} init ({i})', xlabel='step',
           ylabel='activation: mean, 2–98%', ylim=BOUNDED.get(a))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
  fig.suptitle('Activations per hidden layer during training (line: mean; band: '
               '2nd–98th percentile)')
  return fig


def gradients_figure(s: Settings, results, predicted: dict) -> object:
  """Fig. 7 style: Var(∂L/∂h_l) per layer at init, measured (dots) and mean-field
  theory (lines), one panel per activation."""
  colors = {init: plots.CYCLE[k % len(plots.CYCLE)] for k, init in enumerate(s.inits)}
  cases = [{'panel': a, 'label': f'{LABELS.get(i, i)} ({i})', 'color': colors[i],
            'mean': {'var': gradient_variances(results[member_name(a, i)])},
            'spread': {'var': np.zeros(s.depth)},
            'theory': {'var': predicted[member_name(a, i)]}} for a, i in _cases(s)]
  return plots.per_layer_figure(
      cases, rows=[('var', 'Var(∂L/∂h_l) at init')],
      title='Back-propagated gradient variance per layer at init: measured (dots), '
            'mean-field theory (lines)', height=3.6)


def curves_figure(s: Settings, results):
  """Train loss and test accuracy of every member over training."""
  colors = {init: plots.CYCLE[k % len(plots.CYCLE)] for k, init in enumerate(s.inits)}
  styles = dict(zip(s.activations, ('-', '--', ':', '-.') * len(s.activations)))
  loss, accuracy = [], []
  for a, i in _cases(s):
    r = results[member_name(a, i)]
    label = f'{member_name(a, i)}, lr {r.config.lr:g}'
    loss.append({'x': [rec['step'] for rec in r.records],
                 'y': [report.number(rec['train_loss']) for rec in r.records], 'style': styles[a],
                 'color': colors[i], 'label': label})
    tested = [rec for rec in r.records if 'test_accuracy' in rec]
    accuracy.append({'x': [rec['step'] for rec in tested],
                     'y': [report.number(rec['test_accuracy']) for rec in tested],
                     'style': styles[a] + 'o', 'color': colors[i], 'label': label})
  return plots.line_panels_figure({
      'train loss (mean over each log window)': {'lines': loss, 'xlabel': 'step',
                                                 'ylabel': 'cross-entropy',
                                                 'yscale': 'log'},
      'test accuracy': {'lines': accuracy, 'xlabel': 'step', 'ylabel': 'accuracy'}},
      size=(11, 4), grid=True, dpi=90)


def _tails(name: str, result: runner.Result) -> str:
  """'name: top layer 2–98% [lo, hi] at the end'."""
  t = trace(result)
  if not len(t['step']):
    return f'{name}: no diagnostics'
  return f'{name}: top layer 2–98% [{t["p02"][-1, -1]:.2f}, {t["p98"][-1, -1]:.2f}] at the end'


def summarize(context: runner.Context, results) -> runner.Summary:
  config, s, dataset = context.config, context.settings, context.dataset
  x = data_lib.normalize(dataset.train_images[:SECOND_MOMENT_EXAMPLES], dataset.mean,
                         dataset.std)
  second_moment = np.mean(np.square(np.asarray(x, np.float64)), axis=1)
  predicted = {member_name(a, i): predicted_gradient_variances(
      results[member_name(a, i)], num_features=dataset.num_features,
      input_second_moment=second_moment) for a, i in _cases(s)}
  saturation_rows, gradient_rows = [], []
  for a, i in _cases(s):
    name = member_name(a, i)
    r, sat = results[name], saturation(results[name])
    sm = r.summary or {}
    saturation_rows.append([
        name, r.status, report.formatted(sat.get('init'), '.3f'), report.formatted(sat.get('lowest'), '.3f'),
        report.formatted(sat.get('end'), '.3f'),
        sat['first_step_below'] if a == 'sigmoid' and rundir.finite(
            sat.get('first_step_below')) else '—',
        ', '.join(f'{m:.2f}' for m in sat.get('end_means', [])),
        report.formatted(sm.get('final_train_loss'), '.3f'), report.formatted(sm.get('final_test_accuracy'), '.1%')])
    measured = gradient_variances(r)
    gradient_rows.append([name, *(f'{v:.2e}' for v in measured),
                          report.formatted(gradient_ratio(measured), '.3g'),
                          report.formatted(gradient_ratio(predicted[name]), '.3g')])
  tables = {
      'saturation_table': markdown_table(
          ['member', 'status', 'top layer mean: init', 'lowest', 'end',
           f'first step < {SATURATED_BELOW:g} (sigmoid)', 'end means, layer 1 … L',
           'final train loss', 'test accuracy'], saturation_rows),
      'gradient_table': markdown_table(
          ['member', *(f'layer {l + 1}' for l in range(s.depth)),
           'ratio 1/L: measured', 'theory'], gradient_rows)}
  text = runner.render(
      __file__, **tables, config=config, dataset=dataset, depth=s.depth, width=s.width,
      num_train=len(dataset.train_labels), num_test=len(dataset.test_labels),
      threshold=SATURATED_BELOW, ln_n=losses.expected_initial_loss(dataset.num_classes),
      second_moment=float(np.mean(second_moment)), lrs=', '.join(
          f'{a} {lr:g}' for a, lr in zip(s.activations, s.lrs)),
      tails='; '.join(_tails(member_name(a, i), results[member_name(a, i)])
                      for a, i in _cases(s) if a != 'sigmoid') or 'no tanh member')
  values = {'saturation': {member_name(a, i): saturation(results[member_name(a, i)])
                           for a, i in _cases(s)},
            'gradient_ratios': gradient_comparisons(s, results)}
  return runner.Summary(
      f'Glorot & Bengio (2010): sigmoid saturation and back-propagated gradients '
      f'({s.depth} × {s.width})', text,
      figures={'activations.png': activations_figure(s, results),
               'gradients_at_init.png': gradients_figure(s, results, predicted),
               'curves.png': curves_figure(s, results)},
      values=values)


EXPERIMENT = runner.Experiment(
    name='glorot_saturation',
    description='Sigmoid\'s top hidden layer saturates at 0; the normalized (Xavier) init '
                'keeps back-propagated gradient variance flat.',
    paper='Glorot & Bengio (2010), Understanding the difficulty of training deep '
          'feedforward neural networks, §3–4, Fig. 2, 3 and 7',
    members=members, defaults=DEFAULTS, settings=Settings, settings_prefix='gs_',
    summarize=summarize, check=check,
    scales={
        'tiny': runner.Scale(
            config={'steps': 6, 'batch_size': 20, 'log_every': 3, 'eval_every': 6,
                    'diagnostics_every': 2},
            settings={'depth': 3, 'width': 16}, description='seconds: a smoke test'),
        'full': runner.Scale(
            config={'steps': 10000, 'batch_size': 10, 'log_every': 100,
                    'eval_every': 1000, 'diagnostics_every': 100},
            settings={'lrs': (0.1, 0.01)},
            description='the paper\'s batch of 10, 10,000 steps (17 epochs)'),
    })
