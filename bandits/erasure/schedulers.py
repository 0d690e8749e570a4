"""Multi-agent schedulers for bandits over erasure channels with feedback: TPG, SP2-Feedback, baselines.

M agents sit behind their own erasure channels (eps_m) and play arms of one
K-armed bandit; a central learner decides each round which arm to request from
each agent, and (with feedback) learns which requests arrived. These are the
schedulers of the journal work of Hanna, Karakas, Yang & Fragouli, "Fundamental
Limits of Learning Under Erasure-Constrained Communication Channels" (its text
was not at hand), built on the batched successive elimination of arXiv
2406.18072 and 2504.20894. They follow the authors' public code (github
mervekarakas/mamab_erasures, read at b3e9251), class by class; each docstring
names its class and every place where it differs.

All share the batch structure of the authors' code: batch i needs M_i samples
of every active arm, M_i = 4^i M_0 with M_0 = floor(ceil(2 ln(T M)) / 4); a
sample is credited to the arm an agent actually played (known through the
feedback), up to M_i per arm; at the batch end the running means are updated
and arm j is eliminated when max_a q_a - q_j > 2 sqrt(ln(T M) / (2 M_i))
(``BanditBase.eliminate_arms``).

TPG and SP2-Feedback are batch-polymorphic (arrays (K, *b) per arm, (M, *b) per
agent, runs trailing) and go through :func:`batched`, which runs their rare work
(batch ends, plans) only in rounds where some run of the device needs it; the
others are written for one run ((K,) per arm, (M,) per agent) and mapped over
runs by the simulator (``native_batch=False``). Randomness: a scheduler that draws
uses :func:`algo_uniforms` (key, t), uniforms fixed by the round, so a float64
reference (:mod:`bandits.erasure.numpy_ma`) can replay the same choices.
Conventions: ``choice(S, u)`` over an ascending set S of arms is
``S[min(floor(u |S|), |S| - 1)]``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from bandits.core import (Algorithm, BanditSpec, per_run, take, threefry2x32, tree_select,
                          unit_float)
from bandits.erasure.policies import repetitions

N_ALGO_FIELDS = 3  # uniforms per slot and round: agent choice, arm priority, agent priority


def algo_uniforms(key: jax.Array, t: jax.Array, n_arms: int, n_agents: int) -> jax.Array:
  """The scheduler's uniforms for the decisions of round ``t``: (max(K, M), 3) float32.

  ``jax.random.uniform(jax.random.fold_in(key, t), (max(K, M), 3))`` bit for bit (with
  JAX's default partitionable Threefry), computed with the unrolled hash
  (:func:`bandits.core.threefry2x32`); :func:`algo_uniform_at` gives single entries.
  Batch-polymorphic: ``key`` and ``t`` of shape (*b) give (max(K, M), 3, *b).
  """
  n = max(n_arms, n_agents) * N_ALGO_FIELDS
  return algo_uniform_at(key, t, jnp.arange(n, dtype=jnp.uint32)).reshape(
      (-1, N_ALGO_FIELDS) + jnp.shape(t))


def algo_uniform_at(key: jax.Array, t: jax.Array, index: jax.Array) -> jax.Array:
  """Entries ``index`` (flat, row-major) of :func:`algo_uniforms` ``(key, t, ...)``: fold_in
  hashes (0, t) under the key, and word i of the draw is the xor of the hash of (0, i)
  under the folded key. Batch-polymorphic: ``key`` and ``t`` of shape (*b) and ``index``
  of shape (*lead) give (*lead, *b)."""
  data = jax.random.key_data(key)
  f0, f1 = threefry2x32(data[..., 0], data[..., 1], jnp.uint32(0), jnp.asarray(t, jnp.uint32))
  index = jnp.asarray(index, jnp.uint32)
  index = index.reshape(index.shape + (1,) * f0.ndim)
  w0, w1 = threefry2x32(f0, f1, jnp.zeros_like(index), index)
  return unit_float(w0 ^ w1)


def choice(mask: jax.Array, u: jax.Array) -> jax.Array:
  """``S[min(floor(u |S|), |S| - 1)]`` for the ascending set S of ``mask`` (K, *b); 0 if empty.

  ``u`` is (*lead, *b): one pick per lead element (e.g. per agent) and run.
  """
  k = mask.shape[0]
  lead = u.ndim - (mask.ndim - 1)
  m = mask.astype(jnp.int32)
  n = jnp.sum(m, axis=0)
  idx = jnp.minimum(jnp.floor(u * n).astype(jnp.int32), jnp.maximum(n - 1, 0))
  arm_axis = lambda x: x.reshape((k,) + (1,) * lead + x.shape[1:])
  hit = arm_axis(mask) & (arm_axis(jnp.cumsum(m, axis=0) - 1) == idx[None])
  iota = jnp.arange(k, dtype=jnp.int32).reshape((k,) + (1,) * (idx.ndim))
  return jnp.max(jnp.where(hit, iota, 0), axis=0)


def first_batch(spec: BanditSpec) -> jax.Array:
  """M_0 = floor(ceil(2 ln(T M)) / 4), so that the first batch has M_1 = 4 M_0 samples per arm."""
  n_agents = spec.eps.shape[0]
  log_tm = jnp.log(spec.horizon.astype(jnp.float32) * n_agents)
  return (jnp.ceil(2.0 * log_tm) // 4).astype(jnp.int32)


class Rare(NamedTuple):
  """Rare work of a :func:`batched` algorithm: ``fix(state)`` where ``needs(state)``, both
  batch-polymorphic (``needs`` gives (*b) bool)."""
  needs: Callable
  fix: Callable


def batched(init, act, step, rare: list[Rare], *, feedback: str | None = None) -> Algorithm:
  """A batch-polymorphic algorithm whose rare work runs only in rounds that need it.

  ``act(state)``, ``step(state, action, obs)`` and the :class:`Rare` pieces are
  batch-polymorphic (arrays (K, *b), (M, *b), (*b): the layout of :mod:`bandits.core`);
  ``init(key, spec)`` is written for one run and mapped over the trailing batch axes. ``rare`` lists :class:`Rare` pieces applied
  after ``step`` in order, each under one ``lax.cond`` for the whole batch: ``fix`` runs
  (kept where ``needs``) only in rounds where some run of the device's batch needs it.
  Under ``vmap`` a per-run ``cond`` computes both branches every round; here batch ends and
  planning cost only the rounds that have them. The state must hold a per-run scalar ``t``
  (its number of batch axes tells the wrapper the batch's). ``feedback``: the algorithm's
  name when it needs the acknowledgements (an observation without them is refused).
  """

  def b_init(key, spec):
    return per_run(init, jnp.ndim(key))(key, spec)

  def b_act(key, state):
    del key
    return act(state)

  def b_update(state, action, obs):
    if feedback and obs.ack is None:
      raise ValueError(f"{feedback} needs feedback: run it on an environment with feedback=True")
    state = step(state, action, obs)
    for needs, fix in rare:
      flag = needs(state)
      state = jax.lax.cond(jnp.any(flag),
                           lambda s, flag=flag, fix=fix: tree_select(flag, fix(s), s),
                           lambda s: s, state)
    return state

  return Algorithm(b_init, b_act, b_update)


class ErasureSpec(BanditSpec):
  """What a multi-agent scheduler is told: the bandit spec and each agent's first arm.

  Attributes:
    initial_arm: (M,) int32, the arm each agent plays until a request reaches it
      (the authors' runners pass these ``base_actions`` to the algorithm).
  """
  initial_arm: jax.Array | None = None


class Batch(struct.PyTreeNode):
  """Elimination state shared by the batched schedulers (one run)."""
  active: jax.Array      # (K,) bool, arms not eliminated
  sums: jax.Array        # (K,) float32, rewards credited in finished batches
  counts: jax.Array      # (K,) float32, samples credited in finished batches
  qhat: jax.Array        # (K,) float32, running means
  m: jax.Array           # () int32, samples per arm this batch (M_i)
  log_term: jax.Array    # () float32, ln(T M)
  pull_count: jax.Array  # (K,) int32, samples credited this batch
  pull_sums: jax.Array   # (K,) float32, rewards credited this batch


def batch_init(spec: BanditSpec) -> Batch:
  zeros = jnp.zeros(spec.arm_mask.shape, jnp.float32)
  n_agents = spec.eps.shape[0]
  return Batch(active=spec.arm_mask, sums=zeros, counts=zeros, qhat=zeros,
               m=4 * first_batch(spec),
               log_term=jnp.log(spec.horizon.astype(jnp.float32) * n_agents),
               pull_count=jnp.zeros(spec.arm_mask.shape, jnp.int32), pull_sums=zeros)


def batch_end(b: Batch, *, running_mean: bool = False) -> Batch:
  """Merges the batch into the means, eliminates, and opens the next batch (M_{i+1} = 4 M_i).
  Batch-polymorphic.

  ``running_mean=False`` (TPG, SGreedy): q_a = all credited rewards / all credited
  samples, over arms credited this batch. ``running_mean=True`` (SP2, SP2-Feedback,
  RRR): q_a = (q_a n + S_a) / (n + c_a) with n the sum of the finished batches' M_i,
  for every active arm (as the authors' classes write it).
  """
  pc = b.pull_count.astype(jnp.float32)
  if running_mean:
    n = b.counts  # every active arm's n: the sum of the finished batches' M_i
    qhat = jnp.where(b.active, (b.qhat * n + b.pull_sums) / (n + pc), b.qhat)
    counts = jnp.where(b.active, n + b.m.astype(jnp.float32), b.counts)
    sums = b.sums
  else:
    hit = b.active & (b.pull_count > 0)
    sums = jnp.where(hit, b.sums + b.pull_sums, b.sums)
    counts = jnp.where(hit, b.counts + pc, b.counts)
    qhat = jnp.where(hit, sums / jnp.maximum(counts, 1.0), b.qhat)
  best = jnp.max(jnp.where(b.active, qhat, -jnp.inf), axis=0)
  radius = 2.0 * jnp.sqrt(b.log_term / (2.0 * b.m.astype(jnp.float32)))
  active = b.active & ~(best - qhat > radius)
  zeros = jnp.zeros_like(b.pull_sums)
  return b.replace(active=active, sums=sums, counts=counts, qhat=qhat,
                   m=jnp.minimum(b.m, 1 << 28) * 4,
                   pull_count=jnp.zeros_like(b.pull_count), pull_sums=zeros)


def credit(b: Batch, arms: jax.Array, reward: jax.Array, eligible: jax.Array | None = None):
  """Credits agent j's ``reward[j]`` to ``arms[j]`` in agent order, up to M_i per arm.

  Sequentially, agent j's sample counts when it is ``eligible`` and its arm's batch count,
  with the earlier agents' counted samples, is below M_i; the same test written for all agents
  at once (an earlier eligible agent on the same arm counts exactly while the count has room).
  Batch-polymorphic: ``arms``, ``reward`` and ``eligible`` are (M, *b) for a batch of
  (K, *b) arms. Returns (the batch with the counts and sums, credited (M, *b), each agent's
  arm count before its own sample (M, *b)).
  """
  n_agents, k = arms.shape[0], b.pull_count.shape[0]
  ok = jnp.ones(arms.shape, bool) if eligible is None else eligible
  # Unrolled over the agents: elementwise ops over the runs, which XLA fuses. On CPU a sum
  # over the leading axis of an (M, M, *b) or (M, K, *b) array is a strided loop per run,
  # several times slower inside the simulator's round; ``before`` is one (M, *b) expression
  # (one kernel), where a stack of per-agent rows made a kernel per agent.
  idx = _lead(n_agents, arms.ndim - 1)
  before = take(b.pull_count, arms) + sum(
      ((idx > i) & (arms[i] == arms) & ok[i]).astype(jnp.int32) for i in range(n_agents - 1))
  credited = ok & (before < b.m)
  iota = jnp.arange(k).reshape((k,) + (1,) * (arms.ndim - 1))
  hits = [(arms[j] == iota) & credited[j] for j in range(n_agents)]
  b = b.replace(pull_count=b.pull_count + sum(h.astype(jnp.int32) for h in hits),
                pull_sums=b.pull_sums + sum(jnp.where(h, reward[j], 0.0)
                                            for j, h in enumerate(hits)))
  return b, credited, before


class TPGState(struct.PyTreeNode):
  """Two-Phase Greedy (one run). Per agent (M,), per arm (K,), per chunk slot (M,)."""
  key: jax.Array
  t: jax.Array            # () int32, rounds played
  batch: Batch
  alpha: jax.Array        # (M,) int32, repetitions per channel
  known: jax.Array        # (M,) int32, the arm each agent plays (known through feedback)
  phase: jax.Array        # () int32, 1 (greedy takeover) or 2 (chunk finishing)
  done: jax.Array         # (K,) bool, arms that reached M_i samples in phase 1
  done_count: jax.Array   # () int32
  threshold: jax.Array    # () int32, phase 1 ends when done_count reaches it
  unassigned: jax.Array   # (K,) bool, arms not yet given to an agent (given highest first)
  arm: jax.Array          # (M,) int32, each agent's assigned arm, -1 for none
  taken: jax.Array        # (M,) bool, taken over (out of the greedy fill)
  delivered: jax.Array    # (M,) bool, its assigned arm has reached it
  attempts: jax.Array     # (M,) int32, rounds spent before delivery
  succ: jax.Array         # (M,) int32, acknowledged deliveries of the assigned arm
  slot: jax.Array         # (M,) int32, the agent's chunk in phase 2, -1 for none
  chunk_arm: jax.Array    # (M,) int32, each chunk's arm, -1 for an unused slot
  chunk_count: jax.Array  # (M,) int32
  chunk_active: jax.Array  # (M,) bool
  need: jax.Array         # () int32, samples per chunk


def _lead(n: int, nb: int) -> jax.Array:
  """arange(n) shaped (n, 1, ..., 1) against (n, *batch) with ``nb`` batch axes."""
  return jnp.arange(n, dtype=jnp.int32).reshape((n,) + (1,) * nb)


def _at(x: jax.Array, i: jax.Array) -> jax.Array:
  """``x[i]`` along axis 0 for every run (a chain of selects: agents and arms are few)."""
  return take(x, i, unroll=64)


def tpg(*, guarded: bool = False) -> Algorithm:
  """Two-Phase Greedy (the authors' ``BatchTPG``; ``guarded=True``: ``BatchTPGNew``).

  Batch i needs M_i samples of each active arm. Phase 1: before every round each
  agent that is idle or whose arm is done (not taken over) gets the next
  unassigned active arm, highest index first; when none is left it takes over
  the arm of the slowest agent (largest estimated rounds to finish,
  eta = alpha_m + M_i - pulls - attempts before delivery, M_i - deliveries
  after) if starting afresh (alpha_j + M_i) would beat it; the slow agent is
  marked taken over and keeps pulling. An agent gives up an arm not delivered
  within alpha_m + M_i attempts. Phase 1 ends when all but M of the active arms
  have M_i samples (arms credited while eliminated count too, as in the code).
  Phase 2, if 0 < U <= M arms are unfinished: each gets floor(M / U) chunks of
  ceil(M_i / chunks) samples; agent i takes chunk i, agents past the chunks a
  random unfinished arm (not a chunk); before every round, agents from the last
  to the first whose chunk is done try a takeover the same way. The batch ends
  when no chunk is open. With ``guarded``, an agent whose arm has reached it
  and still needs samples is never taken over, and a random-arm agent counts as
  done (so it tries takeovers).

  Differences from the authors' code: rewards come from the environment
  (their TPG draws Gaussian rewards even in Bernoulli runs); an agent that runs
  out of attempts in the round its request arrives plays the delivered arm (the
  environment's rule), where their code keeps the old one.
  """

  class Rules(NamedTuple):
    """A phase's takeover rules: who tries, in which order, and on what terms."""
    tries: jax.Array  # (M,) bool, agents that try (fixed for the round's plan)
    reverse: bool     # from the last agent down
    eta: Callable     # state -> (M,) estimated rounds each agent needs
    eligible: Callable  # state -> (M,) bool, possible targets
    cost: Callable    # (state, target (*b) agent) -> (*b): a trier's estimate is alpha + cost
    allowed: Callable  # (state, target (*b) agent) -> bool, extra condition on the target

  def candidates(s: TPGState, r: Rules):
    """The two possible targets per run, (*b) each: the first agent with the largest eta
    among the eligible ones and its eta, then the runner-up (the first agent's target), in
    one pass over the agents."""
    e = jnp.where(r.eligible(s), r.eta(s), -1)
    best, first = e[0], jnp.zeros(e.shape[1:], jnp.int32)
    best2, second = jnp.full(e.shape[1:], -2, e.dtype), jnp.zeros(e.shape[1:], jnp.int32)
    for j in range(1, e.shape[0]):
      top, up = e[j] > best, e[j] > best2
      best2, second = (jnp.where(top, best, jnp.where(up, e[j], best2)),
                       jnp.where(top, first, jnp.where(up, j, second)))
      best, first = jnp.where(top, e[j], best), jnp.where(top, j, first)
    return first, best, second, best2

  def outcome(s: TPGState, r: Rules, ptr):
    """(which triers past ``ptr`` would take over, each one's target) on state ``s``: agent j
    targets the first agent with the largest eta among the eligible others and takes it when
    that eta is positive and larger than its own estimate. Batch-polymorphic."""
    n_agents = s.arm.shape[0]
    idx = _lead(n_agents, s.t.ndim)
    first, best, second, best2 = candidates(s, r)
    target = jnp.where(idx == first, second, first)
    t_eta = jnp.where(idx == first, best2, best)
    after = idx < ptr if r.reverse else idx > ptr
    # the target is one of two agents per run: evaluate the rules on those two, not per trier
    at_first = idx == first
    mine = s.alpha + jnp.where(at_first, r.cost(s, second), r.cost(s, first))
    allowed = jnp.where(at_first, r.allowed(s, second), r.allowed(s, first))
    ok = r.tries & after & (t_eta > 0) & (mine < t_eta) & allowed
    return ok, target

  def any_takeover(s: TPGState, r: Rules) -> jax.Array:
    """``jnp.any(outcome(s, r, start_ptr(r))[0], axis=0)``, (*b): whether some trier would
    take over. Written per agent on per-run arrays: a per-run value broadcast over the
    agents (as in :func:`outcome`) makes XLA recompute the candidate pass for every agent,
    and this test runs every round."""
    first, best, second, best2 = candidates(s, r)
    cost_first, cost_second = r.cost(s, first), r.cost(s, second)
    allowed_first, allowed_second = r.allowed(s, first), r.allowed(s, second)
    out = jnp.zeros(s.t.shape, bool)
    for j in range(s.arm.shape[0]):
      at = first == j
      t_eta = jnp.where(at, best2, best)
      mine = s.alpha[j] + jnp.where(at, cost_second, cost_first)
      out |= (r.tries[j] & (t_eta > 0) & (mine < t_eta)
              & jnp.where(at, allowed_second, allowed_first))
    return out

  def start_ptr(r: Rules):
    return jnp.int32(r.tries.shape[0] if r.reverse else -1)

  def takeovers(s: TPGState, r: Rules) -> TPGState:
    """The triers' attempts one after another, each on the state the earlier ones left.
    Failed attempts change nothing, so the loop runs once per success (plus one): it applies
    the first success in order and goes on from there; the target is marked taken over.
    Batch-polymorphic: each pass applies every run's next success."""
    n_agents = s.arm.shape[0]
    idx = _lead(n_agents, s.t.ndim)

    def body(c):
      s, ptr, _ = c
      ok, target = outcome(s, r, ptr)
      j = (jnp.max(jnp.where(ok, idx, -1), axis=0) if r.reverse
           else jnp.min(jnp.where(ok, idx, n_agents), axis=0))
      any_ok = jnp.any(ok, axis=0)
      j = jnp.clip(j, 0, n_agents - 1)
      tgt = _at(target, j)
      is_j, is_tgt = (idx == j) & any_ok, (idx == tgt) & any_ok
      s = s.replace(arm=jnp.where(is_j, _at(s.arm, tgt), s.arm),
                    slot=jnp.where(is_j, _at(s.slot, tgt), s.slot),
                    delivered=s.delivered & ~is_j, attempts=jnp.where(is_j, 0, s.attempts),
                    succ=jnp.where(is_j, 0, s.succ), taken=s.taken | is_tgt)
      return s, jnp.where(any_ok, j, ptr), any_ok

    ptr = jnp.full(s.t.shape, start_ptr(r), jnp.int32)
    s, _, _ = jax.lax.while_loop(lambda c: jnp.any(c[2]), body,
                                 (s, ptr, jnp.ones(s.t.shape, bool)))
    return s

  def phase1_picks(s: TPGState):
    """Phase 1, in agent order: an agent that is idle or whose arm is done (and not taken
    over) gets the highest unassigned arm; the needers left over try takeovers. Returns the
    state after the picks, whether any pick happened, and the takeover rules.
    Batch-polymorphic."""
    b = s.batch
    k, nb = s.unassigned.shape[0], s.t.ndim
    arm_safe = jnp.maximum(s.arm, 0)
    needs = ~s.taken & ((s.arm < 0) | _at(s.done, arm_safe) | (_at(b.pull_count, arm_safe) >= b.m))
    rank = jnp.cumsum(needs.astype(jnp.int32), axis=0) - 1
    unassigned = s.unassigned.astype(jnp.int32)
    n_un = jnp.sum(unassigned, axis=0)
    # the r-th needer (in agent order) gets the r-th highest unassigned arm
    arm_rank = n_un - jnp.cumsum(unassigned, axis=0)
    hit = s.unassigned[None] & (arm_rank[None] == rank[:, None])
    picked = needs & (rank < n_un)
    new_arm = jnp.max(jnp.where(hit, _lead(k, nb)[None], -1), axis=1)
    n_picked = jnp.sum(picked.astype(jnp.int32), axis=0)
    s = s.replace(arm=jnp.where(picked, new_arm, s.arm).astype(jnp.int32),
                  delivered=s.delivered & ~picked, attempts=jnp.where(picked, 0, s.attempts),
                  succ=jnp.where(picked, 0, s.succ),
                  unassigned=s.unassigned & (arm_rank >= n_picked))

    def eta(s):
      pulls = _at(b.pull_count, jnp.maximum(s.arm, 0))
      return jnp.where(s.delivered, jnp.maximum(0, b.m - s.succ),
                       jnp.maximum(0, s.alpha + (b.m - pulls) - s.attempts))

    def eligible(s):
      arm_safe = jnp.maximum(s.arm, 0)
      e = ~s.taken & (s.arm >= 0) & ~_at(s.done, arm_safe)
      if guarded:
        e &= ~(s.delivered & (_at(b.pull_count, arm_safe) < b.m))
      return e

    rules = Rules(tries=needs & ~picked, reverse=False, eta=eta, eligible=eligible,
                  cost=lambda s, tgt: b.m,
                  allowed=lambda s, tgt: jnp.ones(tgt.shape, bool))
    return s, n_picked > 0, rules

  def phase2_rules(s: TPGState) -> Rules:
    """Phase 2, from the last agent to the first: an agent (not taken over) with no chunk or
    a finished one tries a takeover. Batch-polymorphic."""
    b = s.batch
    sl_safe = jnp.maximum(s.slot, 0)
    open_chunk = ((s.slot >= 0) & _at(s.chunk_active, sl_safe) & (_at(s.chunk_count, sl_safe) < s.need)
                  & (_at(b.pull_count, jnp.maximum(s.arm, 0)) < b.m))
    # TPG: an agent on a random arm (no chunk) is not done; guarded TPG: it is.
    chunk_done = ~open_chunk if guarded else ((s.slot >= 0) & ~open_chunk)

    def eta(s):
      pulls = _at(b.pull_count, jnp.maximum(s.arm, 0))
      return jnp.where(_at(s.chunk_count, jnp.maximum(s.slot, 0)) >= s.need, 0,
                       jnp.where(s.delivered, jnp.maximum(0, s.need - s.succ),
                                 jnp.maximum(0, s.alpha + (s.need - pulls) - s.attempts)))

    def eligible(s):
      e = (~s.taken & (s.arm >= 0) & (s.slot >= 0) & _at(s.chunk_active, jnp.maximum(s.slot, 0)))
      if guarded:
        e &= ~(s.delivered & (_at(b.pull_count, jnp.maximum(s.arm, 0)) < b.m))
      return e

    def cost(s, tgt):
      return s.need - _at(b.pull_count, jnp.maximum(_at(s.arm, tgt), 0))

    def allowed(s, tgt):
      return ~_at(s.done, jnp.maximum(_at(s.arm, tgt), 0)) if guarded else jnp.ones(tgt.shape, bool)

    return Rules(tries=~s.taken & ((s.arm < 0) | chunk_done), reverse=True, eta=eta,
                 eligible=eligible, cost=cost, allowed=allowed)

  def in_phase(phase: int, fn: Callable) -> Callable:
    """``fn`` on the batch when some run is in ``phase``, else the state unchanged (or no
    flag): with K <= M every batch skips phase 1, and a batch of runs often has no run in
    one of the phases."""
    def wrapped(s, default):
      return jax.lax.cond(jnp.any(s.phase == phase), fn, lambda s: default(s), s)
    return wrapped

  def has_phase1(s: TPGState) -> bool:
    """Whether phase 1 can happen (static): a batch skips it when at most M arms are active,
    so never when K <= M."""
    return s.unassigned.shape[0] > s.arm.shape[0]

  def plan_changes(s: TPGState) -> jax.Array:
    """Whether the plan of the next round changes anything: a pick, or a first takeover."""
    def phase1(s):
      s1, picked, rules1 = phase1_picks(s)
      return picked | any_takeover(s1, rules1)

    phase2 = lambda s: any_takeover(s, phase2_rules(s))
    no = lambda s: jnp.zeros(s.t.shape, bool)
    if not has_phase1(s):
      return in_phase(2, phase2)(s, no)
    return jnp.where(s.phase == 1, in_phase(1, phase1)(s, no), in_phase(2, phase2)(s, no))

  def start_phase2(s: TPGState) -> TPGState:
    b = s.batch
    n_agents, k, nb = s.arm.shape[0], b.active.shape[0], s.t.ndim
    unf = b.active & (b.pull_count < b.m)
    n_unf = jnp.sum(unf.astype(jnp.int32), axis=0)
    per_arm = jnp.maximum(1, n_agents // jnp.maximum(n_unf, 1))
    need = (b.m + per_arm - 1) // per_arm
    slots = _lead(n_agents, nb)
    used = slots < n_unf * per_arm
    rank = jnp.cumsum(unf.astype(jnp.int32), axis=0) - 1
    # chunk s belongs to the (s // per_arm)-th unfinished arm
    owner = unf[None] & (rank[None] == (slots // per_arm)[:, None])
    chunk_arm = jnp.where(used, jnp.max(jnp.where(owner, _lead(k, nb)[None], -1), axis=1), -1)
    u = algo_uniforms(s.key, s.t, k, n_agents)
    rand_arm = choice(unf, u[:n_agents, 0])
    zeros = jnp.zeros_like(s.attempts)
    no = jnp.zeros_like(s.taken)
    return s.replace(phase=jnp.full_like(s.phase, 2), need=need.astype(jnp.int32),
                     chunk_arm=chunk_arm.astype(jnp.int32), chunk_count=zeros,
                     chunk_active=used, arm=jnp.where(used, chunk_arm, rand_arm).astype(jnp.int32),
                     slot=jnp.where(used, slots, -1).astype(jnp.int32),
                     taken=no, delivered=no, attempts=zeros, succ=zeros)

  def start_batch(s: TPGState) -> TPGState:
    b = s.batch
    n_agents = s.arm.shape[0]
    n_active = jnp.sum(b.active.astype(jnp.int32), axis=0)
    zeros, no, none = jnp.zeros_like(s.attempts), jnp.zeros_like(s.taken), jnp.full_like(s.arm, -1)
    return s.replace(phase=jnp.ones_like(s.phase), done=jnp.zeros_like(b.active),
                     done_count=jnp.zeros_like(s.done_count),
                     threshold=jnp.maximum(0, n_active - n_agents).astype(jnp.int32),
                     unassigned=b.active, arm=none, taken=no, delivered=no, attempts=zeros,
                     succ=zeros, slot=none)

  def after_phase1(s: TPGState) -> TPGState:
    """Phase 2 when 0 < U <= M active arms are unfinished, else the batch is over (phase 0)."""
    b = s.batch
    n_unf = jnp.sum((b.active & (b.pull_count < b.m)).astype(jnp.int32), axis=0)
    return tree_select((n_unf > 0) & (n_unf <= s.arm.shape[0]), start_phase2(s),
                       s.replace(phase=jnp.zeros_like(s.phase)))

  def open_batch(s: TPGState) -> TPGState:
    """Phase 1 of a new batch, skipped when it has nothing to do (at most M active arms)."""
    s = start_batch(s)
    return tree_select(s.threshold <= 0, after_phase1(s), s)

  def plan(s: TPGState) -> TPGState:
    """Phase 1's picks then takeovers, or phase 2's takeovers (batch-polymorphic)."""
    def phase1(s):
      s1, _, rules1 = phase1_picks(s)
      return takeovers(s1, rules1)

    same = lambda s: s
    phase2 = in_phase(2, lambda s: takeovers(s, phase2_rules(s)))(s, same)
    if not has_phase1(s):
      return phase2
    return tree_select(s.phase == 1, in_phase(1, phase1)(s, same), phase2)

  def open_chunks(s: TPGState) -> jax.Array:
    pulls = _at(s.batch.pull_count, jnp.maximum(s.chunk_arm, 0))
    return jnp.any((s.chunk_arm >= 0) & s.chunk_active & (s.chunk_count < s.need)
                   & (pulls < s.batch.m), axis=0)

  def phase_over(s: TPGState) -> jax.Array:
    """Whether phase 1 reached its threshold or phase 2 has no open chunk (batch-polymorphic)."""
    return (((s.phase == 1) & (s.done_count >= s.threshold))
            | ((s.phase == 2) & ~open_chunks(s)))

  def end_phase(s: TPGState) -> TPGState:
    """Phase 2 after phase 1 when it applies, else the batch's end and the next batch
    (batch-polymorphic)."""
    s = tree_select(s.phase == 1, after_phase1(s), s.replace(phase=jnp.zeros_like(s.phase)))
    return tree_select(s.phase == 0, open_batch(s.replace(batch=batch_end(s.batch))), s)

  def init(key, spec: ErasureSpec) -> TPGState:
    if spec.initial_arm is None or jnp.ndim(spec.eps) != 1:
      raise ValueError("tpg needs an ErasureSpec with eps and initial_arm of shape (M,)")
    n_agents = spec.eps.shape[0]
    k = spec.arm_mask.shape[0]
    zeros = jnp.zeros(n_agents, jnp.int32)
    s = TPGState(key=key, t=jnp.int32(0), batch=batch_init(spec),
                 alpha=repetitions(spec.eps, spec.horizon),
                 known=jnp.asarray(spec.initial_arm, jnp.int32), phase=jnp.int32(1),
                 done=jnp.zeros(k, bool), done_count=jnp.int32(0), threshold=jnp.int32(0),
                 unassigned=jnp.zeros(k, bool), arm=zeros - 1, taken=jnp.zeros(n_agents, bool),
                 delivered=jnp.zeros(n_agents, bool), attempts=zeros, succ=zeros, slot=zeros - 1,
                 chunk_arm=zeros - 1, chunk_count=zeros, chunk_active=jnp.zeros(n_agents, bool),
                 need=jnp.int32(1))
    return plan(open_batch(s))

  def act(s: TPGState) -> jax.Array:
    return jnp.where(s.arm >= 0, s.arm, s.known)

  def step(s: TPGState, action, obs) -> TPGState:
    """The round's deliveries and credits (the plan and phase changes are the rare pieces).
    Batch-polymorphic."""
    b = s.batch
    played = jnp.where(obs.ack, action, s.known).astype(jnp.int32)
    has = s.arm >= 0
    budget = s.alpha + jnp.where(s.phase == 1, b.m, s.need)
    attempts = jnp.where(has & ~s.delivered, s.attempts + 1, s.attempts)
    over = has & ~s.delivered & (attempts > budget)
    first = has & ~s.delivered & ~over & obs.ack
    succ = jnp.where(first, 1, jnp.where(has & s.delivered & obs.ack, s.succ + 1, s.succ))
    ra, sl = s.arm, s.slot  # before a give-up
    s = s.replace(known=played, attempts=attempts, succ=succ, delivered=s.delivered | first,
                  arm=jnp.where(over, -1, s.arm), slot=jnp.where(over, -1, s.slot))

    # every played arm is credited (also an eliminated one, as in the authors' code)
    n_agents, nb_axes = played.shape[0], s.t.ndim
    idx = _lead(n_agents, nb_axes)
    nb, _, before = credit(b, played, obs.reward)
    finished = (b.pull_count < b.m) & (nb.pull_count >= b.m)
    phase1 = s.phase == 1
    # Phase 2: a chunk counts its agents' samples of its arm while it is open; an arm that
    # reaches M_i closes its chunks from the agent that finished it on. Every sample is
    # credited in order, so the counts agents see on an arm rise one by one from its count P
    # at the round's start: the agents from the finisher on are those whose count before
    # their own sample is >= M_i - 1, with P < M_i.
    finished_by = (take(b.pull_count, played) < b.m) & (before >= b.m - 1)
    sl_safe = jnp.maximum(sl, 0)
    counts = ((sl >= 0) & (played == ra) & _at(s.chunk_active, sl_safe) & ~finished_by
              & ~phase1)
    per_slot = sum(((sl_safe[j] == idx) & counts[j]).astype(jnp.int32) for j in range(n_agents))
    chunk_count = jnp.where(s.chunk_active, jnp.minimum(s.chunk_count + per_slot, s.need),
                            s.chunk_count)
    chunk_active = (s.chunk_active & (chunk_count < s.need)
                    & ~(_at(finished, jnp.maximum(s.chunk_arm, 0)) & ~phase1))
    s = s.replace(batch=nb, done=s.done | (finished & phase1),
                  done_count=s.done_count + jnp.where(
                      phase1, jnp.sum(finished.astype(jnp.int32), axis=0), 0),
                  chunk_count=chunk_count, chunk_active=chunk_active)
    return s.replace(t=s.t + 1)

  return batched(init, act, step, [Rare(phase_over, end_phase), Rare(plan_changes, plan)],
                 feedback="tpg")


class StackState(struct.PyTreeNode):
  """SP2-Feedback: per agent a stack of (arm, requests left) entries, by arm (one run shown).

  An agent's stack holds each arm at most once, in ascending arm order (see
  :func:`_stacks`), so it is stored by arm: ``left[m, a]`` requests are left in agent m's
  entry of arm a, and the entry is in the stack while that is positive and arm a is short
  of M_i samples (an arm that reaches M_i leaves every stack).
  """
  key: jax.Array
  t: jax.Array           # () int32, rounds played
  batch: Batch
  alpha: jax.Array       # (M,) int32
  known: jax.Array       # (M,) int32, the arm each agent plays
  left: jax.Array        # (M, K) int32, requests left in each agent's entry of each arm


ORDERS = ("descending", "ascending")


def _stacks(b: Batch, alpha: jax.Array, arm_order: jax.Array | None = None):
  """The offline assignment of ``BatchSP2Erasure._offline_chunk_assignments`` for batch M_i.

  Active arms in index order (or in ``arm_order``, (K,) arms with the active ones
  first) fill agent after agent, whole blocks of alpha_m - 1 + M_i requests while
  an agent's blocks fit in T_i = ceil(M_i n / sum_m M_i / (alpha_m - 1 + M_i))
  rounds; the k' arms left are cut into chunks (max(1, floor(M / 2k')) per arm)
  spread over the first half of the agents (``BatchSP2.schedule`` is the same
  rule). Returns (entry_arm, entry_left) (M, K), entries in the order assigned.
  """
  n_agents, k = alpha.shape[0], b.active.shape[0]
  m = b.m
  n = jnp.sum(b.active.astype(jnp.int32))
  if arm_order is None:
    rank = jnp.cumsum(b.active.astype(jnp.int32)) - 1
    arm_at = lambda r: jnp.max(jnp.where(b.active & (rank == r), jnp.arange(k), -1))
  else:
    arm_at = lambda r: arm_order[jnp.clip(r, 0, k - 1)]
  mf = m.astype(jnp.float32)
  block = alpha - 1 + m
  t_i = jnp.ceil(mf * n / jnp.sum(mf / block.astype(jnp.float32))).astype(jnp.int32)
  fits = t_i // block
  start = jnp.minimum(jnp.cumsum(fits) - fits, n)
  count = jnp.minimum(fits, n - start)
  pos = jnp.arange(k)[None, :]
  whole = pos < count[:, None]
  arms = jax.vmap(arm_at)(jnp.clip(start[:, None] + pos, 0, k - 1).reshape(-1)).reshape(n_agents, k)
  entry_arm = jnp.where(whole, arms, -1)
  entry_left = jnp.where(whole, block[:, None], 0)
  used = jnp.sum(count)
  k_hat = n - used
  per_arm = jnp.maximum(1, n_agents // jnp.maximum(2 * k_hat, 1))
  chunk = (m + per_arm - 1) // per_arm
  half = max(1, n_agents // 2)
  per_agent = (k_hat * per_arm + half - 1) // half

  def push(c):
    entry_arm, entry_left, length, r, eff, agent, chk = c
    chks = jnp.minimum(per_agent - chk, per_arm)
    pulls = jnp.minimum(m - eff, chks * chunk)
    a = arm_at(r)
    entry_arm = entry_arm.at[agent, length[agent]].set(a, mode="drop")
    entry_left = entry_left.at[agent, length[agent]].set(alpha[agent] - 1 + pulls, mode="drop")
    length = length.at[agent].add(1)
    eff = eff + pulls
    chk = chk + chks
    agent, chk = jnp.where(chk >= per_agent, agent + 1, agent), jnp.where(chk >= per_agent, 0, chk)
    r, eff = jnp.where(eff >= m, r + 1, r), jnp.where(eff >= m, 0, eff)
    return entry_arm, entry_left, length, r, eff, agent, chk

  def more(c):
    _, _, _, r, _, agent, _ = c
    return (r < n) & (agent < n_agents)

  c = (entry_arm, entry_left, count, used, jnp.int32(0), jnp.int32(0), jnp.int32(0))
  entry_arm, entry_left, *_ = jax.lax.while_loop(more, push, c)
  return entry_arm, entry_left


def _stack_requests(b: Batch, alpha: jax.Array) -> jax.Array:
  """:func:`_stacks` (active arms in index order) by arm, batch-polymorphic: (M, K, *b)
  requests of each agent's entry of each arm (0: no entry).

  An agent's stack holds each arm at most once (every push of the chunk rule moves on to the
  next agent or the next arm), so the entries can be stored by arm. The chunk rule's loop is
  unrolled over its at most K + M pushes, each a few operations per run, and the entries are
  placed in one pass: on CPU that is many times faster than the loop mapped over runs.
  """
  n_agents, k = alpha.shape[0], b.active.shape[0]
  m = b.m
  act = b.active.astype(jnp.int32)
  n = jnp.sum(act, axis=0)
  rank = jnp.where(b.active, jnp.cumsum(act, axis=0) - 1, -1)  # (K, *b), -1 when inactive
  mf = m.astype(jnp.float32)
  block = alpha - 1 + m
  t_i = jnp.ceil(mf * n / jnp.sum(mf / block.astype(jnp.float32), axis=0)).astype(jnp.int32)
  fits = t_i // block
  start = jnp.minimum(jnp.cumsum(fits, axis=0) - fits, n)
  count = jnp.minimum(fits, n - start)
  in_block = (rank[None] >= start[:, None]) & (rank[None] < (start + count)[:, None])
  left = jnp.where(in_block, block[:, None], 0)
  used = jnp.sum(count, axis=0)
  k_hat = n - used
  per_arm = jnp.maximum(1, n_agents // jnp.maximum(2 * k_hat, 1))
  chunk = (m + per_arm - 1) // per_arm
  half = max(1, n_agents // 2)
  per_agent = (k_hat * per_arm + half - 1) // half
  r, eff = used, jnp.zeros_like(used)
  agent, chk = jnp.zeros_like(used), jnp.zeros_like(used)
  pushes = []
  for _ in range(k + n_agents):
    live = (r < n) & (agent < n_agents)
    chks = jnp.minimum(per_agent - chk, per_arm)
    pulls = jnp.minimum(m - eff, chks * chunk)
    pushes.append((live, agent, r, take(alpha, agent, unroll=64) - 1 + pulls))
    eff = jnp.where(live, eff + pulls, eff)
    chk = jnp.where(live, chk + chks, chk)
    full = live & (chk >= per_agent)
    agent, chk = jnp.where(full, agent + 1, agent), jnp.where(full, 0, chk)
    done = live & (eff >= m)
    r, eff = jnp.where(done, r + 1, r), jnp.where(done, 0, eff)
  # one scatter of every push into the (agent, arm) table of its run
  batch = m.shape
  flat = lambda x: jnp.reshape(x, (-1,))
  arm_of = lambda r: sum(jnp.where(rank[a] == r, a, 0) for a in range(k))
  cell = jnp.stack([flat(jnp.where(live, agent * k + arm_of(r), n_agents * k))
                    for live, agent, r, _ in pushes])
  run = jnp.broadcast_to(jnp.arange(cell.shape[1]), cell.shape)
  values = jnp.stack([flat(v) for *_, v in pushes])
  table = jnp.zeros((n_agents * k, cell.shape[1]), left.dtype).at[cell, run].add(
      values, mode="drop")
  return left + table.reshape((n_agents, k) + batch)


def sp2_feedback(*, order: str = "descending") -> Algorithm:
  """SP2-Feedback (the authors' ``BatchSP2Erasure``): stacks of assigned blocks, with feedback.

  At each batch start every agent gets a stack of (arm, requests) entries
  (:func:`_stacks`). Each round an agent requests the arm of its top entry; an
  agent with an empty stack requests a random active arm still short of M_i
  samples (its last arm if none is). When the arm an agent played is its top
  entry's, the entry's count drops by one and the entry is popped at zero. An
  arm that reaches M_i samples leaves every stack. The batch ends when every
  active arm has M_i samples.

  ``order``: the authors build each stack reversed (``deque(stack[::-1])``), so an
  agent requests its arms from the highest index down ("descending", the
  default); "ascending" pops the same stacks from the other end.
  """
  if order not in ORDERS:
    raise ValueError(f"order must be one of {ORDERS}; got {order!r}")

  def top(s: StackState):
    """(each agent's top arm, whether it has one), (M, *b): its highest arm with an entry
    ("descending"), or its lowest ("ascending")."""
    b = s.batch
    k = s.left.shape[1]
    arm = _lead(k, s.t.ndim)[None]
    valid = (s.left > 0) & (b.pull_count < b.m)[None]
    if order == "descending":
      p = jnp.max(jnp.where(valid, arm, -1), axis=1)
      return p, p >= 0
    p = jnp.min(jnp.where(valid, arm, k), axis=1)
    return p, p < k

  def open_batch(s: StackState) -> StackState:
    return s.replace(left=_stack_requests(s.batch, s.alpha))

  def fallback(s: StackState) -> jax.Array:
    """The requests of agents with an empty stack this round: a random active arm short of
    M_i samples, ``choice(still, u[m, 0])`` (u = ``algo_uniforms`` of the round), or the
    agent's own arm when none is."""
    b = s.batch
    n_agents = s.left.shape[0]
    still = b.active & (b.pull_count < b.m)
    u = algo_uniform_at(s.key, s.t, N_ALGO_FIELDS * jnp.arange(n_agents))
    return jnp.where(jnp.any(still, axis=0), choice(still, u), s.known).astype(jnp.int32)

  def batch_over(s: StackState) -> jax.Array:
    return ~jnp.any(s.batch.active & (s.batch.pull_count < s.batch.m), axis=0)

  def next_batch(s: StackState) -> StackState:
    return open_batch(s.replace(batch=batch_end(s.batch, running_mean=True)))

  def init(key, spec: ErasureSpec) -> StackState:
    if spec.initial_arm is None or jnp.ndim(spec.eps) != 1:
      raise ValueError("sp2_fb needs an ErasureSpec with eps and initial_arm of shape (M,)")
    n_agents, k = spec.eps.shape[0], spec.arm_mask.shape[0]
    s = StackState(key=key, t=jnp.int32(0), batch=batch_init(spec),
                   alpha=repetitions(spec.eps, spec.horizon),
                   known=jnp.asarray(spec.initial_arm, jnp.int32),
                   left=jnp.zeros((n_agents, k), jnp.int32))
    return open_batch(s)

  def act(s: StackState) -> jax.Array:
    arm, has = top(s)
    return jnp.where(has, arm, fallback(s)).astype(jnp.int32)

  def step(s: StackState, action, obs) -> StackState:
    """The round's stack pops and credits (batch ends are the rare piece)."""
    played = jnp.where(obs.ack, action, s.known).astype(jnp.int32)
    arm, has = top(s)
    # the top entry loses a request when its arm was played (it leaves the stack at zero)
    k = s.left.shape[1]
    hit = (has & (played == arm))[:, None] & (played[:, None] == _lead(k, s.t.ndim)[None])
    b = s.batch
    nb, _, _ = credit(b, played, obs.reward, take(b.active, played))
    return s.replace(t=s.t + 1, known=played, batch=nb, left=s.left - hit.astype(jnp.int32))

  return batched(init, act, step, [Rare(batch_over, next_batch)],
                 feedback="sp2_fb")


class PullState(struct.PyTreeNode):
  """RRR and SGreedy (one run): the batch and each agent's played arm."""
  key: jax.Array
  t: jax.Array      # () int32, rounds played
  batch: Batch
  known: jax.Array  # (M,) int32, the arm each agent plays (known through feedback)


def _pull_scheduler(name: str, propose, running_mean: bool) -> Algorithm:
  """A scheduler that picks each round's requests from the batch counts (``propose``), credits
  played arms and ends the batch when every active arm has M_i samples."""

  def init(key, spec: ErasureSpec) -> PullState:
    if spec.initial_arm is None or jnp.ndim(spec.eps) != 1:
      raise ValueError(f"{name} needs an ErasureSpec with eps and initial_arm of shape (M,)")
    return PullState(key=key, t=jnp.int32(0), batch=batch_init(spec),
                     known=jnp.asarray(spec.initial_arm, jnp.int32))

  def act(key, s: PullState) -> jax.Array:
    del key
    k, n_agents = s.batch.active.shape[0], s.known.shape[0]
    return propose(s, algo_uniforms(s.key, s.t, k, n_agents)).astype(jnp.int32)

  def update(s: PullState, action, obs) -> PullState:
    if obs.ack is None:
      raise ValueError(f"{name} needs feedback: run it on an environment with feedback=True")
    played = jnp.where(obs.ack, action, s.known).astype(jnp.int32)
    b, _, _ = credit(s.batch, played, obs.reward, s.batch.active[played])
    over = ~jnp.any(b.active & (b.pull_count < b.m))
    b = jax.lax.cond(over, lambda b: batch_end(b, running_mean=running_mean), lambda b: b, b)
    return s.replace(t=s.t + 1, batch=b, known=played)

  return Algorithm(init, act, update)


def rrr() -> Algorithm:
  """Random round-robin (the authors' ``BatchSP2RRR``): each agent requests a random arm
  still short of M_i samples, ``choice(still, u[m, 0])`` (its last arm when none is)."""

  def propose(s: PullState, u):
    b = s.batch
    still = b.active & (b.pull_count < b.m)
    rand = choice(still, u[:s.known.shape[0], 0])
    return jnp.where(jnp.any(still), rand, s.known)

  return _pull_scheduler("rrr", propose, running_mean=True)


def sgreedy() -> Algorithm:
  """Greedy spreading (the authors' ``BatchSGreedy``): the least-pulled arms, over the agents.

  With more arms short of M_i than agents: the M with the fewest batch samples, ties
  broken by the smaller ``u[arm, 1]`` (the authors break ties by a random
  permutation and ``np.argpartition``: the same law of the chosen set up to how
  argpartition orders ties), listed by (count, u); otherwise those arms in index
  order. Agent ``perm[i]``, ``perm = argsort(u[:M, 2])``, requests
  ``chosen[i % len(chosen)]``, so arms are replicated over agents when few are left.
  """

  def propose(s: PullState, u):
    b = s.batch
    k, n_agents = b.active.shape[0], s.known.shape[0]
    need = b.active & (b.pull_count < b.m)
    n = jnp.sum(need.astype(jnp.int32))
    fewest = jnp.lexsort((u[:k, 1], jnp.where(need, b.pull_count, jnp.iinfo(jnp.int32).max)))
    ascending = jnp.lexsort((jnp.arange(k), ~need))
    chosen = jnp.where(n > n_agents, fewest, ascending)
    n_chosen = jnp.maximum(jnp.minimum(n, n_agents), 1)
    position = jnp.argsort(jnp.argsort(u[:n_agents, 2], stable=True), stable=True)
    return chosen[position % n_chosen]

  return _pull_scheduler("sgreedy", propose, running_mean=False)


class ScheduleState(struct.PyTreeNode):
  """SP2 and Vanilla SAE (one run): an offline schedule per batch, no feedback."""
  key: jax.Array
  t: jax.Array          # () int32, rounds played
  batch: Batch
  alpha: jax.Array      # (M,) int32, repetitions per channel (1 for Vanilla SAE)
  assigned: jax.Array   # (M, K) int32, requests of each arm in each agent's schedule
  start: jax.Array      # () int32, the batch's first round
  length: jax.Array     # () int32, the batch's rounds (the longest agent schedule)
  reps: jax.Array       # (M,) int32, rounds into the current arm (SP2's discarding)
  delta: jax.Array      # () float32, Vanilla SAE's gap scale (halved each batch)


def _scheduled(s: ScheduleState, t: jax.Array) -> jax.Array:
  """Each agent's request at round ``t`` of the batch: its arms in index order, each for its
  assigned count, then a random active arm per round (``choice(active, u[m, 0])``)."""
  r = t - s.start
  ends = jnp.cumsum(s.assigned, axis=1)
  k, n_agents = s.batch.active.shape[0], s.assigned.shape[0]
  sched = jnp.argmax(ends > r, axis=1)
  u = algo_uniforms(s.key, t, k, n_agents)[:n_agents, 0]
  rand = choice(s.batch.active, u)
  return jnp.where(ends[:, -1] > r, sched, rand).astype(jnp.int32)


def _schedule_init(name: str, key, spec: BanditSpec, alpha, delta: float) -> ScheduleState:
  """A :class:`ScheduleState` before its first batch is opened."""
  if jnp.ndim(spec.eps) != 1:
    raise ValueError(f"{name} needs one erasure probability per agent: eps of shape (M,)")
  n_agents, k = spec.eps.shape[0], spec.arm_mask.shape[0]
  return ScheduleState(key=key, t=jnp.int32(0), batch=batch_init(spec), alpha=alpha,
                       assigned=jnp.zeros((n_agents, k), jnp.int32), start=jnp.int32(0),
                       length=jnp.int32(0), reps=jnp.zeros(n_agents, jnp.int32),
                       delta=jnp.float32(delta))


def _act_scheduled(key, s: ScheduleState) -> jax.Array:
  del key
  return _scheduled(s, s.t)


def sp2() -> Algorithm:
  """SP2, scheduled batch pulls without feedback (the authors' ``BatchSP2``).

  At each batch start the active arms are shuffled (ordered by ``u[arm, 1]`` of
  the batch's first round) and assigned to agents by the rule of :func:`_stacks`
  (whole blocks of alpha_m - 1 + M_i requests, leftover arms in chunks); each
  agent then requests its arms in index order, each for its block, and a random
  active arm per round once its schedule is done. The batch lasts as long as the
  longest schedule. A reward is credited to the requested arm, up to M_i per arm,
  except for the first alpha_m - 1 rounds of each run of equal requests.
  """

  def open_batch(s: ScheduleState) -> ScheduleState:
    b = s.batch
    k, n_agents = b.active.shape[0], s.alpha.shape[0]
    u = algo_uniforms(s.key, s.t, k, n_agents)
    order = jnp.lexsort((u[:k, 1], ~b.active)).astype(jnp.int32)
    arm, left = _stacks(b, s.alpha, order)
    rows = jnp.broadcast_to(jnp.arange(n_agents)[:, None], arm.shape)
    assigned = jnp.zeros((n_agents, k), jnp.int32).at[rows, jnp.maximum(arm, 0)].max(
        jnp.where(arm >= 0, left, 0))
    return s.replace(assigned=assigned, start=s.t, length=jnp.max(jnp.sum(assigned, axis=1)),
                     reps=jnp.zeros(n_agents, jnp.int32))

  def init(key, spec: BanditSpec) -> ScheduleState:
    return open_batch(_schedule_init("sp2", key, spec, repetitions(spec.eps, spec.horizon), 1.0))

  def update(s: ScheduleState, action, obs) -> ScheduleState:
    lingering = s.reps < s.alpha - 1
    s = s.replace(batch=credit(s.batch, action, obs.reward, ~lingering)[0])
    last = s.t + 1 - s.start >= s.length
    changes = _scheduled(s, s.t + 1) != action
    reps = jnp.where(lingering, s.reps + 1, s.reps)
    s = s.replace(t=s.t + 1, reps=jnp.where(changes & ~last, 0, reps))
    return jax.lax.cond(
        last, lambda s: open_batch(s.replace(batch=batch_end(s.batch, running_mean=True))),
        lambda s: s, s)

  return Algorithm(init, _act_scheduled, update)


def vanilla_sae() -> Algorithm:
  """Vanilla multi-agent SAE without repetition (the authors' ``Vanilla_SAE_ma``).

  Batch i halves the gap scale, delta_i = 2^-i, and needs n_i = ceil(2 ln(T M
  delta_i^2) / delta_i^2) samples of every active arm: the active arms' n_i
  requests each, in index order, are poured into M equal consecutive quotas of
  ceil(n n_i / M) rounds, one per agent; an agent past its quota requests a random
  active arm per round. Every reward is credited to the requested arm up to n_i
  per arm (erasures are ignored). At the batch end q_a = (q_a N + S_a) / (N + n_i)
  and arm j is eliminated when max_a q_a - q_j > sqrt(2 ln(delta_i^2 T M) / n_i).
  The authors' class writes the replayed arm of an erased agent into its
  schedule row (a numpy view) and so credits the arm actually played, which a
  learner without feedback cannot know; here the requested arm is credited.
  """

  def open_batch(s: ScheduleState) -> ScheduleState:
    b = s.batch
    n_agents = s.alpha.shape[0]
    delta = s.delta * 0.5
    n_i = jnp.ceil(2.0 * (b.log_term + 2.0 * jnp.log(delta)) / delta ** 2).astype(jnp.int32)
    n_act = jnp.sum(b.active.astype(jnp.int32))
    quota = (n_act * n_i + n_agents - 1) // n_agents
    start = (jnp.cumsum(b.active.astype(jnp.int32)) - 1) * n_i  # arm a's requests: [start, +n_i)
    lo = jnp.arange(n_agents)[:, None] * quota
    overlap = jnp.minimum(lo + quota, start[None, :] + n_i) - jnp.maximum(lo, start[None, :])
    assigned = jnp.where(b.active[None, :], jnp.maximum(overlap, 0), 0).astype(jnp.int32)
    return s.replace(batch=b.replace(m=n_i), delta=delta, assigned=assigned, start=s.t,
                     length=jnp.max(jnp.sum(assigned, axis=1)))

  def end(s: ScheduleState) -> ScheduleState:
    b = s.batch
    n = b.counts  # the sum of the finished batches' n_i (the same for every active arm)
    nf = b.m.astype(jnp.float32)
    qhat = jnp.where(b.active, (b.qhat * n + b.pull_sums) / (n + nf), b.qhat)
    best = jnp.max(jnp.where(b.active, qhat, -jnp.inf))
    radius = jnp.sqrt(2.0 * (b.log_term + 2.0 * jnp.log(s.delta)) / nf)
    active = b.active & ~(best - qhat > radius)
    b = b.replace(active=active, qhat=qhat, counts=jnp.where(b.active, n + nf, b.counts),
                  pull_count=jnp.zeros_like(b.pull_count), pull_sums=jnp.zeros_like(b.pull_sums))
    return open_batch(s.replace(batch=b))

  def init(key, spec: BanditSpec) -> ScheduleState:
    ones = jnp.ones(jnp.shape(spec.eps), jnp.int32)  # no repetition
    return open_batch(_schedule_init("vanilla_sae", key, spec, ones, 2.0))

  def update(s: ScheduleState, action, obs) -> ScheduleState:
    s = s.replace(t=s.t + 1, batch=credit(s.batch, action, obs.reward)[0])
    return jax.lax.cond(s.t - s.start >= s.length, end, lambda s: s, s)

  return Algorithm(init, _act_scheduled, update)


class LingerState(struct.PyTreeNode):
  """Multi-agent L-SAE in the authors' two forms (one run); the next round is planned ahead."""
  key: jax.Array
  t: jax.Array          # () int32, rounds played
  batch: Batch
  alpha: jax.Array      # (M,) int32
  to_assign: jax.Array  # (K,) bool, arms not yet given out (given lowest first)
  assign: jax.Array     # (M,) int32, each agent's arm; -1 before the first, K for none (vertical)
  reps: jax.Array       # (M,) int32
  request: jax.Array    # (M,) int32, the planned requests of round t
  credited: jax.Array   # (M,) bool, whether round t's reward of each agent is credited


def lsae_multi(*, vertical: bool) -> Algorithm:
  """Multi-agent Lingering SAE: ``vertical`` (``LSAE_ma_ver``) or horizontal (``LSAE_ma_hor``).

  Batch i needs M_i = 4^i samples of every active arm. Before every round, agent
  after agent: horizontal, an agent takes the lowest arm still to be finished and
  moves on when its arm has M_i samples (all agents work on the same arm);
  vertical, an agent takes the lowest arm not yet given out, keeps it until it has
  M_i samples, and requests a random active arm (``choice(active, u[m, 0])``) when
  none is left. The first alpha_m - 1 rounds of each arm an agent works on are
  discarded, the others credited to the requested arm (counted as the agent is
  planned, as in the authors' loop). The batch ends when every active arm has M_i
  samples (vertical) or every arm was finished (horizontal), and eliminates with
  radius 2 sqrt(ln(K T M) / (2 M_i)). No feedback is used.
  """

  def plan(s: LingerState) -> LingerState:
    b = s.batch
    k, n_agents = b.active.shape[0], s.alpha.shape[0]
    u = algo_uniforms(s.key, s.t, k, n_agents)
    idx = jnp.arange(k)

    def agent(j, c):
      to_assign, assign, reps, count, request, credited = c
      a_j = assign[j]
      lowest = jnp.min(jnp.where(to_assign, idx, k))
      any_left = lowest < k
      finished = (a_j >= 0) & (a_j < k) & (count[jnp.clip(a_j, 0, k - 1)] >= b.m)
      if vertical:
        fresh = a_j == -1
        new = jnp.where(fresh, jnp.where(any_left, lowest, k),
                        jnp.where(finished & any_left, lowest, a_j))
        reset = (a_j == k) | finished
        to_assign = to_assign & ~((fresh | finished) & any_left & (idx == lowest))
        req = jnp.where(new < k, new, choice(b.active, u[j, 0]))
      else:
        to_assign = to_assign & ~(finished & (idx == a_j))
        lowest = jnp.min(jnp.where(to_assign, idx, k))
        new = jnp.where(a_j == -1, lowest, jnp.where(finished & (lowest < k), lowest, a_j))
        reset = finished
        req = new
      reps_j = jnp.where(reset, 0, reps[j])
      linger = reps_j < s.alpha[j] - 1
      count = count.at[req].add((~linger).astype(jnp.int32))
      return (to_assign, assign.at[j].set(new), reps.at[j].set(jnp.where(linger, reps_j + 1, reps_j)),
              count, request.at[j].set(req), credited.at[j].set(~linger))

    c = (s.to_assign, s.assign, s.reps, b.pull_count, s.request, s.credited)
    to_assign, assign, reps, count, request, credited = jax.lax.fori_loop(0, n_agents, agent, c)
    return s.replace(to_assign=to_assign, assign=assign, reps=reps,
                     batch=b.replace(pull_count=count), request=request, credited=credited)

  def open_batch(s: LingerState) -> LingerState:
    n_agents = s.alpha.shape[0]
    return s.replace(to_assign=s.batch.active, assign=jnp.full(n_agents, -1, jnp.int32),
                     reps=jnp.zeros(n_agents, jnp.int32))

  def running(s: LingerState) -> jax.Array:
    b = s.batch
    if vertical:
      return jnp.any(b.active & (b.pull_count < b.m))
    return jnp.any(s.to_assign)

  def init(key, spec: BanditSpec) -> LingerState:
    if jnp.ndim(spec.eps) != 1:
      raise ValueError("lsae_ver/lsae_hor need one erasure probability per agent: eps (M,)")
    n_agents = spec.eps.shape[0]
    b = batch_init(spec)
    b = b.replace(m=jnp.int32(4), log_term=jnp.log(spec.n_arms.astype(jnp.float32)
                                                     * spec.horizon.astype(jnp.float32) * n_agents))
    s = LingerState(key=key, t=jnp.int32(0), batch=b, alpha=repetitions(spec.eps, spec.horizon),
                    to_assign=b.active, assign=jnp.full(n_agents, -1, jnp.int32),
                    reps=jnp.zeros(n_agents, jnp.int32), request=jnp.zeros(n_agents, jnp.int32),
                    credited=jnp.zeros(n_agents, bool))
    return plan(s)

  def act(key, s: LingerState) -> jax.Array:
    del key
    return s.request

  def update(s: LingerState, action, obs) -> LingerState:
    b = s.batch

    def add(j, sums):
      return sums.at[s.request[j]].add(jnp.where(s.credited[j], obs.reward[j], 0.0))

    sums = jax.lax.fori_loop(0, action.shape[0], add, b.pull_sums)
    s = s.replace(t=s.t + 1, batch=b.replace(pull_sums=sums))
    s = jax.lax.cond(running(s), lambda s: s,
                     lambda s: open_batch(s.replace(batch=batch_end(s.batch, running_mean=True))),
                     s)
    return plan(s)

  return Algorithm(init, act, update)
