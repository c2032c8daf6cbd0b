"""Backprop by hand, checked: hand vs autodiff vs finite differences, manual vs optax SGD.

Varies: nothing about the model; checks the given config's MLP (a BN-MLP by default)
on the first ``batch_size`` training examples of the real dataset:
  * forward/parameter/intermediate rows, hand vs Flax + ``jax.grad``, in float64 and
    in float32 (``backprop.compare_with_autodiff``);
  * hand ∂L/∂θ vs central finite differences in float64, a few coordinates per
    parameter (``backprop.compare_with_finite_differences``);
  * ``optimizer='sgd'`` vs ``'manual_sgd'`` trained from the same init through the
    same batches for min(steps, 200) steps with train.py's step function, in float32
    and in float64: per-step losses and final parameters compared.
Summarizes: the tables (printed and in ``report.md``) and the largest differences in
``summary.json``.
"""

import contextlib
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fundamentals import backprop
from fundamentals import data
from fundamentals import rundir
from fundamentals import train
from fundamentals.config import Config

TRAJECTORY_STEPS = 200
FD_COORDINATES_PER_LEAF = 3


def run(config: Config, *, overwrite: bool = False) -> dict[str, Any]:
  """Hand-written backprop vs jax.grad and finite differences; manual vs optax SGD."""
  workdir = rundir.start(config, overwrite=overwrite)
  dataset = data.load_configured(config)
  model = train.create_model(config, dataset, jax.random.key(config.seed))
  x = data.normalize(jnp.asarray(dataset.train_images[:config.batch_size]),
                     dataset.mean, dataset.std)
  y = jnp.asarray(dataset.train_labels[:config.batch_size])

  tables = {
      'float64': backprop.compare_with_autodiff(model, x, y, dtype=jnp.float64),
      'float32': backprop.compare_with_autodiff(model, x, y, dtype=jnp.float32),
      'finite differences': backprop.compare_with_finite_differences(
          model, x, y, max_per_leaf=FD_COORDINATES_PER_LEAF, seed=config.seed),
  }
  trajectory = _trajectories(config, dataset)

  summary = {
      name: {'max_abs_diff': max(r.max_abs_diff for r in rows),
             'max_relative_diff': max(r.relative_diff for r in rows),
             'wrong': [r.name for r in rows if r.verdict == 'WRONG']}
      for name, rows in tables.items()
  } | {'trajectory': trajectory}
  report = _report(config, dataset, tables, trajectory)
  (workdir / 'report.md').write_text(report)
  rundir.write_json(workdir / 'summary.json', summary)
  print(report)
  print(f'wrote {workdir}/report.md')
  return summary


def _trajectories(config: Config, dataset: data.Dataset) -> dict[str, Any]:
  """optax SGD vs manual SGD from the same init through the same batches, per dtype."""
  steps = min(config.steps, TRAJECTORY_STEPS)
  result = {}
  for dtype in (jnp.float32, jnp.float64):
    runs = {optimizer: trajectory(config, dataset, optimizer, steps=steps, dtype=dtype)
            for optimizer in ('sgd', 'manual_sgd')}
    (sgd_losses, sgd_state), (manual_losses, manual_state) = (
        runs['sgd'], runs['manual_sgd'])
    diff = np.abs(sgd_losses - manual_losses)
    result[jnp.dtype(dtype).name] = {
        'steps': steps,
        'max_abs_loss_diff': float(diff.max()),
        'step_of_max': int(np.argmax(diff)) + 1,
        'max_abs_loss_diff_by_step': {
            str(n): float(diff[:n].max()) for n in (10, 50, 100, 200) if n <= steps},
        'final_max_abs_state_diff': max(
            float(np.max(np.abs(a - b))) for a, b in zip(
                jax.tree.leaves(sgd_state), jax.tree.leaves(manual_state))),
        'final_loss': {'sgd': float(sgd_losses[-1]),
                       'manual_sgd': float(manual_losses[-1])},
    }
  return result


def trajectory(config: Config, dataset: data.Dataset, optimizer: str, *, steps: int,
               dtype=jnp.float32) -> tuple[np.ndarray, dict[str, Any]]:
  """Per-step training losses and the final state, from train.py's own step function.

  Initialization and batches are drawn as in ``train.fit``; there is no logging or
  evaluation. In float64 the state is cast and the step traced under
  ``jax.enable_x64`` (the inputs stay the float32 pixels normalized).

  Returns:
    The loss of every step, and ``{'params', 'batch_stats'}`` after the last as pure
    dicts of NumPy arrays.
  """
  member = dataclasses.replace(config, optimizer=optimizer, steps=steps,
                               warmup_steps=min(config.warmup_steps, steps - 1))
  float64 = jnp.dtype(dtype) == jnp.float64
  with jax.enable_x64(True) if float64 else contextlib.nullcontext():
    init_key, shuffle_key, _ = jax.random.split(jax.random.key(config.seed), 3)
    tx, _ = train.create_optimizer(member)
    graphs, state = train.split_model(train.create_model(member, dataset, init_key), tx)
    state = jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
    # Made anew from the cast parameters: the optimizer's hyperparameters (lr,
    # momentum) take their dtype, so that lr is exactly η in float64 too.
    state = state._replace(opt_state=tx.init(state.params))
    train_step = train.make_train_step(graphs, tx, batch_size=config.batch_size)
    images = jax.device_put(dataset.train_images)
    labels = jax.device_put(dataset.train_labels)
    mean, std = jnp.asarray(dataset.mean), jnp.asarray(dataset.std)
    steps_per_epoch = len(dataset.train_labels) // config.batch_size
    losses = []
    for step in range(steps):
      epoch, position = divmod(step, steps_per_epoch)
      if position == 0:
        perm = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch),
                                      len(dataset.train_labels))
      state, metrics = train_step(state, images, labels, perm, position, mean, std)
      losses.append(metrics['loss'])
    final = {'params': nnx.to_pure_dict(state.params),
             'batch_stats': nnx.to_pure_dict(state.batch_stats)}
    return (np.asarray(jax.device_get(losses), np.float64),
            jax.tree.map(np.asarray, final))


def _report(config: Config, dataset: data.Dataset, tables, trajectory) -> str:
  sections = [
      '# Backprop by hand, checked\n',
      f'MLP {list(config.hidden)} {config.activation}, batchnorm={config.batchnorm} '
      f'(init={config.init}, seed {config.seed}) on the first {config.batch_size} '
      f'training examples of `{dataset.name}`; softmax cross-entropy averaged over '
      'the batch. *exact*: bit for bit; *approx*: max|Δ| ≤ rtol·max|reference| '
      '(float64: 1e-10, float32: 1e-5; finite differences: 1e-6 + 1e-9 absolute); '
      '*WRONG*: beyond that. Forward rows compare with the Flax model in training mode '
      '(loss, logits, updated running averages); parameter rows with `jax.grad` of it; '
      'intermediate rows with `jax.grad` with respect to zero taps on each '
      'intermediate (dense = BN input u, preactivation = BN output z, activation = h).\n',
  ]
  for name, rows in tables.items():
    title = {'float64': 'Hand vs autodiff, float64',
             'float32': 'Hand vs autodiff, float32',
             'finite differences': f'Hand vs central finite differences (h = 1e-6, '
                                   f'float64), {FD_COORDINATES_PER_LEAF} random '
                                   'coordinates per parameter'}[name]
    sections.append(f'## {title}\n\n{backprop.format_table(rows)}\n')
  sections.append(
      f'## Manual SGD vs optax SGD\n\n'
      f'`optimizer=manual_sgd` (hand gradients, update v ← g + μ·v, p ← p − η_t·v by '
      f'hand) against `optimizer=sgd` (optax on `jax.grad`): same init, same batches, '
      f'train.py\'s own jitted step, lr {config.lr} {config.schedule}, momentum '
      f'{config.momentum}.\n\n'
      '| dtype | steps | max abs Δ loss | at step | by step | max abs Δ parameters '
      'and running averages (end) | final loss sgd / manual_sgd |\n'
      '| --- | ---: | ---: | ---: | --- | ---: | --- |')
  for name, t in trajectory.items():
    by_step = ', '.join(f'{k}: {v:.1e}' for k, v in t['max_abs_loss_diff_by_step'].items())
    sections[-1] += (
        f'\n| {name} | {t["steps"]} | {t["max_abs_loss_diff"]:.2e} | '
        f'{t["step_of_max"]} | {by_step} | {t["final_max_abs_state_diff"]:.2e} | '
        f'{t["final_loss"]["sgd"]:.6f} / {t["final_loss"]["manual_sgd"]:.6f} |')
  sections[-1] += (
      '\n\nThe two gradients round differently (~1e-7 relative in float32, ~1e-16 in '
      'float64). With ReLU the difference can jump when a preactivation within '
      'rounding of 0 falls on different sides of the kink in the two runs: that entry '
      'of the gradient then differs by O(1), and the runs drift apart by more than '
      'rounding from there on; float64 makes such a crossing vanishingly rare.\n')
  return '\n'.join(sections)
