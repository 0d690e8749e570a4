"""Block-diagonal matrices stored as their (n_blocks, b, b) diagonal blocks.

Block size rule (when the requested b does not divide a dimension): use the
largest divisor of d that is at most b (ARMOR's group steps then work on
windows of lcm(b, 4) columns, see :func:`coarsen`). Real model dimensions are
highly composite (576 = 2^6 * 9 gives 96 for b = 128, 1536 and 2048 give 128),
so the effective block stays close to the request; :func:`block_size_for`
reports it and the wrappers' overhead follows from it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_HI = jax.lax.Precision.HIGHEST


def block_size_for(d: int, requested: int, multiple_of: int = 1) -> int:
  """Largest divisor of ``d`` that is <= ``requested`` and a multiple of ``multiple_of``."""
  if requested < 1:
    raise ValueError(f"block size must be >= 1, got {requested}")
  for b in range(min(requested, d), 0, -1):
    if d % b == 0 and b % multiple_of == 0:
      return b
  raise ValueError(f"no block size <= {requested} divides {d} and is a multiple of {multiple_of}")


def identity(d: int, b: int, dtype=jnp.float32) -> jax.Array:
  """(d / b, b, b) blocks of the d x d identity."""
  return jnp.broadcast_to(jnp.eye(b, dtype=dtype), (d // b, b, b))


def to_dense(blocks: jax.Array) -> jax.Array:
  """(n, b, b) blocks -> the (n b, n b) dense block-diagonal matrix."""
  n, b, _ = blocks.shape
  eye = jnp.eye(n, dtype=blocks.dtype)
  return jnp.einsum("nm,nij->nimj", eye, blocks).reshape(n * b, n * b)


def left(blocks: jax.Array, x: jax.Array) -> jax.Array:
  """``blockdiag @ x`` for x of shape (d, ...)."""
  n, b, _ = blocks.shape
  xb = x.reshape((n, b) + x.shape[1:])
  return jnp.einsum("nij,nj...->ni...", blocks, xb, precision=_HI).reshape(x.shape)


def right(x: jax.Array, blocks: jax.Array) -> jax.Array:
  """``x @ blockdiag`` for x of shape (..., d)."""
  n, b, _ = blocks.shape
  # as (B^T x^T)^T: XLA on CPU runs the batch-leading form several times faster
  xt = x.reshape(-1, n * b).T.reshape(n, b, -1)
  out = jnp.einsum("nji,nj...->ni...", blocks, xt, precision=_HI)
  return out.reshape(n * b, -1).T.reshape(x.shape)


def to_pairs(x: jax.Array, b_out: int, b_in: int) -> jax.Array:
  """(d_out, d_in) -> (n_out, n_in, b_out, b_in): the block pairs of a matrix."""
  d_out, d_in = x.shape
  return x.reshape(d_out // b_out, b_out, d_in // b_in, b_in).transpose(0, 2, 1, 3)


def from_pairs(x: jax.Array) -> jax.Array:
  """Inverse of :func:`to_pairs`."""
  n_out, n_in, b_out, b_in = x.shape
  return x.transpose(0, 2, 1, 3).reshape(n_out * b_out, n_in * b_in)


def coarsen(blocks: jax.Array, width: int) -> jax.Array:
  """The same block-diagonal matrix as blocks of ``width`` (a multiple of b dividing n b)."""
  n, b, _ = blocks.shape
  k = width // b
  if k == 1:
    return blocks
  return jax.vmap(to_dense)(blocks.reshape(n // k, k, b, b))
