"""Statistics of one training step: how signal and gradient flow through each layer.

Computed inside the jitted train step, every ``diagnostics_every`` steps (the step
has a second compiled variant for them, so ordinary steps pay nothing), from the
step's own batch, gradients and update:

- per hidden layer: activation mean and std, pre-activation std, the saturated
  fraction (tanh, sigmoid, SELU) or dead fraction (ReLU, leaky ReLU), and the std of
  ∂L/∂activation;
- per hidden layer, percentiles (:func:`layer_percentiles`): the 2nd and 98th of
  its activations (Glorot & Bengio, 2010, fig. 2–3) and the 15th, 50th and 85th of
  its first unit's pre-activation over the batch (Ioffe & Szegedy, 2015, fig. 1);
- per weight matrix: weight std, gradient std, gradient:data ratio and the
  update:data ratio of the update the optimizer actually applied;
- global: gradient norm and parameter norm;
- samples of activations, activation gradients, weights and weight gradients, for
  histograms.

The quantities follow the diagnostics of Karpathy, "Building makemore Part 3:
Activations & Gradients, BatchNorm" (2022), and the signal-propagation view of
Glorot & Bengio (2010).
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fundamentals import activations
from fundamentals import losses
from fundamentals import models

SAMPLE_SIZE = 4096
"""Values kept per tensor for histograms; larger tensors are subsampled."""

UPDATE_RATIO_FLOOR = 1e-20
"""std(Δw)/std(w) is floored here before log10, so a zero update stays finite (−20)."""

ACTIVATION_PERCENTILES = (2, 98)
"""Percentiles of a layer's activations (all examples × units): the band Glorot &
Bengio (2010) shade around the mean in fig. 2–3."""

UNIT_PERCENTILES = (15, 50, 85)
"""Percentiles over the batch of one unit's pre-activation: Ioffe & Szegedy (2015),
fig. 1(b, c)."""

UPDATE_TO_DATA_TARGET = -3.0
"""log10(std Δw / std w) ≈ −3: each step moves a weight by ~0.1% of its spread
(Karpathy, 2022); the doctor's target and the figure's guide line."""


def unit_health(activation_name: str) -> str | None:
  """The per-layer failure to watch: 'saturated_fraction', 'dead_fraction' or None.

  From ``activations.INACTIVE``: saturated elements (|tanh z| > 0.97 and the like)
  or dead units (pre-activation ≤ 0 on the whole batch).
  """
  kind = activations.INACTIVE.get(activation_name)
  return f'{kind}_fraction' if kind else None


def layer_statistics(layer: dict[str, jax.Array], activation_grad: jax.Array | None = None,
                     *, activation_name: str,
                     threshold: float = activations.SATURATION_THRESHOLD
                     ) -> dict[str, jax.Array]:
  """The statistics of one hidden layer over a batch ``[B, units]``: the one
  vocabulary every per-layer measurement uses (diagnostics, signal propagation).

  Args:
    layer: the layer's taps (``models.MLP.forward``): ``preactivation`` z and
      ``activation`` h.
    activation_grad: ∂L/∂h, if measured (L the batch-mean loss, so it scales as 1/B).
    activation_name: the activation, for its failure mode (:func:`unit_health`).
    threshold: θ of saturation.

  Returns:
    ``activation_mean``, ``activation_std``, ``preactivation_mean``,
    ``preactivation_std`` (pooled over examples and units), ``activation_grad_std``
    when given the gradient, and ``saturated_fraction`` or ``dead_fraction`` where
    the activation has that notion (``activations.inactive_fraction``).
  """
  z, h = layer['preactivation'], layer['activation']
  stats = {
      'activation_mean': jnp.mean(h),
      'activation_std': jnp.std(h),
      'preactivation_mean': jnp.mean(z),
      'preactivation_std': jnp.std(z),
  }
  if activation_grad is not None:
    stats['activation_grad_std'] = jnp.std(activation_grad)
  health = unit_health(activation_name)
  if health:
    stats[health] = activations.inactive_fraction(activation_name, z, threshold=threshold)
  return stats


def layer_percentiles(layer: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Percentiles of one hidden layer over a batch ``[B, units]``: its tails, and one
  unit's distribution followed through training.

  Linear interpolation between order statistics (NumPy's default). One sort of the
  layer's B·units activations and one of B pre-activations: cheap beside the step.

  Args:
    layer: the layer's taps (``models.MLP.forward``): ``activation`` h and
      ``preactivation`` z (with BatchNorm, BN's output: what the nonlinearity sees).

  Returns:
    ``activation_p02``, ``activation_p98`` (:data:`ACTIVATION_PERCENTILES`, pooled
    over examples and units) and ``preactivation_unit0_p15``, ``_p50``, ``_p85``
    (:data:`UNIT_PERCENTILES` of z[:, 0] over the batch).
  """
  h = jnp.percentile(layer['activation'], jnp.array(ACTIVATION_PERCENTILES))
  z = jnp.percentile(layer['preactivation'][:, 0], jnp.array(UNIT_PERCENTILES))
  return {**{f'activation_p{q:02d}': h[i] for i, q in enumerate(ACTIVATION_PERCENTILES)},
          **{f'preactivation_unit0_p{q:02d}': z[i] for i, q in enumerate(UNIT_PERCENTILES)}}


def parameter_name(path) -> str:
  """'dense/0/kernel' from a pytree key path (Variable ``.value`` keys dropped)."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    elif isinstance(key, jax.tree_util.GetAttrKey) and key.name != 'value':
      parts.append(key.name)
  return '/'.join(parts)


def weight_matrices(params) -> dict[str, jax.Array]:
  """The parameters with two or more dimensions (kernels), by name.

  Vectors (biases, BatchNorm scale and shift) start as constants with std 0, so
  ratios to their spread are undefined at init; as in Karpathy's update-ratio plot,
  only weight matrices are tracked.
  """
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return {parameter_name(path): leaf for path, leaf in leaves if jnp.ndim(leaf) >= 2}


def parameter_statistics(weight: jax.Array, grad: jax.Array,
                         new_weight: jax.Array | None = None) -> dict[str, jax.Array]:
  """Weight std, gradient std, gradient:data ratio and (given the new value) update:data.

  grad_to_data = std(∂L/∂w)/std(w); update_to_data = log10(std(Δw)/std(w)) with
  Δw = w_new − w the update the optimizer applied (momentum, schedule and all).
  Around −3 is healthy: each step changes a weight by ~0.1% of its spread
  (Karpathy, 2022).
  """
  weight_std = jnp.std(weight)
  stats = {'weight_std': weight_std, 'grad_std': jnp.std(grad),
           'grad_to_data': jnp.std(grad) / weight_std}
  if new_weight is not None:
    ratio = jnp.std(new_weight - weight) / weight_std
    stats['update_to_data'] = jnp.log10(jnp.maximum(ratio, UPDATE_RATIO_FLOOR))
  return stats


def activation_gradients(graph: nnx.GraphDef, params, batch_stats, x: jax.Array,
                         labels: jax.Array) -> tuple[list[dict[str, jax.Array]],
                                                     list[jax.Array]]:
  """Hidden layers' taps (``models.MLP.forward``) and ∂L/∂h_l for each layer.

  L is the batch-mean softmax cross-entropy of ``x``; training mode as the graph says
  (the BatchNorm statistics it would update are discarded). The gradients are those
  of zero perturbations of each activation (``forward(x, perturb=...)``).
  """
  shapes = jax.eval_shape(
      lambda p, b, x: models.merge(graph, p, b).forward(x)[1], params, batch_stats, x)
  probes = [jnp.zeros(layer['activation'].shape, layer['activation'].dtype)
            for layer in shapes]

  def loss_of_probes(probes):
    logits, layers = models.merge(graph, params, batch_stats).forward(x, perturb=probes)
    return losses.softmax_cross_entropy(logits, labels), layers

  grads, layers = jax.grad(loss_of_probes, has_aux=True)(probes)
  return layers, grads


def sample(values: jax.Array, size: int = SAMPLE_SIZE) -> jax.Array:
  """At most ``size`` of the values, flattened: all of them, or a fixed random subset.

  The indices are drawn once per shape with NumPy (seed 0), so the same entries are
  followed through training.
  """
  flat = jnp.ravel(values)
  if flat.size <= size:
    return flat
  indices = np.random.default_rng(0).choice(flat.size, size, replace=False)
  return flat[np.sort(indices)]


def measure(graph: nnx.GraphDef, params, batch_stats, x: jax.Array, labels: jax.Array,
            *, grads, new_params=None) -> dict[str, Any]:
  """All diagnostics of a step whose parameters ``params`` got ``grads`` on ``(x, labels)``.

  Args:
    graph: the training-mode graph of the model.
    params, batch_stats: the state before the update.
    x, labels: the step's (normalized, augmented) batch.
    grads: ∂L/∂params that the optimizer received.
    new_params: the parameters after the update, for the update:data ratio.

  Returns:
    ``{'grad_norm', 'param_norm', 'layers': [per hidden layer], 'percentiles': [per
    hidden layer, :func:`layer_percentiles`], 'params': {name: ...}, 'samples':
    {'activation': [...], 'activation_grad': [...], 'weight': {...}, 'weight_grad':
    {...}}}``; everything but ``samples`` is scalars.
  """
  activation_name = models.merge(graph, params, batch_stats).activation_name
  layers, layer_grads = activation_gradients(graph, params, batch_stats, x, labels)
  weights = weight_matrices(params)
  weight_grads = weight_matrices(grads)
  new_weights = weight_matrices(new_params) if new_params is not None else {}
  return {
      'grad_norm': optax.global_norm(grads),  # ‖g‖₂ = √Σ g_i² over every leaf
      'param_norm': optax.global_norm(params),
      'layers': [layer_statistics(layer, grad, activation_name=activation_name)
                 for layer, grad in zip(layers, layer_grads)],
      'percentiles': [layer_percentiles(layer) for layer in layers],
      'params': {name: parameter_statistics(w, weight_grads[name], new_weights.get(name))
                 for name, w in weights.items()},
      'samples': {
          'activation': [sample(layer['activation']) for layer in layers],
          'activation_grad': [sample(grad) for grad in layer_grads],
          'weight': {name: sample(w) for name, w in weights.items()},
          'weight_grad': {name: sample(g) for name, g in weight_grads.items()},
      },
  }


def to_host(diagnostics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """Splits fetched diagnostics into JSON-ready scalars and NumPy samples."""
  scalars = {k: v for k, v in diagnostics.items() if k != 'samples'}
  scalars = jax.tree.map(float, scalars)
  samples = jax.tree.map(np.asarray, diagnostics['samples'])
  return scalars, samples


def histograms(samples: dict[str, Any], *, bins: int = 50) -> dict[str, Any]:
  """Histogram counts of each sampled tensor: ``{kind: {name: {'edges', 'counts'}}}``.

  Layers are named ``layer0, layer1, …`` (hidden layers in order); parameters by
  their path. Bins span each tensor's finite range; non-finite values are dropped.
  """
  result = {}
  for kind, values in samples.items():
    named = (values.items() if isinstance(values, dict)
             else ((f'layer{i}', v) for i, v in enumerate(values)))
    result[kind] = {}
    for name, v in named:
      v = np.asarray(v, np.float64)
      v = v[np.isfinite(v)]
      if v.size == 0:
        continue
      counts, edges = np.histogram(v, bins=bins)
      result[kind][name] = {'edges': edges.tolist(), 'counts': counts.tolist()}
  return result


def cumulative_counts(histogram: dict[str, Any], values) -> np.ndarray:
  """How many of a histogram's values lie below each of ``values``, taking them as
  spread evenly within each bin: its cumulative counts, linearly interpolated.

  Exact at the bin edges; 0 below the first edge and the total above the last.
  """
  cumulative = np.concatenate([[0.0], np.cumsum(np.asarray(histogram['counts'], float))])
  return np.interp(values, np.asarray(histogram['edges'], float), cumulative)


def rebin(histogram: dict[str, Any], edges) -> np.ndarray:
  """A histogram's counts on other ``edges`` (:func:`cumulative_counts`), so that the
  histograms of different steps, each on its own range, share one grid. When
  ``edges`` span the histogram's range, the counts keep their total."""
  return np.diff(cumulative_counts(histogram, edges))


def is_finite(scalars: dict[str, Any]) -> bool:
  """Whether the gradient and parameter norms are finite numbers."""
  return all(math.isfinite(scalars[k]) for k in ('grad_norm', 'param_norm'))
