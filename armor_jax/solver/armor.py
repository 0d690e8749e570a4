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
  Early stop after ``patience`` iterations without relative improvement
  ``rtol`` (as the code). Adam can raise the loss.

``exact`` (ours): every step minimizes L over one block of variables given
  the rest (or along a line, for CG), so L never rises:
  * A: each block A_a given S, B is a weighted least-squares problem,
    ``A_a = (Y_a D Z_a^T)(Z_a D Z_a^T)^+`` with Z = S B, D = diag(h);
  * B: each block B_c given A, S is ordinary least squares per column
    (the weight h_j is constant within a column), ``B_c = (G_c^T G_c)^+ G_c^T Y_c``
    with G = A S;
  * values: ``cg_steps`` of preconditioned conjugate gradients on all kept
    values with the mask fixed (each step an exact line minimization);
  * masks: L is separable over block pairs; in each, the group with the
    largest achievable decrease (all 6 masks tried, least squares for the kept
    pair given every other group) is replaced, Gauss-Southwell style, all
    block pairs in parallel, ``core_steps`` times per iteration, with the
    block pair's gradient kept current by rank-one updates.
  A and B updates are accepted per block only where they lower the block's
  loss (so rounding in the pseudo-inverse cannot raise L either).

Both schemes carry the best state seen, so the returned loss is never above
NoWag-P's: the paper's guarantee, enforced. With block size 1 the wrappers
are diagonal: they only rescale the entries of S, and NoWag-P is already the
optimum over 2:4 cores with free values, so ARMOR returns NoWag-P.

Block sizes: ``block_size`` is a request; each side uses the largest divisor
of its dimension not above it (:func:`armor_jax.solver.blockdiag.block_size_for`;
576 at 128 gives 96). The group steps work on input windows of width
lcm(b_B, 4), so a group never straddles two blocks of B.
"""

from __future__ import annotations

import dataclasses
import functools
import math
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


@dataclasses.dataclass(frozen=True)
class ArmorConfig:
  """ARMOR's settings, each with its one default (the authors' values where they exist).

  Attributes:
    block_size: requested block size of A and B; each side uses the largest
      divisor of its dimension not above it (the paper's runs: 128; the
      authors' configs: 32).
    scheme: exact (monotone block minimization) or official (Adam, the authors' code).
    iters: outer iterations per layer.
    core_steps: exact scheme: greedy group replacements per block pair per iteration.
    cg_steps: exact scheme: conjugate-gradient steps on all kept values per
      iteration (mask fixed).
    lr: official scheme: Adam learning rate (authors: 1e-4).
    sparse_steps: official scheme: sampled group updates per iteration (authors: 1).
    patience: official scheme: stop after this many iterations without
      improvement (authors: 100); 0 disables.
    rtol: official scheme: relative decrease that counts as improvement (authors: 1e-6).
    atol: official scheme: absolute decrease that counts as improvement (authors: 1e-8).
  """
  block_size: int = 128
  scheme: str = "exact"
  iters: int = 25
  core_steps: int = 16
  cg_steps: int = 8
  lr: float = 1e-4
  sparse_steps: int = 1
  patience: int = 100
  rtol: float = 1e-6
  atol: float = 1e-8

  def __post_init__(self):
    errors.check_settings(self, (
        ("block_size", lambda v: v >= 1, "an integer >= 1"),
        ("scheme", lambda v: v in SCHEMES, "one of " + ", ".join(SCHEMES)),
        ("iters", lambda v: v >= 0, "an integer >= 0"),
        ("core_steps", lambda v: v >= 0, "an integer >= 0"),
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
  stall: jax.Array              # official: iterations since the last improvement
  done: jax.Array               # official: early-stopped
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


def _psd_pinv(g: jax.Array) -> jax.Array:
  """Pseudo-inverse of a batch of symmetric PSD matrices (..., b, b)."""
  lam, vec = jnp.linalg.eigh(g)
  tol = jnp.max(jnp.abs(lam), axis=-1, keepdims=True) * g.shape[-1] * jnp.finfo(g.dtype).eps
  inv = jnp.where(lam > tol, 1 / jnp.where(lam > tol, lam, 1), 0)
  return jnp.einsum("...ik,...k,...jk->...ij", vec, inv, vec, precision=_HI)


def step_a(prob: Problem, x: Factors) -> Factors:
  """Each block of A set to its weighted least-squares optimum given S, B (where better)."""
  d_out, d_in = prob.y.shape
  n_a = d_out // prob.b_a
  z = blockdiag.right(x.core, x.b).reshape(n_a, prob.b_a, d_in)
  y = prob.y.reshape(n_a, prob.b_a, d_in)
  zh = z * prob.h
  gram = jnp.einsum("aij,akj->aik", zh, z, precision=_HI)
  cross = jnp.einsum("aij,akj->aik", y * prob.h, z, precision=_HI)
  a_new = jnp.einsum("aik,akj->aij", cross, _psd_pinv(gram), precision=_HI)

  def block_loss(a):
    r = y - jnp.einsum("aik,akj->aij", a, z, precision=_HI)
    return jnp.sum(r * r * prob.h, axis=(1, 2))

  better = block_loss(a_new) < block_loss(x.a)
  return x._replace(a=jnp.where(better[:, None, None], a_new, x.a))


def step_b(prob: Problem, x: Factors) -> Factors:
  """Each block of B set to its least-squares optimum given A, S (where better)."""
  d_out, d_in = prob.y.shape
  n_b = d_in // prob.b_b
  g = blockdiag.left(x.a, x.core).reshape(d_out, n_b, prob.b_b)
  y = prob.y.reshape(d_out, n_b, prob.b_b)
  gram = jnp.einsum("oci,ocj->cij", g, g, precision=_HI)
  cross = jnp.einsum("oci,ocj->cij", g, y, precision=_HI)
  b_new = jnp.einsum("cik,ckj->cij", _psd_pinv(gram), cross, precision=_HI)
  h = prob.h.reshape(n_b, prob.b_b)

  def block_loss(b):
    r = y - jnp.einsum("oci,cij->ocj", g, b, precision=_HI)
    return jnp.sum(jnp.sum(r * r, axis=0) * h, axis=1)

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


def greedy_core_steps(prob: Problem, x: Factors, n_steps: int) -> Factors:
  """``n_steps`` Gauss-Southwell group replacements in every block pair (exact, monotone).

  Each step evaluates every group's best replacement (:func:`group_choice`),
  replaces in each block pair the group of largest decrease (if any decreases)
  and updates P by that block pair's rank-one change (:func:`_rank_one`).
  """
  # the barrier keeps XLA from fusing (recomputing) the geometry into every step's kernels
  geo = jax.lax.optimization_barrier(geometry(prob, x))

  def body(_, carry):
    p, s, m = carry
    values, mask, gain = group_choice(_as_groups(p), _as_groups(s), geo.kappa, geo.q_gg,
                                      geo.q_inv)
    flat = _per_block_pair(prob, gain)
    sel = _one_per_block_pair(prob, jnp.argmax(flat, -1), jnp.max(flat, -1) > 0)
    s_new, m_new = _apply_selected(sel, values, mask, s, m)
    return _rank_one(prob, geo, p, sel, s_new - s), s_new, m_new

  _, s, m = jax.lax.fori_loop(0, n_steps, body, (core_gradient(prob, x), x.core, x.mask))
  return x._replace(core=s, mask=m)


def values_cg(prob: Problem, x: Factors, n_steps: int) -> Factors:
  """``n_steps`` of preconditioned conjugate gradients on all kept core values, mask fixed.

  The loss is a quadratic in the kept values with Hessian-vector product
  ``V -> (K V Q) * mask`` (K = A^T A, Q = B D B^T, both block diagonal, so a
  product costs two block-diagonal matmuls) and minus half-gradient ``P * mask``.
  Each CG step is an exact line minimization from the current point, so the
  loss never rises (the Jacobi preconditioner ``kappa_i Q_jj`` keeps that).
  """
  if n_steps == 0:
    return x
  m = x.mask.astype(x.core.dtype)
  k = jnp.einsum("aji,ajk->aik", x.a, x.a, precision=_HI)
  q = jnp.einsum("cij,ckj->cik", x.b * prob.h.reshape(-1, 1, prob.b_b), x.b, precision=_HI)
  diag = jnp.diagonal(k, axis1=1, axis2=2).reshape(-1, 1) * jnp.diagonal(
      q, axis1=1, axis2=2).reshape(1, -1)
  inv_diag = jnp.where(diag > 0, 1 / jnp.where(diag > 0, diag, 1), 0) * m

  def hess(v):
    return blockdiag.left(k, blockdiag.right(v, q)) * m

  r = core_gradient(prob, x) * m
  z = r * inv_diag
  rz = jnp.sum(r * z)

  def body(_, carry):
    s, r, z, d, rz = carry
    hd = hess(d)
    curv = jnp.sum(d * hd)
    alpha = jnp.where(curv > 0, rz / jnp.where(curv > 0, curv, 1), 0)
    s, r = s + alpha * d, r - alpha * hd
    z = r * inv_diag
    rz_new = jnp.sum(r * z)
    d = z + jnp.where(rz > 0, rz_new / jnp.where(rz > 0, rz, 1), 0) * d
    return s, r, z, d, rz_new

  s, *_ = jax.lax.fori_loop(0, n_steps, body, (x.core, r, z, z, rz))
  return x._replace(core=s * m)


# ---------------------------------------------------------------------------------------------
# schemes


def init_state(prob: Problem, cfg: ArmorConfig, key: jax.Array) -> State:
  x = nowag_start(prob)
  l0 = loss(prob, x)
  params = (x.a, x.b, x.core)
  opt = optax.adam(cfg.lr).init(params) if cfg.scheme == "official" else ()
  return State(x=x, loss=l0, best=x, best_loss=l0, opt=opt, values=x.core,
               stall=jnp.zeros((), jnp.int32), done=jnp.zeros((), bool), key=key)


def _keep_best(state: State, x: Factors, l: jax.Array) -> State:
  better = l < state.best_loss
  best = jax.tree.map(lambda n, o: jnp.where(better, n, o), x, state.best)
  return state._replace(x=x, loss=l, best=best, best_loss=jnp.minimum(l, state.best_loss))


def exact_iteration(prob: Problem, cfg: ArmorConfig, state: State) -> State:
  x = step_a(prob, state.x)
  x = step_b(prob, x)
  x = values_cg(prob, x, cfg.cg_steps)
  x = greedy_core_steps(prob, x, cfg.core_steps)
  return _keep_best(state, x, loss(prob, x))


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
  improved = (l <= (1 - cfg.rtol) * state.loss) & (l <= state.loss - cfg.atol)
  stall = jnp.where(improved, 0, state.stall + 1)
  new = _keep_best(state, x, l)._replace(opt=opt_state, values=values, stall=stall, key=key,
                                          done=(cfg.patience > 0) & (stall >= cfg.patience))
  # once stopped, nothing moves
  return jax.tree.map(lambda o, n: jnp.where(state.done, o, n), state, new)


def iteration(prob: Problem, cfg: ArmorConfig, state: State) -> State:
  if cfg.scheme == "exact":
    return exact_iteration(prob, cfg, state)
  if cfg.scheme == "official":
    return official_iteration(prob, cfg, state)
  raise ValueError(f"unknown ARMOR scheme {cfg.scheme!r}; allowed: exact, official")


@functools.partial(jax.jit, static_argnames=("cfg", "n"), donate_argnames=("state",))
def run_iterations(prob: Problem, cfg: ArmorConfig, state: State, n: int):
  """``n`` iterations in one jitted scan; returns the state and the (n,) loss curve.

  ``state`` is donated: the new state takes its buffers, and the one passed in must not be
  used again (copy it first to keep it)."""
  def body(state, _):
    state = iteration(prob, cfg, state)
    return state, state.loss
  return jax.lax.scan(body, state, None, length=n)


def to_layer(prob: Problem, x: Factors, w: jax.Array) -> layer.PrunedLayer:
  _, r2, r1 = layer.normalize(w)
  return layer.PrunedLayer(sparsity.pack(x.core, x.mask), r2, r1, a=x.a, b=x.b, method="armor")


@functools.partial(jax.jit, static_argnames=("cfg",))
def _start(w, h, cfg, key):
  prob = make_problem(w, h, cfg.block_size)
  return prob, init_state(prob, cfg, key)


_to_layer = jax.jit(to_layer)

# run_iterations' scratch per byte of a float32 (d_out, d_in) matrix and per byte of A and B,
# by scheme: bounds on what XLA's memory analysis reports for the compiled iterations
# (tests/test_armor_layer.py checks them against it at several shapes and block sizes)
_SCRATCH = {"exact": (8.25, 1.5), "official": (6.0, 3.5)}


def working_bytes(d_out: int, d_in: int, cfg: ArmorConfig = ArmorConfig()) -> int:
  """Bytes ARMOR holds while iterating on a float32 (d_out, d_in) layer: the problem, the
  state (current and best point, the official scheme's Adam moments; donated to each
  call, so held once) and the iterations' scratch. The input weight is not counted."""
  shapes = jax.eval_shape(lambda w, h, key: _start(w, h, cfg, key),
                          jax.ShapeDtypeStruct((d_out, d_in), jnp.float32),
                          jax.ShapeDtypeStruct((d_in,), jnp.float32),
                          jax.ShapeDtypeStruct((2,), jnp.uint32))
  held = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(shapes))
  per_matrix, per_factor = _SCRATCH[cfg.scheme]
  x = shapes[1].x
  factors = 4 * (x.a.size + x.b.size)
  return int(held + per_matrix * 4 * d_out * d_in + per_factor * factors)


def armor(w: jax.Array, stats: calibration.Stats, cfg: ArmorConfig = ArmorConfig(),
          key: jax.Array | None = None, chunk: int | None = None,
          progress=None) -> tuple[layer.PrunedLayer, np.ndarray]:
  """Prunes one layer with ARMOR.

  Args:
    w: (d_out, d_in) weight (any float dtype; computed in float32, or float64
      when given float64 with x64 on).
    stats: calibration statistics (only ``h`` is used).
    cfg: settings.
    key: PRNG key (the official scheme samples groups); default key 0.
    chunk: iterations per jitted call (progress is reported between calls);
      default all at once.
    progress: optional callable(iterations_done, best_loss).

  Returns:
    (the best layer seen, the loss curve: (iters + 1,) float64 starting at NoWag-P's loss).
  """
  prob, state = _start(w, stats.h, cfg, jax.random.PRNGKey(0) if key is None else key)
  curve = [float(state.loss)]
  chunk = cfg.iters if not chunk else chunk
  done = 0
  while done < cfg.iters:
    n = min(chunk, cfg.iters - done)
    state, losses = run_iterations(prob, cfg, state, n)
    curve.extend(np.asarray(losses, np.float64).tolist())
    done += n
    if progress is not None:
      progress(done, float(state.best_loss))
  return _to_layer(prob, state.best, w), np.asarray(curve)
