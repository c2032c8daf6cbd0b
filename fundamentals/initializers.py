"""Weight initializers as pure functions with the ``jax.nn.initializers`` signature.

Every initializer is ``init(key, shape, dtype=float32) -> Array``. Schemes with a
scale are built by factories (optax style) that take a ``gain``, so
``kaiming_normal(gain=gain('relu'))`` is He et al.'s N(0, 2/fan_in).

Conventions, and where they differ from the two libraries people compare against:

* **Layout.** Kernels use the Flax layout ``[..., fan_in, fan_out]``;
  ``torch.nn.init`` sees ``nn.Linear.weight`` as ``[out, in]``. The fans are the same
  numbers; only the axes differ (:func:`compute_fans`).
* **Normals are untruncated** by default, matching the papers' formulas.
  ``jax.nn.initializers.{lecun,glorot,he}_normal`` draw from a normal truncated at ±2σ
  and divide by 0.87962566… (the std of a standard normal truncated to [−2, 2]) so the
  variance still equals the formula; the ``*_truncated_normal`` entries here do the same.
  ``torch.nn.init.*_normal_`` are untruncated, as here.
* **Defaults of the frameworks' layers are neither.** ``nn.Linear`` in PyTorch
  initializes with U(±1/√fan_in), i.e. Var = 1/(3·fan_in) (``'torch_linear_default'``,
  alias ``'standard_uniform'``: Glorot & Bengio's (2010) "standard" initialization);
  ``flax.nnx.Linear`` uses ``lecun_normal`` (truncated).
* **Gains.** Kaiming and orthogonal take the gain of the layer's activation
  (:func:`gain`) when built by :func:`get_initializer` from a model config: their
  definitions are "keep the second moment through *this* nonlinearity". LeCun and
  Xavier/Glorot keep their papers' definitions (gain 1) unless a ``gain`` is passed
  explicitly: Glorot & Bengio derived Var = 2/(fan_in + fan_out) for a linear regime,
  and it is exactly that definition which makes a ReLU net shrink by 1/√2 per layer.

The one data-dependent scheme, LSUV, cannot be a per-tensor initializer: :func:`lsuv`
is a function of (params, apply_fn, batch) applied after an orthogonal pre-init.
"""

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from fundamentals import activations

Initializer = Callable[..., jax.Array]

# Std of a standard normal truncated to [−2, 2] (jax.nn.initializers' constant).
TRUNCATED_NORMAL_STD = 0.87962566103423978


def gain(activation: str, param: float | None = None) -> float:
  """Recommended gain g for a layer followed by ``activation``: Var(W) = g²·base.

  ============ ========================== ===========================================
  activation   gain                       source
  ============ ========================== ===========================================
  identity     1                          linear layer (``'linear'`` is a synonym)
  sigmoid      1                          PyTorch ``calculate_gain``
  tanh         5/3                        PyTorch ``calculate_gain`` (an empirical
                                          choice; E[tanh(z)²]⁻¹ᐟ² = 1.593 at q = 1)
  relu         √2                         He et al., 2015: E[ReLU(z)²] = q/2
  leaky_relu   √(2/(1+a²)), a = ``param``  He et al., 2015 (PReLU); a = 0.01 default
  selu         3/4                        PyTorch ``calculate_gain``; note that
                                          self-normalization (Klambauer et al., 2017)
                                          needs gain 1 (LeCun normal) instead
  gelu         (1/3 + 1/(2π√3))^(−1/2)    this module: 1/√E[GELU(z)²], z ~ N(0, 1),
               = 1.5335                   the same rule that gives ReLU its √2
  ============ ========================== ===========================================

  Args:
    activation: activation name.
    param: the negative slope a of leaky ReLU (default 0.01); only for leaky_relu.

  Returns:
    The gain g.
  """
  if param is not None and activation != 'leaky_relu':
    raise ValueError(f'{param=} applies only to leaky_relu, not {activation!r}')
  if activation == 'leaky_relu':
    slope = activations.LEAKY_RELU_SLOPE if param is None else param
    return math.sqrt(2.0 / (1.0 + slope ** 2))
  try:
    return GAINS[activation]
  except KeyError:
    raise ValueError(
        f'No gain known for activation {activation!r}; valid: '
        f'{sorted([*GAINS, "leaky_relu"])}') from None


GAINS: dict[str, float] = {
    'identity': 1.0,
    'linear': 1.0,
    'sigmoid': 1.0,
    'tanh': 5.0 / 3.0,
    'relu': math.sqrt(2.0),
    'selu': 0.75,
    'gelu': 1.0 / math.sqrt(1.0 / 3.0 + 1.0 / (2.0 * math.pi * math.sqrt(3.0))),
}


def compute_fans(shape: Sequence[int]) -> tuple[int, int]:
  """Returns (fan_in, fan_out) of a kernel of the given shape.

  Dense kernels are ``[fan_in, fan_out]``. Convolution kernels of any rank are
  ``[*receptive_field, in_channels, out_channels]`` (Flax's layout) and both fans are
  multiplied by the receptive-field size ∏ receptive_field: a 3×3 convolution from 16
  to 32 channels has fan_in = 9·16 and fan_out = 9·32, as in ``jax.nn.initializers``
  and ``torch.nn.init`` (whose layout is ``[out, in, *receptive_field]``).
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


def scaled(init: Initializer, factor: float) -> Initializer:
  """Returns ``factor · init``: Var scales by factor².

  A small factor (0.1, 0.01) on the output layer gives near-uniform initial
  predictions, loss ≈ ln N; factor 0 is :func:`zeros`.
  """
  if not (math.isfinite(factor) and factor >= 0):
    raise ValueError(f'{factor=} must be finite and >= 0')

  def init_scaled(key, shape, dtype=jnp.float32) -> jax.Array:
    return factor * init(key, shape, dtype)

  return init_scaled


DISTRIBUTIONS = ('normal', 'truncated_normal', 'uniform')


def variance_scaling(variance: Callable[[int, int], float], *, gain: float = 1.0,
                     distribution: str = 'normal') -> Initializer:
  """W with mean 0 and Var(W) = gain² · variance(fan_in, fan_out).

  Args:
    variance: the base variance as a function of the fans (:func:`compute_fans`).
    gain: the factor g on the std.
    distribution: ``'normal'`` (untruncated), ``'truncated_normal'`` (at ±2σ, then
      divided by 0.87962566 to restore the variance, as ``jax.nn.initializers``), or
      ``'uniform'`` U(±√3·σ).

  Returns:
    ``init(key, shape, dtype)``.
  """
  if distribution not in DISTRIBUTIONS:
    raise ValueError(f'{distribution=} must be one of {DISTRIBUTIONS}')
  if not (math.isfinite(gain) and gain >= 0):
    raise ValueError(f'{gain=} must be finite and >= 0')

  def init(key, shape, dtype=jnp.float32) -> jax.Array:
    std = gain * math.sqrt(variance(*compute_fans(shape)))
    if distribution == 'normal':
      return std * jax.random.normal(key, shape, dtype)
    if distribution == 'truncated_normal':
      return (std / TRUNCATED_NORMAL_STD) * jax.random.truncated_normal(
          key, -2.0, 2.0, shape, dtype)
    limit = math.sqrt(3.0) * std
    return jax.random.uniform(key, shape, dtype, -limit, limit)

  return init


def _lecun(fan_in, fan_out):
  del fan_out
  return 1.0 / fan_in


def _glorot(fan_in, fan_out):
  return 2.0 / (fan_in + fan_out)


def _fan(mode: str) -> Callable[[int, int], float]:
  if mode not in ('fan_in', 'fan_out'):
    raise ValueError(f"{mode=} must be 'fan_in' or 'fan_out'")
  return _lecun if mode == 'fan_in' else lambda fan_in, fan_out: 1.0 / fan_out


def lecun_normal(gain: float = 1.0, *, truncated: bool = False) -> Initializer:
  """W ~ N(0, gain²/fan_in) (LeCun et al., 1998, "Efficient BackProp").

  With gain 1 this is the initializer SELU's self-normalization assumes
  (Klambauer et al., 2017).
  """
  return variance_scaling(_lecun, gain=gain,
                          distribution='truncated_normal' if truncated else 'normal')


def lecun_uniform(gain: float = 1.0) -> Initializer:
  """W ~ U(±gain·√(3/fan_in)): Var = gain²/fan_in (LeCun et al., 1998)."""
  return variance_scaling(_lecun, gain=gain, distribution='uniform')


def xavier_normal(gain: float = 1.0, *, truncated: bool = False) -> Initializer:
  """W ~ N(0, gain² · 2/(fan_in + fan_out)) (Glorot & Bengio, 2010).

  The average of the forward (1/fan_in) and backward (1/fan_out) conditions of a
  linear net. Glorot's definition uses gain 1, so under ReLU the activation std
  shrinks by about 1/√2 per square layer; ``torch.nn.init.xavier_normal_`` also
  defaults to gain 1.
  """
  return variance_scaling(_glorot, gain=gain,
                          distribution='truncated_normal' if truncated else 'normal')


def xavier_uniform(gain: float = 1.0) -> Initializer:
  """W ~ U(±gain·√(6/(fan_in + fan_out))): Glorot & Bengio's (2010) eq. 16."""
  return variance_scaling(_glorot, gain=gain, distribution='uniform')


def kaiming_normal(gain: float = math.sqrt(2.0), mode: str = 'fan_in', *,
                   truncated: bool = False) -> Initializer:
  """W ~ N(0, gain²/fan) (He et al., 2015); fan = fan_in (default) or fan_out.

  gain √2 gives He's N(0, 2/fan_in) for ReLU (forward variance preserved); mode
  ``'fan_out'`` preserves the backward variance instead. gain 5/3 gives
  N(0, (5/3)²/fan_in) for tanh.
  """
  return variance_scaling(_fan(mode), gain=gain,
                          distribution='truncated_normal' if truncated else 'normal')


def kaiming_uniform(gain: float = math.sqrt(2.0), mode: str = 'fan_in') -> Initializer:
  """W ~ U(±gain·√(3/fan)) (He et al., 2015): Var = gain²/fan.

  ``torch.nn.Linear``'s default is this with gain √(2/(1+5)) = 1/√3 (PyTorch calls it
  ``kaiming_uniform_(a=√5)``), i.e. U(±1/√fan_in).
  """
  return variance_scaling(_fan(mode), gain=gain, distribution='uniform')


def torch_linear_default(key, shape, dtype=jnp.float32) -> jax.Array:
  """W ~ U(±1/√fan_in), Var = 1/(3·fan_in): PyTorch's ``nn.Linear`` default.

  A third of LeCun's variance, so a deep net built from it shrinks its signal even
  without a nonlinearity.
  """
  return kaiming_uniform(gain=1.0 / math.sqrt(3.0))(key, shape, dtype)


def orthogonal(gain: float = 1.0) -> Initializer:
  """W = gain · Q with Q a random (semi-)orthogonal matrix (Saxe et al., 2013).

  The kernel is viewed as a matrix ``[∏ shape[:-1], shape[-1]]``. Q is drawn from the
  Haar measure: the QR decomposition of a Gaussian matrix with the signs of R's
  diagonal folded into Q (Mezzadri, 2007). Tall (rows ≥ cols) gives QᵀQ = I, so each
  output unit has a unit-norm weight vector; wide gives QQᵀ = I. Every entry then has
  Var = gain²/max(rows, cols): for a square layer the same second moment as
  Kaiming with that gain, but all singular values equal 1, so a deep linear net
  preserves the norm of every input exactly (dynamical isometry).
  ``jax.nn.initializers.orthogonal`` and ``torch.nn.init.orthogonal_`` agree.
  """
  if not (math.isfinite(gain) and gain >= 0):
    raise ValueError(f'{gain=} must be finite and >= 0')

  def init(key, shape, dtype=jnp.float32) -> jax.Array:
    if len(shape) < 2:
      raise ValueError(f'orthogonal needs a kernel of rank >= 2, got {shape=}')
    rows, cols = math.prod(shape[:-1]), shape[-1]
    # Drawn and decomposed in the requested dtype (at least float32, which QR needs):
    # Q of a float64 kernel is orthogonal to float64 precision, not float32's.
    a = jax.random.normal(key, (max(rows, cols), min(rows, cols)),
                          jnp.promote_types(dtype, jnp.float32))
    q, r = jnp.linalg.qr(a)
    q = q * jnp.sign(jnp.diagonal(r))
    if rows < cols:
      q = q.T
    return (gain * q).reshape(shape).astype(dtype)

  return init


def _orthogonal_variance(shape: Sequence[int]) -> float:
  return 1.0 / max(math.prod(shape[:-1]), shape[-1])


class Scheme(NamedTuple):
  """A registry entry.

  Attributes:
    factory: ``factory(gain) -> Initializer``.
    variance: Var(W) at gain 1 as a function of the kernel shape: what theory needs.
    gain: ``'activation'`` (takes the layer's activation gain by default),
      ``'one'`` (gain 1 unless one is passed), or ``None`` (no gain).
    default_gain: the gain of an ``'activation'`` scheme when no activation is named:
      the one of its paper's formula (Kaiming: √2, He et al.'s N(0, 2/fan_in), as
      ``torch.nn.init.kaiming_normal_`` and ``jax.nn.initializers.he_normal``;
      orthogonal: 1).
  """
  factory: Callable[[float], Initializer]
  variance: Callable[[Sequence[int]], float]
  gain: str | None
  default_gain: float = 1.0


def _fans(variance: Callable[[int, int], float]) -> Callable[[Sequence[int]], float]:
  return lambda shape: variance(*compute_fans(shape))


INITIALIZERS: dict[str, Scheme] = {
    'normal': Scheme(lambda g: normal, lambda shape: 1.0, None),
    'zeros': Scheme(lambda g: zeros, lambda shape: 0.0, None),
    'torch_linear_default': Scheme(lambda g: torch_linear_default,
                                   _fans(lambda i, o: 1.0 / (3.0 * i)), None),
    'lecun_normal': Scheme(lecun_normal, _fans(_lecun), 'one'),
    'lecun_truncated_normal': Scheme(lambda g: lecun_normal(g, truncated=True),
                                     _fans(_lecun), 'one'),
    'lecun_uniform': Scheme(lecun_uniform, _fans(_lecun), 'one'),
    'xavier_normal': Scheme(xavier_normal, _fans(_glorot), 'one'),
    'xavier_truncated_normal': Scheme(lambda g: xavier_normal(g, truncated=True),
                                      _fans(_glorot), 'one'),
    'xavier_uniform': Scheme(xavier_uniform, _fans(_glorot), 'one'),
    'kaiming_normal': Scheme(kaiming_normal, _fans(_lecun), 'activation', math.sqrt(2.0)),
    'kaiming_truncated_normal': Scheme(lambda g: kaiming_normal(g, truncated=True),
                                       _fans(_lecun), 'activation', math.sqrt(2.0)),
    'kaiming_uniform': Scheme(kaiming_uniform, _fans(_lecun), 'activation', math.sqrt(2.0)),
    'orthogonal': Scheme(orthogonal, _orthogonal_variance, 'activation'),
}
# Short names used on the command line.
ALIASES: dict[str, str] = {
    'lecun': 'lecun_normal',
    'xavier': 'xavier_normal',
    'glorot': 'xavier_normal',
    'kaiming': 'kaiming_normal',
    'he': 'kaiming_normal',
    # Glorot & Bengio (2010), eq. 1: their "standard" initialization U(±1/√n_in).
    'standard_uniform': 'torch_linear_default',
}
# Data-dependent schemes (not per-tensor initializers): name -> the per-tensor
# initializer the model is built with before the data-dependent step.
DATA_DEPENDENT: dict[str, str] = {
    'lsuv': 'orthogonal',
}


def names() -> list[str]:
  """All accepted per-tensor initializer names, aliases included."""
  return sorted([*INITIALIZERS, *ALIASES])


def get_scheme(name: str) -> Scheme:
  """Returns the registry entry ``name`` (aliases accepted); ValueError lists names."""
  canonical = ALIASES.get(name, name)
  if canonical not in INITIALIZERS:
    hint = (f' ({name!r} is data-dependent: build with '
            f'{DATA_DEPENDENT[name]!r}, then apply initializers.{name})'
            if name in DATA_DEPENDENT else '')
    raise ValueError(f'Unknown initializer {name!r}{hint}; valid: {names()}; '
                     f'data-dependent: {sorted(DATA_DEPENDENT)}')
  return INITIALIZERS[canonical]


def _resolve_gain(name: str, scheme: Scheme, activation: str | None,
                  gain_value: float | None) -> float:
  if scheme.gain is None:
    if gain_value is not None:
      raise ValueError(f'initializer {name!r} takes no gain, got gain={gain_value}')
    return 1.0
  if gain_value is not None:
    return gain_value
  if scheme.gain != 'activation':
    return 1.0
  return scheme.default_gain if activation is None else gain(activation)


def get_initializer(name: str, *, activation: str | None = None,
                    gain: float | None = None) -> Initializer:  # pylint: disable=redefined-outer-name
  """Returns the initializer ``name`` for a layer followed by ``activation``.

  Args:
    name: a key of ``INITIALIZERS`` or ``ALIASES``.
    activation: the layer's activation. Kaiming and orthogonal take its gain
      (``'identity'``: a linear layer, gain 1); without one they keep their papers'
      formulas (Kaiming: He's N(0, 2/fan_in); orthogonal: gain 1). LeCun and Xavier
      use their papers' gain 1; N(0, 1), zeros and PyTorch's default have no gain.
    gain: an explicit gain overriding that default (e.g. Xavier with tanh's 5/3, as
      ``torch.nn.init.xavier_uniform_(w, gain=calculate_gain('tanh'))``).

  Returns:
    ``init(key, shape, dtype)``.
  """
  scheme = get_scheme(name)
  return scheme.factory(_resolve_gain(name, scheme, activation, gain))


def weight_variance(name: str, shape: Sequence[int], *, activation: str | None = None,
                    gain: float | None = None) -> float:  # pylint: disable=redefined-outer-name
  """Var(W) that :func:`get_initializer` (same arguments) draws a kernel of ``shape`` with.

  Mean-field theory needs σ_w² = fan_in · Var(W): e.g. Kaiming with ReLU gives 2,
  Xavier on a square layer 1, N(0, 1) gives fan_in.
  """
  scheme = get_scheme(name)
  return _resolve_gain(name, scheme, activation, gain) ** 2 * scheme.variance(shape)


def lsuv(params: Sequence[jax.Array],
         apply_fn: Callable[[list[jax.Array], Any], Sequence[jax.Array]],
         batch: Any, *, target_variance: float = 1.0, tolerance: float = 0.1,
         max_iterations: int = 10) -> tuple[list[jax.Array], list[dict[str, float]]]:
  """Layer-sequential unit-variance rescaling (Mishkin & Matas, 2016, "All you need
  is a good init").

  Start from orthogonal kernels (build the model with ``'orthogonal'``). Then, layer
  by layer from the input, run the batch forward, measure the variance v of the
  layer's output (its Dense output, before the activation) and divide the kernel by
  √(v/target), until |v − target| ≤ tolerance or ``max_iterations`` passes. Earlier
  layers are fixed before later ones are measured. One pass suffices for a layer
  without bias (its output variance is quadratic in the kernel scale); a nonzero
  bias makes it iterative.

  Args:
    params: the kernels to rescale, one per layer in forward order.
    apply_fn: ``apply_fn(params, batch)`` returns each layer's output, in order.
    batch: the data passed to ``apply_fn`` (one mini-batch).
    target_variance: the output variance to reach (1 in the paper).
    tolerance: accepted |Var − target|.
    max_iterations: bound on the rescalings per layer (T_max in the paper).

  Returns:
    The rescaled kernels and, per layer, ``{'iterations', 'variance'}`` (the final
    output variance; outside the tolerance if ``max_iterations`` ran out).
  """
  if not target_variance > 0:
    raise ValueError(f'{target_variance=} must be positive')
  if not tolerance > 0:
    raise ValueError(f'{tolerance=} must be positive')
  if max_iterations < 1:
    raise ValueError(f'{max_iterations=} must be >= 1')
  params = list(params)
  info = []
  for layer in range(len(params)):
    iterations = 0
    while True:
      variance = float(jnp.var(apply_fn(params, batch)[layer]))
      if not (math.isfinite(variance) and variance > 0):
        raise ValueError(f'layer {layer} output variance is {variance}; LSUV needs '
                         'a finite positive variance (is the kernel all zeros?)')
      if abs(variance - target_variance) <= tolerance or iterations == max_iterations:
        break
      params[layer] = params[layer] * math.sqrt(target_variance / variance)
      iterations += 1
    info.append({'iterations': iterations, 'variance': variance})
  return params, info
