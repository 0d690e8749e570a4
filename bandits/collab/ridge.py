"""Small dense linear algebra for many d x d problems at once, feature axes leading.

Every array here has its feature axes first and any batch (agents, runs)
trailing: a vector is (d, *batch), a matrix (d, d, *batch). Written as
elementwise products and reductions over the leading axes, the same code runs
one problem or a whole grid of agents x runs, with the batch contiguous in
memory (the layout convention of :mod:`bandits.core`); on CPU that vectorizes
across problems, where a batched ``dot`` or LAPACK call would loop over
10 x 10 matrices one at a time.
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp

_TINY = 1e-30


def sum_axis(x: jax.Array, axis: int) -> jax.Array:
  """``x.sum(axis)`` as an unrolled sum of slices (the axis is small and static).

  XLA on CPU turns ``jnp.sum`` over a leading or middle axis of a
  (d, d, *batch) array into a strided reduction loop, about 30x slower here
  than the d elementwise adds of whole contiguous slices, which fuse into one
  vectorized loop over the batch.
  """
  return functools.reduce(operator.add, [jax.lax.index_in_dim(x, i, axis, keepdims=False)
                                         for i in range(x.shape[axis])])


def mv(a: jax.Array, x: jax.Array) -> jax.Array:
  """``a @ x`` per problem: a (d, d, *b), x (d, *b) -> (d, *b).

  Written as sum_j a[:, j] x[j] over slices taken *before* multiplying: XLA
  on CPU materializes a (d, d, *b) product ``a * x[None]`` and fuses the
  computation of ``x`` into it (d-fold recomputation per matvec); slicing
  first keeps every intermediate (d, *b) and chains of matvecs linear in cost.
  """
  return functools.reduce(operator.add, [a[:, j] * x[j][None] for j in range(a.shape[1])])


def dot(x: jax.Array, y: jax.Array) -> jax.Array:
  """``x . y`` per problem: (d, *b) x (d, *b) -> (*b) (slices first, as in :func:`mv`)."""
  return functools.reduce(operator.add, [x[i] * y[i] for i in range(x.shape[0])])


def outer(u: jax.Array, v: jax.Array) -> jax.Array:
  """``u v^T`` per problem: (d, *b) x (d, *b) -> (d, d, *b)."""
  return u[:, None] * v[None, :]


def tri_outer(x: jax.Array) -> jax.Array:
  """The upper triangle of ``x x^T`` per problem, row by row: (d, *b) -> (d (d + 1) / 2, *b)
  (what a symmetric sum of outer products needs: 55 of 100 entries at d = 10)."""
  return jnp.concatenate([x[i:i + 1] * x[i:] for i in range(x.shape[0])], axis=0)


def to_tri(v: jax.Array) -> jax.Array:
  """The upper triangles of (d, d, *b) matrices in :func:`tri_outer`'s layout."""
  return jnp.concatenate([v[i, i:] for i in range(v.shape[0])], axis=0)


def from_tri(t: jax.Array, d: int) -> jax.Array:
  """The symmetric (d, d, *b) matrices whose upper triangles are ``t`` (:func:`tri_outer`'s
  layout)."""
  rows, start = [], 0
  for i in range(d):
    rows.append(t[start:start + d - i])
    start += d - i
  return jnp.stack([jnp.stack([rows[min(i, j)][abs(i - j)] for j in range(d)])
                    for i in range(d)])


def compensated_add(total: jax.Array, err: jax.Array, x: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
  """One step of Kahan's compensated summation: ``(total + x, err)`` with ``err`` carrying
  the low-order bits the float32 add dropped (start it at zeros).

  A running float32 sum of n terms of size one loses about n ulp(n): a Gram matrix
  sum_t x x^T of unit actions is off by 300 after 2.5e5 rounds (greedy actions near one
  direction), more than its smallest eigenvalues, which the estimates read. Compensated,
  the error stays near one ulp of the total.
  """
  y = x - err
  t = total + y
  return t, (t - total) - y


def flat_batch(x: jax.Array, n_lead: int) -> jax.Array:
  """(*lead, *batch) -> (*lead, prod(batch)): the batch axes merged into one.

  XLA on CPU vectorizes a fused loop along its innermost axis only: with runs
  trailing that axis is the seeds of one device (10 in the benchmark, not even
  two AVX vectors); merged with the agents it is m x runs long (measured 4-8x
  faster per matvec). The per-round hot paths work on this view. Free on a
  local array; on one sharded over its last axis it would be a resharding,
  hence :func:`bandits.collab.sim.run` simulates per device (``shard_map``).
  """
  return x.reshape(x.shape[:n_lead] + (-1,))


def once(*xs):
  """``xs`` unchanged, passed through an ``optimization_barrier``.

  XLA's CPU fusion recomputes a cheap producer (a matvec is only adds and
  multiplies) inside every consumer that reads it; in the ball's ascent step a
  matvec feeds a dot, a normalization and the next iterate, i.e. up to three
  recomputations. The barrier is a hint, not a guarantee (XLA may still fuse
  across it; loop carries are the reliable boundary), but where it is used it
  keeps these values materialized (the collaborative round takes 0.87 ms per 1000
  agent-runs on one core with it, 1.3 ms without).
  """
  return jax.lax.optimization_barrier(xs)


def eye_like(x: jax.Array, d: int) -> jax.Array:
  """The identity (d, d, 1, ..., 1), broadcastable against (d, d, *x.shape)."""
  return jnp.eye(d, dtype=jnp.float32).reshape((d, d) + (1,) * x.ndim)


def sherman_morrison(ainv: jax.Array, x: jax.Array):
  """Rank-one update of an inverse Gram matrix: ``(A + x x^T)^-1`` from ``A^-1``.

  Args:
    ainv: (d, d, *b) symmetric positive definite ``A^-1``.
    x: (d, *b) the new feature vector (x = 0 leaves ``ainv`` unchanged).

  Returns:
    (new inverse (d, d, *b), u = A^-1 x (d, *b), q = x^T A^-1 x (*b)); the log
    determinant grows by ``log1p(q)`` (matrix determinant lemma).
  """
  u = mv(ainv, x)
  u, q = once(u, dot(x, u))
  new = ainv - outer(u, u) / (1.0 + q)[None, None]
  return new, u, q


def spd_inverse(a: jax.Array):
  """Inverse and log-determinant of SPD matrices a (d, d, *b), by Gauss-Jordan.

  Pivots on the diagonal without exchanges, which is stable for symmetric
  positive definite matrices (the pivots are the Schur complements, all
  positive). Unrolled over the static d: 2 d^3 flops per matrix, vectorized
  over the batch. Used once per epoch, never per round.

  Returns:
    (a^-1 (d, d, *b), log det a (*b)).
  """
  d = a.shape[0]
  logdet = jnp.zeros(a.shape[2:], a.dtype)
  idx = jnp.arange(d).reshape((d,) + (1,) * (a.ndim - 2))
  for k in range(d):
    p = jnp.maximum(a[k, k], _TINY)
    logdet = logdet + jnp.log(p)
    row = a[k] / p[None]            # (d, *b)
    col = a[:, k]                   # (d, *b)
    a = a - col[:, None] * row[None, :]
    is_k = idx == k
    a = jnp.where(is_k[:, None], row[None], a)                        # row k: a[k, j] / p
    a = jnp.where(is_k[None, :], -col[:, None] / p[None, None], a)     # column k
    a = jnp.where(is_k[:, None] & is_k[None, :], 1.0 / p[None, None], a)
  return a, logdet


def cholesky(a: jax.Array) -> jax.Array:
  """Lower Cholesky factor of SPD matrices a (d, d, *b); unrolled over d.

  Negative pivots from rounding are clipped to zero (the factor of the
  nearest PSD matrix along that direction), so sampling never produces NaN.
  """
  d = a.shape[0]
  idx = jnp.arange(d).reshape((d,) + (1,) * (a.ndim - 2))
  cols = []
  for j in range(d):
    s = a[:, j]
    if j:
      prev = jnp.stack(cols, axis=1)            # (d, j, *b)
      s = s - sum_axis(prev * prev[j][None], 1)
    diag = jnp.sqrt(jnp.maximum(s[j], 0.0))
    col = jnp.where(idx >= j, s / jnp.maximum(diag, 1e-20)[None], 0.0)
    col = jnp.where(idx == j, diag[None], col)
    cols.append(col)
  return jnp.stack(cols, axis=1)


def safe_normalize(v: jax.Array) -> jax.Array:
  """v / ||v|| over axis 0; the first basis vector where v = 0."""
  n = jnp.sqrt(dot(v, v))
  e0 = (jnp.arange(v.shape[0]) == 0).astype(v.dtype).reshape((v.shape[0],) + (1,) * (v.ndim - 1))
  return jnp.where(n[None] > 1e-20, v / jnp.maximum(n, 1e-20)[None], e0)
