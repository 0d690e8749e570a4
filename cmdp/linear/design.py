"""Where the samples go: a G-optimal (Kiefer-Wolfowitz) design over the feature vectors, by
Frank-Wolfe with away steps, its core set, and the next-state counts drawn there."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cmdp.tabular import CMDPError

class Design(NamedTuple):
  """A (near) G-optimal design over a finite set of features.

  Attributes:
    core: (u,) indices (into the flattened (S*A) feature rows) of the core set.
    weights: (u,) design weights on the core set (sum 1).
    max_variance: max over all features x of ``x^T V^{-1} x`` with
      ``V = sum_core weights phi phi^T`` (Kiefer-Wolfowitz: d at the optimum).
  """
  core: np.ndarray
  weights: np.ndarray
  max_variance: float


@functools.partial(jax.jit, static_argnames=("n_iters",))
def _frank_wolfe(X, n_iters: int):
  n, d = X.shape

  def variances(w):
    V = X.T @ (w[:, None] * X)
    return jnp.einsum("nd,nd->n", X, jnp.linalg.solve(V, X.T).T)

  def step(w, _):
    g = variances(w)
    up = jnp.argmax(g)
    down = jnp.argmin(jnp.where(w > 0, g, jnp.inf))
    toward = g[up] - d >= d - g[down]
    j = jnp.where(toward, up, down)
    gj = g[j]
    # Exact line search of log det along e_j (Fedorov-Wynn; Atwood's away step when negative).
    alpha = (gj / d - 1.0) / jnp.maximum(gj - 1.0, 1e-12)
    lo = -w[j] / jnp.maximum(1.0 - w[j], 1e-12)
    alpha = jnp.where(toward, alpha, jnp.maximum(alpha, lo))
    w = (1.0 - alpha) * w + alpha * jax.nn.one_hot(j, n, dtype=w.dtype)
    return jnp.clip(w, 0.0, None), g[up]

  w0 = jnp.full(n, 1.0 / n, X.dtype)
  w, _ = jax.lax.scan(step, w0, None, length=n_iters)
  return w, variances(w)


def g_optimal_design(features, n_iters: int = 2000, prune: float = 1e-6) -> Design:
  """A G-optimal design over the rows of ``features`` by Frank-Wolfe with away steps.

  Kiefer-Wolfowitz: the D-optimal design (max log det V) is G-optimal, with
  ``max_x x^T V^{-1} x = d``. Frank-Wolfe (Wynn's steps toward the worst-covered
  point, Atwood's away steps that drop support points) from the uniform design,
  in float64; duplicate rows are merged first, weights below ``prune`` dropped.

  Args:
    features: (n, d) feature vectors (e.g. ``phi.reshape(-1, d)``), spanning R^d.
    n_iters: Frank-Wolfe steps.
    prune: weights below this are set to 0 (then renormalized).

  Returns:
    A :class:`Design` (``max_variance`` is checked against all n rows).
  """
  X = np.asarray(features, np.float64)
  n, d = X.shape
  if np.linalg.matrix_rank(X) < d:
    raise CMDPError(f"features must span R^d (rank {np.linalg.matrix_rank(X)} < d = {d})")
  uniq, first = np.unique(X, axis=0, return_index=True)
  with jax.enable_x64(True):
    w, _ = _frank_wolfe(jnp.asarray(uniq), n_iters)
    w = np.asarray(w)
  w = np.where(w >= prune, w, 0.0)
  w /= w.sum()
  keep = np.flatnonzero(w > 0)
  core = first[keep]
  V = X[core].T @ (w[keep, None] * X[core])
  var = np.einsum("nd,nd->n", X, np.linalg.solve(V, X.T).T)
  return Design(core, w[keep], float(var.max()))


def samples_per_core_point(rho, n):
  """``ceil(n / u)`` samples at each of the u core points (total >= n), shaped like ``rho``.

  The same count at every core point, the design entering through the
  regression weights (:func:`fit_next_state_measure`), as in the authors'
  LS-MDVI code (M samples per core point) and in Liu et al.'s DataCollection (N
  queries per core state-action pair; secondary source, see the module
  docstring). On a design uniform over its support, as every design of this
  project's instances, this equals ``ceil(rho_x n)``.
  """
  xp = jnp if isinstance(n, jax.Array) or isinstance(rho, jax.Array) else np
  u = rho.shape[-1]
  return xp.ceil(n / u - 1e-9) * xp.ones_like(rho)


def core_counts(key: jax.Array, P_core: jax.Array, n_core: jax.Array) -> jax.Array:
  """(u, S) next-state counts of ``n_core[x]`` generative samples at each core point.

  One multinomial draw per core point: the law of the counts of that many
  i.i.d. draws of ``s' ~ P_core[x]``, at a cost independent of the sample size.
  """
  p = jnp.clip(P_core, 0.0, None)
  p = p / p.sum(-1, keepdims=True)
  return jax.random.multinomial(key, n_core, p, dtype=p.dtype)
