"""Backprop by hand, checked: hand vs autodiff vs finite differences, manual vs optax SGD.

Members (measured; the config's MLP, a BN-MLP by default, drawn from ``key(seed)``, on
the first ``--batch_size`` training examples):

* ``float64``, ``float32``: forward/parameter/intermediate rows, hand vs Flax +
  ``jax.grad`` (``gradient_check.compare_with_autodiff``);
* ``finite_differences``: hand ∂L/∂θ vs central finite differences in float64, a few
  coordinates per parameter (``gradient_check.compare_with_finite_differences``);
* ``trajectory_float32``, ``trajectory_float64``: ``optimizer='sgd'`` vs
  ``'manual_sgd'`` trained from the same init through the same batches for
  min(steps, ``--backprop_trajectory_steps``) steps with train.py's own step and batch
  order: per-step losses and final parameters compared.

Summarizes: the tables of ``report.md``, the largest differences in ``results.json``.
"""

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fundamentals import data
from fundamentals import gradient_check
from fundamentals import models
from fundamentals import optimizers
from fundamentals import runner
from fundamentals import train
from fundamentals.config import Knobs, knob
from fundamentals.report import markdown_table


@dataclasses.dataclass(frozen=True)
class Settings(Knobs):
  trajectory_steps: int = knob(200, 'Steps of the sgd vs manual_sgd trajectories (at '
                               'most --steps).', group='backprop')
  fd_coordinates: int = knob(3, 'Random coordinates per parameter checked by finite '
                             'differences.', group='backprop')

  def validate(self):
    for name in ('trajectory_steps', 'fd_coordinates'):
      if getattr(self, name) < 1:
        raise ValueError(f'backprop_{name}={getattr(self, name)} must be positive')


def members(config, settings) -> dict[str, dict]:
  del config, settings
  return {name: {} for name in ('float64', 'float32', 'finite_differences',
                                'trajectory_float32', 'trajectory_float64')}


def _rows(rows: list[gradient_check.Comparison]) -> list[dict]:
  return [dataclasses.asdict(r) | {'relative_diff': r.relative_diff} for r in rows]


def measure(context: runner.Context, member) -> dict:
  config, dataset, s = member.config, context.dataset, context.settings
  if member.name.startswith('trajectory_'):
    dtype = jnp.dtype(member.name.split('_')[1])
    return compare_trajectories(config, dataset, steps=min(config.steps, s.trajectory_steps),
                                dtype=dtype)
  model = models.create_model(config, num_features=dataset.num_features,
                              num_classes=dataset.num_classes, key=jax.random.key(config.seed))
  x = data.normalize(jnp.asarray(dataset.train_images[:config.batch_size]),
                     dataset.mean, dataset.std)
  y = jnp.asarray(dataset.train_labels[:config.batch_size])
  if member.name == 'finite_differences':
    return {'rows': _rows(gradient_check.compare_with_finite_differences(
        model, x, y, max_per_leaf=s.fd_coordinates, seed=config.seed))}
  return {'rows': _rows(gradient_check.compare_with_autodiff(
      model, x, y, dtype=jnp.dtype(member.name)))}


def trajectory(config, dataset: data.Dataset, optimizer: str, *, steps: int,
               dtype=jnp.float32) -> tuple[np.ndarray, dict]:
  """Per-step training losses and the final state, from train.py's own initial state,
  step function and batch order (no logging or evaluation). In float64 the state is
  cast and the step traced under ``jax.enable_x64`` (the inputs stay the float32
  pixels normalized)."""
  member = dataclasses.replace(config, optimizer=optimizer, steps=steps,
                               warmup_steps=min(config.warmup_steps, steps - 1))
  float64 = jnp.dtype(dtype) == jnp.float64
  with jax.enable_x64(True) if float64 else contextlib.nullcontext():
    start = train.initial_state(member, dataset)
    tx, _ = optimizers.create(member)
    state = jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating)
                         else a, start.state)
    # Made anew from the cast parameters: the optimizer's hyperparameters (lr,
    # momentum) take their dtype, so that lr is exactly η in float64 too.
    state = state._replace(opt_state=tx.init(state.params))
    step_fn = train.make_train_step(start.graphs, tx, batch_size=config.batch_size,
                                    gradients=optimizers.gradients_of(optimizer))
    images, labels = jax.device_put(dataset.train_images), jax.device_put(dataset.train_labels)
    mean, std = jnp.asarray(dataset.mean), jnp.asarray(dataset.std)
    losses = []
    for _, perm, position in train.batch_order(
        lambda epoch: train.epoch_permutation(start.shuffle_key, epoch, len(labels)),
        steps_per_epoch=len(labels) // config.batch_size, start=0, stop=steps):
      state, metrics = step_fn(state, images, labels, perm, position, mean, std)
      losses.append(metrics['loss'])
    final = {'params': nnx.to_pure_dict(state.params),
             'batch_stats': nnx.to_pure_dict(state.batch_stats)}
    return (np.asarray(jax.device_get(losses), np.float64),
            jax.tree.map(np.asarray, final))


def compare_trajectories(config, dataset: data.Dataset, *, steps: int, dtype) -> dict:
  """optax SGD vs manual SGD from the same init through the same batches."""
  (sgd_losses, sgd_state), (manual_losses, manual_state) = (
      trajectory(config, dataset, optimizer, steps=steps, dtype=dtype)
      for optimizer in ('sgd', 'manual_sgd'))
  diff = np.abs(sgd_losses - manual_losses)
  return {
      'steps': steps, 'max_abs_loss_diff': float(diff.max()),
      'step_of_max': int(np.argmax(diff)) + 1,
      'max_abs_loss_diff_by_step': {str(n): float(diff[:n].max())
                                    for n in (10, 50, 100, 200) if n <= steps},
      'final_max_abs_state_diff': max(float(np.max(np.abs(a - b))) for a, b in zip(
          jax.tree.leaves(sgd_state), jax.tree.leaves(manual_state))),
      'final_loss': {'sgd': float(sgd_losses[-1]), 'manual_sgd': float(manual_losses[-1])},
  }


TITLES = {'float64': 'Hand vs autodiff, float64', 'float32': 'Hand vs autodiff, float32',
          'finite_differences': 'Hand vs central finite differences (h = 1e-6, float64), '
                                '{n} random coordinates per parameter'}


def check(context: runner.Context, results) -> list[runner.Check]:
  wrong = [f'{name}: {row["name"]}' for name in TITLES
           for row in results[name].output['rows'] if row['verdict'] == 'WRONG']
  worst = max(max(row['relative_diff'] for row in results[name].output['rows'])
              for name in ('float64', 'finite_differences'))
  f64 = results['trajectory_float64'].output
  return [
      runner.Check('every hand-written forward value, gradient and intermediate gradient '
                   'agrees with autodiff and finite differences (no WRONG row)',
                   f'{len(wrong)} wrong' + (f' ({", ".join(wrong[:3])})' if wrong else '')
                   + f'; largest relative difference in float64 {worst:.1e}', not wrong),
      runner.Check('in float64, manual SGD follows optax SGD step for step (losses within '
                   '1e-10)', f'largest loss difference {f64["max_abs_loss_diff"]:.1e} over '
                   f'{f64["steps"]} steps', f64['max_abs_loss_diff'] <= 1e-10),
  ]


def summarize(context: runner.Context, results) -> runner.Summary:
  config, dataset, s = context.config, context.dataset, context.settings
  sections = [
      f'MLP {list(config.hidden)} {config.activation}, batchnorm={config.batchnorm} '
      f'(init={config.init}, seed {config.seed}) on the '
      f'first {config.batch_size} training examples of `{dataset.name}`; softmax '
      'cross-entropy averaged over the batch. *exact*: bit for bit; *approx*: max|Δ| ≤ '
      'rtol·max|reference| (float64: 1e-10, float32: 1e-5; finite differences: 1e-6 + '
      '1e-9 absolute); *WRONG*: beyond that. Forward rows compare with the Flax model in '
      'training mode (loss, logits, updated running averages); parameter rows with '
      '`jax.grad` of it; intermediate rows with `jax.grad` with respect to zero taps on '
      'each intermediate (dense = BN input u, preactivation = BN output z, activation = '
      'h). The hand-written BatchNorm computes the batch variance in two passes, as '
      '`batchnorm.py`; `nnx.BatchNorm` uses E[u²] − E[u]², so its rows are *approx* '
      'rather than *exact* (`--bn_impl=ours` compares with the two-pass layer).\n']
  for name, title in TITLES.items():
    rows = [gradient_check.Comparison(**{k: v for k, v in r.items() if k != 'relative_diff'})
            for r in results[name].output['rows']]
    sections.append(f'## {title.format(n=s.fd_coordinates)}\n\n'
                    f'{gradient_check.format_table(rows)}\n')
  trajectories = {name.split('_')[1]: results[name].output
                  for name in ('trajectory_float32', 'trajectory_float64')}
  table = markdown_table(
      ['dtype', 'steps', 'max abs Δ loss', 'at step', 'by step',
       'max abs Δ parameters and running averages (end)', 'final loss sgd / manual_sgd'],
      [[name, t['steps'], f'{t["max_abs_loss_diff"]:.2e}', t['step_of_max'],
        ', '.join(f'{k}: {v:.1e}' for k, v in sorted(t['max_abs_loss_diff_by_step'].items(),
                                                      key=lambda kv: int(kv[0]))),
        f'{t["final_max_abs_state_diff"]:.2e}',
        f'{t["final_loss"]["sgd"]:.6f} / {t["final_loss"]["manual_sgd"]:.6f}']
       for name, t in trajectories.items()], align='lrrrlrl')
  sections.append(
      f'## Manual SGD vs optax SGD\n\n`optimizer=manual_sgd` (hand gradients, update '
      f'v ← g + μ·v, p ← p − η_t·v by hand) against `optimizer=sgd` (optax on `jax.grad`): '
      f'same init, same batches, train.py\'s own jitted step, lr {config.lr} '
      f'{config.schedule}, momentum {config.momentum}.\n\n{table}\n\nThe two gradients '
      'round differently (~1e-7 relative in float32, ~1e-16 in float64). With ReLU the '
      'difference can jump when a preactivation within rounding of 0 falls on different '
      'sides of the kink in the two runs: that entry of the gradient then differs by '
      'O(1), and the runs drift apart by more than rounding from there on; float64 makes '
      'such a crossing vanishingly rare.\n')
  return runner.Summary('Backprop by hand, checked', '\n'.join(sections), values={
      name: {'max_abs_diff': max(r['max_abs_diff'] for r in results[name].output['rows']),
             'max_relative_diff': max(r['relative_diff']
                                      for r in results[name].output['rows'])}
      for name in TITLES})


EXPERIMENT = runner.Experiment(
    name='backprop',
    description='Hand-written backprop vs jax.grad and finite differences; manual vs '
                'optax SGD.',
    members=members, settings=Settings, settings_prefix='backprop_', measure=measure,
    summarize=summarize, check=check,
    scales={'tiny': runner.Scale(config={'hidden': (8,), 'batch_size': 20, 'steps': 4}),
            'full': runner.Scale(config={'hidden': (512, 512, 512)},
                                 settings={'fd_coordinates': 10})})
