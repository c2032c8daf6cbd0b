"""Backpropagation by hand for the MLP, and gradient descent by hand.

The forward pass keeps what the backward pass needs (a cache); the backward pass applies
the chain rule layer by layer, from the loss back to the first kernel (Rumelhart, Hinton
& Williams, 1986). Everything works on the parameters of :class:`fundamentals.models.MLP`
as the pure dict ``nnx.to_pure_dict(nnx.state(model, nnx.Param))``::

  {'dense': {i: {'kernel'[, 'bias']}}, 'norms': {i: {'scale', 'bias'}},
   'output': {'kernel', 'bias'}}

so hand and automatic gradients compare leaf by leaf. Rows are examples (B of them),
kernels are ``[fan_in, fan_out]`` (Flax layout), and per hidden layer i, with h₋₁ = x::

  u_i = h_{i−1}·W_i [+ b_i]            dense (a bias only without BatchNorm)
  z_i = γ_i·(u_i − μ_B)/σ_B + β_i      BatchNorm, training mode (else z_i = u_i)
  h_i = f(z_i)                         activation
  logits = h_last·W + b;   L = −(1/B)·Σ_b log softmax(logits_b)[y_b]

Gradient descent by hand (:class:`ManualSGD`) updates the same parameters with these
gradients and no optax; ``--optimizer=manual_sgd`` trains with it. The checks of all
of it against autodiff and finite differences are ``fundamentals.gradient_check``.
"""

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from fundamentals import activations
from fundamentals import batchnorm as batchnorm_lib

Params = dict[str, Any]


# Forward pass.


def has_batchnorm(params: Params) -> bool:
  """Whether the parameters are those of a BN-MLP (a ``norms`` entry per hidden layer)."""
  return bool(params.get('norms'))


def _tap(value: jax.Array, taps: dict | None, name: str) -> jax.Array:
  return value if taps is None else value + taps[name]


def batchnorm_forward(u: jax.Array, scale: jax.Array, bias: jax.Array, *,
                      epsilon: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """BatchNorm in training mode: z = γ·x̂ + β, x̂ = (u − μ_B)/√(σ²_B + ε).

  μ_B and σ²_B are the mean and biased variance (÷B) over the batch, per feature
  (Ioffe & Szegedy, 2015, Algorithm 1), computed in two passes by
  ``batchnorm.batch_statistics``: σ²_B = mean((u − μ_B)²), which keeps its digits
  when |μ_B| ≫ σ_B (the one-pass mean(u²) − μ_B² that Flax uses by default loses
  them to cancellation).

  Returns:
    ``z`` and the cache: ``mean``, ``var`` (for the running averages), ``inv_std``
    = 1/√(σ²_B + ε) and ``normalized`` = x̂ (for the backward pass).
  """
  mean, var = batchnorm_lib.batch_statistics(u)
  inv_std = jax.lax.rsqrt(var + epsilon)
  centered = u - mean
  z = centered * (inv_std * scale) + bias
  return z, {'mean': mean, 'var': var, 'inv_std': inv_std,
             'normalized': centered * inv_std}


def softmax_cross_entropy(logits: jax.Array,
                          labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """L = −(1/B)·Σ_b log p_b,y_b with log p = z − max z − log Σ_k exp(z_k − max z).

  Returns:
    The loss in nats and the log-probabilities ``[B, K]`` (for the backward pass).
  """
  shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
  log_probs = shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))
  picked = jnp.take_along_axis(log_probs, labels[:, None], axis=-1)
  return -jnp.mean(picked), log_probs


def forward(params: Params, x: jax.Array, *, activation: str = 'relu',
            epsilon: float = 1e-5, taps: dict | None = None) -> tuple[jax.Array, dict]:
  """The MLP's forward pass in training mode, keeping what :func:`backward` needs.

  Args:
    params: the MLP's parameters as a pure dict (see the module docstring).
    x: inputs ``[B, fan_in]``.
    activation: name in ``activations.ACTIVATIONS``.
    epsilon: ε of BatchNorm (ignored without it).
    taps: zeros shaped like :func:`intermediates`, added to each intermediate, so
      that ``jax.grad`` with respect to them gives ∂L/∂(intermediate) by autodiff.

  Returns:
    ``(logits, cache)``; ``cache['layers'][i]`` holds the layer's ``input``,
    ``preactivation`` z, ``activation`` h and, with BatchNorm, ``dense`` u and the
    statistics of :func:`batchnorm_forward`.
  """
  f = activations.get_activation(activation)
  batchnorm = has_batchnorm(params)
  layers, h = [], x
  for i in range(len(params['dense'])):
    dense = params['dense'][i]
    layer_taps = None if taps is None else taps['layers'][i]
    layer = {'input': h}
    u = h @ dense['kernel']
    if 'bias' in dense:
      u = u + dense['bias']
    if batchnorm:
      u = _tap(u, layer_taps, 'dense')
      norm = params['norms'][i]
      z, stats = batchnorm_forward(u, norm['scale'], norm['bias'], epsilon=epsilon)
      layer.update(dense=u, **stats)
    else:
      z = u
    z = _tap(z, layer_taps, 'preactivation')
    h = _tap(f(z), layer_taps, 'activation')
    layer.update(preactivation=z, activation=h)
    layers.append(layer)
  logits = h @ params['output']['kernel'] + params['output']['bias']
  logits = _tap(logits, taps, 'logits')
  return logits, {'input': x, 'layers': layers, 'logits': logits}


def intermediates(cache: dict) -> dict:
  """The intermediates whose gradients :func:`backward` reports, from a forward cache."""
  names = ('dense', 'preactivation', 'activation')
  return {'layers': [{k: layer[k] for k in names if k in layer}
                     for layer in cache['layers']],
          'logits': cache['logits']}


# Backward pass: one small function per layer type, then the chain.


def softmax_cross_entropy_backward(log_probs: jax.Array,
                                   labels: jax.Array) -> jax.Array:
  """∂L/∂logits = (softmax(logits) − onehot(y))/B for the batch-mean cross-entropy."""
  num_examples, num_classes = log_probs.shape
  return (jnp.exp(log_probs) - jax.nn.one_hot(labels, num_classes,
                                              dtype=log_probs.dtype)) / num_examples


def dense_backward(dy: jax.Array, x: jax.Array, kernel: jax.Array, *,
                   bias: bool) -> tuple[dict[str, jax.Array], jax.Array]:
  """For y = x·W [+ b]: ∂L/∂W = xᵀ·dy, ∂L/∂b = Σ_b dy, ∂L/∂x = dy·Wᵀ.

  Returns:
    The parameter gradients (``kernel`` and, if ``bias``, ``bias``) and ∂L/∂x.
  """
  grads = {'kernel': x.T @ dy}
  if bias:
    grads['bias'] = jnp.sum(dy, axis=0)
  return grads, dy @ kernel.T


def activation_backward(dh: jax.Array, z: jax.Array, activation: str) -> jax.Array:
  """For h = f(z) elementwise: ∂L/∂z = ∂L/∂h ⊙ f′(z), f′ in closed form.

  f′ is ``activations.get_derivative(activation)`` (ReLU′(0) = 0, as ``jax.grad``).
  """
  return dh * activations.get_derivative(activation)(z)


def batchnorm_backward(dz: jax.Array, normalized: jax.Array, inv_std: jax.Array,
                       scale: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
  """BatchNorm's backward pass in training mode, in closed form.

  With z = γ·x̂ + β and x̂ = (u − μ_B)/σ, σ = √(σ²_B + ε), per feature over B examples:

    ∂L/∂γ = Σ_b dz ⊙ x̂,   ∂L/∂β = Σ_b dz,
    ∂L/∂u = (γ/σ)/B · (B·dz − Σ_b dz − x̂ ⊙ Σ_b(dz ⊙ x̂)).

  The last line is Ioffe & Szegedy's (2015, Sec. 3) chain through μ_B and σ²_B
  collapsed: ∂x̂/∂u carries −1/B (through μ_B) and −x̂·x̂ᵀ/B (through σ²_B), so the
  gradient is dz, projected off the batch mean and off x̂, scaled by γ/σ.

  Args:
    dz: ∂L/∂z ``[B, n]``.
    normalized: x̂ from the forward pass.
    inv_std: 1/σ from the forward pass.
    scale: γ.

  Returns:
    ``{'scale': ∂L/∂γ, 'bias': ∂L/∂β}`` and ∂L/∂u.
  """
  num_examples = dz.shape[0]
  dbias = jnp.sum(dz, axis=0)
  dscale = jnp.sum(dz * normalized, axis=0)
  du = (scale * inv_std / num_examples) * (
      num_examples * dz - dbias - normalized * dscale)
  return {'scale': dscale, 'bias': dbias}, du


def backward(params: Params, cache: dict, log_probs: jax.Array, labels: jax.Array, *,
             activation: str = 'relu') -> tuple[Params, dict]:
  """The chain rule through the MLP, from the loss to the first kernel.

  Args:
    params: the parameters :func:`forward` ran with.
    cache: :func:`forward`'s cache.
    log_probs, labels: from :func:`softmax_cross_entropy` of the logits.
    activation: the activation :func:`forward` ran with.

  Returns:
    ``(grads, intermediate_grads)``: ∂L/∂θ shaped like ``params``, and ∂L/∂(each
    intermediate) shaped like :func:`intermediates`.
  """
  dlogits = softmax_cross_entropy_backward(log_probs, labels)
  layers = cache['layers']
  output_grads, dh = dense_backward(dlogits, layers[-1]['activation'],
                                    params['output']['kernel'], bias=True)
  grads = {'dense': {}, 'output': output_grads}
  if has_batchnorm(params):
    grads['norms'] = {}
  layer_grads = [None] * len(layers)
  for i in reversed(range(len(layers))):
    layer = layers[i]
    dz = activation_backward(dh, layer['preactivation'], activation)
    layer_grads[i] = {'preactivation': dz, 'activation': dh}
    if has_batchnorm(params):
      grads['norms'][i], du = batchnorm_backward(
          dz, layer['normalized'], layer['inv_std'], params['norms'][i]['scale'])
      layer_grads[i]['dense'] = du
    else:
      du = dz
    kernel = params['dense'][i]['kernel']
    grads['dense'][i], dh = dense_backward(du, layer['input'], kernel,
                                           bias='bias' in params['dense'][i])
  return grads, {'layers': layer_grads, 'logits': dlogits}


def loss_and_grads(params: Params, x: jax.Array, labels: jax.Array, *,
                   activation: str = 'relu',
                   epsilon: float = 1e-5) -> tuple[jax.Array, Params, dict]:
  """Forward and backward by hand: the counterpart of ``jax.value_and_grad``.

  Returns:
    ``(loss, grads, aux)`` with ``aux`` holding ``logits``, the forward ``cache``
    and ``intermediate_grads``.
  """
  logits, cache = forward(params, x, activation=activation, epsilon=epsilon)
  loss, log_probs = softmax_cross_entropy(logits, labels)
  grads, intermediate_grads = backward(params, cache, log_probs, labels,
                                       activation=activation)
  return loss, grads, {'logits': logits, 'cache': cache,
                       'intermediate_grads': intermediate_grads}


def update_batch_stats(batch_stats: Params, cache: dict, *, momentum: float,
                       unbiased_running_var: bool = False) -> Params:
  """BatchNorm's running averages after one training step, by Flax's rule.

  μ ← α·μ + (1−α)·μ_B and σ² ← α·σ² + (1−α)·σ²_B, with σ²_B the *biased* batch
  variance (÷B) as Flax uses; ``unbiased_running_var`` averages B/(B−1)·σ²_B
  instead, as PyTorch (and ``batchnorm.BatchNorm`` on request) does.

  Args:
    batch_stats: ``{'norms': {i: {'mean', 'var'}}}``, ``nnx.to_pure_dict`` of the
      model's ``nnx.BatchStat`` state.
    cache: :func:`forward`'s cache.
    momentum: α (Flax's ``momentum``, ``Config.bn_momentum``).
    unbiased_running_var: whether to apply Bessel's correction B/(B−1).
  """
  if not batch_stats.get('norms'):
    return batch_stats
  count = cache['input'].shape[0]
  new_stats = {}
  for i, stats in batch_stats['norms'].items():
    layer = cache['layers'][i]
    var = layer['var'] * (count / (count - 1)) if unbiased_running_var else layer['var']
    new_stats[i] = {'mean': momentum * stats['mean'] + (1 - momentum) * layer['mean'],
                    'var': momentum * stats['var'] + (1 - momentum) * var}
  return {'norms': new_stats}


# The Flax model as the user holds it.


def hyperparameters(model: nnx.Module) -> dict[str, Any]:
  """The settings the hand-written passes need, read from the model itself."""
  norm = model.norms[0] if model.norms else None
  return {'activation': model.activation_name,
          'epsilon': norm.epsilon if norm is not None else 1e-5,
          'momentum': norm.momentum if norm is not None else 0.0,
          'unbiased_running_var': getattr(norm, 'unbiased_running_var', False)}


def as_state(template: nnx.State, values: Params) -> nnx.State:
  """``values`` (a pure dict) in a fresh ``nnx.State`` structured like ``template``."""
  state = jax.tree.map(lambda leaf: leaf, template)
  nnx.replace_by_pure_dict(state, values)
  return state


def value_and_grad_by_hand(model: nnx.Module, x: jax.Array, labels: jax.Array
                          ) -> tuple[jax.Array, jax.Array, nnx.State, nnx.State]:
  """One training-mode step's loss and gradients by hand, on the model's own state.

  Pure in the model's arrays (usable under ``jax.jit``); the model is not modified.

  Returns:
    ``(loss, logits, grads, batch_stats)``: ``grads`` is an ``nnx.State`` structured
    like ``nnx.state(model, nnx.Param)`` (as ``jax.grad`` gives it); ``batch_stats``
    holds the updated running averages, as Flax's training-mode call leaves them.
  """
  hyper = hyperparameters(model)
  param_state = nnx.state(model, nnx.Param)
  stats_state = nnx.state(model, nnx.BatchStat)
  loss, grads, aux = loss_and_grads(nnx.to_pure_dict(param_state), x, labels,
                                    activation=hyper['activation'],
                                    epsilon=hyper['epsilon'])
  new_stats = update_batch_stats(
      nnx.to_pure_dict(stats_state), aux['cache'], momentum=hyper['momentum'],
      unbiased_running_var=hyper['unbiased_running_var'])
  return (loss, aux['logits'], as_state(param_state, grads),
          as_state(stats_state, new_stats))


# Gradient descent by hand.


class ManualSGDState(NamedTuple):
  """The step count t (for η_t) and the velocity v (``()`` without momentum)."""
  count: jax.Array
  velocity: Any


@dataclasses.dataclass(frozen=True)
class ManualSGD:
  """SGD written out: v ← g + μ·v, then θ ← θ − η_t·v; with μ = 0, θ ← θ − η_t·g.

  Heavy-ball momentum (Polyak, 1964) in the form of Sutskever et al. (2013), PyTorch
  and ``optax.sgd`` (no dampening, no Nesterov), with η_t = ``schedule(t)`` at the
  0-based step t, so that it reproduces ``optax.sgd(schedule, momentum)`` step for
  step. It follows optax's protocol (``init``, ``update`` returning the updates
  −η_t·v that ``optax.apply_updates`` adds), so a train step applies it as any
  optimizer; no optax inside.

  Attributes:
    schedule: learning rate η_t as a function of the step.
    momentum: μ in [0, 1); 0 keeps no velocity.
  """
  schedule: Callable[[jax.Array], jax.Array]
  momentum: float = 0.0

  def __post_init__(self):
    if not 0 <= self.momentum < 1:
      raise ValueError(f'momentum={self.momentum} must be in [0, 1)')

  def init(self, params) -> ManualSGDState:
    """t = 0 and v = 0 (``()`` without momentum)."""
    velocity = jax.tree.map(jnp.zeros_like, params) if self.momentum else ()
    return ManualSGDState(jnp.zeros((), jnp.int32), velocity)

  def update(self, grads, state: ManualSGDState, params=None):
    """Returns ``(updates, state)``: updates −η_t·v (or −η_t·g), t advanced."""
    del params  # SGD's update does not depend on the parameters.
    lr = self.schedule(state.count)
    velocity = state.velocity
    if self.momentum:
      velocity = jax.tree.map(lambda g, v: g + self.momentum * v, grads, velocity)
      direction = velocity
    else:
      direction = grads
    # θ + (−η·d) is θ − η·d to the last bit: negation is exact.
    updates = jax.tree.map(lambda d: -(jnp.asarray(lr, d.dtype) * d), direction)
    return updates, ManualSGDState(state.count + 1, velocity)
