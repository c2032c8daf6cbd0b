"""Figures of a run, drawn with matplotlib's object API (no pyplot, no display).

Each ``*_figure`` function is data in, ``matplotlib.figure.Figure`` out, so tests can
read back what was drawn; :func:`save_figures` writes the PNGs of a run directory.
``Figure.savefig`` renders with the Agg canvas, so no GUI backend is ever chosen.
"""

import math
import pathlib
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fundamentals import diagnostics
from fundamentals import rundir
from fundamentals.config import format_value

FIGURES = ('loss.png', 'activation_histograms.png', 'gradient_histograms.png',
           'update_to_data.png', 'saturated_fraction.png', 'dead_fraction.png')
"""Every file :func:`save_figures` may write."""

_SPLIT_STYLE = {'train': '-', 'validation': ':', 'test': '--'}


def loss_figure(records: list[dict[str, Any]], *, initial_loss: float,
                expected_initial_loss: float) -> Figure:
  """Train and held-out loss and accuracy against steps.

  The loss starts at step 0 with the measured initial loss, beside the ln N line
  (the loss of uniform predictions); accuracy has the chance line 1/N.
  """
  num_classes = round(math.exp(expected_initial_loss))
  fig = Figure(figsize=(11, 4))
  fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.92, wspace=0.2)
  loss_ax, acc_ax = fig.subplots(1, 2)
  for split, style in _SPLIT_STYLE.items():
    key = f'{split}_loss'
    points = [(r['step'], r[key]) for r in records if rundir.finite(r.get(key))]
    if split == 'train' and rundir.finite(initial_loss):
      points = [(0, initial_loss)] + points
    if points:
      loss_ax.plot(*zip(*points), style, marker='.', label=split)
    key = f'{split}_accuracy'
    points = [(r['step'], r[key]) for r in records if rundir.finite(r.get(key))]
    if points:
      acc_ax.plot(*zip(*points), style, marker='.', label=split)
  loss_ax.axhline(expected_initial_loss, color='gray', linestyle='--', linewidth=1,
                  label=f'ln {num_classes} = {expected_initial_loss:.3f}')
  if rundir.finite(initial_loss):
    loss_ax.annotate(f'initial {initial_loss:.3f}', (0, initial_loss),
                     textcoords='offset points', xytext=(8, -12), fontsize=8)
  loss_ax.set(xlabel='step', ylabel='cross-entropy (nats)', ylim=(0, None),
              title='loss')
  acc_ax.axhline(1 / num_classes, color='gray', linestyle='--', linewidth=1,
                 label=f'chance 1/{num_classes}')
  acc_ax.set(xlabel='step', ylabel='accuracy', ylim=(0, 1), title='accuracy')
  for ax, corner in ((loss_ax, 'upper right'), (acc_ax, 'lower right')):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc=corner)  # Fixed: 'best' searches every point.
  return fig


def histogram_figure(histograms: dict[str, dict[str, Any]], *, kinds: dict[str, str],
                     title: str) -> Figure:
  """Densities of the sampled tensors, one row per kind, columns init | end.

  Args:
    histograms: ``{'init': {kind: {name: {'edges', 'counts'}}}, 'end': ...}``, as
      ``diagnostics.histograms`` makes them.
    kinds: the kinds to draw (e.g. ``'activation'``) and their axis labels.
    title: the figure title.
  """
  phases = [p for p in ('init', 'end') if p in histograms]
  fig = Figure(figsize=(5.5 * len(phases), 3.5 * len(kinds) + 0.5))
  fig.subplots_adjust(left=0.1, right=0.97, bottom=0.1, top=0.88, wspace=0.25,
                      hspace=0.45)
  axes = fig.subplots(len(kinds), len(phases), squeeze=False)
  for row, (kind, label) in enumerate(kinds.items()):
    for col, phase in enumerate(phases):
      ax = axes[row, col]
      for name, h in histograms[phase].get(kind, {}).items():
        edges, counts = np.asarray(h['edges']), np.asarray(h['counts'], float)
        density = counts / max(counts.sum(), 1) / np.diff(edges)
        centers = (edges[:-1] + edges[1:]) / 2
        ax.plot(centers, density, label=name)
      ax.set(title=f'{label} at {phase}', xlabel=label, ylabel='density')
      ax.grid(alpha=0.3)
      if ax.lines:
        ax.legend(fontsize=8, loc='upper right')
  fig.suptitle(title)
  return fig


def update_to_data_figure(series: list[tuple[int, dict[str, Any]]]) -> Figure:
  """log10(std Δw / std w) per weight matrix against steps, with the −3 guide line.

  Args:
    series: ``(step, diagnostics scalars)`` pairs in step order.
  """
  fig = Figure(figsize=(7, 4))
  fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.92)
  ax = fig.subplots()
  names = list(series[0][1]['params']) if series else []
  for name in names:
    points = [(step, s['params'][name]['update_to_data']) for step, s in series
              if rundir.finite(s['params'].get(name, {}).get('update_to_data'))]
    if points:
      ax.plot(*zip(*points), marker='.', label=name)
  ax.axhline(diagnostics.UPDATE_TO_DATA_TARGET, color='black', linestyle='--', linewidth=1,
             label='1e-3 guide')
  ax.set(xlabel='step', ylabel='log10(std Δw / std w)', title='update:data ratio')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc='best')
  return fig


def unit_health_figure(series: list[tuple[int, dict[str, Any]]], *, key: str,
                       activation: str) -> Figure:
  """Saturated or dead fraction (``key``) per hidden layer against steps."""
  fig = Figure(figsize=(7, 4))
  fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.92)
  ax = fig.subplots()
  num_layers = len(series[0][1]['layers']) if series else 0
  for i in range(num_layers):
    points = [(step, s['layers'][i][key]) for step, s in series
              if rundir.finite(s['layers'][i].get(key))]
    if points:
      ax.plot(*zip(*points), marker='.', label=f'layer{i}')
  what = 'saturated' if key == 'saturated_fraction' else 'dead'
  ax.set(xlabel='step', ylabel=f'{what} fraction', ylim=(0, 1),
         title=f'{activation}: {what} fraction per layer')
  ax.grid(alpha=0.3)
  if ax.lines:
    ax.legend(fontsize=8, loc='best')
  return fig


def save_figures(workdir: pathlib.Path, *, records: list[dict[str, Any]],
                 initial_loss: float, expected_initial_loss: float,
                 series: list[tuple[int, dict[str, Any]]],
                 histograms: dict[str, Any], activation: str,
                 unit_health: str | None) -> dict[str, str]:
  """Writes the run's PNGs; returns ``{file name: caption}`` of those written.

  Figures without data (no diagnostics measured, an activation with no saturation
  or death notion) are skipped.
  """
  figures = {'loss.png': ('Loss and accuracy', loss_figure(
      records, initial_loss=initial_loss, expected_initial_loss=expected_initial_loss))}
  if histograms:
    figures['activation_histograms.png'] = ('Activations per layer', histogram_figure(
        histograms, kinds={'activation': 'activation'},
        title=f'{activation} activations per hidden layer'))
    figures['gradient_histograms.png'] = ('Gradients per layer', histogram_figure(
        histograms, kinds={'activation_grad': '∂L/∂activation',
                           'weight_grad': '∂L/∂W'},
        title='gradients per layer'))
  if series:
    figures['update_to_data.png'] = ('Update:data ratio',
                                     update_to_data_figure(series))
    if unit_health:
      figures[f'{unit_health}.png'] = (
          unit_health.replace('_', ' ').capitalize(),
          unit_health_figure(series, key=unit_health, activation=activation))
  for name, (_, fig) in figures.items():
    fig.savefig(workdir / name, dpi=90)
  return {name: caption for name, (caption, _) in figures.items()}


def figure(rows: int = 1, cols: int = 1, *, size: tuple[float, float], dpi: int = 110):
  """A constrained-layout figure and its ``[rows][cols]`` axes, for experiments; it
  saves at its own ``dpi``."""
  fig = Figure(figsize=size, layout='constrained', dpi=dpi)
  return fig, fig.subplots(rows, cols, squeeze=False)


# Sweeps: heatmaps of a metric over two varied settings, all loss curves overlaid.


def heatmap_axes(varied: list[str]) -> tuple[str, str | None, list[str]] | None:
  """(row, column, panel keys) of the heatmaps: init × activation when both vary."""
  keys = [k for k in varied if k != 'seed']
  if not keys:
    return None
  row = 'init' if 'init' in keys else keys[0]
  rest = [k for k in keys if k != row]
  column = 'activation' if 'activation' in rest else (rest[0] if rest else None)
  return row, column, [k for k in rest if k != column]


def sweep_figures(groups: list[dict[str, Any]], varied: list[str],
                  curves: dict[str, list[dict[str, Any]]]) -> dict[str, Figure]:
  """Heatmaps of test accuracy and initial loss (seed-averaged ``groups``), and every
  member's loss curve (``curves``: member → records); by file name."""
  figures = {}
  layout = heatmap_axes(varied)
  if layout:
    row, column, panel_keys = layout
    for metric, fmt, name in (('final_test_accuracy', '{:.0%}', 'heatmap_test_accuracy.png'),
                              ('initial_loss', '{:.2f}', 'heatmap_initial_loss.png')):
      if any(g[metric][0] is not None for g in groups):
        figures[name] = sweep_heatmap_figure(
            groups, metric=metric, row=row, column=column, panel_keys=panel_keys,
            fmt=fmt, title=metric + (' (mean over seeds)' if 'seed' in varied else ''))
  if curves:
    figures['loss_curves.png'] = overlaid_loss_figure(curves)
  return figures


def sweep_heatmap_figure(groups: list[dict[str, Any]], *, metric: str, row: str,
                         column: str | None, panel_keys: list[str],
                         fmt: str = '{:.2f}', title: str = '') -> Figure:
  """Heatmap of a seed-averaged ``metric`` over ``row`` × ``column``, one panel per
  combination of the other varied settings (``panel_keys``); a cell without a value
  reads 'diverged' when all its members diverged, else 'none'."""
  cell = lambda g: g[column] if column else ''
  rows = list(dict.fromkeys(g[row] for g in groups))
  columns = list(dict.fromkeys(cell(g) for g in groups))
  panels = list(dict.fromkeys(tuple(g[k] for k in panel_keys) for g in groups))
  fig = Figure(figsize=(1.2 + 1.3 * len(columns) * len(panels), 1.0 + 0.6 * len(rows)),
               layout='constrained', dpi=90)
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  values = [g[metric][0] for g in groups if g[metric][0] is not None]
  vmin, vmax = (min(values), max(values)) if values else (0.0, 1.0)
  for ax, panel in zip(axes, panels):
    grid = np.full((len(rows), len(columns)), np.nan)
    empty = np.full(grid.shape, 'none', dtype=object)
    for g in groups:
      if tuple(g[k] for k in panel_keys) != panel:
        continue
      if g[metric][0] is not None:
        grid[rows.index(g[row]), columns.index(cell(g))] = g[metric][0]
      elif g['of'] and g['diverged'] == g['of']:
        empty[rows.index(g[row]), columns.index(cell(g))] = 'diverged'
    image = ax.imshow(grid, cmap='viridis', vmin=vmin, vmax=vmax, aspect='auto')
    for (i, j), value in np.ndenumerate(grid):
      ax.text(j, i, empty[i, j] if np.isnan(value) else fmt.format(value), ha='center',
              va='center', fontsize=8,
              color='white' if not np.isnan(value) and value < (vmin + vmax) / 2
              else 'black')
    ax.set_xticks(range(len(columns)), [format_value(c) for c in columns])
    ax.set_yticks(range(len(rows)), [format_value(r) for r in rows])
    ax.set_xlabel(column or '')
    ax.set_ylabel(row)
    ax.set_title(', '.join(f'{k}={format_value(v)}' for k, v in zip(panel_keys, panel))
                 or metric,
                 fontsize=9)
  fig.colorbar(image, ax=list(axes), shrink=0.8, label=metric)
  if title:
    fig.suptitle(title)
  return fig


def overlaid_loss_figure(curves: dict[str, list[dict[str, Any]]], *,
                         expected_initial_loss: float | None = None) -> Figure:
  """Training loss of every sweep member against step, on one log-scale axis."""
  fig = Figure(figsize=(9, 5), layout='constrained', dpi=90)
  ax = fig.subplots()
  for name, records in curves.items():
    steps = [r['step'] for r in records if rundir.finite(r.get('train_loss'))]
    ax.plot(steps, [r['train_loss'] for r in records if rundir.finite(r.get('train_loss'))],
            label=name, linewidth=1)
  if expected_initial_loss is not None:
    ax.axhline(expected_initial_loss, color='gray', linestyle=':', label='ln N')
  ax.set(xlabel='step', ylabel='train loss', yscale='log', title='all members')
  ax.grid(alpha=0.3)
  if len(curves) <= 24:
    ax.legend(fontsize=6, ncol=2)
  return fig


# Generic figures the experiments compose.

CYCLE = ('tab:blue', 'tab:orange', 'tab:green', 'tab:red', 'tab:purple', 'tab:brown',
         'tab:pink', 'tab:gray', 'tab:olive', 'tab:cyan')
"""Matplotlib's default colours, in order."""


def bar_figure(labels: list[str], values: list[float], *, xlabel: str, title: str,
               fmt: str = '{:.1%}') -> Figure:
  """Horizontal bars, one per label (top to bottom), each with its value written."""
  fig, axes = figure(1, 1, size=(9, 3.5))
  ax = axes[0][0]
  ax.barh(labels, values)
  for i, value in enumerate(values):
    ax.text(value, i, ' ' + fmt.format(value), va='center')
  ax.invert_yaxis()
  ax.set(xlabel=xlabel, title=title)
  return fig


def histogram_grid_figure(panels: dict[tuple[Any, str], dict[str, Any] | None], *,
                          columns: int, label, title: str, log_density: bool = False,
                          dpi: int = 110) -> Figure:
  """A grid of panels, each the per-layer densities of one histogram set.

  Args:
    panels: ``{(row key, panel title): {'edges', 'density': [per layer], 'layers':
      [per-layer statistics]}}`` in row-major order; None draws 'diverged'.
    columns: panels per row.
    label: ``label(layer index, layer statistics) -> legend text``.
    title: the figure's title.
    log_density: a log y-axis (ReLU's spike at 0 would flatten the rest).
  """
  rows = (len(panels) + columns - 1) // columns
  fig, axes = figure(rows, columns, size=(4 * columns, 3 * rows), dpi=dpi)
  for ax, ((_, panel_title), h) in zip(axes.flat, panels.items()):
    ax.set_title(panel_title, fontsize=9)
    if h is None:
      ax.text(0.5, 0.5, 'diverged', ha='center', transform=ax.transAxes)
      continue
    for l, (density, layer) in enumerate(zip(h['density'], h['layers'])):
      ax.stairs(density, h['edges'], label=label(l, layer))
    if log_density:
      ax.set_yscale('log')
    ax.legend(fontsize=7)
  fig.suptitle(title)
  return fig


def line_panels_figure(panels: dict[str, dict[str, Any]], *, size: tuple[float, float],
                       grid: bool = False, dpi: int = 110) -> Figure:
  """Panels side by side, each of lines: ``{title: {'lines': [{'x', 'y', 'style',
  'label', 'color', 'ms'}...], 'xlabel', 'ylabel', 'xscale', 'yscale', 'legend':
  legend options}}``."""
  fig, axes = figure(1, len(panels), size=size, dpi=dpi)
  for ax, (title, panel) in zip(axes[0], panels.items()):
    for line in panel['lines']:
      options = {k: line[k] for k in ('label', 'color', 'ms') if k in line}
      ax.plot(line['x'], line['y'], line.get('style', '-'), **options)
    ax.set(title=title, **{k: panel[k] for k in ('xlabel', 'ylabel', 'xscale', 'yscale')
                           if k in panel})
    if grid or panel.get('grid'):
      ax.grid(alpha=0.3)
    ax.legend(**{'fontsize': 7, **panel.get('legend', {})})
  return fig


def per_layer_figure(cases: list[dict[str, Any]], *, rows: list[tuple[str, str]],
                     title: str, log: bool = True, ylim=None,
                     height: float = 3.0) -> Figure:
  """Per-layer statistics, measured (dots ± error bars) against theory (lines).

  Args:
    cases: each ``{'panel': column title, 'label': legend entry, 'color',
      'mean': {key: per-layer values}, 'spread': {key: ...}, 'theory': {key: ...}}``
      and optionally its panel's ``'ylabel'``; a theory that is absent or not finite
      everywhere is not drawn.
    rows: ``(key, y-axis label)`` per row of panels.
    title: the figure's title.
    log: log y-axes, widened to at least a decade (noise on a flat curve stays flat).
    ylim: fixed y limits instead.
  """
  panels = list(dict.fromkeys(c['panel'] for c in cases))
  fig, axes = figure(len(rows), len(panels), size=(4.2 * len(panels), height * len(rows)))
  for c in cases:
    for r, (key, label) in enumerate(rows):
      ax = axes[r][panels.index(c['panel'])]
      layers = np.arange(1, len(c['mean'][key]) + 1)
      ax.errorbar(layers, c['mean'][key], yerr=c['spread'][key], marker='o', ms=4,
                  linestyle='none', color=c['color'], label=c['label'])
      theory = np.asarray(c['theory'].get(key, [math.nan]), np.float64)
      if np.all(np.isfinite(theory)):
        ax.plot(layers, theory, '-', lw=1, color=c['color'])
      ax.set(ylabel=c.get('ylabel', label), xlabel='layer',
             yscale='log' if log else 'linear')
      if ylim is not None:
        ax.set_ylim(*ylim)
      ax.set_title(c['panel'], fontsize=9)
  for ax in axes.flat:
    ax.legend(fontsize=7)
    lo, hi = ax.get_ylim()
    if log and lo > 0 and hi / lo < 10:
      ax.set_ylim(math.sqrt(lo * hi) / math.sqrt(10), math.sqrt(lo * hi) * math.sqrt(10))
  fig.suptitle(title)
  return fig
