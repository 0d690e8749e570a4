"""ARMOR (arXiv 2510.05528): a 2:4 core wrapped by block-diagonal matrices.

    W_bar ~ A S B,   S 2:4-sparse,   A = blockdiag(A_1..A_na),  B = blockdiag(B_1..B_nb)

fitted to the normalized weight W_bar (see :mod:`armor_jax.solver.layer`) under the
proxy loss ``L = sum_ij (W_bar - A S B)_ij^2 h_j`` (reported divided by its
value at S = 0), starting from NoWag-P (A = B = I, S = W_bar on NoWag-P's
mask, the exact optimum at A = B = I). Two block-coordinate-descent schemes:

``official`` (the authors' code, LawrenceRLiu/ARMOR): per iteration one joint
  Adam step (lr 1e-4) on A, B and the dense core values, then for every block
  pair (output block, input block) one group of 4 sampled with probability
  proportional to the L1 norm of the loss gradient on it, its best of the
  C(4,2) = 6 masks with the kept pair's values by 2-variable least squares.
  Adam can raise the loss.

``exact`` (ours): every step minimizes L over one block of variables given
  the rest (or along a line, for CG), so L never rises:
  * A: each block A_a given S, B is a weighted least-squares problem,
    ``A_a = (Y_a D Z_a^T)(Z_a D Z_a^T)^+`` with Z = S B, D = diag(h);
  * B: each block B_c given A, S is ordinary least squares per column
    (the weight h_j is constant within a column), ``B_c = (G_c^T G_c)^+ G_c^T Y_c``
    with G = A S;
  * values: ``cg_steps`` of preconditioned conjugate gradients on all kept
    values with the mask fixed (each step an exact line minimization);
  * masks: L is separable over block pairs; every group's best replacement
    (all 6 masks tried, least squares for the kept pair given every other
    group) is evaluated, and in each block pair either the best group of
    every row is replaced at once (where that joint change, whose decrease
    is exact, beats the single best group) or the single best group,
    ``core_steps`` times per iteration (``core_update=single``: the single
    best group only, Gauss-Southwell).
  A and B updates (Cholesky solves with the pseudo-inverse's cutoff as
  damping) are accepted per block only where they lower the block's loss, so
  rounding cannot raise L either. Both schemes stop after ``patience``
  iterations in a row without relative improvement ``rtol``.

Both schemes carry the best state seen, so the returned loss is never above
NoWag-P's: the paper's guarantee, enforced. With block size 1 the wrappers
are diagonal: they only rescale the entries of S, and NoWag-P is already the
optimum over 2:4 cores with free values, so ARMOR returns NoWag-P.

Block sizes: ``block_size`` is a request; each side uses the largest divisor
of its dimension not above it (:func:`armor_jax.solver.blockdiag.block_size_for`;
576 at 128 gives 96). The group steps work on input windows of width
lcm(b_B, 4), so a group never straddles two blocks of B.

``objective=output`` fits the same parameterization to the output error with the
full damped X^T X (:mod:`armor_jax.solver.armor_output`, this project's construction).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from armor_jax import errors
from armor_jax.solver import baselines, blockdiag, calibration, layer, sparsity

_HI = jax.lax.Precision.HIGHEST


SCHEMES = ("exact", "official")
CORE_UPDATES = ("rows", "single")
OBJECTIVES = ("diagonal", "output")


@dataclasses.dataclass(frozen=True)
class ArmorConfig:
  """ARMOR's settings, each with its one default (the authors' values where they exist).

  Attributes:
    objective: ``diagonal`` (the paper's proxy: each input channel weighted by its mean
      square) or ``output`` (the output error with the full damped X^T X,
      :mod:`armor_jax.solver.armor_output`; exact scheme only).
    damp: objective ``output``: the damping of X^T X (SparseGPT's, relative to its mean
      diagonal).
    block_size: requested block size of A and B; each side uses the largest
      divisor of its dimension not above it (the paper's runs: 128; the
      authors' configs: 32).
    scheme: exact (monotone block minimization) or official (Adam, the authors' code).
    iters: outer iterations per layer.
    core_steps: exact scheme: group-replacement steps per iteration.
    core_update: exact scheme: what one step replaces in each block pair: ``rows`` (the
      best group of every row at once where that decreases the loss at least as much
      as the single best group, else that group) or ``single`` (the best group).
    cg_steps: exact scheme: conjugate-gradient steps on all kept values per
      iteration (mask fixed).
    lr: official scheme: Adam learning rate (authors: 1e-4).
    sparse_steps: official scheme: sampled group updates per iteration (authors: 1).
    patience: stop after this many iterations without improvement (the authors' value
      for their scheme: 100); 0 disables. Iterations after the stop cost nothing.
    rtol: relative decrease of the loss in one iteration that counts as improvement
      (authors: 1e-6).
    atol: absolute decrease that counts as improvement (authors: 1e-8).
  """
  block_size: int = 128
  scheme: str = "exact"
  objective: str = "diagonal"
  damp: float = 0.01
  iters: int = 12
  core_steps: int = 1
  core_update: str = "rows"
  cg_steps: int = 4
  lr: float = 1e-4
  sparse_steps: int = 1
  patience: int = 100
  rtol: float = 1e-6
  atol: float = 1e-8

  def __post_init__(self):
    errors.check_settings(self, (
        ("block_size", lambda v: v >= 1, "an integer >= 1"),
        ("scheme", lambda v: v in SCHEMES, "one of " + ", ".join(SCHEMES)),
        ("objective", lambda v: v in OBJECTIVES and (v == "diagonal" or self.scheme == "exact"),
         "one of " + ", ".join(OBJECTIVES) + " (output: with scheme exact)"),
        ("damp", lambda v: v >= 0, "a number >= 0"),
        ("iters", lambda v: v >= 0, "an integer >= 0"),
        ("core_steps", lambda v: v >= 0, "an integer >= 0"),
        ("core_update", lambda v: v in CORE_UPDATES, "one of " + ", ".join(CORE_UPDATES)),
        ("cg_steps", lambda v: v >= 0, "an integer >= 0"),
        ("lr", lambda v: v > 0, "a number > 0"),
        ("sparse_steps", lambda v: v >= 1, "an integer >= 1"),
        ("patience", lambda v: v >= 0, "an integer >= 0"),
        ("rtol", lambda v: v >= 0, "a number >= 0"),
        ("atol", lambda v: v >= 0, "a number >= 0"),
    ))


class Problem(struct.PyTreeNode):
  """What the solver needs of a layer: W_bar, h and the block sizes (static)."""
  y: jax.Array          # (d_out, d_in) W_bar
  h: jax.Array          # (d_in,)
  zero_loss: jax.Array  # () sum W_bar^2 h (the loss of S = 0)
  b_a: int = struct.field(pytree_node=False)
  b_b: int = struct.field(pytree_node=False)

  @property
  def b_core(self) -> int:
    """Width of the input windows of the core step: lcm(b_b, 4), so no group straddles two."""
    return math.lcm(self.b_b, 4)


class Factors(NamedTuple):
  """A point of the search: A (n_a, b_a, b_a), B (n_b, b_b, b_b), core S and its mask."""
  a: jax.Array
  b: jax.Array
  core: jax.Array       # (d_out, d_in), zero off the mask
  mask: jax.Array       # (d_out, d_in) bool, 2:4


class State(NamedTuple):
  """Solver state: the current point, the best point seen and their losses."""
  x: Factors
  loss: jax.Array
  best: Factors
  best_loss: jax.Array
  opt: optax.OptState | tuple   # official: Adam state over (A, B, dense core values)
  values: jax.Array             # official: the dense core values (masked ones kept)
  stall: jax.Array              # iterations since the last improvement
  done: jax.Array               # early-stopped (see ArmorConfig.patience)
  steps: jax.Array              # iterations run (those after the stop not counted)
  key: jax.Array


def make_problem(w: jax.Array, h: jax.Array, block_size: int) -> Problem:
  """Normalizes ``w`` and fixes the block sizes for a (d_out, d_in) layer."""
  sparsity.check_groupable(w.shape[1])
  y, _, _ = layer.normalize(w)
  h = jnp.asarray(h, y.dtype)
  h = h / jnp.where(jnp.mean(h) > 0, jnp.mean(h), 1)   # the solution and the normalized loss
  return Problem(y=y, h=h, zero_loss=layer.weighted_sq(y, h),   # ignore h's scale
                 b_a=blockdiag.block_size_for(w.shape[0], block_size),
                 b_b=blockdiag.block_size_for(w.shape[1], block_size))


def approx(x: Factors) -> jax.Array:
  """A S B."""
  return blockdiag.left(x.a, blockdiag.right(x.core, x.b))


def loss(prob: Problem, x: Factors) -> jax.Array:
  """Normalized proxy loss of ``x``."""
  return layer.weighted_sq(prob.y - approx(x), prob.h) / _nonzero(prob.zero_loss)


def _nonzero(z):
  return jnp.where(z > 0, z, 1)


def nowag_start(prob: Problem) -> Factors:
  """NoWag-P's solution as a point of the search (A = B = I)."""
  mask = baselines.nowag_p_mask(prob.y, prob.h)
  d_out, d_in = prob.y.shape
  return Factors(a=blockdiag.identity(d_out, prob.b_a, prob.y.dtype),
                 b=blockdiag.identity(d_in, prob.b_b, prob.y.dtype),
                 core=prob.y * mask, mask=mask)


# ---------------------------------------------------------------------------------------------
# exact block steps


def _psd_solve(g: jax.Array, rhs: jax.Array) -> jax.Array:
  """``g^-1 rhs`` for a batch of symmetric PSD ``g`` (..., b, b), by Cholesky with the
  diagonal raised by ``b eps`` times its mean (the pseudo-inverse's own cutoff scale), so
  a singular ``g`` gives a finite near-minimizer; several times faster than ``eigh`` on CPU."""
  b = g.shape[-1]
  mean = jnp.trace(g, axis1=-2, axis2=-1)[..., None, None] / b
  lam = jnp.where(mean > 0, mean * b * jnp.finfo(g.dtype).eps, 1)
  chol = jnp.linalg.cholesky(g + lam * jnp.eye(b, dtype=g.dtype))
  y = jax.scipy.linalg.solve_triangular(chol, rhs, lower=True)
  return jax.scipy.linalg.solve_triangular(chol, y, lower=True, trans=1)


def step_a(prob: Problem, x: Factors) -> Factors:
  """Each block of A set to its weighted least-squares optimum given S, B (where better)."""
  d_out, d_in = prob.y.shape
  n_a = d_out // prob.b_a
  z = blockdiag.right(x.core, x.b).reshape(n_a, prob.b_a, d_in)
  y = prob.y.reshape(n_a, prob.b_a, d_in)
  zh = z * prob.h
  gram = jnp.einsum("aij,akj->aik", zh, z, precision=_HI)
  cross = jnp.einsum("aij,akj->aik", y * prob.h, z, precision=_HI)
  a_new = jnp.swapaxes(_psd_solve(gram, jnp.swapaxes(cross, 1, 2)), 1, 2)
  better = _quadratic(a_new, gram, cross) < _quadratic(x.a, gram, cross)
  return x._replace(a=jnp.where(better[:, None, None], a_new, x.a))


def _quadratic(m, gram, cross):
  """Per block, ``tr(m gram m^T) - 2 tr(m cross^T)``: the block's loss up to a constant,
  for blocks m (n, b, b) of a least-squares problem with normal equations m gram = cross."""
  mg = jnp.einsum("nik,nkj->nij", m, gram, precision=_HI)
  return jnp.sum(m * (mg - 2 * cross), axis=(1, 2))


def step_b(prob: Problem, x: Factors) -> Factors:
  """Each block of B set to its least-squares optimum given A, S (where better)."""
  d_out, d_in = prob.y.shape
  n_b = d_in // prob.b_b
  g = blockdiag.left(x.a, x.core).reshape(d_out, n_b, prob.b_b)
  y = prob.y.reshape(d_out, n_b, prob.b_b)
  gram = jnp.einsum("oci,ocj->cij", g, g, precision=_HI)
  cross = jnp.einsum("oci,ocj->cij", g, y, precision=_HI)
  b_new = _psd_solve(gram, cross)
  # the loss of block c is sum_j h_j ||y_cj - G_c b_j||^2 over its columns j: weight each
  # column's quadratic form by h_j (transposed, B_c^T gram B_c - 2 B_c^T cross, per column)
  h = prob.h.reshape(n_b, 1, prob.b_b)

  def block_loss(b):
    gb = jnp.einsum("cik,ckj->cij", gram, b, precision=_HI)
    return jnp.sum(b * (gb - 2 * cross) * h, axis=(1, 2))

  better = block_loss(b_new) < block_loss(x.b)
  return x._replace(b=jnp.where(better[:, None, None], b_new, x.b))


# ---------------------------------------------------------------------------------------------
# the core: 6-way group updates


class CoreGeometry(NamedTuple):
  """Per-iteration constants of the group updates, A and B fixed.

  "Block pair" means an output block of A (b_a rows) and an input window of
  width w = lcm(b_b, 4) (G = w / 4 groups): the loss is separable over them.
  Groups are indexed (row r, group column g), g in [0, d_in / 4).

  Attributes:
    kappa: (d_out, 1) ||A[:, r]||^2, the diagonal of A^T A.
    k: (n_a, b_a, b_a) A_a^T A_a.
    q: (n_w, w, w) B_c D_c B_c^T.
    q_gg: (4, 4, d_in / 4) the 4x4 diagonal block of q of each group column.
    q_inv: (6, 3, d_in / 4) for each of the 6 patterns (i, j) the entries
      (u, v, w) of the pseudo-inverse [[u, v], [v, w]] of [[q_ii, q_ij], [q_ij, q_jj]].
  """
  kappa: jax.Array
  k: jax.Array
  q: jax.Array
  q_gg: jax.Array
  q_inv: jax.Array


def _pinv2(a, b, d):
  """Entries (u, v, w) of the pseudo-inverse of symmetric PSD [[a, b], [b, d]] (elementwise)."""
  det = a * d - b * b
  tr = a + d
  regular = det > 1e3 * jnp.finfo(a.dtype).eps * tr * tr
  safe_det = jnp.where(regular, det, 1)
  tr2 = jnp.where(tr > 0, tr * tr, 1)               # rank <= 1: pinv = M / tr(M)^2
  return (jnp.where(regular, d / safe_det, a / tr2), jnp.where(regular, -b / safe_det, b / tr2),
          jnp.where(regular, a / safe_det, d / tr2))


def geometry(prob: Problem, x: Factors) -> CoreGeometry:
  w = prob.b_core
  n_w, n_g = prob.y.shape[1] // w, w // 4
  k = jnp.einsum("aji,ajk->aik", x.a, x.a, precision=_HI)
  b = blockdiag.coarsen(x.b, w)
  q = jnp.einsum("cij,ckj->cik", b * prob.h.reshape(n_w, 1, w), b, precision=_HI)
  q_gg = jnp.diagonal(q.reshape(n_w, n_g, 4, n_g, 4), axis1=1, axis2=3)   # (n_w, 4, 4, G)
  q_gg = q_gg.transpose(1, 2, 0, 3).reshape(4, 4, n_w * n_g)
  q_inv = jnp.stack([jnp.stack(_pinv2(q_gg[i, i], q_gg[i, j], q_gg[j, j]))
                     for i, j in sparsity.PAIRS])
  kappa = jnp.diagonal(k, axis1=1, axis2=2).reshape(-1, 1)
  return CoreGeometry(kappa=kappa, k=k, q=q, q_gg=q_gg, q_inv=q_inv)


def residual_and_gradient(prob: Problem, x: Factors) -> tuple[jax.Array, jax.Array]:
  """(R, P): the residual R = W_bar - A S B and P = A^T R D B^T, both (d_out, d_in).

  dL/dS = -2 P / zero_loss, so P is the core's (scaled) negative gradient.
  """
  r = prob.y - approx(x)
  p = blockdiag.right(blockdiag.left(jnp.swapaxes(x.a, 1, 2), r * prob.h),
                      jnp.swapaxes(x.b, 1, 2))
  return r, p


def core_gradient(prob: Problem, x: Factors) -> jax.Array:
  """P of :func:`residual_and_gradient`."""
  return residual_and_gradient(prob, x)[1]


def group_choice(pg, sg, kap, qg, q_inv):
  """Best 2:4 pattern and values of groups, each given all other groups.

  With a group's current values s (4,) removed, the gradient is
  ``pt = p + kappa Q s`` and the group costs ``-2 v.pt + kappa v^T Q v`` for
  values v; for each of the 6 patterns the kept pair's optimum is
  ``v = Q_pair^+ pt_pair / kappa``. Elementwise over any batch of groups.

  Args:
    pg: (..., 4) P on the groups (see :func:`core_gradient`).
    sg: (..., 4) their current values.
    kap: (...) ||A[:, row]||^2 of each group's row (broadcastable).
    qg: (4, 4, ...) each group's 4x4 block of Q (broadcastable).
    q_inv: (6, 3, ...) see :class:`CoreGeometry`.

  Returns:
    (values (..., 4), mask (..., 4) of each group's best pattern, and gain (...):
    the loss decrease, times zero_loss, of taking it; >= 0, 0 where nothing improves).
  """
  qs = [sum(qg[i, l] * sg[..., l] for l in range(4)) for i in range(4)]
  pt = [pg[..., i] + kap * qs[i] for i in range(4)]
  cur = sum(-2 * sg[..., i] * pt[i] + kap * sg[..., i] * qs[i] for i in range(4))
  k_safe = jnp.where(kap > 0, kap, 1)
  best = None
  for m, (i, j) in enumerate(sparsity.PAIRS):
    u, v, w = q_inv[m]
    vi, vj = (u * pt[i] + v * pt[j]) / k_safe, (v * pt[i] + w * pt[j]) / k_safe
    cost = -2 * (vi * pt[i] + vj * pt[j]) + kap * (
        qg[i, i] * vi * vi + 2 * qg[i, j] * vi * vj + qg[j, j] * vj * vj)
    if best is None:
      best = (cost, jnp.zeros(cost.shape, jnp.int32), vi, vj)
    else:
      take = cost < best[0]
      best = (jnp.where(take, cost, best[0]), jnp.where(take, m, best[1]),
              jnp.where(take, vi, best[2]), jnp.where(take, vj, best[3]))
  cost, pick, vi, vj = best
  pairs = jnp.asarray(sparsity.PAIRS)
  first, second = pairs[pick, 0][..., None], pairs[pick, 1][..., None]
  iota = jnp.arange(4)
  values = jnp.where(iota == first, vi[..., None], jnp.where(iota == second, vj[..., None], 0))
  mask = (iota == first) | (iota == second)
  gain = jnp.where((kap > 0) & (cur - cost > 0), cur - cost, 0)
  return values.astype(sg.dtype), mask, gain


def _as_groups(x: jax.Array) -> jax.Array:
  """(d_out, d_in) -> (d_out, d_in / 4, 4)."""
  return x.reshape(x.shape[0], -1, 4)


def _one_per_block_pair(prob: Problem, idx: jax.Array, ok: jax.Array) -> jax.Array:
  """(d_out, d_in / 4) bool selecting, in each block pair (a, c), the group number
  ``idx[a, c]`` (row-major over its b_a x G groups) where ``ok[a, c]``."""
  b_a, n_g = prob.b_a, prob.b_core // 4
  row, col = idx // n_g, idx % n_g
  n_a, n_w = idx.shape
  r = jnp.arange(b_a)[None, :, None, None]
  g = jnp.arange(n_g)[None, None, None, :]
  sel = (r == row[:, None, :, None]) & (g == col[:, None, :, None]) & ok[:, None, :, None]
  return sel.reshape(n_a * b_a, n_w * n_g)


def _per_block_pair(prob: Problem, x: jax.Array) -> jax.Array:
  """(d_out, d_in / 4) group values -> (n_a, n_w, b_a * G)."""
  n_a, n_g = x.shape[0] // prob.b_a, prob.b_core // 4
  n_w = x.shape[1] // n_g
  return x.reshape(n_a, prob.b_a, n_w, n_g).transpose(0, 2, 1, 3).reshape(n_a, n_w, -1)


def _rank_one(prob: Problem, geo: CoreGeometry, p: jax.Array, sel: jax.Array,
              delta: jax.Array) -> jax.Array:
  """P after the selected groups (one per block pair) changed by ``delta`` (d_out, d_in):
  ``P_ac -= K_a[:, i] (delta_i^T Q_c[group, :])`` for the changed row i of each pair."""
  b_a, w = prob.b_a, prob.b_core
  n_a, n_w = p.shape[0] // b_a, p.shape[1] // w
  row = jnp.any(sel.reshape(n_a, b_a, n_w, -1), axis=-1).transpose(0, 2, 1)   # (n_a, n_w, b_a)
  k_col = jnp.einsum("aij,acj->aci", geo.k, row.astype(p.dtype), precision=_HI)
  d_row = jnp.sum(delta.reshape(n_a, b_a, n_w, w), axis=1)                     # (n_a, n_w, w)
  q_row = jnp.einsum("acj,cjk->ack", d_row, geo.q, precision=_HI)
  outer = k_col[..., :, None] * q_row[..., None, :]                           # (n_a, n_w, b_a, w)
  return p - outer.transpose(0, 2, 1, 3).reshape(p.shape)


def _apply_selected(sel, values, mask, s, m):
  """Replaces the selected groups of core ``s`` and mask ``m`` (both (d_out, d_in))."""
  shape = s.shape
  sg, mg = s.reshape(values.shape), m.reshape(values.shape)
  s_new = jnp.where(sel[..., None], values, sg).reshape(shape)
  m_new = jnp.where(sel[..., None], mask, mg).reshape(shape)
  return s_new, m_new


def _pair_sums(prob: Problem, x: jax.Array) -> jax.Array:
  """(d_out, d_in) -> (n_a, n_w): the sum over each block pair."""
  b_a, w = prob.b_a, prob.b_core
  return jnp.sum(x.reshape(x.shape[0] // b_a, b_a, x.shape[1] // w, w), axis=(1, 3))


def _spread(prob: Problem, x: jax.Array) -> jax.Array:
  """(n_a, n_w) -> (d_out, d_in): each block pair's entry over its entries."""
  return jnp.repeat(jnp.repeat(x, prob.b_a, axis=0), prob.b_core, axis=1)


def core_steps(prob: Problem, x: Factors, n_steps: int, update: str = "rows",
               p: jax.Array | None = None) -> Factors:
  """``n_steps`` exact group-replacement steps on the core (A, B fixed; the loss never rises).

  Each step evaluates every group's best pattern and values given all other groups
  (:func:`group_choice`). ``single``: in every block pair the group of largest decrease is
  replaced (Gauss-Southwell) and P is kept by that pair's rank-one change. ``rows``: in
  every block pair the best group of each row is replaced at once where the joint change
  Delta decreases the loss, ``2 <P, Delta> - <K Delta Q, Delta>`` (exact: the loss is a
  quadratic in S, separable over block pairs), at least as much as the single best group
  does, else that group; P is kept exactly, ``P - K Delta Q``. Groups of one row are coupled
  only through Q and rows only through K, so early on (A, B near identity) a rows step is
  worth many single ones at about twice a single step's cost.

  Args:
    prob, x: the problem and the point.
    n_steps: steps.
    update: ``rows`` or ``single``.
    p: P of :func:`residual_and_gradient` at ``x`` if known (else computed).
  """
  if update not in CORE_UPDATES:
    raise ValueError(f"unknown core update {update!r}; allowed: {', '.join(CORE_UPDATES)}")
  # the barrier keeps XLA from fusing (recomputing) the geometry into every step's kernels
  geo = jax.lax.optimization_barrier(geometry(prob, x))
  d_out, d_in = prob.y.shape
  n_w, n_g = d_in // prob.b_core, prob.b_core // 4

  def body(_, carry):
    p, s, m = carry
    values, mask, gain = group_choice(_as_groups(p), _as_groups(s), geo.kappa, geo.q_gg,
                                      geo.q_inv)
    flat = _per_block_pair(prob, gain)
    sel = _one_per_block_pair(prob, jnp.argmax(flat, -1), jnp.max(flat, -1) > 0)
    s_one, m_one = _apply_selected(sel, values, mask, s, m)
    p_one = _rank_one(prob, geo, p, sel, s_one - s)
    if update == "single":
      return p_one, s_one, m_one
    per_row = gain.reshape(d_out, n_w, n_g)
    rows = ((jnp.arange(n_g) == jnp.argmax(per_row, -1)[..., None])
            & (jnp.max(per_row, -1) > 0)[..., None]).reshape(gain.shape)
    s_rows, m_rows = _apply_selected(rows, values, mask, s, m)
    delta = s_rows - s
    kdq = blockdiag.left(geo.k, blockdiag.right(delta, geo.q))
    joint = _pair_sums(prob, delta * (2 * p - kdq))
    take = _spread(prob, joint >= jnp.max(flat, -1))
    return (jnp.where(take, p - kdq, p_one), jnp.where(take, s_rows, s_one),
            jnp.where(take, m_rows, m_one))

  p = core_gradient(prob, x) if p is None else p
  _, s, m = jax.lax.fori_loop(0, n_steps, body, (p, x.core, x.mask))
  return x._replace(core=s, mask=m)


def greedy_core_steps(prob: Problem, x: Factors, n_steps: int) -> Factors:
  """``n_steps`` Gauss-Southwell single-group steps (:func:`core_steps`, ``single``)."""
  return core_steps(prob, x, n_steps, "single")


def values_cg(prob: Problem, x: Factors, n_steps: int) -> Factors:
  """``n_steps`` of preconditioned conjugate gradients on all kept core values, mask fixed.

  The loss is a quadratic in the kept values with Hessian-vector product
  ``V -> (K V Q) * mask`` (K = A^T A, Q = B D B^T, both block diagonal, so a
  product costs two block-diagonal matmuls) and minus half-gradient ``P * mask``.
  Each CG step is an exact line minimization from the current point, so the
  loss never rises (the Jacobi preconditioner ``kappa_i Q_jj`` keeps that).
  """
  return values_cg_and_gradient(prob, x, n_steps)[0]


def values_cg_and_gradient(prob: Problem, x: Factors, n_steps: int):
  """:func:`values_cg`, and P (:func:`residual_and_gradient`) at the new point, kept
  along the way (``P -= alpha K D Q`` per step) instead of recomputed."""
  p = core_gradient(prob, x)
  if n_steps == 0:
    return x, p
  k = jnp.einsum("aji,ajk->aik", x.a, x.a, precision=_HI)
  q = jnp.einsum("cij,ckj->cik", x.b * prob.h.reshape(-1, 1, prob.b_b), x.b, precision=_HI)
  diag = jnp.diagonal(k, axis1=1, axis2=2).reshape(-1, 1) * jnp.diagonal(
      q, axis1=1, axis2=2).reshape(1, -1)
  core, p = kept_values_cg(x, p, diag, lambda d: blockdiag.left(k, blockdiag.right(d, q)),
                           n_steps)
  return x._replace(core=core), p


def kept_values_cg(x: Factors, p: jax.Array, diag: jax.Array, kdq, n_steps: int):
  """``n_steps`` of conjugate gradients on the kept values of ``x.core`` (mask fixed) for a
  loss whose Hessian-vector product is ``V -> kdq(V) * mask`` and minus half-gradient
  ``p * mask``, Jacobi-preconditioned by ``diag``; each step an exact line minimization.
  Returns (core, P at the new point: ``p - alpha kdq(d)`` per step)."""
  m = x.mask.astype(x.core.dtype)
  inv_diag = jnp.where(diag > 0, 1 / jnp.where(diag > 0, diag, 1), 0) * m
  r = p * m
  z = r * inv_diag
  rz = jnp.sum(r * z)

  def body(_, carry):
    s, p, r, z, d, rz = carry
    full = kdq(d)
    hd = full * m
    curv = jnp.sum(d * hd)
    alpha = jnp.where(curv > 0, rz / jnp.where(curv > 0, curv, 1), 0)
    s, p, r = s + alpha * d, p - alpha * full, r - alpha * hd
    z = r * inv_diag
    rz_new = jnp.sum(r * z)
    d = z + jnp.where(rz > 0, rz_new / jnp.where(rz > 0, rz, 1), 0) * d
    return s, p, r, z, d, rz_new

  s, p, *_ = jax.lax.fori_loop(0, n_steps, body, (x.core, p, r, z, z, rz))
  return s * m, p


# ---------------------------------------------------------------------------------------------
# schemes


def init_state(prob: Problem, cfg: ArmorConfig, key: jax.Array, x: Factors | None = None,
               l0: jax.Array | None = None) -> State:
  """The state at ``x`` of loss ``l0`` (default NoWag-P's point and its proxy loss)."""
  if x is None:
    x = nowag_start(prob)
    l0 = loss(prob, x)
  params = (x.a, x.b, x.core)
  opt = optax.adam(cfg.lr).init(params) if cfg.scheme == "official" else ()
  return State(x=x, loss=l0, best=x, best_loss=l0, opt=opt, values=x.core,
               stall=jnp.zeros((), jnp.int32), done=jnp.zeros((), bool),
               steps=jnp.zeros((), jnp.int32), key=key)


def _keep_best(state: State, x: Factors, l: jax.Array) -> State:
  better = l < state.best_loss
  best = jax.tree.map(lambda n, o: jnp.where(better, n, o), x, state.best)
  return state._replace(x=x, loss=l, best=best, best_loss=jnp.minimum(l, state.best_loss))


def exact_iteration(prob: Problem, cfg: ArmorConfig, state: State) -> State:
  x = step_a(prob, state.x)
  x = step_b(prob, x)
  x, p = values_cg_and_gradient(prob, x, cfg.cg_steps)
  x = core_steps(prob, x, cfg.core_steps, cfg.core_update, p)
  return _keep_best(state, x, loss(prob, x))


def _stall(cfg: ArmorConfig, state: State, new: State) -> State:
  """``new`` with the stop rule applied: ``patience`` iterations in a row whose loss fell by
  less than ``rtol`` (relative) or ``atol`` end the run."""
  improved = (new.loss <= (1 - cfg.rtol) * state.loss) & (new.loss <= state.loss - cfg.atol)
  stall = jnp.where(improved, 0, state.stall + 1)
  return new._replace(stall=stall, done=(cfg.patience > 0) & (stall >= cfg.patience),
                      steps=state.steps + 1)


def sampled_core_step(prob: Problem, x: Factors, key: jax.Array):
  """The official sparse-core step: per block pair one group, drawn with probability
  proportional to the L1 norm of dL/dS on it, set to its best pattern (if better).

  Returns the new point, the (d_out, d_in / 4) bool map of the replaced groups
  and the new loss (the loss before, less the exact decrease of the replacements:
  one group per block pair, and the loss is separable over block pairs).
  """
  geo = geometry(prob, x)
  diff, p = residual_and_gradient(prob, x)
  l_before = layer.weighted_sq(diff, prob.h) / _nonzero(prob.zero_loss)
  pg, sg = _as_groups(p), _as_groups(x.core)
  weight = _per_block_pair(prob, jnp.sum(jnp.abs(pg), -1))          # (n_a, n_w, b_a * G)
  logits = jnp.where(weight > 0, jnp.log(jnp.where(weight > 0, weight, 1)), -jnp.inf)
  any_w = jnp.any(weight > 0, -1)
  pick = jax.random.categorical(key, jnp.where(any_w[..., None], logits, 0.0), axis=-1)
  n_g = prob.b_core // 4
  n_a, n_w = pick.shape
  rows = jnp.arange(n_a)[:, None] * prob.b_a + pick // n_g           # (n_a, n_w)
  cols = jnp.arange(n_w)[None, :] * n_g + pick % n_g
  values, mask, gain = group_choice(pg[rows, cols], sg[rows, cols], geo.kappa[rows, 0],
                                    geo.q_gg[:, :, cols], geo.q_inv[:, :, cols])
  ok = any_w & (gain > 0)
  core = sg.at[rows, cols].set(jnp.where(ok[..., None], values, sg[rows, cols]))
  m = _as_groups(x.mask)
  m = m.at[rows, cols].set(jnp.where(ok[..., None], mask, m[rows, cols]))
  touched = jnp.zeros(pg.shape[:2], bool).at[rows, cols].set(ok)
  l_after = l_before - jnp.sum(gain * ok) / _nonzero(prob.zero_loss)
  return x._replace(core=core.reshape(x.core.shape), mask=m.reshape(x.mask.shape)), touched, l_after


def official_iteration(prob: Problem, cfg: ArmorConfig, state: State) -> State:
  opt = optax.adam(cfg.lr)
  x0 = state.x

  def objective(params):
    a, b, values = params
    return loss(prob, Factors(a, b, values * x0.mask, x0.mask))

  params = (x0.a, x0.b, state.values)
  grads = jax.grad(objective)(params)
  updates, opt_state = opt.update(grads, state.opt, params)
  a, b, values = optax.apply_updates(params, updates)
  x = Factors(a, b, values * x0.mask, x0.mask)
  key, sub = jax.random.split(state.key)
  l = loss(prob, x) if cfg.sparse_steps == 0 else None
  for k in jax.random.split(sub, cfg.sparse_steps):
    x, touched, l = sampled_core_step(prob, x, k)
    touched = jnp.repeat(touched, 4, axis=1) & x.mask
    values = jnp.where(touched, x.core, values)   # kept values set; pruned ones stay
  return _keep_best(state, x, l)._replace(opt=opt_state, values=values, key=key)


def iteration(prob: Problem, cfg: ArmorConfig, state: State) -> State:
  """One iteration of ``cfg.scheme``; once the stop rule has fired, nothing moves (and
  nothing is computed)."""
  if cfg.scheme not in SCHEMES:
    raise ValueError(f"unknown ARMOR scheme {cfg.scheme!r}; allowed: {', '.join(SCHEMES)}")
  step = exact_iteration if cfg.scheme == "exact" else official_iteration
  if cfg.objective == "output":
    from armor_jax.solver import armor_output  # pylint: disable=import-outside-toplevel
    step = armor_output.iteration
  return jax.lax.cond(state.done, lambda st: st,
                      lambda st: _stall(cfg, st, step(prob, cfg, st)), state)


def _iterations(prob, cfg: ArmorConfig, state: State, n: int):
  def body(state, _):
    state = iteration(prob, cfg, state)
    return state, state.loss
  return jax.lax.scan(body, state, None, length=n)


@functools.partial(jax.jit, static_argnames=("cfg", "n"), donate_argnames=("state",))
def run_iterations(prob: Problem, cfg: ArmorConfig, state: State, n: int):
  """``n`` iterations in one jitted scan; returns the state and the (n,) loss curve.

  ``state`` is donated: the new state takes its buffers, and the one passed in must not be
  used again (copy it first to keep it)."""
  return _iterations(prob, cfg, state, n)


@functools.partial(jax.jit, static_argnames=("cfg", "n"), donate_argnames=("state",))
def run_iterations_many(prob, cfg: ArmorConfig, state: State, n: int):
  """:func:`run_iterations` on problems and states stacked along a leading axis (one
  vmapped program); returns the states and the (batch, n) loss curves. A problem whose
  stop rule has fired stays put while the others go on."""
  return jax.vmap(lambda p, s: _iterations(p, cfg, s, n))(prob, state)


def to_layer(prob: Problem, x: Factors, w: jax.Array) -> layer.PrunedLayer:
  _, r2, r1 = layer.normalize(w)
  return layer.PrunedLayer(sparsity.pack(x.core, x.mask), r2, r1, a=x.a, b=x.b, method="armor")


def _start_diagonal(w, h, cfg, key):
  prob = make_problem(w, h, cfg.block_size)
  return prob, init_state(prob, cfg, key)


def _start_full(w, stats, cfg, key):
  from armor_jax.solver import armor_output  # pylint: disable=import-outside-toplevel
  prob = armor_output.make_problem(w, stats.second_moment, cfg.damp, cfg.block_size)
  x = armor_output.start(prob, w, stats, cfg.damp)
  return prob, init_state(prob, cfg, key, x, armor_output.loss(prob, x))


_start = jax.jit(_start_diagonal, static_argnames=("cfg",))
_start_output = jax.jit(_start_full, static_argnames=("cfg",))


@functools.partial(jax.jit, static_argnames=("cfg",))
def _start_many(w, stats, cfg, key):
  """The start of each stacked problem (``stats``: stacked ``h`` for the diagonal
  objective, stacked :class:`calibration.Stats` for ``output``)."""
  start = _start_full if cfg.objective == "output" else _start_diagonal
  return jax.vmap(lambda w, st, k: start(w, st, cfg, k))(w, stats, key)


_to_layer = jax.jit(to_layer)
_to_layer_many = jax.jit(jax.vmap(to_layer))

# run_iterations' scratch per byte of a float32 (d_out, d_in) matrix, per byte of A and B and
# per byte of a float32 (d_in, d_in) matrix, by scheme (objective output: by objective): bounds
# on what XLA's memory analysis reports for the compiled iterations (tests/test_armor_layer.py
# checks them against it at several shapes and block sizes)
_SCRATCH = {"exact": (8.2, 2.6, 0.0), "official": (7.0, 5.7, 0.0), "output": (8.0, 3.2, 2.05)}


def working_bytes(d_out: int, d_in: int, cfg: ArmorConfig = ArmorConfig()) -> int:
  """Bytes ARMOR holds while iterating on a float32 (d_out, d_in) layer: the problem, the
  state (current and best point, the official scheme's Adam moments; donated to each
  call, so held once) and the iterations' scratch. The input weight is not counted."""
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  if cfg.objective == "output":
    stats = calibration.Stats(f32(), f32(d_in), f32(d_in, d_in))
    shapes = jax.eval_shape(lambda w, st, k: _start_output(w, st, cfg, k), f32(d_out, d_in),
                            stats, key)
  else:
    shapes = jax.eval_shape(lambda w, h, k: _start(w, h, cfg, k), f32(d_out, d_in), f32(d_in),
                            key)
  held = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(shapes))
  per_matrix, per_factor, per_square = _SCRATCH[
      "output" if cfg.objective == "output" else cfg.scheme]
  x = shapes[1].x
  factors = 4 * (x.a.size + x.b.size)
  return int(held + per_matrix * 4 * d_out * d_in + per_factor * factors
             + per_square * 4 * d_in * d_in)


def _check_statistics(cfg: ArmorConfig, stats) -> None:
  if cfg.objective == "output" and any(st.xtx is None for st in stats):
    raise ValueError("ARMOR's objective=output needs the full X^T X (statistics with full=True)")


def armor(w: jax.Array, stats: calibration.Stats, cfg: ArmorConfig = ArmorConfig(),
          key: jax.Array | None = None, chunk: int | None = None,
          progress=None, phase=None) -> tuple[layer.PrunedLayer, np.ndarray]:
  """Prunes one layer with ARMOR.

  Args:
    w: (d_out, d_in) weight (any float dtype; computed in float32, or float64
      when given float64 with x64 on).
    stats: calibration statistics (``h``; objective ``output``: also the full X^T X).
    cfg: settings.
    key: PRNG key (the official scheme samples groups); default key 0.
    chunk: iterations per jitted call (progress is reported between calls);
      default all at once.
    progress: optional callable(iterations_done, best_loss).
    phase: optional callable(name) -> context manager timing the named part
      (``armor_start``: normalization and NoWag-P; ``armor_iterations``;
      ``armor_finish``: the packed layer), e.g. :class:`armor_jax.model.pipeline.Phases`.

  Returns:
    (the best layer seen, the loss curve: (iterations run + 1,) float64 starting at
    NoWag-P's loss; fewer than ``cfg.iters`` iterations where the stop rule fired).
  """
  phase = phase or (lambda name: contextlib.nullcontext())
  key = jax.random.PRNGKey(0) if key is None else key
  _check_statistics(cfg, [stats])
  with phase("armor_start"):
    prob, state = jax.block_until_ready(
        _start_output(w, stats, cfg, key) if cfg.objective == "output"
        else _start(w, stats.h, cfg, key))
  curve = [float(state.loss)]
  chunk = cfg.iters if not chunk else chunk
  done = 0
  while done < cfg.iters and not bool(state.done):
    n = min(chunk, cfg.iters - done)
    with phase("armor_iterations"):
      state, losses = run_iterations(prob, cfg, state, n)
      ran = int(state.steps) - done
    curve.extend(np.asarray(losses, np.float64)[:ran].tolist())
    done += ran
    if progress is not None:
      progress(done, float(state.best_loss))
  with phase("armor_finish"):
    out = jax.block_until_ready(_to_layer(prob, state.best, w))
  return out, np.asarray(curve)


def armor_many(ws, stats, cfg: ArmorConfig = ArmorConfig(), keys=None,
               phase=None) -> list[tuple[layer.PrunedLayer, np.ndarray]]:
  """ARMOR on several layers of one shape at once: their problems stacked and every
  iteration run as one vmapped program (on a CPU, two 1536x576 layers take about a sixth
  less time together than one after the other; on an accelerator, small layers fill it
  better). Each layer's result is what :func:`armor` gives it, to rounding: the same
  start, steps and stop rule, each problem stopping on its own.

  Args:
    ws: same-shape (d_out, d_in) weights.
    stats: their calibration statistics (one :class:`calibration.Stats` each; a shared
      one may be passed more than once).
    cfg: settings.
    keys: one PRNG key per layer; default key 0 for each.
    phase: as in :func:`armor`.

  Returns:
    [(the best layer seen, the loss curve)] in the order of ``ws``, as :func:`armor`.
  """
  phase = phase or (lambda name: contextlib.nullcontext())
  if len({tuple(w.shape) for w in ws}) != 1:
    raise ValueError(f"armor_many needs layers of one shape; got {[tuple(w.shape) for w in ws]}")
  keys = [jax.random.PRNGKey(0)] * len(ws) if keys is None else list(keys)
  _check_statistics(cfg, stats)
  if len(ws) == 1:
    return [armor(ws[0], stats[0], cfg, key=keys[0], phase=phase)]
  stack = lambda *x: jnp.stack(x)
  w = jnp.stack(ws)
  with phase("armor_start"):
    st = (jax.tree.map(stack, *stats) if cfg.objective == "output"
          else jnp.stack([s.h for s in stats]))
    prob, state = jax.block_until_ready(_start_many(w, st, cfg, jnp.stack(keys)))
    del st
  first = np.asarray(state.loss, np.float64)
  with phase("armor_iterations"):
    state, losses = run_iterations_many(prob, cfg, state, cfg.iters)
    steps, losses = np.asarray(state.steps), np.asarray(losses, np.float64)
  curves = [np.concatenate([[first[i]], losses[i, :steps[i]]]) for i in range(len(ws))]
  with phase("armor_finish"):
    out = jax.block_until_ready(_to_layer_many(prob, state.best, w))
  return [(jax.tree.map(lambda x, i=i: x[i], out), c) for i, c in enumerate(curves)]


def step_seconds(prob, cfg: ArmorConfig, state: State, repeats: int = 3) -> dict:
  """Wall seconds of one exact iteration's parts at ``state``'s point, each compiled alone
  and timed after a warm-up call (mean of ``repeats``): ``a``, ``b`` (the two wrapper
  solves), ``cg`` (the values' conjugate gradients, P included), ``core`` (the group
  replacements), ``loss``. The parts' costs depend on the shapes, not the values, so
  this splits the time of :func:`run_iterations` by part for a layer of this shape.
  ``prob`` is a :class:`Problem`, or for objective ``output`` an
  :class:`armor_jax.solver.armor_output.OutputProblem`."""
  if cfg.scheme != "exact":
    raise ValueError("step_seconds times the exact scheme's parts")
  if cfg.objective == "output":
    from armor_jax.solver import armor_output as mod  # pylint: disable=import-outside-toplevel
    grad = mod.gradient
  else:
    mod, grad = sys.modules[__name__], core_gradient
  x = state.x
  p = grad(prob, x)
  parts = {
      "a": (jax.jit(mod.step_a), (prob, x)),
      "b": (jax.jit(mod.step_b), (prob, x)),
      "cg": (jax.jit(mod.values_cg_and_gradient, static_argnums=2), (prob, x, cfg.cg_steps)),
      "core": (jax.jit(mod.core_steps, static_argnums=(2, 3)),
               (prob, x, cfg.core_steps, cfg.core_update, p)),
      "loss": (jax.jit(mod.loss), (prob, x)),
  }
  out = {}
  for name, (fn, args) in parts.items():
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(repeats):
      jax.block_until_ready(fn(*args))
    out[name] = (time.perf_counter() - t0) / repeats
  return out
