"""Figures of a run, drawn with matplotlib's object API (no pyplot, no display).

Each ``*_figure`` function is data in, ``matplotlib.figure.Figure`` out, so tests can
read back what was drawn; :func:`save_figures` writes the PNGs of a run directory.
``Figure.savefig`` renders with the Agg canvas, so no GUI backend is ever chosen.
"""

import math
import pathlib
from typing import TYPE_CHECKING, Any

import numpy as np

from fundamentals import diagnostics
from fundamentals import losses
from fundamentals import rundir
from fundamentals.config import format_value

if TYPE_CHECKING:
  from matplotlib.figure import Figure
else:
  def Figure(*args, **kwargs):  # pylint: disable=invalid-name
    """``matplotlib.figure.Figure(*args, **kwargs)``, matplotlib imported at the first
    figure: its half a second of imports is not for ``--helpfull`` or
    ``--experiment=list``, which import this module but draw nothing."""
    from matplotlib import figure  # pylint: disable=g-import-not-at-top
    return figure.Figure(*args, **kwargs)

_SPLIT_STYLE = {'train': '-', 'validation': ':', 'test': '--'}

FIGURES = ('loss.png', 'activation_histograms.png', 'gradient_histograms.png',
           'colorful_dimension.png', 'update_to_data.png', 'saturated_fraction.png',
           'dead_fraction.png',
           *(f'{kind}_{split}.png' for kind in ('confusion', 'misclassified')
             for split in _SPLIT_STYLE))
"""Every file :func:`save_figures` and :func:`save_classification_figures` may write."""

COLORFUL_BINS = 40
"""Bins of the colorful-dimension image, over each layer's range in all of training
(fastai's ``ActivationStats`` uses 40)."""


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


def density(histogram: dict[str, Any], *, log: bool = False) -> np.ndarray:
  """counts / (total · bin width), so that Σ density · width = 1; with ``log``, empty
  bins are NaN (a gap, not a plunge to the bottom of a log axis)."""
  edges, counts = np.asarray(histogram['edges']), np.asarray(histogram['counts'], float)
  result = counts / max(counts.sum(), 1) / np.diff(edges)
  return np.where(counts > 0, result, np.nan) if log else result


def histogram_figure(histograms: dict[str, dict[str, Any]], *, kinds: dict[str, str],
                     title: str, log_density: bool = False) -> Figure:
  """Densities of the sampled tensors, one row per kind, columns init | end.

  Args:
    histograms: ``{'init': {kind: {name: {'edges', 'counts'}}}, 'end': ...}``, as
      ``diagnostics.histograms`` makes them.
    kinds: the kinds to draw (e.g. ``'activation'``) and their axis labels.
    title: the figure title.
    log_density: a log density axis, so that a spike (ReLU's zeros) does not flatten
      the rest of the distribution.
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
        edges = np.asarray(h['edges'])
        ax.plot((edges[:-1] + edges[1:]) / 2, density(h, log=log_density), label=name)
      ax.set(title=f'{label} at {phase}', xlabel=label,
             ylabel='density (log)' if log_density else 'density',
             yscale='log' if log_density else 'linear')
      ax.grid(alpha=0.3)
      if ax.lines:
        ax.legend(fontsize=8, loc='upper right')
  fig.suptitle(title)
  return fig


def layer_histograms_figure(histograms: dict[str, dict[str, Any]], *,
                            kinds: dict[str, str], title: str,
                            columns: int = 4) -> Figure:
  """Densities of the sampled tensors, one panel per layer (or weight matrix), init
  and end in each: every layer on its own x-axis, however much narrower its spread.

  Args:
    histograms: as for :func:`histogram_figure`.
    kinds: the kinds to draw (e.g. ``'activation_grad'``) and their axis labels; each
      kind starts a row of panels, at most ``columns`` wide.
    title: the figure title.
  """
  phases = [p for p in ('init', 'end') if p in histograms]
  names = {kind: list(dict.fromkeys(name for p in phases
                                    for name in histograms[p].get(kind, {})))
           for kind in kinds}
  width = max(1, min(columns, max((len(n) for n in names.values()), default=1)))
  row_counts = [max(1, math.ceil(len(names[kind]) / width)) for kind in kinds]
  fig = Figure(figsize=(3.6 * width, 2.8 * sum(row_counts) + 0.4), layout='constrained')
  axes = fig.subplots(sum(row_counts), width, squeeze=False)
  row = 0
  for (kind, label), rows in zip(kinds.items(), row_counts):
    panels = list(axes[row:row + rows].flat)
    for ax, name in zip(panels, names[kind]):
      for phase in phases:
        h = histograms[phase].get(kind, {}).get(name)
        if h is not None:
          edges = np.asarray(h['edges'])
          ax.plot((edges[:-1] + edges[1:]) / 2, density(h), label=phase)
      ax.set_title(f'{label}  {name}', fontsize=9)
      ax.set_xlabel(label, fontsize=8)
      ax.set_ylabel('density', fontsize=8)
      ax.tick_params(labelsize=7)
      ax.ticklabel_format(axis='x', style='sci', scilimits=(-2, 3))
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7, loc='upper right')
    for ax in panels[len(names[kind]):]:
      ax.set_axis_off()
    row += rows
  fig.suptitle(title)
  return fig


def time_histogram(series: list[tuple[int, dict[str, Any]]], *,
                   bins: int = COLORFUL_BINS) -> dict[str, Any]:
  """One layer's activation histograms over training, on one grid: the data of
  fastai's "colorful dimension" plot (course22p2, ``ActivationStats.color_dim``).

  Each step's histogram has its own range (``diagnostics.histograms``); they are
  rebinned (``diagnostics.rebin``) onto ``bins`` equal bins spanning the layer's
  range over all steps, so a layer whose activations shrink towards 0 over training
  shows it as a band closing in on 0.

  Args:
    series: ``(step, {'edges', 'counts'})`` in step order.
    bins: bins of the common grid.

  Returns:
    ``steps``; ``edges`` of the grid; ``counts`` ``[bins, steps]`` (each column sums to
    its step's count); ``near_zero_width`` w, the grid's bin width; ``near_zero``,
    per step the share of activations with |h| < w (fastai's "dead chart" takes the
    lowest bin of |h|; a bin either side of 0 here, as activations may be negative).
  """
  if bins < 1:
    raise ValueError(f'{bins=} must be positive')
  low = min(h['edges'][0] for _, h in series)
  high = max(h['edges'][-1] for _, h in series)
  edges = np.linspace(low, high, bins + 1)
  width = edges[1] - edges[0]
  counts = np.stack([diagnostics.rebin(h, edges) for _, h in series], axis=1)
  near_zero = [np.diff(diagnostics.cumulative_counts(h, [-width, width]))[0]
               / sum(h['counts']) for _, h in series]
  return {'steps': [step for step, _ in series], 'edges': edges, 'counts': counts,
          'near_zero_width': width, 'near_zero': np.asarray(near_zero)}


def step_edges(steps: list[int]) -> np.ndarray:
  """Cell boundaries for values measured at ``steps``: midway between neighbours."""
  steps = np.asarray(steps, float)
  if len(steps) == 1:
    return np.array([steps[0] - 0.5, steps[0] + 0.5])
  middle = (steps[:-1] + steps[1:]) / 2
  return np.concatenate([[max(0.0, 2 * steps[0] - middle[0])], middle,
                         [2 * steps[-1] - middle[-1]]])


def colorful_dimension_figure(series: list[tuple[int, dict[str, Any]]], *,
                              activation: str, bins: int = COLORFUL_BINS) -> Figure:
  """Per hidden layer, its activation histogram over training as an image (x: step,
  y: activation, colour: log(1 + count)) above its share of near-zero activations.

  fastai's "colorful dimension" and "dead chart" (Howard, course22p2 lesson 16,
  ``ActivationStats.color_dim`` and ``dead_chart``): a healthy layer keeps a broad,
  steady band; one collapsing to 0 or exploding shows at once. Data from
  :func:`time_histogram`.

  Args:
    series: ``(step, {layer: {'edges', 'counts'}})`` per diagnostics step; a step
      given twice keeps its last histograms.
    activation: the activation's name, for the title.
    bins: bins of each layer's grid.
  """
  by_step = dict(sorted(dict(series).items()))
  layers = list(dict.fromkeys(name for h in by_step.values() for name in h))
  data = {name: time_histogram([(step, h[name]) for step, h in by_step.items()
                                if name in h], bins=bins) for name in layers}
  vmax = max((np.log1p(d['counts']).max() for d in data.values()), default=1.0)
  fig = Figure(figsize=(max(6.0, 4.2 * len(layers)), 5.5), layout='constrained')
  axes = fig.subplots(2, max(1, len(layers)), squeeze=False, sharex='col',
                      height_ratios=(3, 1.4))
  mesh = None
  for col, (name, d) in enumerate(data.items()):
    image_ax, share_ax = axes[:, col]
    mesh = image_ax.pcolormesh(step_edges(d['steps']), d['edges'], np.log1p(d['counts']),
                               cmap='viridis', vmin=0, vmax=vmax)
    image_ax.set_title(name, fontsize=9)
    image_ax.set_ylabel('activation h' if col == 0 else '')
    share_ax.plot(d['steps'], d['near_zero'], marker='.')
    share_ax.set(xlabel='step', ylim=(0, 1))
    share_ax.set_ylabel(f'share |h| < {d["near_zero_width"]:.2g}', fontsize=8)
    share_ax.grid(alpha=0.3)
  if mesh is not None:
    fig.colorbar(mesh, ax=axes[0, :].tolist(), label='log(1 + count)', shrink=0.9)
  fig.suptitle(f'{activation} activations over training: histogram per diagnostics '
               'step (top), near-zero share (bottom)', fontsize=10)
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
                 unit_health: str | None,
                 activation_series: list[tuple[int, dict[str, Any]]] = ()
                 ) -> dict[str, str]:
  """Writes the run's PNGs; returns ``{file name: caption}`` of those written.

  ``activation_series``: ``(step, {layer: {'edges', 'counts'}})`` of the activations
  per diagnostics step, for :func:`colorful_dimension_figure` (two steps at least).
  Figures without data (no diagnostics measured, an activation with no saturation
  or death notion) are skipped.
  """
  figures = {'loss.png': ('Loss and accuracy', loss_figure(
      records, initial_loss=initial_loss, expected_initial_loss=expected_initial_loss))}
  if histograms:
    figures['activation_histograms.png'] = (
        'Activations per layer (log density)', histogram_figure(
            histograms, kinds={'activation': 'activation'}, log_density=True,
            title=f'{activation} activations per hidden layer'))
    figures['gradient_histograms.png'] = ('Gradients per layer', layer_histograms_figure(
        histograms, kinds={'activation_grad': '∂L/∂activation',
                           'weight_grad': '∂L/∂W'},
        title='gradients, one panel per layer'))
  if len({step for step, _ in activation_series}) >= 2:
    figures['colorful_dimension.png'] = (
        'Activations over training (colorful dimension) and near-zero share',
        colorful_dimension_figure(activation_series, activation=activation))
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


# Classification: which classes are confused, and the examples that were.


def confusion_matrix_figure(confusion: np.ndarray, class_names, *, title: str) -> Figure:
  """The confusion matrix (``losses.confusion_matrix``: rows true, columns predicted)
  beside each class's accuracy.

  Cells are coloured by their share of the true class (row-normalized, so classes of
  any size compare) and carry their counts; the side panel's bars are the diagonal
  shares (``losses.per_class_accuracy``), the dashed line the overall accuracy.
  """
  confusion = np.asarray(confusion)
  n = len(class_names)
  if confusion.shape != (n, n):
    raise ValueError(f'{confusion.shape=} must be ({n}, {n}) for {n} class names')
  totals = confusion.sum(axis=1, keepdims=True)
  shares = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
  accuracy = losses.per_class_accuracy(confusion)
  overall = np.trace(confusion) / max(confusion.sum(), 1)
  label_size = 9 if n <= 10 else 7 if n <= 20 else 6
  count_size = 8 if n <= 10 else 6 if n <= 20 else 5
  side = 2.5 + 0.3 * n
  fig = Figure(figsize=(side + 2.6, side + 0.6), layout='constrained')
  matrix_ax, bar_ax = fig.subplots(1, 2, width_ratios=(side, 2.2))
  # aspect='auto': the matrix fills its axes' height, so its rows line up with the bars.
  image = matrix_ax.imshow(shares, cmap='Blues', vmin=0, vmax=1, aspect='auto')
  for (i, j), count in np.ndenumerate(confusion):
    if count:
      matrix_ax.text(j, i, str(count), ha='center', va='center', fontsize=count_size,
                     color='white' if shares[i, j] > 0.6 else 'black')
  matrix_ax.set_xticks(range(n), class_names, rotation=90, fontsize=label_size)
  matrix_ax.set_yticks(range(n), class_names, fontsize=label_size)
  matrix_ax.set(xlabel='predicted class', ylabel='true class')
  fig.colorbar(image, ax=matrix_ax, location='top', shrink=0.5, aspect=40,
               label='share of the true class')
  bar_ax.barh(range(n), np.nan_to_num(accuracy), color='tab:blue', height=0.7)
  for i, value in enumerate(accuracy):
    inside = value >= 0.5  # The label at the bar's end, inside a long bar.
    bar_ax.text(value - 0.02 if inside else np.nan_to_num(value) + 0.02, i,
                'no examples' if np.isnan(value) else f'{value:.0%}', va='center',
                ha='right' if inside else 'left', fontsize=count_size + 1,
                color='white' if inside else 'black')
  bar_ax.axvline(overall, color='black', linestyle='--', linewidth=1)
  bar_ax.set_ylim(n - 0.5, -0.5)
  bar_ax.set_yticks(range(n), [''] * n)
  bar_ax.set_xlim(0, 1)
  bar_ax.set_xlabel('accuracy per class', fontsize=8)
  bar_ax.set_title('per class (dashed: overall)', fontsize=8)
  bar_ax.grid(axis='x', alpha=0.3)
  fig.suptitle(f'{title}: {int(confusion.sum())} examples, accuracy {overall:.1%}')
  return fig


def misclassified_grid_figure(images: np.ndarray, labels, predictions, probabilities,
                              class_names, *, max_images: int = 12,
                              columns: int = 6) -> Figure:
  """The misclassified examples, most confident first, each titled true / predicted
  (with its probability).

  Args:
    images: uint8 ``[N, H, W, C]`` (C = 1 drawn in gray).
    labels, predictions: ``[N]`` class indices.
    probabilities: softmax outputs ``[N, num_classes]``, or ``[N]``, each the
      probability of its prediction.
    class_names: one name per class.
    max_images: at most this many examples are drawn.
    columns: examples per row.
  """
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  probabilities = np.asarray(probabilities, float)
  if probabilities.ndim == 2:
    probabilities = probabilities[np.arange(len(predictions)), predictions]
  wrong = np.flatnonzero(labels != predictions)
  shown = wrong[np.argsort(-probabilities[wrong], kind='stable')][:max_images]
  width = max(1, min(columns, len(shown)))
  rows = max(1, math.ceil(len(shown) / width))
  fig = Figure(figsize=(2.0 * width, 2.2 * rows + 0.5), layout='constrained')
  axes = fig.subplots(rows, width, squeeze=False)
  for ax in axes.flat:
    ax.set_axis_off()
  for ax, i in zip(axes.flat, shown):
    image = images[i]
    # Nearest-neighbour pixels: the image as the model saw it, and a PNG that
    # compresses (smooth upsampling of noisy photos made 1.5 MB files).
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap='gray',
              vmin=0, vmax=255, interpolation='nearest')
    ax.set_title(f'true {class_names[labels[i]]}\npred {class_names[predictions[i]]} '
                 f'{probabilities[i]:.0%}', fontsize=7)
  if not len(shown):
    axes[0, 0].text(0.5, 0.5, 'no misclassified examples', ha='center', va='center',
                    transform=axes[0, 0].transAxes)
  fig.suptitle(f'{len(wrong)} of {len(labels)} misclassified'
               + (f'; the {len(shown)} most confident' if len(shown) < len(wrong) else ''),
               fontsize=10)
  return fig


def save_classification_figures(workdir: pathlib.Path, *, split: str, images: np.ndarray,
                                labels, predictions, probabilities, class_names,
                                confusion: np.ndarray) -> dict[str, str]:
  """Writes ``confusion_<split>.png`` and ``misclassified_<split>.png``; returns
  ``{file name: caption}`` as :func:`save_figures` does.

  Args:
    workdir: the run directory.
    split: 'train', 'validation' or 'test'.
    images: the split's uint8 images ``[N, H, W, C]``.
    labels, predictions: ``[N]`` class indices.
    probabilities: ``[N, num_classes]`` softmax outputs (or ``[N]``, of the prediction).
    class_names: one name per class.
    confusion: ``losses.confusion_matrix(labels, predictions, len(class_names))``,
      which the caller also keeps (per-class accuracy), computed once.
  """
  if split not in _SPLIT_STYLE:
    raise ValueError(f'{split=} must be one of {list(_SPLIT_STYLE)}')
  figures = {  # name: (caption, figure, dpi); the photos' grid at 64 dpi: 2 px a pixel.
      f'confusion_{split}.png': (
          f'Confusion matrix and per-class accuracy ({split})',
          confusion_matrix_figure(confusion, class_names, title=f'{split} split'), 100),
      f'misclassified_{split}.png': (
          f'Misclassified {split} examples, most confident first',
          misclassified_grid_figure(images, labels, predictions, probabilities,
                                    class_names), 64),
  }
  for name, (_, fig, dpi) in figures.items():
    fig.savefig(pathlib.Path(workdir) / name, dpi=dpi)
  return {name: caption for name, (caption, _, _) in figures.items()}


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
