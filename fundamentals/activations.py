"""Activation functions: a plain-dict registry of ``Array -> Array`` functions."""

from typing import Callable

import jax
import jax.numpy as jnp

Activation = Callable[[jax.Array], jax.Array]


def tanh(x: jax.Array) -> jax.Array:
  """tanh(x) = (e^x − e^−x)/(e^x + e^−x); zero-centred, tanh′(x) = 1 − tanh(x)²."""
  return jnp.tanh(x)


def relu(x: jax.Array) -> jax.Array:
  """ReLU(x) = max(0, x); ReLU′(x) = 1 for x > 0, else 0 (Nair & Hinton, 2010)."""
  return jax.nn.relu(x)


def identity(x: jax.Array) -> jax.Array:
  """identity(x) = x: a linear network, the baseline of signal-propagation theory."""
  return x


ACTIVATIONS: dict[str, Activation] = {
    'tanh': tanh,
    'relu': relu,
    'identity': identity,
}


def get_activation(name: str) -> Activation:
  """Returns the activation called ``name``; raises ValueError listing valid names."""
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(
        f'Unknown activation {name!r}; valid: {sorted(ACTIVATIONS)}') from None
