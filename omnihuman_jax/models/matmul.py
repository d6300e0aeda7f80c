"""The dense layers' matmul, with a backward that orders the weight-gradient product for XLA:CPU.

XLA:CPU computes a dot whose operands are both (N, .) with N contracted by first copying one operand to
(., N), and it fuses that copy into the loop producing the operand. With JAX's own transpose rule for
`x @ w` (x (..., Din), w (Din, Dout)) the operand it copies is the gradient g of the output: the step then
re-evaluates the LayerNorm, modulation and residual gradients column by column, one strided pass per
weight gradient (about 0.4 s of the small preset's 3.5 s step, from a profile of the compiled step;
docs/performance.md, session 24). Here the backward asks for

    dx = g w^T                                  # (..., Din)
    dw = dot_general(x, g) over (...)           # (Din, Dout), when Din <= Dout
    dw = dot_general(g, x) over (...), then .T  # when Din > Dout: the narrower operand goes first

which is the same arithmetic: the operand XLA copies is the narrower of x and g. `jax.checkpoint` policies
only see `dot_general` primitives outside a custom VJP, so the output is tagged `DENSE_CHECKPOINT_NAME`,
and `remat_policy` (models/dit.py) saves or offloads that name wherever it saves or offloads dots.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.ad_checkpoint import checkpoint_name

DENSE_CHECKPOINT_NAME = "dense_matmul"


@jax.custom_vjp
def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x (..., Din) @ w (Din, Dout) -> (..., Dout)."""
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _matmul_fwd(x: jax.Array, w: jax.Array):
    return _matmul(x, w), (x, w)


def _matmul_bwd(residuals, g: jax.Array):
    x, w = residuals
    lead = tuple(range(x.ndim - 1))
    dx = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())))  # (..., Din)
    if x.shape[-1] > g.shape[-1]:  # XLA:CPU transposes the dot's first operand: give it the narrower one
        dw = jax.lax.dot_general(g, x, ((lead, lead), ((), ()))).T  # (Dout, Din) -> (Din, Dout)
    else:
        dw = jax.lax.dot_general(x, g, ((lead, lead), ((), ())))  # (Din, Dout)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dense_dot_general(
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers: Any,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`nn.Dense`'s dot_general: `_matmul` for (..., Din) x (Din, Dout), lax.dot_general otherwise."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    plain = (
        tuple(lhs_contract) == (lhs.ndim - 1,)
        and tuple(rhs_contract) == (0,)
        and not lhs_batch
        and not rhs_batch
        and rhs.ndim == 2
        and lhs.dtype == rhs.dtype
        and precision is None
        and preferred_element_type is None
    )
    if not plain:
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)
    return checkpoint_name(_matmul(lhs, rhs), DENSE_CHECKPOINT_NAME)
