"""Matmul precision: a plain-dict registry of ``dot_general`` functions for Dense layers.

* ``float32``: ``lax.dot_general`` as it is.
* ``bfloat16``: the inputs of every matmul, forward and backward, are rounded to
  bfloat16 and the products accumulated in float32 (``preferred_element_type``), as
  ``torch.autocast(dtype=torch.bfloat16)`` does; parameters, optimizer state and
  BatchNorm statistics stay float32. A bfloat16 number keeps float32's 8 exponent bits
  and 8 of its 24 significand bits (relative rounding error ≤ 2⁻⁹ ≈ 0.2%), so it needs
  no loss scaling. The backward pass is a custom VJP: autodiff of the cast would
  multiply the float32 cotangent by the bfloat16 kernel in float32 (a mixed-dtype
  product that XLA:CPU runs upcast), while here both backward products are
  bfloat16 × bfloat16 → float32 like the forward one.
"""

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

DotGeneral = Callable[..., jax.Array]


def _bf16_dot(a: jax.Array, b: jax.Array, dimension_numbers) -> jax.Array:
  return lax.dot_general(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16),
                         dimension_numbers, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _bf16_dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x[..., in] · W[in, out] with bfloat16 inputs and float32 accumulation."""
  return _bf16_dot(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def _bf16_dense_fwd(x, kernel):
  xb, kb = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
  return _bf16_dot(xb, kb, (((x.ndim - 1,), (0,)), ((), ()))), (xb, kb)


def _bf16_dense_bwd(residuals, g):
  """∂L/∂x = g·Wᵀ and ∂L/∂W = Σ_batch xᵀg, each a bfloat16 × bfloat16 → float32
  product (float32 cotangents, as the float32 inputs and parameters have)."""
  xb, kb = residuals
  batch_axes = tuple(range(xb.ndim - 1))
  dx = _bf16_dot(g, kb, (((g.ndim - 1,), (1,)), ((), ())))
  dkernel = _bf16_dot(xb, g, ((batch_axes, batch_axes), ((), ())))
  return dx, dkernel


_bf16_dense.defvjp(_bf16_dense_fwd, _bf16_dense_bwd)


def bfloat16_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers,
                         precision=None, preferred_element_type=None,
                         **kwargs) -> jax.Array:
  """``lax.dot_general`` in bfloat16 with float32 accumulation (module docstring).

  A Dense layer's product (``lhs[..., in] · rhs[in, out]``, as ``nnx.Linear`` calls
  it) goes through the custom VJP; any other contraction through the cast.
  """
  # bfloat16 inputs, float32 accumulation; Flax's other arguments (out_sharding) are
  # for sharded models, which this one is not.
  del precision, preferred_element_type, kwargs
  (lhs_contract, rhs_contract), batch = dimension_numbers
  if (tuple(lhs_contract) == (lhs.ndim - 1,) and tuple(rhs_contract) == (0,)
      and rhs.ndim == 2 and not any(batch)):
    return _bf16_dense(lhs, rhs)
  return _bf16_dot(lhs, rhs, dimension_numbers)


DOT_GENERALS: dict[str, DotGeneral] = {
    'float32': lax.dot_general,
    'bfloat16': bfloat16_dot_general,
}


def get_dot_general(name: str) -> DotGeneral:
  """The ``dot_general`` of precision ``name``; raises ValueError listing the valid names."""
  try:
    return DOT_GENERALS[name]
  except KeyError:
    raise ValueError(f'Unknown precision {name!r}; valid: {sorted(DOT_GENERALS)}') from None
