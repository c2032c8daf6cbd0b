"""Checking gradients: hand-written against autodiff and against finite differences.

The checks of ``fundamentals.backprop``'s hand-written passes, as an expert lays out a
gradient check: each quantity (forward values, ∂L/∂θ per parameter, ∂L/∂ each
intermediate) compared leaf by leaf with its reference, with the largest absolute
and relative difference and a verdict (:class:`Comparison`):

* :func:`compare_with_autodiff`: against the Flax model and ``jax.grad``, in float64
  or float32; intermediates through zero taps added to the hand forward pass;
* :func:`compare_with_finite_differences`: against central differences of the Flax
  model's loss in float64 (:func:`finite_differences`).
"""

import contextlib
import dataclasses
from typing import Callable

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fundamentals import backprop
from fundamentals import losses
from fundamentals import models

# Largest relative difference max|hand − reference| / max|reference| still called
# 'approx' (float64: ~1e6 ulps of slack; float32: the error of a few hundred roundings).
TOLERANCE = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}


@dataclasses.dataclass(frozen=True)
class Comparison:
  """One row of a comparison: a hand-computed quantity against its reference.

  ``verdict`` is ``'exact'`` (bit for bit), ``'approx'`` (max|Δ| ≤ atol + rtol·
  max|reference|) or ``'WRONG'``.
  """
  name: str
  kind: str
  shape: tuple[int, ...]
  max_abs_diff: float
  max_abs_reference: float
  verdict: str

  @property
  def relative_diff(self) -> float:
    if self.max_abs_diff == 0:
      return 0.0
    return self.max_abs_diff / self.max_abs_reference if self.max_abs_reference else np.inf


def leaf_name(path) -> str:
  """``'dense/0/kernel'`` for a key path into a pure dict (or list)."""
  parts = []
  for key in path:
    for attr in ('key', 'idx', 'name'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return '/'.join(parts)


def _named_leaves(tree) -> dict[str, np.ndarray]:
  return {leaf_name(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def compare(hand, reference, *, kind: str, rtol: float | None = None,
            atol: float = 0.0) -> list[Comparison]:
  """Compares two pytrees of the same structure leaf by leaf.

  A leaf is ``'approx'`` when max|Δ| ≤ atol + rtol·max|reference|, or when both sides
  are zero at that precision: every |value| ≤ rtol·(the largest |reference| in the
  whole tree). The latter is a gradient that vanishes analytically and is rounding
  noise on both sides, like β before an identity activation and another BatchNorm.

  Args:
    hand: the hand-computed values.
    reference: what they should equal (autodiff, Flax, finite differences).
    kind: label of the rows (``'parameter'``, ``'intermediate'``, ``'forward'``...).
    rtol: relative tolerance; default ``TOLERANCE`` of the reference's dtype.
    atol: absolute tolerance added to it.

  Raises:
    ValueError: the two trees have different leaves or shapes.
  """
  hand, reference = _named_leaves(hand), _named_leaves(reference)
  if hand.keys() != reference.keys():
    raise ValueError(f'hand leaves {sorted(hand)} != reference leaves {sorted(reference)}')
  tree_scale = max((float(np.max(np.abs(ref), initial=0.0))
                    for ref in reference.values()), default=0.0)
  rows = []
  for name, ref in reference.items():
    value = hand[name]
    if value.shape != ref.shape:
      raise ValueError(f'{name}: hand shape {value.shape} != reference shape {ref.shape}')
    tolerance = TOLERANCE.get(ref.dtype, 1e-5) if rtol is None else rtol
    diff = float(np.max(np.abs(value.astype(np.float64) - ref), initial=0.0))
    scale = float(np.max(np.abs(ref), initial=0.0))
    both_zero = max(scale, float(np.max(np.abs(value), initial=0.0))) <= (
        tolerance * tree_scale)
    if diff == 0:
      verdict = 'exact'
    elif diff <= atol + tolerance * scale or both_zero:
      verdict = 'approx'
    else:
      verdict = 'WRONG'
    rows.append(Comparison(name, kind, ref.shape, diff, scale, verdict))
  return rows


def format_table(rows: list[Comparison]) -> str:
  """A Markdown table, one row per comparison, as an expert lays out a gradient check."""
  lines = ['| quantity | kind | shape | max abs diff | max abs reference | relative | verdict |',
           '| --- | --- | --- | ---: | ---: | ---: | --- |']
  for row in rows:
    shape = '×'.join(map(str, row.shape)) or 'scalar'
    lines.append(f'| {row.name} | {row.kind} | {shape} | {row.max_abs_diff:.2e} | '
                 f'{row.max_abs_reference:.2e} | {row.relative_diff:.2e} | {row.verdict} |')
  return '\n'.join(lines)


def _precision(dtype):
  if np.dtype(dtype) == np.float64:
    return jax.enable_x64(True)
  return contextlib.nullcontext()


def _train_mode_split(model: models.MLP, dtype):
  """Graph in training mode and float ``dtype`` state, leaving ``model`` untouched."""
  model = nnx.clone(model)
  model.train()
  graph, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  cast = lambda leaf: jnp.asarray(leaf, dtype)
  return graph, jax.tree.map(cast, params), jax.tree.map(cast, stats)


def _flax_loss(graph, params, stats, x, labels):
  model = nnx.merge(graph, params, jax.tree.map(lambda leaf: leaf, stats))
  logits = model(x)
  return losses.softmax_cross_entropy(logits, labels), (
      logits, nnx.state(model, nnx.BatchStat))


def compare_with_autodiff(model: models.MLP, x: jax.Array, labels: jax.Array, *,
                          dtype=jnp.float32) -> list[Comparison]:
  """Hand forward/backward against Flax and ``jax.grad`` on one batch, in ``dtype``.

  Rows, in order:
    * forward: loss, logits and updated running averages vs Flax's training-mode call;
    * parameter: ∂L/∂θ by hand vs ``jax.grad`` of the Flax model's loss;
    * intermediate: ∂L/∂(logits, h_i, z_i, u_i) by hand vs ``jax.grad`` with respect
      to zero taps added to each intermediate of :func:`forward`.

  ``dtype=jnp.float64`` runs inside ``jax.enable_x64``, for this call only.
  """
  with _precision(dtype):
    hyper = backprop.hyperparameters(model)
    graph, params, stats = _train_mode_split(model, dtype)
    x = jnp.asarray(x, dtype)
    (ref_loss, (ref_logits, ref_stats)), ref_grads = jax.jit(
        jax.value_and_grad(_flax_loss, argnums=1, has_aux=True), static_argnums=0)(
            graph, params, stats, x, labels)

    pure_params = nnx.to_pure_dict(params)
    by_hand = jax.jit(backprop.loss_and_grads, static_argnames=('activation', 'epsilon'))
    loss, grads, aux = by_hand(pure_params, x, labels, activation=hyper['activation'],
                               epsilon=hyper['epsilon'])
    new_stats = backprop.update_batch_stats(
        nnx.to_pure_dict(stats), aux['cache'], momentum=hyper['momentum'],
        unbiased_running_var=hyper['unbiased_running_var'])

    def loss_of_taps(taps, params, x, labels):
      logits, _ = backprop.forward(params, x, activation=hyper['activation'],
                          epsilon=hyper['epsilon'], taps=taps)
      return backprop.softmax_cross_entropy(logits, labels)[0]

    zeros = jax.tree.map(jnp.zeros_like, backprop.intermediates(aux['cache']))
    tap_grads = jax.jit(jax.grad(loss_of_taps))(zeros, pure_params, x, labels)

    return [
        *compare({'loss': loss, 'logits': aux['logits'], 'running': new_stats},
                 {'loss': ref_loss, 'logits': ref_logits,
                  'running': nnx.to_pure_dict(ref_stats)}, kind='forward'),
        *compare(grads, nnx.to_pure_dict(ref_grads), kind='parameter'),
        *compare(aux['intermediate_grads'], tap_grads, kind='intermediate'),
    ]


def finite_differences(loss_fn: Callable[..., jax.Array], params: backprop.Params, *args,
                       step: float = 1e-6, max_per_leaf: int | None = None,
                       seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Central differences ∂L/∂θ_j ≈ (L(θ + h·e_j) − L(θ − h·e_j))/(2h), in float64.

  The truncation error is O(h²) and the rounding error O(ε_machine·|L|/h) (Nocedal &
  Wright, 2006, Sec. 8.1); h = 1e-6 in float64 balances them near 1e-10.

  Args:
    loss_fn: ``(params, *args) -> scalar loss``; traced in float64 (under
      ``jax.enable_x64``).
    params: a pytree of arrays (cast to float64).
    *args: passed to ``loss_fn`` as they are (the batch).
    step: h.
    max_per_leaf: check at most this many coordinates per leaf, drawn at random
      without replacement (None: all of them).
    seed: for the drawn coordinates.

  Returns:
    Per leaf name (see :func:`leaf_name`): the flat indices checked and their
    finite-difference estimates.
  """
  if not step > 0:
    raise ValueError(f'{step=} must be positive')
  rng = np.random.default_rng(seed)
  with jax.enable_x64(True):
    params = jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float64), params)
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    @jax.jit
    def estimates(flat, indices, args):
      def loss_at(index, delta):
        return loss_fn(unravel(flat.at[index].add(delta)), *args)
      # lax.map, not vmap: one perturbed copy of the parameters at a time.
      return jax.lax.map(
          lambda i: (loss_at(i, step) - loss_at(i, -step)) / (2 * step), indices)

    names, chosen = [], []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
      size = int(leaf.size)
      if max_per_leaf is None or max_per_leaf >= size:
        indices = np.arange(size)
      else:
        indices = np.sort(rng.choice(size, max_per_leaf, replace=False))
      names.append(leaf_name(path))
      chosen.append(indices)
    offsets = np.cumsum([0] + [int(leaf.size) for leaf in jax.tree.leaves(params)])
    values = np.asarray(estimates(
        flat, np.concatenate([i + o for i, o in zip(chosen, offsets)]), args))
    counts = np.cumsum([0] + [len(i) for i in chosen])
    return {name: (indices, values[a:b])
            for name, indices, a, b in zip(names, chosen, counts[:-1], counts[1:])}


def compare_with_finite_differences(model: models.MLP, x: jax.Array,
                                    labels: jax.Array, *, max_per_leaf: int | None = None,
                                    step: float = 1e-6, seed: int = 0,
                                    rtol: float = 1e-6,
                                    atol: float = 1e-9) -> list[Comparison]:
  """Hand ∂L/∂θ (float64) against central differences of the Flax model's loss.

  Args:
    model: the MLP; run in training mode, in float64, without being modified.
    x, labels: one batch.
    max_per_leaf: coordinates checked per parameter (None: all; use a few for big
      models: each costs two forward passes).
    step, seed: see :func:`finite_differences`.
    rtol, atol: 'approx' when max|Δ| ≤ atol + rtol·max|estimate|; the default
      allows the O(h²) and O(ε/h) errors of the estimate.
  """
  with jax.enable_x64(True):
    hyper = backprop.hyperparameters(model)
    graph, params, stats = _train_mode_split(model, jnp.float64)
    x = jnp.asarray(x, jnp.float64)
    pure_params = nnx.to_pure_dict(params)
    _, grads, _ = jax.jit(backprop.loss_and_grads, static_argnames=('activation', 'epsilon'))(
        pure_params, x, labels, activation=hyper['activation'],
        epsilon=hyper['epsilon'])

    def loss_fn(pure, stats, x, labels):
      return _flax_loss(graph, backprop.as_state(params, pure), stats, x, labels)[0]

    estimates = finite_differences(loss_fn, pure_params, stats, x, labels, step=step,
                                   max_per_leaf=max_per_leaf, seed=seed)
    hand = _named_leaves(grads)
    return [
        row
        for name, (indices, estimate) in estimates.items()
        for row in compare({name: hand[name].ravel()[indices]}, {name: estimate},
                           kind='finite diff', rtol=rtol, atol=atol)
    ]
