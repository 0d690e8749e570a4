"""The primal-dual loop both CMDP learners share (Vaswani, Yang & Szepesvari, arXiv 2206.06270).

A constrained MDP ``max_pi V_r s.t. V_c >= b`` is solved through its Lagrangian: for a
multiplier lambda the best response maximizes ``r + lambda c``, and lambda moves by
projected subgradient descent on the dual, ``lambda_{t+1} = proj_[0,U](lambda_t - eta
(V_c(pi_t) - b'))``, ``eta = U / sqrt(T)``, ``lambda_0 = 0``; the output is the uniform
mixture of ``pi_0 .. pi_{T-1}``. As in Vaswani et al., the best responses are only needed
on a finite grid of lambda: each learner plans them once on ``n_grid`` equally spaced
points of [0, U] (:func:`dual_grid`), and the T dual steps (:func:`dual_descent`) look up
the best response of the nearest grid point (lambda itself stays continuous), so the output
mixture is a weight vector over the grid's policies (:class:`Mixture`). The steps are
counted a cell at a time in closed form, so T costs nothing: it can be as large as the
theory's constants make it.

Used by :mod:`cmdp.average_reward` (arXiv 2509.16586, on a discounted surrogate of the
empirical model) and :mod:`cmdp.linear` (arXiv 2507.02089, with LS-MDVI best responses);
each sets U, b' and the grid's best responses (its ``constants``). A batch of runs is
described by :class:`Runs` (one entry per run), each run keyed ``fold_in(key, i)``
(:func:`run_keys`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Runs(NamedTuple):
  """Per-run settings of a batch; each field has a leading run axis R (a scalar for one run).

  Attributes:
    n: sample budget N.
    eps: target accuracy.
    zeta: Slater constant (known to the learner, as in the theory).
    strict: True for strict feasibility (V_c >= b), False for relaxed (V_c >= b - eps).
  """
  n: Any
  eps: Any
  zeta: Any
  strict: Any

  def as_jax(self) -> "Runs":
    """float64 (strict: bool) jax arrays; call under ``jax.enable_x64``."""
    f64 = lambda x: jnp.asarray(np.asarray(x, np.float64))
    return Runs(f64(self.n), f64(self.eps), f64(self.zeta),
                jnp.asarray(np.asarray(self.strict, bool)))


class Mixture(NamedTuple):
  """One run's output: a mixture of the dual grid's best responses (a batch adds axes).

  Attributes:
    policies: (M, ...) the best responses on the dual grid (deterministic (M, S) or
      stochastic (M, S, A), as the learner plans them).
    weights: (M,) mixture weights (visit frequencies of the grid points; sum 1).
    vc: (M,) the learner's estimates of the grid policies' constraint values.
    lam_final: () the last dual iterate.
  """
  policies: jax.Array
  weights: jax.Array
  vc: jax.Array
  lam_final: jax.Array


def dual_grid(U, n_grid: int, dtype) -> jax.Array:
  """The ``n_grid`` equally spaced multipliers of [0, U]."""
  return jnp.linspace(0.0, 1.0, n_grid, dtype=dtype) * U


class _Walk(NamedTuple):
  lam: jax.Array      # () the dual iterate
  t: jax.Array        # () steps taken (float: T may exceed int32)
  counts: jax.Array   # (M,) steps spent at each grid point
  prev: jax.Array     # () the cell left by the last crossing (-1 before the first)


def dual_descent(vc: jax.Array, b_prime, U, n_iters):
  """Projected dual subgradient steps with grid lookups; the mixture weights.

  The T steps ``lambda <- proj_[0,U](lambda - eta (vc[k(lambda)] - b'))``, ``eta = U /
  sqrt(T)``, ``k(lambda)`` the nearest grid point, are taken a cell at a time: inside a
  cell the drift is constant, so the steps until lambda leaves it are counted in closed
  form. Once lambda alternates between two adjacent cells a and b with steps smaller
  than half a cell, the rest is a rotation: with z the signed distance past the boundary
  (z < 0 in a), ``z -> z + u`` in a and ``z -> z - v`` in b keep z in [-v, u), so after
  n more steps the number spent in a is ``ceil((n v - v - z0) / (u + v))``. The cost is
  a few events per grid point, whatever T, so T can be the 10^10 steps the theory's
  constants ask for; each count equals the step-by-step loop's
  (:func:`dual_descent_numpy`) up to the rounding of lambda at a cell boundary.

  Args:
    vc: (M,) constraint values of the grid's best responses.
    b_prime: target threshold.
    U: dual box bound; the grid is ``dual_grid(U, M)``.
    n_iters: T, a positive integer (static or traced).

  Returns:
    (weights (M,): visit frequencies of the grid points, lambda_T).
  """
  M = vc.shape[0]
  dtype = vc.dtype
  T = jnp.asarray(n_iters, dtype)
  U = jnp.asarray(U, dtype)
  delta = U / (M - 1)
  eta = U / jnp.sqrt(T)
  g = vc - b_prime                       # lambda moves by -eta g at each step
  cell = lambda lam: jnp.clip(jnp.round(lam / delta), 0, M - 1).astype(jnp.int32)
  small = eta * jnp.max(jnp.abs(g)) < delta / 2

  def rotation(w: _Walk, a, b) -> _Walk:
    """The remaining steps, alternating between the adjacent cells a (now) and b."""
    n = T - w.t
    sgn = jnp.where(b > a, 1.0, -1.0).astype(dtype)
    x = (jnp.minimum(a, b) + 0.5) * delta
    u, v = eta * jnp.abs(g[a]), eta * jnp.abs(g[b])
    z0 = sgn * (w.lam - x)
    in_a = jnp.clip(jnp.ceil((n * v - v - z0) / (u + v)), 0.0, n)
    z = z0 + in_a * u - (n - in_a) * v
    counts = w.counts.at[a].add(in_a).at[b].add(n - in_a)
    return _Walk(jnp.clip(x + sgn * z, 0.0, U), T, counts, w.prev)

  def event(w: _Walk) -> _Walk:
    k = cell(w.lam)
    gk = g[k]
    left = T - w.t
    up = gk < 0
    stuck = (gk == 0) | (up & (k == M - 1)) | (~up & (k == 0))
    edge = jnp.where(up, k + 0.5, k - 0.5) * delta
    speed = eta * jnp.abs(gk)
    to_edge = jnp.maximum(jnp.ceil(jnp.abs(edge - w.lam) / jnp.where(stuck, 1.0, speed)), 1.0)
    n = jnp.where(stuck, left, jnp.minimum(to_edge, left))
    lam = jnp.clip(w.lam - n * eta * gk, 0.0, U)
    new = cell(lam)
    moved = _Walk(lam, w.t + n, w.counts.at[k].add(n), jnp.where(new != k, k, w.prev))
    back = (new != k) & (new == w.prev) & (jnp.abs(new - k) == 1) & small & (moved.t < T)
    return jax.lax.cond(back, lambda m: rotation(m, new, k), lambda m: m, moved)

  init = _Walk(jnp.zeros((), dtype), jnp.zeros((), dtype), jnp.zeros(M, dtype),
               jnp.array(-1, jnp.int32))
  w = jax.lax.while_loop(lambda w: w.t < T, event, init)
  return w.counts / T, w.lam


def dual_descent_numpy(vc: np.ndarray, b_prime: float, U: float, n_iters: int) -> np.ndarray:
  """:func:`dual_descent` as a plain Python loop (float64): the numpy references' dual loop.

  Returns:
    (M,) weights: visit frequencies of the grid points.
  """
  n_grid = len(vc)
  delta, eta = U / (n_grid - 1), U / np.sqrt(n_iters)
  lam, counts = 0.0, np.zeros(n_grid)
  for _ in range(n_iters):
    g = min(max(int(np.round(lam / delta)), 0), n_grid - 1)
    counts[g] += 1
    lam = min(max(lam - eta * (vc[g] - b_prime), 0.0), U)
  return counts / n_iters


def run_keys(key: jax.Array, n_runs: int) -> jax.Array:
  """The keys of a batch's runs: run i uses ``fold_in(key, i)``."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n_runs))
