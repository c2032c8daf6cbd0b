"""Population statistics for BatchNorm at inference: exact, streaming, layer by layer.

A trained BN network must normalize each example without its batch. Two sources of
statistics for evaluation mode:

1. **Population statistics** (this module): after training, the exact mean and
   (biased) variance of every BN layer's input over the whole training set, computed
   in a streaming pass per layer without holding the activations.
2. **Running averages** (``batchnorm.update_running``): exponential averages of the
   batch statistics kept during training; they lag behind the weights, and α sets
   by how much.

Streaming moments use the pairwise update of Chan, Golub & LeVeque (1979, "Updating
formulae and a pairwise algorithm for computing sample variances"), of which
Welford's (1962) one-at-a-time update is the special case n_B = 1: for two parts
A and B with counts n, means x̄ and sums of squared deviations M₂ = Σ (x − x̄)²,

  n = n_A + n_B,   δ = x̄_B − x̄_A,
  x̄ = x̄_A + δ·n_B/n,
  M₂ = M₂_A + M₂_B + δ²·n_A·n_B/n,

and the population variance is M₂/n. Each batch's (x̄, M₂) is computed on device in
two passes in float32; the combine runs on the host in float64, so the total has no
E[x²] − E[x]² cancellation and no float32 accumulation over thousands of examples.
"""

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fundamentals import batchnorm
from fundamentals import data as data_lib
from fundamentals import models

UPSTREAM = ('population', 'batch')


class Moments(NamedTuple):
  """Count, mean and M₂ = Σ (x − mean)² per feature, in float64."""
  count: int
  mean: np.ndarray
  m2: np.ndarray

  @property
  def var(self) -> np.ndarray:
    """The population (biased, ddof = 0) variance M₂/n, what BatchNorm divides by."""
    return self.m2 / self.count


def moments(x: np.ndarray) -> Moments:
  """The moments of ``x`` over its first axis, in float64, two passes."""
  x = np.asarray(x, np.float64)
  if len(x) == 0:
    raise ValueError(f'moments of an empty batch (shape {x.shape})')
  mean = x.mean(axis=0)
  return Moments(len(x), mean, np.square(x - mean).sum(axis=0))


def combine(a: Moments | None, b: Moments) -> Moments:
  """Moments of the union of two disjoint parts (Chan, Golub & LeVeque, 1979).

  ``a=None`` stands for the empty part, so a stream starts as ``combine(None, m)``.
  """
  if a is None or a.count == 0:
    return Moments(b.count, np.asarray(b.mean, np.float64), np.asarray(b.m2, np.float64))
  count = a.count + b.count
  delta = np.asarray(b.mean, np.float64) - a.mean
  mean = a.mean + delta * (b.count / count)
  m2 = a.m2 + b.m2 + np.square(delta) * (a.count * b.count / count)
  return Moments(count, mean, m2)


def bn_inputs(model: models.MLP, x: jax.Array) -> list[jax.Array]:
  """The input of every BatchNorm layer (the bias-free Dense output), in order.

  Walks the MLP as ``MLP.forward`` does, in the mode the model is in (training mode
  normalizes with batch statistics, evaluation mode with the stored ones).
  """
  if not model.norms:
    raise ValueError('the model has no BatchNorm layers (batchnorm=False)')
  inputs = []
  for dense, norm in zip(model.dense, model.norms):
    h = dense(x)
    inputs.append(h)
    x = model.activation(norm(h))
  return inputs


def read_statistics(batch_stats: nnx.State) -> list[batchnorm.Statistics]:
  """The (mean, var) stored in each BatchNorm layer of an MLP's ``BatchStat`` state."""
  norms = batch_stats['norms'] if 'norms' in batch_stats else {}
  return [batchnorm.Statistics(norms[i]['mean'][...], norms[i]['var'][...])
          for i in sorted(norms)]


def with_statistics(batch_stats: nnx.State,
                    stats: Sequence[batchnorm.Statistics]) -> nnx.State:
  """A copy of ``batch_stats`` holding ``stats`` (float32) in its first layers."""
  new = jax.tree.map(lambda v: v, batch_stats)
  for i, layer in enumerate(stats):
    new['norms'][i]['mean'][...] = jnp.asarray(layer.mean, jnp.float32)
    new['norms'][i]['var'][...] = jnp.asarray(layer.var, jnp.float32)
  return new


@functools.partial(jax.jit, static_argnums=0)
def _batch_moments(graph, params, batch_stats, images, mask, mean, std):
  """Per BN layer, the masked mean and M₂ of its input over one batch (float32)."""
  model = nnx.merge(graph, params, jax.tree.map(lambda v: v, batch_stats))
  inputs = bn_inputs(model, data_lib.normalize(images, mean, std))
  weights = mask[:, None]
  count = jnp.sum(mask)
  result = []
  for h in inputs:
    mu = jnp.sum(h * weights, axis=0) / count
    result.append((mu, jnp.sum(jnp.square(h - mu) * weights, axis=0)))
  return result


def _stream(graph, params, batch_stats, batches, mean, std) -> list[Moments]:
  """Streams ``(images, mask)`` batches through ``graph``; combines per-layer moments."""
  total = None
  for images, mask in batches:
    count = int(mask.sum())
    per_layer = jax.device_get(
        _batch_moments(graph, params, batch_stats, images, mask, mean, std))
    parts = [Moments(count, mu, m2) for mu, m2 in per_layer]
    total = parts if total is None else [combine(t, p) for t, p in zip(total, parts)]
  return total


def _training_batches(images: np.ndarray, batch_size: int, key: jax.Array):
  """One epoch of full training batches in a random order, as the training loop draws."""
  perm = np.asarray(jax.random.permutation(key, len(images)))
  for start in range(0, len(images) - batch_size + 1, batch_size):
    yield images[perm[start:start + batch_size]], np.ones(batch_size, np.float32)


def population_statistics(graphs, params: nnx.State, batch_stats: nnx.State,
                          images: np.ndarray, *, mean, std,
                          upstream: str = 'population', batch_size: int = 500,
                          key: jax.Array | None = None) -> nnx.State:
  """Exact per-layer mean and variance of every BN input over ``images``.

  A layer's input depends on how the layers before it normalize, so "the
  population statistics" needs a choice of upstream statistics:

  * ``upstream='population'`` (default; L streaming passes for L BN layers): layer
    ℓ's statistics are computed in evaluation mode with layers 1 … ℓ−1 already using
    their population statistics. This is **exact for the evaluation-mode network**:
    on ``images``, every BN layer then sees inputs with exactly the mean and variance
    it divides by, so its output has mean β and variance γ²·σ²/(σ² + ε) per feature.
    It is the fixed point that the inference network should use; batching only
    splits the sum (padded last batch, masked).
  * ``upstream='batch'`` (one pass): every layer in training mode, as during
    training, over one epoch of random batches of ``batch_size`` (the remainder
    dropped, as an epoch of training does). Returns the exact pooled moments of the
    inputs that training-mode layers produced: what the running averages estimate
    (up to their biased within-batch variance and lag), and the pass that Ioffe &
    Szegedy (2015, Algorithm 2) describe. Exact for *those* inputs, not for the
    evaluation-mode network.

  Args:
    graphs: ``train.Graphs`` of an MLP with BatchNorm.
    params, batch_stats: the model's ``nnx.Param`` and ``nnx.BatchStat`` state.
    images: uint8 ``[N, H, W, C]``, usually the whole (un-augmented) training set.
    mean, std: the per-channel normalization of ``data.normalize``.
    upstream: ``'population'`` or ``'batch'``, as above.
    batch_size: examples per device batch (for ``'batch'``, the BN batch size).
    key: the batch order for ``'batch'`` (default ``jax.random.key(0)``).

  Returns:
    A copy of ``batch_stats`` holding the population mean and variance.
  """
  if upstream not in UPSTREAM:
    raise ValueError(f'Unknown {upstream=}; valid: {list(UPSTREAM)}')
  if batch_size < 1:
    raise ValueError(f'{batch_size=} must be positive')
  if not read_statistics(batch_stats):
    raise ValueError('the model has no BatchNorm layers (batchnorm=False)')
  mean, std = jnp.asarray(mean), jnp.asarray(std)
  if upstream == 'batch':
    if batch_size > len(images):
      raise ValueError(f'{batch_size=} exceeds the {len(images)} examples')
    key = jax.random.key(0) if key is None else key
    total = _stream(graphs.train, params, batch_stats,
                    _training_batches(images, batch_size, key), mean, std)
    return with_statistics(batch_stats, [
        batchnorm.Statistics(m.mean, m.var) for m in total])
  fixed = []
  for layer in range(len(read_statistics(batch_stats))):
    stats = with_statistics(batch_stats, fixed)
    total = _stream(graphs.eval, params, stats, data_lib.padded_batches(images, batch_size),
                    mean, std)
    fixed.append(batchnorm.Statistics(total[layer].mean, total[layer].var))
  return with_statistics(batch_stats, fixed)


def relative_error(estimate: Sequence[batchnorm.Statistics],
                   population: Sequence[batchnorm.Statistics]) -> dict[str, float]:
  """How far estimated BN statistics (e.g. running averages) are from the population.

  Returns, averaged over every unit of every layer:
    ``mean_error``: |μ_est − μ_pop| / σ_pop, the mean's error in population std units;
    ``var_error``: |ln(σ²_est / σ²_pop)|, the variance's error as a log ratio
      (0.1 ≈ 10 % off), symmetric in over- and under-estimation.
  """
  if len(estimate) != len(population) or not population:
    raise ValueError(f'need the same positive number of layers; got {len(estimate)} '
                     f'and {len(population)}')
  mean_errors, var_errors = [], []
  for est, pop in zip(estimate, population):
    pop_var = np.asarray(pop.var, np.float64)
    mean_errors.append(np.abs(np.asarray(est.mean, np.float64) - pop.mean)
                       / np.sqrt(pop_var))
    var_errors.append(np.abs(np.log(np.asarray(est.var, np.float64) / pop_var)))
  return {'mean_error': float(np.mean(np.concatenate(mean_errors))),
          'var_error': float(np.mean(np.concatenate(var_errors)))}
