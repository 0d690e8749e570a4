"""Algorithms for collaborative personalized linear bandits (arXiv 2506.15943); all m agents act together.

Paper: Huang, Zhou, Yang & Diggavi, arXiv 2506.15943. Its full text was not at
hand (only the abstract and our notes in shared/research/theory-papers.md), so
the two-stage algorithm below is a RECONSTRUCTION from the abstract's
description ("a two-stage collaborative algorithm", "a hierarchical Bayesian
framework", agents that do not know how similar they are); the comment on
:func:`collab` says exactly what we chose. The baselines are standard.

Registry names (configs and results.json headline keys ``regret_<name>``):

===============  ==============================================================
``collab``       two-stage collaborative: pooled exploration, then personalized
                 OFUL with an empirical-Bayes (random-effects) prior
                 N(mu_hat, sigma_hat^2 + tau^2), refreshed at doubling epochs
``ind_oful``     independent OFUL (LinUCB) per agent (Abbasi-Yadkori et al. 2011)
``ind_ts``       independent linear Thompson sampling per agent
``pooled_oful``  fully pooled OFUL: one shared parameter for all agents
``oracle``       Thompson sampling from each agent's exact posterior under the
                 true prior N(mu, sigma^2 I): knows mu and sigma (reference line)
===============  ==============================================================

Interface (:class:`bandits.core.Algorithm` with the environment's context)::

    state = algo.init(key, spec)                # spec: LinSpec, what the learner may know
    action = algo.act(keys, state, arms)        # (d, m, *batch); arms None on the ball
    state = algo.update(state, action, obs)     # obs.reward (m, *batch)

``arms`` is this round's action set per agent, (K, d, m or 1, *batch). The code
is batch-polymorphic (layout of :mod:`bandits.collab.ridge`: features lead,
agents next, runs trail; ``collab`` merges agents and runs into one axis in
its state, see :class:`CollabState`), so one call advances all m agents of
every run. The round counter ``t`` is one shared () scalar (all runs move in
lockstep), which keeps stage switches real ``lax.cond`` branches rather than
per-run selects.

Inverse Gram matrices are updated by Sherman-Morrison every round; a matrix is
inverted only when the collaborative algorithm refreshes its prior (at rounds
n1, 2 n1, 4 n1, ..., log2(n / n1) times per run; n_scoring + 2 inversions per
agent each time).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from bandits.core import Algorithm
from bandits.collab.ridge import (cholesky, compensated_add, dot, eye_like, flat_batch,
                                  from_tri, mv, once, safe_normalize, sherman_morrison,
                                  spd_inverse, sum_axis, tri_outer)

_TINY = 1e-30


class LinSpec(struct.PyTreeNode):
  """What a learner is told (runs add trailing axes to every field).

  Attributes:
    agent_mask: (m,) bool, which agent slots exist.
    noise_std: () reward noise level (sub-Gaussian constant R).
    s_bound: () a bound on ||theta_i|| (OFUL's S).
    delta: () confidence level of the OFUL ellipsoids.
    pop_mean: (d,) the population mean (read only by ``oracle``).
    pop_sigma: () the heterogeneity (read only by ``oracle``).
  """
  agent_mask: jax.Array
  noise_std: jax.Array
  s_bound: jax.Array
  delta: jax.Array
  pop_mean: jax.Array
  pop_sigma: jax.Array


class Ridge(struct.PyTreeNode):
  """Ridge regression towards a prior mean, one per problem (agent or run).

  theta = A^-1 (lam m0 + sum_s r_s x_s) with A = lam I + sum_s x_s x_s^T: the
  posterior mean under the prior N(m0, (noise^2 / lam) I).
  """
  ainv: jax.Array    # (d, d, *p) A^-1
  theta: jax.Array   # (d, *p)
  logdet: jax.Array  # (*p) log det(A / lam)


def ridge_init(prior_mean: jax.Array, lam: jax.Array) -> Ridge:
  """No data yet: A = lam I; prior_mean (d, *p), lam broadcastable to (*p)."""
  d = prior_mean.shape[0]
  lam = jnp.broadcast_to(lam, prior_mean.shape[1:])
  return Ridge(ainv=eye_like(lam, d) / lam[None, None], theta=prior_mean,
               logdet=jnp.zeros(prior_mean.shape[1:], jnp.float32))


def ridge_update(r: Ridge, x: jax.Array, y: jax.Array) -> Ridge:
  """Adds the observation (x (d, *p), y (*p)) by Sherman-Morrison; x = 0 is a no-op.

  Computed on the merged batch axis (:func:`flat_batch`) and reshaped back.
  """
  shape = r.theta.shape
  x, y = flat_batch(x, 1), flat_batch(jnp.broadcast_to(y, shape[1:]), 0)
  ainv, u, q = sherman_morrison(flat_batch(r.ainv, 2), x)
  ainv = 0.5 * (ainv + jnp.swapaxes(ainv, 0, 1))  # keeps float32 round-off symmetric
  theta = flat_batch(r.theta, 1)
  theta = theta + u * ((y - dot(x, theta)) / (1.0 + q))[None]
  return Ridge(ainv=ainv.reshape(r.ainv.shape), theta=theta.reshape(shape),
               logdet=r.logdet + jnp.log1p(q).reshape(r.logdet.shape))


def oful_radius(noise, delta, logdet):
  """noise sqrt(2 log(1/delta) + log det(A / lam)): the self-normalized part of beta."""
  return noise * jnp.sqrt(2.0 * jnp.log(1.0 / delta) + logdet)


def chi2_radius(d: int, delta):
  """sqrt of the Laurent-Massart bound on chi^2_d: P(chi2_d > d + 2 sqrt(dL) + 2L) <= e^-L."""
  big_l = jnp.log(1.0 / delta)
  return jnp.sqrt(d + 2.0 * jnp.sqrt(d * big_l) + 2.0 * big_l)


def select(arms: jax.Array, idx: jax.Array) -> jax.Array:
  """arms[idx] per agent: arms (K, d, m or 1, *b), idx (m, *b) -> (d, m, *b)."""
  k = arms.shape[0]
  hit = jnp.arange(k).reshape((k,) + (1,) * idx.ndim) == idx[None]
  return sum_axis(jnp.where(hit[:, None], arms, 0.0), 0)


def _ucb_ball(theta, ainv, beta, n_iter: int):
  """:func:`ucb_action` on the unit ball for one flat batch axis.

  theta (d, P), ainv (d, d, P), beta (P). The steps of :func:`ucb_action`,
  arranged for XLA on CPU, which recomputes a matvec inside every consumer
  it fuses it into (two chained matvecs fused cost ~6 single ones): the power
  steps (v = A^-1 A^-1 1, w = A^-1 v) and the ascent steps run as
  ``fori_loop``s, whose carries are materialized once per iteration, and
  ``once`` keeps each step's matvec and new iterate from being recomputed by
  their several consumers. Same arithmetic as the unrolled form,
  0.47 ms per round of 1000 agent-runs on one core against its 0.81.
  """
  def step(x):
    w = mv(ainv, x)
    w, s = once(w, jnp.sqrt(jnp.maximum(dot(x, w), _TINY)))
    return once(safe_normalize(theta + (beta / s)[None] * w), dot(x, theta) + beta * s)
  # (prev, cur) -> (cur, A^-1 cur) three times from (1, 1): v = A^-1 A^-1 1, w = A^-1 v.
  ones = jnp.ones_like(theta)
  v, w = jax.lax.fori_loop(0, 3, lambda _, vw: (vw[1], mv(ainv, vw[1])), (ones, ones))
  push = (beta / jnp.sqrt(jnp.maximum(dot(v, w), _TINY)))[None] * w
  best_x, best_val = None, None
  for sign in (1.0, -1.0):
    x = safe_normalize(theta + sign * push)
    x = jax.lax.fori_loop(0, n_iter, lambda _, x: step(x)[0], x)
    _, val = step(x)
    if best_x is None:
      best_x, best_val = x, val
    else:
      better = val > best_val
      best_x = jnp.where(better[None], x, best_x)
  return best_x


def ucb_action(theta, ainv, beta, arms, n_iter: int = 4):
  """argmax_{x in X} <x, theta> + beta ||x||_{A^-1} per agent.

  Finite sets: exact. Ball: no closed form (it is max ||theta~|| over the
  ellipsoid, a trust-region problem); we run ``n_iter`` steps of the
  alternating maximization x <- (theta + beta A^-1 x / ||x||_{A^-1}) / ||.||
  (each step does not decrease the objective) from two starts, theta moved by
  +- the ellipsoid's axis along v, v = A^-1 A^-1 1 (two power steps towards
  A^-1's top eigenvector, the least explored direction), and keep the better
  end point. A start aligned with an eigenvector of A^-1 would be a fixed
  point and never explore, hence the two-sided starts. A local maximum, our
  choice (not the paper's).

  Args:
    theta: (d, p, *b) centres; ainv (d, d, p, *b); beta (p, *b) radii
      (p = m agents, or 1 for one shared estimate).
    arms: None (unit ball) or (K, d, m or 1, *b).
  """
  if arms is None:
    shape = theta.shape
    x = _ucb_ball(flat_batch(theta, 1), flat_batch(ainv, 2),
                  flat_batch(jnp.broadcast_to(beta, shape[1:]), 0), n_iter)
    return x.reshape(shape)
  w = sum_axis(ainv[None] * arms[:, None], 2)                     # (K, d, m, *b)
  width = jnp.sqrt(jnp.maximum(sum_axis(arms * w, 1), 0.0))       # (K, m, *b)
  scores = sum_axis(arms * theta[None], 1) + beta[None] * width
  return select(arms, jnp.argmax(scores, axis=0))


def greedy_action(theta, arms):
  """argmax_{x in X} <x, theta> per agent (Thompson sampling's step)."""
  if arms is None:
    return safe_normalize(theta)
  return select(arms, jnp.argmax(sum_axis(arms * theta[None], 1), axis=0))


def normals(keys: jax.Array, shape: tuple) -> jax.Array:
  """Standard normals (*shape, *keys.shape): one draw of ``shape`` per run key."""
  fn = lambda k: jax.random.normal(k, shape)
  for _ in range(keys.ndim):
    fn = jax.vmap(fn, in_axes=-1, out_axes=-1)
  return fn(keys)


def _masked(spec: LinSpec, x: jax.Array) -> jax.Array:
  return jnp.where(spec.agent_mask[None], x, 0.0)


def _n_agents_axis(spec: LinSpec) -> int:
  return spec.agent_mask.shape[0]


# --- independent OFUL and Thompson sampling --------------------------------------------------

class IndState(struct.PyTreeNode):
  ridge: Ridge   # per agent: ainv (d, d, m, *b), theta (d, m, *b), logdet (m, *b)
  spec: LinSpec
  t: jax.Array   # () int32


def independent(*, thompson: bool = False, lam0: float = 1.0, n_iter: int = 4,
                oracle: bool = False) -> Algorithm:
  """Each agent learns alone: OFUL (``thompson=False``) or linear Thompson sampling.

  OFUL: ridge lam0, beta = noise sqrt(2 log(1/delta) + log det(A/lam0)) +
  sqrt(lam0) S (Abbasi-Yadkori, Pal & Szepesvari 2011, Thm 2). Thompson
  sampling draws theta~ ~ N(theta_hat, noise^2 A^-1), the posterior under the
  prior N(0, noise^2/lam0 I) (the common practical variant; the analysed one
  inflates the covariance by O(d log n)).

  ``oracle=True``: the same sampler under the TRUE prior N(mu, sigma^2 I)
  (lam = noise^2 / sigma^2, capped at 1e8 for sigma = 0): each agent samples
  from its exact posterior, the Bayes reference that knows mu and sigma.
  """

  def init(key, spec: LinSpec) -> IndState:
    del key
    d = spec.pop_mean.shape[0]
    shape = (d,) + spec.agent_mask.shape
    if oracle:
      lam = spec.noise_std ** 2 / jnp.maximum(spec.pop_sigma ** 2, 1e-8 * spec.noise_std ** 2)
      prior = jnp.broadcast_to(spec.pop_mean[:, None], shape)
      ridge = ridge_init(prior, jnp.broadcast_to(lam[None], spec.agent_mask.shape))
    else:
      ridge = ridge_init(jnp.zeros(shape, jnp.float32), jnp.float32(lam0))
    return IndState(ridge=ridge, spec=spec, t=jnp.zeros((), jnp.int32))

  def act(keys, state: IndState, arms):
    r, spec = state.ridge, state.spec
    if thompson or oracle:
      d = r.theta.shape[0]
      z = normals(keys, (d, _n_agents_axis(spec)))
      sample = r.theta + spec.noise_std[None, None] * mv(cholesky(r.ainv), z)
      x = greedy_action(sample, arms)
    else:
      beta = oful_radius(spec.noise_std[None], spec.delta[None], r.logdet) + \
          math.sqrt(lam0) * spec.s_bound[None]
      x = ucb_action(r.theta, r.ainv, beta, arms, n_iter)
    return _masked(spec, x)

  def update(state: IndState, action, obs) -> IndState:
    return state.replace(ridge=ridge_update(state.ridge, action, obs.reward), t=state.t + 1)

  return Algorithm(init, act, update)


# --- fully pooled OFUL ------------------------------------------------------------------------

class PooledState(struct.PyTreeNode):
  ridge: Ridge   # one per run: ainv (d, d, *b), theta (d, *b), logdet (*b)
  spec: LinSpec
  t: jax.Array


def pooled(*, lam0: float = 1.0, n_iter: int = 4) -> Algorithm:
  """One shared OFUL estimate for all agents (as if theta_i = theta for all i).

  Each round every agent acts optimistically w.r.t. the shared ellipsoid (on the
  ball they all play the same action); the m observations then enter the
  shared inverse Gram matrix by m successive Sherman-Morrison updates.
  """

  def init(key, spec: LinSpec) -> PooledState:
    del key
    d = spec.pop_mean.shape[0]
    ridge = ridge_init(jnp.zeros((d,) + spec.noise_std.shape, jnp.float32), jnp.float32(lam0))
    return PooledState(ridge=ridge, spec=spec, t=jnp.zeros((), jnp.int32))

  def act(keys, state: PooledState, arms):
    del keys
    r, spec = state.ridge, state.spec
    beta = oful_radius(spec.noise_std, spec.delta, r.logdet) + math.sqrt(lam0) * spec.s_bound
    x = ucb_action(r.theta[:, None], r.ainv[:, :, None], beta[None], arms, n_iter)
    return _masked(spec, jnp.broadcast_to(x, (x.shape[0],) + spec.agent_mask.shape))

  def update(state: PooledState, action, obs) -> PooledState:
    def one(i, r):
      x = jax.lax.dynamic_index_in_dim(action, i, axis=1, keepdims=False)
      y = jax.lax.dynamic_index_in_dim(obs.reward, i, axis=0, keepdims=False)
      return ridge_update(r, x, y)
    ridge = jax.lax.fori_loop(0, action.shape[1], one, state.ridge)
    return state.replace(ridge=ridge, t=state.t + 1)

  return Algorithm(init, act, update)


# --- the two-stage collaborative algorithm (reconstruction) -----------------------------------

class CollabState(struct.PyTreeNode):
  """While simulating, the per-agent arrays have the agents and runs merged into
  one axis P = m x runs (:func:`flat_batch`), so that the per-round work runs
  along one long contiguous axis; the state a simulation returns
  (``export``) has them back in the (..., m, *b) layout of the other algorithms."""
  ridge: Ridge           # personalized estimates (valid from round n1 on): (d, d, P), (d, P), (P)
  gram: jax.Array        # (d (d + 1) / 2, P) V_i = sum_s x x^T, its upper triangle
                         # (:func:`~bandits.collab.ridge.tri_outer`; (d, d, ...) exported)
  b: jax.Array           # (d, P) sum_s r x
  gram_err: jax.Array    # the compensation of gram's and b's float32 sums
  b_err: jax.Array       # (:func:`~bandits.collab.ridge.compensated_add`)
  gram_new: jax.Array    # the rounds since the last fold into gram and b, summed plainly
  b_new: jax.Array
  mu_hat: jax.Array      # (d, *b) population mean estimate (refreshed per epoch)
  sigma2_hat: jax.Array  # (*b) heterogeneity estimate (from stage 1)
  tau2: jax.Array        # (*b) uncertainty of mu_hat, per coordinate
  lam: jax.Array         # (*b) the prior precision noise^2 / (sigma2_hat + tau2)
  spec: LinSpec
  t: jax.Array           # () int32


#: Rounds summed plainly in ``gram_new`` / ``b_new`` before they are folded into the totals
#: with Kahan's compensation. A plain float32 sum of 3e5 unit outer products drifts by tens to
#: hundreds of units, more than a Gram matrix's small eigenvalues; a chunk of 256 by about 1e-3,
#: and the folds are exact to an ulp, so the per-round cost stays one plain add.
FOLD_ROUNDS = 256


def gram_and_b(state: CollabState) -> tuple[jax.Array, jax.Array]:
  """Each agent's sums over every round so far, as stored while simulating: the upper
  triangle of V_i = sum x x^T (:func:`~bandits.collab.ridge.tri_outer`) and sum r x."""
  return (state.gram + (state.gram_new - state.gram_err),
          state.b + (state.b_new - state.b_err))


def is_epoch_start(t, n1: int):
  """t in {n1, 2 n1, 4 n1, ...}."""
  k = t // n1
  return (t >= n1) & (t % n1 == 0) & ((k & (k - 1)) == 0)


def collab(*, n1: int, lam0: float = 1.0, sigma_min: float = 1e-3, n_iter: int = 4,
           estimator: str = "random_effects", n_scoring: int = 4) -> Algorithm:
  """Two-stage collaborative personalized OFUL (our reconstruction of arXiv 2506.15943).

  Stage 1 (rounds t < n1, pooled exploration): agent i plays a fixed design,
  basis vector e_{(t + i) mod d} on the ball and arm (t + i) mod K of a finite
  or context set, so that every agent's Gram matrix V_i is well conditioned
  and the population can be estimated. At t = n1, 2 n1, 4 n1, ... empirical
  Bayes on all agents' data (V_i = sum_s x x^T, b_i = sum_s r x), under the
  random-effects model b_i ~ N(V_i mu, sigma^2 V_i^2 + noise^2 V_i) given
  the designs (``estimator='random_effects'``, the default):
    M_i = (noise^2 I + sigma_hat^2 V_i)^-1, W_i = M_i V_i,
    mu_hat = F^-1 sum_i M_i b_i, F = sum_i W_i + (lam0 / noise^2) I
      (generalized least squares: each agent's information about mu is
      capped at 1 / sigma^2 per direction; sigma = 0 gives the pooled ridge
      estimate), Cov(mu_hat) = F^-1, tau^2 = tr(F^-1) / d;
    sigma_hat^2: ``n_scoring`` REML Fisher-scoring steps,
      sigma^2 += (sum_i (||M_i r_i||^2 - tr W_i) + tr(F^-1 sum_i W_i^2))
                 / sum_i tr(W_i^2),   r_i = b_i - V_i mu_hat,
      floored at sigma_min^2, from sigma_min^2 at n1 and from the previous
      estimate at later refreshes (so the iteration continues across epochs).
  ``estimator='pooled_moments'`` is the first version, kept for comparison:
  pooled ridge mu_hat (P = lam0 I + sum_i V_i), a method-of-moments
  sigma_hat^2 computed once at n1 (from 2 observations per direction and
  agent, mostly noise: at d=10, m=20, sigma=0.07 it came out 0.001 (the
  floor) in 3 of 6 seeds and 0.26-0.33 in two) and kept, and
  tau^2 = noise^2 tr(P^-1) / d + sigma_hat^2 / m. On adaptive designs (an
  agent mostly plays along its own theta_i) the pooled mean is badly
  conditioned orthogonally to mu: |mu_hat - mu| was still 0.1-0.4 at
  n = 10^4. The random-effects refresh got sigma_hat within 0.055-0.09 of
  0.07 and |mu_hat - mu| 0.09-0.15 there, and 27% less regret (ball,
  d=10, m=20, sigma=0.07, n=10^4, 6 seeds: 17.3k vs 23.9k). Both read
  ||theta_i|| along an agent's own direction as a larger mu (bias about
  sigma^2 (d - 1) / ||mu|| along mu): the design follows theta_i, which the
  linear model does not know.
  Stage 2 (t >= n1): each agent runs OFUL on ridge regression towards
  mu_hat with precision lam = noise^2 / (sigma_hat^2 + tau^2) and radius
    beta_i = noise (sqrt(2 log(1/delta) + log det(A_i / lam)) + chi2_radius(d, delta)),
  the second term bounding sqrt(lam) ||theta_i - mu_hat|| under the prior.
  Each refresh costs (n_scoring + 2) d x d inversions per agent.

  With sigma_hat -> 0 the prior dominates and every agent follows the pooled
  estimate (pooled behaviour, regret ~ d sqrt(m n)); with large sigma_hat,
  lam -> 0 and each agent is an independent OFUL (~ d m sqrt(n)).
  Reconstruction choices (not from the paper): the stage-1 design and length,
  the estimators of mu and sigma, the doubling refresh, the radius.
  """
  if estimator not in ("random_effects", "pooled_moments"):
    raise ValueError(f"estimator must be 'random_effects' or 'pooled_moments'; got {estimator!r}")

  def unflat(x, n_lead: int, spec: LinSpec):
    """(*lead, P) -> (*lead, m, *b), the inverse of :func:`flat_batch`."""
    return x.reshape(x.shape[:n_lead] + spec.agent_mask.shape)

  def per_agent(v, spec: LinSpec):
    """A per-run value (*b) repeated for every agent, flat: (P,)."""
    return flat_batch(jnp.broadcast_to(v[None], spec.agent_mask.shape), 0)

  def init(key, spec: LinSpec) -> CollabState:
    del key
    d = spec.pop_mean.shape[0]
    run = spec.noise_std.shape
    shape = (d, spec.agent_mask.size)
    return CollabState(
        ridge=ridge_init(jnp.zeros(shape, jnp.float32), jnp.float32(lam0)),
        gram=jnp.zeros((d * (d + 1) // 2,) + shape[1:], jnp.float32),
        b=jnp.zeros(shape, jnp.float32),
        gram_err=jnp.zeros((d * (d + 1) // 2,) + shape[1:], jnp.float32),
        gram_new=jnp.zeros((d * (d + 1) // 2,) + shape[1:], jnp.float32),
        b_new=jnp.zeros(shape, jnp.float32),
        b_err=jnp.zeros(shape, jnp.float32), mu_hat=jnp.zeros((d,) + run, jnp.float32),
        sigma2_hat=jnp.zeros(run, jnp.float32), tau2=jnp.zeros(run, jnp.float32),
        lam=jnp.full(run, lam0, jnp.float32), spec=spec, t=jnp.zeros((), jnp.int32))

  def explore(state: CollabState, arms):
    spec = state.spec
    d = state.b.shape[0]
    m_shape = spec.agent_mask.shape
    agent = jnp.arange(m_shape[0]).reshape((m_shape[0],) + (1,) * (len(m_shape) - 1))
    if arms is None:
      j = (state.t + agent) % d                                         # (m, 1...)
      x = (jnp.arange(d).reshape((d,) + (1,) * len(m_shape)) == j[None]).astype(jnp.float32)
      return jnp.broadcast_to(x, (d,) + m_shape)
    idx = jnp.broadcast_to((state.t + agent) % arms.shape[0], m_shape)
    return select(arms, idx)

  def exploit(state: CollabState, arms):
    r, spec = state.ridge, state.spec
    d = r.theta.shape[0]
    noise, delta = per_agent(spec.noise_std, spec), per_agent(spec.delta, spec)
    beta = oful_radius(noise, delta, r.logdet) + noise * chi2_radius(d, delta)
    if arms is None:
      return unflat(_ucb_ball(r.theta, r.ainv, beta, n_iter), 1, spec)
    return ucb_action(unflat(r.theta, 1, spec), unflat(r.ainv, 2, spec), unflat(beta, 0, spec),
                      arms, n_iter)

  def act(keys, state: CollabState, arms):
    del keys
    x = jax.lax.cond(state.t < n1, explore, exploit, state, arms)
    return _masked(state.spec, x)

  def refresh(state: CollabState) -> CollabState:
    spec = state.spec
    d = state.b.shape[0]
    tri, b = gram_and_b(state)
    gram, b = unflat(from_tri(tri, d), 2, spec), unflat(b, 1, spec)
    mask = spec.agent_mask
    noise2 = spec.noise_std ** 2
    m_eff = jnp.maximum(jnp.sum(mask, axis=0).astype(jnp.float32), 1.0)
    eye = eye_like(noise2, d)
    mm = lambda a, c: sum_axis(a[:, :, None] * c[None], 1)
    first = state.t == n1
    if estimator == "pooled_moments":
      # The first version: pooled ridge mean, moment estimator once at the end of stage 1.
      pinv, _ = spd_inverse(lam0 * eye + jnp.sum(gram, axis=2))
      mu_hat = mv(pinv, jnp.sum(b, axis=1))
      g, _ = spd_inverse(lam0 * eye[:, :, None] + gram)
      w = mm(g, gram)
      resid = mv(g, b) - mv(w, mu_hat[:, None])
      noise_tr = jnp.trace(mm(w, g))                        # tr(G V G) = tr(W G), (m, *b)
      signal_tr = jnp.sum(w * w, axis=(0, 1))
      num = jnp.sum(jnp.where(mask, dot(resid, resid) - noise2[None] * noise_tr, 0.0), axis=0)
      den = jnp.maximum(jnp.sum(jnp.where(mask, signal_tr, 0.0), axis=0), _TINY)
      s2 = jnp.maximum(num / den, sigma_min ** 2)
      sigma2 = jnp.where(first, s2, state.sigma2_hat)
      tau2 = noise2 * jnp.trace(pinv) / d + sigma2 / m_eff
    else:
      # Random effects: b_i ~ N(V_i mu, sigma^2 V_i^2 + noise^2 V_i) given the designs.
      # M_i = (noise^2 I + sigma^2 V_i)^-1, W_i = M_i V_i (agent i's precision about mu),
      # mu_hat = F^-1 sum_i M_i b_i with F = sum_i W_i + (lam0 / noise^2) I (generalized
      # least squares; sigma = 0 gives the pooled ridge estimate), Cov(mu_hat) = F^-1, and
      # REML Fisher scoring for sigma^2 (score: sum_i ||M_i r_i||^2 - tr W_i, plus
      # tr(F^-1 sum_i W_i^2); information: sum_i tr(W_i^2)), r_i = b_i - V_i mu_hat.
      def gls(s2):
        mi, _ = spd_inverse(noise2[None, None, None] * eye[:, :, None] +
                            s2[None, None, None] * gram)
        wi = jnp.where(mask[None, None], mm(mi, gram), 0.0)
        mb = jnp.where(mask[None], mv(mi, b), 0.0)
        finv, _ = spd_inverse(jnp.sum(wi, axis=2) + (lam0 / noise2)[None, None] * eye)
        return mi, wi, finv, mv(finv, jnp.sum(mb, axis=1))

      def scoring_step(_, s2):
        mi, wi, finv, mu = gls(s2)
        mr = mv(mi, b - mv(gram, mu[:, None]))
        w2 = mm(wi, wi)
        score = (jnp.sum(jnp.where(mask, dot(mr, mr) - jnp.trace(wi), 0.0), axis=0) +
                 jnp.trace(mm(finv, jnp.sum(w2, axis=2))))
        info = jnp.maximum(jnp.sum(jnp.trace(w2), axis=0), _TINY)
        return jnp.maximum(s2 + score / info, sigma_min ** 2)

      s2 = jnp.where(first, sigma_min ** 2, state.sigma2_hat)
      sigma2 = jax.lax.fori_loop(0, n_scoring, scoring_step, s2)
      _, _, finv, mu_hat = gls(sigma2)
      tau2 = jnp.trace(finv) / d
    lam = noise2 / (sigma2 + tau2)
    a = lam[None, None, None] * eye[:, :, None] + gram
    ainv, logdet_a = spd_inverse(a)
    theta = mv(ainv, lam[None, None] * mu_hat[:, None] + b)
    ridge = Ridge(ainv=flat_batch(ainv, 2), theta=flat_batch(theta, 1),
                  logdet=flat_batch(logdet_a - d * jnp.log(lam)[None], 0))
    return state.replace(ridge=ridge, mu_hat=mu_hat, sigma2_hat=sigma2, tau2=tau2, lam=lam)

  def fold(state: CollabState) -> CollabState:
    gram, gram_err = compensated_add(state.gram, state.gram_err, state.gram_new)
    b, b_err = compensated_add(state.b, state.b_err, state.b_new)
    return state.replace(gram=gram, gram_err=gram_err, b=b, b_err=b_err,
                         gram_new=jnp.zeros_like(gram), b_new=jnp.zeros_like(b))

  def update(state: CollabState, action, obs) -> CollabState:
    x, y = flat_batch(action, 1), flat_batch(obs.reward, 0)
    ridge = jax.lax.cond(state.t >= n1, lambda r: ridge_update(r, x, y), lambda r: r,
                         state.ridge)
    state = state.replace(ridge=ridge, gram_new=state.gram_new + tri_outer(x),
                          b_new=state.b_new + x * y[None], t=state.t + 1)
    # one conditional per round: a second one costs about 15% of the run
    return jax.lax.cond((state.t % FOLD_ROUNDS == 0) | is_epoch_start(state.t, n1),
                        lambda s: jax.lax.cond(is_epoch_start(s.t, n1), refresh,
                                               lambda s: s, fold(s)),
                        lambda s: s, state)

  def export(state: CollabState) -> CollabState:
    spec, r = state.spec, state.ridge
    ridge = Ridge(ainv=unflat(r.ainv, 2, spec), theta=unflat(r.theta, 1, spec),
                  logdet=unflat(r.logdet, 0, spec))
    tri, b = gram_and_b(state)
    zero = lambda x: unflat(jnp.zeros_like(x), 1, spec)
    # the sums whole (the compensation and the unfolded rounds taken in)
    return state.replace(ridge=ridge, gram=unflat(from_tri(tri, b.shape[0]), 2, spec),
                         b=unflat(b, 1, spec), gram_err=zero(state.gram_err),
                         b_err=zero(state.b_err), gram_new=zero(state.gram_new),
                         b_new=zero(state.b_new))

  return Algorithm(init, act, update, export)


# --- registry -----------------------------------------------------------------------------------

class Info(NamedTuple):
  label: str
  needs_population: bool  # reads the true mu and sigma (the oracle)


ALGORITHMS: dict[str, Info] = {
    "collab": Info("two-stage collaborative (recon.)", False),
    "ind_oful": Info("independent OFUL", False),
    "ind_ts": Info("independent linear TS", False),
    "pooled_oful": Info("pooled OFUL", False),
    "oracle": Info("oracle Bayes TS (knows mu, sigma)", True),
}


def explore_rounds(d: int, action_set: str, n_arms: int, per_dim: int = 2) -> int:
  """Stage-1 length n1 of ``collab``: per_dim * d rounds, whole cycles of the design."""
  cycle = d if action_set == "ball" else max(n_arms, 1)
  n1 = max(per_dim * d, cycle if action_set == "finite" else 0)
  return int(math.ceil(n1 / cycle) * cycle) if action_set != "contexts" else int(n1)


def make(name: str, *, n1: int | None = None, **kwargs) -> Algorithm:
  """The algorithm registered as ``name`` (``n1`` is collab's stage-1 length)."""
  if name == "collab":
    if n1 is None:
      raise ValueError("collab needs n1 (see explore_rounds)")
    return collab(n1=n1, **kwargs)
  if name == "ind_oful":
    return independent(**kwargs)
  if name == "ind_ts":
    return independent(thompson=True, **kwargs)
  if name == "pooled_oful":
    return pooled(**kwargs)
  if name == "oracle":
    return independent(oracle=True, **kwargs)
  raise ValueError(f"unknown algorithm {name!r}; allowed: {', '.join(ALGORITHMS)}")
