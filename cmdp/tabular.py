"""Tabular constrained MDPs: the model pytree, its validation, and exact policy evaluation.

Shared by every CMDP system here (average-reward and discounted). A CMDP is
``(P, r, c, mu0, b)``: transition kernel ``P[s, a, s']``, reward ``r[s, a]`` and
constraint reward ``c[s, a]`` in [0, 1], start distribution ``mu0`` and threshold
``b``; the task is ``max_pi rho_r^pi(mu0)`` subject to ``rho_c^pi(mu0) >= b``.

Policies are stationary and randomized, arrays ``pi[s, a]`` (rows sum to 1); a
deterministic policy ``d[s]`` becomes one through :func:`deterministic`. A
*mixture* (weights ``w[k]`` over policies ``pi_k``) picks ``pi_k`` with
probability ``w[k]`` once at time 0 and follows it forever; its gain from
``mu0`` is ``sum_k w[k] rho^{pi_k}(mu0)``.

Exact evaluation is numpy float64 (outside jit), for any chain: the Cesaro
limit ``P* = lim_n (1/n) sum_{t<n} P^t`` is built from the recurrent classes
(closed strongly connected components) and the absorption probabilities of the
transient states, so multichain and periodic chains are handled exactly. The
gain is ``g = P* r``, the bias ``h = (I - P + P*)^{-1} (I - P*) r`` (the
deviation matrix applied to r, so ``P* h = 0``), and ``sp(h) = max h - min h``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from flax import struct
from scipy.sparse import csgraph


class CMDPError(ValueError):
  """A CMDP's arrays are inconsistent (shapes, probabilities, ranges)."""


class TabularCMDP(struct.PyTreeNode):
  """A tabular CMDP (numpy float64 arrays, or jax arrays inside jit).

  Attributes:
    P: (S, A, S) transition probabilities, ``P[s, a].sum() == 1``.
    r: (S, A) reward in [0, 1].
    c: (S, A) constraint reward (utility) in [0, 1]; the constraint is
      ``rho_c >= b``.
    mu0: (S,) start distribution.
    b: () constraint threshold.
  """
  P: np.ndarray
  r: np.ndarray
  c: np.ndarray
  mu0: np.ndarray
  b: np.ndarray

  @property
  def n_states(self) -> int:
    return self.P.shape[0]

  @property
  def n_actions(self) -> int:
    return self.P.shape[1]


def validate(m: TabularCMDP, atol: float = 1e-8) -> None:
  """Raises :class:`CMDPError` with a clear message if ``m`` is not a CMDP."""
  P, r, c, mu0 = (np.asarray(x) for x in (m.P, m.r, m.c, m.mu0))
  if P.ndim != 3 or P.shape[0] != P.shape[2]:
    raise CMDPError(f"P must have shape (S, A, S); got {P.shape}")
  S, A = P.shape[:2]
  if S < 1 or A < 1:
    raise CMDPError(f"P needs at least one state and one action; got {P.shape}")
  for name, x in (("r", r), ("c", c)):
    if x.shape != (S, A):
      raise CMDPError(f"{name} must have shape (S, A) = {(S, A)}; got {x.shape}")
    if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
      raise CMDPError(f"{name} must lie in [0, 1]; got range [{x.min()}, {x.max()}]")
  if mu0.shape != (S,):
    raise CMDPError(f"mu0 must have shape (S,) = {(S,)}; got {mu0.shape}")
  if not np.all(np.isfinite(P)) or P.min() < -atol:
    raise CMDPError(f"P has negative or non-finite entries (min {np.nanmin(P)})")
  row_err = np.abs(P.sum(-1) - 1)
  if row_err.max() > atol:
    s, a = np.unravel_index(np.argmax(row_err), row_err.shape)
    raise CMDPError(f"rows of P must sum to 1 (tolerance {atol}); row (s={s}, a={a}) sums to "
                    f"{P[s, a].sum()!r}")
  if mu0.min() < -atol or abs(mu0.sum() - 1) > atol:
    raise CMDPError(f"mu0 must be a probability vector; sums to {mu0.sum()!r}, min {mu0.min()}")
  b = np.asarray(m.b)
  if b.shape != () or not np.isfinite(b):
    raise CMDPError(f"b must be a finite scalar; got {b!r}")


def make_cmdp(P, r, c, b, start=0, atol: float = 1e-8) -> TabularCMDP:
  """Builds and validates a CMDP with float64 numpy arrays.

  Args:
    P: (S, A, S) transition probabilities.
    r: (S, A) rewards in [0, 1].
    c: (S, A) constraint rewards in [0, 1].
    b: threshold of the constraint ``rho_c >= b``.
    start: a start state (int) or a start distribution (S,).
    atol: tolerance of the probability checks.

  Returns:
    The validated :class:`TabularCMDP`.
  """
  P = np.asarray(P, np.float64)
  S = P.shape[0] if P.ndim >= 1 else 0
  if np.ndim(start) == 0:
    if not 0 <= int(start) < max(S, 1):
      raise CMDPError(f"start state must be in [0, {S}); got {start}")
    mu0 = np.zeros(S)
    mu0[int(start)] = 1.0
  else:
    mu0 = np.asarray(start, np.float64)
  m = TabularCMDP(P=P, r=np.asarray(r, np.float64), c=np.asarray(c, np.float64), mu0=mu0,
                  b=np.asarray(b, np.float64))
  validate(m, atol)
  return m


# --- policies ------------------------------------------------------------------------------

def deterministic(d, n_actions: int) -> np.ndarray:
  """(S,) action indices -> (S, A) one-hot randomized policy (float64)."""
  d = np.asarray(d)
  return np.eye(n_actions)[d]


def policy_matrices(P, r, pi) -> tuple[np.ndarray, np.ndarray]:
  """(P_pi, r_pi): (S, S) chain and (S,) one-step reward of policy ``pi`` (S, A)."""
  pi = np.asarray(pi, np.float64)
  return np.einsum("sa,sat->st", pi, P), np.einsum("sa,sa->s", pi, r)


# --- exact evaluation (numpy float64) --------------------------------------------------------

class ChainStructure(NamedTuple):
  """Recurrent classes and absorption probabilities of a finite Markov chain.

  Attributes:
    classes: list of index arrays, the recurrent (closed communicating) classes.
    stationary: list of (|C_k|,) stationary distributions, one per class.
    transient: (n_T,) indices of the transient states.
    absorb: (S, K) probability of ending in class k from each state.
  """
  classes: list
  stationary: list
  transient: np.ndarray
  absorb: np.ndarray


def chain_structure(P_pi, tol: float = 0.0) -> ChainStructure:
  """Recurrent classes, their stationary laws and absorption probabilities of ``P_pi``."""
  P_pi = np.asarray(P_pi, np.float64)
  S = P_pi.shape[0]
  adj = P_pi > tol
  _, labels = csgraph.connected_components(adj, directed=True, connection="strong")
  classes, stationary = [], []
  recurrent = np.zeros(S, bool)
  for lab in np.unique(labels):
    idx = np.flatnonzero(labels == lab)
    outside = np.ones(S, bool)
    outside[idx] = False
    if adj[np.ix_(idx, outside)].any():
      continue  # not closed: transient
    classes.append(idx)
    recurrent[idx] = True
    Q = P_pi[np.ix_(idx, idx)]
    n = idx.size
    # pi (Q - I) = 0, sum pi = 1: least squares on the stacked (consistent) system.
    M = np.vstack([(Q - np.eye(n)).T, np.ones((1, n))])
    rhs = np.zeros(n + 1)
    rhs[-1] = 1.0
    st = np.linalg.lstsq(M, rhs, rcond=None)[0]
    st = np.clip(st, 0, None)
    stationary.append(st / st.sum())
  transient = np.flatnonzero(~recurrent)
  absorb = np.zeros((S, len(classes)))
  for k, idx in enumerate(classes):
    absorb[idx, k] = 1.0
  if transient.size:
    Q = P_pi[np.ix_(transient, transient)]
    R = np.stack([P_pi[np.ix_(transient, idx)].sum(1) for idx in classes], axis=1)
    absorb[transient] = np.linalg.solve(np.eye(transient.size) - Q, R)
  return ChainStructure(classes, stationary, transient, absorb)


def stationary_matrix(P_pi) -> np.ndarray:
  """The Cesaro limit P* (S, S) of a stochastic matrix (any chain structure)."""
  st = chain_structure(P_pi)
  S = np.shape(P_pi)[0]
  Pstar = np.zeros((S, S))
  for k, (idx, pi_k) in enumerate(zip(st.classes, st.stationary)):
    Pstar[:, idx] += st.absorb[:, k:k + 1] * pi_k[None, :]
  return Pstar


class Evaluation(NamedTuple):
  """Exact average-reward evaluation of one policy and one reward.

  Attributes:
    gain: (S,) rho^pi(s).
    bias: (S,) h^pi(s), normalized by P* h = 0.
    span: sp(h^pi) = max h - min h.
  """
  gain: np.ndarray
  bias: np.ndarray
  span: float


def evaluate_chain(P_pi, r_pi) -> Evaluation:
  """Gain, bias and bias span of the chain ``P_pi`` (S, S) with reward ``r_pi`` (S,)."""
  P_pi, r_pi = np.asarray(P_pi, np.float64), np.asarray(r_pi, np.float64)
  S = P_pi.shape[0]
  Pstar = stationary_matrix(P_pi)
  gain = Pstar @ r_pi
  bias = np.linalg.solve(np.eye(S) - P_pi + Pstar, r_pi - gain)
  return Evaluation(gain, bias, float(bias.max() - bias.min()))


def evaluate(P, r, pi) -> Evaluation:
  """Exact gain, bias and span of stationary policy ``pi`` (S, A) for reward ``r`` (S, A)."""
  return evaluate_chain(*policy_matrices(P, r, pi))


def gains(m: TabularCMDP, pi) -> tuple[float, float]:
  """(rho_r^pi(mu0), rho_c^pi(mu0)) of a stationary policy, exactly (float64)."""
  P_pi, _ = policy_matrices(m.P, m.r, pi)
  Pstar = stationary_matrix(P_pi)
  w = np.asarray(m.mu0) @ Pstar  # long-run state frequencies from mu0
  pi = np.asarray(pi, np.float64)
  return float(w @ np.einsum("sa,sa->s", pi, m.r)), float(w @ np.einsum("sa,sa->s", pi, m.c))


def mixture_gains(m: TabularCMDP, weights, policies) -> tuple[float, float]:
  """(rho_r, rho_c) from mu0 of the mixture sum_k weights[k] * policies[k] (K, S, A)."""
  out = np.zeros(2)
  for w, pi in zip(np.asarray(weights, np.float64), policies):
    if w > 0:
      out += w * np.asarray(gains(m, pi))
  return float(out[0]), float(out[1])


def transient_time(P_pi) -> float:
  """max_s E_s[number of steps spent in transient states] of the chain ``P_pi``.

  Zurek & Chen's transient time of one policy; the instance's B is its sup over
  policies (see :func:`cmdp.average_reward.instance_parameters`).
  """
  st = chain_structure(P_pi)
  if st.transient.size == 0:
    return 0.0
  Q = np.asarray(P_pi, np.float64)[np.ix_(st.transient, st.transient)]
  return float(np.linalg.solve(np.eye(st.transient.size) - Q, np.ones(st.transient.size)).max())


def simulate_average(P, r, pi, start: int, n_steps: int, rng: np.random.Generator) -> float:
  """Average reward of one simulated trajectory of ``n_steps`` (a Monte Carlo check)."""
  P_pi, r_pi = policy_matrices(P, r, pi)
  cum = np.cumsum(P_pi, axis=1)
  u = rng.random(n_steps)
  s, total = int(start), 0.0
  for t in range(n_steps):
    total += r_pi[s]
    s = min(int(np.searchsorted(cum[s], u[t], side="right")), P_pi.shape[0] - 1)
  return total / n_steps


# --- discounted evaluation (numpy float64) -----------------------------------------------------

def discounted_values(P, r, pi, gamma: float) -> np.ndarray:
  """Exact discounted values ``V = (I - gamma P_pi)^{-1} r_pi`` of one or many policies.

  Args:
    P: (S, A, S) transitions.
    r: (S, A) reward.
    pi: (..., S, A) policies (any leading batch axes).
    gamma: discount factor in (0, 1).

  Returns:
    (..., S) values, float64 (unnormalized: in [0, max r / (1 - gamma)]).
  """
  P, r, pi = (np.asarray(x, np.float64) for x in (P, r, pi))
  P_pi = np.einsum("...sa,sat->...st", pi, P)
  r_pi = np.einsum("...sa,sa->...s", pi, r)
  eye = np.eye(P.shape[0])
  return np.linalg.solve(eye - gamma * P_pi, r_pi[..., None])[..., 0]


def discounted_returns(m: TabularCMDP, pi, gamma: float) -> tuple[np.ndarray, np.ndarray]:
  """(V_r^pi(mu0), V_c^pi(mu0)) of policies ``pi`` (..., S, A), exactly (float64)."""
  mu0 = np.asarray(m.mu0, np.float64)
  return (discounted_values(m.P, m.r, pi, gamma) @ mu0,
          discounted_values(m.P, m.c, pi, gamma) @ mu0)


def mixture_returns(m: TabularCMDP, weights, policies, gamma: float) -> tuple[float, float]:
  """(V_r, V_c) from mu0 of the mixture sum_k weights[k] * policies[k] (K, S, A)."""
  w = np.asarray(weights, np.float64)
  vr, vc = discounted_returns(m, policies, gamma)
  return float(w @ vr), float(w @ vc)
