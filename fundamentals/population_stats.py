"""BatchNorm at inference: population statistics (exact, streaming, layer by layer),
and what evaluating with a batch's own statistics does.

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
import time
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
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

  The ``dense`` taps of ``MLP.forward``, in the mode the model is in (training mode
  normalizes with batch statistics, evaluation mode with the stored ones).
  """
  if not model.norms:
    raise ValueError('the model has no BatchNorm layers (batchnorm=False)')
  return [layer['dense'] for layer in model.forward(x)[1]]


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
  inputs = bn_inputs(models.merge(graph, params, batch_stats),
                     data_lib.normalize(images, mean, std))
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


def evaluate_with_batch_statistics(graphs, params: nnx.State, batch_stats: nnx.State,
                                   images: np.ndarray, labels: np.ndarray, *, mean, std,
                                   batch_size: int) -> dict[str, float]:
  """Loss and accuracy in *training* mode: each batch normalized by its own statistics.

  What a model does when ``model.eval()`` is forgotten: every prediction depends on
  the other examples of its batch (and a batch of one maps every input to β).
  """

  @jax.jit
  def sums(params, batch_stats, images, labels):
    logits, _ = models.apply(graphs.train, params, batch_stats,
                             data_lib.normalize(images, mean, std))
    return (jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, labels)),
            jnp.sum(jnp.argmax(logits, -1) == labels))

  totals = [sums(params, batch_stats, images[start:start + batch_size],
                 labels[start:start + batch_size])
            for start in range(0, len(labels), batch_size)]
  loss_sum, correct = np.sum(jax.device_get(totals), axis=0)
  return {'loss': float(loss_sum) / len(labels), 'accuracy': float(correct) / len(labels)}


def single_example_gap(graphs, params: nnx.State, batch_stats: nnx.State,
                       images: np.ndarray, *, mean, std, num_examples: int = 20) -> float:
  """max |logits(example alone) − logits(example in a batch)| in evaluation mode:
  0 up to rounding, since evaluation mode treats every example on its own."""
  apply = jax.jit(models.apply, static_argnums=0)
  x = data_lib.normalize(jnp.asarray(images[:max(num_examples, 500)]), mean, std)
  batch, _ = apply(graphs.eval, params, batch_stats, x)
  return max(float(jnp.max(jnp.abs(
      apply(graphs.eval, params, batch_stats, x[i:i + 1])[0][0] - batch[i])))
             for i in range(num_examples))


def compare_inference_statistics(graphs, state, dataset: data_lib.Dataset, *,
                                 batch_size: int, test_batch_sizes=(8, 1),
                                 key: jax.Array | None = None,
                                 running: str = 'running averages') -> dict:
  """A trained BN model evaluated on the test set with every source of statistics.

  Rows, each with ``statistics``, ``description``, ``test_accuracy``, ``test_loss``
  and, for population statistics, how far the running averages are from them
  (:func:`relative_error`): the running averages (described by ``running``);
  population statistics layer by layer and in one pass (``upstream='batch'``, over
  batches of ``batch_size`` drawn with ``key``); each test batch normalized by its
  own statistics (training mode) at the whole test set, ``batch_size`` and
  ``test_batch_sizes``. Also ``single_example_max_abs_diff`` (:func:`single_example_gap`).

  Args:
    graphs, state: ``train.Graphs`` and ``train.TrainState`` of the trained model.
    dataset: its data; population statistics come from the training split.
  """
  from fundamentals import train  # pylint: disable=g-import-not-at-top  # Above this module.
  params, stored = state.params, state.batch_stats
  mean, std = dataset.mean, dataset.std
  test = (dataset.test_images, dataset.test_labels)
  eval_step = train.make_eval_step(graphs)
  rows = []

  def add(statistics, description, result, stats=None):
    row = {'statistics': statistics, 'description': description,
           'test_accuracy': result['accuracy'], 'test_loss': result['loss']}
    if stats is not None:
      row.update(relative_error(read_statistics(stored), read_statistics(stats)))
    rows.append(row)

  add('running averages', running, train.evaluate(eval_step, state, *test, mean, std))
  for upstream, name, description in (
      ('population', 'population, layer by layer',
       'exact for the eval-mode network; upstream layers on population stats'),
      ('batch', 'population, one pass',
       'exact pooled moments; upstream layers in training mode')):
    start = time.time()
    stats = population_statistics(graphs, params, stored, dataset.train_images,
                                  mean=mean, std=std, upstream=upstream,
                                  batch_size=batch_size, key=key)
    add(name, f'{description} ({time.time() - start:.1f}s)',
        train.evaluate(eval_step, state._replace(batch_stats=stats), *test, mean, std),
        stats)
  num_test = len(dataset.test_labels)
  for size in sorted({num_test, min(batch_size, num_test), *test_batch_sizes},
                     reverse=True):
    add(f'test batch, B = {size}', 'training mode: each batch its own statistics',
        evaluate_with_batch_statistics(graphs, params, stored, *test, mean=mean, std=std,
                                       batch_size=size))
  return {'rows': rows, 'single_example_max_abs_diff': single_example_gap(
      graphs, params, stored, dataset.test_images, mean=mean, std=std)}
