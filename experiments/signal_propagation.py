"""Signal propagation at init: every layer measured on a data batch, against theory.

Varies: initializer (``--sp_inits``) × activation (``--sp_activations``) × BatchNorm
(``--sp_batchnorm`` off/on/both), for an MLP of ``--sp_depth`` hidden layers of
``--sp_width`` units, over ``--sp_draws`` independent weight draws. Measures one
training batch (``--batch_size`` examples of ``--dataset``) at init; nothing is
trained. Summarizes: per-layer activation histograms (Glorot & Bengio, 2010, fig. 6
style), per-layer std of activations and of the gradients ∂L/∂h_l and ∂L/∂W_l with
the mean-field prediction overlaid, inactive (saturated / dead) fraction per layer,
and a table in ``report.md``.
"""

import dataclasses
import math
import time
from typing import Any

import jax
import numpy as np
from flax import nnx
from matplotlib import cm
from matplotlib.figure import Figure

from fundamentals import activations
from fundamentals import data as data_lib
from fundamentals import initializers
from fundamentals import models
from fundamentals import rundir
from fundamentals import signal_propagation as sp
from fundamentals import train
from fundamentals.config import Config

BATCHNORM_SETTINGS = {'off': (False,), 'on': (True,), 'both': (False, True)}


@dataclasses.dataclass
class Case:
  """One (init, activation, batchnorm) cell: its measurements over draws and theory."""
  init: str
  activation: str
  batchnorm: bool
  measured: list[list[dict[str, float]]]  # [draw][layer]
  predicted: list[dict[str, float]]  # [layer]
  histograms: list[np.ndarray]  # first draw: the activations of each layer
  lsuv: list[list[dict[str, float]]] | None = None  # [draw][layer]

  @property
  def label(self) -> str:
    return f'{self.init}{" +BN" if self.batchnorm else ""}'

  def mean(self, key: str) -> np.ndarray:
    """Per layer, the mean over draws of a measured statistic."""
    return np.mean([[row[key] for row in draw] for draw in self.measured], axis=0)

  def spread(self, key: str) -> np.ndarray:
    """Per layer, the standard error of that mean over draws (0 for one draw)."""
    values = np.array([[row[key] for row in draw] for draw in self.measured])
    if len(values) < 2:
      return np.zeros(values.shape[1])
    return values.std(axis=0, ddof=1) / math.sqrt(len(values))

  def theory(self, key: str) -> np.ndarray:
    return np.array([row[key] for row in self.predicted])


def run(config: Config, *, overwrite: bool = False) -> dict[str, Any]:
  """Signal propagation at init: measured vs mean-field theory, per layer."""
  start = time.time()
  workdir = rundir.start(config, overwrite=overwrite)
  dataset = data_lib.load_configured(config)
  if config.batch_size > len(dataset.train_labels):
    raise ValueError(f'batch_size={config.batch_size} exceeds the '
                     f'{len(dataset.train_labels)} training examples of {dataset.name}')
  rng = np.random.default_rng(config.seed)
  idx = np.sort(rng.choice(len(dataset.train_labels), config.batch_size, replace=False))
  x = data_lib.normalize(dataset.train_images[idx], dataset.mean, dataset.std)
  labels = dataset.train_labels[idx]
  print(f'{dataset.name}: a batch of {len(idx)} training examples, '
        f'{dataset.num_features} features; MLP {config.sp_depth}×{config.sp_width}, '
        f'{config.sp_draws} weight draws per case')

  cases = []
  for batchnorm in BATCHNORM_SETTINGS[config.sp_batchnorm]:
    for activation in config.sp_activations:
      for init in config.sp_inits:
        case = measure_case(config, init, activation, batchnorm, x, labels,
                            dataset.num_classes)
        cases.append(case)
        _append_metrics(workdir / 'metrics.jsonl', case)
        print(_summary_line(case))

  figures = {
      'activation_histograms.png': plot_histograms,
      'signal_std.png': plot_std,
      'inactive.png': plot_inactive,
  }
  for name, plot in figures.items():
    plot(cases, workdir / name)
  rows = [summary_row(case) for case in cases]
  (workdir / 'report.md').write_text(report(config, dataset, cases, rows))
  summary = {'cases': rows, 'figures': sorted(figures), 'workdir': str(workdir),
             'wall_time_s': time.time() - start}
  rundir.write_json(workdir / 'summary.json', summary)
  print(f'wrote {workdir}/ (report.md, {", ".join(figures)}) in '
        f'{summary["wall_time_s"]:.1f}s')
  return summary


def measure_case(config: Config, init: str, activation: str, batchnorm: bool,
                 x: jax.Array, labels: np.ndarray, num_classes: int) -> Case:
  """Builds ``sp_draws`` models of one case, measures each, and predicts."""
  data_dependent = init in initializers.DATA_DEPENDENT
  second_moment = np.mean(np.square(np.asarray(x, np.float64)), axis=1)
  measured, predicted, lsuv_info, histograms = [], [], [], None
  for draw in range(config.sp_draws):
    model = models.MLP(
        x.shape[1], (config.sp_width,) * config.sp_depth, num_classes,
        activation=activation,
        init=initializers.DATA_DEPENDENT.get(init, init), batchnorm=batchnorm,
        bn_momentum=config.bn_momentum, bn_epsilon=config.bn_epsilon,
        output_init=config.output_init, output_scale=config.output_scale,
        rngs=nnx.Rngs(params=jax.random.fold_in(jax.random.key(config.seed), draw)))
    if data_dependent:
      lsuv_info.append(sp.apply_lsuv(model, x))
    measured.append(sp.measure(model, x, labels))
    if histograms is None:
      histograms = sp.activations_per_layer(model, x)
    # Data-dependent schemes: theory from the kernels' actual variances.
    if data_dependent or draw == 0:
      predicted.append(sp.predict(
          activation,
          weight_variances=sp.model_weight_variances(
              model, None if data_dependent else init),
          widths=sp.model_widths(model), input_second_moment=second_moment,
          batchnorm=batchnorm))
  mean_prediction = [
      {key: float(np.mean([p[l][key] for p in predicted])) for key in predicted[0][l]}
      for l in range(config.sp_depth)]
  # The last layer's gradient depends on the output layer and the loss, not on the
  # recursion: theory starts from the measured one.
  last_grad_std = float(np.mean([rows[-1]['activation_grad_std'] for rows in measured]))
  return Case(init, activation, batchnorm, measured,
              sp.anchor_gradients(mean_prediction, last_grad_std, batchnorm=batchnorm),
              histograms, lsuv_info or None)


def summary_row(case: Case) -> dict[str, Any]:
  """The last layer of a case: measured (mean ± s.e. over draws) vs predicted."""
  act_std, act_se = case.mean('activation_std'), case.spread('activation_std')
  inactive = case.mean('inactive_fraction')
  grads = case.mean('activation_grad_std')
  theory_grads = case.theory('activation_grad_std')
  return {
      'init': case.init,
      'activation': case.activation,
      'batchnorm': case.batchnorm,
      'sigma_w2_hidden': case.predicted[-1]['sigma_w2'],
      'last_activation_std': float(act_std[-1]),
      'last_activation_std_se': float(act_se[-1]),
      'predicted_last_activation_std': case.predicted[-1]['activation_std'],
      'last_preactivation_std': float(case.mean('preactivation_std')[-1]),
      'predicted_last_preactivation_std': case.predicted[-1]['preactivation_std'],
      'inactive_kind': activations.INACTIVE[case.activation],
      'last_inactive_fraction': float(inactive[-1]),
      'max_inactive_fraction': float(np.max(inactive)),
      'predicted_last_inactive_fraction': case.predicted[-1]['inactive_fraction'],
      'grad_ratio_first_to_last': float(grads[0] / grads[-1]),
      'predicted_grad_ratio_first_to_last': float(theory_grads[0] / theory_grads[-1]),
      'loss': case.measured[0][0]['loss'],
  }


def _append_metrics(path, case: Case):
  for draw, rows in enumerate(case.measured):
    for layer, row in enumerate(rows, start=1):
      record = {'init': case.init, 'activation': case.activation,
                'batchnorm': case.batchnorm, 'draw': draw, 'layer': layer, **row}
      record.update({f'predicted_{k}': v for k, v in case.predicted[layer - 1].items()})
      rundir.append_jsonl(path, record)


def _fmt(value: float, digits: int = 4) -> str:
  return 'n/a' if value is None or not math.isfinite(value) else f'{value:.{digits}g}'


def _pct(value: float) -> str:
  return 'n/a' if value is None or not math.isfinite(value) else f'{100 * value:.1f}%'


def _summary_line(case: Case) -> str:
  row = summary_row(case)
  return (f'{case.activation:>10} {case.label:<22} last-layer activation std '
          f'{_fmt(row["last_activation_std"])} (predicted '
          f'{_fmt(row["predicted_last_activation_std"])}), '
          f'{row["inactive_kind"] or "inactive"} {_pct(row["last_inactive_fraction"])} '
          f'(predicted {_pct(row["predicted_last_inactive_fraction"])})')


def report(config: Config, dataset: data_lib.Dataset, cases: list[Case],
           rows: list[dict[str, Any]]) -> str:
  """The ``report.md`` text: setup, the last-layer table, per-layer tables, notes."""
  depth = config.sp_depth
  lines = [
      '# Signal propagation at initialization', '',
      f'MLP of {depth} hidden layers × {config.sp_width} units on `{dataset.name}` '
      f'({dataset.num_features} input features, {dataset.num_classes} classes); one '
      f'training batch of {config.batch_size} examples, measured in training mode at '
      f'init (no training), {config.sp_draws} independent weight draws per case '
      f'(seed {config.seed}). Biases start at 0 (σ_b² = 0). Saturated: |φ| within '
      f'{1 - activations.SATURATION_THRESHOLD:.2f} of an asymptote (|tanh z| > '
      f'{activations.SATURATION_THRESHOLD}); dead: a unit ≤ 0 for the whole batch.', '',
      f'## Layer {depth} (the last hidden layer)', '',
      f'σ_w² = fan_in·Var(W) of the hidden {config.sp_width}→{config.sp_width} '
      'layers; "measured" is the mean ± standard error over weight draws; "theory" is '
      'the mean-field prediction (fundamentals/signal_propagation.py). Gradient ratio: '
      'std of ∂L/∂h_1 over std of ∂L/∂h_L (>1: gradients grow towards the input).', '',
      '| init | activation | BN | σ_w² | activation std: measured | theory | '
      'measured/theory | inactive: measured | theory | max over layers | '
      'grad ratio 1/L: measured | theory |',
      '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ]
  for row in rows:
    ratio = row['last_activation_std'] / row['predicted_last_activation_std']
    kind = row['inactive_kind'] or 'inactive'
    lines.append(
        f'| {row["init"]} | {row["activation"]} | {"on" if row["batchnorm"] else "off"} '
        f'| {_fmt(row["sigma_w2_hidden"])} '
        f'| {_fmt(row["last_activation_std"])} ± {_fmt(row["last_activation_std_se"], 2)} '
        f'| {_fmt(row["predicted_last_activation_std"])} | {ratio:.3f} '
        f'| {_pct(row["last_inactive_fraction"])} {kind} '
        f'| {_pct(row["predicted_last_inactive_fraction"])} '
        f'| {_pct(row["max_inactive_fraction"])} '
        f'| {_fmt(row["grad_ratio_first_to_last"], 3)} '
        f'| {_fmt(row["predicted_grad_ratio_first_to_last"], 3)} |')
  lines += [
      '', '![activation histograms](activation_histograms.png)', '',
      '![std per layer](signal_std.png)', '', '![inactive per layer](inactive.png)', '',
      '## Reading it', '',
      '- **Theory applies** without BatchNorm, at large width, for i.i.d. weights with '
      'variance σ_w²/fan_in: q_l = σ_w²·E[φ(z)²], z ~ N(0, q_{l−1}), and gradients '
      'scale by χ = σ_w²·E[φ′(z)²] per layer going back. Expect agreement to a few '
      'percent per layer, drifting by ~√(2l/width) with depth: a finite-width '
      'weight draw is one random sample, which is what the draws\' standard error '
      'shows.',
      '- **N(0, 1)** has σ_w² = fan_in: tanh units saturate from layer 1 on; ReLU '
      'activations grow by √(fan_in/2) per layer.',
      '- **Xavier** (gain 1, Glorot\'s definition) has σ_w² = 1 on square layers: '
      'with ReLU, E[ReLU(z)²] = q/2 halves the variance per layer (std × 1/√2); with '
      'tanh the signal decays slowly towards 0.',
      '- **Kaiming** takes the activation\'s gain (ReLU √2, tanh 5/3): ReLU stays '
      'flat; tanh reaches a fixed point q* ≈ 1.18 where about 5% of units are '
      'saturated (|z| > atanh 0.97 = 2.09).',
      '- **Dead ReLU units at init** (no prediction here): with zero biases, deeper '
      'layers see increasingly correlated inputs, so a unit can be ≤ 0 for the whole '
      'batch; the fraction is the same for every init scale (ReLU is positively '
      'homogeneous).',
      '- **BatchNorm** standardizes every pre-activation over the batch, so the '
      'forward prediction is q = 1 at every layer, whatever the init; the backward '
      'recursion does not apply (BN\'s backward pass projects out the batch mean and '
      'the direction of z), so no gradient prediction is drawn.',
  ]
  lsuv_cases = [c for c in cases if c.lsuv]
  if lsuv_cases:
    lines += ['', '## LSUV', '',
              'Orthogonal pre-init, then each layer\'s kernel rescaled until its output '
              'variance is 1 ± 0.1 (Mishkin & Matas, 2016). Theory uses the rescaled '
              'kernels\' variances. Iterations per layer (first draw):', '']
    for c in lsuv_cases:
      its = ', '.join(str(i['iterations']) for i in c.lsuv[0])
      lines.append(f'- {c.activation}{" +BN" if c.batchnorm else ""}: {its}')
  lines += ['', '## Per layer', '']
  for c in cases:
    lines += [f'### {c.init}, {c.activation}, BN {"on" if c.batchnorm else "off"}', '',
              '| layer | preact std | theory | act std | theory | inactive | theory '
              '| ∂L/∂h std | theory | ∂L/∂W std |',
              '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    columns = [c.mean('preactivation_std'), c.theory('preactivation_std'),
               c.mean('activation_std'), c.theory('activation_std'),
               c.mean('inactive_fraction'), c.theory('inactive_fraction'),
               c.mean('activation_grad_std'), c.theory('activation_grad_std'),
               c.mean('kernel_grad_std')]
    for l in range(depth):
      v = [col[l] for col in columns]
      lines.append(f'| {l + 1} | {_fmt(v[0])} | {_fmt(v[1])} | {_fmt(v[2])} | '
                   f'{_fmt(v[3])} | {_pct(v[4])} | {_pct(v[5])} | {_fmt(v[6], 3)} | '
                   f'{_fmt(v[7], 3)} | {_fmt(v[8], 3)} |')
    lines.append('')
  return '\n'.join(lines) + '\n'


def _panels(cases: list[Case]) -> list[tuple[str, bool]]:
  """(activation, batchnorm) pairs, in the order the cases were run."""
  return list(dict.fromkeys((c.activation, c.batchnorm) for c in cases))


def _title(activation: str, batchnorm: bool) -> str:
  return f'{activation}{", BatchNorm" if batchnorm else ""}'


def _colors(cases: list[Case]) -> dict[str, Any]:
  inits = list(dict.fromkeys(c.init for c in cases))
  return {init: cm.tab10(i % 10) for i, init in enumerate(inits)}


def plot_histograms(cases: list[Case], path):
  """One panel per case, one curve per layer: the distribution of activation values."""
  panels = _panels(cases)
  inits = list(dict.fromkeys(c.init for c in cases))
  fig = Figure(figsize=(3.6 * len(inits), 2.8 * len(panels)), layout='constrained')
  axes = fig.subplots(len(panels), len(inits), squeeze=False)
  for c in cases:
    ax = axes[panels.index((c.activation, c.batchnorm)), inits.index(c.init)]
    values = [np.ravel(h) for h in c.histograms]
    colors = cm.viridis(np.linspace(0, 0.95, len(values)))
    bounded = {'tanh': (-1.0, 1.0), 'sigmoid': (0.0, 1.0)}
    if c.activation in bounded:
      # Glorot & Bengio's view: the values themselves; saturation piles up at the ends.
      edges = np.linspace(*bounded[c.activation], 61)
      ax.set_yscale('log')
      ax.set_xlabel('activation value', fontsize=8)
    else:
      # Unbounded: magnitudes on a log axis, so growth or decay by a constant factor
      # per layer is a constant shift, whatever the scale.
      values = [np.abs(v[v != 0]) for v in values]
      pooled = np.concatenate(values) if any(v.size for v in values) else np.ones(1)
      lo, hi = np.percentile(pooled, [0.1, 99.9])
      edges = np.geomspace(lo, max(hi, 1.01 * lo), 61)
      ax.set_xscale('log')
      ax.set_xlabel('|activation| (nonzero values)', fontsize=8)
    for l, (v, color) in enumerate(zip(values, colors), start=1):
      counts, _ = np.histogram(np.clip(v, edges[0], edges[-1]), edges)
      ax.plot(np.sqrt(edges[1:] * edges[:-1]) if c.activation not in bounded
              else 0.5 * (edges[1:] + edges[:-1]), counts / max(len(v), 1),
              color=color, label=f'layer {l}' if l in (1, len(values)) else None)
    ax.set_title(f'{c.init}, {_title(c.activation, c.batchnorm)}', fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
  for row in axes:
    row[0].set_ylabel('fraction of values')
  fig.suptitle('Activations per layer at init (dark: layer 1, light: last)')
  fig.savefig(path, dpi=110)


def plot_std(cases: list[Case], path):
  """Rows: std of activations, of ∂L/∂h_l, of ∂L/∂W_l; measured (markers) vs theory."""
  panels = _panels(cases)
  colors = _colors(cases)
  rows = [('activation_std', 'std of activations h_l', True),
          ('activation_grad_std', 'std of ∂L/∂h_l', True),
          ('kernel_grad_std', 'std of ∂L/∂W_l', False)]
  fig = Figure(figsize=(4.2 * len(panels), 9), layout='constrained')
  axes = fig.subplots(len(rows), len(panels), squeeze=False)
  for c in cases:
    col = panels.index((c.activation, c.batchnorm))
    layers = np.arange(1, len(c.predicted) + 1)
    for r, (key, label, has_theory) in enumerate(rows):
      ax = axes[r, col]
      ax.errorbar(layers, c.mean(key), yerr=c.spread(key), marker='o', ms=4,
                  linestyle='none', color=colors[c.init], label=c.init)
      if has_theory and np.all(np.isfinite(c.theory(key))):
        ax.plot(layers, c.theory(key), '-', lw=1, color=colors[c.init])
      ax.set_yscale('log')
      ax.set_ylabel(label)
      ax.set_xlabel('layer')
      ax.set_title(_title(c.activation, c.batchnorm), fontsize=9)
  for ax in axes.flat:
    ax.legend(fontsize=7)
    _at_least_a_decade(ax)
  fig.suptitle('Std per layer at init: measured (dots, ± s.e. over draws), '
               'mean-field theory (lines)')
  fig.savefig(path, dpi=110)


def _at_least_a_decade(ax):
  """Widens a log y-axis to span at least 10×, so noise on a flat curve looks flat."""
  lo, hi = ax.get_ylim()
  if lo > 0 and hi / lo < 10:
    centre = math.sqrt(lo * hi)
    ax.set_ylim(centre / math.sqrt(10), centre * math.sqrt(10))


def plot_inactive(cases: list[Case], path):
  """Saturated (tanh, sigmoid, SELU) or dead (ReLU) fraction per layer, vs theory."""
  panels = _panels(cases)
  colors = _colors(cases)
  fig = Figure(figsize=(4.2 * len(panels), 3.2), layout='constrained')
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for c in cases:
    ax = axes[panels.index((c.activation, c.batchnorm))]
    layers = np.arange(1, len(c.predicted) + 1)
    ax.errorbar(layers, 100 * c.mean('inactive_fraction'),
                yerr=100 * c.spread('inactive_fraction'), marker='o', ms=4,
                linestyle='none', color=colors[c.init], label=c.init)
    theory = c.theory('inactive_fraction')
    if np.all(np.isfinite(theory)):
      ax.plot(layers, 100 * theory, '-', lw=1, color=colors[c.init])
    kind = activations.INACTIVE[c.activation]
    ax.set_ylabel({'saturated': '% saturated elements', 'dead': '% dead units'}.get(
        kind, '% inactive (not defined)'))
    ax.set_xlabel('layer')
    ax.set_ylim(-3, 103)
    ax.set_title(_title(c.activation, c.batchnorm), fontsize=9)
    ax.legend(fontsize=6)
  fig.suptitle('Inactive per layer at init: measured (dots), theory (lines)')
  fig.savefig(path, dpi=110)
