"""CMDP instances: hard instances with tunable S, A, H, B and zeta, and random ones.

The hard instances are a reconstruction in the spirit of the lower-bound
constructions of arXiv 2509.16586 (full text not at hand; its figure shows "a
hard communicating CAMDP" with A = 4, S = 19) and of its predecessors (Zurek &
Chen 2024, arXiv 2403.11477; Wang et al. 2022): a slow two-state core whose
leave probabilities are ~1/H, so that a gain estimated from N samples per
(s, a) has error ~ sqrt(H / N), and a constraint gadget with Slater margin
zeta and multiplier lambda* = 1/(4 zeta).

``hard_instance`` (B = 0: weakly communicating; B >= 1: general/multichain):

* state 0 "on", state 1 "off"; off -> on w.p. q = 1/H (every action, r = c = 0);
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
"""

from __future__ import annotations

import numpy as np

from cmdp import lp, tabular


def hard_instance(n_states: int, n_actions: int, H: float, zeta: float, B: float = 0.0
                  ) -> tabular.TabularCMDP:
  """The hard CMDP described in the module docstring.

  Args:
    n_states: S (>= 2; >= 4 when B >= 1).
    n_actions: A (>= 2).
    H: the core's time scale (leave probabilities 1/H; the bias span is ~H/2).
    zeta: Slater constant, in (0, 1/4).
    B: 0 for the weakly-communicating instance, else the entry state's expected
      sojourn (transient time).
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
  P[off, :, on] = q
  P[off, :, off] = 1 - q
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
