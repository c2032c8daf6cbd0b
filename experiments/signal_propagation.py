"""Signal propagation at init: every layer measured on a data batch, against theory.

Members (measured, nothing trained): initializer (``--sp_inits``) × activation
(``--sp_activations``) × BatchNorm (``--sp_batchnorm`` off/on/both), each an MLP of
``--sp_depth`` hidden layers of ``--sp_width`` units built from the run's config
(``models.create_model``: every model flag applies), over ``--sp_draws`` independent
weight draws, on one training batch (``--batch_size`` examples). Summarizes: per-layer
activation histograms (Glorot & Bengio, 2010, fig. 6 style), per-layer std of
activations and of the gradients ∂L/∂h_l and ∂L/∂W_l with the mean-field prediction
overlaid, the saturated / dead fraction per layer, and the tables of ``report.md``
(prose in ``signal_propagation.md``).
"""

import dataclasses
import math

import jax
import numpy as np

from fundamentals import activations
from fundamentals import data as data_lib
from fundamentals import diagnostics
from fundamentals import initializers
from fundamentals import models
from fundamentals import plots
from fundamentals import runner
from fundamentals import signal_propagation as sp
from fundamentals.config import Knobs, knob
from fundamentals.report import markdown_table

BATCHNORM_SETTINGS = {'off': (False,), 'on': (True,), 'both': (False, True)}
BOUNDED = {'tanh': (-1.0, 1.0), 'sigmoid': (0.0, 1.0)}


@dataclasses.dataclass(frozen=True)
class Settings(Knobs):
  inits: tuple[str, ...] = knob(('normal', 'xavier', 'kaiming'), 'Initializers to '
                                'compare (names as --init, or lsuv).',
                                group='signal_propagation')
  activations: tuple[str, ...] = knob(('tanh', 'relu'), 'Activations to compare.',
                                      group='signal_propagation')
  depth: int = knob(10, 'Hidden layers.', group='signal_propagation')
  width: int = knob(512, 'Units per hidden layer.', group='signal_propagation')
  batchnorm: str = knob('off', 'Without BatchNorm, with it, or both: off, on, both.',
                        group='signal_propagation')
  draws: int = knob(8, 'Independent weight draws per case.', group='signal_propagation')

  def validate(self):
    if not self.inits or not self.activations:
      raise ValueError(f'sp_inits={list(self.inits)} and sp_activations='
                       f'{list(self.activations)} must each name at least one')
    for name in self.inits:
      if name not in initializers.DATA_DEPENDENT:
        initializers.get_scheme(name)
    for name in self.activations:
      activations.get_activation(name)
    if self.batchnorm not in BATCHNORM_SETTINGS:
      raise ValueError(f'sp_batchnorm={self.batchnorm!r} must be one of '
                       f'{sorted(BATCHNORM_SETTINGS)}')
    for name in ('depth', 'width', 'draws'):
      if getattr(self, name) < 1:
        raise ValueError(f'sp_{name}={getattr(self, name)} must be positive')


def members(config, s: Settings) -> dict[str, dict]:
  return {f'{init}-{activation}{"-bn" if bn else ""}': dict(
      init=init, activation=activation, batchnorm=bn, hidden=(s.width,) * s.depth)
          for bn in BATCHNORM_SETTINGS[s.batchnorm] for activation in s.activations
          for init in s.inits}


def batch(context: runner.Context):
  """The measured batch: ``batch_size`` training examples drawn with the seed."""
  dataset, config = context.dataset, context.config
  idx = np.sort(np.random.default_rng(config.seed).choice(
      len(dataset.train_labels), config.batch_size, replace=False))
  return (data_lib.normalize(dataset.train_images[idx], dataset.mean, dataset.std),
          dataset.train_labels[idx])


def histogram(activation: str, layers: list[np.ndarray]) -> dict:
  """Per layer, the fraction of values per bin: bounded activations on their range,
  others as |values| on log bins (growth by a constant factor is a constant shift)."""
  values = [np.ravel(h) for h in layers]
  if activation in BOUNDED:
    edges = np.linspace(*BOUNDED[activation], 61)
  else:
    values = [np.abs(v[v != 0]) for v in values]
    pooled = np.concatenate(values) if any(v.size for v in values) else np.ones(1)
    lo, hi = np.percentile(pooled, [0.1, 99.9])
    edges = np.geomspace(lo, max(hi, 1.01 * lo), 61)
  return {'edges': edges.tolist(), 'fractions': [
      (np.histogram(np.clip(v, edges[0], edges[-1]), edges)[0] / max(len(v), 1)).tolist()
      for v in values]}


def measure(context: runner.Context, member) -> dict:
  """Builds ``draws`` models of one case, measures each, and predicts."""
  config, s, dataset = member.config, context.settings, context.dataset
  x, labels = batch(context)
  data_dependent = config.init in initializers.DATA_DEPENDENT
  second_moment = np.mean(np.square(np.asarray(x, np.float64)), axis=1)
  measured, predicted, lsuv, histograms = [], [], [], None
  for draw in range(s.draws):
    model = models.create_model(config, num_features=dataset.num_features,
                                num_classes=dataset.num_classes,
                                key=jax.random.fold_in(jax.random.key(config.seed), draw))
    if data_dependent:
      lsuv.append(sp.apply_lsuv(model, x))
    measured.append(sp.measure(model, x, labels))
    if histograms is None:
      histograms = histogram(config.activation, sp.activations_per_layer(model, x))
    if data_dependent or draw == 0:  # Data-dependent: theory from the actual kernels.
      predicted.append(sp.predict(
          config.activation, weight_variances=sp.model_weight_variances(
              model, None if data_dependent else config.init),
          widths=sp.model_widths(model), input_second_moment=second_moment,
          batchnorm=config.batchnorm))
  mean_prediction = [{key: float(np.mean([p[l][key] for p in predicted]))
                      for key in predicted[0][l]} for l in range(s.depth)]
  # The last layer's gradient depends on the output layer and the loss, not on the
  # recursion: theory starts from the measured one.
  last_grad_std = float(np.mean([rows[-1]['activation_grad_std'] for rows in measured]))
  return {'measured': measured, 'histograms': histograms, 'lsuv': lsuv or None,
          'predicted': sp.anchor_gradients(mean_prediction, last_grad_std,
                                           batchnorm=config.batchnorm)}


class Case:
  """One measured member: per-layer means over draws, their standard errors, theory."""

  def __init__(self, result: runner.Result):
    self.init, self.activation = result.config.init, result.config.activation
    self.batchnorm, self.output = result.config.batchnorm, result.output
    self.health = diagnostics.unit_health(self.activation)
    self.label = f'{self.init}{" +BN" if self.batchnorm else ""}'

  def _values(self, key: str) -> np.ndarray:
    key = self.health if key == 'inactive' else key
    return np.array([[row.get(key, math.nan) for row in draw]
                     for draw in self.output['measured']], np.float64)

  def mean(self, key: str) -> np.ndarray:
    return np.mean(self._values(key), axis=0)

  def spread(self, key: str) -> np.ndarray:
    values = self._values(key)
    if len(values) < 2:
      return np.zeros(values.shape[1])
    return values.std(axis=0, ddof=1) / math.sqrt(len(values))

  def theory(self, key: str) -> np.ndarray:
    key = self.health if key == 'inactive' else key
    return np.array([row.get(key, math.nan) for row in self.output['predicted']],
                    np.float64)  # JSON holds NaN as 'nan'.

  def last_layer(self) -> dict:
    grads, theory = self.mean('activation_grad_std'), self.theory('activation_grad_std')
    return {'init': self.init, 'activation': self.activation, 'batchnorm': self.batchnorm,
            'sigma_w2_hidden': self.output['predicted'][-1]['sigma_w2'],
            'activation_std': self.mean('activation_std')[-1],
            'activation_std_se': self.spread('activation_std')[-1],
            'predicted_activation_std': self.theory('activation_std')[-1],
            'inactive_kind': activations.INACTIVE[self.activation],
            'inactive': self.mean('inactive')[-1],
            'max_inactive': np.max(self.mean('inactive')),
            'predicted_inactive': self.theory('inactive')[-1],
            'grad_ratio': grads[0] / grads[-1], 'predicted_grad_ratio': theory[0] / theory[-1]}


def _fmt(value: float, digits: int = 4) -> str:
  return 'n/a' if value is None or not math.isfinite(value) else f'{value:.{digits}g}'


def _pct(value: float) -> str:
  return 'n/a' if value is None or not math.isfinite(value) else f'{100 * value:.1f}%'


def check(context: runner.Context, results) -> list[runner.Check]:
  cases = [Case(r) for r in results.values()]
  plain = [c.last_layer() for c in cases if not c.batchnorm]
  ratios = [row['activation_std'] / row['predicted_activation_std'] for row in plain]
  checks = [runner.Check(
      'without BatchNorm, the mean-field theory predicts the last layer\'s activation '
      'std within 10% for every init and activation',
      f'measured/theory from {min(ratios):.3f} to {max(ratios):.3f}' if ratios
      else 'no case without BatchNorm', all(0.9 <= r <= 1.1 for r in ratios))]
  tanh = {c.init: c.last_layer()['inactive'] for c in cases
          if c.activation == 'tanh' and not c.batchnorm}
  if {'normal', 'kaiming'} <= set(tanh):
    checks.append(runner.Check(
        'N(0, 1) saturates a deep tanh net (> 50% of the last layer) while Kaiming '
        'keeps it below 10%', f'normal {tanh["normal"]:.1%}, kaiming {tanh["kaiming"]:.1%}',
        tanh['normal'] > 0.5 and tanh['kaiming'] < 0.1))
  return checks


def summarize(context: runner.Context, results) -> runner.Summary:
  s = context.settings
  cases = [Case(r) for r in results.values()]
  last = [c.last_layer() for c in cases]
  table = markdown_table(
      ['init', 'activation', 'BN', 'σ_w²', 'activation std: measured', 'theory',
       'measured/theory', 'inactive: measured', 'theory', 'max over layers',
       'grad ratio 1/L: measured', 'theory'],
      [[r['init'], r['activation'], 'on' if r['batchnorm'] else 'off',
        _fmt(r['sigma_w2_hidden']),
        f'{_fmt(r["activation_std"])} ± {_fmt(r["activation_std_se"], 2)}',
        _fmt(r['predicted_activation_std']),
        f'{r["activation_std"] / r["predicted_activation_std"]:.3f}',
        f'{_pct(r["inactive"])} {r["inactive_kind"] or "inactive"}',
        _pct(r['predicted_inactive']), _pct(r['max_inactive']),
        _fmt(r['grad_ratio'], 3), _fmt(r['predicted_grad_ratio'], 3)] for r in last])
  lsuv = [c for c in cases if c.output['lsuv']]
  lsuv_section = ''.join(
      ['\n## LSUV\n\nOrthogonal pre-init, then each layer\'s kernel rescaled until its '
       'output variance is 1 ± 0.1 (Mishkin & Matas, 2016). Theory uses the rescaled '
       'kernels\' variances. Iterations per layer (first draw):\n\n'] +
      [f'- {c.activation}{" +BN" if c.batchnorm else ""}: '
       + ', '.join(str(i['iterations']) for i in c.output['lsuv'][0]) + '\n'
       for c in lsuv]) if lsuv else ''
  per_layer = '\n'.join(
      f'### {c.init}, {c.activation}, BN {"on" if c.batchnorm else "off"}\n\n' +
      markdown_table(['layer', 'preact std', 'theory', 'act std', 'theory', 'inactive',
                      'theory', '∂L/∂h std', 'theory', '∂L/∂W std'],
                     _per_layer_rows(c, s.depth)) + '\n' for c in cases)
  text = runner.render(
      __file__, config=context.config, dataset=context.dataset, depth=s.depth,
      width=s.width, draws=s.draws, margin=1 - activations.SATURATION_THRESHOLD,
      threshold=activations.SATURATION_THRESHOLD, last_layer_table=table,
      lsuv_section=lsuv_section, per_layer=per_layer)
  return runner.Summary('Signal propagation at initialization', text, figures={
      'activation_histograms.png': histogram_figure(cases),
      'signal_std.png': std_figure(cases), 'inactive.png': inactive_figure(cases)},
      values={'last_layer': last})


def _per_layer_rows(c: Case, depth: int) -> list[list[str]]:
  grads = lambda v: _fmt(v, 3)
  columns = [(c.mean('preactivation_std'), _fmt), (c.theory('preactivation_std'), _fmt),
             (c.mean('activation_std'), _fmt), (c.theory('activation_std'), _fmt),
             (c.mean('inactive'), _pct), (c.theory('inactive'), _pct),
             (c.mean('activation_grad_std'), grads), (c.theory('activation_grad_std'), grads),
             (c.mean('kernel_grad_std'), grads)]
  return [[l + 1, *(f(values[l]) for values, f in columns)] for l in range(depth)]


def _panels(cases: list[Case]) -> list[tuple[str, bool]]:
  return list(dict.fromkeys((c.activation, c.batchnorm) for c in cases))


def _title(activation: str, batchnorm: bool) -> str:
  return f'{activation}{", BatchNorm" if batchnorm else ""}'


def _colors(cases: list[Case]) -> dict:
  # matplotlib when drawing, not with the module (as plots.Figure): --helpfull draws nothing.
  from matplotlib import cm  # pylint: disable=g-import-not-at-top
  return {init: cm.tab10(i % 10) for i, init in enumerate(dict.fromkeys(c.init for c in cases))}


def histogram_figure(cases: list[Case]):
  """One panel per case, one curve per layer: the distribution of activation values."""
  # matplotlib when drawing, not with the module (as plots.Figure): --helpfull draws nothing.
  from matplotlib import cm  # pylint: disable=g-import-not-at-top
  panels, inits = _panels(cases), list(dict.fromkeys(c.init for c in cases))
  fig, axes = plots.figure(len(panels), len(inits), size=(3.6 * len(inits), 2.8 * len(panels)))
  for c in cases:
    ax = axes[panels.index((c.activation, c.batchnorm))][inits.index(c.init)]
    h = c.output['histograms']
    edges = np.asarray(h['edges'])
    colors = cm.viridis(np.linspace(0, 0.95, len(h['fractions'])))
    bounded = c.activation in BOUNDED
    centres = 0.5 * (edges[1:] + edges[:-1]) if bounded else np.sqrt(edges[1:] * edges[:-1])
    for l, (fractions, color) in enumerate(zip(h['fractions'], colors), start=1):
      ax.plot(centres, fractions, color=color,
              label=f'layer {l}' if l in (1, len(h['fractions'])) else None)
    if bounded:
      ax.set_yscale('log')
    else:
      ax.set_xscale('log')
    ax.set_xlabel('activation value' if bounded else '|activation| (nonzero values)',
                  fontsize=8)
    ax.set_title(f'{c.init}, {_title(c.activation, c.batchnorm)}', fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
  for row in axes:
    row[0].set_ylabel('fraction of values')
  fig.suptitle('Activations per layer at init (dark: layer 1, light: last)')
  return fig


def _series(cases: list[Case], keys: list[str], factor: float = 1.0) -> list[dict]:
  colors = _colors(cases)
  return [{'panel': _title(c.activation, c.batchnorm), 'label': c.init,
           'color': colors[c.init],
           **{part: {k: factor * getattr(c, part)(k) for k in keys}
              for part in ('mean', 'spread', 'theory')}} for c in cases]


def std_figure(cases: list[Case]):
  """Rows: std of activations, of ∂L/∂h_l, of ∂L/∂W_l; measured (markers) vs theory."""
  rows = [('activation_std', 'std of activations h_l'),
          ('activation_grad_std', 'std of ∂L/∂h_l'), ('kernel_grad_std', 'std of ∂L/∂W_l')]
  return plots.per_layer_figure(
      _series(cases, [k for k, _ in rows]), rows=rows, title='Std per layer at init: '
      'measured (dots, ± s.e. over draws), mean-field theory (lines)')


def inactive_figure(cases: list[Case]):
  """Saturated (tanh, sigmoid, SELU) or dead (ReLU) fraction per layer, vs theory."""
  series = _series(cases, ['inactive'], factor=100)
  for c, s in zip(cases, series):
    s['ylabel'] = {'saturated': '% saturated elements', 'dead': '% dead units'}.get(
        activations.INACTIVE[c.activation], '% inactive (not defined)')
  return plots.per_layer_figure(
      series, rows=[('inactive', '% inactive')], log=False,
      ylim=(-3, 103), height=3.2,
      title='Inactive per layer at init: measured (dots), theory (lines)')


EXPERIMENT = runner.Experiment(
    name='signal_propagation',
    description='Signal propagation at init: measured vs mean-field theory, per layer.',
    members=members, settings=Settings, settings_prefix='sp_', measure=measure,
    summarize=summarize, check=check,
    scales={'tiny': runner.Scale(config={'batch_size': 32},
                                 settings={'depth': 3, 'width': 32, 'draws': 2}),
            'full': runner.Scale(config={'batch_size': 256},
                                 settings={'depth': 50, 'width': 1024, 'draws': 16,
                                           'batchnorm': 'both'})})
