"""ARMOR fitted to the layer's output error with the full input covariance (``objective=output``).

ARMOR (arXiv 2510.05528) weighs each input channel of its proxy by its mean square
alone. This variant keeps its parameterization, ``W_bar ~ A S B`` with block-diagonal
A and B and a 2:4 core S on the normalized weight (:mod:`armor_jax.solver.layer`), and
fits it to

    L = tr((W_bar - A S B) H (W_bar - A S B)^T) / tr(W_bar H W_bar^T),
    H = XtX / mean(diag XtX) + damp I,

the inputs' full second moment damped as SparseGPT damps its Hessian. With a diagonal
``XtX`` and ``damp = 0`` this is ARMOR's proxy, and the steps below are its exact
scheme's. No published method combines the two; the objective and the steps are this
project's construction, not the paper's. Start: SparseGPT's solution (A = B = I) or
NoWag-P's, whichever is lower on L. Every step minimizes L exactly over one block of
variables given the rest (CG: along a line), so L never rises, and the best point is
kept, so the returned loss is never above the start's:

* A: the loss is separable over output blocks; ``A_a = (Y_a H Z_a^T)(Z_a H Z_a^T)^-1``
  with Z = S B, accepted per block where it lowers the block's loss;
* B: H couples the input blocks, so one block at a time (Gauss-Seidel): with
  G = A S and R = W_bar - G B, block c moves by ``Delta = M^-1 C N^-1``,
  ``M = G_c^T G_c``, ``N = H_cc``, ``C = G_c^T (R H)_c``: the Kronecker-structured
  least squares ``(N kron M) vec(Delta) = vec(C)``, exact for the block given the others;
* values: preconditioned conjugate gradients on the kept values with Hessian-vector
  product ``V -> (K V Q) * mask``, K = A^T A, Q = B H B^T (dense), each step an exact
  line minimization;
* masks: the diagonal scheme's group step (every group's best of the 6 patterns given
  all others, with Q's 4x4 diagonal blocks; per block pair the best group of every row or
  the single best, judged on the pair alone), then, since H couples the block pairs of an
  output block, checked on each output block: the joint change's exact decrease
  ``2 <P, Delta> - <K Delta Q, Delta>`` must be positive and at least that block's best
  single group's, else only that group changes (its decrease exact given the rest).

Each product with H costs d_out d_in^2 flops where the diagonal scheme's cost d_out d_in b.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from armor_jax.solver import armor as A
from armor_jax.solver import baselines, blockdiag, calibration, layer, sparsity

_HI = jax.lax.Precision.HIGHEST


class OutputProblem(struct.PyTreeNode):
  """W_bar, the damped H (unit mean diagonal before damping), W_bar H, the block sizes."""
  y: jax.Array          # (d_out, d_in)
  hm: jax.Array         # (d_in, d_in)
  yh: jax.Array         # (d_out, d_in) W_bar H
  zero_loss: jax.Array  # () tr(W_bar H W_bar^T)
  b_a: int = struct.field(pytree_node=False)
  b_b: int = struct.field(pytree_node=False)

  @property
  def b_core(self) -> int:
    return math.lcm(self.b_b, 4)


def damped(second_moment: jax.Array, damp: float) -> jax.Array:
  """``XtX / mean(diag) + damp I`` (scaled so huge or tiny inputs neither overflow nor
  change the solution)."""
  mean = jnp.mean(jnp.diagonal(second_moment))
  h = second_moment / jnp.where(mean > 0, mean, 1)
  return h + damp * jnp.eye(h.shape[0], dtype=h.dtype)


def make_problem(w: jax.Array, second_moment: jax.Array, damp: float,
                 block_size: int) -> OutputProblem:
  sparsity.check_groupable(w.shape[1])
  y, _, _ = layer.normalize(w)
  hm = damped(jnp.asarray(second_moment, y.dtype), damp)
  yh = jnp.matmul(y, hm, precision=_HI)
  return OutputProblem(y=y, hm=hm, yh=yh, zero_loss=jnp.sum(y * yh),
                       b_a=blockdiag.block_size_for(w.shape[0], block_size),
                       b_b=blockdiag.block_size_for(w.shape[1], block_size))


def loss(prob: OutputProblem, x: A.Factors) -> jax.Array:
  """Normalized output loss of ``x``."""
  r = prob.y - A.approx(x)
  return jnp.sum(r * jnp.matmul(r, prob.hm, precision=_HI)) / A._nonzero(prob.zero_loss)


def start(prob: OutputProblem, w: jax.Array, stats: calibration.Stats,
          damp: float) -> A.Factors:
  """SparseGPT's solution or NoWag-P's as a point (A = B = I), whichever is lower on L."""
  d_out, d_in = prob.y.shape
  eye_a = blockdiag.identity(d_out, prob.b_a, prob.y.dtype)
  eye_b = blockdiag.identity(d_in, prob.b_b, prob.y.dtype)
  nowag_mask = baselines.nowag_p_mask(prob.y, stats.h.astype(prob.y.dtype))
  nowag = A.Factors(eye_a, eye_b, prob.y * nowag_mask, nowag_mask)
  sgpt = baselines.sparsegpt(w, stats, damp=max(damp, 1e-8))
  _, r2, r1 = layer.normalize(w)
  core = (sgpt.dense().astype(prob.y.dtype) / r2[:, None]) / r1[None, :]
  mask = sgpt.mask()
  sg = A.Factors(eye_a, eye_b, core * mask, mask)
  take = loss(prob, sg) < loss(prob, nowag)
  return jax.tree.map(lambda s, n: jnp.where(take, s, n), sg, nowag)


def _psd_right_solve(g, rhs):
  """``rhs g^-1`` for symmetric PSD g (the damped solve of :func:`armor._psd_solve`)."""
  return jnp.swapaxes(A._psd_solve(g, jnp.swapaxes(rhs, -1, -2)), -1, -2)


def step_a(prob: OutputProblem, x: A.Factors) -> A.Factors:
  """Each block of A set to its least-squares optimum given S, B (where better)."""
  d_out, d_in = prob.y.shape
  n_a = d_out // prob.b_a
  z = blockdiag.right(x.core, x.b)
  zh = jnp.matmul(z, prob.hm, precision=_HI).reshape(n_a, prob.b_a, d_in)
  z = z.reshape(n_a, prob.b_a, d_in)
  gram = jnp.einsum("aij,akj->aik", zh, z, precision=_HI)
  cross = jnp.einsum("aij,akj->aik", prob.yh.reshape(n_a, prob.b_a, d_in), z, precision=_HI)
  a_new = _psd_right_solve(gram, cross)
  better = A._quadratic(a_new, gram, cross) < A._quadratic(x.a, gram, cross)
  return x._replace(a=jnp.where(better[:, None, None], a_new, x.a))


def b_block_update(prob: OutputProblem, g: jax.Array, b: jax.Array, rh: jax.Array, c):
  """Block c of B moved to its optimum given A, S and the other blocks (where better).

  Args:
    g: (d_out, d_in) G = A S.  b: (n_b, b_b, b_b) B.  rh: (d_out, d_in) R H at (g, b).
    c: the block (traced).

  Returns:
    (B, R H) after the move.
  """
  d_out, d_in = prob.y.shape
  bb = prob.b_b
  gc = jax.lax.dynamic_slice(g, (0, c * bb), (d_out, bb))
  rhc = jax.lax.dynamic_slice(rh, (0, c * bb), (d_out, bb))
  hrow = jax.lax.dynamic_slice(prob.hm, (c * bb, 0), (bb, d_in))
  n = jax.lax.dynamic_slice(hrow, (0, c * bb), (bb, bb))
  m = jnp.matmul(gc.T, gc, precision=_HI)
  cmat = jnp.matmul(gc.T, rhc, precision=_HI)
  delta = _psd_right_solve(n, A._psd_solve(m, cmat))          # M^-1 C N^-1
  mdn = jnp.matmul(jnp.matmul(m, delta, precision=_HI), n, precision=_HI)
  ok = jnp.sum(delta * (2 * cmat - mdn)) > 0
  delta = jnp.where(ok, delta, 0)
  rh = rh - jnp.matmul(gc, jnp.matmul(delta, hrow, precision=_HI), precision=_HI)
  return b.at[c].add(delta), rh


def residual_h(prob: OutputProblem, g: jax.Array, b: jax.Array) -> jax.Array:
  """R H with R = W_bar - G B."""
  return prob.yh - jnp.matmul(blockdiag.right(g, b), prob.hm, precision=_HI)


def step_b(prob: OutputProblem, x: A.Factors) -> A.Factors:
  """Every block of B in turn moved to its optimum given the rest (:func:`b_block_update`)."""
  g = blockdiag.left(x.a, x.core)
  body = lambda c, carry: b_block_update(prob, g, *carry, c)
  b, _ = jax.lax.fori_loop(0, x.b.shape[0], body, (x.b, residual_h(prob, g, x.b)))
  return x._replace(b=b)


def _kq(prob: OutputProblem, x: A.Factors):
  """K = A^T A (blocks) and Q = B H B^T (dense)."""
  k = jnp.einsum("aji,ajk->aik", x.a, x.a, precision=_HI)
  q = blockdiag.right(blockdiag.left(x.b, prob.hm), jnp.swapaxes(x.b, 1, 2))
  return k, q


def gradient(prob: OutputProblem, x: A.Factors) -> jax.Array:
  """P = A^T R H B^T (dL/dS = -2 P / zero_loss)."""
  rh = residual_h(prob, blockdiag.left(x.a, x.core), x.b)
  return blockdiag.right(blockdiag.left(jnp.swapaxes(x.a, 1, 2), rh), jnp.swapaxes(x.b, 1, 2))


def values_cg_and_gradient(prob: OutputProblem, x: A.Factors, n_steps: int):
  """``n_steps`` of preconditioned CG on the kept values (mask fixed); also P at the end."""
  p = gradient(prob, x)
  if n_steps == 0:
    return x, p
  k, q = _kq(prob, x)
  diag = jnp.diagonal(k, axis1=1, axis2=2).reshape(-1, 1) * jnp.diagonal(q)[None, :]
  core, p = A.kept_values_cg(
      x, p, diag, lambda d: blockdiag.left(k, jnp.matmul(d, q, precision=_HI)), n_steps)
  return x._replace(core=core), p


def values_cg(prob: OutputProblem, x: A.Factors, n_steps: int) -> A.Factors:
  return values_cg_and_gradient(prob, x, n_steps)[0]


def core_steps(prob: OutputProblem, x: A.Factors, n_steps: int, update: str = "rows",
               p: jax.Array | None = None) -> A.Factors:
  """``n_steps`` group-replacement steps (see the module docstring); the loss never rises."""
  if update not in A.CORE_UPDATES:
    raise ValueError(f"unknown core update {update!r}; allowed: {', '.join(A.CORE_UPDATES)}")
  d_out, d_in = prob.y.shape
  b_a, w = prob.b_a, prob.b_core
  n_a, n_w, n_g = d_out // b_a, d_in // w, w // 4
  k, q = _kq(prob, x)
  q_win = jnp.diagonal(q.reshape(n_w, w, n_w, w), axis1=0, axis2=2).transpose(2, 0, 1)
  q_gg = jnp.diagonal(q.reshape(d_in // 4, 4, d_in // 4, 4), axis1=0, axis2=2)   # (4, 4, G)
  q_inv = jnp.stack([jnp.stack(A._pinv2(q_gg[i, i], q_gg[i, j], q_gg[j, j]))
                     for i, j in sparsity.PAIRS])
  kappa = jnp.diagonal(k, axis1=1, axis2=2).reshape(-1, 1)
  geo = jax.lax.optimization_barrier(A.CoreGeometry(kappa=kappa, k=k, q=q_win, q_gg=q_gg,
                                                    q_inv=q_inv))
  q4 = q.reshape(d_in // 4, 4, d_in)
  local = A.Problem(y=prob.y, h=jnp.ones((d_in,), prob.y.dtype), zero_loss=prob.zero_loss,
                    b_a=b_a, b_b=prob.b_b)        # the block-pair geometry of the diagonal code

  def block_sums(v):
    return jnp.sum(v.reshape(n_a, -1), axis=1)

  def body(_, carry):
    p, s, m = carry
    values, mask, gain = A.group_choice(A._as_groups(p), A._as_groups(s), geo.kappa,
                                        geo.q_gg, geo.q_inv)
    flat = A._per_block_pair(local, gain)
    sel = A._one_per_block_pair(local, jnp.argmax(flat, -1), jnp.max(flat, -1) > 0)
    s_pair, m_pair = A._apply_selected(sel, values, mask, s, m)
    if update == "rows":
      per_row = gain.reshape(d_out, n_w, n_g)
      rows = ((jnp.arange(n_g) == jnp.argmax(per_row, -1)[..., None])
              & (jnp.max(per_row, -1) > 0)[..., None]).reshape(gain.shape)
      s_rows, m_rows = A._apply_selected(rows, values, mask, s, m)
      delta = s_rows - s
      local_kdq = blockdiag.left(geo.k, blockdiag.right(delta, geo.q))
      joint = A._pair_sums(local, delta * (2 * p - local_kdq))
      take = A._spread(local, joint >= jnp.max(flat, -1))
      s_pair, m_pair = jnp.where(take, s_rows, s_pair), jnp.where(take, m_rows, m_pair)
    # the output block's exact decrease, H coupling its block pairs
    delta = s_pair - s
    kdq = blockdiag.left(geo.k, jnp.matmul(delta, q, precision=_HI))
    dec = block_sums(delta * (2 * p - kdq))
    # else: the output block's best single group, its decrease exact given the rest
    g_blk = gain.reshape(n_a, -1)
    idx = jnp.argmax(g_blk, -1)
    best = jnp.max(g_blk, -1)
    ok = (dec > 0) & (dec >= (1 - 1e-4) * best)
    row = jnp.arange(n_a) * b_a + idx // (d_in // 4)
    grp = idx % (d_in // 4)
    one = jnp.zeros((d_out, d_in // 4), bool).at[row, grp].set(best > 0)
    s_one, m_one = A._apply_selected(one, values, mask, s, m)
    d_one = (s_one - s).reshape(d_out, d_in // 4, 4)[row, grp]               # (n_a, 4)
    q_rows = jnp.einsum("ak,akj->aj", d_one, q4[grp], precision=_HI)       # (n_a, d_in)
    k_col = jnp.take_along_axis(geo.k, (idx // (d_in // 4))[:, None, None], axis=2)[..., 0]
    p_one = p - (k_col[:, :, None] * q_rows[:, None, :]).reshape(d_out, d_in)
    okr = jnp.repeat(ok, b_a)[:, None]
    return (jnp.where(okr, p - kdq, p_one), jnp.where(okr, s_pair, s_one),
            jnp.where(okr, m_pair, m_one))

  p = gradient(prob, x) if p is None else p
  _, s, m = jax.lax.fori_loop(0, n_steps, body, (p, x.core, x.mask))
  return x._replace(core=s, mask=m)


def iteration(prob: OutputProblem, cfg, state: A.State) -> A.State:
  x = step_a(prob, state.x)
  x = step_b(prob, x)
  x, p = values_cg_and_gradient(prob, x, cfg.cg_steps)
  x = core_steps(prob, x, cfg.core_steps, cfg.core_update, p)
  return A._keep_best(state, x, loss(prob, x))
