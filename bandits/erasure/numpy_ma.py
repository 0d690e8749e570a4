"""Plain-Python float64 references of the multi-agent erasure-bandit schedulers.

M agents share K arms; agent m sits behind an erasure channel with probability
eps_m, and an agent whose request is erased replays the last arm it received
(setting of Hanna, Yang & Fragouli, arXiv 2406.18072 without feedback and
arXiv 2504.20894 with feedback; the multi-agent schedulers are those of the
journal work "Fundamental Limits of Learning Under Erasure-Constrained
Communication Channels", whose text was not available: the schedulers below
follow the authors' public code, github mervekarakas/mamab_erasures at commit
b3e9251, class by class). :func:`run_port` runs one scheduler for one run, a
per-round Python loop over lists, with every random number passed in as an
array, so that it is an independent reference for the JAX versions in
:mod:`bandits.erasure.algorithms_ma` fed the same draws.

Environment (the project's :mod:`bandits.erasure.env`): per agent the state is
``last_arm`` (starts at ``initial_arm``), ``delivered`` (-1) and ``pending``
(True). A request is transmitted when the feedback mode is ``none`` or when
the agent is pending or the arm differs from the delivered one; it is received
when ``erase_u[t, m] >= eps_t[m]``; the agent plays the request when it is
transmitted and received, else its last arm. A scheduler with feedback sees the
acknowledgement and so knows every played arm; one without feedback does not.

Draws: ``erase_u`` (T, M) on [0, 1); ``reward_v`` (T, M) on (-1, 1), a
Gaussian reward being ``mean + noise_std sqrt(2) erfinv(reward_v)`` and a
Bernoulli one ``(reward_v + 1) / 2 < mean``; ``algo_u`` (T, W, 3), W = max(K, M),
the scheduler's own randomness for the requests of round t. Conventions:
``choice(S, u) = S[min(floor(u len(S)), len(S) - 1)]`` over an ascending list of
arms, and a permutation from uniforms is ``argsort(u, kind="stable")``.

Schedulers (registry name: authors' class; differences from it):

``tpg``: ``BatchTPG`` (Two-Phase Greedy, feedback). (1) When an agent's
attempt budget ``alpha_m + M_i`` (phase 1) or ``alpha_m + needed_per_chunk``
(phase 2) runs out in the round its request arrives, the authors record the
old arm as played; here the agent plays the new arm, as the environment
delivers it, and that arm is credited (the agent is still unassigned).
(2) The agents ``i >= len(replicate_list)`` of phase 2 draw their arm as
``choice(unfinished, algo_u[t, i, 0])``, t the first round of phase 2.
Everything else as the class, including its quirks: every played arm, also
an eliminated one or the agent's old arm, is credited while its batch count is
below M_i (an eliminated arm reaching M_i counts towards ``done_threshold``);
an agent whose arm is done and finds nothing to take keeps requesting it; in
phase 2 an agent given a chunk with ``cid = -1`` never leaves it, and an agent
moving to its next chunk keeps the delivery state of the previous one; a
taken-over agent keeps requesting its arm until the phase ends.

``tpg_guarded``: ``BatchTPGNew`` (TPG that never takes over an agent whose arm
was delivered and is unfinished; in its phase 2 a ``cid = -1`` chunk counts as
done, so those agents move on at once). Same differences as ``tpg``.

``sp2``: ``BatchSP2`` (offline schedule, no feedback; credits the requested
arm after discarding the first alpha_m - 1 rounds of each arm). The
``rng.shuffle`` of the active arms is the order of
``argsort(algo_u[t0, arm, 1])`` over the active arms, t0 the batch's first
round; the idle tail of an agent's schedule (``rng.choice`` over the active
arms) is drawn round by round, ``choice(active, algo_u[t, m, 0])``. Where the
class would index past the last agent when splitting leftover arms into
chunks (an IndexError there), this raises a RuntimeError.

``sp2_fb``: ``BatchSP2Erasure`` (SP2-Feedback). An agent with an empty stack
requests ``choice(still_need, algo_u[t, m, 0])``. ``order="descending"`` is the
class: its stacks are built with ascending arms and stored reversed
(``deque(stack[::-1])``), so each agent requests its arms from the highest
index down; ``order="ascending"`` pops the same stacks from the other end.

``rrr``: ``BatchSP2RRR`` (each agent requests a uniformly random arm still
needing pulls), ``choice(still_need, algo_u[t, m, 0])``.

``sgreedy``: ``BatchSGreedy``. With more arms needing pulls than agents, the M
arms with the fewest batch pulls, ties broken by the smaller
``algo_u[t, arm, 1]`` (the class breaks ties by a random permutation and
``np.argpartition``: the same set law up to how argpartition orders ties);
the chosen list is ordered by (count, ``algo_u[t, arm, 1]``); otherwise the
arms needing pulls, ascending. Agent ``perm[i]``, ``perm =
argsort(algo_u[t, :M, 2])``, requests ``chosen[i % len(chosen)]``.

``lsae_hor``: ``LSAE_ma_hor`` (no feedback). No random choice. As the class,
credits are not capped at M_i, and an agent that finds the last arm done in
the round the list of arms empties requests (and credits) it once more.

``lsae_ver``: ``LSAE_ma_ver`` (no feedback). An agent with no arm left requests
``choice(active, algo_u[t, m, 0])``.

``vanilla_sae``: ``Vanilla_SAE_ma`` (no feedback, no repetition). The idle
tail of the schedule is drawn round by round as for ``sp2``. The class writes
the erased agents' replayed arms into its schedule (``arms`` is a view of the
schedule's row) and then credits the schedule's entry, i.e. it credits the
arm actually played, which a learner without feedback cannot know; here the
requested arm is credited, as the class evidently intends (the
``credit_played`` argument of :func:`vanilla_sae` reproduces the class).

Common to all: the classes draw rewards with their own generator (TPG, RRR,
SGreedy, L-SAE and Vanilla SAE always Gaussian, even with ``bernoulli=True``;
SP2 and SP2-Feedback a Bernoulli when it is set); here every scheduler's
reward is of ``reward_kind``, from ``reward_v``. The channel's eps may follow
``eps_knots``; the learner knows only the nominal ``eps`` (its alphas,
``ceil(2 ln T / ln(1 / eps_m))``, 1 when eps_m = 0, as
``calculate_repetitions``). Schedulers without feedback always run with
feedback mode ``none`` (the argument is ignored); those with feedback need
``beacon`` or ``ack_success``. The constants and the float expressions of
means and thresholds are the class's own (e.g. M_1 = 4 int(ceil(2 ln(T M)) / 4),
the elimination radius 2 sqrt(ln(T M) / (2 M_i)) of ``BanditBase.eliminate_arms``),
so that a run fed the class's draws reproduces its per-round regret exactly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.special import erfinv

FEEDBACK = ("tpg", "tpg_guarded", "sp2_fb", "rrr", "sgreedy")
NO_FEEDBACK = ("sp2", "lsae_hor", "lsae_ver", "vanilla_sae")
NAMES = FEEDBACK + NO_FEEDBACK
REWARD_KINDS = ("gaussian", "bernoulli")
FEEDBACK_MODES = ("beacon", "ack_success", "none")
ORDERS = ("descending", "ascending")


class PortResult(NamedTuple):
  regret: np.ndarray  # (T,) float64 cumulative pseudo-regret summed over agents
  played: np.ndarray  # (T, M) int arm played by each agent
  tx: np.ndarray      # (T,) int cumulative transmissions, all agents
  fb: np.ndarray      # (T,) int cumulative feedback bits, all agents


def choice(arms, u: float):
  """``arms[min(floor(u len(arms)), len(arms) - 1)]``: a uniform pick from u in [0, 1)."""
  n = len(arms)
  return arms[min(int(math.floor(u * n)), n - 1)]


def permutation(u) -> np.ndarray:
  """The permutation ``argsort(u, kind="stable")`` of uniforms ``u``."""
  return np.argsort(np.asarray(u), kind="stable")


def gaussian_noise(reward_v) -> np.ndarray:
  """Standard normal noise ``sqrt(2) erfinv(reward_v)``, float64."""
  return np.sqrt(2.0) * erfinv(np.asarray(reward_v, np.float64))


def repetitions(eps, horizon: int) -> np.ndarray:
  """alpha_m = ceil(2 ln T / ln(1 / eps_m)), 1 when eps_m = 0 (``calculate_repetitions``)."""
  eps = np.asarray(eps, np.float64)
  alphas = np.ones(eps.size)
  for i, e in enumerate(eps):
    if e > 0:
      alphas[i] = np.ceil(2 * np.log(horizon) / np.log(1 / e))
  return alphas.astype(int)


def channel_eps(eps, horizon: int, eps_knots=None) -> np.ndarray:
  """(T, M) erasure probability of each agent's channel at each round (0-based)."""
  eps = np.asarray(eps, np.float64)
  if eps_knots is None:
    return np.broadcast_to(eps, (horizon, eps.size))
  knots_t, knots_eps = eps_knots
  knots_t = np.asarray(knots_t, np.float64)
  knots_eps = np.asarray(knots_eps, np.float64).reshape(knots_t.size, -1)
  knots_eps = np.broadcast_to(knots_eps, (knots_t.size, eps.size))
  t = np.arange(horizon, dtype=np.float64)
  return np.stack([np.interp(t, knots_t, knots_eps[:, m]) for m in range(eps.size)], axis=1)


class Channel:
  """The environment of one run (see the module docstring), stepped by a scheduler."""

  def __init__(self, means, eps, horizon, erase_u, reward_v, algo_u, initial_arm, reward_kind,
               noise_std, feedback_mode, eps_knots):
    self.means = [float(x) for x in means]
    self.k = len(self.means)
    self.m = len(eps)
    self.horizon = horizon
    self.eps = np.asarray(eps, np.float64)
    self.alphas = repetitions(self.eps, horizon)
    self.algo_u = algo_u
    self.received = (np.asarray(erase_u) >= channel_eps(eps, horizon, eps_knots)).tolist()
    if reward_kind == "gaussian":
      self.noise = (float(noise_std) * gaussian_noise(reward_v)).tolist()
    else:
      self.coin = ((np.asarray(reward_v, np.float64) + 1.0) * 0.5).tolist()
    self.gaussian = reward_kind == "gaussian"
    self.feedback_mode = feedback_mode
    self.last = [int(a) for a in initial_arm]
    self.delivered = [-1] * self.m
    self.pending = [True] * self.m
    self.t = 0
    self.best = max(self.means)
    self.played = np.zeros((horizon, self.m), np.int64)
    self.tx = np.zeros(horizon, np.int64)
    self.fb = np.zeros(horizon, np.int64)
    self.tx_total = 0
    self.fb_total = 0

  def step(self, action):
    """One round of requests ``action`` (M ints): returns (ack, played, reward) lists."""
    t = self.t
    rec = self.received[t]
    success, played, reward = [], [], []
    n_tx = n_ok = 0
    for m in range(self.m):
      a = int(action[m])
      sent = self.feedback_mode == "none" or self.pending[m] or a != self.delivered[m]
      ok = sent and rec[m]
      p = a if ok else self.last[m]
      if sent:
        n_tx += 1
        self.pending[m] = not rec[m]
      if ok:
        n_ok += 1
        self.delivered[m] = a
      self.last[m] = p
      success.append(ok)
      played.append(p)
      mean = self.means[p]
      if self.gaussian:
        reward.append(mean + self.noise[t][m])
      else:
        reward.append(float(self.coin[t][m] < mean))
    self.tx_total += n_tx
    if self.feedback_mode == "beacon":
      self.fb_total += n_tx
    elif self.feedback_mode == "ack_success":
      self.fb_total += n_ok
    self.played[t] = played
    self.tx[t] = self.tx_total
    self.fb[t] = self.fb_total
    self.t = t + 1
    return success, played, reward


def _first_batch(horizon: int, m: int) -> int:
  """int(ceil(2 ln(T M)) / 4): the batch size before the first multiplication by 4."""
  base = int(np.ceil(2 * np.log(horizon * m)) / 4)
  if base < 1:
    raise ValueError(f"T M = {horizon * m} is too small: the first batch would need 0 pulls")
  return base


def _eliminate(active, q, horizon, m, pulls):
  """``BanditBase.eliminate_arms`` (c = 1): drop arms more than 2 sqrt(ln(T M)/(2 M_i)) below the best."""
  survivors = [a for a in range(len(active)) if active[a]]
  if not survivors:
    return
  best = max(q[a] for a in survivors)
  threshold = 2 * math.sqrt(math.log(horizon * m) / (2.0 * pulls))
  for a in survivors:
    if best - q[a] > threshold:
      active[a] = False


def tpg(ch: Channel, guarded: bool = False) -> None:
  """``BatchTPG`` (``guarded=False``) or ``BatchTPGNew`` (``guarded=True``) on channel ``ch``."""
  k, n_agents, horizon, alphas = ch.k, ch.m, ch.horizon, ch.alphas
  active = [True] * k
  q, arm_counts, arm_sums = [0.0] * k, [0] * k, [0.0] * k
  pulled = list(ch.last)  # the learner knows the arm each agent plays
  m_i = int(math.ceil(2 * math.log(horizon * n_agents)) / 4)
  if m_i < 1:
    raise ValueError(f"T M = {horizon * n_agents} is too small: the first batch would need 0 pulls")
  while ch.t < horizon and any(active):
    m_i *= 4
    act = [a for a in range(k) if active[a]]
    pull_count, pull_sums = [0] * k, [0.0] * k
    done_arms = set()
    done_count = 0
    done_threshold = max(0, len(act) - n_agents)
    assigned = [-1] * n_agents
    taken = [False] * n_agents
    dd = [False] * n_agents      # delivery_done
    att = [0] * n_agents         # attempts_spent
    ns = [0] * n_agents          # num_successes
    unassigned = list(act)

    def compute_eta(i):
      if taken[i]:
        return 0
      a = assigned[i]
      if a < 0 or a in done_arms:
        return 0
      if not dd[i]:
        return max(0, (alphas[i] + (m_i - pull_count[a])) - att[i])
      return max(0, m_i - ns[i])

    def find_slowest(i):
      slow_idx, slow_eta = -1, -1
      for j in range(n_agents):
        if taken[j] or j == i:
          continue
        a = assigned[j]
        if a < 0 or a in done_arms:
          continue
        if guarded and dd[j] and pull_count[a] < m_i:
          continue
        eta = compute_eta(j)
        if eta > slow_eta:
          slow_eta, slow_idx = eta, j
      return slow_idx, slow_eta

    def do_takeover(i):
      if assigned[i] != -1 or taken[i]:
        return
      s_idx, s_eta = find_slowest(i)
      if s_idx < 0 or s_idx == i or s_eta <= 0:
        return
      if alphas[i] + m_i < s_eta:
        a_take = assigned[s_idx]
        if a_take < 0 or a_take in done_arms:
          return
        taken[s_idx] = True
        assigned[i] = a_take
        dd[i], att[i], ns[i] = False, 0, 0

    while done_count < done_threshold and ch.t < horizon:
      for i in range(n_agents):
        if taken[i]:
          continue
        a_now = assigned[i]
        if a_now < 0 or a_now in done_arms or pull_count[a_now] >= m_i:
          assigned[i] = -1
          if unassigned:
            assigned[i] = unassigned.pop()
            dd[i], att[i], ns[i] = False, 0, 0
          if assigned[i] < 0:
            do_takeover(i)
          if assigned[i] == -1:
            assigned[i] = a_now
      proposed = [pulled[i] if assigned[i] < 0 else assigned[i] for i in range(n_agents)]
      success, played, reward = ch.step(proposed)
      for i in range(n_agents):
        if assigned[i] >= 0:
          if not dd[i]:
            att[i] += 1
            if att[i] > alphas[i] + m_i:
              assigned[i] = -1  # the class also records the old arm as played here
            elif success[i]:
              dd[i], ns[i] = True, 1
          elif success[i]:
            ns[i] += 1
        a = played[i]
        pulled[i] = a
        if pull_count[a] < m_i:
          pull_count[a] += 1
          pull_sums[a] += reward[i]
          if pull_count[a] >= m_i:
            done_arms.add(a)
            done_count += 1

    unfinished = [a for a in act if pull_count[a] < m_i]
    if 0 < len(unfinished) <= n_agents and ch.t < horizon:
      per_arm = max(1, n_agents // len(unfinished))
      needed = math.ceil(m_i / float(per_arm))
      rep_list = [(a, c) for a in unfinished for c in range(per_arm)]
      rep_count = {rc: 0 for rc in rep_list}
      rep_active = {rc: True for rc in rep_list}
      chunk = [(-1, -1)] * n_agents
      c_taken = [False] * n_agents
      c_dd = [False] * n_agents
      c_att = [0] * n_agents
      c_ns = [0] * n_agents

      def chunk_eta(i):
        if c_taken[i]:
          return 0
        ra, rc = chunk[i]
        if ra < 0 or not rep_active.get((ra, rc), False):
          return 0
        if rep_count.get((ra, rc), 0) >= needed:
          return 0
        if not c_dd[i]:
          return max(0, (alphas[i] + (needed - pull_count[ra])) - c_att[i])
        return max(0, needed - c_ns[i])

      def find_slowest_chunk(i):
        slow_idx, slow_eta = -1, -1
        for j in range(n_agents):
          if j == i or c_taken[j]:
            continue
          ra, rc = chunk[j]
          if ra < 0 or rc < 0 or not rep_active.get((ra, rc), False):
            continue
          if guarded and c_dd[j] and pull_count[ra] < m_i:
            continue
          eta = chunk_eta(j)
          if eta > slow_eta:
            slow_eta, slow_idx = eta, j
        return slow_idx, slow_eta

      def chunk_takeover(i):
        if c_taken[i]:
          return
        s_idx, s_eta = find_slowest_chunk(i)
        if s_idx < 0 or s_idx == i or s_eta <= 0:
          return
        if alphas[i] + (needed - pull_count[chunk[s_idx][0]]) < s_eta:
          sa, sc = chunk[s_idx]
          if sa < 0 or (sa in done_arms if guarded else (sa, sc) not in rep_active):
            return
          c_taken[s_idx] = True
          chunk[i] = (sa, sc)
          c_dd[i], c_att[i], c_ns[i] = False, 0, 0

      def chunk_done(a, c):
        if guarded:
          if not rep_active.get((a, c), False):
            return True
        else:
          if (a, c) not in rep_active:
            return False
          if not rep_active[(a, c)]:
            return True
        return rep_count[(a, c)] >= needed or pull_count[a] >= m_i

      t0 = ch.t
      for i in range(n_agents):
        if i < len(rep_list):
          chunk[i] = rep_list[i]
        else:
          chunk[i] = (choice(unfinished, ch.algo_u[t0, i, 0]), -1)
      rep_ptr = min(n_agents, len(rep_list))

      while ch.t < horizon and any(rep_active[rc] and rep_count[rc] < needed
                                   and pull_count[rc[0]] < m_i for rc in rep_list):
        for i in reversed(range(n_agents)):
          if c_taken[i]:
            continue
          ra, rc = chunk[i]
          if ra < 0 or chunk_done(ra, rc):
            found = False
            while rep_ptr < len(rep_list):
              cand = rep_list[rep_ptr]
              rep_ptr += 1
              if not chunk_done(*cand):
                chunk[i] = cand
                ra, rc = cand
                found = True
                break
            if not found:
              chunk_takeover(i)
            if chunk[i][0] < 0:
              chunk[i] = (ra, rc)
        proposed = [pulled[i] if chunk[i][0] < 0 else chunk[i][0] for i in range(n_agents)]
        success, played, reward = ch.step(proposed)
        for i in range(n_agents):
          ra, rc = chunk[i]
          if ra >= 0:
            if not c_dd[i]:
              c_att[i] += 1
              if c_att[i] > alphas[i] + needed:
                chunk[i] = (-1, -1)  # the class also records the old arm as played here
              elif success[i]:
                c_dd[i], c_ns[i] = True, 1
            elif success[i]:
              c_ns[i] += 1
          a = played[i]
          pulled[i] = a
          if pull_count[a] < m_i:
            pull_count[a] += 1
            pull_sums[a] += reward[i]
            if pull_count[a] >= m_i:
              for rc2 in rep_list:
                if rc2[0] == a:
                  rep_active[rc2] = False
          if a == ra and ra >= 0 and rep_active.get((ra, rc), False):
            rep_count[(ra, rc)] += 1
            if rep_count[(ra, rc)] >= needed or pull_count[ra] >= m_i:
              rep_active[(ra, rc)] = False

    for a in act:
      if pull_count[a] > 0:
        arm_sums[a] += pull_sums[a]
        arm_counts[a] += pull_count[a]
        q[a] = arm_sums[a] / float(arm_counts[a])
    _eliminate(active, q, horizon, n_agents, m_i)


def _offline_stacks(act, alphas, n_agents, m_i):
  """``BatchSP2Erasure._offline_chunk_assignments``: per agent [arm, pulls] in build order."""
  t_i = math.ceil(m_i * len(act) / np.sum(m_i / (alphas - 1 + m_i)))
  stacks = [[] for _ in range(n_agents)]
  ind = 0
  for i in range(n_agents):
    t_end = 0
    p = int(alphas[i]) - 1 + m_i
    while t_end + p <= t_i and ind < len(act):
      stacks[i].append([act[ind], p])
      t_end += p
      ind += 1
  k_hat = len(act) - ind
  if k_hat > 0:
    per_arm = max(1, math.floor(n_agents / (2 * k_hat)))
    size = math.ceil(m_i / per_arm)
    half = max(1, math.floor(n_agents / 2))
    per_agent = math.ceil(k_hat * per_arm / half)
    agent, chunks = 0, 0
    for i in range(ind, len(act)):
      eff = 0
      while eff < m_i and agent < n_agents:
        n_chunks = min(per_agent - chunks, per_arm)
        n_pulls = min(m_i - eff, n_chunks * size)
        stacks[agent].append([act[i], int(alphas[agent]) - 1 + n_pulls])
        eff += n_pulls
        chunks += n_chunks
        if chunks >= per_agent:
          agent += 1
          chunks = 0
  return stacks


def sp2_fb(ch: Channel, order: str = "descending") -> None:
  """``BatchSP2Erasure`` (SP2-Feedback) on channel ``ch``."""
  k, n_agents, horizon = ch.k, ch.m, ch.horizon
  active = [True] * k
  q = [0.0] * k
  num_pulls = 0
  pulled = list(ch.last)
  m_i = _first_batch(horizon, n_agents)
  while ch.t < horizon:
    m_i *= 4
    act = [a for a in range(k) if active[a]]
    sums, counts = [0.0] * k, [0] * k
    stacks = _offline_stacks(act, ch.alphas, n_agents, m_i)
    if order == "descending":
      stacks = [s[::-1] for s in stacks]
    while not all(counts[a] >= m_i for a in act):
      if ch.t >= horizon:
        return
      t = ch.t
      proposed = []
      for i in range(n_agents):
        if stacks[i]:
          proposed.append(stacks[i][0][0])
        else:
          need = [a for a in range(k) if active[a] and counts[a] < m_i]
          proposed.append(choice(need, ch.algo_u[t, i, 0]) if need else pulled[i])
      _, played, reward = ch.step(proposed)
      finished = set()
      for i in range(n_agents):
        a = played[i]
        if stacks[i] and stacks[i][0][0] == a:
          stacks[i][0][1] -= 1
          if stacks[i][0][1] <= 0:
            stacks[i].pop(0)
        if active[a] and counts[a] < m_i:
          counts[a] += 1
          sums[a] += reward[i]
          if counts[a] >= m_i:
            finished.add(a)
        pulled[i] = a
      if finished:
        stacks = [[e for e in s if e[0] not in finished] for s in stacks]
    for a in act:
      q[a] = (q[a] * num_pulls + sums[a]) / (num_pulls + counts[a])
    num_pulls += m_i
    _eliminate(active, q, horizon, n_agents, m_i)


def rrr(ch: Channel) -> None:
  """``BatchSP2RRR`` (every agent requests a random arm still needing pulls) on ``ch``."""
  k, n_agents, horizon = ch.k, ch.m, ch.horizon
  active = [True] * k
  q = [0.0] * k
  num_pulls = 0
  pulled = list(ch.last)
  m_i = _first_batch(horizon, n_agents)
  while ch.t < horizon:
    m_i *= 4
    act = [a for a in range(k) if active[a]]
    sums, counts = [0.0] * k, [0] * k
    remaining = set(act)
    while not all(counts[a] >= m_i for a in act):
      if ch.t >= horizon:
        return
      t = ch.t
      need = [a for a in range(k) if active[a] and a in remaining]
      proposed = [choice(need, ch.algo_u[t, i, 0]) if need else pulled[i]
                  for i in range(n_agents)]
      _, played, reward = ch.step(proposed)
      finished = set()
      for i in range(n_agents):
        a = played[i]
        pulled[i] = a
        if active[a] and counts[a] < m_i:
          counts[a] += 1
          sums[a] += reward[i]
          if counts[a] >= m_i:
            finished.add(a)
      remaining -= finished
    for a in act:
      q[a] = (q[a] * num_pulls + sums[a]) / (num_pulls + counts[a])
    num_pulls += m_i
    _eliminate(active, q, horizon, n_agents, m_i)


def sgreedy(ch: Channel) -> None:
  """``BatchSGreedy`` (the least-pulled arms, spread over the agents) on ``ch``."""
  k, n_agents, horizon = ch.k, ch.m, ch.horizon
  active = [True] * k
  q, arm_counts, arm_sums = [0.0] * k, [0] * k, [0.0] * k
  m_i = _first_batch(horizon, n_agents)
  while ch.t < horizon and any(active):
    m_i *= 4
    act = [a for a in range(k) if active[a]]
    counts = {a: 0 for a in act}
    sums = {a: 0.0 for a in act}
    while ch.t < horizon:
      need = [a for a in act if counts[a] < m_i]
      if not need:
        break
      u = ch.algo_u[ch.t]
      if len(need) > n_agents:
        chosen = sorted(need, key=lambda a: (counts[a], u[a, 1]))[:n_agents]
      else:
        chosen = need
      proposed = [0] * n_agents
      for i, agent in enumerate(permutation(u[:n_agents, 2])):
        proposed[agent] = chosen[i % len(chosen)]
      _, played, reward = ch.step(proposed)
      for i in range(n_agents):
        a = played[i]
        if a in counts and counts[a] < m_i:
          counts[a] += 1
          sums[a] += reward[i]
    for a in act:
      if counts[a] > 0:
        arm_sums[a] += sums[a]
        arm_counts[a] += counts[a]
        q[a] = arm_sums[a] / float(arm_counts[a])
    _eliminate(active, q, horizon, n_agents, m_i)


def _fill_schedule(assigned, act, ch: Channel, t0: int):
  """Rows of an offline schedule from per-agent pull counts, ascending arms per agent; the idle
  tail of an agent is ``choice(act, algo_u[t, m, 0])`` round by round. Rows that would start
  at or after the horizon are left out, except one (its value is only compared with)."""
  n_agents, k = assigned.shape
  max_iter = int(max(np.sum(assigned, axis=1)))
  rows = min(max_iter, ch.horizon - t0 + 1)
  sched = [[-1] * n_agents for _ in range(rows)]
  for i in range(n_agents):
    ctr = 0
    for a in range(k):
      n = int(assigned[i][a])
      if n > 0:
        for r in range(ctr, min(ctr + n, rows)):
          sched[r][i] = a
        ctr += n
    for r in range(ctr, rows):
      t = min(t0 + r, ch.horizon - 1)
      sched[r][i] = choice(act, ch.algo_u[t, i, 0])
  return sched, max_iter


def sp2(ch: Channel) -> None:
  """``BatchSP2`` (offline schedule, no feedback) on ``ch``."""
  k, n_agents, horizon, alphas = ch.k, ch.m, ch.horizon, ch.alphas
  active = [True] * k
  q = [0.0] * k
  num_pulls = 0
  ppa = _first_batch(horizon, n_agents)
  while ch.t < horizon:
    ppa *= 4
    act = [a for a in range(k) if active[a]]
    t0 = ch.t
    u = ch.algo_u[t0]
    shuffled = [act[j] for j in permutation([u[a, 1] for a in act])]
    adjust = np.sum(ppa / (alphas - 1 + ppa))
    t_i = math.ceil(ppa * len(act) / adjust)
    assigned = np.zeros((n_agents, k), dtype=int)
    effective = [0] * k
    cursor = 0
    for i in range(n_agents):
      t_end = 0
      p = int(alphas[i]) - 1 + ppa
      while t_end + p <= t_i and cursor < len(shuffled):
        a = shuffled[cursor]
        assigned[i, a] = p
        effective[a] = ppa
        t_end += p
        cursor += 1
    left = len(shuffled) - cursor
    if left > 0:
      per_arm = max(1, math.floor(n_agents / (2 * left)))
      size = math.ceil(ppa / per_arm)
      half = max(1, math.floor(n_agents / 2))
      per_agent = math.ceil(left * per_arm / half)
      agent, chunks = 0, 0
      for idx in range(cursor, len(shuffled)):
        a = shuffled[idx]
        while effective[a] < ppa:
          if agent >= n_agents:
            raise RuntimeError("sp2: leftover chunks run past the last agent (IndexError in BatchSP2)")
          n_chunks = min(per_agent - chunks, per_arm)
          n_pulls = min(ppa - effective[a], n_chunks * size)
          assigned[agent, a] = int(alphas[agent]) - 1 + n_pulls
          effective[a] += n_pulls
          chunks += n_chunks
          if chunks >= per_agent:
            agent += 1
            chunks = 0
    sched, max_iter = _fill_schedule(assigned, act, ch, t0)
    sums, counts = [0.0] * k, [0] * k
    reps = [0] * n_agents
    for r in range(max_iter):
      if ch.t >= horizon:
        return
      row = sched[r]
      _, _, reward = ch.step(row)
      for j in range(n_agents):
        a = row[j]
        if reps[j] < alphas[j] - 1:
          reps[j] += 1
        elif counts[a] < ppa:
          sums[a] += reward[j]
          counts[a] += 1
        if r + 1 < max_iter and sched[r + 1][j] != a:
          reps[j] = 0
    for a in act:
      q[a] = (q[a] * num_pulls + sums[a]) / (num_pulls + counts[a])
    num_pulls += ppa
    _eliminate(active, q, horizon, n_agents, ppa)


def lsae(ch: Channel, vertical: bool) -> None:
  """``LSAE_ma_hor`` / ``LSAE_ma_ver`` on ``ch``."""
  k, n_agents, horizon, alphas = ch.k, ch.m, ch.horizon, ch.alphas
  active = [True] * k
  q = [0.0] * k
  num_pulls = 0
  m_i = 1
  threshold_log = np.log(k * horizon * n_agents)
  while ch.t < horizon:
    m_i *= 4
    act = [a for a in range(k) if active[a]]
    to_assign = list(act)
    assign = [-1] * n_agents
    reps = [0] * n_agents
    sums, counts = [0.0] * k, [0] * k
    while ch.t < horizon and (any(counts[a] < m_i for a in act) if vertical else to_assign):
      t = ch.t
      requested, credited = [], []
      for j in range(n_agents):
        if vertical:
          if assign[j] == -1:
            assign[j] = to_assign.pop(0) if to_assign else k
          elif assign[j] == k:
            reps[j] = 0
          elif counts[assign[j]] >= m_i:
            reps[j] = 0
            if to_assign:
              assign[j] = to_assign.pop(0)
          a = assign[j] if assign[j] < k else choice(act, ch.algo_u[t, j, 0])
        else:
          if assign[j] == -1:
            assign[j] = to_assign[0]
          elif counts[assign[j]] >= m_i:
            if assign[j] in to_assign:
              to_assign.remove(assign[j])
            reps[j] = 0
            if to_assign:
              assign[j] = to_assign[0]
          a = assign[j]
        requested.append(a)
        if reps[j] < alphas[j] - 1:
          reps[j] += 1
          credited.append(False)
        else:
          counts[a] += 1  # the credit does not depend on the reward: count it before the round
          credited.append(True)
      _, _, reward = ch.step(requested)
      for j in range(n_agents):
        if credited[j]:
          sums[requested[j]] += reward[j]
    if ch.t >= horizon:
      return
    for a in act:
      q[a] = (q[a] * num_pulls + sums[a]) / (num_pulls + counts[a])
    num_pulls += m_i
    best = max(q[a] for a in act)
    radius = 2 * float(np.sqrt(threshold_log / (2 * m_i)))
    for a in act:
      if best - q[a] > radius:
        active[a] = False


def vanilla_sae(ch: Channel, credit_played: bool = False) -> None:
  """``Vanilla_SAE_ma`` on ``ch``; ``credit_played`` credits the played arm as the class does."""
  k, n_agents, horizon = ch.k, ch.m, ch.horizon
  active = [True] * k
  q = [0.0] * k
  num_pulls = 0
  delta = 2
  while ch.t < horizon:
    delta /= 2
    act = [a for a in range(k) if active[a]]
    n_m = int(np.ceil(2 * np.log(horizon * n_agents * (delta ** 2)) / (delta ** 2)))
    per_agent = np.ceil(len(act) * n_m / n_agents)
    assigned = np.zeros((n_agents, k), dtype=int)
    req = [n_m if active[a] else 0 for a in range(k)]
    ind = 0
    for i in range(n_agents):
      c = 0
      while c < per_agent and ind < k:
        n = min(per_agent - c, req[ind])
        req[ind] -= n
        c += n
        assigned[i, ind] = n
        if req[ind] == 0:
          ind += 1
    t0 = ch.t
    sched, max_iter = _fill_schedule(assigned, act, ch, t0)
    sums, counts = [0.0] * k, [0] * k
    for r in range(max_iter):
      if ch.t >= horizon:
        return
      _, played, reward = ch.step(sched[r])
      credit = played if credit_played else sched[r]
      for j in range(n_agents):
        a = credit[j]
        if counts[a] < n_m:
          sums[a] += reward[j]
          counts[a] += 1
    for a in act:
      q[a] = (q[a] * num_pulls + sums[a]) / (num_pulls + n_m)
    num_pulls += n_m
    best = max(q[a] for a in act)
    radius = np.sqrt(2 * np.log((delta ** 2) * horizon * n_agents) / n_m)
    for a in act:
      if best - q[a] > radius:
        active[a] = False


def run_port(name, means, eps, horizon, *, erase_u, reward_v, algo_u, initial_arm,
             reward_kind="gaussian", noise_std=1.0, feedback_mode="beacon",
             order="descending", eps_knots=None) -> PortResult:
  """One run of scheduler ``name`` (see the module docstring) on the given draws.

  Args:
    name: one of :data:`NAMES`.
    means: (K,) arm means.
    eps: (M,) nominal erasure probabilities (what the learner knows).
    horizon: T.
    erase_u: (T, M) uniforms on [0, 1): received iff ``erase_u >= eps_t``.
    reward_v: (T, M) in (-1, 1), the reward draws.
    algo_u: (T, W, 3) uniforms, W >= max(K, M): the scheduler's own randomness.
    initial_arm: (M,) the arm each agent plays before its first delivery.
    reward_kind: 'gaussian' or 'bernoulli'.
    noise_std: Gaussian noise standard deviation.
    feedback_mode: 'beacon' or 'ack_success' (what a feedback bit is counted
      for) for the schedulers with feedback; ignored by those without.
    order: 'descending' or 'ascending', the order of SP2-Feedback's stacks.
    eps_knots: None, or (knots_t (n,), knots_eps (n, M)): the channel's eps
      at round t is ``np.interp(t, knots_t, knots_eps[:, m])``.

  Returns:
    :class:`PortResult`.
  """
  if order not in ORDERS:
    raise ValueError(f"order must be one of {ORDERS}; got {order!r}")
  ch = make_channel(name, means, eps, horizon, erase_u=erase_u, reward_v=reward_v, algo_u=algo_u,
                    initial_arm=initial_arm, reward_kind=reward_kind, noise_std=noise_std,
                    feedback_mode=feedback_mode, eps_knots=eps_knots)
  if name == "tpg":
    tpg(ch)
  elif name == "tpg_guarded":
    tpg(ch, guarded=True)
  elif name == "sp2_fb":
    sp2_fb(ch, order)
  elif name == "rrr":
    rrr(ch)
  elif name == "sgreedy":
    sgreedy(ch)
  elif name == "sp2":
    sp2(ch)
  elif name == "lsae_hor":
    lsae(ch, vertical=False)
  elif name == "lsae_ver":
    lsae(ch, vertical=True)
  else:
    vanilla_sae(ch)
  return result(ch)


def make_channel(name, means, eps, horizon, *, erase_u, reward_v, algo_u, initial_arm,
                 reward_kind="gaussian", noise_std=1.0, feedback_mode="beacon", eps_knots=None
                 ) -> Channel:
  """The validated :class:`Channel` of one run of ``name`` (arguments as :func:`run_port`)."""
  if name not in NAMES:
    raise ValueError(f"unknown scheduler {name!r}; expected one of {NAMES}")
  if reward_kind not in REWARD_KINDS:
    raise ValueError(f"reward_kind must be one of {REWARD_KINDS}; got {reward_kind!r}")
  means = np.asarray(means, np.float64)
  eps = np.atleast_1d(np.asarray(eps, np.float64))
  k, n_agents, horizon = means.size, eps.size, int(horizon)
  if means.ndim != 1 or k < 2:
    raise ValueError(f"means must be a vector of at least 2 arms; got shape {means.shape}")
  if np.any(eps < 0) or np.any(eps >= 1):
    raise ValueError(f"eps must lie in [0, 1); got {eps}")
  erase_u = np.asarray(erase_u, np.float64)
  reward_v = np.asarray(reward_v, np.float64)
  algo_u = np.asarray(algo_u, np.float64)
  if erase_u.shape != (horizon, n_agents) or reward_v.shape != (horizon, n_agents):
    raise ValueError(f"erase_u and reward_v must have shape {(horizon, n_agents)}; got "
                     f"{erase_u.shape}, {reward_v.shape}")
  if (algo_u.ndim != 3 or algo_u.shape[0] != horizon or algo_u.shape[1] < max(k, n_agents)
      or algo_u.shape[2] < 3):
    raise ValueError(f"algo_u must have shape {(horizon, max(k, n_agents), 3)}; got {algo_u.shape}")
  initial_arm = np.broadcast_to(np.asarray(initial_arm, np.int64), (n_agents,))
  if np.any(initial_arm < 0) or np.any(initial_arm >= k):
    raise ValueError(f"initial_arm must be in [0, {k}); got {initial_arm}")
  if name in FEEDBACK:
    if feedback_mode not in ("beacon", "ack_success"):
      raise ValueError(f"{name} needs feedback_mode 'beacon' or 'ack_success'; got {feedback_mode!r}")
  else:
    feedback_mode = "none"
  return Channel(means, eps, horizon, erase_u, reward_v, algo_u, initial_arm, reward_kind,
                 noise_std, feedback_mode, eps_knots)


def result(ch: Channel) -> PortResult:
  """The :class:`PortResult` of a channel run to its horizon."""
  if ch.t != ch.horizon:
    raise RuntimeError(f"the scheduler stopped at round {ch.t} of {ch.horizon}")
  gaps = max(ch.means) - np.asarray(ch.means)
  regret = np.cumsum(gaps[ch.played].sum(axis=1))
  return PortResult(regret=regret, played=ch.played, tx=ch.tx, fb=ch.fb)
