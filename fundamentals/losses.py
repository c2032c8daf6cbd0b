"""Losses for classification from integer labels."""

import math

import jax
import jax.numpy as jnp
import numpy as np
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


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
  """Counts C[i, j] of examples of true class i predicted as class j (NumPy, int64).

  Row sums are the examples per class; the trace over the total is the accuracy.

  >>> confusion_matrix([0, 1, 1], [0, 0, 1], 2).tolist()
  [[1, 0], [1, 1]]
  """
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  if labels.shape != predictions.shape:
    raise ValueError(f'{labels.shape=} and {predictions.shape=} must be equal')
  for name, values in (('labels', labels), ('predictions', predictions)):
    outside = values[(values < 0) | (values >= num_classes)]
    if outside.size:
      raise ValueError(f'{name} hold {outside[0]}, outside [0, {num_classes=})')
  flat = labels.astype(np.int64) * num_classes + predictions
  return np.bincount(flat.ravel(), minlength=num_classes ** 2).reshape(
      num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
  """Recall of each class, C[i, i] / Σ_j C[i, j]; NaN for a class without examples.

  >>> per_class_accuracy(np.array([[1, 0], [1, 1]])).tolist()
  [1.0, 0.5]
  """
  confusion = np.asarray(confusion, np.float64)
  totals = confusion.sum(axis=1)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(totals > 0, np.diag(confusion) / totals, np.nan)


def expected_initial_loss(num_classes: int) -> float:
  """ln N: the cross-entropy of uniform predictions p_k = 1/N over N classes.

  >>> round(expected_initial_loss(30), 4)
  3.4012
  """
  if num_classes < 2:
    raise ValueError(f'{num_classes=} must be at least 2')
  return math.log(num_classes)
