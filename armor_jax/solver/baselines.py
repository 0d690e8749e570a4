"""2:4 pruning baselines at the layer level: magnitude, Wanda, SparseGPT, NoWag-P.

Each is a pure function ``(w, stats, **config) -> PrunedLayer`` of a
(d_out, d_in) weight and the layer's calibration statistics
(:class:`~armor_jax.solver.calibration.Stats`). 2:4 groups run along the input
dimension; ties keep the lower column (see :func:`sparsity.mask_from_scores`).

* magnitude: keep the 2 largest |W_ij| of each group.
* Wanda (Sun et al. 2023): score |W_ij| ||X_j||_2, i.e. |W_ij| sqrt(h_j).
* NoWag-P (Liu et al., arXiv 2504.14569): normalize W (columns, then rows),
  score W_bar_ij^2 h_j, keep W_bar on the mask; no weight update. It is the
  exact minimizer of the proxy loss over 2:4 cores when A = B = I.
* SparseGPT (Frantar & Alistarh 2023): H = 2 XtX / n + damp mean(diag H) I
  (dead inputs, diag H = 0, get H_jj = 1 and W_:j = 0); U = upper Cholesky
  factor of H^-1; columns left to right, at each group of 4 prune the 2 with
  the smallest w^2 / U_cc^2, and spread each pruned column's error over the
  later columns (OBS update ``W[:, c:] -= (w_c - q_c) / U_cc * U[c, c:]``);
  lazy blocks of ``blocksize`` columns (updates of later blocks batched into
  one matmul per block). ``blocksize`` becomes the largest multiple of 4
  dividing d_in that is at most the request (lazy batching does not change
  the result, only the speed).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from armor_jax.solver import blockdiag, calibration, layer, sparsity

_HI = jax.lax.Precision.HIGHEST


def magnitude(w: jax.Array, stats: calibration.Stats | None = None) -> layer.PrunedLayer:
  """Magnitude 2:4: the two largest |W| of every group (``stats`` unused)."""
  del stats
  mask = sparsity.mask_from_scores(jnp.abs(w.astype(layer.compute_dtype(w))))
  return layer.from_mask(w, mask, "magnitude")


def wanda(w: jax.Array, stats: calibration.Stats) -> layer.PrunedLayer:
  """Wanda 2:4: score |W_ij| * ||X_j||_2."""
  w = w.astype(layer.compute_dtype(w))
  mask = sparsity.mask_from_scores(_unit_max(jnp.abs(w)) * jnp.sqrt(_unit_max(stats.h, w.dtype)))
  return layer.from_mask(w, mask, "wanda")


def _unit_max(x, dtype=None):
  """x / max(x) (x >= 0): scores compared within a group are unchanged, and cannot overflow."""
  x = jnp.asarray(x, dtype)
  m = jnp.max(x)
  return x / jnp.where(m > 0, m, 1)


def nowag_p_mask(w_bar: jax.Array, h: jax.Array) -> jax.Array:
  """NoWag-P's 2:4 mask of a normalized weight: top-2 of W_bar^2 h per group."""
  return sparsity.mask_from_scores(w_bar * w_bar * _unit_max(h, w_bar.dtype))


def nowag_p(w: jax.Array, stats: calibration.Stats) -> layer.PrunedLayer:
  """NoWag-P 2:4: normalize, keep the top-2 of W_bar^2 h per group, no update."""
  w_bar, _, _ = layer.normalize(w)
  return layer.from_mask(w, nowag_p_mask(w_bar, stats.h), "nowag_p", normalized=True)


def sparsegpt_hinv(second_moment: jax.Array, damp: float) -> tuple[jax.Array, jax.Array]:
  """(U, dead): upper Cholesky factor of the damped inverse Hessian, dead-input mask."""
  # H = 2 XtX / n, rescaled to unit mean diagonal: the masks and updates do not change
  # (U scales by s^-1/2 and enters as ratios), and huge or tiny activations cannot overflow
  diag = jnp.diagonal(second_moment)
  dead = diag == 0
  hess = second_moment / jnp.where(jnp.mean(diag) > 0, jnp.mean(diag), 1)
  hess = hess + jnp.diag(dead.astype(hess.dtype))
  hess = hess + damp * jnp.mean(jnp.diagonal(hess)) * jnp.eye(hess.shape[0], dtype=hess.dtype)
  low = jnp.linalg.cholesky(hess)
  eye = jnp.eye(hess.shape[0], dtype=hess.dtype)
  low_inv = jax.scipy.linalg.solve_triangular(low, eye, lower=True)
  hinv = low_inv.T @ low_inv
  return jnp.linalg.cholesky(hinv).T, dead


@functools.partial(jax.jit, static_argnames=("blocksize",))
def _sparsegpt(w, u, blocksize):
  d_out, d_in = w.shape
  n_blocks = d_in // blocksize
  col = jnp.arange(d_in)

  def one_block(w, start):
    w1 = jax.lax.dynamic_slice(w, (0, start), (d_out, blocksize))
    u_rows = jax.lax.dynamic_slice(u, (start, 0), (blocksize, d_in))   # U[block, :]
    u1 = jax.lax.dynamic_slice(u_rows, (0, start), (blocksize, blocksize))
    d1 = jnp.diagonal(u1)

    def one_group(g, carry):
      w1, err1, mask1 = carry
      c0 = 4 * g
      grp = jax.lax.dynamic_slice(w1, (0, c0), (d_out, 4))
      dg = jax.lax.dynamic_slice(d1, (c0,), (4,))
      keep = sparsity.mask_from_scores(jnp.abs(grp) / jnp.abs(dg)[None, :])   # = w^2 / U_cc^2 order
      for k in range(4):                            # the group's 4 columns in order
        c = c0 + k
        wc = jax.lax.dynamic_index_in_dim(w1, c, axis=1, keepdims=False)
        err = wc * (1 - keep[:, k]) / d1[c]         # (w - q) / U_cc
        w1 = w1 - err[:, None] * u1[c][None, :]     # U upper: columns < c untouched, c -> q
        err1 = jax.lax.dynamic_update_index_in_dim(err1, err, c, axis=1)
      mask1 = jax.lax.dynamic_update_slice(mask1, keep, (0, c0))
      return w1, err1, mask1

    init = (w1, jnp.zeros_like(w1), jnp.zeros((d_out, blocksize), bool))
    w1, err1, mask1 = jax.lax.fori_loop(0, blocksize // 4, one_group, init)
    later = (col >= start + blocksize).astype(w.dtype)
    w = w - jnp.matmul(err1, u_rows * later[None, :], precision=_HI)
    w = jax.lax.dynamic_update_slice(w, w1 * mask1, (0, start))
    return w, mask1

  w, masks = jax.lax.scan(one_block, w, jnp.arange(n_blocks) * blocksize)
  mask = masks.transpose(1, 0, 2).reshape(d_out, d_in)
  return w, mask


def sparsegpt(w: jax.Array, stats: calibration.Stats, damp: float = 0.01,
              blocksize: int = 128) -> layer.PrunedLayer:
  """SparseGPT 2:4 with OBS weight updates (see module docstring)."""
  dt = layer.compute_dtype(w)
  w = w.astype(dt)
  sparsity.check_groupable(w.shape[1])
  u, dead = sparsegpt_hinv(stats.second_moment.astype(dt), damp)
  w = jnp.where(dead[None, :], 0, w)
  bs = blockdiag.block_size_for(w.shape[1], blocksize, multiple_of=4)
  w_new, mask = _sparsegpt(w, u, bs)
  return layer.from_mask(w_new, mask, "sparsegpt")


METHODS = {"magnitude": magnitude, "wanda": wanda, "sparsegpt": sparsegpt, "nowag_p": nowag_p}
