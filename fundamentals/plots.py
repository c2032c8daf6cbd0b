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

UPDATE_RATIO_GUIDE = -3.0
"""The 1e-3 guide line of the update:data figure (Karpathy, 2022)."""

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
    points = [(r['step'], r[key]) for r in records if _finite(r.get(key))]
    if split == 'train' and _finite(initial_loss):
      points = [(0, initial_loss)] + points
    if points:
      loss_ax.plot(*zip(*points), style, marker='.', label=split)
    key = f'{split}_accuracy'
    points = [(r['step'], r[key]) for r in records if _finite(r.get(key))]
    if points:
      acc_ax.plot(*zip(*points), style, marker='.', label=split)
  loss_ax.axhline(expected_initial_loss, color='gray', linestyle='--', linewidth=1,
                  label=f'ln {num_classes} = {expected_initial_loss:.3f}')
  if _finite(initial_loss):
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
              if _finite(s['params'].get(name, {}).get('update_to_data'))]
    if points:
      ax.plot(*zip(*points), marker='.', label=name)
  ax.axhline(UPDATE_RATIO_GUIDE, color='black', linestyle='--', linewidth=1,
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
              if _finite(s['layers'][i].get(key))]
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


def _finite(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value)
