"""Weight initializers as pure functions with the ``jax.nn.initializers`` signature.

Every initializer is ``init(key, shape, dtype=float32) -> Array``. Schemes with a
scale are built by factories (optax style) that take the ``gain`` of the layer's
activation, so ``kaiming_normal(gain=gain('relu'))`` is He et al.'s N(0, 2/fan_in).

Kernels use the Flax layout ``[..., fan_in, fan_out]`` (PyTorch stores ``[out, in]``).
Normals here are *untruncated*, matching the formulas of the papers; note that
``jax.nn.initializers.*_normal`` draw from a normal truncated at ±2σ rescaled by
1/0.87962566 so the variance still equals the formula.
"""

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

# Gains g such that Var(W) = g²·(base variance) keeps the signal's second moment
# constant through the layer (PyTorch's ``torch.nn.init.calculate_gain`` table).
GAINS: dict[str, float] = {
    'identity': 1.0,
    'tanh': 5.0 / 3.0,
    'relu': math.sqrt(2.0),
}


def gain(activation: str) -> float:
  """Recommended gain for ``activation``: identity 1, tanh 5/3, ReLU √2."""
  try:
    return GAINS[activation]
  except KeyError:
    raise ValueError(
        f'No gain known for activation {activation!r}; valid: {sorted(GAINS)}'
    ) from None


def compute_fans(shape: Sequence[int]) -> tuple[int, int]:
  """Returns (fan_in, fan_out) of a kernel of the given shape.

  Dense kernels are ``[fan_in, fan_out]``; convolution kernels are
  ``[*receptive_field, in_channels, out_channels]`` and both fans are multiplied by
  the receptive-field size ∏ receptive_field.
  """
  if len(shape) < 2:
    raise ValueError(f'fans need a kernel of rank >= 2, got {shape=}')
  receptive_field = math.prod(shape[:-2])
  return shape[-2] * receptive_field, shape[-1] * receptive_field


def normal(key, shape, dtype=jnp.float32) -> jax.Array:
  """W ~ N(0, 1): the naive scheme; each layer multiplies the variance by fan_in."""
  return jax.random.normal(key, shape, dtype)


def zeros(key, shape, dtype=jnp.float32) -> jax.Array:
  """W = 0. Fine for a last layer (logits start uniform, loss = ln N); never for all."""
  del key
  return jnp.zeros(shape, dtype)


def _variance_scaling(variance: Callable[[int, int], float],
                      gain_value: float) -> Initializer:
  """Builds W ~ N(0, gain² · variance(fan_in, fan_out)), untruncated."""

  def init(key, shape, dtype=jnp.float32) -> jax.Array:
    fan_in, fan_out = compute_fans(shape)
    std = gain_value * math.sqrt(variance(fan_in, fan_out))
    return std * jax.random.normal(key, shape, dtype)

  return init


def lecun_normal(gain: float = 1.0) -> Initializer:
  """W ~ N(0, gain²/fan_in) (LeCun et al., 1998, "Efficient BackProp")."""
  return _variance_scaling(lambda fan_in, fan_out: 1.0 / fan_in, gain)


def xavier_normal(gain: float = 1.0) -> Initializer:
  """W ~ N(0, gain² · 2/(fan_in + fan_out)) (Glorot & Bengio, 2010).

  Glorot's derivation (linear units) uses gain 1, so under ReLU the activation std
  shrinks by about 1/√2 per square layer.
  """
  return _variance_scaling(lambda fan_in, fan_out: 2.0 / (fan_in + fan_out), gain)


def kaiming_normal(gain: float = math.sqrt(2.0), mode: str = 'fan_in') -> Initializer:
  """W ~ N(0, gain²/fan) (He et al., 2015); fan = fan_in (default) or fan_out.

  gain √2 gives He's N(0, 2/fan_in) for ReLU; gain 5/3 gives N(0, (5/3)²/fan_in)
  for tanh.
  """
  if mode not in ('fan_in', 'fan_out'):
    raise ValueError(f"{mode=} must be 'fan_in' or 'fan_out'")
  if mode == 'fan_in':
    return _variance_scaling(lambda fan_in, fan_out: 1.0 / fan_in, gain)
  return _variance_scaling(lambda fan_in, fan_out: 1.0 / fan_out, gain)


# name -> (factory taking ``gain``, whether it takes the activation's gain).
INITIALIZERS: dict[str, tuple[Callable[..., Initializer], bool]] = {
    'normal': (lambda gain=1.0: normal, False),
    'zeros': (lambda gain=1.0: zeros, False),
    'lecun_normal': (lecun_normal, False),
    'xavier_normal': (xavier_normal, False),
    'kaiming_normal': (kaiming_normal, True),
}
# Short names used on the command line.
ALIASES: dict[str, str] = {
    'lecun': 'lecun_normal',
    'xavier': 'xavier_normal',
    'glorot': 'xavier_normal',
    'kaiming': 'kaiming_normal',
    'he': 'kaiming_normal',
}


def names() -> list[str]:
  """All accepted initializer names, aliases included."""
  return sorted([*INITIALIZERS, *ALIASES])


def get_initializer(name: str, *, activation: str = 'identity') -> Initializer:
  """Returns the initializer ``name`` for a layer followed by ``activation``.

  Schemes defined with a gain (Kaiming) take ``gain(activation)``; the others use
  their paper's definition.
  """
  canonical = ALIASES.get(name, name)
  if canonical not in INITIALIZERS:
    raise ValueError(f'Unknown initializer {name!r}; valid: {names()}')
  factory, takes_gain = INITIALIZERS[canonical]
  return factory(gain=gain(activation)) if takes_gain else factory()

