"""Batch normalization from first principles: pure functions and a thin NNX layer.

Batch normalization (Ioffe & Szegedy, 2015, "Batch Normalization: Accelerating Deep
Network Training by Reducing Internal Covariate Shift", Algorithm 1) standardizes each
feature with the statistics of the current mini-batch B = {x_1 … x_m}:

  μ_B  = (1/m) Σ_i x_i
  σ²_B = (1/m) Σ_i (x_i − μ_B)²            (the *biased* batch variance)
  x̂_i  = (x_i − μ_B) / √(σ²_B + ε)
  y_i  = γ·x̂_i + β                         (γ = 1, β = 0 at initialization)

and, because a prediction must not depend on the other examples of its batch, keeps
running averages for evaluation:

  μ_run ← α·μ_run + (1 − α)·μ_B,    σ²_run ← α·σ²_run + (1 − α)·σ²_B.

Conventions, precisely (they differ between libraries):

* **α here is Flax's ``momentum``**: ``nnx.BatchNorm(momentum=α)`` with default
  α = 0.99. This project's default is α = 0.9 (``Config.bn_momentum``).
* **PyTorch's ``momentum`` is 1 − α** (default 0.1, i.e. α = 0.9), and PyTorch stores
  the *unbiased* variance m/(m − 1)·σ²_B in its running estimate while normalizing the
  batch with the biased σ²_B. ``unbiased_running_var=True`` reproduces that; the
  default (False) reproduces Flax, whose running variance averages the biased σ²_B.
* Both libraries and this module add ε inside the square root, to the variance.
* **The batch variance is computed in two passes** here, σ²_B = mean((x − μ_B)²),
  which keeps its digits at any offset: at |μ|/σ = 1000 in float32 it is exact to
  ~1e-6. ``nnx.BatchNorm`` (default ``use_fast_variance=True``) computes
  mean(x²) − μ_B², which loses them to cancellation (11% of the variance at
  |μ|/σ = 1000 in float32). So ``bn_impl='ours'`` and ``'flax'`` give the same
  outputs, gradients and running statistics up to float rounding (~1e-6 relative,
  tested) while |μ|/σ is moderate, as it is after a well-scaled layer, and ours stays
  exact where Flax's drifts. The hand-written backward pass
  (``backprop.batchnorm_forward``) uses the same two-pass variance.

Statistics are reduced over every axis but the last (the feature axis), so ``[N, F]``
and ``[N, H, W, C]`` inputs both work.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx


class Statistics(NamedTuple):
  """Per-feature mean and variance, the state BatchNorm normalizes with."""
  mean: jax.Array
  var: jax.Array


def _reduction_axes(x: jax.Array) -> tuple[int, ...]:
  return tuple(range(x.ndim - 1))


def batch_size(x: jax.Array) -> int:
  """m: the number of values each feature's statistics are computed over."""
  return math.prod(x.shape[:-1])


def batch_statistics(x: jax.Array) -> Statistics:
  """μ_B and the biased σ²_B = (1/m) Σ (x − μ_B)² of each feature.

  Two passes (mean first, then the mean squared deviation) rather than
  E[x²] − E[x]², which loses precision to cancellation when |μ| ≫ σ.
  """
  axes = _reduction_axes(x)
  mean = jnp.mean(x, axis=axes)
  var = jnp.mean(jnp.square(x - mean), axis=axes)
  return Statistics(mean, var)


def normalize(x: jax.Array, stats: Statistics, *, scale: jax.Array,
              bias: jax.Array, epsilon: float = 1e-5) -> jax.Array:
  """y = γ·(x − μ)/√(σ² + ε) + β with the given μ, σ² (batch or population)."""
  return scale * (x - stats.mean) * jax.lax.rsqrt(stats.var + epsilon) + bias


def update_running(running: Statistics, batch: Statistics, *, momentum: float = 0.9,
                   count: int | None = None,
                   unbiased_running_var: bool = False) -> Statistics:
  """μ_run ← α·μ_run + (1 − α)·μ_B and likewise σ²_run, with α = ``momentum``.

  Args:
    running: the current running averages.
    batch: this batch's statistics; ``batch.var`` is the biased σ²_B.
    momentum: α, the weight of the old average (Flax's ``momentum``; PyTorch's is 1 − α).
    count: m, the number of values behind ``batch``; needed only when
      ``unbiased_running_var``.
    unbiased_running_var: average m/(m − 1)·σ²_B instead of σ²_B, as PyTorch does.
  """
  var = batch.var
  if unbiased_running_var:
    if count is None or count < 2:
      raise ValueError(f'unbiased_running_var needs count >= 2 values per feature; '
                       f'got {count=}')
    var = var * (count / (count - 1))
  return Statistics(
      mean=momentum * running.mean + (1 - momentum) * batch.mean,
      var=momentum * running.var + (1 - momentum) * var)


def batch_norm_train(x: jax.Array, *, scale: jax.Array, bias: jax.Array,
                     running: Statistics, momentum: float = 0.9,
                     epsilon: float = 1e-5,
                     unbiased_running_var: bool = False) -> tuple[jax.Array, Statistics]:
  """Training mode: normalizes with the batch's own statistics.

  Gradients flow through μ_B and σ²_B (that is what makes BN's backward pass
  differ from a fixed affine map); the returned running averages carry none.

  Returns:
    ``(y, new_running)``: the normalized batch and the updated running averages.
  """
  stats = batch_statistics(x)
  y = normalize(x, stats, scale=scale, bias=bias, epsilon=epsilon)
  new_running = update_running(
      running, jax.lax.stop_gradient(stats), momentum=momentum, count=batch_size(x),
      unbiased_running_var=unbiased_running_var)
  return y, new_running


def batch_norm_eval(x: jax.Array, *, scale: jax.Array, bias: jax.Array,
                    stats: Statistics, epsilon: float = 1e-5) -> jax.Array:
  """Evaluation mode: normalizes with given statistics (running or population).

  Each example is transformed independently of the rest of its batch, so a batch
  of one gives the same output as the same example inside any larger batch.
  """
  return normalize(x, stats, scale=scale, bias=bias, epsilon=epsilon)


def validate(*, momentum: float, epsilon: float):
  """Raises ValueError unless 0 ≤ α < 1 and ε > 0."""
  if not 0 <= momentum < 1:
    raise ValueError(f'{momentum=} must be in [0, 1) (α, the weight of the old '
                     'running average, as in Flax)')
  if not epsilon > 0:
    raise ValueError(f'{epsilon=} must be positive')


class BatchNorm(nnx.Module):
  """An NNX layer around :func:`batch_norm_train` / :func:`batch_norm_eval`.

  A drop-in for ``nnx.BatchNorm`` over the last axis: the same variable names and
  types (``scale``, ``bias``: ``nnx.Param``; ``mean``, ``var``: ``nnx.BatchStat``),
  the same ``use_running_average`` attribute, so ``model.train()`` /
  ``model.eval()`` / ``nnx.view`` switch it like Flax's. It draws two keys from
  ``rngs.params`` exactly as ``nnx.BatchNorm`` does (for γ and β, though their
  initializers ignore them), so swapping implementations leaves every later layer's
  initialization unchanged.

  Args:
    num_features: size of the last axis.
    momentum: α of the running averages (Flax's ``momentum``; PyTorch's is 1 − α).
    epsilon: ε added to the variance.
    unbiased_running_var: average the unbiased m/(m − 1)·σ²_B (PyTorch) rather than
      the biased σ²_B (Flax, default).
    use_running_average: evaluation mode when True.
    rngs: Flax NNX random streams.
  """

  def __init__(self, num_features: int, *, momentum: float = 0.9,
               epsilon: float = 1e-5, unbiased_running_var: bool = False,
               use_running_average: bool = False, rngs: nnx.Rngs):
    validate(momentum=momentum, epsilon=epsilon)
    rngs.params()  # γ's key in nnx.BatchNorm.
    self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
    rngs.params()  # β's key.
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.num_features = num_features
    self.momentum = momentum
    self.epsilon = epsilon
    self.unbiased_running_var = unbiased_running_var
    self.use_running_average = use_running_average

  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    if use_running_average is None:
      use_running_average = self.use_running_average
    running = Statistics(self.mean[...], self.var[...])
    if use_running_average:
      return batch_norm_eval(x, scale=self.scale[...], bias=self.bias[...],
                             stats=running, epsilon=self.epsilon)
    y, new_running = batch_norm_train(
        x, scale=self.scale[...], bias=self.bias[...], running=running,
        momentum=self.momentum, epsilon=self.epsilon,
        unbiased_running_var=self.unbiased_running_var)
    self.mean[...] = new_running.mean
    self.var[...] = new_running.var
    return y

  def set_view(self, use_running_average: bool | None = None):
    """Lets ``nnx.view(model, use_running_average=...)`` switch modes."""
    if use_running_average is not None:
      self.use_running_average = use_running_average


# Layer classes taking ``(num_features, *, momentum, epsilon, rngs)``.
IMPLEMENTATIONS: dict[str, type[nnx.Module]] = {
    'flax': nnx.BatchNorm,
    'ours': BatchNorm,
}


def get_implementation(name: str) -> type[nnx.Module]:
  """Returns the BatchNorm layer class ``name``; raises ValueError listing valid names."""
  try:
    return IMPLEMENTATIONS[name]
  except KeyError:
    raise ValueError(
        f'Unknown BatchNorm implementation {name!r}; valid: '
        f'{sorted(IMPLEMENTATIONS)}') from None
