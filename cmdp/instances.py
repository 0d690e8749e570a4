"""CMDP instances: hard instances with tunable S, A, H, B and zeta, and random ones.

The hard instances are a reconstruction in the spirit of the lower-bound
constructions of arXiv 2509.16586 (full text not at hand; its figure shows "a
hard communicating CAMDP" with A = 4, S = 19) and of its predecessors (Zurek &
Chen 2024, arXiv 2403.11477; Wang et al. 2022): a slow two-state core whose
leave probabilities are ~1/H, so that a gain estimated from N samples per
(s, a) has error ~ sqrt(H / N), and a constraint gadget with Slater margin
zeta and multiplier lambda* = 1/(4 zeta).

``hard_instance`` (B = 0: weakly communicating; B >= 1: general/multichain):

* state 0 "on", state 1 "off"; off -> on w.p. q = 1/H (every action, r = c = 0; with
  ``distinct``, an ablation, actions >= 1 return w.p. q / 1.25 instead, so that no two
  returning actions are equal in truth);
* at "on": action 0 "reward" (r = 1, c = 1 - 4 zeta), action 1 "safe" (r = 0,
  c = 1), both leave to "off" w.p. p = 1/H; actions >= 2 are decoys like
  action 0 but leaving w.p. 1.25 p (worse in both gains);
* the other states are "feeders" that move to "on" in one step (transient
  under every policy), so the optimum is rho_r* = 1/4 at b = 1/2 - zeta
  (randomize 1/2-1/2 between reward and safe);
* with B >= 1, state 2 is an entry state (the start) that stays w.p. 1 - 1/B
  and on exit goes to "on" (action 0), to an absorbing zero state z = 3
  (action 1: r = c = 0), or half-half (other actions): two closed classes, so
  the MDP is multichain with transient time B.

``b`` is always ``max_pi rho_c^pi - zeta`` (computed by the LP), so zeta is the
Slater constant exactly.

``communicating_instance`` (recon): k copies of the core made communicating, with gaps
proportional to eps, in the spirit of the lower-bound families (Azar et al. 2013; Zurek
& Chen 2024; Vaswani et al. 2022); see its docstring. S = 19, A = 4 (the paper's figure)
is the member with k = 9 copies and a hub.
"""

from __future__ import annotations

import numpy as np

from cmdp import lp, tabular


def hard_instance(n_states: int, n_actions: int, H: float, zeta: float, B: float = 0.0,
                  distinct: bool = False) -> tabular.TabularCMDP:
  """The hard CMDP described in the module docstring.

  Args:
    n_states: S (>= 2; >= 4 when B >= 1).
    n_actions: A (>= 2).
    H: the core's time scale (leave probabilities 1/H; the bias span is ~H/2).
    zeta: Slater constant, in (0, 1/4).
    B: 0 for the weakly-communicating instance, else the entry state's expected
      sojourn (transient time).
    distinct: an ablation: the off state's actions >= 1 return w.p. q / 1.25, so that the
      learner does not choose among equal returning actions by their noise (a winner's
      curse that makes its constraint estimate optimistic). The optimum (action 0 at off)
      and b are unchanged.
  """
  general = B >= 1
  if n_actions < 2 or n_states < (4 if general else 2):
    raise ValueError(f"need A >= 2 and S >= {4 if general else 2}; got S={n_states}, "
                     f"A={n_actions}")
  if not 0 < zeta < 0.25:
    raise ValueError(f"zeta must be in (0, 1/4); got {zeta}")
  if H < 2:
    raise ValueError(f"H must be >= 2; got {H}")
  S, A = n_states, n_actions
  p = q = 1.0 / H
  P = np.zeros((S, A, S))
  r = np.zeros((S, A))
  c = np.zeros((S, A))
  on, off = 0, 1
  leave = np.full(A, 1.25 * p)
  leave[:2] = p
  P[on, :, off] = leave
  P[on, :, on] = 1 - leave
  r[on, :] = 1.0
  r[on, 1] = 0.0
  c[on, :] = 1 - 4 * zeta
  c[on, 1] = 1.0
  back = np.full(A, q)
  if distinct:
    back[1:] = q / 1.25
  P[off, :, on] = back
  P[off, :, off] = 1 - back
  first_feeder = 2
  start = on
  if general:
    entry, z = 2, 3
    first_feeder = 4
    start = entry
    P[z, :, z] = 1.0
    P[entry, :, entry] = 1 - 1.0 / B
    P[entry, 0, on] = 1.0 / B
    P[entry, 1, z] = 1.0 / B
    P[entry, 2:, on] = 0.5 / B
    P[entry, 2:, z] = 0.5 / B
  P[first_feeder:, :, on] = 1.0
  return with_slater(P, r, c, start, zeta)


def hard_constraint_noise(H: float, zeta: float) -> float:
  """sqrt(N) times the spread of the optimal output's constraint gain on ``hard_instance``.

  The delta method on the weakly-communicating instance (B = 0) with N samples per pair:
  the optimum is the time-0 mixture, weight w = 1/2 each, of the reward policy (gain
  ``f_R (1 - 4 zeta)``) and the safe policy (gain ``f_S``), ``f = q / (p_a + q)`` the
  on-state's share, 1/2 at p = q = 1/H. Each estimated leave or return probability has
  relative variance ``(1 - p) / (p N) = (H - 1) / N`` and moves the share by a quarter of
  it, so the spread is ``sqrt((H - 1) / N) / 4 * sqrt(a^2 + s^2 + (a + s)^2)`` with
  ``a = w (1 - 4 zeta)`` (reward leave), ``s = 1 - w`` (safe leave) and ``a + s`` (return).
  It grows as zeta shrinks, which the sample-complexity bounds' constants do not: the
  ``hold_noise`` ablation of ``experiments.camdp_sample_complexity`` holds it fixed. It
  assumes the learner's returning action is one pair (``distinct=True``; equal returning
  actions make the learner's choice among them a winner's curse that narrows the return
  term's spread).
  """
  a, s = 0.5 * (1.0 - 4.0 * zeta), 0.5
  return float(np.sqrt(H - 1.0) / 4.0 * np.sqrt(a * a + s * s + (a + s) ** 2))


FAMILY_COST = 1.5   # a wrong (copy, action) pair costs FAMILY_COST * eps in rho_r (exact)


def family_gap(eps: float, zeta: float, cost: float = FAMILY_COST) -> float:
  """The relative leave-probability gap Delta of :func:`communicating_instance` (recon):
  ``32 zeta cost eps / (1 - 4 cost eps)``, the gap at which a wrong pair's constrained
  optimum is exactly ``1/4 - cost eps`` (``2 zeta / (8 zeta + Delta)``)."""
  if not 0 < 4 * cost * eps < 1:
    raise ValueError(f"need 0 < 4 cost eps < 1; got cost={cost}, eps={eps}")
  return 32.0 * zeta * cost * eps / (1.0 - 4.0 * cost * eps)


def communicating_instance(n_states: int, n_actions: int, H: float, zeta: float, eps: float,
                           cost: float = FAMILY_COST, gap_zeta: float | None = None,
                           distinct: bool = False, gap_eps: float | None = None
                           ) -> tabular.TabularCMDP:
  """A hard communicating CMDP: k copies of the on/off core with eps-gaps (recon).

  A reconstruction in the spirit of the lower-bound families (Azar et al. 2013;
  Zurek & Chen 2024; Vaswani et al. 2022): the paper's own hard instance is known only
  from a figure caption ("a hard communicating CAMDP with A = 4, S = 19"), which this
  family contains (k = 9, with the hub).

  Structure. k = S // 2 copies i = 0..k-1 of the core, on_i = 2i and off_i = 2i + 1;
  when S is odd, state S - 1 is a hub (the start; else on_0 is). p = q = 1/H.

  * on_i, action 0 "safe": r = 0, c = 1, to off_i w.p. p (else stay).
  * on_i, actions a >= 1 "reward": r = 1, c = 1 - 4 zeta, to off_i w.p. p (1 + Delta),
    except the one best pair (copy k-1, action A-1), which leaves w.p. p. Delta =
    :func:`family_gap` (eps, zeta, cost) = 32 zeta cost eps / (1 - 4 cost eps).
  * off_i (r = c = 0): action 0 and actions >= 2 return to on_i w.p. q; action 1 moves
    to off_{i+1} in one step (off_{k-1} to the hub, if any, else to off_0); the hub
    moves to off_0 under every action. So every state reaches every other (the off
    states form a ring, each off_i reaches on_i): communicating.

  Exact solution (closed form, float64, tested against the LP): max_pi rho_c = 1/2
  (safe everywhere: on half the time), b = 1/2 - zeta (``with_slater``), rho* = 1/4
  (best pair and safe half-half in copy k-1, lambda* = 1/(4 zeta)). Using only wrong
  pairs (any other copy, or another reward action), the best mixture puts x = 2 zeta /
  (4 zeta + Delta (1/2 - zeta)) on the reward action and gets rho_r = 2 zeta / (8 zeta +
  Delta) = 1/4 - cost eps: a wrong pair costs exactly cost * eps > eps (cost = 1.5).
  Delta is proportional to eps zeta because lambda* = 1/(4 zeta) turns a relative
  leave-probability error into a reward loss 1/(4 zeta) times larger than its
  constraint-gain effect (Vaswani et al.'s strict construction: constraint gains must be
  known to eps zeta).

  What the lower bounds' symbols are here: S = 2k (+ hub), A = the actions at every
  state, H = the core time scale (the optimal bias span is (1 - 2 zeta)(H + (S - 1) // 2)
  / 2, :func:`communicating_span`: the core plus the hops between copies), eps = the
  target (the gaps scale with it), zeta = the Slater constant (exact). Predicted N* per
  (s, a) for a model-based learner: H / (eps^2 zeta^2) strict (constraint gains to
  precision ~eps zeta, leave probabilities to relative precision ~eps zeta), H / eps^2
  relaxed, each times a factor growing with log(SA) from picking the best of the ~SA
  pairs whose estimates are equally noisy (their maximum is biased up by ~sqrt(2 ln SA)
  standard deviations, so N* ~ (z + sqrt(2 ln SA))^2 with z the failure level's
  quantile); total samples SA times that. Two caveats (recon): telling the best pair from
  the wrong ones needs a relative precision Delta / 2 = 24 zeta eps (cost 1.5), far coarser than the
  constraint's ~eps zeta / 4, so for the learner of :mod:`cmdp.average_reward` the strict
  N* is set by the constraint precision at the chosen pairs, and S and A enter only
  through the maximum over equally noisy estimates; and in the relaxed setting the slack
  eps in the constraint is worth up to lambda* eps = eps / (4 zeta) in reward, so a wrong
  pick can be compensated there at small zeta (the relaxed lower bound is the
  unconstrained one; these gaps are made for the strict one).

  Args:
    n_states: S >= 4 (k = S // 2 >= 2 copies; odd S adds the hub).
    n_actions: A >= 2.
    H: core time scale (>= 2; p (1 + Delta) must stay <= 1).
    zeta: Slater constant in (0, 1/4).
    eps: the target accuracy the gaps are made for.
    cost: a wrong pair's exact loss in units of eps (> 1).
    gap_zeta: the zeta the gaps are made for (None: ``zeta``; another value is an
      ablation: a wrong pair then costs Delta / (4 (8 zeta + Delta)), not cost * eps).
    gap_eps: the eps the gaps are made for (None: ``eps``; another value is an ablation
      that holds the gaps while eps moves, with the same wrong-pair cost as above).
    distinct: an ablation that leaves no two pairs equal in truth, so that no choice among
      equal pairs is left to the estimates' noise (a winner's curse): the safe actions of
      copies other than k-1 leave w.p. p (1 + Delta), and the off states' actions >= 2 return
      w.p. q / (1 + Delta) (action 0 still q). The optimum (copy k-1, its off state's action
      0) is unchanged.
  """
  if n_actions < 2 or n_states < 4:
    raise ValueError(f"need A >= 2 and S >= 4; got S={n_states}, A={n_actions}")
  if not 0 < zeta < 0.25:
    raise ValueError(f"zeta must be in (0, 1/4); got {zeta}")
  if H < 2:
    raise ValueError(f"H must be >= 2; got {H}")
  gap = family_gap(eps if gap_eps is None else gap_eps, zeta if gap_zeta is None else gap_zeta,
                   cost)
  if (1 + gap) / H > 1:
    raise ValueError(f"leave probability (1 + Delta) / H = {(1 + gap) / H:.3g} > 1 "
                     f"(H={H}, eps={eps}, zeta={zeta}); use a larger H")
  S, A = n_states, n_actions
  k, hub = S // 2, S % 2 == 1
  p = q = 1.0 / H
  P = np.zeros((S, A, S))
  r = np.zeros((S, A))
  c = np.zeros((S, A))
  on, off = 2 * np.arange(k), 2 * np.arange(k) + 1
  leave = np.full((k, A), p * (1 + gap))
  leave[k - 1 if distinct else slice(None), 0] = p
  leave[k - 1, A - 1] = p
  P[on, :, off] = leave
  P[on, :, on] = 1 - leave
  r[on, 1:] = 1.0
  c[on, 0] = 1.0
  c[on, 1:] = 1 - 4 * zeta
  back = np.full(A, q)
  if distinct:
    back[2:] = q / (1 + gap)
  P[off, :, on] = back
  P[off, :, off] = 1 - back
  P[off, 1] = 0.0
  nxt = np.append(off[1:], S - 1 if hub else off[0])
  P[off, 1, nxt] = 1.0
  if hub:
    P[S - 1, :, off[0]] = 1.0
  return with_slater(P, r, c, S - 1 if hub else on[0], zeta)


def with_slater(P, r, c, start, zeta: float, *, multichain: bool = True
                ) -> tabular.TabularCMDP:
  """The CMDP with threshold b = max_pi rho_c^pi(start) - zeta (so Slater = zeta)."""
  m = tabular.make_cmdp(P, r, c, 0.0, start)
  top = lp.occupancy_lp(m.P, m.c, m.mu0, multichain=multichain)
  return m.replace(b=np.asarray(top.value - zeta, np.float64))


def _communicating_block(rng, idx: np.ndarray, A: int, S: int, support: int) -> np.ndarray:
  """Sparse random rows over the states ``idx`` with a cycle through them (action 0)."""
  P = np.zeros((idx.size, A, S))
  for i, s in enumerate(idx):
    for a in range(A):
      k = min(support, idx.size)
      nxt = rng.choice(idx, size=k, replace=False)
      w = rng.dirichlet(np.ones(k))
      P[i, a, nxt] = w
    # Action 0 moves along a cycle with positive probability: communicating.
    P[i, 0] *= 0.5
    P[i, 0, idx[(i + 1) % idx.size]] += 0.5
  return P


def random_instance(rng: np.random.Generator, n_states: int, n_actions: int, kind: str,
                    zeta_frac: float = 0.5, support: int = 2) -> tabular.TabularCMDP:
  """A random CMDP of the given structure, with b inside the feasible range.

  Args:
    rng: numpy generator.
    n_states, n_actions: S and A.
    kind: 'ergodic' (dense Dirichlet rows), 'weakly_communicating' (a sparse
      communicating block plus states transient under every policy; chains may
      be periodic) or 'multichain' (two closed communicating blocks and
      transient states that can reach either; start at a transient state) or
      'general' (sparse rows over all states, self-loops allowed, start at state
      0: a state can be recurrent under one policy and transient under
      another, so the constrained optimum may need a time-0 mixture of two
      stationary policies).
    zeta_frac: b = max rho_c - zeta_frac * (max rho_c - min rho_c).
    support: next-state support size of the sparse rows.
  """
  S, A = n_states, n_actions
  r, c = rng.random((S, A)), rng.random((S, A))
  if kind == "ergodic":
    P = rng.dirichlet(np.ones(S), size=(S, A))
    start = 0
  elif kind == "weakly_communicating":
    n_t = max(1, S // 4)
    rec = np.arange(n_t, S)
    P = np.zeros((S, A, S))
    P[rec] = _communicating_block(rng, rec, A, S, support)
    for s in range(n_t):
      for a in range(A):
        nxt = rng.choice(np.arange(s + 1, S), size=min(support, S - s - 1), replace=False)
        P[s, a, nxt] = rng.dirichlet(np.ones(nxt.size))
    start = 0
  elif kind == "multichain":
    if S < 5:
      raise ValueError("multichain instances need S >= 5")
    n_t = max(1, S // 5)
    rest = np.arange(n_t, S)
    blocks = np.array_split(rest, 2)
    P = np.zeros((S, A, S))
    for blk in blocks:
      P[blk] = _communicating_block(rng, blk, A, S, support)
    for s in range(n_t):
      for a in range(A):
        nxt = np.array([s, rng.choice(blocks[a % 2])])
        P[s, a, nxt] = (0.5, 0.5)
    start = 0
  elif kind == "general":
    P = np.zeros((S, A, S))
    for s in range(S):
      for a in range(A):
        nxt = rng.choice(S, size=min(support, S), replace=False)[:rng.integers(1, support + 1)]
        P[s, a, nxt] = rng.dirichlet(np.ones(nxt.size))
    start = 0
  else:
    raise ValueError(f"unknown kind {kind!r}")
  m = tabular.make_cmdp(P, r, c, 0.0, start)
  top = lp.occupancy_lp(m.P, m.c, m.mu0).value
  bottom = -lp.occupancy_lp(m.P, -m.c, m.mu0).value
  return m.replace(b=np.asarray(top - zeta_frac * (top - bottom), np.float64))


def communicating_optimal_policy(n_states: int, n_actions: int) -> np.ndarray:
  """An optimal (S, A) policy of :func:`communicating_instance` (recon), stationary: safe and
  the best reward action half-half at every on state (copy k-1: the best pair), off states
  hop towards copy k-1 (off_{k-1} returns), the hub moves on. Its bias span is
  :func:`communicating_span`."""
  S, A = n_states, n_actions
  k = S // 2
  on, off = 2 * np.arange(k), 2 * np.arange(k) + 1
  pi = np.zeros((S, A))
  pi[on, 0] = 0.5
  pi[on[:-1], 1] = 0.5
  pi[on[-1], A - 1] = 0.5
  pi[off[:-1], 1] = 1.0
  pi[off[-1], 0] = 1.0
  if S % 2:
    pi[S - 1, 0] = 1.0
  return pi


def communicating_span(n_states: int, H: float, zeta: float) -> float:
  """The bias span of :func:`communicating_optimal_policy` (recon): (1 - 2 zeta)(H + h) / 2
  with h = (S - 1) // 2 the longest walk of one-step hops (the constraint's bias; the
  reward's is (H + h) / 4): H for the core, h for the hops along the ring of off states."""
  return (1.0 - 2.0 * zeta) * (H + (n_states - 1) // 2) / 2.0
