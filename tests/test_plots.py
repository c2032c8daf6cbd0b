import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from fundamentals import diagnostics
from fundamentals import plots

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
  written = plots.save_figures(
      tmp_path, records=RECORDS, initial_loss=3.5, expected_initial_loss=LN30,
      series=SERIES, histograms=histograms, activation='tanh',
      unit_health='saturated_fraction')
  assert list(written) == ['loss.png', 'activation_histograms.png',
                           'gradient_histograms.png', 'update_to_data.png',
                           'saturated_fraction.png']
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
