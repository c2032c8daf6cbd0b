"""Optimizers: a plain-dict registry of ``optax.GradientTransformation`` factories.

Every entry follows optax's protocol, ``init(params) -> state`` and
``update(grads, state, params) -> (updates, state)``, so the train step applies any
of them the same way (``optax.apply_updates``), and says where its gradients come
from (``GRADIENTS``): ``jax.grad`` of the model's loss, or the hand-written backward
pass of ``fundamentals.backprop``.

* ``sgd``: SGD with heavy-ball momentum, v ← g + μ·v, θ ← θ − η_t·v (Polyak, 1964;
  as ``optax.sgd`` and PyTorch), η_t = η·s(t) with s the schedule of peak 1. η and μ
  live in the optimizer state (``optax.inject_hyperparams``), so runs that differ only
  in them share one compiled step.
* ``manual_sgd``: the same update written out by hand (``backprop.ManualSGD``) on the
  hand-written gradients, with η and μ as constants of the program.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from fundamentals import backprop
from fundamentals import losses
from fundamentals import models
from fundamentals import schedules


class Optimizer(NamedTuple):
  """A registry entry.

  Attributes:
    make: ``make(config, shape) -> GradientTransformation``, with ``shape`` the
      learning-rate schedule of peak 1.
    gradients: the key of ``GRADIENTS`` that computes what it consumes.
    hyperparameters_in_state: whether η and μ are state values (shared compilation)
      rather than constants of the program.
  """
  make: Callable[..., optax.GradientTransformation]
  gradients: str
  hyperparameters_in_state: bool


def scheduled_sgd(learning_rate: float, momentum: float | None = None, *,
                  shape: schedules.Schedule) -> optax.GradientTransformation:
  """SGD with η_t = η · s(t): ``shape`` s is the schedule with peak 1.

  The same updates as ``optax.sgd(η·s, momentum)`` (bit for bit where s(t)·η rounds
  as η·s(t) does: constant, cosine and exponential schedules); under
  ``optax.inject_hyperparams`` η and μ live in the optimizer state, so they are
  arguments of the compiled step rather than constants folded into it.
  """
  trace = optax.trace(decay=momentum) if momentum is not None else optax.identity()
  return optax.chain(trace, optax.scale_by_schedule(lambda count: -learning_rate * shape(count)))


def _sgd(config, shape) -> optax.GradientTransformation:
  return optax.inject_hyperparams(scheduled_sgd, static_args=('shape',))(
      learning_rate=config.lr, momentum=config.momentum or None, shape=shape)


def _manual_sgd(config, shape) -> optax.GradientTransformation:
  return backprop.ManualSGD(learning_rate_schedule(config.lr, shape),
                            momentum=config.momentum)


OPTIMIZERS: dict[str, Optimizer] = {
    'sgd': Optimizer(_sgd, gradients='autodiff', hyperparameters_in_state=True),
    'manual_sgd': Optimizer(_manual_sgd, gradients='by_hand',
                            hyperparameters_in_state=False),
}


def get_optimizer(name: str) -> Optimizer:
  """Returns the registry entry ``name``; raises ValueError listing the valid names."""
  try:
    return OPTIMIZERS[name]
  except KeyError:
    raise ValueError(f'Unknown optimizer {name!r}; valid: {sorted(OPTIMIZERS)}') from None


def learning_rate_schedule(lr: float, shape: schedules.Schedule) -> schedules.Schedule:
  """η_t = η · s(t), η as a (not weakly typed) array of the default float type, as
  ``inject_hyperparams`` holds it, so that every optimizer rounds η·s(t) alike."""
  return lambda step: jnp.asarray(lr, jnp.result_type(float)) * shape(step)


def create(config) -> tuple[optax.GradientTransformation, schedules.Schedule]:
  """The configured optimizer and its learning rate ``schedule(t)`` = η_t."""
  shape = schedules.get_schedule(config.schedule, init_value=1.0, total_steps=config.steps,
                                 warmup_steps=config.warmup_steps)
  tx = get_optimizer(config.optimizer).make(config, shape)
  return tx, learning_rate_schedule(config.lr, shape)


# Where gradients come from: (graph, params, batch_stats, x, labels) ->
# (loss, logits, ∂L/∂params, updated batch_stats), all pure in the arrays.


def autodiff_gradients(graph: nnx.GraphDef, params, batch_stats, x: jax.Array,
                       labels: jax.Array) -> tuple[jax.Array, jax.Array, Any, Any]:
  """``jax.value_and_grad`` of the softmax cross-entropy of the Flax model."""

  def loss_fn(params):
    logits, new_batch_stats = models.apply(graph, params, batch_stats, x)
    return losses.softmax_cross_entropy(logits, labels), (logits, new_batch_stats)

  (loss, (logits, new_batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(params)
  return loss, logits, grads, new_batch_stats


def hand_gradients(graph: nnx.GraphDef, params, batch_stats, x: jax.Array,
                   labels: jax.Array) -> tuple[jax.Array, jax.Array, Any, Any]:
  """The hand-written forward and backward pass (``backprop.value_and_grad_by_hand``)."""
  return backprop.value_and_grad_by_hand(nnx.merge(graph, params, batch_stats), x, labels)


GRADIENTS: dict[str, Callable[..., tuple]] = {
    'autodiff': autodiff_gradients,
    'by_hand': hand_gradients,
}


def gradients_of(name: str) -> Callable[..., tuple]:
  """The gradient function the optimizer ``name`` consumes."""
  return GRADIENTS[get_optimizer(name).gradients]
