"""Signal propagation at initialization: measured layer by layer, and predicted.

**Measured** (:func:`measure`): for an MLP and one batch, per hidden layer, the
statistics of ``diagnostics.layer_statistics`` (the mean and std of the
pre-activations z_l and activations h_l = φ(z_l), pooled over examples and units; the
saturated or dead fraction, ``activations.INACTIVE``; the std of ∂L/∂h_l) and the std
of ∂L/∂W_l, for the softmax cross-entropy L.

**Predicted** (:func:`predict`): the mean-field recursion for a wide, fully connected
net at init (Poole et al., 2016; Schoenholz et al., 2017), per input example x:

  q_1 = σ_w,1² · ‖x‖²/N_0 + σ_b²,
  q_l = σ_w,l² · E_{z~N(0, q_{l−1})}[φ(z)²] + σ_b²,     σ_w,l² = N_{l−1}·Var(W_l),

with every Gaussian expectation by quadrature (:func:`gaussian_expectation`: composite
Gauss–Legendre in z, because plain Gauss–Hermite, :func:`gauss_hermite_expectation`,
steps over tanh′'s peak once q is large); and backwards, the gradient variance is
multiplied by

  χ_l = N_l·Var(W_l) · E_{z~N(0, q_l)}[φ′(z)²]

from ∂L/∂h_l to ∂L/∂h_{l−1} (χ = σ_w²·E[φ′²] for a square layer). The prediction
holds for any initializer that draws i.i.d. entries with variance σ_w²/fan_in
(``initializers.weight_variance``), in the limit of large width; it assumes the
gradients independent of the forward weights (Schoenholz et al.'s assumption). With
BatchNorm after each Dense (γ = 1, β = 0 at init) every unit's pre-activation is
standardized over the batch, so the forward prediction is q_l = 1 for every layer;
there is no backward prediction.
"""

import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fundamentals import activations
from fundamentals import diagnostics
from fundamentals import initializers
from fundamentals import losses
from fundamentals import models

# Gauss–Hermite: an even number of nodes has none at z = 0, so the kinks of
# ReLU-like activations split the nodes symmetrically (E[ReLU′(z)²] = 1/2 exactly).
HERMITE_POINTS = 128
# Composite Gauss–Legendre: panel edges every half standard deviation out to ±12σ
# (beyond it lies 4e-33 of the mass), and every 0.5 in z out to ±20, where the
# registered activations have their structure (kinks, saturation); 16 nodes a panel.
_LEGENDRE_NODES, _LEGENDRE_WEIGHTS = np.polynomial.legendre.leggauss(16)
_EDGES_IN_STD = np.arange(-12.0, 12.25, 0.5)
_EDGES_IN_Z = np.arange(-20.0, 20.25, 0.5)



def _variances(q) -> np.ndarray:
  q = np.asarray(q, np.float64)
  if np.any(q < 0) or not np.all(np.isfinite(q)):
    raise ValueError(f'variances must be finite and >= 0, got {q}')
  return q


def _evaluate(f: Callable[[Any], Any], z: np.ndarray) -> np.ndarray:
  # float64 (JAX functions under enable_x64): large q neither overflows nor loses digits.
  with jax.enable_x64(True):
    return np.asarray(f(jnp.asarray(z)), np.float64)


def gauss_hermite_expectation(f: Callable[[Any], Any], q, *,
                              num_points: int = HERMITE_POINTS) -> np.ndarray:
  """E_{z~N(0, q)}[f(z)] by Gauss–Hermite quadrature.

  With the probabilists' Hermite nodes x_i and weights w_i (weight e^(−x²/2)),
  E[f(z)] ≈ Σ_i w_i f(√q·x_i)/√(2π), exact for polynomials of degree < 2n. Fast
  and spectrally accurate while f varies slowly on the node spacing, about
  √q·π/√(2n) near 0; it fails when √q is large and f has structure on the unit
  scale: for tanh′² at q = 512 (an N(0, 1)-initialized tanh net) the nodes step over
  the peak and the 128-node rule returns 1.2e-5 instead of 0.0235, and the kink of
  ReLU costs E[ReLU(z)] its spectral accuracy (0.4002 for 0.3989 at q = 1).
  :func:`gaussian_expectation` has neither failure.

  Args:
    f: an elementwise function (NumPy or JAX).
    q: variance(s) ≥ 0, any shape.
    num_points: number of nodes.

  Returns:
    Array of the shape of ``q``.
  """
  if num_points < 1:
    raise ValueError(f'{num_points=} must be positive')
  q = _variances(q)
  nodes, weights = np.polynomial.hermite_e.hermegauss(num_points)
  return _evaluate(f, np.sqrt(q)[..., None] * nodes) @ (
      weights / math.sqrt(2.0 * math.pi))


def gaussian_expectation(f: Callable[[Any], Any], q) -> np.ndarray:
  """E_{z~N(0, q)}[f(z)] = ∫ f(z) e^(−z²/2q)/√(2πq) dz, for every variance in ``q``.

  Gauss–Hermite (:func:`gauss_hermite_expectation`) in the scaled variable z/√q
  cannot resolve f's unit-scale structure once √q is large, so this integrates in z
  with composite Gauss–Legendre quadrature on panels that resolve both scales: edges
  every σ/2 out to ±12σ and every 0.5 out to |z| = 20 (clipped to ±12σ), z = 0
  always an edge, 16 nodes per panel. Kinks at 0 then fall on panel edges and each
  panel's integrand is smooth, so the rule agrees with Gauss–Hermite where that is
  accurate and with closed forms and Monte Carlo everywhere (tests), from q = 1e-6
  to q = 1e25.

  Args:
    f: an elementwise function (NumPy or JAX).
    q: variance(s) ≥ 0, any shape.

  Returns:
    Array of the shape of ``q``.
  """
  q = _variances(q)
  flat = q.reshape(-1)
  std = np.sqrt(flat)[:, None]
  edges = np.sort(np.concatenate(
      [std * _EDGES_IN_STD, np.clip(_EDGES_IN_Z, -12 * std, 12 * std)], axis=1), axis=1)
  half = 0.5 * np.diff(edges, axis=1)[..., None]
  z = 0.5 * (edges[:, 1:] + edges[:, :-1])[..., None] + half * _LEGENDRE_NODES
  variance = np.maximum(flat, np.finfo(np.float64).tiny)[:, None, None]
  density = np.exp(-0.5 * z ** 2 / variance) / np.sqrt(2.0 * math.pi * variance)
  result = np.sum(_evaluate(f, z) * density * half * _LEGENDRE_WEIGHTS, axis=(1, 2))
  # q = 0: every panel has zero width; the expectation is f(0).
  result = np.where(flat > 0, result, _evaluate(f, np.zeros(1))[0])
  return result.reshape(q.shape)


def saturated_probability(activation: str, q, *,
                          threshold: float = activations.SATURATION_THRESHOLD
                          ) -> np.ndarray:
  """P(z outside ``activations.saturation_bounds``) for z ~ N(0, q): Φ(lo/√q) + Φ(−hi/√q).

  Closed form; quadrature would converge slowly on the indicator's jumps.
  """
  # scipy.special takes 0.2 s to import: not with this module, which every run imports.
  from scipy import special  # pylint: disable=g-import-not-at-top
  lo, hi = activations.saturation_bounds(activation, threshold)
  std = np.sqrt(np.asarray(q, np.float64))
  with np.errstate(divide='ignore', invalid='ignore'):
    p = special.ndtr(lo / std) + special.ndtr(-hi / std)
  return np.where(std > 0, p, 0.0)


def predict(activation: str, *, weight_variances: Sequence[float],
            widths: Sequence[int], input_second_moment, bias_variance: float = 0.0,
            batchnorm: bool = False,
            threshold: float = activations.SATURATION_THRESHOLD,
            last_activation_grad_std: float | None = None) -> list[dict[str, float]]:
  """The mean-field prediction of each hidden layer's statistics (module docstring).

  Args:
    activation: name in ``activations.ACTIVATIONS``.
    weight_variances: Var(W_l) of each hidden kernel, l = 1..L.
    widths: N_0 (input features), N_1, ..., N_L.
    input_second_moment: ‖x‖²/N_0, one value per example (or one for all).
    bias_variance: σ_b² (0 for zero-initialized biases).
    batchnorm: whether each Dense is followed by BatchNorm (then q_l = 1).
    threshold: θ of saturation.
    last_activation_grad_std: the std of ∂L/∂h_L to anchor the backward
      prediction at (the last layer's gradient depends on the output layer and the
      loss, not on the recursion); None leaves the gradients out.

  Returns:
    Per hidden layer: ``sigma_w2`` = N_{l−1}·Var(W_l), ``q`` (mean over examples),
    ``preactivation_std``, ``activation_mean``, ``activation_std`` (pooled over
    examples and units), ``saturated_fraction`` (saturating activations only: the
    dead fraction has no mean-field prediction), ``chi`` and ``activation_grad_std``
    (NaN without an anchor or with BatchNorm).
  """
  phi = activations.get_activation(activation)
  d_phi = activations.get_derivative(activation)
  if len(widths) != len(weight_variances) + 1:
    raise ValueError(f'widths={list(widths)} must list N_0 and one width per layer '
                     f'of weight_variances={list(weight_variances)}')
  second_moment = np.atleast_1d(np.asarray(input_second_moment, np.float64))
  layers = []
  for l, variance in enumerate(weight_variances, start=1):
    sigma_w2 = widths[l - 1] * variance
    q = (np.ones_like(second_moment) if batchnorm
         else sigma_w2 * second_moment + bias_variance)
    mean = float(np.mean(gaussian_expectation(phi, q)))
    second_moment = gaussian_expectation(lambda z: phi(z) ** 2, q)
    layer = {
        'sigma_w2': sigma_w2,
        'q': float(np.mean(q)),
        'preactivation_std': math.sqrt(float(np.mean(q))),
        'activation_mean': mean,
        'activation_std': math.sqrt(max(float(np.mean(second_moment)) - mean ** 2, 0.0)),
        'chi': widths[l] * variance * float(np.mean(
            gaussian_expectation(lambda z: d_phi(z) ** 2, q))),
    }
    if activations.INACTIVE[activation] == 'saturated':
      layer['saturated_fraction'] = float(np.mean(saturated_probability(
          activation, q, threshold=threshold)))
    layers.append(layer)
  return anchor_gradients(layers, last_activation_grad_std, batchnorm=batchnorm)


def anchor_gradients(predicted: list[dict[str, float]],
                     last_activation_grad_std: float | None, *,
                     batchnorm: bool = False) -> list[dict[str, float]]:
  """Sets each layer's predicted std of ∂L/∂h_l from the last layer's, going back.

  std(∂L/∂h_{l−1}) = √χ_l · std(∂L/∂h_l). NaN with BatchNorm or without an anchor.
  """
  grad_std = (math.nan if batchnorm or last_activation_grad_std is None
              else last_activation_grad_std)
  for row in reversed(predicted):
    row['activation_grad_std'] = grad_std
    grad_std *= math.sqrt(row['chi'])
  return predicted


def model_widths(model: models.MLP) -> list[int]:
  """N_0, N_1, ..., N_L of the MLP's hidden Dense layers."""
  return [model.dense[0].kernel.shape[0], *(d.kernel.shape[1] for d in model.dense)]


def model_weight_variances(model: models.MLP, init: str | None = None) -> list[float]:
  """Var(W_l) of each hidden kernel: the formula of ``init``, or (None) the kernel's.

  The empirical mean square is what a data-dependent scheme (LSUV) leaves, and the
  best one can do for weights of unknown origin.
  """
  if init is None:
    return [float(jnp.mean(d.kernel[...] ** 2)) for d in model.dense]
  return [initializers.weight_variance(init, d.kernel.shape,
                                       activation=model.activation_name)
          for d in model.dense]


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=('threshold',))
def _statistics(graph, params, rest, x, labels, *, threshold):
  model = nnx.merge(graph, params, rest)
  probes = [jnp.zeros((x.shape[0], d.kernel.shape[1]), x.dtype) for d in model.dense]

  def loss_fn(params, probes):
    # BatchNorm updates its running averages in training mode: fresh variables
    # (models.merge) keep that update inside this trace.
    logits, layers = models.merge(graph, params, rest).forward(x, perturb=probes)
    return losses.softmax_cross_entropy(logits, labels), layers

  (loss, layers), (param_grads, probe_grads) = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(params, probes)
  grads = nnx.merge(graph, param_grads, rest)
  rows = [{**diagnostics.layer_statistics(layer, probe_grad,
                                          activation_name=model.activation_name,
                                          threshold=threshold),
           'kernel_grad_std': jnp.std(dense_grad.kernel[...])}
          for layer, dense_grad, probe_grad in zip(layers, grads.dense, probe_grads)]
  return loss, rows


def measure(model: models.MLP, x: jax.Array, labels: jax.Array, *,
            threshold: float = activations.SATURATION_THRESHOLD
            ) -> list[dict[str, float]]:
  """Measures each hidden layer on one batch (in training mode, as step 1 sees it).

  Args:
    model: the MLP (not modified).
    x: inputs ``[batch, features]``.
    labels: integer labels ``[batch]`` for the softmax cross-entropy.
    threshold: θ of saturation.

  Returns:
    Per hidden layer, the floats of ``diagnostics.layer_statistics`` and
    ``kernel_grad_std``; the loss is in every row as ``loss``.
  """
  graph, params, rest = nnx.split(model, nnx.Param, ...)
  loss, rows = jax.device_get(_statistics(graph, params, rest, jnp.asarray(x),
                                          jnp.asarray(labels), threshold=threshold))
  return [{**{k: float(v) for k, v in row.items()}, 'loss': float(loss)}
          for row in rows]


def activations_per_layer(model: models.MLP, x: jax.Array) -> list[np.ndarray]:
  """The activations h_l ``[batch, N_l]`` of every hidden layer, as NumPy arrays."""
  graph, state = nnx.split(model)
  return jax.device_get(_activations(graph, state, jnp.asarray(x)))


@functools.partial(jax.jit, static_argnums=(0,))
def _activations(graph, state, x):
  model = nnx.merge(graph, jax.tree.map(lambda v: v, state))
  return [layer['activation'] for layer in model.forward(x)[1]]


@functools.partial(jax.jit, static_argnums=(0,))
def _preactivations(graph, state, kernels, x):
  model = nnx.merge(graph, jax.tree.map(lambda v: v, state))
  for dense, kernel in zip(model.dense, kernels):
    dense.kernel[...] = kernel
  return [layer['preactivation'] for layer in model.forward(x)[1]]


def apply_lsuv(model: models.MLP, x: jax.Array, **kwargs) -> list[dict[str, float]]:
  """Rescales the MLP's hidden kernels in place by ``initializers.lsuv`` on batch x.

  Build the model with ``init='orthogonal'`` (``initializers.DATA_DEPENDENT['lsuv']``)
  first. Each layer's output is its pre-activation (after BatchNorm, if any, which
  already has unit variance, so LSUV changes nothing there).

  Args:
    model: the MLP, modified in place.
    x: one batch of inputs.
    **kwargs: ``tolerance``, ``max_iterations``, ``target_variance`` of ``lsuv``.

  Returns:
    Per layer, ``{'iterations', 'variance'}``.
  """
  graph, state = nnx.split(model)
  x = jnp.asarray(x)
  kernels, info = initializers.lsuv(
      [d.kernel[...] for d in model.dense],
      lambda kernels, batch: _preactivations(graph, state, kernels, batch), x, **kwargs)
  for dense, kernel in zip(model.dense, kernels):
    dense.kernel[...] = kernel
  return info


# Nodes per axis of the 2D Gauss–Hermite rule (:func:`bivariate_expectation`).
BIVARIATE_POINTS = 128

# Depth scales of signal propagation (Schoenholz et al., 2017, "Deep Information
# Propagation", arXiv:1611.01232). A wide tanh-like net
# with weights W_ij ~ N(0, σ_w²/N) and biases b_i ~ N(0, σ_b²), both inputs of a
# pair at the variance fixed point q*.


@functools.cache
def second_derivative(activation: str) -> Callable[[Any], Any]:
  """φ″ of the activation ``name``, elementwise, by ``jax.grad`` of its φ′ (0 at and
  beside ReLU's kink: the variance map's derivative needs no delta there)."""
  d_phi = activations.get_derivative(activation)

  def d2_phi(z):
    z = jnp.asarray(z)
    return jax.vmap(jax.grad(d_phi))(z.reshape(-1)).reshape(z.shape)
  return d2_phi


def variance_map(activation: str, q, *, sigma_w2: float, sigma_b2: float) -> np.ndarray:
  """The length map q^l = σ_w² ∫Dz φ(√q^{l−1} z)² + σ_b², Dz the N(0, 1)
  measure, for every variance in ``q``."""
  phi = activations.get_activation(activation)
  return sigma_w2 * gaussian_expectation(lambda z: phi(z) ** 2, q) + sigma_b2


def variance_map_slope(activation: str, q, *, sigma_w2: float) -> np.ndarray:
  """∂q^l/∂q^{l−1} = σ_w² ∫Dz [φ′(√q z)² + φ(√q z) φ″(√q z)] (Stein's lemma on the length map):
  χ₁ + σ_w² ∫Dz φ″φ, the bracket of ξ_q's formula at q = q*."""
  phi, d_phi = activations.get_activation(activation), activations.get_derivative(activation)
  d2_phi = second_derivative(activation)
  return sigma_w2 * gaussian_expectation(
      lambda z: d_phi(z) ** 2 + phi(z) * d2_phi(z), q)


def fixed_point_variance(activation: str, *, sigma_w2: float, sigma_b2: float,
                         q0: float = 1.0, iterations: int = 50, tol: float = 1e-13,
                         max_newton: int = 200) -> float:
  """q*, the fixed point q* = σ_w² ∫Dz φ(√q* z)² + σ_b² that the length map reaches from ``q0``.

  ``iterations`` steps of the map bring q into the fixed point's basin; Newton's
  method on q ↦ map(q) − q (slope :func:`variance_map_slope`) then finishes it
  (linearly where the root is double: tanh at σ_b = 0, σ_w² = 1, q* = 0). For tanh
  with σ_b = 0, q* = 0 when σ_w² ≤ 1 and q* > 0 beyond.

  Raises:
    ValueError: when there is no finite fixed point (e.g. ReLU with σ_w² > 2, where q
      grows without bound).
  """
  q = float(q0)
  for _ in range(iterations):
    q = float(variance_map(activation, q, sigma_w2=sigma_w2, sigma_b2=sigma_b2))
    if not math.isfinite(q) or q > 1e30:
      raise ValueError(f'the variance map of {activation} at {sigma_w2=}, {sigma_b2=} '
                       'diverges: no finite fixed point q*')
  for _ in range(max_newton):
    gap = float(variance_map(activation, q, sigma_w2=sigma_w2, sigma_b2=sigma_b2)) - q
    slope = float(variance_map_slope(activation, q, sigma_w2=sigma_w2)) - 1.0
    step = -gap / slope if slope else 0.0
    new = q + step if q + step >= 0 else q / 2  # q* ≥ 0: halve rather than cross 0.
    if abs(new - q) <= tol * (1.0 + q):
      q = new
      break
    q = new
  gap = float(variance_map(activation, q, sigma_w2=sigma_w2, sigma_b2=sigma_b2)) - q
  if not abs(gap) <= 1e-8 * (1.0 + q):
    raise ValueError(f'the variance map of {activation} at {sigma_w2=}, {sigma_b2=} has '
                     f'no finite fixed point q* >= 0 (q = {q:.4g} moves by {gap:.3g})')
  return q


@functools.cache
def _hermite_rule(num_points: int) -> tuple[np.ndarray, np.ndarray]:
  """Probabilists' Gauss–Hermite nodes and weights normalized to the N(0, 1) measure."""
  nodes, weights = np.polynomial.hermite_e.hermegauss(num_points)
  return nodes, weights / math.sqrt(2.0 * math.pi)


def bivariate_expectation(f: Callable[[Any], Any], g: Callable[[Any], Any], q, c, *,
                          num_points: int = BIVARIATE_POINTS) -> np.ndarray:
  """E[f(u₁) g(u₂)] for u₁ = √q z₁, u₂ = √q (c z₁ + √(1 − c²) z₂), z₁, z₂ ~ N(0, 1):
  the pair (u₁, u₂) of variance q and correlation c of the correlation map.

  The product Gauss–Hermite rule: Σ_ij w_i w_j f(u₁(x_i)) g(u₂(x_i, x_j)) / 2π with
  ``num_points`` probabilists' nodes per axis, exact for polynomials of degree < 2n in
  each of z₁, z₂; accurate while the node spacing √q·π/√(2n) resolves f and g
  (:func:`gauss_hermite_expectation`). For tanh′·tanh′ with 128 nodes the error is
  6e-11 at q = 1.1, 5e-7 at q = 2.2 (q* of σ_w² = 4, σ_b² = 0.05), 2e-3 at q = 6.4.

  Args:
    f, g: elementwise functions (NumPy or JAX).
    q: variance ≥ 0 (scalar).
    c: correlation(s) in [−1, 1], any shape.
    num_points: nodes per axis.

  Returns:
    Array of the shape of ``c``.
  """
  if num_points < 1:
    raise ValueError(f'{num_points=} must be positive')
  q = float(_variances(q))
  c = np.asarray(c, np.float64)
  if np.any(np.abs(c) > 1) or not np.all(np.isfinite(c)):
    raise ValueError(f'correlations must lie in [-1, 1], got {c}')
  nodes, weights = _hermite_rule(num_points)
  cc = c[..., None, None]
  z1, z2 = nodes[:, None], nodes[None, :]
  u1 = np.broadcast_to(math.sqrt(q) * z1, cc.shape[:-2] + (num_points, 1))
  u2 = math.sqrt(q) * (cc * z1 + np.sqrt(1.0 - cc ** 2) * z2)
  values = _evaluate(f, u1) * _evaluate(g, u2)
  return np.einsum('...ij,i,j->...', values, weights, weights)


def correlation_map(activation: str, c, *, q: float, sigma_w2: float, sigma_b2: float,
                    num_points: int = BIVARIATE_POINTS) -> np.ndarray:
  """c^l = [σ_w² ∫Dz₁Dz₂ φ(u₁)φ(u₂) + σ_b²] / q* (the correlation map over the length map, q^{l−1} = q^l =
  q* = ``q``): the correlation of a pair's pre-activations one layer on."""
  phi = activations.get_activation(activation)
  return (sigma_w2 * bivariate_expectation(phi, phi, q, c, num_points=num_points)
          + sigma_b2) / q


def correlation_slope(activation: str, c, *, q: float, sigma_w2: float,
                      num_points: int = BIVARIATE_POINTS) -> np.ndarray:
  """χ_c = ∂c^l/∂c^{l−1} = σ_w² ∫Dz₁Dz₂ φ′(u₁)φ′(u₂) (Price's theorem on the correlation map); at
  c = 1 it is χ₁ = σ_w² ∫Dz φ′(√q* z)²."""
  d_phi = activations.get_derivative(activation)
  return sigma_w2 * bivariate_expectation(d_phi, d_phi, q, c, num_points=num_points)


def chi_1(activation: str, *, q: float, sigma_w2: float) -> float:
  """χ₁ = σ_w² ∫Dz φ′(√q* z)², by :func:`gaussian_expectation`: the slope of
  the correlation map at c = 1, and the factor by which backpropagated gradient
  variances grow per layer. χ₁ < 1: the ordered phase (c* = 1 stable, vanishing
  gradients); χ₁ > 1: chaotic (c* < 1, exploding gradients); χ₁ = 1: the edge of
  chaos."""
  d_phi = activations.get_derivative(activation)
  return float(sigma_w2 * gaussian_expectation(lambda z: d_phi(z) ** 2, q))


def fixed_point_correlation(activation: str, *, q: float, sigma_w2: float,
                            sigma_b2: float, num_points: int = BIVARIATE_POINTS, tol: float = 1e-12,
                            max_newton: int = 500) -> float:
  """c*, the stable fixed point of the correlation map (:func:`correlation_map`).

  Ordered phase (χ₁ ≤ 1): c* = 1, every pair of inputs converges. Chaotic (χ₁ > 1):
  c* < 1, the smallest root in [0, 1] of h(c) = map(c) − c. The map is a power series
  in c with non-negative coefficients (Hermite expansion of φ), so h is convex with
  h(0) ≥ 0 and h(1) = 0: Newton's method from c = 0 climbs to c* without overshooting.
  """
  if chi_1(activation, q=q, sigma_w2=sigma_w2) <= 1.0:
    return 1.0
  kwargs = dict(q=q, sigma_w2=sigma_w2, num_points=num_points)
  c = 0.0
  for _ in range(max_newton):
    gap = float(correlation_map(activation, c, sigma_b2=sigma_b2, **kwargs)) - c
    if gap <= tol:
      return c
    slope = float(correlation_slope(activation, c, **kwargs)) - 1.0
    if slope >= 0:  # Only at c* = 1 (h(1) = 0 is the root left): the critical line.
      return 1.0
    c = min(c - gap / slope, 1.0)
  return c


def depth_scale(rate: float) -> float:
  """ξ = −1/ln(rate), the depth over which a deviation decaying by ``rate`` per
  layer falls by e; ∞ for rate ≥ 1 (no decay: the critical line)."""
  if rate >= 1.0:
    return math.inf
  if rate <= 0.0:
    return 0.0
  return -1.0 / math.log(rate)


def depth_scales(activation: str, *, sigma_w2: float, sigma_b2: float,
                 q0: float = 1.0, num_points: int = BIVARIATE_POINTS) -> dict[str, float]:
  """The mean-field depth scales of a wide random net (Schoenholz et al., 2017, §3).

  q^l → q* as e^{−l/ξ_q} and c^l → c* as e^{−l/ξ_c}, with

    ξ_q⁻¹ = −ln[χ₁ + σ_w² ∫Dz φ″(√q* z) φ(√q* z)]
    ξ_c⁻¹ = −ln[σ_w² ∫Dz₁Dz₂ φ′(u₁*) φ′(u₂*)] = −ln χ_c,

  u₁* = √q* z₁, u₂* = √q*(c* z₁ + √(1 − c*²) z₂). In the ordered phase c* = 1 and
  χ_c = χ₁; ξ_c diverges where χ₁ = 1. The paper finds nets trainable to a depth
  of about 6ξ_c.

  Returns:
    ``q_star``, ``chi_1``, ``c_star``, ``chi_c``, ``xi_q``, ``xi_c``.
  """
  q = fixed_point_variance(activation, sigma_w2=sigma_w2, sigma_b2=sigma_b2, q0=q0)
  c = fixed_point_correlation(activation, q=q, sigma_w2=sigma_w2, sigma_b2=sigma_b2,
                              num_points=num_points)
  chi1 = chi_1(activation, q=q, sigma_w2=sigma_w2)
  chi_c = chi1 if c == 1.0 else float(correlation_slope(
      activation, c, q=q, sigma_w2=sigma_w2, num_points=num_points))
  return {'q_star': q, 'chi_1': chi1, 'c_star': c, 'chi_c': chi_c,
          'xi_q': depth_scale(float(variance_map_slope(activation, q,
                                                       sigma_w2=sigma_w2))),
          'xi_c': depth_scale(chi_c)}


def critical_weight_variance(activation: str, *, sigma_b2: float,
                             bracket: tuple[float, float] = (0.5, 10.0)) -> float:
  """σ_w² on the order-to-chaos line, where χ₁(q*(σ_w²)) = 1 (Brent's method in
  ``bracket``): 1 for tanh at σ_b = 0; about 1.76 at σ_b² = 0.05 (the paper's Fig. 1)."""
  from scipy import optimize  # pylint: disable=g-import-not-at-top

  def excess(sigma_w2):
    q = fixed_point_variance(activation, sigma_w2=sigma_w2, sigma_b2=sigma_b2)
    return chi_1(activation, q=q, sigma_w2=sigma_w2) - 1.0
  lo, hi = bracket
  if excess(lo) * excess(hi) > 0:
    raise ValueError(f'χ₁ − 1 has one sign on {bracket=} for {activation}, {sigma_b2=}: '
                     'no order-to-chaos transition there')
  return float(optimize.brentq(excess, lo, hi, xtol=1e-10))
