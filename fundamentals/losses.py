"""Losses for classification from integer labels."""

import math

import jax
import jax.numpy as jnp
import optax


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean over the batch of −log softmax(logits)[label], in nats.

  L = −(1/B) Σ_b [z_b,y_b − log Σ_k exp z_b,k]; wraps
  ``optax.softmax_cross_entropy_with_integer_labels``.
  """
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of examples whose arg-max logit is the label."""
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def expected_initial_loss(num_classes: int) -> float:
  """ln N: the cross-entropy of uniform predictions p_k = 1/N over N classes.

  >>> round(expected_initial_loss(30), 4)
  3.4012
  """
  if num_classes < 2:
    raise ValueError(f'{num_classes=} must be at least 2')
  return math.log(num_classes)
