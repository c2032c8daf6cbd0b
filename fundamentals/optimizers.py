"""Optimizers: a plain-dict registry of ``optax.GradientTransformation`` factories.

Every entry follows optax's protocol, ``init(params) -> state`` and
``update(grads, state, params) -> (updates, state)``, so the train step applies any
of them the same way (``optax.apply_updates``), and says where its gradients come
from (``GRADIENTS``): ``jax.grad`` of the model's loss, or the hand-written backward
pass of ``fundamentals.backprop``. η_t = η·s(t) is the learning rate at the 0-based
step t, s the schedule of peak 1; g the minibatch gradient.

* ``sgd``: SGD with heavy-ball momentum, v ← g + μ·v, θ ← θ − η_t·v (Polyak, 1964;
  as ``optax.sgd`` and PyTorch); ``nesterov``: θ ← θ − η_t·(g + μ·v) with the new v
  (Sutskever et al., 2013, in PyTorch's form).
* ``adam``: m ← β₁·m + (1−β₁)·g, v ← β₂·v + (1−β₂)·g², θ ← θ − η_t·m̂/(√v̂ + ε) with
  m̂ = m/(1−β₁ᵗ⁺¹), v̂ = v/(1−β₂ᵗ⁺¹) (Kingma & Ba, 2015; as ``optax.adam``).
* ``adamw``: Adam with decoupled weight decay, θ ← θ − η_t·(m̂/(√v̂ + ε) + λ·θ)
  (Loshchilov & Hutter, 2019; as ``optax.adamw`` and PyTorch's ``AdamW``, whose decay
  is scaled by the whole scheduled rate η_t, not by the schedule s(t) alone as in the
  paper).
* ``manual_sgd``: ``sgd``'s heavy-ball update written out by hand
  (``backprop.ManualSGD``) on the hand-written gradients, with η and μ as constants
  of the program; no weight decay, clipping or Nesterov.

Weight decay λ (``--weight_decay``) is *decoupled* for ``adamw`` (above) and *L2 in
the gradient* for ``sgd`` and ``adam``: g ← g + λ·θ before momentum or Adam's
moments, the gradient of (λ/2)·‖θ‖² added to the loss (as PyTorch's ``SGD`` and
``Adam`` ``weight_decay``; ``optax.add_decayed_weights`` first in the chain). For
SGD the two are the same; under Adam, L2's decay is divided by √v̂ like the
gradient, so weights with large gradients decay less, which is why AdamW decouples
it. Only kernels (weight matrices) decay: biases and BatchNorm's scale γ and shift β
do not (:func:`decays`, the common practice: decaying γ shrinks the normalized
activations, and biases hold no capacity worth penalizing).

Clipping (``--grad_clip_norm`` c) comes first: g ← g·min(1, c/‖g‖₂), ‖g‖₂ the
global norm over all parameters (Pascanu et al., 2013; ``optax.clip_by_global_norm``,
PyTorch's ``clip_grad_norm_`` before ``step()``), then the L2 decay.

Every hyperparameter (η, μ, λ, c, β₁, β₂, ε) lives in the optimizer state
(``optax.inject_hyperparams``), so runs that differ only in their values share one
compiled step and can train together (``--vectorize``). Whether μ, λ or c is 0 is
structure: 0 leaves its transform (and its state) out of the chain
(``ZERO_MEANS_OFF``), so the default run, with λ = c = 0, makes exactly the updates
of plain ``optax.sgd``.
"""

import dataclasses
import math
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
    hyperparameters_in_state: whether its hyperparameters are state values (shared
      compilation) rather than constants of the program.
    reads: the Config knobs (of ``KNOBS``) it uses; the others must keep their
      defaults (``validate``).
  """
  make: Callable[..., optax.GradientTransformation]
  gradients: str
  hyperparameters_in_state: bool
  reads: tuple[str, ...]


KNOBS = ('lr', 'momentum', 'nesterov', 'weight_decay', 'grad_clip_norm', 'adam_b1',
         'adam_b2', 'adam_eps')
"""The Config fields that configure an optimizer."""

HYPERPARAMETERS = tuple(name for name in KNOBS if name != 'nesterov')
"""The numeric ones: values in the optimizer state (``inject_hyperparams``)."""

ZERO_MEANS_OFF = {'momentum': 0.9, 'weight_decay': 1e-4, 'grad_clip_norm': 1.0}
"""Hyperparameters whose 0 leaves their transform out of the chain (another state,
another program: structure), with the nonzero value ``train.canonical_config`` puts
in their place when they are on."""


def decays(path: tuple) -> bool:
  """Whether the parameter at a pytree ``path`` is weight-decayed: kernels only.

  The MLP's kernels are ``dense/i/kernel`` and ``output/kernel``; biases
  (``…/bias``) and BatchNorm's scale and shift (``norms/i/scale``, ``norms/i/bias``)
  are not decayed.
  """
  return any(getattr(key, 'key', None) == 'kernel' for key in path)


def weight_decay_mask(params) -> Any:
  """``params``' tree with a boolean per leaf, True where it decays (:func:`decays`):
  the ``mask`` of ``optax.add_decayed_weights``."""
  return jax.tree_util.tree_map_with_path(lambda path, _: decays(path), params)


def _clip_and_l2(grad_clip_norm, weight_decay, mask) -> list[optax.GradientTransformation]:
  """Clipping then L2 decay (g ← g + λ·θ), each only when on (not None)."""
  chain = []
  if grad_clip_norm is not None:
    chain.append(optax.clip_by_global_norm(grad_clip_norm))
  if weight_decay is not None:
    chain.append(optax.add_decayed_weights(weight_decay, mask))
  return chain


def _descend(learning_rate, shape: schedules.Schedule) -> optax.GradientTransformation:
  """u ← −η·s(t)·u (negation is exact: the same as −(η·s(t))·u)."""
  return optax.scale_by_schedule(lambda count: -learning_rate * shape(count))


def scheduled_sgd(learning_rate: float, momentum: float | None = None,
                  weight_decay: float | None = None, grad_clip_norm: float | None = None,
                  *, shape: schedules.Schedule, nesterov: bool = False,
                  mask: Callable | None = None) -> optax.GradientTransformation:
  """SGD with η_t = η · s(t): ``shape`` s is the schedule with peak 1.

  The same updates as ``optax.sgd(η·s, momentum, nesterov)`` (bit for bit where
  s(t)·η rounds as η·s(t) does: constant, cosine and exponential schedules), after
  ``optax.clip_by_global_norm(grad_clip_norm)`` and the L2 decay
  ``optax.add_decayed_weights(weight_decay, mask)`` when those are given (None: left
  out). Under ``optax.inject_hyperparams`` the numbers live in the optimizer state,
  so they are arguments of the compiled step rather than constants folded into it.
  """
  trace = (optax.trace(decay=momentum, nesterov=nesterov) if momentum is not None
           else optax.identity())
  return optax.chain(*_clip_and_l2(grad_clip_norm, weight_decay, mask), trace,
                     _descend(learning_rate, shape))


def scheduled_adam(learning_rate: float, b1: float, b2: float, eps: float,
                   weight_decay: float | None = None, grad_clip_norm: float | None = None,
                   *, shape: schedules.Schedule, decoupled: bool,
                   mask: Callable | None = None) -> optax.GradientTransformation:
  """Adam with η_t = η · s(t), its weight decay L2 (``decoupled=False``: as ``adam``
  after ``add_decayed_weights``) or decoupled (as ``optax.adamw``), after
  ``clip_by_global_norm(grad_clip_norm)``; None leaves a transform out."""
  decoupled_decay = ([optax.add_decayed_weights(weight_decay, mask)]
                     if decoupled and weight_decay is not None else [])
  return optax.chain(*_clip_and_l2(grad_clip_norm, None if decoupled else weight_decay,
                                   mask),
                     optax.scale_by_adam(b1=b1, b2=b2, eps=eps), *decoupled_decay,
                     _descend(learning_rate, shape))


def _on(value: float) -> float | None:
  """None for 0 (the transform is left out), the value otherwise."""
  return value or None


def _sgd(config, shape) -> optax.GradientTransformation:
  return optax.inject_hyperparams(scheduled_sgd, static_args=('shape', 'mask'))(
      learning_rate=config.lr, momentum=_on(config.momentum),
      weight_decay=_on(config.weight_decay), grad_clip_norm=_on(config.grad_clip_norm),
      shape=shape, nesterov=config.nesterov, mask=weight_decay_mask)


def _adam(config, shape, *, decoupled: bool) -> optax.GradientTransformation:
  return optax.inject_hyperparams(scheduled_adam, static_args=('shape', 'mask'))(
      learning_rate=config.lr, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
      weight_decay=_on(config.weight_decay), grad_clip_norm=_on(config.grad_clip_norm),
      shape=shape, decoupled=decoupled, mask=weight_decay_mask)


def _manual_sgd(config, shape) -> optax.GradientTransformation:
  return backprop.ManualSGD(learning_rate_schedule(config.lr, shape),
                            momentum=config.momentum)


_ADAM_KNOBS = ('lr', 'adam_b1', 'adam_b2', 'adam_eps', 'weight_decay', 'grad_clip_norm')

OPTIMIZERS: dict[str, Optimizer] = {
    'sgd': Optimizer(_sgd, gradients='autodiff', hyperparameters_in_state=True,
                     reads=('lr', 'momentum', 'nesterov', 'weight_decay',
                            'grad_clip_norm')),
    'adam': Optimizer(lambda config, shape: _adam(config, shape, decoupled=False),
                      gradients='autodiff', hyperparameters_in_state=True,
                      reads=_ADAM_KNOBS),
    'adamw': Optimizer(lambda config, shape: _adam(config, shape, decoupled=True),
                       gradients='autodiff', hyperparameters_in_state=True,
                       reads=_ADAM_KNOBS),
    'manual_sgd': Optimizer(_manual_sgd, gradients='by_hand',
                            hyperparameters_in_state=False, reads=('lr', 'momentum')),
}


def get_optimizer(name: str) -> Optimizer:
  """Returns the registry entry ``name``; raises ValueError listing the valid names."""
  try:
    return OPTIMIZERS[name]
  except KeyError:
    raise ValueError(f'Unknown optimizer {name!r}; valid: {sorted(OPTIMIZERS)}') from None


def validate(config) -> None:
  """Raises ValueError naming an invalid optimizer setting and what would be valid.

  A knob the optimizer does not read (``Optimizer.reads``) must keep its default:
  ``--adam_b2=0.99`` with ``sgd``, or ``--momentum=0.5`` with ``adam`` (whose
  momentum is ``adam_b1``), is refused rather than silently ignored; at its default
  it is ignored (so a sweep over optimizers needs no per-optimizer flags).
  """
  entry = get_optimizer(config.optimizer)
  if not 0 <= config.momentum < 1:
    raise ValueError(f'momentum={config.momentum} must be in [0, 1)')
  for name in ('weight_decay', 'grad_clip_norm'):
    value = getattr(config, name)
    if not (math.isfinite(value) and value >= 0):
      raise ValueError(f'{name}={value} must be finite and >= 0 (0: off)')
  for name in ('adam_b1', 'adam_b2'):
    if not 0 <= getattr(config, name) < 1:
      raise ValueError(f'{name}={getattr(config, name)} must be in [0, 1)')
  if not (math.isfinite(config.adam_eps) and config.adam_eps > 0):
    raise ValueError(f'adam_eps={config.adam_eps} must be finite and > 0')
  defaults = {f.name: f.default for f in dataclasses.fields(config)}
  for name in KNOBS:
    value = getattr(config, name)
    if name not in entry.reads and value != defaults[name]:
      users = sorted(k for k, v in OPTIMIZERS.items() if name in v.reads)
      raise ValueError(f'{name}={value} does not apply to optimizer='
                       f'{config.optimizer!r} (it reads {list(entry.reads)}); {name} is '
                       f'used by {users}: leave it at its default {defaults[name]}')
  if config.nesterov and not config.momentum:
    raise ValueError(f'nesterov=True needs momentum > 0 (got momentum={config.momentum})')


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
