"""Activation functions, their derivatives, and what "inactive" means for each.

Three plain-dict registries keyed by the same names: ``ACTIVATIONS`` (``Array ->
Array``), ``DERIVATIVES`` (closed-form φ′, tested against ``jax.grad``) and
``INACTIVE`` (``'saturated'``, ``'dead'`` or None). At a kink the derivative takes
the value ``jax.grad`` gives: ReLU′(0) = 0, leaky ReLU′(0) = 1, SELU′(0) = λα.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy import special

Activation = Callable[[jax.Array], jax.Array]

# Negative slope a of leaky ReLU: PyTorch's and jax.nn's default.
LEAKY_RELU_SLOPE = 0.01
# SELU's constants (Klambauer et al., 2017), as in jax.nn.selu.
SELU_SCALE = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717
# Default threshold θ of saturation: |tanh(z)| > 0.97.
SATURATION_THRESHOLD = 0.97


def tanh(x: jax.Array) -> jax.Array:
  """tanh(x) = (e^x − e^−x)/(e^x + e^−x): zero-centred, range (−1, 1)."""
  return jnp.tanh(x)


def d_tanh(x: jax.Array) -> jax.Array:
  """tanh′(x) = 1 − tanh(x)²."""
  return 1.0 - jnp.tanh(x) ** 2


def sigmoid(x: jax.Array) -> jax.Array:
  """σ(x) = 1/(1 + e^−x): range (0, 1), mean 1/2 at x = 0 (not zero-centred)."""
  return jax.nn.sigmoid(x)


def d_sigmoid(x: jax.Array) -> jax.Array:
  """σ′(x) = σ(x)(1 − σ(x)), at most 1/4."""
  s = jax.nn.sigmoid(x)
  return s * (1.0 - s)


def relu(x: jax.Array) -> jax.Array:
  """ReLU(x) = max(0, x) (Nair & Hinton, 2010)."""
  return jax.nn.relu(x)


def d_relu(x: jax.Array) -> jax.Array:
  """ReLU′(x) = 1 for x > 0, else 0."""
  return (x > 0).astype(jnp.result_type(x, jnp.float32))


def leaky_relu(x: jax.Array) -> jax.Array:
  """leaky ReLU(x) = x for x ≥ 0, a·x otherwise, a = 0.01 (Maas et al., 2013)."""
  return jnp.where(x >= 0, x, LEAKY_RELU_SLOPE * x)


def d_leaky_relu(x: jax.Array) -> jax.Array:
  """leaky ReLU′(x) = 1 for x ≥ 0, a otherwise."""
  return jnp.where(x >= 0, 1.0, LEAKY_RELU_SLOPE).astype(jnp.result_type(x, jnp.float32))


def gelu(x: jax.Array) -> jax.Array:
  """GELU(x) = x·Φ(x), Φ the standard normal CDF (Hendrycks & Gimpel, 2016).

  The exact form, as PyTorch's default; ``jax.nn.gelu`` defaults to the tanh
  approximation (``approximate=True``).
  """
  return x * special.ndtr(x)


def d_gelu(x: jax.Array) -> jax.Array:
  """GELU′(x) = Φ(x) + x·φ(x), φ the standard normal density."""
  return special.ndtr(x) + x * jnp.exp(-0.5 * x ** 2) / math.sqrt(2.0 * math.pi)


def selu(x: jax.Array) -> jax.Array:
  """SELU(x) = λ·x for x > 0, λα(e^x − 1) otherwise (Klambauer et al., 2017).

  λ ≈ 1.0507, α ≈ 1.6733 make N(0, 1) a fixed point of mean 0, variance 1 under
  LeCun-normal weights.
  """
  # The branch where() discards must stay finite, or its gradient 0·∞ = NaN leaks
  # through for large x; where (not minimum, which splits a tie) keeps SELU′(0) = λα.
  negative = jnp.where(x > 0, 0.0, x)
  return SELU_SCALE * jnp.where(x > 0, x, SELU_ALPHA * jnp.expm1(negative))


def d_selu(x: jax.Array) -> jax.Array:
  """SELU′(x) = λ for x > 0, λα·e^x otherwise."""
  return SELU_SCALE * jnp.where(x > 0, 1.0, SELU_ALPHA * jnp.exp(jnp.where(x > 0, 0.0, x)))


def identity(x: jax.Array) -> jax.Array:
  """identity(x) = x: a linear network, the baseline of signal-propagation theory."""
  return x


def d_identity(x: jax.Array) -> jax.Array:
  """identity′(x) = 1."""
  return jnp.ones_like(x)


ACTIVATIONS: dict[str, Activation] = {
    'tanh': tanh,
    'sigmoid': sigmoid,
    'relu': relu,
    'leaky_relu': leaky_relu,
    'gelu': gelu,
    'selu': selu,
    'identity': identity,
}

DERIVATIVES: dict[str, Activation] = {
    'tanh': d_tanh,
    'sigmoid': d_sigmoid,
    'relu': d_relu,
    'leaky_relu': d_leaky_relu,
    'gelu': d_gelu,
    'selu': d_selu,
    'identity': d_identity,
}

# What "inactive" means for each activation:
#   'saturated' (per element): the output is within a fraction 1 − θ of an asymptote,
#     measured in units of the distance from φ(0): |tanh z| > θ; |2σ(z) − 1| > θ;
#     for SELU, on its negative side, SELU(z)/(−λα) > θ. Equivalently the
#     pre-activation lies outside :func:`saturation_bounds`. For tanh and sigmoid
#     φ′(z)/φ′(0) = 1 − (that fraction)², so θ = 0.97 means φ′ < 6% of its peak.
#   'dead' (per unit): the pre-activation is ≤ 0 for every example of the batch. A
#     dead ReLU outputs exactly 0 and gets no gradient; a leaky-ReLU unit in that
#     state still gets the leak's gradient a.
#   None: GELU (smooth and non-monotone, never flat) and identity.
INACTIVE: dict[str, str | None] = {
    'tanh': 'saturated',
    'sigmoid': 'saturated',
    'selu': 'saturated',
    'relu': 'dead',
    'leaky_relu': 'dead',
    'gelu': None,
    'identity': None,
}


def get_activation(name: str) -> Activation:
  """Returns the activation called ``name``; raises ValueError listing valid names."""
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(
        f'Unknown activation {name!r}; valid: {sorted(ACTIVATIONS)}') from None


def get_derivative(name: str) -> Activation:
  """Returns φ′ of the activation ``name`` in closed form."""
  get_activation(name)
  return DERIVATIVES[name]


def saturation_bounds(name: str, threshold: float = SATURATION_THRESHOLD
                      ) -> tuple[float, float]:
  """(lo, hi) such that ``name`` is saturated exactly where z < lo or z > hi.

  tanh: ±atanh θ (θ = 0.97: ±2.092); sigmoid: ±2·atanh θ (since 2σ(z) − 1 =
  tanh(z/2)); SELU: (ln(1 − θ), +∞).
  """
  if not 0 < threshold < 1:
    raise ValueError(f'{threshold=} must be in (0, 1)')
  if name == 'tanh':
    return -math.atanh(threshold), math.atanh(threshold)
  if name == 'sigmoid':
    return -2.0 * math.atanh(threshold), 2.0 * math.atanh(threshold)
  if name == 'selu':
    return math.log(1.0 - threshold), math.inf
  raise ValueError(f'{name!r} does not saturate; saturating activations: '
                   f'{sorted(k for k, v in INACTIVE.items() if v == "saturated")}')


def inactive_fraction(name: str, preactivation: jax.Array, *,
                      threshold: float = SATURATION_THRESHOLD) -> jax.Array:
  """Fraction of ``preactivation`` ``[batch, units]`` that is inactive (see INACTIVE).

  'saturated': the fraction of all elements; 'dead': the fraction of units that are
  ≤ 0 for every example of the batch; NaN where no inactive state is defined.
  """
  get_activation(name)
  kind = INACTIVE[name]
  z = jnp.asarray(preactivation)
  if kind == 'saturated':
    lo, hi = saturation_bounds(name, threshold)
    return jnp.mean((z < lo) | (z > hi))
  if kind == 'dead':
    return jnp.mean(jnp.all(z.reshape(z.shape[0], -1) <= 0, axis=0))
  return jnp.array(jnp.nan)
