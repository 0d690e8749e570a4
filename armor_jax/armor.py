"""ARMOR (arXiv 2510.05528): a 2:4 core wrapped by block-diagonal matrices.

    W_bar ~ A S B,   S 2:4-sparse,   A = blockdiag(A_1..A_na),  B = blockdiag(B_1..B_nb)

fitted to the normalized weight W_bar (see :mod:`armor_jax.layer`) under the
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

``exact`` (ours): every step minimizes L exactly over one block of variables
  given the rest, so L never rises:
  * A: each block A_a given S, B is a weighted least-squares problem,
    ``A_a = (Y_a D Z_a^T)(Z_a D Z_a^T)^+`` with Z = S B, D = diag(h);
  * B: each block B_c given A, S is ordinary least squares per column
    (the weight h_j is constant within a column), ``B_c = (G_c^T G_c)^+ G_c^T Y_c``
    with G = A S;
  * core: L is separable over block pairs; in each, the group with the
    largest achievable decrease (all 6 masks tried, least squares for the kept
    pair given every other group) is replaced, Gauss-Southwell style, all
    block pairs in parallel, ``core_steps`` times per iteration, with the
    block pair's gradient kept current by rank-one updates.
  A and B updates are accepted per block only where they lower the block's
  loss (so rounding in the pseudo-inverse cannot raise L either).

Both schemes carry the best state seen, so the returned loss is never above
NoWag-P's: the paper's guarantee, enforced. With block size 1 the wrappers
are diagonal, which scale rows and columns of S; the exact scheme's A and B
steps then cannot improve on NoWag-P (its optimum has W_bar's own values).

Block sizes: ``block_size`` is a request; each side uses the largest divisor
of its dimension not above it (input side: also a multiple of 4), see
:func:`armor_jax.blockdiag.block_size_for`.
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

from armor_jax import baselines, blockdiag, calibration, layer, sparsity

_HI = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class ArmorConfig:
  """ARMOR's settings (the defaults follow the authors' configs where they exist).

  Attributes:
    block_size: requested block size of A and B (authors: 32 in configs,
      128 in their replication runs).
    scheme: ``exact`` (monotone block minimization) or ``official`` (Adam).
    iters: outer iterations.
    core_steps: exact scheme: greedy group replacements per block pair per
      iteration.
    lr: official scheme: Adam learning rate (authors: 1e-4).
    sparse_steps: official scheme: sampled group updates per iteration (authors: 1).
    patience: official scheme: stop after this many iterations without
      improvement (authors: 100); 0 disables.
    rtol, atol: what counts as improvement (authors: 1e-6, 1e-8).
  """
  block_size: int = 128
  scheme: str = "exact"
  iters: int = 50
  core_steps: int = 32
  lr: float = 1e-4
  sparse_steps: int = 1
  patience: int = 100
  rtol: float = 1e-6
  atol: float = 1e-8


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
  """Per-iteration constants of the group updates (A, B fixed; "block pair" below means an
  output block of A and an input window of the core step).

  kappa: (n_a, b_a) diagonal of A_a^T A_a;  k: (n_a, b_a, b_a) A_a^T A_a;
  q: (n_w, w, w) B_c D_c B_c^T over input windows of width w = lcm(b_b, 4);
  q_gg: (n_w, G, 4, 4) its 4x4 diagonal blocks (G = w / 4 groups per window);
  q_inv: (n_w, G, 6, 2, 2)
  pseudo-inverses of the 2x2 blocks of each of the 6 masks.
  """
  kappa: jax.Array
  k: jax.Array
  q: jax.Array
  q_gg: jax.Array
  q_inv: jax.Array


def _pinv2(m: jax.Array) -> jax.Array:
  """Pseudo-inverse of symmetric PSD 2x2 matrices (..., 2, 2)."""
  a, b, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 1]
  det = a * d - b * b
  tr = a + d
  regular = det > 1e3 * jnp.finfo(m.dtype).eps * tr * tr
  inv = jnp.stack([jnp.stack([d, -b], -1), jnp.stack([-b, a], -1)], -2) / jnp.where(
      regular, det, 1)[..., None, None]
  rank1 = m / jnp.where(tr > 0, tr * tr, 1)[..., None, None]   # rank <= 1: v v^T / lambda
  return jnp.where(regular[..., None, None], inv, rank1)


def geometry(prob: Problem, x: Factors) -> CoreGeometry:
  w = prob.b_core
  n_b = prob.y.shape[1] // w
  n_g = w // 4
  k = jnp.einsum("aji,ajk->aik", x.a, x.a, precision=_HI)
  b = blockdiag.coarsen(x.b, w)
  q = jnp.einsum("cij,ckj->cik", b * prob.h.reshape(n_b, 1, w), b, precision=_HI)
  q5 = q.reshape(n_b, n_g, 4, n_g, 4)
  q_gg = jnp.diagonal(q5, axis1=1, axis2=3).transpose(0, 3, 1, 2)          # (n_b, G, 4, 4)
  pairs = jnp.asarray(sparsity.PAIRS)
  q_m = q_gg[:, :, pairs[:, :, None], pairs[:, None, :]]                     # (n_b, G, 6, 2, 2)
  return CoreGeometry(kappa=jnp.diagonal(k, axis1=1, axis2=2), k=k, q=q, q_gg=q_gg,
                      q_inv=_pinv2(q_m))


def core_gradient(prob: Problem, x: Factors) -> jax.Array:
  """P = A^T (W_bar - A S B) D B^T as block pairs (n_a, n_b, b_a, b_b); dL/dS = -2 P / zero."""
  r = (prob.y - approx(x)) * prob.h
  p = blockdiag.right(blockdiag.left(jnp.swapaxes(x.a, 1, 2), r), jnp.swapaxes(x.b, 1, 2))
  return blockdiag.to_pairs(p, prob.b_a, prob.b_core)


def group_choice(p_g, s_g, kappa, q_gg, q_inv):
  """Best 2:4 pattern and values of groups, each given all other groups.

  For one group with current values s (4,), removing it leaves the gradient
  ``pt = p + kappa Q s``; the group's cost is ``-2 v.pt + kappa v^T Q v``.

  Args:
    p_g: (..., 4) P on the group.  s_g: (..., 4) its current values.
    kappa: (...) A's column norm^2 for the group's row.  q_gg: (..., 4, 4).
    q_inv: (..., 6, 2, 2).

  Returns:
    (values (..., 4) of the best pattern, mask (..., 4), decrease (...) >= 0).
  """
  pairs = jnp.asarray(sparsity.PAIRS)
  pt = p_g + kappa[..., None] * jnp.einsum("...ij,...j->...i", q_gg, s_g)
  cur = -2 * jnp.sum(s_g * pt, -1) + kappa * jnp.einsum("...i,...ij,...j->...", s_g, q_gg, s_g)
  pm = pt[..., pairs]                                                     # (..., 6, 2)
  k = jnp.where(kappa > 0, kappa, 1)[..., None, None]
  vm = jnp.einsum("...mij,...mj->...mi", q_inv, pm) / k                    # (..., 6, 2)
  qm = q_gg[..., pairs[:, :, None], pairs[:, None, :]]
  cost = -2 * jnp.sum(vm * pm, -1) + kappa[..., None] * jnp.einsum(
      "...mi,...mij,...mj->...m", vm, qm, vm)
  best = jnp.argmin(cost, axis=-1)
  gain = cur - jnp.take_along_axis(cost, best[..., None], -1)[..., 0]
  onehot = jax.nn.one_hot(pairs[best], 4, dtype=s_g.dtype)                # (..., 2, 4)
  v_best = jnp.take_along_axis(vm, best[..., None, None], -2)[..., 0, :]  # (..., 2)
  values = jnp.einsum("...k,...kj->...j", v_best, onehot)
  improve = (gain > 0) & (kappa > 0)
  mask = jnp.sum(onehot, -2) > 0
  return values, mask, jnp.where(improve, gain, 0.0)


def _groups(x: jax.Array, prob: Problem) -> jax.Array:
  """(d_out, d_in) -> (n_a, n_b, b_a, G, 4)."""
  pairs = blockdiag.to_pairs(x, prob.b_a, prob.b_core)
  return pairs.reshape(pairs.shape[:3] + (prob.b_core // 4, 4))


def _ungroup(x: jax.Array) -> jax.Array:
  n_a, n_b, b_a, n_g, _ = x.shape
  return blockdiag.from_pairs(x.reshape(n_a, n_b, b_a, n_g * 4))


def greedy_core_steps(prob: Problem, x: Factors, n_steps: int) -> Factors:
  """``n_steps`` Gauss-Southwell group replacements in every block pair (exact, monotone).

  Each step evaluates every group's best replacement (:func:`group_choice`)
  from the block pair's gradient P, replaces the group of largest decrease
  (if any decreases) and updates P by the rank-one change
  ``P -= K[:, i] (delta^T Q[group, :])`` of that block pair.
  """
  geo = geometry(prob, x)
  p0 = _groups(blockdiag.from_pairs(core_gradient(prob, x)), prob)   # (n_a, n_b, b_a, G, 4)
  n_a, n_b, b_a, n_g, _ = p0.shape
  kappa = jnp.broadcast_to(geo.kappa[:, None, :, None], p0.shape[:4])
  q_gg, q_inv = geo.q_gg[None, :, None], geo.q_inv[None, :, None]

  def body(_, carry):
    p, s, m = carry
    vals, mask, gain = group_choice(p, s, kappa, q_gg, q_inv)
    flat = gain.reshape(n_a, n_b, -1)
    sel = jax.nn.one_hot(jnp.argmax(flat, -1), flat.shape[-1], dtype=bool) & (
        jnp.max(flat, -1) > 0)[..., None]
    sel = sel.reshape(gain.shape)
    delta = sel[..., None] * (vals - s)                                # one group per block pair
    row = jnp.any(sel, axis=-1).astype(p.dtype)                       # (n_a, n_b, b_a) one-hot
    k_col = jnp.einsum("aij,acj->aci", geo.k, row, precision=_HI)      # K[:, i]
    q_row = jnp.einsum("ack,ckj->acj", jnp.sum(delta, 2).reshape(n_a, n_b, -1), geo.q,
                       precision=_HI)                                  # delta^T Q[group, :]
    p = p - (k_col[..., :, None] * q_row[..., None, :]).reshape(p.shape)
    return p, s + delta, jnp.where(sel[..., None], mask, m)

  _, s, m = jax.lax.fori_loop(0, n_steps, body, (p0, _groups(x.core, prob), _groups(x.mask, prob)))
  return x._replace(core=_ungroup(s), mask=_ungroup(m))


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
  x = greedy_core_steps(prob, x, cfg.core_steps)
  return _keep_best(state, x, loss(prob, x))


def sampled_core_step(prob: Problem, x: Factors, key: jax.Array) -> tuple[Factors, jax.Array]:
  """The official sparse-core step: per block pair one group, drawn with probability
  proportional to the L1 norm of dL/dS on it, set to its best pattern.

  Returns the new point and the (d_out, d_in) bool map of the replaced groups.
  """
  geo = geometry(prob, x)
  p = _groups(blockdiag.from_pairs(core_gradient(prob, x)), prob)   # (n_a, n_b, b_a, G, 4)
  weight = jnp.sum(jnp.abs(p), -1)
  flat = weight.reshape(weight.shape[:2] + (-1,))
  logits = jnp.where(flat > 0, jnp.log(jnp.where(flat > 0, flat, 1)), -jnp.inf)
  logits = jnp.where(jnp.any(flat > 0, -1, keepdims=True), logits, 0.0)
  pick = jax.random.categorical(key, logits, axis=-1)
  sel = jax.nn.one_hot(pick, flat.shape[-1], dtype=bool).reshape(weight.shape)
  s = _groups(x.core, prob)
  kappa = jnp.broadcast_to(geo.kappa[:, None, :, None], weight.shape)
  vals, mask, gain = group_choice(p, s, kappa, geo.q_gg[None, :, None], geo.q_inv[None, :, None])
  sel = sel & (gain > 0)
  s = jnp.where(sel[..., None], vals, s)
  m = jnp.where(sel[..., None], mask, _groups(x.mask, prob))
  touched = _ungroup(jnp.broadcast_to(sel[..., None], s.shape))
  return x._replace(core=_ungroup(s), mask=_ungroup(m)), touched


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
  for k in jax.random.split(sub, cfg.sparse_steps):
    x, touched = sampled_core_step(prob, x, k)
    values = jnp.where(touched & x.mask, x.core, values)   # kept values set; pruned ones stay
  l = loss(prob, x)
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


@functools.partial(jax.jit, static_argnames=("cfg", "n"))
def run_iterations(prob: Problem, cfg: ArmorConfig, state: State, n: int):
  """``n`` iterations in one jitted scan; returns the state and the (n,) loss curve."""
  def body(state, _):
    state = iteration(prob, cfg, state)
    return state, state.loss
  return jax.lax.scan(body, state, None, length=n)


def to_layer(prob: Problem, x: Factors, w: jax.Array) -> layer.PrunedLayer:
  _, r2, r1 = layer.normalize(w)
  return layer.PrunedLayer(sparsity.pack(x.core, x.mask), r2, r1, a=x.a, b=x.b, method="armor")


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
  prob = make_problem(w, stats.h, cfg.block_size)
  state = init_state(prob, cfg, jax.random.PRNGKey(0) if key is None else key)
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
  return to_layer(prob, state.best, w), np.asarray(curve)
