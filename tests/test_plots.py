import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from conftest import SMALL
from fundamentals import diagnostics
from fundamentals import losses
from fundamentals import plots
from fundamentals import rundir
from fundamentals import train
from fundamentals.config import Config

LN30 = math.log(30)


def layer(saturated):
  return {'activation_std': 0.6, 'activation_grad_std': 1e-3,
          'saturated_fraction': saturated}


def scalars(saturated, ratios):
  return {'grad_norm': 1.0, 'param_norm': 2.0,
          'layers': [layer(s) for s in saturated],
          'params': {name: {'update_to_data': r} for name, r in ratios.items()}}


RECORDS = [
    {'step': 10, 'train_loss': 3.0, 'train_accuracy': 0.1, 'lr': 0.1},
    {'step': 20, 'train_loss': 2.5, 'train_accuracy': 0.2, 'lr': 0.1,
     'test_loss': 2.8, 'test_accuracy': 0.15},
    {'step': 30, 'train_loss': float('nan'), 'train_accuracy': 0.2, 'lr': 0.1},
]
SERIES = [(1, scalars([0.5, 0.1], {'dense/0/kernel': -2.5, 'output/kernel': -3.5})),
          (10, scalars([0.6, 0.2], {'dense/0/kernel': -2.7, 'output/kernel': -3.1}))]


def lines(ax):
  return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
          for line in ax.lines}


def test_loss_figure_starts_at_the_initial_loss_beside_ln_n():
  fig = plots.loss_figure(RECORDS, initial_loss=3.6, expected_initial_loss=LN30)
  loss_ax, acc_ax = fig.axes
  drawn = lines(loss_ax)
  assert drawn['train'] == ([0, 10, 20], [3.6, 3.0, 2.5])  # the NaN point is left out
  assert drawn['test'] == ([20], [2.8])
  assert drawn[f'ln 30 = {LN30:.3f}'][1] == [LN30, LN30]
  assert lines(acc_ax)['chance 1/30'][1] == pytest.approx([1 / 30, 1 / 30])
  assert lines(acc_ax)['train'] == ([10, 20, 30], [0.1, 0.2, 0.2])


def test_histogram_figure_draws_densities_that_integrate_to_one():
  rng = np.random.default_rng(0)
  samples = {'activation': [rng.normal(0, 1, 1000), rng.uniform(-1, 1, 500)]}
  histograms = {'init': diagnostics.histograms(samples, bins=20),
                'end': diagnostics.histograms({'activation': [rng.normal(0, 2, 300)]})}
  fig = plots.histogram_figure(histograms, kinds={'activation': 'a'}, title='t')
  init_ax, end_ax = fig.axes
  assert sorted(lines(init_ax)) == ['layer0', 'layer1'] and list(lines(end_ax)) == ['layer0']
  for name, h in histograms['init']['activation'].items():
    x, density = lines(init_ax)[name]
    widths = np.diff(h['edges'])
    assert np.sum(np.array(density) * widths) == pytest.approx(1.0)
    np.testing.assert_allclose(x, (np.array(h['edges'][:-1]) + h['edges'][1:]) / 2)
  assert init_ax.get_title() == 'a at init' and end_ax.get_title() == 'a at end'


def test_update_to_data_figure_has_a_line_per_matrix_and_the_guide():
  fig = plots.update_to_data_figure(SERIES)
  drawn = lines(fig.axes[0])
  assert drawn['dense/0/kernel'] == ([1, 10], [-2.5, -2.7])
  assert drawn['output/kernel'] == ([1, 10], [-3.5, -3.1])
  assert drawn['1e-3 guide'][1] == [-3.0, -3.0]


def test_unit_health_figure_has_a_line_per_layer():
  fig = plots.unit_health_figure(SERIES, key='saturated_fraction', activation='tanh')
  drawn = lines(fig.axes[0])
  assert drawn == {'layer0': ([1, 10], [0.5, 0.6]), 'layer1': ([1, 10], [0.1, 0.2])}


def test_save_figures_writes_pngs_and_skips_figures_without_data(tmp_path):
  rng = np.random.default_rng(0)
  samples = {'activation': [rng.normal(size=50)], 'activation_grad': [rng.normal(size=50)],
             'weight_grad': {'dense/0/kernel': rng.normal(size=50)}}
  histograms = {'init': diagnostics.histograms(samples),
                'end': diagnostics.histograms(samples)}
  activation_series = [(step, diagnostics.histograms(
      {'activation': [rng.normal(size=50)]})['activation']) for step in (1, 10)]
  written = plots.save_figures(
      tmp_path, records=RECORDS, initial_loss=3.5, expected_initial_loss=LN30,
      series=SERIES, histograms=histograms, activation='tanh',
      unit_health='saturated_fraction', activation_series=activation_series)
  assert list(written) == ['loss.png', 'activation_histograms.png',
                           'gradient_histograms.png', 'colorful_dimension.png',
                           'update_to_data.png', 'saturated_fraction.png']
  assert set(written) <= set(plots.FIGURES)
  for name in written:
    assert (tmp_path / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  bare = tmp_path / 'bare'
  bare.mkdir()
  written = plots.save_figures(
      bare, records=RECORDS, initial_loss=3.5, expected_initial_loss=LN30, series=[],
      histograms={}, activation='gelu', unit_health=None)
  assert list(written) == ['loss.png'] and [p.name for p in bare.iterdir()] == ['loss.png']


def test_figures_need_no_display_and_no_pyplot(tmp_path):
  code = ('import sys; from fundamentals import plots; '
          f'plots.save_figures(__import__("pathlib").Path({str(tmp_path)!r}), records=[], '
          'initial_loss=3.4, expected_initial_loss=3.4, series=[], histograms={}, '
          'activation="relu", unit_health=None); '
          'assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True, env={'PATH': '', 'MPLBACKEND': 'TkAgg'})
  assert result.returncode == 0, result.stderr
  assert (tmp_path / 'loss.png').exists()


CLASS_NAMES = ('apple', 'banana', 'cherry', 'date')


def tick_labels(ax, axis):
  ticks = ax.get_xticklabels() if axis == 'x' else ax.get_yticklabels()
  return [t.get_text() for t in ticks]


def predictions(seed=0, n=200, num_classes=4):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, n)
  predicted = np.where(rng.random(n) < 0.6, labels, rng.integers(0, num_classes, n))
  return labels, predicted


def test_confusion_matrix_figure_has_the_class_names_row_shares_counts_and_accuracy():
  labels, predicted = predictions()
  confusion = losses.confusion_matrix(labels, predicted, 4)
  fig = plots.confusion_matrix_figure(confusion, CLASS_NAMES, title='test split')
  matrix_ax, bar_ax = fig.axes[:2]
  assert tick_labels(matrix_ax, 'x') == list(CLASS_NAMES)
  assert tick_labels(matrix_ax, 'y') == list(CLASS_NAMES)
  assert matrix_ax.get_xlabel() == 'predicted class' and matrix_ax.get_ylabel() == 'true class'
  shares = matrix_ax.images[0].get_array()
  np.testing.assert_allclose(shares, confusion / confusion.sum(1, keepdims=True))
  drawn = {(round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text())
           for t in matrix_ax.texts}
  assert drawn == {(i, j): c for (i, j), c in np.ndenumerate(confusion) if c}
  widths = [bar.get_width() for bar in bar_ax.patches]
  np.testing.assert_allclose(widths, [np.mean(predicted[labels == k] == k) for k in range(4)])
  assert bar_ax.get_ylim() == matrix_ax.get_ylim()  # the bars beside their rows
  with pytest.raises(ValueError, match='4 class names'):
    plots.confusion_matrix_figure(confusion[:3, :3], CLASS_NAMES, title='x')


def test_confusion_matrix_figure_labels_thirty_classes_readably():
  names = [f'class_{k:02d}_with_a_long_name' for k in range(30)]
  labels, predicted = predictions(n=900, num_classes=30)
  fig = plots.confusion_matrix_figure(losses.confusion_matrix(labels, predicted, 30),
                                      names, title='t')
  matrix_ax = fig.axes[0]
  assert tick_labels(matrix_ax, 'x') == names and tick_labels(matrix_ax, 'y') == names
  assert all(t.get_rotation() == 90 for t in matrix_ax.get_xticklabels())
  assert max(t.get_fontsize() for t in matrix_ax.get_xticklabels()) <= 7


def test_misclassified_grid_shows_only_mistakes_most_confident_first():
  labels, predicted = predictions(n=40)
  rng = np.random.default_rng(1)
  probabilities = rng.dirichlet(np.ones(4), 40)
  images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
  fig = plots.misclassified_grid_figure(images, labels, predicted, probabilities,
                                        CLASS_NAMES, max_images=5)
  drawn = [ax for ax in fig.axes if ax.images]
  wrong = np.flatnonzero(labels != predicted)
  confidence = probabilities[wrong, predicted[wrong]]
  expected = wrong[np.argsort(-confidence, kind='stable')][:5]
  assert len(drawn) == 5 and len(wrong) > 5
  for ax, i in zip(drawn, expected):
    assert ax.get_title() == (f'true {CLASS_NAMES[labels[i]]}\n'
                              f'pred {CLASS_NAMES[predicted[i]]} '
                              f'{probabilities[i, predicted[i]]:.0%}')
    np.testing.assert_array_equal(ax.images[0].get_array(), images[i])
  assert fig.get_suptitle() == f'{len(wrong)} of 40 misclassified; the 5 most confident'
  right = plots.misclassified_grid_figure(images, labels, labels, probabilities, CLASS_NAMES)
  assert not any(ax.images for ax in right.axes)
  assert 'no misclassified examples' in [t.get_text() for t in right.axes[0].texts]


def test_save_classification_figures_writes_the_split_files(tmp_path):
  labels, predicted = predictions(n=30)
  rng = np.random.default_rng(2)
  written = plots.save_classification_figures(
      tmp_path, split='validation', images=rng.integers(0, 256, (30, 8, 8, 1), np.uint8),
      labels=labels, predictions=predicted, probabilities=rng.random(30),
      class_names=CLASS_NAMES,
      confusion=losses.confusion_matrix(labels, predicted, len(CLASS_NAMES)))
  assert list(written) == ['confusion_validation.png', 'misclassified_validation.png']
  assert set(written) <= set(plots.FIGURES)
  assert all(caption for caption in written.values())
  for name in written:
    assert (tmp_path / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  with pytest.raises(ValueError, match="split='dev' must be one of"):
    plots.save_classification_figures(
        tmp_path, split='dev', images=None, labels=labels, predictions=predicted,
        probabilities=None, class_names=CLASS_NAMES, confusion=None)


def relu_histograms(rng):
  """Histograms of two ReLU layers: layer0 steady, layer1 shrinking towards 0."""
  return {'layer0': np.maximum(rng.normal(0, 1, 2000), 0),
          'layer1': np.maximum(rng.normal(0, 1, 1000), 0) * rng.uniform(0.2, 1)}


def test_activation_histograms_have_a_log_density_axis():
  rng = np.random.default_rng(0)
  samples = {'activation': list(relu_histograms(rng).values())}
  histograms = {'init': diagnostics.histograms(samples), 'end': diagnostics.histograms(samples)}
  fig = plots.histogram_figure(histograms, kinds={'activation': 'a'}, title='t',
                               log_density=True)
  assert [ax.get_yscale() for ax in fig.axes] == ['log', 'log']
  x, density = lines(fig.axes[0])['layer0']
  counts = np.array(histograms['init']['activation']['layer0']['counts'])
  assert np.isnan(density).sum() == np.sum(counts == 0)  # empty bins: gaps, not zeros
  assert plots.histogram_figure(histograms, kinds={'activation': 'a'},
                                title='t').axes[0].get_yscale() == 'linear'


def test_gradient_histograms_have_one_panel_per_layer_and_matrix():
  rng = np.random.default_rng(0)
  samples = {'activation_grad': [rng.normal(0, 1e-2, 100), rng.normal(0, 1e-5, 100)],
             'weight_grad': {name: rng.normal(size=100) for name in
                             ('dense/0/kernel', 'dense/1/kernel', 'output/kernel')}}
  histograms = {'init': diagnostics.histograms(samples), 'end': diagnostics.histograms(samples)}
  fig = plots.layer_histograms_figure(
      histograms, kinds={'activation_grad': 'dh', 'weight_grad': 'dW'}, title='t')
  panels = [ax for ax in fig.axes if ax.axison]
  assert [ax.get_title() for ax in panels] == [
      'dh  layer0', 'dh  layer1', 'dW  dense/0/kernel', 'dW  dense/1/kernel',
      'dW  output/kernel']
  for ax in panels:
    assert sorted(lines(ax)) == ['end', 'init']
  # Each panel spans its own layer's values: layer1's gradients, 1000× smaller, too.
  layer1 = histograms['init']['activation_grad']['layer1']['edges']
  low, high = panels[1].get_xlim()
  assert low <= layer1[0] and layer1[-1] <= high and high - low < 1e-3


def test_colorful_dimension_has_a_column_per_step_holding_its_counts():
  rng = np.random.default_rng(0)
  steps = [1, 5, 10, 15, 20]
  samples = [relu_histograms(rng) for _ in steps]
  series = [(step, diagnostics.histograms({'activation': list(s.values())})['activation'])
            for step, s in zip(steps, samples)]
  fig = plots.colorful_dimension_figure(series, activation='relu', bins=30)
  images = [ax for ax in fig.axes if ax.collections and ax.get_title()]
  assert [ax.get_title() for ax in images] == ['layer0', 'layer1']
  for ax, name in zip(images, ('layer0', 'layer1')):
    counts = np.expm1(np.asarray(ax.collections[0].get_array()))
    assert counts.shape == (30, len(steps))  # bins × diagnostics steps
    np.testing.assert_allclose(counts.sum(axis=0), [s[name].size for s in samples])
    np.testing.assert_allclose(counts.sum(axis=0), [sum(h[name]['counts']) for _, h in series])
    # The grid spans the layer's range over all steps; x spans the steps.
    edges = np.asarray(ax.collections[0].get_coordinates())[:, 0, 1]
    assert edges[0] == 0.0 and edges[-1] == pytest.approx(max(s[name].max() for s in samples))
    width = edges[1] - edges[0]
    [share] = [a for a in fig.axes if a.lines and a.get_shared_x_axes().joined(a, ax)]
    x, y = share.lines[0].get_xdata(), share.lines[0].get_ydata()
    assert list(x) == steps and share.get_ylim() == (0, 1)
    # ReLU's zeros and the values in the grid's first bin, from the samples directly;
    # a step's histogram spreads a bin's values evenly, so the share is within the
    # values of its bin that holds w (none lie below −w: the grid starts at 0).
    direct = [np.mean(np.abs(s[name]) < width) for s in samples]
    split = [h[name]['counts'][np.searchsorted(h[name]['edges'], width) - 1]
             / sum(h[name]['counts']) for _, h in series]
    assert np.all(np.abs(np.array(y) - direct) <= split) and max(split) < 0.1
    assert min(direct) > 0.4  # half of ReLU's outputs are exact zeros


def test_near_zero_share_is_the_fraction_within_one_bin_of_zero():
  """Bins that fall on the histograms' edges: the share is exact."""
  values = lambda zeros: np.concatenate([np.zeros(zeros), np.full(10, 0.375),
                                         np.ones(90 - zeros)])
  series = [(step, diagnostics.histograms(
      {'activation': [values(zeros)]}, bins=4)['activation']['layer0'])
            for step, zeros in ((1, 10), (2, 50), (3, 80))]
  measured = plots.time_histogram(series, bins=4)
  assert measured['near_zero_width'] == 0.25
  np.testing.assert_allclose(measured['near_zero'], [0.1, 0.5, 0.8])
  np.testing.assert_allclose(measured['near_zero'],
                             [np.mean(np.abs(values(z)) < 0.25) for z in (10, 50, 80)])
  np.testing.assert_allclose(measured['counts'], [[10, 50, 80], [10, 10, 10], [0, 0, 0],
                                                  [80, 40, 10]])
  with pytest.raises(ValueError, match='bins=0 must be positive'):
    plots.time_histogram(series, bins=0)


def test_step_edges_are_midway_between_steps():
  np.testing.assert_allclose(plots.step_edges([1, 5, 10]), [0, 3, 7.5, 12.5])
  np.testing.assert_allclose(plots.step_edges([20]), [19.5, 20.5])


@pytest.mark.slow
def test_a_run_with_diagnostics_writes_the_activations_over_training(tmp_path, small_dataset):
  config = Config(dataset=SMALL, hidden=(16,), batch_size=50, steps=20, log_every=10,
                  eval_every=20, lr=0.2, diagnostics_every=5,
                  workdir=str(tmp_path / 'run'))
  train.train(config, dataset=small_dataset, echo=lambda line: None)
  workdir = tmp_path / 'run'
  records = rundir.read_jsonl(workdir / 'metrics.jsonl')
  kept = [r for r in records if 'activation_histograms' in r]
  assert [r['step'] for r in kept] == [5, 10, 15, 20]
  assert sum(kept[0]['activation_histograms']['layer0']['counts']) == 50 * 16
  for name in ('colorful_dimension.png', 'activation_histograms.png',
               'gradient_histograms.png'):
    assert (workdir / name).stat().st_size > 1000
  assert '](colorful_dimension.png)' in (workdir / 'report.md').read_text()
