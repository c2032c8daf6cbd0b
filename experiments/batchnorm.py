"""BatchNorm vs none over inits × activations × learning rates; inference modes; α.

Varies, each member a ``train.fit`` run in its own sub-directory:

* ``grid/``: batchnorm ∈ {False, True} × init ∈ ``INITS`` × activation ∈
  ``ACTIVATIONS`` × lr ∈ ``LEARNING_RATES``. BN should tolerate the higher learning
  rates and make the result nearly independent of the init.
* ``inference/``: one BN model trained with the given config, then evaluated with
  running averages, population statistics (exact, layer by layer; and one pass with
  training-mode upstream layers) and the test batch's own statistics at several batch
  sizes.
* ``momentum/``: α ∈ ``MOMENTA`` × steps ∈ ``MOMENTUM_STEPS`` at a constant learning
  rate (so shorter runs are prefixes of longer ones): how far the running averages
  are from the population statistics, and the test accuracy they give, early on.

Summarizes: ``report.md`` (tables), ``grid.png``, ``activations_<activation>.png``
(per-layer histograms with and without BN, at init and trained), ``momentum.png``,
``inference.png`` and ``summary.json``.

Fields left at their ``Config`` default are replaced by ``QUICK`` (small widths, few
steps) so the default run takes minutes on a 2-core CPU; pass ``--hidden`` /
``--steps`` with other values to scale it up. The many short grid and momentum runs
train with in-step diagnostics off (``diagnostics_every=0``), which halves their
cost; the ``inference/`` run keeps the given setting.
"""

import dataclasses
import math
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fundamentals import data as data_lib
from fundamentals import population_stats
from fundamentals import rundir
from fundamentals import train
from fundamentals.config import Config

INITS = ('normal', 'lecun', 'xavier', 'kaiming')
ACTIVATIONS = ('tanh', 'relu')
LEARNING_RATES = (0.01, 0.1, 1.0)
HISTOGRAM_LR = 0.1  # The grid members whose trained activations are plotted.
MOMENTA = (0.0, 0.9, 0.99, 0.999)
MOMENTUM_STEPS = (10, 30, 100, 300)
# Test batches normalized by their own statistics: these sizes, the training batch
# size and the whole test set.
TEST_BATCH_SIZES = (8, 1)
QUICK = {'hidden': (64, 64), 'steps': 300}
NUM_HISTOGRAM_EXAMPLES = 512


def with_quick_defaults(config: Config) -> Config:
  """``config`` with each ``QUICK`` field replaced where it is still the Config default."""
  defaults = Config()
  return dataclasses.replace(config, **{
      name: value for name, value in QUICK.items()
      if getattr(config, name) == getattr(defaults, name)})


def member_name(*, batchnorm: bool, init: str, activation: str, lr: float) -> str:
  return f'{"bn" if batchnorm else "nobn"}-{init}-{activation}-lr{lr:g}'


def run(config: Config, *, overwrite: bool = False) -> dict[str, Any]:
  """BN vs no BN (init × activation × lr), inference modes and the momentum α study."""
  start = time.time()
  workdir = rundir.start(config, overwrite=overwrite)
  config = with_quick_defaults(config)
  dataset = data_lib.load_configured(config)
  base = dataclasses.replace(config, experiment='train')

  def fit(member: Config, subdir: str) -> train.Fit:
    t = time.time()
    result = train.fit(dataclasses.replace(member, workdir=str(workdir / subdir)),
                       dataset=dataset, overwrite=overwrite, echo=lambda line: None)
    s = result.summary
    outcome = (f'test acc {s["final_test_accuracy"]:.2%}'
               if s['status'] == 'completed' else s['status'])
    print(f'{subdir}: {outcome} ({time.time() - t:.1f}s)', flush=True)
    return result

  grid, samples = run_grid(base, dataset, fit)
  inference = run_inference(base, dataset, fit)
  momentum = run_momentum(base, dataset, fit)
  _plot_grid(workdir / 'grid.png', grid)
  for activation in ACTIVATIONS:
    _plot_activations(workdir / f'activations_{activation}.png', samples, activation)
  _plot_momentum(workdir / 'momentum.png', momentum)
  _plot_inference(workdir / 'inference.png', inference)
  wall_time = time.time() - start
  report = make_report(config, dataset, grid=grid, samples=samples,
                       inference=inference, momentum=momentum, wall_time=wall_time)
  (workdir / 'report.md').write_text(report)
  summary = {'grid': grid, 'inference': inference,
             'momentum': {k: v for k, v in momentum.items() if k != 'curves'},
             'activation_stats': activation_table_rows(samples),
             'wall_time_s': wall_time, 'workdir': str(workdir)}
  rundir.write_json(workdir / 'summary.json', summary)
  print(report)
  print(f'wrote {workdir}/report.md in {wall_time:.0f}s')
  return summary


# --- The grid: BN vs none across inits, activations and learning rates. ---


def histogram_batch(dataset: data_lib.Dataset) -> jax.Array:
  x = dataset.train_images[:NUM_HISTOGRAM_EXAMPLES]
  return data_lib.normalize(jnp.asarray(x), dataset.mean, dataset.std)


def hidden_activations(model, x: jax.Array) -> list[np.ndarray]:
  """Each hidden layer's activations on ``x``, in training mode (batch statistics)."""
  _, layers = model.forward(x)
  return [np.asarray(layer['activation']) for layer in layers]


def run_grid(base: Config, dataset: data_lib.Dataset, fit: Callable):
  """Trains every grid member; returns result rows and histogram samples."""
  rows, samples = [], {}
  x = histogram_batch(dataset)
  for activation in ACTIVATIONS:
    for init in INITS:
      for batchnorm in (False, True):
        setting = dict(batchnorm=batchnorm, init=init, activation=activation)
        member = dataclasses.replace(base, diagnostics_every=0, **setting)
        # A fresh initialization with the member's scheme: what the first step sees.
        model = train.create_model(member, dataset, jax.random.key(member.seed))
        samples[activation, init, batchnorm, 'init'] = hidden_activations(model, x)
        for lr in LEARNING_RATES:
          result = fit(dataclasses.replace(member, lr=lr),
                       f'grid/{member_name(lr=lr, **setting)}')
          s = result.summary
          rows.append({**setting, 'lr': lr, 'status': s['status'],
                       'test_accuracy': s.get('final_test_accuracy'),
                       'train_accuracy': s.get('final_train_accuracy'),
                       'num_params': s['num_params'],
                       'num_params_with_redundant_bias':
                           s.get('num_params_with_redundant_bias')})
          if lr == HISTOGRAM_LR and s['status'] == 'completed':
            trained = nnx.merge(result.graphs.train, result.state.params,
                                jax.tree.map(lambda v: v, result.state.batch_stats))
            samples[activation, init, batchnorm, 'trained'] = hidden_activations(
                trained, x)
  return rows, samples


def activation_stats(values: np.ndarray, activation: str) -> dict[str, float]:
  """Std of a layer's activations and the share of values saturated (tanh, |a| > 0.97)
  or zero (relu), the two failure modes of a badly scaled layer."""
  stuck = np.abs(values) > 0.97 if activation == 'tanh' else values <= 0
  return {'std': float(np.std(values)), 'stuck': float(np.mean(stuck))}


def activation_table_rows(samples) -> list[dict[str, Any]]:
  rows = []
  for (activation, init, batchnorm, stage), layers in samples.items():
    for i, values in enumerate(layers):
      rows.append({'activation': activation, 'init': init, 'batchnorm': batchnorm,
                   'stage': stage, 'layer': i + 1,
                   **activation_stats(values, activation)})
  return rows


# --- Inference: which statistics evaluation mode normalizes with. ---


def evaluate_with_batch_statistics(graphs: train.Graphs, state: train.TrainState,
                                   images: np.ndarray, labels: np.ndarray, mean, std,
                                   *, batch_size: int) -> dict[str, float]:
  """Loss and accuracy in *training* mode: each test batch normalized by its own stats.

  What a model does when ``model.eval()`` is forgotten: every prediction depends on
  the other examples of its batch (and a batch of one maps every input to β).
  """

  @jax.jit
  def sums(params, batch_stats, images, labels):
    x = data_lib.normalize(images, mean, std)
    logits, _ = train.apply_model(graphs.train, params, batch_stats, x)
    return (jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, labels)),
            jnp.sum(jnp.argmax(logits, -1) == labels))

  totals = [sums(state.params, state.batch_stats, images[start:start + batch_size],
                 labels[start:start + batch_size])
            for start in range(0, len(labels), batch_size)]
  loss_sum, correct = np.sum(jax.device_get(totals), axis=0)
  return {'loss': float(loss_sum) / len(labels), 'accuracy': float(correct) / len(labels)}


def single_example_gap(graphs: train.Graphs, state: train.TrainState,
                       images: np.ndarray, mean, std, *, num_examples: int = 20) -> float:
  """max |logits(example alone) − logits(example in a batch)| in evaluation mode."""
  apply = jax.jit(train.apply_model, static_argnums=0)
  x = data_lib.normalize(jnp.asarray(images[:max(num_examples, 500)]), mean, std)
  batch, _ = apply(graphs.eval, state.params, state.batch_stats, x)
  return max(float(jnp.max(jnp.abs(
      apply(graphs.eval, state.params, state.batch_stats, x[i:i + 1])[0][0] - batch[i])))
             for i in range(num_examples))


def run_inference(base: Config, dataset: data_lib.Dataset, fit: Callable) -> dict:
  """One BN model, evaluated on the test set with every source of statistics."""
  result = fit(dataclasses.replace(base, batchnorm=True), 'inference')
  if result.summary['status'] != 'completed':
    return {'status': result.summary['status'], 'rows': []}
  graphs, state = result.graphs, result.state
  mean, std = jnp.asarray(dataset.mean), jnp.asarray(dataset.std)
  eval_step = train.make_eval_step(graphs)
  test = (dataset.test_images, dataset.test_labels)
  running = population_stats.read_statistics(state.batch_stats)
  rows = []

  def add(statistics, description, metrics, batch_stats=None):
    row = {'statistics': statistics, 'description': description,
           'test_accuracy': metrics['accuracy'], 'test_loss': metrics['loss']}
    if batch_stats is not None:
      row.update(population_stats.relative_error(
          running, population_stats.read_statistics(batch_stats)))
    rows.append(row)

  add('running averages', f'α = {base.bn_momentum}, after {base.steps} steps',
      train.evaluate(eval_step, state, *test, mean, std))
  for upstream, name, description in (
      ('population', 'population, layer by layer',
       'exact for the eval-mode network; upstream layers on population stats'),
      ('batch', 'population, one pass',
       'exact pooled moments; upstream layers in training mode')):
    t = time.time()
    stats = population_stats.population_statistics(
        graphs, state.params, state.batch_stats, dataset.train_images, mean=mean,
        std=std, upstream=upstream, batch_size=base.batch_size,
        key=jax.random.key(base.seed))
    description += f' ({time.time() - t:.1f}s)'
    add(name, description,
        train.evaluate(eval_step, state._replace(batch_stats=stats), *test, mean, std),
        batch_stats=stats)
  num_test = len(dataset.test_labels)
  for size in sorted({num_test, min(base.batch_size, num_test), *TEST_BATCH_SIZES},
                     reverse=True):
    add(f'test batch, B = {size}', 'training mode: each batch its own statistics',
        evaluate_with_batch_statistics(graphs, state, *test, mean, std,
                                       batch_size=size))
  return {'status': 'completed', 'rows': rows,
          'single_example_max_abs_diff': single_example_gap(
              graphs, state, dataset.test_images, mean, std),
          'num_params': result.summary['num_params'],
          'num_params_with_redundant_bias':
              result.summary['num_params_with_redundant_bias']}


def workdir_of(result: train.Fit) -> pathlib.Path:
  return pathlib.Path(result.summary['workdir'])


# --- Momentum α: how fast running averages track the population statistics. ---


def run_momentum(base: Config, dataset: data_lib.Dataset, fit: Callable) -> dict:
  """α × steps at a constant learning rate; errors of the running averages."""
  mean, std = jnp.asarray(dataset.mean), jnp.asarray(dataset.std)
  rows, curves, train_losses = [], {}, {}
  for steps in MOMENTUM_STEPS:
    for alpha in MOMENTA:
      member = dataclasses.replace(
          base, batchnorm=True, bn_momentum=alpha, schedule='constant', warmup_steps=0,
          steps=steps, log_every=min(10, steps), eval_every=min(10, steps),
          diagnostics_every=0)
      subdir = f'momentum/alpha{alpha:g}-steps{steps}'
      result = fit(member, subdir)
      records = rundir.read_jsonl(workdir_of(result) / 'metrics.jsonl')
      train_losses.setdefault(steps, []).append([r['train_loss'] for r in records])
      if steps == max(MOMENTUM_STEPS):
        curves[alpha] = [(r['step'], r.get('test_accuracy')) for r in records]
      if result.summary['status'] != 'completed':
        rows.append({'alpha': alpha, 'steps': steps,
                     'status': result.summary['status']})
        continue
      stats = population_stats.population_statistics(
          result.graphs, result.state.params, result.state.batch_stats,
          dataset.train_images, mean=mean, std=std, batch_size=base.batch_size)
      eval_step = train.make_eval_step(result.graphs)
      population = train.evaluate(eval_step, result.state._replace(batch_stats=stats),
                                  dataset.test_images, dataset.test_labels, mean, std)
      rows.append({
          'alpha': alpha, 'steps': steps, 'status': 'completed',
          **population_stats.relative_error(
              population_stats.read_statistics(result.state.batch_stats),
              population_stats.read_statistics(stats)),
          'test_accuracy_running': result.summary['final_test_accuracy'],
          'test_accuracy_population': population['accuracy']})
  # α only enters the running averages, never the training-mode forward pass, so
  # every α must train identically.
  identical = all(all(losses == per_alpha[0] for losses in per_alpha)
                  for per_alpha in train_losses.values())
  return {'rows': rows, 'curves': curves, 'training_identical_across_alpha': identical,
          'lr': base.lr}


# --- Report and figures. ---


def _percent(value) -> str:
  return '—' if value is None else f'{value:.1%}'


def grid_table(grid: list[dict]) -> str:
  header = ['activation', 'init'] + [f'lr={lr:g} {"BN" if bn else "no BN"}'
                                     for lr in LEARNING_RATES for bn in (False, True)]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
  cell = {(r['activation'], r['init'], r['batchnorm'], r['lr']): r for r in grid}
  for activation in ACTIVATIONS:
    for init in INITS:
      values = []
      for lr in LEARNING_RATES:
        for bn in (False, True):
          r = cell[activation, init, bn, lr]
          values.append(_percent(r['test_accuracy']) if r['status'] == 'completed'
                        else r['status'])
      lines.append(f'| {activation} | {init} | ' + ' | '.join(values) + ' |')
  return '\n'.join(lines)


def init_spread_table(grid: list[dict]) -> str:
  """Per activation, BN and lr: best, worst and spread of test accuracy over inits."""
  lines = ['| activation | BN | lr | worst init | best init | spread (best − worst) |',
           '| --- | --- | --- | --- | --- | --- |']
  for activation in ACTIVATIONS:
    for bn in (False, True):
      for lr in LEARNING_RATES:
        accuracies = {r['init']: (r['test_accuracy'] if r['status'] == 'completed'
                                  else 0.0)
                      for r in grid if (r['activation'], r['batchnorm'], r['lr'])
                      == (activation, bn, lr)}
        worst = min(accuracies, key=accuracies.get)
        best = max(accuracies, key=accuracies.get)
        lines.append(
            f'| {activation} | {"yes" if bn else "no"} | {lr:g} | {worst} '
            f'{accuracies[worst]:.1%} | {best} {accuracies[best]:.1%} | '
            f'{accuracies[best] - accuracies[worst]:.1%} |')
  return '\n'.join(lines)


def activation_table(samples) -> str:
  rows = activation_table_rows(samples)
  layers = sorted({r['layer'] for r in rows})
  header = ['activation', 'init', 'BN', 'stage'] + [
      f'layer {i}: std / stuck' for i in layers]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
  by_key = {}
  for r in rows:
    by_key.setdefault((r['activation'], r['init'], r['batchnorm'], r['stage']),
                      {})[r['layer']] = r
  for (activation, init, bn, stage), per_layer in by_key.items():
    cells = [f'{per_layer[i]["std"]:.3g} / {per_layer[i]["stuck"]:.0%}' for i in layers]
    lines.append(f'| {activation} | {init} | {"yes" if bn else "no"} | {stage} | '
                 + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def inference_table(inference: dict) -> str:
  lines = ['| statistics | how | test accuracy | test loss | '
           'running vs these: mean err (σ) | var err (ln) |',
           '| --- | --- | --- | --- | --- | --- |']
  for r in inference['rows']:
    errors = (f'{r["mean_error"]:.4f} | {r["var_error"]:.4f}' if 'mean_error' in r
              else '— | —')
    lines.append(f'| {r["statistics"]} | {r["description"]} | '
                 f'{r["test_accuracy"]:.2%} | {r["test_loss"]:.4f} | {errors} |')
  return '\n'.join(lines)


def momentum_table(momentum: dict) -> str:
  lines = ['| α | steps | running mean err (σ) | running var err (ln) | '
           'test acc, running | test acc, population |',
           '| --- | --- | --- | --- | --- | --- |']
  for r in sorted(momentum['rows'], key=lambda r: (r['alpha'], r['steps'])):
    if r['status'] != 'completed':
      lines.append(f'| {r["alpha"]:g} | {r["steps"]} | {r["status"]} | | | |')
      continue
    lines.append(
        f'| {r["alpha"]:g} | {r["steps"]} | {r["mean_error"]:.3f} | '
        f'{r["var_error"]:.3f} | {r["test_accuracy_running"]:.1%} | '
        f'{r["test_accuracy_population"]:.1%} |')
  return '\n'.join(lines)


def make_report(config: Config, dataset: data_lib.Dataset, *, grid, samples,
                inference, momentum, wall_time: float) -> str:
  quick = {k: v for k, v in QUICK.items() if getattr(config, k) == v}
  quick_note = (f'Quick defaults in effect ({", ".join(f"{k}={v}" for k, v in quick.items())}'
                '; pass other `--hidden` / `--steps` to scale up).' if quick else '')
  if inference['status'] == 'completed':
    inference_text = (
        f'{inference_table(inference)}\n\n'
        f'Single-example inference: in evaluation mode, the logits of each of 20 test '
        f'examples evaluated alone differ from the same example inside a batch of 500 '
        f'by at most {inference["single_example_max_abs_diff"]:.2e}.\n\n'
        f'Parameters: {inference["num_params"]:,} without the redundant Dense biases '
        f'before BN; {inference["num_params_with_redundant_bias"]:,} with them '
        f'(`summary.json`: `num_params`, `num_params_with_redundant_bias`). A bias '
        f'before BN is cancelled by the batch mean and receives zero gradient '
        f'(`tests/test_batchnorm.py`).\n\n![inference](inference.png)')
  else:
    inference_text = f'The inference model {inference["status"]}.'
  return f"""# BatchNorm: BN vs none, inference statistics, momentum α

Dataset `{dataset.name}` ({len(dataset.train_labels)} train / {len(dataset.test_labels)} test,
{dataset.num_classes} classes);
MLP hidden={list(config.hidden)}, {config.steps} steps, batch {config.batch_size},
SGD momentum {config.momentum}, schedule {config.schedule}, output_scale {config.output_scale},
BN α={config.bn_momentum} (`bn_impl={config.bn_impl}`), seed {config.seed}. {quick_note}
Grid and momentum runs train with in-step diagnostics off (`diagnostics_every=0`).
Total wall time {wall_time:.0f}s.

Reproduce: `python launch.py --experiment=batchnorm` (add `--hidden=256,256 --steps=1500`
for the reference size).

## 1. Final test accuracy: BN vs no BN, init × activation × learning rate

{grid_table(grid)}

Spread over the four inits (diverged counts as 0):

{init_spread_table(grid)}

![grid](grid.png)

Reading it: with BN a layer's output does not change when its kernel W is scaled, so the
gradient shrinks as 1/‖W‖ and the effective step as lr/‖W‖² (Arora, Li & Lyu, 2019,
"Theoretical analysis of auto rate-tuning by batch normalization"). An init with huge
weights (`normal`, N(0, 1), about √fan_in times Kaiming's) therefore trains with BN
but slowly at small lr; BN removes saturation and divergence, not this rescaled
learning rate.

## 2. Per-layer activations with and without BN

Training-mode activations on {NUM_HISTOGRAM_EXAMPLES} training images, at a fresh
initialization and after training at lr={HISTOGRAM_LR:g}. "stuck": share of activation
values (units × examples) saturated (tanh, |a| > 0.97) or zero (relu, a = 0).

{activation_table(samples)}

![tanh](activations_tanh.png)
![relu](activations_relu.png)

## 3. Inference: which statistics evaluation mode uses

The `inference/` model is the config above with BN. Population statistics are computed
after training over the whole training set (streaming, Chan et al. combine in float64).
"layer by layer" is exact for the evaluation-mode network (each BN sees exactly the
mean and variance it divides by); "one pass" pools the inputs that training-mode layers
produce (what the running averages estimate).

{inference_text}

## 4. Momentum α: running averages vs population statistics

Constant lr={momentum['lr']:g}; each row is a separate run of that many steps (prefixes of
one trajectory). Errors average over all units of all BN layers; "population" re-evaluates
the same weights with exact layer-by-layer population statistics. α changes only the
running averages, never training: identical training losses across α:
**{momentum['training_identical_across_alpha']}**.

{momentum_table(momentum)}

![momentum](momentum.png)

Conventions: α is Flax's `momentum` (default 0.99; this project 0.9). PyTorch's
`momentum` is 1 − α (default 0.1) and its running variance averages the unbiased
m/(m−1)·σ²_B (`batchnorm.BatchNorm(unbiased_running_var=True)`).
"""


def _figure(rows: int, cols: int, size: tuple[float, float]):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=size, layout='constrained')
  return fig, fig.subplots(rows, cols, squeeze=False)


def _plot_grid(path, grid: list[dict]):
  fig, axes = _figure(1, len(ACTIVATIONS), (5.5 * len(ACTIVATIONS), 4))
  colours = dict(zip(INITS, ('tab:red', 'tab:orange', 'tab:green', 'tab:blue')))
  for ax, activation in zip(axes[0], ACTIVATIONS):
    for init in INITS:
      for bn in (False, True):
        rows = sorted((r for r in grid if (r['activation'], r['init'], r['batchnorm'])
                       == (activation, init, bn)), key=lambda r: r['lr'])
        accuracy = [r['test_accuracy'] if r['status'] == 'completed' else math.nan
                    for r in rows]
        ax.plot([r['lr'] for r in rows], accuracy, '-o' if bn else '--s',
                color=colours[init], label=f'{init}{" + BN" if bn else ""}')
        diverged = [r['lr'] for r in rows if r['status'] != 'completed']
        ax.plot(diverged, [0] * len(diverged), 'x', color=colours[init], ms=9)
    ax.set(xscale='log', xlabel='peak learning rate', ylabel='final test accuracy',
           title=f'{activation}: solid = BN, dashed = none, x = diverged')
    ax.legend(fontsize=7, ncol=2)
  fig.savefig(path, dpi=110)


def _plot_activations(path, samples, activation: str):
  columns = [(bn, stage) for stage in ('init', 'trained') for bn in (False, True)]
  fig, axes = _figure(len(INITS), len(columns), (16, 3 * len(INITS)))
  for row, init in enumerate(INITS):
    for col, (bn, stage) in enumerate(columns):
      ax = axes[row][col]
      layers = samples.get((activation, init, bn, stage))
      ax.set_title(f'{init}, {"BN" if bn else "no BN"}, {stage}', fontsize=9)
      if layers is None:
        ax.text(0.5, 0.5, 'diverged', ha='center', transform=ax.transAxes)
        continue
      finite = np.concatenate([v.ravel() for v in layers])
      finite = finite[np.isfinite(finite)]
      bins = np.linspace(finite.min(), finite.max() + 1e-6, 60)
      for i, values in enumerate(layers):
        stats = activation_stats(values, activation)
        ax.hist(values.ravel(), bins=bins, histtype='step', density=True,
                label=f'layer {i + 1}: std {stats["std"]:.2g}, stuck {stats["stuck"]:.0%}')
      if activation == 'relu':
        ax.set_yscale('log')
      ax.legend(fontsize=7)
  fig.suptitle(f'{activation} activations per hidden layer (training mode)')
  fig.savefig(path, dpi=90)


def _plot_momentum(path, momentum: dict):
  fig, axes = _figure(1, 2, (12, 4))
  ax_err, ax_acc = axes[0]
  for alpha in MOMENTA:
    rows = sorted((r for r in momentum['rows']
                   if r['alpha'] == alpha and r['status'] == 'completed'),
                  key=lambda r: r['steps'])
    ax_err.plot([r['steps'] for r in rows], [r['mean_error'] for r in rows], '-o',
                label=f'α={alpha:g} mean')
    ax_err.plot([r['steps'] for r in rows], [r['var_error'] for r in rows], ':',
                color=ax_err.lines[-1].get_color(), label=f'α={alpha:g} var')
    curve = [(s, a) for s, a in momentum['curves'].get(alpha, []) if a is not None]
    ax_acc.plot([s for s, _ in curve], [a for _, a in curve], label=f'α={alpha:g}')
  population = {r['steps']: r['test_accuracy_population'] for r in momentum['rows']
                if r['status'] == 'completed'}
  ax_acc.plot(sorted(population), [population[s] for s in sorted(population)], 'k*',
              ms=10, label='population stats')
  ax_err.set(xscale='log', yscale='log', xlabel='training steps',
             ylabel='error of running averages',
             title='running vs population: mean (σ units), var (|ln ratio|)')
  ax_acc.set(xlabel='training steps', ylabel='test accuracy (eval mode)',
             title='eval with running averages, early training')
  ax_err.legend(fontsize=7, ncol=2)
  ax_acc.legend(fontsize=8)
  fig.savefig(path, dpi=110)


def _plot_inference(path, inference: dict):
  if not inference['rows']:
    return
  fig, axes = _figure(1, 1, (9, 3.5))
  ax = axes[0][0]
  rows = inference['rows']
  ax.barh([r['statistics'] for r in rows], [r['test_accuracy'] for r in rows])
  for i, r in enumerate(rows):
    ax.text(r['test_accuracy'], i, f' {r["test_accuracy"]:.1%}', va='center')
  ax.invert_yaxis()
  ax.set(xlabel='test accuracy', title='BatchNorm statistics used at inference')
  fig.savefig(path, dpi=110)
