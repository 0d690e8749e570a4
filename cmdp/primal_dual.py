"""The primal-dual loop both CMDP learners share (Vaswani, Yang & Szepesvari, arXiv 2206.06270).

A constrained MDP ``max_pi V_r s.t. V_c >= b`` is solved through its Lagrangian: for a
multiplier lambda the best response maximizes ``r + lambda c``, and lambda moves by
projected subgradient descent on the dual, ``lambda_{t+1} = proj_[0,U](lambda_t - eta
(V_c(pi_t) - b'))``, ``eta = U / sqrt(T)``, ``lambda_0 = 0``; the output is the uniform
mixture of ``pi_0 .. pi_{T-1}``. As in Vaswani et al., the best responses are only needed
on a finite grid of lambda: each learner plans them once on ``n_grid`` equally spaced
points of [0, U] (:func:`dual_grid`), and the T dual steps (:func:`dual_descent`) are a
``lax.scan`` that looks up the best response of the nearest grid point (lambda itself stays
continuous), so the output mixture is a weight vector over the grid's policies
(:class:`Mixture`).

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


def dual_descent(vc: jax.Array, b_prime, U, n_iters: int):
  """Projected dual subgradient steps with grid lookups; the mixture weights.

  Args:
    vc: (M,) constraint values of the grid's best responses.
    b_prime: target threshold.
    U: dual box bound; the grid is ``dual_grid(U, M)``.
    n_iters: T (static).

  Returns:
    (weights (M,): visit frequencies of the grid points, lambda_T).
  """
  M = vc.shape[0]
  delta = U / (M - 1)
  eta = U / jnp.sqrt(jnp.asarray(n_iters, vc.dtype))

  def step(carry, _):
    lam, counts = carry
    k = jnp.clip(jnp.round(lam / delta), 0, M - 1).astype(jnp.int32)
    lam = jnp.clip(lam - eta * (vc[k] - b_prime), 0.0, U)
    return (lam, counts.at[k].add(1)), None

  init = (jnp.zeros((), vc.dtype), jnp.zeros(M, jnp.int32))
  (lam, counts), _ = jax.lax.scan(step, init, None, length=n_iters)
  return counts.astype(vc.dtype) / n_iters, lam


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
