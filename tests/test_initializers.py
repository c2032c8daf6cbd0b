import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from fundamentals import initializers

SHAPE = (400, 300)  # fan_in 400, fan_out 300: 120,000 samples per draw.
ACTIVATIONS = ['identity', 'tanh', 'relu']
# The gain table, written independently of the library.
GAINS = {'identity': 1.0, 'tanh': 5 / 3, 'relu': math.sqrt(2)}


def reference_variance(name, shape, activation):
  """The papers' formulas, written independently of the library."""
  receptive = math.prod(shape[:-2])
  fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
  g2 = GAINS[activation] ** 2
  return {
      'normal': 1.0,
      'zeros': 0.0,
      'torch_linear_default': 1 / (3 * fan_in),
      'lecun_normal': 1 / fan_in,
      'lecun_truncated_normal': 1 / fan_in,
      'lecun_uniform': 1 / fan_in,
      'xavier_normal': 2 / (fan_in + fan_out),
      'xavier_truncated_normal': 2 / (fan_in + fan_out),
      'xavier_uniform': 2 / (fan_in + fan_out),
      'kaiming_normal': g2 / fan_in,
      'kaiming_truncated_normal': g2 / fan_in,
      'kaiming_uniform': g2 / fan_in,
      'orthogonal': g2 / max(math.prod(shape[:-1]), shape[-1]),
  }[name]


def truncated_normal_moments(a=2.0):
  """Variance and kurtosis E[x⁴]/E[x²]² of N(0, 1) truncated to [−a, a]."""
  density = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
  mass = math.erf(a / math.sqrt(2))
  m2 = 1 - 2 * a * density / mass
  m4 = 3 * m2 - 2 * a ** 3 * density / mass
  return m2, m4 / m2 ** 2


def kurtosis_of(name):
  """E[w⁴]/E[w²]² of the distribution an entry is drawn from."""
  if 'uniform' in name or name == 'torch_linear_default':
    return 9 / 5
  if 'truncated' in name:
    return truncated_normal_moments()[1]
  return 3.0


def test_truncation_constant_is_the_std_of_a_truncated_normal():
  assert math.sqrt(truncated_normal_moments()[0]) == pytest.approx(
      initializers.TRUNCATED_NORMAL_STD, rel=1e-12)


@pytest.mark.parametrize('activation', ACTIVATIONS)
@pytest.mark.parametrize('name', sorted(initializers.INITIALIZERS))
def test_variance_matches_formula_within_sampling_error(name, activation):
  init = initializers.get_initializer(name, activation=activation)
  w = np.asarray(init(jax.random.key(0), SHAPE, jnp.float32), np.float64)
  assert w.shape == SHAPE
  expected = reference_variance(name, SHAPE, activation)
  assert initializers.weight_variance(name, SHAPE, activation=activation) == (
      pytest.approx(expected, rel=1e-12))
  if expected == 0:
    assert np.all(w == 0)
    return
  n = w.size
  if name == 'orthogonal':
    # Σ w² is fixed (unit-norm columns): the variance is exact up to the tiny mean².
    assert w.var() == pytest.approx(expected, rel=1e-3)
    return
  # Var of the sample variance of n i.i.d. draws is σ⁴(κ − 1)/n: allow 5 s.e.
  kurtosis = kurtosis_of(name)
  assert abs(w.var() - expected) < 5 * expected * math.sqrt((kurtosis - 1) / n)
  assert abs(w.mean()) < 5 * math.sqrt(expected / n)
  # The shape of the distribution: κ's own s.e. is about √(96/n) for a normal.
  measured_kurtosis = np.mean((w - w.mean()) ** 4) / w.var() ** 2
  assert abs(measured_kurtosis - kurtosis) < 5 * math.sqrt(96 / n)


@pytest.mark.parametrize('name', ['lecun_truncated_normal', 'xavier_truncated_normal',
                                  'kaiming_truncated_normal', 'lecun_uniform',
                                  'xavier_uniform', 'kaiming_uniform',
                                  'torch_linear_default'])
def test_bounded_distributions_respect_their_bounds(name):
  w = np.asarray(initializers.get_initializer(name, activation='relu')(
      jax.random.key(3), SHAPE))
  std = math.sqrt(reference_variance(name, SHAPE, 'relu'))
  bound = (2 / initializers.TRUNCATED_NORMAL_STD if 'truncated' in name
           else math.sqrt(3)) * std
  assert np.abs(w).max() <= bound * (1 + 1e-6)
  assert np.abs(w).max() > 0.99 * bound  # and reach them: 120,000 draws.


def test_torch_linear_default_is_uniform_one_over_sqrt_fan_in():
  w = np.asarray(initializers.get_initializer('torch_linear_default')(
      jax.random.key(0), SHAPE))
  assert np.abs(w).max() <= 1 / math.sqrt(SHAPE[0])


@pytest.mark.parametrize('name, bound', [
    ('standard_uniform', 1 / math.sqrt(SHAPE[0])),                 # U(±1/√n_in)
    ('xavier_uniform', math.sqrt(6 / (SHAPE[0] + SHAPE[1]))),      # U(±√6/√(n_in+n_out))
])
def test_glorot_bengio_standard_and_normalized_inits_are_their_eq_1_and_16(name, bound):
  w = np.asarray(initializers.get_initializer(name, activation='sigmoid')(
      jax.random.key(4), SHAPE), np.float64)
  assert np.abs(w).max() <= bound * (1 + 1e-6) and np.abs(w).max() > 0.99 * bound
  assert w.var() == pytest.approx(bound ** 2 / 3, rel=0.02)  # Var U(±a) = a²/3
  assert initializers.ALIASES['standard_uniform'] == 'torch_linear_default'


@pytest.mark.parametrize('name', initializers.names())
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_deterministic_dtype_and_distinct_keys(name, dtype):
  init = initializers.get_initializer(name, activation='relu')
  a = init(jax.random.key(1), (8, 4), dtype)
  b = init(jax.random.key(1), (8, 4), dtype)
  assert a.dtype == dtype and a.shape == (8, 4)
  np.testing.assert_array_equal(a, b)
  if name != 'zeros':
    assert not np.array_equal(a, init(jax.random.key(2), (8, 4), dtype))


def test_aliases_match_canonical():
  for alias, canonical in initializers.ALIASES.items():
    a = initializers.get_initializer(alias, activation='tanh')(jax.random.key(0), (5, 3))
    b = initializers.get_initializer(canonical, activation='tanh')(jax.random.key(0), (5, 3))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('ours, theirs', [
    ('lecun_normal', jax.nn.initializers.lecun_normal()),
    ('lecun_uniform', jax.nn.initializers.lecun_uniform()),
    ('xavier_normal', jax.nn.initializers.glorot_normal()),
    ('xavier_uniform', jax.nn.initializers.glorot_uniform()),
    ('kaiming_normal', jax.nn.initializers.he_normal()),
    ('kaiming_uniform', jax.nn.initializers.he_uniform()),
])
def test_variances_match_jax_initializers(ours, theirs):
  # jax's *_normal are truncated normals rescaled to the same variance.
  w = initializers.get_initializer(ours, activation='relu')(jax.random.key(0), SHAPE)
  v = theirs(jax.random.key(0), SHAPE)
  assert abs(float(w.var()) / float(v.var()) - 1) < 0.03


def test_truncated_variant_matches_jax_draw_for_draw():
  ours = initializers.get_initializer('lecun_truncated_normal')(jax.random.key(4), SHAPE)
  theirs = jax.nn.initializers.lecun_normal()(jax.random.key(4), SHAPE)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('shape', [(64, 64), (96, 40), (40, 96), (3, 3, 8, 16)])
@pytest.mark.parametrize('gain', [1.0, 5 / 3])
def test_orthogonal_is_orthonormal(shape, gain):
  w = np.asarray(initializers.orthogonal(gain)(jax.random.key(0), shape), np.float64)
  assert w.shape == shape
  m = w.reshape(-1, shape[-1])
  rows, cols = m.shape
  # Tall or square: WᵀW = g²I; wide: WWᵀ = g²I (Saxe et al., 2013).
  gram = m.T @ m if rows >= cols else m @ m.T
  np.testing.assert_allclose(gram, gain ** 2 * np.eye(min(rows, cols)), atol=1e-5)


def test_orthogonal_matches_jax_orthogonal_in_distribution():
  ours = np.asarray(initializers.orthogonal()(jax.random.key(0), (200, 50)))
  theirs = np.asarray(jax.nn.initializers.orthogonal()(jax.random.key(0), (200, 50)))
  np.testing.assert_allclose(ours.T @ ours, theirs.T @ theirs, atol=1e-5)


def test_gain_table():
  assert initializers.gain('identity') == 1.0
  assert initializers.gain('linear') == 1.0
  assert initializers.gain('sigmoid') == 1.0
  assert initializers.gain('tanh') == pytest.approx(5 / 3)
  assert initializers.gain('relu') == pytest.approx(math.sqrt(2))
  assert initializers.gain('selu') == pytest.approx(3 / 4)
  assert initializers.gain('leaky_relu') == pytest.approx(math.sqrt(2 / (1 + 0.01 ** 2)))
  assert initializers.gain('leaky_relu', 0.2) == pytest.approx(math.sqrt(2 / 1.04))
  with pytest.raises(ValueError, match='relu'):
    initializers.gain('swish')
  with pytest.raises(ValueError, match='leaky_relu'):
    initializers.gain('tanh', 0.1)


def test_gelu_gain_keeps_the_second_moment_like_relus():
  # The rule that gives ReLU √2: g = 1/√E[φ(z)²], z ~ N(0, 1); Monte Carlo reference.
  z = np.random.default_rng(0).normal(size=1_000_000)
  squares = (z * 0.5 * (1 + special.erf(z / math.sqrt(2)))) ** 2
  se = squares.std() / math.sqrt(z.size)
  assert abs(initializers.gain('gelu') ** -2 - squares.mean()) < 5 * se


def test_gain_policy_kaiming_takes_activation_gain_xavier_only_when_asked():
  shape = (100, 100)
  assert initializers.weight_variance('kaiming', shape, activation='tanh') == (
      pytest.approx((5 / 3) ** 2 / 100))
  assert initializers.weight_variance('orthogonal', shape, activation='relu') == (
      pytest.approx(2 / 100))
  # Xavier and LeCun keep their papers' gain 1 whatever the activation...
  assert initializers.weight_variance('xavier', shape, activation='relu') == (
      pytest.approx(2 / 200))
  assert initializers.weight_variance('lecun', shape, activation='tanh') == (
      pytest.approx(1 / 100))
  # ... unless a gain is passed (PyTorch's xavier_uniform_(w, gain=...)).
  assert initializers.weight_variance('xavier', shape, gain=5 / 3) == (
      pytest.approx((5 / 3) ** 2 * 2 / 200))
  w = initializers.get_initializer('xavier_uniform', gain=2.0)(jax.random.key(0), SHAPE)
  assert float(w.var()) == pytest.approx(4 * 2 / 700, rel=0.02)
  with pytest.raises(ValueError, match='takes no gain'):
    initializers.get_initializer('normal', gain=2.0)


def test_scaled_multiplies_and_validates():
  base = initializers.get_initializer('kaiming')
  np.testing.assert_allclose(initializers.scaled(base, 0.1)(jax.random.key(0), (6, 4)),
                             0.1 * base(jax.random.key(0), (6, 4)), rtol=1e-6)
  with pytest.raises(ValueError, match='factor'):
    initializers.scaled(base, -1.0)


def test_factories_validate_eagerly():
  with pytest.raises(ValueError, match='mode'):
    initializers.kaiming_normal(mode='fan_avg')
  with pytest.raises(ValueError, match='distribution'):
    initializers.variance_scaling(lambda i, o: 1 / i, distribution='cauchy')
  with pytest.raises(ValueError, match='gain'):
    initializers.orthogonal(gain=-1.0)


def test_kaiming_fan_out_mode():
  w = initializers.kaiming_normal(mode='fan_out')(jax.random.key(0), SHAPE)
  assert float(w.var()) == pytest.approx(2 / SHAPE[1], rel=0.02)


def test_fans_dense_and_conv():
  assert initializers.compute_fans((12288, 256)) == (12288, 256)
  assert initializers.compute_fans((3, 3, 16, 32)) == (9 * 16, 9 * 32)
  assert initializers.compute_fans((5, 16, 32)) == (5 * 16, 5 * 32)
  with pytest.raises(ValueError, match='rank'):
    initializers.compute_fans((5,))


def test_conv_kernel_variance_uses_receptive_field():
  w = initializers.get_initializer('kaiming', activation='relu')(
      jax.random.key(0), (3, 3, 64, 128))
  assert float(w.var()) == pytest.approx(2 / (9 * 64), rel=0.02)


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match='kaiming_normal') as info:
    initializers.get_initializer('kaimin')
  assert 'kaimin' in str(info.value)
  with pytest.raises(ValueError, match='data-dependent.*orthogonal'):
    initializers.get_initializer('lsuv')


def _chain(kernels, x, biases):
  """A tanh MLP in NumPy: the outputs of each layer before the activation."""
  outputs = []
  for kernel, bias in zip(kernels, biases):
    z = x @ np.asarray(kernel) + bias
    outputs.append(z)
    x = np.tanh(z)
  return outputs


@pytest.mark.parametrize('bias', [0.0, 0.5])
def test_lsuv_gives_unit_output_variance_within_tolerance(bias):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(256, 50)) * 3
  kernels = [rng.normal(size=shape) / 10 for shape in [(50, 80), (80, 80), (80, 40)]]
  biases = [bias] * 3
  rescaled, info = initializers.lsuv(
      kernels, lambda ks, batch: _chain(ks, batch, biases), x, tolerance=0.05,
      max_iterations=20)
  for z, layer in zip(_chain(rescaled, x, biases), info):
    assert abs(z.var() - 1) <= 0.05
    assert layer['variance'] == pytest.approx(z.var(), rel=1e-5)
    assert 1 <= layer['iterations'] <= 20
  # Rescaling only: each kernel is a positive multiple of its start.
  for before, after in zip(kernels, rescaled):
    ratio = np.asarray(after) / np.asarray(before)
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-4)


def test_lsuv_stops_after_max_iterations_and_validates():
  x = np.ones((4, 3))
  kernels = [np.ones((3, 2))]
  # An output whose variance ignores the kernel scale never converges.
  stuck = lambda ks, batch: [np.array([0.0, 3.0])]
  _, info = initializers.lsuv(kernels, stuck, x, max_iterations=3)
  assert info[0]['iterations'] == 3 and info[0]['variance'] == pytest.approx(2.25)
  with pytest.raises(ValueError, match='zeros'):
    initializers.lsuv([np.zeros((3, 2))], lambda ks, b: [b @ ks[0]], x)
  with pytest.raises(ValueError, match='tolerance'):
    initializers.lsuv(kernels, stuck, x, tolerance=0)
  with pytest.raises(ValueError, match='max_iterations'):
    initializers.lsuv(kernels, stuck, x, max_iterations=0)


@pytest.mark.parametrize('name, theirs', [
    ('kaiming_normal', lambda: jax.nn.initializers.he_normal()),
    ('kaiming', lambda: jax.nn.initializers.he_normal()),
    ('he', lambda: jax.nn.initializers.he_normal()),
    ('kaiming_uniform', lambda: jax.nn.initializers.he_uniform()),
])
def test_kaiming_without_an_activation_is_hes_formula(name, theirs):
  """He et al.'s N(0, 2/fan_in), as torch.nn.init.kaiming_normal_ and
  jax.nn.initializers.he_normal; an activation (or gain) still says otherwise."""
  shape = (400, 300)
  assert initializers.weight_variance(name, shape) == pytest.approx(2 / 400)
  w = np.asarray(initializers.get_initializer(name)(jax.random.key(0), shape), np.float64)
  reference = np.asarray(theirs()(jax.random.key(1), shape), np.float64)
  se = 2 / 400 * math.sqrt(2 / w.size)  # Var of a sample variance: 2σ⁴/n.
  assert abs(w.var() - 2 / 400) < 5 * se and abs(reference.var() - 2 / 400) < 5 * se
  assert initializers.weight_variance(name, shape, activation='identity') == (
      pytest.approx(1 / 400))
  assert initializers.weight_variance(name, shape, activation='tanh') == (
      pytest.approx((5 / 3) ** 2 / 400))
  assert initializers.weight_variance('orthogonal', (300, 300)) == pytest.approx(1 / 300)


def test_orthogonal_in_float64_is_orthogonal_to_float64_precision():
  with jax.enable_x64(True):
    w = np.asarray(initializers.orthogonal()(jax.random.key(0), (128, 64), jnp.float64))
  assert w.dtype == np.float64
  np.testing.assert_allclose(w.T @ w, np.eye(64), atol=1e-13)
