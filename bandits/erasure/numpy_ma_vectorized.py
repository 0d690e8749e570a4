"""Hand-vectorized numpy TPG and SP2-Feedback, many runs at once: the numpy speed baseline.

The multi-agent erasure-bandit schedulers Two-Phase Greedy (``tpg``, ``tpg_guarded``)
and SP2-Feedback (``sp2_fb``) (setting of Hanna, Yang & Fragouli, arXiv 2406.18072
without feedback and arXiv 2504.20894 with feedback; the schedulers are those of the
journal work "Fundamental Limits of Learning Under Erasure-Constrained Communication
Channels", whose text was not available, as the authors' public code, github
mervekarakas/mamab_erasures at commit b3e9251, writes them), run for S runs together
the way a researcher vectorizes a per-round simulation across seeds: a Python loop
over rounds, numpy arrays of shape (S, M) per agent and (S, K) per arm, O(S M) work
per round, and the rare work (a batch end, a phase change, an arm reaching its M_i
samples, a takeover, a stack entry popped) done only for the runs that need it
(``np.flatnonzero`` masks), with a loop over agents only where the algorithm is
sequential (successive TPG takeovers in one round). Environment, draw conventions
and the schedulers' rules are those of :mod:`bandits.erasure.numpy_ma` (its module
docstring); :func:`run_vectorized` fed the same draws gives, run by run, the arms
played, transmissions and feedback bits of :func:`bandits.erasure.numpy_ma.run_port`
and its regret up to float rounding. Restrictions: Gaussian rewards only, a
constant channel (no ``eps_knots``), feedback modes ``beacon`` and ``ack_success``.

How the sequential rules are vectorized exactly:

* credits: agent j's sample counts when its arm has fewer than M_i samples
  counting the agents before it; all agents of a round are added at once
  (``np.add.at``, which adds in agent order, so the sums are the port's) and
  only in the runs where an arm overshoots M_i are the agents ranked in order;
* TPG planning: the agents that need an arm are fixed at the start of a round
  (a takeover only marks an agent with an open arm); the first of them take the
  highest unassigned arms in agent order, and the remaining ones can take over
  only if the slowest agent's estimate beats their restart cost, which is
  checked for all runs at once; the runs where some takeover happens replay
  the agents one takeover at a time;
* TPG phase 2: an agent never reaches the search over the chunk list (all
  chunks are handed out at the phase start), and whether a chunk is still open
  after a round does not depend on the order of the agents' credits;
* SP2-Feedback stacks: (S, M, K) entries in pop order with each agent's top
  entry cached, re-read only when an entry is popped or an arm is finished.

:func:`run_vectorized_rng` draws its own randomness from a numpy Generator, the
erasure uniforms and the reward noise ``chunk`` rounds at a time, the
scheduler's uniforms when it needs them (TPG: at a phase-2 start; SP2-Feedback:
each round for the agents with an empty stack), so that it never holds (S, T, M)
arrays: about 9 chunk S M bytes of draws, plus a float64 temporary of that shape.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from bandits.erasure.numpy_ma import ORDERS, _first_batch, _offline_stacks, gaussian_noise, repetitions

NAMES = ("tpg", "tpg_guarded", "sp2_fb")
FEEDBACK_MODES = ("beacon", "ack_success")


class VecResult(NamedTuple):
  regret: np.ndarray         # (S,) float64 final pseudo-regret summed over agents
  played: np.ndarray | None  # (S, T, M) int arm played by each agent; None without keep_played
  tx: np.ndarray             # (S,) int transmissions, all agents
  fb: np.ndarray             # (S,) int feedback bits, all agents


class _GivenDraws:
  """The draws of :func:`run_vectorized`, served round-major ``chunk`` rounds at a time."""

  def __init__(self, erase_u, reward_v, algo_u, eps, noise_std):
    self.received = erase_u >= eps[:, None, :]
    self.reward_v = reward_v
    self.algo_u = algo_u
    self.noise_std = float(noise_std)

  def chunk(self, start, stop):
    received = np.ascontiguousarray(self.received[:, start:stop].transpose(1, 0, 2))
    noise = self.noise_std * gaussian_noise(self.reward_v[:, start:stop])
    return received, np.ascontiguousarray(noise.transpose(1, 0, 2))

  def algo(self, t, runs, agents):
    """``algo_u[runs, t, agents, 0]``, the uniforms of the scheduler's random choices."""
    return self.algo_u[runs, t, agents, 0]


class _RngDraws:
  """Draws from a numpy Generator: channel and noise per chunk, the scheduler's on demand."""

  def __init__(self, rng, eps, noise_std):
    self.rng = rng
    self.eps = eps
    self.noise_std = float(noise_std)

  def chunk(self, start, stop):
    shape = (stop - start,) + self.eps.shape
    received = self.rng.random(shape) >= self.eps
    noise = self.rng.standard_normal(shape)
    if self.noise_std != 1.0:
      noise *= self.noise_std
    return received, noise

  def algo(self, t, runs, agents):
    del t
    return self.rng.random(np.broadcast(runs, agents).shape)


class _Env:
  """S channels of M agents (the environment of :mod:`bandits.erasure.numpy_ma`)."""

  def __init__(self, means, initial_arm, feedback_mode):
    s, k = means.shape
    self.rows_k = np.arange(s)[:, None] * k
    self.means = means.ravel()
    self.gaps = (means.max(axis=1, keepdims=True) - means).ravel()
    self.last = initial_arm.copy()
    self.delivered = np.full(initial_arm.shape, -1, np.int64)
    self.pending = np.ones(initial_arm.shape, bool)
    self.beacon = feedback_mode == "beacon"
    self.regret = np.zeros(s)
    self.tx = np.zeros(s, np.int64)
    self.fb = np.zeros(s, np.int64)

  def step(self, action, received, noise):
    """Requests ``action`` (S, M): (ack, played, reward, flat index S K of the played arms)."""
    sent = self.pending | (action != self.delivered)
    ok = sent & received
    played = np.where(ok, action, self.last)
    self.pending = sent & ~received  # a pending agent always transmits
    self.delivered = np.where(ok, action, self.delivered)
    self.last = played
    n_tx = sent.sum(axis=1)
    self.tx += n_tx
    self.fb += n_tx if self.beacon else ok.sum(axis=1)
    flat = self.rows_k + played
    self.regret += self.gaps[flat].sum(axis=1)
    return ok, played, self.means[flat] + noise, flat


def _capped_credit(counts, sums, flat, room, reward, m):
  """Credits agent j's reward to its arm when ``room[j]`` and the arm has fewer than m (S,)
  samples counting the agents before j. Updates counts and sums (S, K) in place; returns
  (credited (S, M), rows where an arm reached m this round)."""
  cf, sf = counts.reshape(-1), sums.reshape(-1)
  before = cf[flat]
  m_col = m[:, None]
  room = room & (before < m_col)
  flat_1d = flat.reshape(-1)  # (np.add.at is several times faster with 1-D operands)
  np.add.at(cf, flat_1d, room.astype(np.int64).reshape(-1))
  after = cf[flat]
  reached = np.flatnonzero((room & (after >= m_col)).any(axis=1))
  credited = room
  if reached.size:
    over = reached[(room[reached] & (after[reached] > m_col[reached])).any(axis=1)]
    if over.size:  # more agents than room: the first ones in agent order count
      arms, rm = flat[over], room[over]
      n = arms.shape[1]
      earlier = np.tril(np.ones((n, n), bool), -1)
      rank = ((arms[:, :, None] == arms[:, None, :]) & rm[:, None, :] & earlier).sum(axis=2)
      credited = room.copy()
      credited[over] = rm & (before[over] + rank < m_col[over])
      counts[over] = np.minimum(counts[over], m_col[over])
  np.add.at(sf, flat_1d, np.where(credited, reward, 0.0).reshape(-1))
  return credited, reached


class _Radius:
  """The elimination radius 2 sqrt(ln(T M) / (2 M_i)) of ``BanditBase.eliminate_arms``."""

  def __init__(self, horizon, n_agents):
    self.log_tm = math.log(horizon * n_agents)
    self.cache = {}

  def __call__(self, m):
    out = np.empty(m.size)
    for j, x in enumerate(m.tolist()):
      r = self.cache.get(x)
      if r is None:
        r = self.cache[x] = 2 * math.sqrt(self.log_tm / (2.0 * x))
      out[j] = r
    return out


def _eliminate(active, q, radius):
  best = np.where(active, q, -np.inf).max(axis=1)
  return active & ~(best[:, None] - q > radius[:, None])


class _TPG:
  """``BatchTPG`` / ``BatchTPGNew`` for S runs (rules: :func:`bandits.erasure.numpy_ma.tpg`)."""

  def __init__(self, means, alpha, horizon, initial_arm, draws, guarded):
    s, k = means.shape
    m_agents = alpha.shape[1]
    self.s, self.k, self.n, self.horizon = s, k, m_agents, horizon
    self.guarded, self.draws, self.alpha = guarded, draws, alpha
    self.rows = np.arange(s)
    self.rows_k = self.rows[:, None] * k
    self.rows_m = self.rows[:, None] * m_agents
    self.agents = np.arange(m_agents)
    m0 = int(math.ceil(2 * math.log(horizon * m_agents)) / 4)
    if m0 < 1:
      raise ValueError(f"T M = {horizon * m_agents} is too small: the first batch would need 0 pulls")
    self.radius = _Radius(horizon, m_agents)
    self.m = np.full(s, m0, np.int64)
    self.active = np.ones((s, k), bool)
    self.q = np.zeros((s, k))
    self.arm_sums = np.zeros((s, k))
    self.arm_counts = np.zeros((s, k), np.int64)
    self.pc = np.zeros((s, k), np.int64)      # samples credited this batch, every arm
    self.psum = np.zeros((s, k))
    self.act_list = np.zeros((s, k), np.int64)  # active arms ascending, then the others
    self.n_un = np.zeros(s, np.int64)          # unassigned arms: act_list[:n_un]
    self.threshold = np.zeros(s, np.int64)     # phase 1 ends when n_done reaches it
    self.n_done = np.zeros(s, np.int64)        # arms with M_i samples (phase 1)
    self.ph2 = np.zeros(s, bool)
    self.tgt = np.zeros(s, np.int64)           # samples to gather: M_i (phase 1), chunk (phase 2)
    self.arm = np.full((s, m_agents), -1, np.int64)
    self.slot = np.full((s, m_agents), -1, np.int64)  # phase-2 chunk, -1 for none
    self.taken = np.zeros((s, m_agents), bool)
    self.dd = np.zeros((s, m_agents), bool)     # the assigned arm has reached the agent
    self.att = np.zeros((s, m_agents), np.int64)
    self.ns = np.zeros((s, m_agents), np.int64)
    self.chunk_arm = np.full((s, m_agents), -1, np.int64)
    self.chunk_count = np.zeros((s, m_agents), np.int64)
    self.chunk_active = np.zeros((s, m_agents), bool)
    self.known = initial_arm.copy()
    self._open_batch(self.rows, 0)

  # --- rare work, for the runs R that need it -------------------------------------------------

  def _reset_agents(self, r):
    self.arm[r] = -1
    self.slot[r] = -1
    self.taken[r] = False
    self.dd[r] = False
    self.att[r] = 0
    self.ns[r] = 0

  def _open_batch(self, r, t):
    self.m[r] *= 4
    self.pc[r] = 0
    self.psum[r] = 0.0
    act = self.active[r]
    n_act = act.sum(axis=1)
    self.act_list[r] = np.argsort(~act, axis=1, kind="stable")
    self.n_un[r] = n_act
    self.threshold[r] = np.maximum(0, n_act - self.n)
    self.n_done[r] = 0
    self.ph2[r] = False
    self.tgt[r] = self.m[r]
    self._reset_agents(r)
    self.chunk_arm[r] = -1
    self.chunk_count[r] = 0
    self.chunk_active[r] = False
    self._start_phase2(r[self.threshold[r] == 0], t)

  def _batch_end(self, r, t):
    act, pc = self.active[r], self.pc[r]
    hit = act & (pc > 0)
    sums = np.where(hit, self.arm_sums[r] + self.psum[r], self.arm_sums[r])
    counts = np.where(hit, self.arm_counts[r] + pc, self.arm_counts[r])
    q = np.where(hit, sums / np.maximum(counts, 1), self.q[r])
    self.arm_sums[r], self.arm_counts[r], self.q[r] = sums, counts, q
    self.active[r] = _eliminate(act, q, self.radius(self.m[r]))
    self._open_batch(r, t)

  def _after_phase1(self, r, t):
    n_unf = (self.active[r] & (self.pc[r] < self.m[r, None])).sum(axis=1)
    go = (n_unf > 0) & (n_unf <= self.n)
    self._start_phase2(r[go], t)
    if not go.all():
      self._batch_end(r[~go], t)

  def _start_phase2(self, r, t):
    if r.size == 0:
      return
    n, k = self.n, self.k
    unf = self.active[r] & (self.pc[r] < self.m[r, None])
    n_unf = unf.sum(axis=1)
    order = np.argsort(~unf, axis=1, kind="stable")  # unfinished arms ascending first
    per_arm = np.maximum(1, n // n_unf)
    need = -(-self.m[r] // per_arm)
    used = self.agents[None, :] < (n_unf * per_arm)[:, None]
    chunk_arm = np.take_along_axis(order, np.minimum(self.agents[None, :] // per_arm[:, None], k - 1), 1)
    u = self.draws.algo(t, r[:, None], self.agents[None, :])
    pick = np.minimum(np.floor(u * n_unf[:, None]).astype(np.int64), n_unf[:, None] - 1)
    rand_arm = np.take_along_axis(order, pick, 1)
    self._reset_agents(r)
    self.arm[r] = np.where(used, chunk_arm, rand_arm)
    self.slot[r] = np.where(used, self.agents[None, :], -1)
    self.chunk_arm[r] = np.where(used, chunk_arm, -1)
    self.chunk_count[r] = 0
    self.chunk_active[r] = used
    self.ph2[r] = True
    self.tgt[r] = need

  def _takeovers(self, r, cand, desc):
    """Replays the takeovers of runs ``r`` (all in phase 1, or all in phase 2 when ``desc``):
    the candidates ``cand`` (|r|, M) in agent order (descending in phase 2), one at a time."""
    n = self.n
    pos = np.full(r.size, n if desc else -1)
    while r.size:
      arm, slot, dd, taken = self.arm[r], self.slot[r], self.dd[r], self.taken[r]
      pc, m, tgt, alpha = self.pc[r], self.m[r], self.tgt[r], self.alpha[r]
      pc_arm = np.take_along_axis(pc, np.maximum(arm, 0), 1)
      if desc:
        open_ = (slot >= 0) & np.take_along_axis(self.chunk_active[r], np.maximum(slot, 0), 1)
      else:
        open_ = (arm >= 0) & (pc_arm < m[:, None])
      eta = np.maximum(0, np.where(dd, tgt[:, None] - self.ns[r],
                                   alpha + tgt[:, None] - pc_arm - self.att[r]))
      elig = open_ & ~taken
      if self.guarded:
        elig &= ~dd
      e = np.where(elig, eta, -1)
      slow = e.argmax(axis=1)
      rr = np.arange(r.size)
      best = e[rr, slow]
      off = tgt - pc[rr, np.maximum(arm[rr, slow], 0)] if desc else m
      later = self.agents[None, :] < pos[:, None] if desc else self.agents[None, :] > pos[:, None]
      can = cand & later & (alpha + off[:, None] < best[:, None]) & (best > 0)[:, None]
      has = np.flatnonzero(can.any(axis=1))
      if has.size == 0:
        return
      r, can, cand, slow = r[has], can[has], cand[has], slow[has]
      i = n - 1 - can[:, ::-1].argmax(axis=1) if desc else can.argmax(axis=1)
      self.taken[r, slow] = True
      self.arm[r, i] = self.arm[r, slow]
      self.slot[r, i] = self.slot[r, slow]
      self.dd[r, i] = False
      self.att[r, i] = 0
      self.ns[r, i] = 0
      pos = i

  # --- every round ------------------------------------------------------------------------------

  def _plan(self, t):
    arm, m, ph2 = self.arm, self.m, self.ph2
    any_ph2 = ph2.any()
    pc_arm = self.pc.reshape(-1)[self.rows_k + np.maximum(arm, 0)]
    open_ = (arm >= 0) & (pc_arm < m[:, None])
    if any_ph2:
      slot = self.slot
      chunk_open = (slot >= 0) & self.chunk_active.reshape(-1)[self.rows_m + np.maximum(slot, 0)]
      open_ = np.where(ph2[:, None], chunk_open, open_)
    cand = ~self.taken & ~open_
    if any_ph2 and not self.guarded:  # TPG: an agent on a random arm (no chunk) never moves
      cand &= ~(ph2[:, None] & (arm >= 0) & (self.slot < 0))
    # Phase 1: the first agents that need an arm take the highest unassigned ones.
    pops = np.flatnonzero(~ph2 & (self.n_un > 0) & cand.any(axis=1))
    if pops.size:
      c, n_un = cand[pops], self.n_un[pops]
      rank = np.cumsum(c, axis=1) - 1
      gets = c & (rank < n_un[:, None])
      new = np.take_along_axis(self.act_list[pops], np.clip(n_un[:, None] - 1 - rank, 0, self.k - 1), 1)
      self.arm[pops] = np.where(gets, new, self.arm[pops])
      self.dd[pops] &= ~gets
      self.att[pops] *= ~gets
      self.ns[pops] *= ~gets
      self.n_un[pops] = n_un - np.minimum(n_un, c.sum(axis=1))
      cand[pops] = c & ~gets
      arm_p = self.arm[pops]
      pc_arm[pops] = pc_p = np.take_along_axis(self.pc[pops], np.maximum(arm_p, 0), 1)
      open_[pops] = (arm_p >= 0) & (pc_p < m[pops, None])  # a popped arm may be done already
    # Takeovers: a candidate i takes the slowest agent's arm when alpha_i + off < its eta.
    tgt = self.tgt[:, None]
    eta = np.maximum(0, np.where(self.dd, tgt - self.ns, self.alpha + tgt - pc_arm - self.att))
    elig = open_ & ~self.taken
    if self.guarded:
      elig &= ~self.dd
    e = np.where(elig, eta, -1)
    slow = e.argmax(axis=1)
    best = e[self.rows, slow]
    off = m
    if any_ph2:
      slow_pc = self.pc[self.rows, np.maximum(self.arm[self.rows, slow], 0)]
      off = np.where(ph2, self.tgt - slow_pc, m)
    can = (cand & (self.alpha + off[:, None] < best[:, None])).any(axis=1) & (best > 0)
    runs = np.flatnonzero(can)
    if runs.size:
      two = ph2[runs]
      if not two.all():
        self._takeovers(runs[~two], cand[runs[~two]], desc=False)
      if two.any():
        self._takeovers(runs[two], cand[runs[two]], desc=True)

  def propose(self, t):
    self._plan(t)
    return np.where(self.arm >= 0, self.arm, self.known)

  def update(self, t, ok, played, reward, flat):
    arm, dd = self.arm, self.dd
    has = arm >= 0
    und = has & ~dd
    self.att += und
    over = und & (self.att > self.alpha + self.tgt[:, None])
    first = und & ~over & ok
    self.ns = np.where(first, 1, self.ns + (has & dd & ok))
    self.dd = dd | first
    chunk_of = self.slot  # before a give-up: its play still counts for the chunk
    if over.any():
      self.arm = np.where(over, -1, arm)
      self.slot = np.where(over, -1, chunk_of)
    self.known = played
    _, reached = _capped_credit(self.pc, self.psum, flat, np.ones(played.shape, bool), reward, self.m)
    ph2 = self.ph2
    if ph2.any():
      mine = (chunk_of >= 0) & (played == arm)
      np.add.at(self.chunk_count.reshape(-1), (self.rows_m + np.maximum(chunk_of, 0))[mine], 1)
      self.chunk_active &= self.chunk_count < self.tgt[:, None]
    if reached.size:
      two = reached[ph2[reached]]
      if two.size:
        pc_chunk = np.take_along_axis(self.pc[two], np.maximum(self.chunk_arm[two], 0), 1)
        self.chunk_active[two] &= pc_chunk < self.m[two, None]
      one = reached[~ph2[reached]]
      self.n_done[one] = (self.pc[one] >= self.m[one, None]).sum(axis=1)
    if t + 1 >= self.horizon:
      return
    end2 = np.flatnonzero(ph2 & ~self.chunk_active.any(axis=1)) if ph2.any() else reached[:0]
    if reached.size:
      one = reached[~ph2[reached]]
      end1 = one[self.n_done[one] >= self.threshold[one]]
      if end1.size:
        self._after_phase1(end1, t + 1)
    if end2.size:
      self._batch_end(end2, t + 1)


class _SP2Feedback:
  """``BatchSP2Erasure`` for S runs (rules: :func:`bandits.erasure.numpy_ma.sp2_fb`)."""

  def __init__(self, means, alpha, horizon, initial_arm, draws, order):
    s, k = means.shape
    m_agents = alpha.shape[1]
    self.s, self.k, self.n, self.horizon = s, k, m_agents, horizon
    self.draws, self.alpha, self.order = draws, alpha, order
    self.shared_alpha = bool((alpha == alpha[0]).all())
    self.rows = np.arange(s)
    self.rows_k = self.rows[:, None] * k
    self.radius = _Radius(horizon, m_agents)
    self.m = np.full(s, _first_batch(horizon, m_agents), np.int64)
    self.active = np.ones((s, k), bool)
    self.q = np.zeros((s, k))
    self.num_pulls = np.zeros(s, np.int64)
    self.counts = np.zeros((s, k), np.int64)
    self.sums = np.zeros((s, k))
    self.need_list = np.zeros((s, k), np.int64)  # arms still short of M_i, ascending first
    self.n_need = np.zeros(s, np.int64)
    # stacks: entries (arm, requests left) per agent in pop order; -1 once gone
    self.ent_arm = np.full((s * m_agents, k), -1, np.int64)
    self.ent_left = np.zeros((s * m_agents, k), np.int64)
    self.top_pos = np.zeros((s, m_agents), np.int64)
    self.top_arm = np.full((s, m_agents), -1, np.int64)
    self.top_left = np.zeros((s, m_agents), np.int64)
    self.known = initial_arm.copy()
    self.templates = {}
    self._open_batch(self.rows)

  def _template(self, n_act, m, r):
    """The stacks of a batch with n_act active arms, as indices into the active list."""
    alpha = self.alpha[r]
    key = (n_act, m) if self.shared_alpha else (n_act, m, tuple(alpha.tolist()))
    tpl = self.templates.get(key)
    if tpl is None:
      stacks = _offline_stacks(list(range(n_act)), alpha, self.n, m)
      idx = np.full((self.n, self.k), -1, np.int64)
      left = np.zeros((self.n, self.k), np.int64)
      for i, st in enumerate(stacks):
        if self.order == "descending":
          st = st[::-1]
        for p, (a, c) in enumerate(st):
          idx[i, p], left[i, p] = a, c
      tpl = self.templates[key] = (idx, left)
    return tpl

  def _refresh_tops(self, pairs):
    """Re-reads the top entry of agents ``pairs`` (flat run * M + agent)."""
    valid = self.ent_arm[pairs] >= 0
    pos = valid.argmax(axis=1)
    top = self.ent_arm[pairs, pos]
    self.top_pos.reshape(-1)[pairs] = pos
    self.top_arm.reshape(-1)[pairs] = top  # -1 when the stack is empty
    self.top_left.reshape(-1)[pairs] = self.ent_left[pairs, pos]

  def _refresh_need(self, r):
    still = self.active[r] & (self.counts[r] < self.m[r, None])
    self.n_need[r] = still.sum(axis=1)
    self.need_list[r] = np.argsort(~still, axis=1, kind="stable")

  def _open_batch(self, r):
    n = self.n
    self.m[r] *= 4
    self.counts[r] = 0
    self.sums[r] = 0.0
    for j in r.tolist():
      act = np.flatnonzero(self.active[j])
      idx, left = self._template(act.size, int(self.m[j]), j)
      self.ent_arm[j * n:(j + 1) * n] = np.where(idx >= 0, act[np.maximum(idx, 0)], -1)
      self.ent_left[j * n:(j + 1) * n] = left
    self._refresh_tops((r[:, None] * n + np.arange(n)).reshape(-1))
    self._refresh_need(r)

  def _batch_end(self, r):
    act, pulls = self.active[r], self.num_pulls[r, None]
    q = np.where(act, (self.q[r] * pulls + self.sums[r]) / (pulls + self.counts[r]), self.q[r])
    self.q[r] = q
    self.num_pulls[r] += self.m[r]
    self.active[r] = _eliminate(act, q, self.radius(self.m[r]))
    self._open_batch(r)

  def propose(self, t):
    top = self.top_arm
    empty = np.flatnonzero(top.reshape(-1) < 0)
    if empty.size == 0:
      return top
    r, i = np.divmod(empty, self.n)
    u = self.draws.algo(t, r, i)
    n_need = self.n_need[r]
    pick = np.clip(np.floor(u * n_need).astype(np.int64), 0, np.maximum(n_need - 1, 0))
    arm = np.where(n_need > 0, self.need_list[r, pick], self.known.reshape(-1)[empty])
    out = top.copy()
    out.reshape(-1)[empty] = arm
    return out

  def update(self, t, ok, played, reward, flat):
    n = self.n
    hit = (self.top_arm >= 0) & (self.top_arm == played)
    self.top_left -= hit
    popped = np.flatnonzero((hit & (self.top_left <= 0)).reshape(-1))
    if popped.size:
      self.ent_arm[popped, self.top_pos.reshape(-1)[popped]] = -1
      self._refresh_tops(popped)
    self.known = played
    room = self.active.reshape(-1)[flat]
    _, reached = _capped_credit(self.counts, self.sums, flat, room, reward, self.m)
    if reached.size == 0:
      return
    # arms that reached M_i leave every stack of their run
    pairs = (reached[:, None] * n + np.arange(n)).reshape(-1)
    tp = self.top_pos.reshape(-1)[pairs]
    live = self.top_arm.reshape(-1)[pairs] >= 0
    self.ent_left[pairs[live], tp[live]] = self.top_left.reshape(-1)[pairs][live]
    ent = self.ent_arm[pairs]
    full = np.repeat(self.counts[reached] >= self.m[reached, None], n, axis=0)
    gone = (ent >= 0) & np.take_along_axis(full, np.maximum(ent, 0), 1)
    self.ent_arm[pairs] = np.where(gone, -1, ent)
    self._refresh_tops(pairs)
    self._refresh_need(reached)
    if t + 1 < self.horizon:
      over = reached[self.n_need[reached] == 0]
      if over.size:
        self._batch_end(over)


def _prepare(name, means, eps, horizon, initial_arm, feedback_mode, order):
  if name not in NAMES:
    raise ValueError(f"unknown scheduler {name!r}; expected one of {NAMES}")
  if feedback_mode not in FEEDBACK_MODES:
    raise ValueError(f"feedback_mode must be one of {FEEDBACK_MODES}; got {feedback_mode!r}")
  if order not in ORDERS:
    raise ValueError(f"order must be one of {ORDERS}; got {order!r}")
  means = np.asarray(means, np.float64)
  if means.ndim != 2 or means.shape[1] < 2:
    raise ValueError(f"means must have shape (S, K), K >= 2; got {means.shape}")
  s, k = means.shape
  eps = np.asarray(eps, np.float64)
  if eps.ndim not in (1, 2):
    raise ValueError(f"eps must have shape (M,) or (S, M); got {eps.shape}")
  m_agents = eps.shape[-1]
  eps = np.broadcast_to(eps, (s, m_agents))
  if np.any(eps < 0) or np.any(eps >= 1):
    raise ValueError("eps must lie in [0, 1)")
  horizon = int(horizon)
  rows = np.unique(eps, axis=0, return_inverse=True)
  alpha = np.stack([repetitions(e, horizon) for e in rows[0]])[rows[1].reshape(-1)].astype(np.int64)
  initial_arm = np.array(np.broadcast_to(np.asarray(initial_arm, np.int64), (s, m_agents)))
  if np.any(initial_arm < 0) or np.any(initial_arm >= k):
    raise ValueError(f"initial_arm must be in [0, {k})")
  return means, np.ascontiguousarray(eps), horizon, alpha, initial_arm


def _simulate(name, means, horizon, alpha, initial_arm, draws, feedback_mode, order, chunk,
              keep_played):
  s, m_agents = initial_arm.shape
  env = _Env(means, initial_arm, feedback_mode)
  if name == "sp2_fb":
    sched = _SP2Feedback(means, alpha, horizon, initial_arm, draws, order)
  else:
    sched = _TPG(means, alpha, horizon, initial_arm, draws, guarded=name == "tpg_guarded")
  played_all = np.zeros((s, horizon, m_agents), np.int64) if keep_played else None
  for start in range(0, horizon, chunk):
    stop = min(horizon, start + chunk)
    received, noise = draws.chunk(start, stop)
    for j in range(stop - start):
      t = start + j
      action = sched.propose(t)
      ok, played, reward, flat = env.step(action, received[j], noise[j])
      if keep_played:
        played_all[:, t] = played
      sched.update(t, ok, played, reward, flat)
  return VecResult(regret=env.regret, played=played_all, tx=env.tx, fb=env.fb)


def run_vectorized(name, means, eps, horizon, *, erase_u, reward_v, algo_u, initial_arm,
                   feedback_mode="beacon", order="descending", noise_std=1.0, keep_played=True,
                   chunk=1000) -> VecResult:
  """S runs of scheduler ``name`` on the given draws (conventions of :mod:`bandits.erasure.numpy_ma`).

  Args:
    name: 'tpg', 'tpg_guarded' or 'sp2_fb'.
    means: (S, K) arm means, one instance per run.
    eps: (M,) erasure probabilities shared by the runs, or (S, M).
    horizon: T.
    erase_u: (S, T, M) uniforms on [0, 1): received iff ``erase_u >= eps``.
    reward_v: (S, T, M) in (-1, 1); reward ``mean + noise_std sqrt(2) erfinv(reward_v)``.
    algo_u: (S, T, W, 3) uniforms, W >= M: the scheduler's own randomness.
    initial_arm: (M,) or (S, M), the arm each agent plays before its first delivery.
    feedback_mode: 'beacon' or 'ack_success'.
    order: 'descending' or 'ascending', the order of SP2-Feedback's stacks.
    noise_std: Gaussian noise standard deviation.
    keep_played: whether to return the (S, T, M) arms played.
    chunk: rounds of draws rearranged at a time.

  Returns:
    :class:`VecResult`.
  """
  means, eps, horizon, alpha, initial_arm = _prepare(name, means, eps, horizon, initial_arm,
                                                     feedback_mode, order)
  s, m_agents = eps.shape
  erase_u = np.asarray(erase_u, np.float64)
  reward_v = np.asarray(reward_v, np.float64)
  algo_u = np.asarray(algo_u, np.float64)
  if erase_u.shape != (s, horizon, m_agents) or reward_v.shape != (s, horizon, m_agents):
    raise ValueError(f"erase_u and reward_v must have shape {(s, horizon, m_agents)}; got "
                     f"{erase_u.shape}, {reward_v.shape}")
  if (algo_u.ndim != 4 or algo_u.shape[:2] != (s, horizon) or algo_u.shape[2] < m_agents
      or algo_u.shape[3] < 1):
    raise ValueError(f"algo_u must have shape {(s, horizon, 'W >= M', 3)}; got {algo_u.shape}")
  draws = _GivenDraws(erase_u, reward_v, algo_u, eps, noise_std)
  return _simulate(name, means, horizon, alpha, initial_arm, draws, feedback_mode, order,
                   int(chunk), keep_played)


def run_vectorized_rng(name, means, eps, horizon, rng, *, initial_arm, chunk=1000,
                       feedback_mode="beacon", order="descending", noise_std=1.0) -> np.ndarray:
  """S runs of ``name`` drawing from ``rng`` (arguments as :func:`run_vectorized`).

  The erasure uniforms and the reward noise are drawn ``chunk`` rounds at a time
  ((chunk, S, M) each), the scheduler's uniforms when a choice needs them.

  Returns:
    (S,) final pseudo-regret.
  """
  means, eps, horizon, alpha, initial_arm = _prepare(name, means, eps, horizon, initial_arm,
                                                     feedback_mode, order)
  draws = _RngDraws(rng, eps, noise_std)
  return _simulate(name, means, horizon, alpha, initial_arm, draws, feedback_mode, order,
                   int(chunk), keep_played=False).regret
