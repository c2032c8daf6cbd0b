"""Backpropagation by hand for the MLP, checked against autodiff and finite differences.

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
gradients and no optax; ``--optimizer=manual_sgd`` trains with it.
"""

import contextlib
import dataclasses
from typing import Any, Callable

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fundamentals import activations
from fundamentals import losses
from fundamentals import models

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
  (Ioffe & Szegedy, 2015, Algorithm 1). σ²_B is computed as Flax does,
  max(0, mean(u²) − μ_B²), so the forward pass is Flax's to the last bit.

  Returns:
    ``z`` and the cache: ``mean``, ``var`` (for the running averages), ``inv_std``
    = 1/√(σ²_B + ε) and ``normalized`` = x̂ (for the backward pass).
  """
  mean = jnp.mean(u, axis=0)
  var = jnp.maximum(0.0, jnp.mean(jnp.square(u), axis=0) - jnp.square(mean))
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


def _hyperparameters(model: models.MLP) -> dict[str, Any]:
  """The settings the hand-written passes need, read from the model itself."""
  norm = model.norms[0] if model.norms else None
  return {'activation': model.activation_name,
          'epsilon': norm.epsilon if norm is not None else 1e-5,
          'momentum': norm.momentum if norm is not None else 0.0,
          'unbiased_running_var': getattr(norm, 'unbiased_running_var', False)}


def _as_state(template: nnx.State, values: Params) -> nnx.State:
  """``values`` (a pure dict) in a fresh ``nnx.State`` structured like ``template``."""
  state = jax.tree.map(lambda leaf: leaf, template)
  nnx.replace_by_pure_dict(state, values)
  return state


def value_and_grad_by_hand(model: models.MLP, x: jax.Array, labels: jax.Array
                          ) -> tuple[jax.Array, jax.Array, nnx.State, nnx.State]:
  """One training-mode step's loss and gradients by hand, on the model's own state.

  Pure in the model's arrays (usable under ``jax.jit``); the model is not modified.

  Returns:
    ``(loss, logits, grads, batch_stats)``: ``grads`` is an ``nnx.State`` structured
    like ``nnx.state(model, nnx.Param)`` (as ``jax.grad`` gives it); ``batch_stats``
    holds the updated running averages, as Flax's training-mode call leaves them.
  """
  hyper = _hyperparameters(model)
  param_state = nnx.state(model, nnx.Param)
  stats_state = nnx.state(model, nnx.BatchStat)
  loss, grads, aux = loss_and_grads(nnx.to_pure_dict(param_state), x, labels,
                                    activation=hyper['activation'],
                                    epsilon=hyper['epsilon'])
  new_stats = update_batch_stats(
      nnx.to_pure_dict(stats_state), aux['cache'], momentum=hyper['momentum'],
      unbiased_running_var=hyper['unbiased_running_var'])
  return (loss, aux['logits'], _as_state(param_state, grads),
          _as_state(stats_state, new_stats))


# Gradient descent by hand.


@dataclasses.dataclass(frozen=True)
class ManualSGD:
  """SGD written out: v ← g + μ·v, then p ← p − η_t·v; with μ = 0, p ← p − η_t·g.

  Heavy-ball momentum (Polyak, 1964) in the form of Sutskever et al. (2013), PyTorch
  and ``optax.sgd`` (no dampening, no Nesterov), with η_t = ``schedule(t)`` at the
  0-based step t, so that it reproduces ``optax.sgd(schedule, momentum)`` step for
  step. No optax inside.

  Attributes:
    schedule: learning rate η_t as a function of the step.
    momentum: μ in [0, 1); 0 keeps no velocity.
  """
  schedule: Callable[[jax.Array], jax.Array]
  momentum: float = 0.0

  def __post_init__(self):
    if not 0 <= self.momentum < 1:
      raise ValueError(f'momentum={self.momentum} must be in [0, 1)')

  def init(self, params):
    """The optimizer state: the velocity v = 0 (``()`` without momentum)."""
    if not self.momentum:
      return ()
    return jax.tree.map(jnp.zeros_like, params)

  def step(self, params, grads, velocity, count: jax.Array):
    """Returns ``(params, velocity)`` after one update at 0-based step ``count``."""
    lr = self.schedule(count)
    if self.momentum:
      velocity = jax.tree.map(lambda g, v: g + self.momentum * v, grads, velocity)
      direction = velocity
    else:
      direction = grads
    params = jax.tree.map(lambda p, d: p - jnp.asarray(lr, d.dtype) * d,
                          params, direction)
    return params, velocity


# Checking: hand vs autodiff vs finite differences.

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
    hyper = _hyperparameters(model)
    graph, params, stats = _train_mode_split(model, dtype)
    x = jnp.asarray(x, dtype)
    (ref_loss, (ref_logits, ref_stats)), ref_grads = jax.jit(
        jax.value_and_grad(_flax_loss, argnums=1, has_aux=True), static_argnums=0)(
            graph, params, stats, x, labels)

    pure_params = nnx.to_pure_dict(params)
    by_hand = jax.jit(loss_and_grads, static_argnames=('activation', 'epsilon'))
    loss, grads, aux = by_hand(pure_params, x, labels, activation=hyper['activation'],
                               epsilon=hyper['epsilon'])
    new_stats = update_batch_stats(
        nnx.to_pure_dict(stats), aux['cache'], momentum=hyper['momentum'],
        unbiased_running_var=hyper['unbiased_running_var'])

    def loss_of_taps(taps, params, x, labels):
      logits, _ = forward(params, x, activation=hyper['activation'],
                          epsilon=hyper['epsilon'], taps=taps)
      return softmax_cross_entropy(logits, labels)[0]

    zeros = jax.tree.map(jnp.zeros_like, intermediates(aux['cache']))
    tap_grads = jax.jit(jax.grad(loss_of_taps))(zeros, pure_params, x, labels)

    return [
        *compare({'loss': loss, 'logits': aux['logits'], 'running': new_stats},
                 {'loss': ref_loss, 'logits': ref_logits,
                  'running': nnx.to_pure_dict(ref_stats)}, kind='forward'),
        *compare(grads, nnx.to_pure_dict(ref_grads), kind='parameter'),
        *compare(aux['intermediate_grads'], tap_grads, kind='intermediate'),
    ]


def finite_differences(loss_fn: Callable[..., jax.Array], params: Params, *args,
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
    hyper = _hyperparameters(model)
    graph, params, stats = _train_mode_split(model, jnp.float64)
    x = jnp.asarray(x, jnp.float64)
    pure_params = nnx.to_pure_dict(params)
    _, grads, _ = jax.jit(loss_and_grads, static_argnames=('activation', 'epsilon'))(
        pure_params, x, labels, activation=hyper['activation'],
        epsilon=hyper['epsilon'])

    def loss_fn(pure, stats, x, labels):
      return _flax_loss(graph, _as_state(params, pure), stats, x, labels)[0]

    estimates = finite_differences(loss_fn, pure_params, stats, x, labels, step=step,
                                   max_per_leaf=max_per_leaf, seed=seed)
    hand = _named_leaves(grads)
    return [
        row
        for name, (indices, estimate) in estimates.items()
        for row in compare({name: hand[name].ravel()[indices]}, {name: estimate},
                           kind='finite diff', rtol=rtol, atol=atol)
    ]
