import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fundamentals import losses
from fundamentals import models
from fundamentals import precision


def _model(precision_name, **kwargs):
  return models.MLP(48, (32, 32), 5, activation='tanh', init='lecun',
                    precision=precision_name, rngs=nnx.Rngs(params=jax.random.key(0)),
                    **kwargs)


def _loss_and_grads(model, x, y):
  graph, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)

  def loss_fn(params):
    logits, _ = models.apply(graph, params, batch_stats, x)
    return losses.softmax_cross_entropy(logits, y)

  return jax.value_and_grad(loss_fn)(params)


def test_registry_names_the_valid_precisions():
  assert precision.get_dot_general('float32') is jax.lax.dot_general
  with pytest.raises(ValueError, match=r"'fp8'.*bfloat16.*float32"):
    precision.get_dot_general('fp8')


def test_bfloat16_dense_rounds_inputs_and_accumulates_in_float32():
  x = jax.random.normal(jax.random.key(1), (7, 48))
  w = jax.random.normal(jax.random.key(2), (48, 9))
  got = precision.bfloat16_dot_general(x, w, (((1,), (0,)), ((), ())))
  # The reference: inputs rounded to bf16, products and sums exact in float64.
  expected = (np.asarray(x.astype(jnp.bfloat16), np.float64)
              @ np.asarray(w.astype(jnp.bfloat16), np.float64))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  assert np.max(np.abs(got - np.asarray(x) @ np.asarray(w))) > 1e-3  # it did round


def test_bfloat16_gradients_are_the_bf16_products_of_the_float32_cotangents():
  x = jax.random.normal(jax.random.key(1), (6, 48))
  w = jax.random.normal(jax.random.key(2), (48, 9))
  g = jax.random.normal(jax.random.key(3), (6, 9))
  f = lambda x, w: jnp.sum(precision.bfloat16_dot_general(x, w, (((1,), (0,)), ((), ()))) * g)
  dx, dw = jax.grad(f, argnums=(0, 1))(x, w)
  bf = lambda a: np.asarray(jnp.asarray(a).astype(jnp.bfloat16), np.float64)
  np.testing.assert_allclose(dx, bf(g) @ bf(w).T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, bf(x).T @ bf(g), rtol=1e-5, atol=1e-5)
  assert dx.dtype == dw.dtype == jnp.float32


def test_bfloat16_model_gradients_track_jax_grad_in_float32():
  x = jax.random.normal(jax.random.key(4), (64, 48))
  y = jax.random.randint(jax.random.key(5), (64,), 0, 5)
  loss32, grads32 = _loss_and_grads(_model('float32'), x, y)
  loss16, grads16 = _loss_and_grads(_model('bfloat16'), x, y)
  assert abs(float(loss16 - loss32)) < 1e-2 * float(loss32)
  for g16, g32 in zip(jax.tree.leaves(grads16), jax.tree.leaves(grads32)):
    assert g16.dtype == jnp.float32
    # bf16 keeps 8 significand bits: relative error ≈ 2^-8 per product, a few % in all.
    rel = float(jnp.linalg.norm(g16 - g32) / jnp.linalg.norm(g32))
    assert rel < 0.05, rel


def test_bfloat16_model_keeps_float32_parameters_and_statistics():
  model = _model('bfloat16')
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
  assert model(jnp.ones((3, 48))).dtype == jnp.float32
