"""Init × activation × BatchNorm: which combinations train, and what fails when not.

Members, each a training run in its own sub-directory: batchnorm ∈ {off, on} ×
``--ia_inits`` × ``--ia_activations`` × ``--ia_seeds``, named
``nobn-normal-tanh-s0`` and the like (members of one activation and BN setting differ
only in per-run fields, so ``--vectorize`` trains them together).

Summarizes: heatmaps of the final test accuracy and of the initial loss (rows: init,
then init + BN; columns: activation; mean over seeds), the per-layer saturated (tanh,
sigmoid) or dead (ReLU) fraction over training in every cell (small multiples, the
first seed), two tables, and the check: N(0, 1) without BatchNorm is the worst row for
every activation (a diverged run counts as worst).
"""

import dataclasses
import math
import statistics

import numpy as np

from fundamentals import activations
from fundamentals import diagnostics
from fundamentals import initializers
from fundamentals import losses
from fundamentals import plots
from fundamentals import rundir
from fundamentals import runner
from fundamentals.config import Knobs, knob
from fundamentals.report import markdown_table

DEFAULTS = {'hidden': (128, 128, 128), 'steps': 300, 'log_every': 25, 'eval_every': 300,
            'diagnostics_every': 50, 'checkpoint_every': 0}
WORST = 'normal'
"""The init the check expects to be worst without BatchNorm: N(0, 1), σ_w² = fan_in."""


@dataclasses.dataclass(frozen=True)
class Settings(Knobs):
  inits: tuple[str, ...] = knob(('normal', 'lecun', 'xavier', 'kaiming'),
                                'Hidden-kernel initializers of the grid (names as '
                                '--init; normal is N(0, 1)); must include normal.',
                                group='init_activation')
  activations: tuple[str, ...] = knob(('tanh', 'relu'), 'Activations of the grid '
                                      '(e.g. tanh,relu,sigmoid).',
                                      group='init_activation')
  seeds: tuple[int, ...] = knob((0,), 'Seeds per cell; heatmaps and tables average '
                                'over them.', group='init_activation')

  def validate(self):
    for name in self.inits:
      initializers.get_scheme(name)
    for name in self.activations:
      activations.get_activation(name)
    if WORST not in self.inits or len(set(self.inits)) < 2:
      raise ValueError(f'ia_inits={list(self.inits)} must hold {WORST!r} (N(0, 1), '
                       'which the check compares) and at least one other init, e.g. '
                       'normal,lecun,xavier,kaiming')
    if not self.activations:
      raise ValueError('ia_activations is empty; give one or more of '
                       f'{sorted(activations.ACTIVATIONS)}')
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f'ia_seeds={list(self.seeds)} must be one or more distinct seeds')


def member_name(batchnorm: bool, init: str, activation: str, seed: int) -> str:
  return f'{"bn" if batchnorm else "nobn"}-{init}-{activation}-s{seed}'


def rows_of(s: Settings) -> list[tuple[str, bool]]:
  """The heatmaps' rows, top to bottom: every init without BN, then with BN."""
  return [(init, bn) for bn in (False, True) for init in s.inits]


def row_label(init: str, batchnorm: bool) -> str:
  return f'{init} +BN' if batchnorm else init


def members(config, s: Settings) -> dict[str, dict]:
  del config  # The grid's runs are the base config with these fields replaced.
  return {member_name(bn, init, a, seed): dict(batchnorm=bn, init=init, activation=a,
                                               seed=seed)
          for a in s.activations for bn in (False, True) for init in s.inits
          for seed in s.seeds}


class Cell:
  """One (init, BN, activation) cell: its runs over seeds."""

  def __init__(self, runs: list[runner.Result]):
    self.runs = runs
    self.completed = [r for r in runs if r.status == 'completed']
    self.diverged = [r for r in runs if r.status == 'diverged']

  def mean(self, key: str, runs=None) -> tuple[float | None, float]:
    """Mean and std over ``runs`` (default: the completed ones) of a summary value."""
    xs = [r.summary[key] for r in (self.completed if runs is None else runs)
          if rundir.finite(r.summary.get(key))]
    if not xs:
      return None, 0.0
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0

  @property
  def accuracy(self) -> float | None:
    return self.mean('final_test_accuracy')[0]

  @property
  def initial_loss(self) -> float | None:
    return self.mean('initial_loss', self.runs)[0]

  @property
  def score(self) -> float:
    """The final test accuracy for ranking: −∞ if any seed diverged."""
    if self.diverged or self.accuracy is None:
      return -math.inf
    return self.accuracy

  def describe(self) -> str:
    """The accuracy as text: 'diverged (step k)', or the mean (± std over seeds)."""
    if self.diverged:
      steps = ', '.join(str(r.summary.get('diverged_at_step')) for r in self.diverged)
      many = f' {len(self.diverged)}/{len(self.runs)}' if len(self.runs) > 1 else ''
      return f'diverged{many} (step {steps})'
    mean, std = self.mean('final_test_accuracy')
    return '—' if mean is None else f'{mean:.1%}' + (f' ± {std:.1%}' if std else '')


def cells(s: Settings, results) -> dict[tuple[str, bool, str], Cell]:
  return {(init, bn, a): Cell([results[member_name(bn, init, a, seed)] for seed in s.seeds])
          for init, bn in rows_of(s) for a in s.activations}


def worst_rows(s: Settings, grid: dict) -> dict[str, dict]:
  """Per activation: N(0, 1)'s score without BN and the next-worst other row."""
  out = {}
  for a in s.activations:
    others = [(init, bn) for init, bn in rows_of(s) if (init, bn) != (WORST, False)]
    nxt = min(others, key=lambda row: grid[row[0], row[1], a].score)
    out[a] = {'normal': grid[WORST, False, a], 'next': grid[nxt[0], nxt[1], a],
              'next_row': row_label(*nxt),
              'passed': grid[WORST, False, a].score < grid[nxt[0], nxt[1], a].score}
  return out


def check(context: runner.Context, results) -> list[runner.Check]:
  s = context.settings
  worst = worst_rows(s, cells(s, results))
  return [runner.Check(
      'N(0, 1) without BatchNorm is the worst row (lowest final test accuracy; diverged '
      'counts as worst) for every activation',
      '; '.join(f'{a}: N(0, 1) {w["normal"].describe()}, next-worst {w["next_row"]} '
                f'{w["next"].describe()}' for a, w in worst.items()),
      all(w['passed'] for w in worst.values()))]


def inactive_series(points: list[tuple[int, dict]], *, key: str,
                    num_layers: int) -> list[list[tuple[int, float]]]:
  """Per hidden layer, ``(step, fraction)`` of the diagnostics ``key``
  ('saturated_fraction' or 'dead_fraction') of ``points``
  (``runner.Result.diagnostics_series``); non-finite values are left out."""
  return [[(step, scalars['layers'][l][key]) for step, scalars in points
           if rundir.finite(scalars['layers'][l].get(key))] for l in range(num_layers)]


def heatmap_figure(values: np.ndarray, text: np.ndarray, *, rows: list[str],
                   columns: list[str], title: str, label: str, log: bool = False):
  """A heatmap of ``values`` [rows, columns] (NaN: blank), each cell with its ``text``;
  ``log``: a logarithmic colour scale (the initial loss spans decades)."""
  # matplotlib when drawing, not with the module (as plots.Figure): --helpfull draws nothing.
  import matplotlib  # pylint: disable=g-import-not-at-top
  from matplotlib import colors as mcolors  # pylint: disable=g-import-not-at-top
  fig, axes = plots.figure(1, 1, size=(2.2 + 1.5 * len(columns), 1.3 + 0.42 * len(rows)),
                           dpi=90)
  ax = axes[0][0]
  finite = values[np.isfinite(values)]
  lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
  norm = (mcolors.LogNorm(max(lo, 1e-12), max(hi, lo * 1.01, 1e-11)) if log
          else mcolors.Normalize(lo, hi if hi > lo else lo + 1e-9))
  cmap = matplotlib.colormaps['viridis'].with_extremes(bad='0.85')  # NaN: light grey.
  image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect='auto')
  for (i, j), value in np.ndenumerate(values):
    dark = np.isfinite(value) and norm(value) < 0.5
    ax.text(j, i, text[i, j], ha='center', va='center', fontsize=8,
            color='white' if dark else 'black')
  ax.set_xticks(range(len(columns)), columns)
  ax.set_yticks(range(len(rows)), rows)
  ax.set(xlabel='activation', ylabel='init', title=title)
  fig.colorbar(image, ax=ax, label=label)
  return fig


def inactive_figure(s: Settings, results, *, num_layers: int, steps: int):
  """One panel per cell (rows: init (+BN), columns: activation), one line per hidden
  layer: the saturated or dead fraction against steps, for the first seed."""
  rows = rows_of(s)
  fig, axes = plots.figure(len(rows), len(s.activations),
                           size=(3.6 * len(s.activations), 1.9 * len(rows)), dpi=80)
  for i, (init, bn) in enumerate(rows):
    for j, a in enumerate(s.activations):
      ax, r = axes[i][j], results[member_name(bn, init, a, s.seeds[0])]
      key = diagnostics.unit_health(a)
      ax.set_title(f'{row_label(init, bn)}, {a}'
                   + (f' (diverged @ {r.summary["diverged_at_step"]})'
                      if r.status == 'diverged' else ''), fontsize=8)
      ax.set_ylim(-0.03, 1.03)
      ax.set_xlim(-0.03 * steps, 1.03 * steps)
      ax.tick_params(labelsize=7)
      if key is None:
        ax.text(0.5, 0.5, f'{a}: no saturation or death', ha='center',
                transform=ax.transAxes, fontsize=8)
        continue
      series = inactive_series(r.diagnostics_series, key=key, num_layers=num_layers)
      for l, points in enumerate(series):
        if points:
          ax.plot(*zip(*points), marker='.', ms=3, color=plots.CYCLE[l % 10],
                  label=f'layer {l + 1}')
      ax.set_ylabel(key.replace('_fraction', ''), fontsize=7)
      if i == len(rows) - 1:
        ax.set_xlabel('step', fontsize=7)
      if ax.lines and i == 0:
        ax.legend(fontsize=6)
  fig.suptitle('Saturated (tanh, sigmoid: |φ| near its bound) or dead (ReLU: ≤ 0 on the '
               'whole batch) fraction per layer; step 0 = init', fontsize=9)
  return fig


def _fmt_loss(value: float | None) -> str:
  if value is None:
    return '—'
  return f'{value:.3g}' if math.isfinite(value) else str(value)


def _health_text(r: runner.Result, num_layers: int) -> str:
  """The last hidden layer's saturated/dead fraction at init → at the last record."""
  key = diagnostics.unit_health(r.config.activation)
  if key is None:
    return '—'
  series = inactive_series(r.diagnostics_series, key=key, num_layers=num_layers)[-1]
  if not series:
    return '—'
  return f'{series[0][1]:.0%} → {series[-1][1]:.0%}'


def _xavier_note(depth: int) -> str:
  """How much Xavier's ReLU halving compounds over ``depth`` hidden layers."""
  if depth < 2:
    return 'one hidden layer: no per-layer halving under Xavier to compound'
  return (f'{depth} hidden layers: Xavier halves a ReLU signal\'s second moment per '
          f'square layer, which shrinks it by 2^(−{depth - 1}/2) ≈ '
          f'{2 ** (-(depth - 1) / 2):.2g} in scale over them, not a stall')


def summarize(context: runner.Context, results) -> runner.Summary:
  config, s, dataset = context.config, context.settings, context.dataset
  grid, rows = cells(s, results), rows_of(s)
  labels = [row_label(*row) for row in rows]
  shape = (len(rows), len(s.activations))
  accuracy, initial = np.full(shape, np.nan), np.full(shape, np.nan)
  accuracy_text = np.empty(shape, dtype=object)
  initial_text = np.empty(shape, dtype=object)
  for (i, (init, bn)), (j, a) in [(x, y) for x in enumerate(rows)
                                  for y in enumerate(s.activations)]:
    c = grid[init, bn, a]
    accuracy[i, j] = np.nan if c.diverged or c.accuracy is None else c.accuracy
    accuracy_text[i, j] = ('diverged' if c.diverged else
                           '—' if c.accuracy is None else f'{c.accuracy:.0%}')
    loss = c.initial_loss
    initial[i, j] = np.nan if loss is None or not math.isfinite(loss) else loss
    initial_text[i, j] = _fmt_loss(loss)
  seeds = f' (mean over {len(s.seeds)} seeds)' if len(s.seeds) > 1 else ''
  figures = {
      'heatmap_test_accuracy.png': heatmap_figure(
          accuracy, accuracy_text, rows=labels, columns=list(s.activations),
          title=f'final test accuracy{seeds}', label='test accuracy'),
      'heatmap_initial_loss.png': heatmap_figure(
          initial, initial_text, rows=labels, columns=list(s.activations),
          title=f'initial loss (ln N = {losses.expected_initial_loss(dataset.num_classes):.2f}){seeds}',
          label='initial loss (log scale)', log=True),
      'inactive.png': inactive_figure(s, results, num_layers=len(config.hidden),
                                      steps=config.steps),
  }
  table = markdown_table(
      ['init', 'BN', *(f'{a}: {what}' for a in s.activations
                       for what in ('test accuracy', 'initial loss'))],
      [[init, 'yes' if bn else 'no', *(v for a in s.activations for v in (
          grid[init, bn, a].describe(), _fmt_loss(grid[init, bn, a].initial_loss)))]
       for init, bn in rows])
  health_table = markdown_table(
      ['init', 'BN', *s.activations],
      [[init, 'yes' if bn else 'no', *(_health_text(
          results[member_name(bn, init, a, s.seeds[0])], len(config.hidden))
          for a in s.activations)] for init, bn in rows])
  worst = worst_rows(s, grid)
  text = runner.render(
      __file__, config=config, dataset=dataset, seeds=', '.join(map(str, s.seeds)),
      ln_n=losses.expected_initial_loss(dataset.num_classes), table=table, health_table=health_table,
      worst='\n'.join(f'- **{a}**: N(0, 1) without BN {w["normal"].describe()}; the '
                      f'next-worst row, {w["next_row"]}, {w["next"].describe()}.'
                      for a, w in worst.items()),
      xavier_note=_xavier_note(len(config.hidden)),
      threshold=activations.SATURATION_THRESHOLD,
      margin=1 - activations.SATURATION_THRESHOLD)
  values = {'cells': [{'init': init, 'batchnorm': bn, 'activation': a,
                       'test_accuracy': grid[init, bn, a].accuracy,
                       'initial_loss': grid[init, bn, a].initial_loss,
                       'diverged': len(grid[init, bn, a].diverged),
                       'runs': len(grid[init, bn, a].runs)}
                      for init, bn in rows for a in s.activations]}
  return runner.Summary('Init × activation × BatchNorm', text, figures=figures,
                        values=values)


EXPERIMENT = runner.Experiment(
    name='init_activation',
    description='The init × activation × BatchNorm grid: final test accuracy, initial '
                'loss and saturated/dead units per layer over training.',
    members=members, defaults=DEFAULTS, settings=Settings, settings_prefix='ia_',
    summarize=summarize, check=check,
    scales={
        'tiny': runner.Scale(
            config={'hidden': (16,), 'steps': 6, 'batch_size': 50, 'log_every': 3,
                    'eval_every': 6, 'diagnostics_every': 3},
            settings={'inits': ('normal', 'kaiming'), 'activations': ('relu',)},
            description='seconds: a smoke test'),
        'full': runner.Scale(
            config={'hidden': (512, 512, 512), 'steps': 1500, 'log_every': 50,
                    'eval_every': 500, 'diagnostics_every': 100},
            settings={'activations': ('tanh', 'relu', 'sigmoid'), 'seeds': (0, 1, 2)},
            description='wider, longer, three activations and three seeds'),
    })
