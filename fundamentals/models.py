"""A multilayer perceptron with optional batch normalization, in Flax NNX.

Each hidden layer is Dense → [BatchNorm] → activation. A Dense layer followed by
BatchNorm has no bias: BN subtracts the batch mean, so a bias b would cancel
(BN(Wx + b) = BN(Wx)) and BN's shift β plays its role.

:meth:`MLP.forward` is the one walk through the layers: besides the logits it returns
every hidden layer's intermediates (its *taps*), which diagnostics, signal
propagation, population statistics and LSUV all read. :func:`create_model` is the
one place a ``Config`` becomes an MLP.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fundamentals import activations
from fundamentals import batchnorm as batchnorm_lib
from fundamentals import initializers
from fundamentals import precision as precision_lib

Taps = dict[str, jax.Array]
"""One hidden layer's intermediates: ``dense`` u = W·h + b (the BatchNorm input),
``preactivation`` z (= BN(u), or u without BN) and ``activation`` h = φ(z)."""


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
      the from-scratch layer): the same but for how the batch variance is rounded
      (``batchnorm`` module docstring).
    bn_unbiased_running_var: PyTorch's running variance (``bn_impl='ours'`` only).
    output_init: initializer of the output kernel; ``'same'`` uses ``init`` with the
      gain of a linear layer.
    init_gain: the hidden kernels' gain, overriding the scheme's (None: its own).
    bias_std: std σ_b of the hidden biases at init, N(0, σ_b²); 0: zeros.
    precision: the matmuls' precision (``precision.DOT_GENERALS``): ``'bfloat16'``
      rounds every Dense product's inputs to bfloat16, accumulating in float32.
    output_scale: factor on the output kernel at init. Small values (0.1, 0.01) give
      near-uniform initial predictions, loss ≈ ln N: the fix for overconfident logits.
    rngs: Flax NNX random streams.
  """

  def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, *,
               activation: str = 'relu', init: str = 'kaiming',
               batchnorm: bool = True, bn_momentum: float = 0.9,
               bn_epsilon: float = 1e-5, bn_impl: str = 'flax',
               bn_unbiased_running_var: bool = False,
               output_init: str = 'same',
               output_scale: float = 1.0, init_gain: float | None = None,
               bias_std: float = 0.0, precision: str = 'float32', rngs: nnx.Rngs):
    if in_features < 1 or num_classes < 1 or any(w < 1 for w in hidden):
      raise ValueError(f'sizes must be positive: {in_features=}, {hidden=}, '
                       f'{num_classes=}')
    self.activation_name = activation
    self.activation = activations.get_activation(activation)
    if bias_std and batchnorm:
      raise ValueError(f'{bias_std=} needs batchnorm=False (before BN a Dense has no bias)')
    kernel_init = initializers.get_initializer(init, activation=activation, gain=init_gain)
    dot_general = precision_lib.get_dot_general(precision)
    bias_init = (jax.nn.initializers.normal(bias_std) if bias_std
                 else jax.nn.initializers.zeros)
    widths = [in_features, *hidden]
    self.dense = nnx.List([
        nnx.Linear(n_in, n_out, use_bias=not batchnorm, kernel_init=kernel_init,
                   bias_init=bias_init, dot_general=dot_general, rngs=rngs)
        for n_in, n_out in zip(widths[:-1], widths[1:])
    ])
    bn_layer = batchnorm_lib.get_implementation(bn_impl)
    bn_options = {'unbiased_running_var': True} if bn_unbiased_running_var else {}
    self.norms = nnx.List([
        bn_layer(n, momentum=bn_momentum, epsilon=bn_epsilon, rngs=rngs, **bn_options)
        for n in hidden
    ] if batchnorm else [])
    base_output_init = initializers.get_initializer(
        init if output_init == 'same' else output_init, activation='identity')
    self.output = nnx.Linear(
        widths[-1], num_classes,
        kernel_init=lambda *a, **k: output_scale * base_output_init(*a, **k),
        dot_general=dot_general, rngs=rngs)

  def forward(self, x: jax.Array, *, perturb: Sequence[jax.Array] | None = None
              ) -> tuple[jax.Array, list[Taps]]:
    """Returns the logits and every hidden layer's :data:`Taps`.

    Args:
      x: inputs ``[batch, in_features]``.
      perturb: one array per hidden layer added to its activation h_l. At zero the
        output is unchanged and ∂L/∂perturb_l = ∂L/∂h_l: the gradient with respect to
        an intermediate, which ``jax.grad`` reaches through an input (the trick of
        Flax's ``Module.perturb``).
    """
    if perturb is not None and len(perturb) != len(self.dense):
      raise ValueError(f'{len(perturb)} probes for {len(self.dense)} hidden layers')
    layers = []
    for i, dense in enumerate(self.dense):
      u = dense(x)
      z = self.norms[i](u) if self.norms else u
      x = self.activation(z)
      if perturb is not None:
        x = x + perturb[i]
      layers.append({'dense': u, 'preactivation': z, 'activation': x})
    return self.output(x), layers

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.forward(x)[0]


def create_model(config, *, num_features: int, num_classes: int, key: jax.Array) -> MLP:
  """The MLP a ``Config`` describes, initialized from ``key``.

  A data-dependent init (LSUV, ``initializers.DATA_DEPENDENT``) is built with its
  per-tensor starting point; ``train.apply_data_dependent_init`` then applies it.
  """
  return MLP(
      num_features, config.hidden, num_classes,
      activation=config.activation,
      init=initializers.DATA_DEPENDENT.get(config.init, config.init),
      batchnorm=config.batchnorm,
      bn_momentum=config.bn_momentum, bn_epsilon=config.bn_epsilon,
      bn_impl=config.bn_impl, bn_unbiased_running_var=config.bn_unbiased_running_var,
      output_init=config.output_init, output_scale=config.output_scale,
      init_gain=config.init_gain or None, bias_std=config.bias_std,
      precision=config.precision, rngs=nnx.Rngs(params=key))


def merge(graph: nnx.GraphDef, params, batch_stats) -> MLP:
  """The model in the current trace, with fresh BatchNorm variables (``tree.map``
  makes new ones), so that training mode may update them inside ``jax.grad``."""
  return nnx.merge(graph, params, jax.tree.map(lambda v: v, batch_stats))


def apply(graph: nnx.GraphDef, params, batch_stats, x: jax.Array):
  """Runs the model; returns logits and the (possibly updated) BatchNorm statistics."""
  model = merge(graph, params, batch_stats)
  logits = model(x)
  return logits, nnx.state(model, nnx.BatchStat)


def count_params(params) -> int:
  """Number of scalars in a parameter pytree."""
  return sum(int(jnp.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))


def omitted_bias_count(model: MLP) -> int:
  """Bias scalars the hidden Dense layers would carry without BatchNorm after them.

  BN(Wx + b) = BN(Wx): the batch mean absorbs b, whose gradient is zero, so the
  model omits it; parameters with the redundant bias = ``count_params`` + this.
  """
  return sum(dense.out_features for dense in model.dense) if model.norms else 0
