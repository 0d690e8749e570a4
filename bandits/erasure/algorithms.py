"""Algorithms for bandits over arm-erasure channels (arXiv 2406.18072, 2504.20894).

Papers: Hanna, Yang & Fragouli, arXiv 2406.18072 (no feedback: the repetition
wrapper and Lingering SAE) and arXiv 2504.20894 (with feedback). Their full
texts were not at hand; the algorithms below follow the authors' public code
(github mervekarakas/mamab_erasures, read at b3e9251) with one agent, and each
docstring says which of its classes and constants it reproduces. Where the code
and the abstracts leave a choice, the docstring says what we chose.

Registry names (used by configs and results.json headline keys):

=============  ==========================================================
``ucb``        UCB ignoring erasures (credits the requested arm)
``lsae_nolinger``  L-SAE's schedule and radius without lingering: SE ignoring erasures
               (not the authors' ``Vanilla_SAE_ma``: that is ``vanilla_sae``)
``rep_ucb``    repetition wrapper around ``ucb``
``rep_se``     repetition wrapper around ``lsae_nolinger``
``lsae``       Lingering successive arm elimination (no feedback)
``fb_sae``     successive elimination with feedback (send until acknowledged)
``ma_lsae``    multi-agent L-SAE (M agents, one channel eps_m each)
``tpg``        Two-Phase Greedy, multi-agent, feedback (``BatchTPG``)
``tpg_guarded``  TPG that never takes over a delivered arm (``BatchTPGNew``)
``sp2_fb``     SP2-Feedback, multi-agent stacks (``BatchSP2Erasure``)
``sp2``        SP2, scheduled batch pulls without feedback (``BatchSP2``)
``rrr``        random round-robin baseline, feedback (``BatchSP2RRR``)
``sgreedy``    greedy least-pulled baseline, feedback (``BatchSGreedy``)
``lsae_ver``   multi-agent L-SAE, vertical, as the authors' ``LSAE_ma_ver``
``lsae_hor``   multi-agent L-SAE, horizontal (``LSAE_ma_hor``)
``vanilla_sae``  multi-agent SAE without repetition (``Vanilla_SAE_ma``)
=============  ==========================================================

The multi-agent schedulers of the journal work live in
:mod:`bandits.erasure.schedulers`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from bandits.core import (Algorithm, BanditSpec, add_at, first_index, first_true,
                          tree_select)
from bandits.erasure import schedulers
from bandits.erasure.policies import (PhasedState, advance, credit, merge, phase_end, phased_init,
                              repetitions, sae_constants, successive_elimination, ucb)


class RepeatState(struct.PyTreeNode):
  base: object        # the wrapped algorithm's state
  action: jax.Array   # () int32 the arm being repeated
  rep: jax.Array      # () int32 repetitions done of it
  alpha: jax.Array    # () int32 repetitions per decision


def repetition(base: Algorithm) -> Algorithm:
  """The repetition wrapper of arXiv 2406.18072 around any ``base`` algorithm.

  Each arm the base algorithm picks is requested ``alpha`` =
  :func:`repetitions` (eps, T) times in a row, and only the reward of the last
  request is passed to the base algorithm: by then the arm has arrived with
  probability >= 1 - T^-2, so the base sees (almost) an erasure-free bandit
  on T / alpha rounds. (The public code has only the alpha formula; feeding
  the last reward is our reading of the paper's abstract.) With eps = 0,
  alpha = 1 and this is exactly ``base``.
  """

  def init(key, spec: BanditSpec) -> RepeatState:
    zeros = jnp.zeros(spec.horizon.shape, jnp.int32)
    return RepeatState(base=base.init(key, spec), action=zeros, rep=zeros,
                       alpha=repetitions(spec.eps, spec.horizon))

  def act(key, state: RepeatState) -> jax.Array:
    fresh = base.act(key, state.base)
    return jnp.where(state.rep == 0, fresh, state.action).astype(jnp.int32)

  def update(state: RepeatState, action, obs) -> RepeatState:
    last = state.rep + 1 >= state.alpha
    base_state = tree_select(last, base.update(state.base, action, obs), state.base)
    return RepeatState(base=base_state, action=action,
                       rep=jnp.where(last, 0, state.rep + 1), alpha=state.alpha)

  return Algorithm(init, act, update)


def lingering_sae(*, radius_scale: float = 2.0) -> Algorithm:
  """Lingering successive arm elimination (L-SAE), arXiv 2406.18072.

  Phase i = 1, 2, ... needs M_i = 4^i samples of every active arm. Arms are
  taken in index order; each gets one block of alpha - 1 + M_i consecutive
  requests whose first alpha - 1 rewards are discarded (the arm may not have
  arrived yet), alpha = :func:`repetitions` (eps, T). Kept rewards are
  credited to the requested arm. At the end of a phase the running means over
  all phases are updated and arm j is eliminated when max_a qhat_a - qhat_j >
  2 sqrt(ln(K T) / (2 M_i)). Constants as in the authors' ``LSAE_ma_ver``
  with one agent. With eps = 0 this is ``se`` (alpha = 1, nothing discarded).
  """

  def init(key, spec: BanditSpec) -> PhasedState:
    del key
    first, log_term = sae_constants(spec)
    return phased_init(spec, first_phase=first, log_term=log_term,
                       linger=repetitions(spec.eps, spec.horizon) - 1)

  se = successive_elimination(radius_scale=radius_scale)
  return Algorithm(init, se.act, se.update)


def feedback_constants(spec: BanditSpec) -> tuple[jax.Array, jax.Array]:
  """(M_1, log term) of the feedback SAE: M_1 = 4 floor(ceil(2 ln T) / 4), log ln T."""
  log_t = jnp.log(spec.horizon.astype(jnp.float32))
  first = 4 * jnp.floor(jnp.ceil(2.0 * log_t) / 4.0)
  return jnp.maximum(first, 4.0).astype(jnp.int32), log_t


def feedback_sae(*, radius_scale: float = 2.0, order: str = "descending") -> Algorithm:
  """Successive elimination with feedback ("send until acknowledged").

  With feedback the learner knows which arm was played: the requested one
  when acknowledged, else the last one delivered. Each phase, for every active
  arm in index order, the learner requests the arm until it has M_i samples;
  every reward is credited to the arm actually played whenever that arm is
  active and still short of M_i samples, so no round is discarded and no
  alpha is needed. M_1 = 4 floor(ceil(2 ln T)/4), M_{i+1} = 4 M_i, radius
  2 sqrt(ln T / (2 M_i)). This is the single-agent form shared by the
  authors' ``BatchSP2Erasure`` (SP2-Feedback) and ``BatchTPG`` (TPG), which
  make identical decisions with one agent; that it is the algorithm of arXiv
  2504.20894 is our reading (its text was not at hand). The learner knows the
  arm played before any delivery when the spec gives it (``initial_arm``, as
  the authors' runners pass it); else nothing is credited until the first
  acknowledgement. ``order``: "descending" requests the arms from the highest
  index down, as ``BatchSP2Erasure`` does (its request stack is reversed);
  "ascending" from the lowest up. With eps = 0 and "ascending" it is
  ``successive_elimination(constants=feedback_constants)``.
  """
  if order not in ORDERS:
    raise ValueError(f"order must be one of {ORDERS}; got {order!r}")

  # The same schedule and requests as SE with these constants; only the
  # crediting differs (the played arm, known through the acknowledgements).
  base = successive_elimination(radius_scale=radius_scale, constants=feedback_constants)

  def update(state: PhasedState, action, obs) -> PhasedState:
    if obs.ack is None:
      raise ValueError("fb_sae needs feedback: run it on an environment with feedback=True")
    known = jnp.where(obs.ack, action, state.known).astype(jnp.int32)
    idx = jnp.maximum(known, 0)
    # Credits go to the played arm: point the pending credits at it when it
    # changed (about once per block, at the first acknowledgement).
    moved = idx != state.acc_arm
    s = jax.lax.cond(jnp.any(moved), lambda s: tree_select(moved, merge(s, idx), s),
                     lambda s: s, state)
    # An eliminated arm counts as full (acc_base = inf).
    kept = ((known >= 0) & (s.acc_base + s.acc_cnt < s.m)).astype(jnp.float32)
    s = credit(s, kept, obs.reward).replace(pos=s.pos + 1, known=known)
    return advance(s, radius_scale, follow=False)

  def init(key, spec: BanditSpec) -> PhasedState:
    s = base.init(key, spec)
    initial = getattr(spec, "initial_arm", None)
    return s if initial is None else s.replace(known=jnp.asarray(initial, jnp.int32))

  algo = Algorithm(init, base.act, update)
  return reversed_arms(algo) if order == "descending" else algo


ORDERS = ("descending", "ascending")


class Flipped(NamedTuple):
  """State of :func:`reversed_arms`: the wrapped algorithm's state and the run's K."""
  base: object
  k: jax.Array  # () int32 (per run), the number of arms


def reversed_arms(base: Algorithm) -> Algorithm:
  """``base`` run with its arms relabelled a -> K - 1 - a (K the run's number of arms).

  An algorithm that visits arms in index order visits them from the highest down
  under this wrapper; everything else about it is unchanged. Batch-polymorphic
  when ``base`` is.
  """

  def flip(spec: BanditSpec, a):
    return (spec.n_arms - 1 - a).astype(jnp.int32)

  def init(key, spec: BanditSpec) -> Flipped:
    initial = getattr(spec, "initial_arm", None)
    if initial is not None:
      spec = spec.replace(initial_arm=flip(spec, initial))
    return Flipped(base.init(key, spec), spec.n_arms.astype(jnp.int32))

  def act(key, state: Flipped, *context) -> jax.Array:
    return (state.k - 1 - base.act(key, state.base, *context)).astype(jnp.int32)

  def update(state: Flipped, action, obs) -> Flipped:
    return state._replace(base=base.update(state.base, state.k - 1 - action, obs))

  return Algorithm(init, act, update, lambda s: base.export(s.base))


class MultiAgentState(struct.PyTreeNode):
  """Multi-agent L-SAE: the phased state plus one block per agent.

  Shapes per run: (K,) per arm, (M,) per agent; a batch adds trailing axes.
  """
  phased: PhasedState
  assigned: jax.Array   # (K,) bool, arms given to an agent this phase
  agent_arm: jax.Array  # (M,) int32, the arm of each agent's block
  agent_pos: jax.Array  # (M,) int32, rounds into the block
  busy: jax.Array       # (M,) bool, whether the agent is in a block
  linger: jax.Array     # (M,) int32, alpha_m - 1 rounds discarded per block


def multi_agent_lsae(*, radius_scale: float = 2.0) -> Algorithm:
  """Multi-agent Lingering SAE, "vertical" form (the authors' ``LSAE_ma_ver``).

  M agents, agent m behind its own channel eps_m with alpha_m =
  :func:`repetitions` (eps_m, T). Phase i needs M_i = 4^i samples of every
  active arm; each free agent takes the next unassigned active arm (index
  order, lower agents first) for a whole block of alpha_m - 1 discarded +
  M_i kept requests, credited to that arm. When every active arm has been
  assigned and no agent is in a block, the phase ends with L-SAE's rule,
  radius 2 sqrt(ln(K T M) / (2 M_i)), and agents are assigned again at once.
  Agents without a block request the arm with the best mean so far (never
  credited); the authors' code requests a uniformly random active arm there,
  which only costs more regret. With one agent this is :func:`lingering_sae`.
  """

  def init(key, spec: BanditSpec) -> MultiAgentState:
    del key
    if jnp.ndim(spec.eps) != jnp.ndim(spec.horizon) + 1:
      raise ValueError("ma_lsae needs one erasure probability per agent: eps of shape (M,)")
    first, _ = sae_constants(spec)
    n_agents = spec.eps.shape[0]
    t = spec.horizon.astype(jnp.float32)
    log_term = jnp.log(spec.n_arms.astype(jnp.float32) * t * n_agents)
    phased = phased_init(spec, first_phase=first, log_term=log_term, linger=0)
    zeros = jnp.zeros(spec.eps.shape, jnp.int32)
    state = MultiAgentState(phased=phased, assigned=jnp.zeros(spec.arm_mask.shape, bool),
                            agent_arm=zeros, agent_pos=zeros, busy=jnp.zeros(spec.eps.shape, bool),
                            linger=repetitions(spec.eps, spec.horizon) - 1)
    return _assign(state)

  def act(key, state: MultiAgentState) -> jax.Array:
    del key
    s = state.phased
    greedy = first_true(s.active & (s.qhat == jnp.max(jnp.where(s.active, s.qhat, -jnp.inf), 0)))
    return jnp.where(state.busy, state.agent_arm, greedy[None])

  def update(state: MultiAgentState, action, obs) -> MultiAgentState:
    del action  # Credit goes to the block's arm, as requested.
    s = state.phased
    cnt, total = s.cnt, s.total
    kept = state.busy & (state.agent_pos >= state.linger)
    for j in range(state.busy.shape[0]):  # agents hold distinct arms
      credit = kept[j].astype(jnp.float32)
      cnt = add_at(cnt, state.agent_arm[j], credit)
      total = add_at(total, state.agent_arm[j], credit * obs.reward[j])
    pos = jnp.where(state.busy, state.agent_pos + 1, state.agent_pos)
    busy = state.busy & (pos < state.linger + s.m[None])
    s = s.replace(cnt=cnt, total=total)
    state = state.replace(phased=s, agent_pos=pos, busy=busy)
    ending = ~jnp.any(s.active & ~state.assigned, axis=0) & ~jnp.any(busy, axis=0)
    ended = state.replace(phased=phase_end(s, radius_scale),
                          assigned=jnp.zeros_like(state.assigned))
    return _assign(tree_select(ending, ended, state))

  def _assign(state: MultiAgentState) -> MultiAgentState:
    """Gives each free agent, in order, the next unassigned active arm."""
    k = state.assigned.shape[0]
    arm, pos, busy, assigned = state.agent_arm, state.agent_pos, state.busy, state.assigned
    for j in range(busy.shape[0]):
      nxt = first_index(state.phased.active & ~assigned)
      give = ~busy[j] & (nxt < k)
      arm = arm.at[j].set(jnp.where(give, nxt, arm[j]))
      pos = pos.at[j].set(jnp.where(give, 0, pos[j]))
      busy = busy.at[j].set(busy[j] | give)
      assigned = assigned | (give & (jnp.arange(k).reshape((k,) + (1,) * (nxt.ndim)) == nxt))
    return state.replace(agent_arm=arm, agent_pos=pos, busy=busy, assigned=assigned)

  return Algorithm(init, act, update)


class AlgorithmInfo(NamedTuple):
  make: Callable[[], Algorithm]               # builds the algorithm
  needs_feedback: bool                        # runs only on an environment with feedback
  erasure_free_self: Callable[[], Algorithm]  # what it reduces to when eps = 0 (one agent)
  label: str                                  # for figures
  multi_agent: bool = False                   # needs eps of shape (M,), requests M arms
  native: bool = True                         # batch-polymorphic (else simulated under vmap)


ALGORITHMS: dict[str, AlgorithmInfo] = {
    "ucb": AlgorithmInfo(ucb, False, ucb, "UCB (ignores erasures)"),
    "lsae_nolinger": AlgorithmInfo(successive_elimination, False, successive_elimination,
                                   "L-SAE without lingering (ignores erasures)"),
    "rep_ucb": AlgorithmInfo(lambda: repetition(ucb()), False, ucb, "Repetition + UCB"),
    "rep_se": AlgorithmInfo(lambda: repetition(successive_elimination()), False,
                            successive_elimination, "Repetition + SE"),
    "lsae": AlgorithmInfo(lingering_sae, False, successive_elimination, "L-SAE"),
    "fb_sae": AlgorithmInfo(feedback_sae, True,
                            lambda: reversed_arms(
                                successive_elimination(constants=feedback_constants)),
                            "SAE with feedback"),
    "ma_lsae": AlgorithmInfo(multi_agent_lsae, False, successive_elimination,
                             "Multi-agent L-SAE", multi_agent=True),
    "tpg": AlgorithmInfo(schedulers.tpg, True, successive_elimination, "TPG",
                         multi_agent=True),
    "tpg_guarded": AlgorithmInfo(lambda: schedulers.tpg(guarded=True), True,
                                 successive_elimination, "TPG (guarded)", multi_agent=True),
    "sp2_fb": AlgorithmInfo(schedulers.sp2_feedback, True, successive_elimination,
                            "SP2-Feedback", multi_agent=True),
    "sp2": AlgorithmInfo(schedulers.sp2, False, successive_elimination, "SP2",
                         multi_agent=True, native=False),
    "rrr": AlgorithmInfo(schedulers.rrr, True, successive_elimination, "Random round-robin",
                         multi_agent=True, native=False),
    "sgreedy": AlgorithmInfo(schedulers.sgreedy, True, successive_elimination, "SGreedy",
                             multi_agent=True, native=False),
    "lsae_ver": AlgorithmInfo(lambda: schedulers.lsae_multi(vertical=True), False,
                              successive_elimination, "L-SAE (vertical)", multi_agent=True,
                              native=False),
    "lsae_hor": AlgorithmInfo(lambda: schedulers.lsae_multi(vertical=False), False,
                              successive_elimination, "L-SAE (horizontal)", multi_agent=True,
                              native=False),
    "vanilla_sae": AlgorithmInfo(schedulers.vanilla_sae, False, successive_elimination,
                                 "Vanilla SAE", multi_agent=True, native=False),
}


ORDERED = {"fb_sae": feedback_sae, "sp2_fb": schedulers.sp2_feedback}  # take an arm order


def make(name: str, order: str | None = None) -> Algorithm:
  """The algorithm ``name``; ``order`` ('descending', the authors', or 'ascending') sets the
  request order of the stack-based algorithms (``ORDERED``) and is ignored by the others."""
  if name not in ALGORITHMS:
    raise ValueError(f"unknown algorithm {name!r}; allowed: {', '.join(ALGORITHMS)}")
  if order is not None and name in ORDERED:
    return ORDERED[name](order=order)
  return ALGORITHMS[name].make()


# The single-agent algorithms (those a grid of K-armed instances runs), in registry order.
SINGLE_AGENT = tuple(name for name, info in ALGORITHMS.items() if not info.multi_agent)
