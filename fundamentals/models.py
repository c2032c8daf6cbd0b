"""A multilayer perceptron with optional batch normalization, in Flax NNX.

Each hidden layer is Dense → [BatchNorm] → activation. A Dense layer followed by
BatchNorm has no bias: BN subtracts the batch mean, so a bias b would cancel
(BN(Wx + b) = BN(Wx)) and BN's shift β plays its role.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fundamentals import activations
from fundamentals import batchnorm as batchnorm_lib
from fundamentals import initializers


class MLP(nnx.Module):
  """Dense → [BatchNorm] → activation, repeated per hidden width, then Dense to logits.

  Args:
    in_features: input size (12,288 for 64×64×3 images).
    hidden: widths of the hidden layers.
    num_classes: number of logits.
    activation: name in ``activations.ACTIVATIONS``.
    init: hidden-kernel initializer name; gain-aware schemes use the activation's gain.
    batchnorm: whether each hidden Dense is followed by BatchNorm (then it has no bias).
    bn_momentum: α of the running averages μ ← α·μ + (1−α)·μ_B (Flax's ``momentum``).
    bn_epsilon: ε added to the batch variance.
    bn_impl: ``'flax'`` (``nnx.BatchNorm``) or ``'ours'`` (``batchnorm.BatchNorm``,
      the from-scratch layer); the two give identical results.
    output_init: initializer of the output kernel; ``'same'`` uses ``init`` with the
      gain of a linear layer.
    output_scale: factor on the output kernel at init. Small values (0.1, 0.01) give
      near-uniform initial predictions, loss ≈ ln N: the fix for overconfident logits.
    rngs: Flax NNX random streams.
  """

  def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, *,
               activation: str = 'relu', init: str = 'kaiming',
               batchnorm: bool = True, bn_momentum: float = 0.9,
               bn_epsilon: float = 1e-5, bn_impl: str = 'flax',
               output_init: str = 'same',
               output_scale: float = 1.0, rngs: nnx.Rngs):
    if in_features < 1 or num_classes < 1 or any(w < 1 for w in hidden):
      raise ValueError(f'sizes must be positive: {in_features=}, {hidden=}, '
                       f'{num_classes=}')
    self.activation_name = activation
    self.activation = activations.get_activation(activation)
    kernel_init = initializers.get_initializer(init, activation=activation)
    widths = [in_features, *hidden]
    self.dense = nnx.List([
        nnx.Linear(n_in, n_out, use_bias=not batchnorm, kernel_init=kernel_init,
                   rngs=rngs)
        for n_in, n_out in zip(widths[:-1], widths[1:])
    ])
    bn_layer = batchnorm_lib.get_implementation(bn_impl)
    self.norms = nnx.List([
        bn_layer(n, momentum=bn_momentum, epsilon=bn_epsilon, rngs=rngs)
        for n in hidden
    ] if batchnorm else [])
    base_output_init = initializers.get_initializer(
        init if output_init == 'same' else output_init)
    self.output = nnx.Linear(
        widths[-1], num_classes,
        kernel_init=lambda *a, **k: output_scale * base_output_init(*a, **k),
        rngs=rngs)

  def forward(self, x: jax.Array) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    """Returns logits and, per hidden layer, its pre-activation and activation."""
    layers = []
    for i, dense in enumerate(self.dense):
      z = dense(x)
      if self.norms:
        z = self.norms[i](z)
      x = self.activation(z)
      layers.append({'preactivation': z, 'activation': x})
    return self.output(x), layers

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.forward(x)[0]


def count_params(params) -> int:
  """Number of scalars in a parameter pytree."""
  return sum(int(jnp.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))


def omitted_bias_count(model: MLP) -> int:
  """Bias scalars the hidden Dense layers would carry without BatchNorm after them.

  BN(Wx + b) = BN(Wx): the batch mean absorbs b, whose gradient is zero, so the
  model omits it; parameters with the redundant bias = ``count_params`` + this.
  """
  return sum(dense.out_features for dense in model.dense) if model.norms else 0

