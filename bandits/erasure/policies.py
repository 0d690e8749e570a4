"""Erasure-free bandit algorithms (UCB, successive elimination) that the erasure algorithms wrap.

Each is an :class:`~bandits.core.Algorithm` factory. They credit each reward
to the arm they requested, so on an erasure channel they are the naive
baselines that ignore erasures; :mod:`bandits.erasure.algorithms` wraps or
extends them. All are batch-polymorphic (see :mod:`bandits.core`): per-arm
state is (K, *batch), scalars (*batch), and arm reductions run over axis 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from bandits.core import (Algorithm, BanditSpec, add_at, argmax_arms, first_index, first_true,
                          take, tree_select)


def repetitions(eps: jax.Array, horizon: jax.Array) -> jax.Array:
  """alpha = ceil(2 ln T / ln(1/eps)), so that eps^alpha <= T^-2; 1 when eps = 0.

  The authors' ``calculate_repetitions``: the number of consecutive requests
  after which an arm has been delivered with probability at least 1 - T^-2.
  """
  eps = jnp.asarray(eps, jnp.float32)
  t = jnp.asarray(horizon, jnp.float32)
  safe = jnp.where(eps > 0, eps, 0.5)
  alpha = jnp.ceil(2.0 * jnp.log(t) / -jnp.log(safe))
  return jnp.where(eps > 0, jnp.maximum(alpha, 1.0), 1.0).astype(jnp.int32)


class UCBState(struct.PyTreeNode):
  counts: jax.Array    # (K,) float32 pulls credited to each arm
  sums: jax.Array      # (K,) float32 reward credited to each arm
  n: jax.Array         # () int32 pulls credited so far
  arm_mask: jax.Array  # (K,) bool


def ucb() -> Algorithm:
  """UCB with the exploration function f(n) = 1 + n ln^2 n.

  Index ``mean_a + sqrt(ln(1 + n ln^2 n) / (N_a + 1))`` with n = 1 + pulls so
  far (Lattimore & Szepesvari, Bandit Algorithms, ch. 8), after one round-robin
  pass over the arms; ties go to the lowest index. This is the UCB of the
  erasure papers' public code (``ucb_ma`` with one agent), including its
  ``N_a + 1`` in the bonus.
  """

  def init(key, spec: BanditSpec) -> UCBState:
    del key
    zeros = jnp.zeros(spec.arm_mask.shape, jnp.float32)
    return UCBState(counts=zeros, sums=zeros, n=jnp.ones(spec.horizon.shape, jnp.int32),
                    arm_mask=spec.arm_mask)

  def act(key, state: UCBState) -> jax.Array:
    del key
    untried = state.arm_mask & (state.counts == 0)
    n = state.n.astype(jnp.float32)
    log_n = jnp.log(n)
    bonus = jnp.sqrt(jnp.log1p(n * log_n * log_n) / (state.counts + 1.0))
    mean = state.sums / jnp.maximum(state.counts, 1.0)
    index = jnp.where(state.arm_mask, mean + bonus, -jnp.inf)
    return jnp.where(jnp.any(untried, axis=0), first_true(untried), argmax_arms(index))

  def update(state: UCBState, action, obs) -> UCBState:
    return state.replace(counts=add_at(state.counts, action, 1.0),
                         sums=add_at(state.sums, action, obs.reward), n=state.n + 1)

  return Algorithm(init, act, update)


class PhasedState(struct.PyTreeNode):
  """State of phased successive elimination; shapes per run (a batch adds trailing axes).

  Rewards are credited to one arm at a time, ``acc_arm``, through per-run
  scalars (``acc_cnt``, ``acc_sum``) that are merged into the per-arm arrays
  ``cnt`` and ``total`` only when the credited arm changes, at a block switch
  and at a phase end (:func:`merge`): a round then touches no per-arm array,
  and K-wide work happens under ``lax.cond`` in the rare rounds that need it.
  The arm's true count this phase is ``cnt[a] + (acc_arm == a) * acc_cnt``;
  ``arm_base`` and ``acc_base`` cache ``cnt`` at ``arm`` and ``acc_arm``.
  """
  active: jax.Array     # (K,) bool, arms not eliminated
  cnt: jax.Array        # (K,) float32 merged samples of each arm in this phase
  total: jax.Array      # (K,) float32 merged reward of each arm in this phase
  qhat: jax.Array       # (K,) float32 mean over all finished phases
  pulls: jax.Array      # () float32 samples per active arm in finished phases
  m: jax.Array          # () int32 samples per arm this phase (M_i)
  arm: jax.Array        # () int32 the arm requested in the current block
  pos: jax.Array        # () int32 rounds spent in the current block
  linger: jax.Array     # () int32 rounds discarded at the start of each block
  log_term: jax.Array   # () float32 log term of the confidence radius
  known: jax.Array      # () int32 arm known to be played (feedback), -1 if unknown
  acc_arm: jax.Array    # () int32 the arm pending credits belong to
  acc_cnt: jax.Array    # () float32 pending samples of acc_arm (not yet in cnt)
  acc_sum: jax.Array    # () float32 pending reward of acc_arm (not yet in total)
  acc_base: jax.Array   # () float32 cnt[acc_arm], +inf when acc_arm is eliminated
  arm_base: jax.Array   # () float32 cnt[arm]


def arm_count(s: PhasedState) -> jax.Array:
  """Samples of the block's arm this phase, pending credits included."""
  return s.arm_base + jnp.where(s.acc_arm == s.arm, s.acc_cnt, 0.0)


def credit(s: PhasedState, c: jax.Array, reward: jax.Array) -> PhasedState:
  """Credits ``c`` (0 or 1) samples of ``reward`` to ``acc_arm``: per-run scalars only."""
  return s.replace(acc_cnt=s.acc_cnt + c, acc_sum=s.acc_sum + c * reward)


def merge(s: PhasedState, acc_arm=None) -> PhasedState:
  """Moves the pending credits into ``cnt``/``total`` and points them at ``acc_arm``.

  ``acc_arm`` None keeps the current one. Refreshes the cached counts (a K-wide
  step: called under ``lax.cond`` in the rounds that need it).
  """
  zero = jnp.zeros_like(s.acc_cnt)
  s = s.replace(cnt=add_at(s.cnt, s.acc_arm, s.acc_cnt),
                total=add_at(s.total, s.acc_arm, s.acc_sum), acc_cnt=zero, acc_sum=zero)
  return _point(s, s.acc_arm if acc_arm is None else acc_arm)


def _point(s: PhasedState, acc_arm) -> PhasedState:
  """Points (no) pending credits at ``acc_arm`` and refreshes the cached counts."""
  acc_arm = jnp.asarray(acc_arm, jnp.int32)
  return s.replace(acc_arm=acc_arm, acc_base=take(jnp.where(s.active, s.cnt, jnp.inf), acc_arm),
                   arm_base=take(s.cnt, s.arm))


def phase_end(s: PhasedState, radius_scale: float = 2.0, follow: bool = True) -> PhasedState:
  """Merges the phase's samples into the means and eliminates arms.

  Arm j is dropped when max_a qhat_a - qhat_j > radius_scale * sqrt(log_term /
  (2 M_i)), simultaneously for all active arms; then M_{i+1} = 4 M_i. Pending
  credits are merged first. ``follow``: credits go to the requested arm (the
  next phase's first), else they stay with ``acc_arm`` (the played arm).
  """
  s = merge(s)
  qhat = jnp.where(s.active & (s.cnt > 0),
                   (s.qhat * s.pulls + s.total) / jnp.maximum(s.pulls + s.cnt, 1.0), s.qhat)
  m = s.m.astype(jnp.float32)
  radius = radius_scale * jnp.sqrt(s.log_term / (2.0 * m))
  best = jnp.max(jnp.where(s.active, qhat, -jnp.inf), axis=0)
  # An arm attaining the best mean always survives (also if means are not finite).
  active = s.active & ((best - qhat <= radius) | (qhat == best))
  zeros = jnp.zeros_like(s.cnt)
  m_next = jnp.where(s.m >= 1 << 28, 1 << 30, s.m * 4)  # 4 M_i without int32 overflow
  arm = first_true(active)
  s = s.replace(active=active, cnt=zeros, total=zeros, qhat=qhat, pulls=s.pulls + m,
                m=m_next, arm=arm, pos=jnp.zeros_like(s.pos))
  return _point(s, arm if follow else s.acc_arm)


def advance(s: PhasedState, radius_scale: float = 2.0, follow: bool = True) -> PhasedState:
  """After a round: move to the next arm needing samples, or end the phase.

  Blocks end rarely (about K log T times per run), so the switch is done under
  ``lax.cond`` only in rounds where some run of the batch finished its block,
  and the phase end only where some run finished its phase; the other runs go
  through unchanged. On one device's batch that skips most of the per-round
  work (see :func:`bandits.core.on_each_device`); under ``vmap`` the conds
  become selects and every branch is computed, with the same result.
  ``follow``: pending credits follow the requested arm (credit goes to what
  was requested), else they stay with the arm they belong to.
  """
  block_done = arm_count(s) >= s.m

  def switch(s: PhasedState) -> PhasedState:
    k = s.cnt.shape[0]
    s = merge(s)
    pending = first_index(s.active & (s.cnt < s.m))  # K when no arm needs samples
    arm = jnp.where(block_done & (pending < k), pending, s.arm)
    moved = _point(s.replace(arm=arm, pos=jnp.where(block_done, 0, s.pos)),
                   arm if follow else s.acc_arm)
    phase_over = block_done & (pending == k)
    return jax.lax.cond(jnp.any(phase_over),
                        lambda: tree_select(phase_over, phase_end(s, radius_scale, follow), moved),
                        lambda: moved)

  return jax.lax.cond(jnp.any(block_done), switch, lambda s: s, s)


def phased_init(spec: BanditSpec, *, first_phase, log_term, linger) -> PhasedState:
  zeros = jnp.zeros(spec.arm_mask.shape, jnp.float32)
  shape = spec.horizon.shape  # () for one run, the batch shape for a batch
  full = lambda v, dtype: jnp.broadcast_to(jnp.asarray(v, dtype), shape)
  arm = first_true(spec.arm_mask)
  return PhasedState(active=spec.arm_mask, cnt=zeros, total=zeros, qhat=zeros,
                     pulls=full(0, jnp.float32), m=full(first_phase, jnp.int32),
                     arm=arm, pos=full(0, jnp.int32),
                     linger=full(linger, jnp.int32), log_term=full(log_term, jnp.float32),
                     known=full(-1, jnp.int32), acc_arm=arm, acc_cnt=full(0, jnp.float32),
                     acc_sum=full(0, jnp.float32), acc_base=full(0, jnp.float32),
                     arm_base=full(0, jnp.float32))


def sae_constants(spec: BanditSpec) -> tuple[jax.Array, jax.Array]:
  """(M_1, log term) of L-SAE's schedule: M_i = 4^i from 4, radius log ln(K T)."""
  t = spec.horizon.astype(jnp.float32)
  return jnp.full(spec.horizon.shape, 4, jnp.int32), jnp.log(spec.n_arms.astype(jnp.float32) * t)


def successive_elimination(*, radius_scale: float = 2.0, constants=sae_constants) -> Algorithm:
  """Phased successive arm elimination (SAE), blind to erasures.

  Phase i asks for M_i samples of every active arm, one arm after another in
  index order (a block of M_i consecutive requests per arm), crediting each
  reward to the requested arm; then it eliminates (see :func:`phase_end`).
  ``constants(spec) -> (M_1, log_term)`` sets the schedule; the default is
  L-SAE's, so this is L-SAE without lingering (its erasure-free self).
  """

  def init(key, spec: BanditSpec) -> PhasedState:
    del key
    first, log_term = constants(spec)
    return phased_init(spec, first_phase=first, log_term=log_term, linger=0)

  def act(key, state: PhasedState) -> jax.Array:
    del key
    return state.arm

  def update(state: PhasedState, action, obs) -> PhasedState:
    # The requested arm is always the block's arm (``act``), where credits point.
    del action
    kept = (state.pos >= state.linger).astype(jnp.float32)
    s = credit(state, kept, obs.reward).replace(pos=state.pos + 1)
    return advance(s, radius_scale)

  return Algorithm(init, act, update)
