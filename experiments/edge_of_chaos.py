"""Edge of chaos: random tanh nets train to a depth of about 6ξ_c (Schoenholz et al., 2017).

Members, each a short SGD run in its own sub-directory: a tanh MLP without BatchNorm
of depth L ∈ ``--eoc_depths`` hidden layers of ``--eoc_width`` units, for every
σ_w² ∈ ``--eoc_weight_variances``: hidden kernels LeCun N(0, σ_w²/fan_in)
(``init_gain`` = σ_w, the first layer included), hidden biases N(0, σ_b²)
(``bias_std`` = σ_b, σ_b² = ``--eoc_bias_variance``), the readout LeCun N(0, 1/fan_in)
(``output_init='same'`` takes gain 1, ``output_scale=1``). Members of one depth
differ only in per-run fields (init_gain): ``--vectorize`` trains them together.

Mean-field theory (``fundamentals.signal_propagation.depth_scales``) gives, per σ_w²,
the fixed point q*, χ₁ = σ_w² E[φ′(√q* z)²], the fixed correlation c* and the depth
scale ξ_c = −1/ln χ_c over which the correlation of two inputs approaches c*; ξ_c
diverges on the order-to-chaos line χ₁ = 1 (σ_w² ≈ 1.76 at σ_b² = 0.05). The paper's
claim: a net trains when L ≲ 6ξ_c, and does not beyond.

A cell is *trainable* when its final accuracy on the whole training set reaches
``--eoc_trainable_ratio`` × chance (1/classes); a run that diverged is not. Check:
the fraction of trainable cells inside the region L ≤ 6ξ_c is at least
``INSIDE_AT_LEAST`` and outside it at most ``OUTSIDE_AT_MOST``; and the critical σ_w²
computed from χ₁ = 1 matches the paper's phase diagram (at σ_b² = 0.05).

Summarizes: ``trainability.png`` (final train accuracy over depth × σ_w², the 6ξ_c
curve overlaid), ``depth_scales.png`` (χ₁, ξ_c, ξ_q over σ_w²), the tables of
``report.md`` (prose in ``edge_of_chaos.md``).
"""

import dataclasses
import functools
import math

import numpy as np

from fundamentals import plots
from fundamentals import runner
from fundamentals import signal_propagation as sp
from fundamentals.config import Knobs, knob
from fundamentals.report import markdown_table

DEFAULTS = {'activation': 'tanh', 'init': 'lecun', 'batchnorm': False,
            'output_init': 'same', 'output_scale': 1.0, 'optimizer': 'sgd', 'lr': 0.002,
            'momentum': 0.9, 'schedule': 'constant', 'steps': 300, 'batch_size': 64,
            'log_every': 50, 'eval_every': 300, 'diagnostics_every': 0,
            'checkpoint_every': 0}
DEPTH_SCALES = 6.0
"""The paper's bound on the trainable depth, in units of ξ_c."""
INSIDE_AT_LEAST = 0.7
"""At least this fraction of the cells with L ≤ 6ξ_c must be trainable."""
OUTSIDE_AT_MOST = 0.3
"""At most this fraction of the cells with L > 6ξ_c may be trainable."""
PAPER_CRITICAL = {0.05: 1.76}
"""σ_b² → the critical σ_w² read off the paper's phase diagram (Fig. 1)."""
CRITICAL_TOLERANCE = 0.01
CURVE_POINTS = 46


@dataclasses.dataclass(frozen=True)
class Settings(Knobs):
  weight_variances: tuple[float, ...] = knob(
      (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0), 'σ_w² of the hidden kernels, '
      'comma-separated (init_gain = √σ_w²; the paper: 1 to 4).', group='edge_of_chaos')
  depths: tuple[int, ...] = knob((10, 20, 30, 40, 50, 60), 'Depths L (hidden layers), '
                                 'comma-separated.', group='edge_of_chaos')
  width: int = knob(64, 'Units per hidden layer.', group='edge_of_chaos')
  bias_variance: float = knob(0.05, 'σ_b² of the hidden biases (bias_std = √σ_b²; the '
                              'paper: 0.05).', group='edge_of_chaos')
  trainable_ratio: float = knob(
      3.0, 'A cell is trainable when its final train accuracy reaches this multiple of '
      'chance (1/classes).', group='edge_of_chaos')

  def validate(self):
    if not self.weight_variances or any(not (math.isfinite(v) and v > 0)
                                        for v in self.weight_variances):
      raise ValueError(f'eoc_weight_variances={list(self.weight_variances)} must be one or '
                       'more positive numbers')
    if not self.depths or any(d < 1 for d in self.depths):
      raise ValueError(f'eoc_depths={list(self.depths)} must be one or more positive '
                       'integers')
    for name, values in (('weight_variances', self.weight_variances),
                         ('depths', self.depths)):
      if len(set(values)) != len(values):
        raise ValueError(f'eoc_{name}={list(values)} repeats a value')
    if self.width < 1:
      raise ValueError(f'eoc_width={self.width} must be a positive integer')
    if not (math.isfinite(self.bias_variance) and self.bias_variance >= 0):
      raise ValueError(f'eoc_bias_variance={self.bias_variance} must be finite and >= 0')
    if not self.trainable_ratio > 1:
      raise ValueError(f'eoc_trainable_ratio={self.trainable_ratio} must exceed 1 '
                       '(chance itself)')


def member_name(depth: int, sigma_w2: float) -> str:
  return f'L{depth}-w{sigma_w2:g}'


def members(config, s: Settings) -> dict[str, dict]:
  # Theory first: an activation without a finite fixed point q* is refused before
  # anything trains (ValueError from signal_propagation).
  for sigma_w2 in s.weight_variances:
    theory(config.activation, sigma_w2, s.bias_variance)
  return {member_name(depth, sigma_w2): dict(
      hidden=(s.width,) * depth, init_gain=math.sqrt(sigma_w2),
      bias_std=math.sqrt(s.bias_variance))
          for depth in sorted(s.depths) for sigma_w2 in sorted(s.weight_variances)}


@functools.lru_cache(maxsize=64)
def theory(activation: str, sigma_w2: float, sigma_b2: float) -> dict[str, float]:
  """``signal_propagation.depth_scales`` of one σ_w² (cached: check and summary share it)."""
  return sp.depth_scales(activation, sigma_w2=sigma_w2, sigma_b2=sigma_b2)


@functools.lru_cache(maxsize=8)
def critical(activation: str, sigma_b2: float) -> float:
  """σ_w² where χ₁ = 1 (NaN when there is no transition in (0.5, 10))."""
  try:
    return sp.critical_weight_variance(activation, sigma_b2=sigma_b2)
  except ValueError:
    return math.nan


def layers_to_fixed_point(activation: str, *, sigma_w2: float, sigma_b2: float,
                          q1: float, rel: float = 0.01, max_layers: int = 1000) -> int:
  """Layers l until |q^l − q*| ≤ rel·q*, from the first layer's q¹ (the length map iterated)."""
  q_star = theory(activation, sigma_w2, sigma_b2)['q_star']
  q = q1
  for layer in range(1, max_layers + 1):
    if abs(q - q_star) <= rel * max(q_star, 1e-12):
      return layer
    q = float(sp.variance_map(activation, q, sigma_w2=sigma_w2, sigma_b2=sigma_b2))
  return max_layers


@dataclasses.dataclass(frozen=True)
class Cell:
  """One member: its depth and σ_w², the final train accuracy, and theory's verdict."""
  name: str
  depth: int
  sigma_w2: float
  accuracy: float  # NaN: diverged (or missing).
  status: str
  bound: float  # 6ξ_c.

  @property
  def inside(self) -> bool:
    return self.depth <= self.bound


def cells(context: runner.Context, results) -> list[Cell]:
  s, activation = context.settings, context.config.activation
  out = []
  for depth in sorted(s.depths):
    for sigma_w2 in sorted(s.weight_variances):
      r = results[member_name(depth, sigma_w2)]
      accuracy = ((r.summary or {}).get('final_train_accuracy')
                  if r.status == 'completed' else None)
      out.append(Cell(r.name, depth, sigma_w2,
                      math.nan if accuracy is None else float(accuracy), r.status,
                      DEPTH_SCALES * theory(activation, sigma_w2, s.bias_variance)['xi_c']))
  return out


def num_classes(results) -> int:
  """N from any member's expected initial loss ln N (no need to load the data)."""
  for r in results.values():
    if r.summary and r.summary.get('expected_initial_loss'):
      return round(math.exp(r.summary['expected_initial_loss']))
  raise ValueError('no member has a summary to read the number of classes from')


def trainable_threshold(s: Settings, results) -> float:
  return s.trainable_ratio / num_classes(results)


def is_trainable(cell: Cell, threshold: float) -> bool:
  return cell.status == 'completed' and cell.accuracy >= threshold


def fractions(grid: list[Cell], threshold: float) -> dict[str, tuple[int, int]]:
  """(trainable, all) cells inside (L ≤ 6ξ_c) and outside the region."""
  out = {}
  for side, members_ in (('inside', [c for c in grid if c.inside]),
                         ('outside', [c for c in grid if not c.inside])):
    out[side] = (sum(is_trainable(c, threshold) for c in members_), len(members_))
  return out


def _fraction(pair: tuple[int, int]) -> float:
  return pair[0] / pair[1] if pair[1] else math.nan


def check(context: runner.Context, results) -> list[runner.Check]:
  s, activation = context.settings, context.config.activation
  threshold = trainable_threshold(s, results)
  counts = fractions(cells(context, results), threshold)
  inside, outside = _fraction(counts['inside']), _fraction(counts['outside'])
  both = counts['inside'][1] > 0 and counts['outside'][1] > 0
  checks = [runner.Check(
      f'trainable (final train accuracy ≥ {s.trainable_ratio:g}× chance = '
      f'{threshold:.1%}) in ≥ {INSIDE_AT_LEAST:.0%} of the cells with depth L ≤ '
      f'{DEPTH_SCALES:g}ξ_c and in ≤ {OUTSIDE_AT_MOST:.0%} of those beyond',
      (f'inside {counts["inside"][0]}/{counts["inside"][1]} = {inside:.0%}, outside '
       f'{counts["outside"][0]}/{counts["outside"][1]} = {outside:.0%}') if both else
      (f'the grid has no cells {"inside" if not counts["inside"][1] else "outside"} the '
       f'region: widen --eoc_depths or --eoc_weight_variances'),
      both and inside >= INSIDE_AT_LEAST and outside <= OUTSIDE_AT_MOST)]
  paper = PAPER_CRITICAL.get(s.bias_variance)
  if paper is not None and activation == 'tanh':
    computed = critical(activation, s.bias_variance)
    checks.append(runner.Check(
        f'the order-to-chaos line χ₁ = 1 at σ_b² = {s.bias_variance:g} lies at σ_w² ≈ '
        f'{paper} (the paper\'s Fig. 1), within {CRITICAL_TOLERANCE}',
        f'σ_w² = {computed:.4f}', abs(computed - paper) <= CRITICAL_TOLERANCE))
  return checks


def _edges(values: list[float]) -> np.ndarray:
  """Cell edges halfway between sorted grid values (the ends mirrored)."""
  v = np.asarray(values, np.float64)
  if len(v) == 1:
    return np.array([v[0] - 0.5, v[0] + 0.5])
  mid = (v[1:] + v[:-1]) / 2
  return np.concatenate([[2 * v[0] - mid[0]], mid, [2 * v[-1] - mid[-1]]])


def curve(activation: str, s: Settings) -> dict[str, np.ndarray]:
  """Theory on a fine σ_w² grid spanning the experiment's, for the figures."""
  lo, hi = min(s.weight_variances), max(s.weight_variances)
  grid = np.unique(np.concatenate([np.linspace(lo, hi, CURVE_POINTS),
                                   s.weight_variances]))
  rows = [theory(activation, float(v), s.bias_variance) for v in grid]
  out = {'sigma_w2': grid, **{k: np.array([r[k] for r in rows]) for k in rows[0]}}
  crit = critical(activation, s.bias_variance)
  if lo < crit < hi:  # The curve's peak: there χ₁ = χ_c = c* = 1 and ξ_c = ∞ exactly.
    q = sp.fixed_point_variance(activation, sigma_w2=crit, sigma_b2=s.bias_variance)
    peak = {'sigma_w2': crit, 'q_star': q, 'chi_1': 1.0, 'c_star': 1.0, 'chi_c': 1.0,
            'xi_c': math.inf, 'xi_q': sp.depth_scale(float(sp.variance_map_slope(
                activation, q, sigma_w2=crit)))}
    at = np.searchsorted(out['sigma_w2'], crit)
    out = {k: np.insert(v, at, peak[k]) for k, v in out.items()}
  return out


def trainability_figure(grid: list[Cell], s: Settings, theory_curve, *, threshold: float,
                        critical_sigma_w2: float, title: str):
  # matplotlib when drawing, not with the module (as plots.Figure): --helpfull draws nothing.
  from matplotlib import patheffects  # pylint: disable=g-import-not-at-top
  depths, variances = sorted(s.depths), sorted(s.weight_variances)
  accuracy = np.full((len(depths), len(variances)), np.nan)
  for c in grid:
    accuracy[depths.index(c.depth), variances.index(c.sigma_w2)] = c.accuracy
  fig, axes = plots.figure(size=(8.5, 5.5), dpi=100)
  ax = axes[0][0]
  x_edges, y_edges = _edges(variances), np.maximum(_edges(depths), 0.0)
  mesh = ax.pcolormesh(x_edges, y_edges, np.ma.masked_invalid(accuracy), cmap='viridis',
                       vmin=0.0, vmax=max(np.nanmax(accuracy) if np.isfinite(accuracy).any()
                                          else 1.0, threshold))
  fig.colorbar(mesh, ax=ax, label='final train accuracy')
  for c in grid:
    label = ('div.' if c.status == 'diverged' else
             f'{c.accuracy:.1%}' if math.isfinite(c.accuracy) else '–')
    ax.text(c.sigma_w2, c.depth, label + ('' if is_trainable(c, threshold) else ' ✗'),
            ha='center', va='center', fontsize=7,
            color='black' if c.accuracy > 0.6 * mesh.norm.vmax else 'white')
  bound = DEPTH_SCALES * theory_curve['xi_c']
  ax.plot(theory_curve['sigma_w2'], np.minimum(bound, 1e6), color='white', linestyle='--',
          linewidth=2, label=f'{DEPTH_SCALES:g}ξ_c (mean field)',
          path_effects=[patheffects.withStroke(linewidth=3.5, foreground='black')])
  if math.isfinite(critical_sigma_w2):
    ax.axvline(critical_sigma_w2, color='tab:red', linestyle=':', linewidth=1.5,
               label=f'χ₁ = 1: σ_w² = {critical_sigma_w2:.3f}')
  ax.set(xlim=(x_edges[0], x_edges[-1]), ylim=(y_edges[0], y_edges[-1]),
         xlabel='σ_w² (weight variance × fan_in)', ylabel='depth L (hidden layers)',
         title=title + f'\n(✗: not trainable, accuracy < {threshold:.1%})')
  fig.legend(loc='outside lower center', ncols=2, fontsize=8)
  return fig


def depth_scales_figure(theory_curve, *, critical_sigma_w2: float, sigma_b2: float):
  fig, axes = plots.figure(1, 2, size=(11, 4), dpi=90)
  x = theory_curve['sigma_w2']
  left, right = axes[0]
  left.plot(x, theory_curve['chi_1'], label='χ₁ = σ_w² E[φ′(√q* z)²]')
  left.plot(x, theory_curve['c_star'], label='c* (fixed correlation)')
  left.plot(x, theory_curve['q_star'], label='q* (fixed variance)')
  left.axhline(1.0, color='gray', linewidth=0.8)
  left.set(xlabel='σ_w²', title=f'fixed points, σ_b² = {sigma_b2:g}')
  right.semilogy(x, np.where(np.isfinite(theory_curve['xi_c']), theory_curve['xi_c'],
                             np.nan), label='ξ_c (correlation)')
  right.semilogy(x, theory_curve['xi_q'], label='ξ_q (variance)')
  right.set(xlabel='σ_w²', ylabel='depth scale (layers)', title='depth scales')
  for ax in (left, right):
    if math.isfinite(critical_sigma_w2):
      ax.axvline(critical_sigma_w2, color='tab:red', linestyle=':', label='χ₁ = 1')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  return fig


def summarize(context: runner.Context, results) -> runner.Summary:
  config, s = context.config, context.settings
  activation, sigma_b2 = config.activation, s.bias_variance
  grid = cells(context, results)
  threshold = trainable_threshold(s, results)
  counts = fractions(grid, threshold)
  crit = critical(activation, sigma_b2)
  theory_curve = curve(activation, s)
  depths, variances = sorted(s.depths), sorted(s.weight_variances)
  by_key = {(c.depth, c.sigma_w2): c for c in grid}
  rows, to_q_star = [], []
  for sigma_w2 in variances:
    t = theory(activation, sigma_w2, sigma_b2)
    to_q_star.append(layers_to_fixed_point(activation, sigma_w2=sigma_w2,
                                           sigma_b2=sigma_b2, q1=sigma_w2 + sigma_b2))
    row = [f'{sigma_w2:g}', f'{t["q_star"]:.3f}', f'{t["chi_1"]:.3f}',
           f'{t["c_star"]:.3f}', f'{t["xi_c"]:.1f}', f'{DEPTH_SCALES * t["xi_c"]:.0f}',
           f'{t["xi_q"]:.2f}', str(to_q_star[-1])]
    for depth in depths:
      c = by_key[(depth, sigma_w2)]
      text = 'diverged' if c.status == 'diverged' else f'{c.accuracy:.1%}'
      text = f'**{text}**' if is_trainable(c, threshold) else text
      row.append(text + ('' if c.inside else ' †'))
    rows.append(row)
  table = markdown_table(['σ_w²', 'q*', 'χ₁', 'c*', 'ξ_c', f'{DEPTH_SCALES:g}ξ_c', 'ξ_q',
                          'layers to q*', *[f'L={d}' for d in depths]], rows)
  dataset = context.dataset
  title = (f'{activation} MLPs, width {s.width}, σ_b² = {sigma_b2:g}: final train '
           f'accuracy after {config.steps} SGD steps')
  figures = {
      'trainability.png': trainability_figure(grid, s, theory_curve, threshold=threshold,
                                              critical_sigma_w2=crit, title=title),
      'depth_scales.png': depth_scales_figure(theory_curve, critical_sigma_w2=crit,
                                              sigma_b2=sigma_b2),
  }
  inside, outside = _fraction(counts['inside']), _fraction(counts['outside'])
  text = runner.render(
      __file__, dataset=dataset, train=len(dataset.train_labels), config=config, s=s, width=s.width,
      depths=', '.join(map(str, depths)),
      variances=', '.join(f'{v:g}' for v in variances), sigma_b2=sigma_b2,
      bias_std=math.sqrt(sigma_b2), threshold=threshold, ratio=s.trainable_ratio,
      classes=num_classes(results), critical=crit,
      to_q_star=f'{min(to_q_star)}–{max(to_q_star)}', bound=DEPTH_SCALES, table=table,
      inside=f'{counts["inside"][0]}/{counts["inside"][1]} = {inside:.0%}',
      outside=f'{counts["outside"][0]}/{counts["outside"][1]} = {outside:.0%}',
      diverged=sum(c.status == 'diverged' for c in grid))
  values = {
      'critical_sigma_w2': crit,
      'trainable_threshold': threshold,
      'inside': {'trainable': counts['inside'][0], 'cells': counts['inside'][1]},
      'outside': {'trainable': counts['outside'][0], 'cells': counts['outside'][1]},
      'cells': [{'depth': c.depth, 'sigma_w2': c.sigma_w2, 'accuracy': c.accuracy,
                 'status': c.status, 'bound': c.bound, 'inside': c.inside,
                 'trainable': is_trainable(c, threshold)} for c in grid],
      'theory': {f'{v:g}': theory(activation, v, sigma_b2) for v in variances},
  }
  return runner.Summary('Edge of chaos: trainable depth ≲ 6ξ_c', text, figures=figures,
                        values=values)


EXPERIMENT = runner.Experiment(
    name='edge_of_chaos',
    description='Trainability of deep tanh MLPs over depth × σ_w² against the mean-field '
                'bound L ≲ 6ξ_c.',
    paper='Schoenholz, Gilmer, Ganguli & Sohl-Dickstein (2017), Deep Information '
          'Propagation (trainable depth ≲ 6ξ_c)',
    members=members, defaults=DEFAULTS, settings=Settings, settings_prefix='eoc_',
    summarize=summarize, check=check,
    scales={
        'tiny': runner.Scale(
            config={'steps': 4, 'batch_size': 32, 'log_every': 2, 'eval_every': 4},
            settings={'weight_variances': (1.0, 2.0, 4.0), 'depths': (2, 30),
                      'width': 8},
            description='seconds: a smoke test'),
        'full': runner.Scale(
            config={'steps': 3000, 'batch_size': 128, 'log_every': 100,
                    'eval_every': 1000},
            settings={'weight_variances': (1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75,
                                           3.0, 3.25, 3.5, 3.75, 4.0),
                      'depths': (10, 20, 30, 40, 50, 60, 70, 80, 90, 100), 'width': 256},
            description='13 σ_w² × 10 depths up to 100, width 256, 3000 steps'),
    })
