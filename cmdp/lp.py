"""Occupancy-measure linear programs for average-reward (C)MDPs: the exact ground truth.

scipy's HiGHS on numpy float64, outside jit. Two formulations:

* ``multichain`` (general MDPs; Kallenberg 1983, Altman 1999 ch. 4, Puterman
  sec. 9.3): variables ``x, y >= 0`` (S, A) with
  ``sum_a x(j,a) = sum_{s,a} P(j|s,a) x(s,a)`` and
  ``sum_a x(j,a) + sum_a y(j,a) - sum_{s,a} P(j|s,a) y(s,a) = mu0(j)``;
  ``x`` is the long-run state-action frequency from ``mu0``, ``y`` the
  transient "deviation" part. Gains are ``r.x`` and ``c.x``.
* ``weakly_communicating``: ``x >= 0`` with flow balance and ``sum x = 1``
  (the optimal gain does not depend on the start state).

A policy is read off as ``pi(a|s) = x(s,a)/x(s)`` where ``x(s) > 0``, else
``y(s,a)/y(s)``, else uniform. In a multichain *constrained* problem that
stationary policy can fall short of the LP value: the optimum may need to pick
one of two stationary policies at random at time 0 (Altman 1999, ch. 4), for
instance when one policy stays in a closed class that a randomized stationary
policy would leave. :func:`solve_cmdp` checks the read-off exactly and otherwise
mixes the two Lagrangian-optimal policies on either side of lambda*; either way
the caller gets one :class:`MixedPolicy` whose components are explicit.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import optimize, sparse

from cmdp import tabular


class LPResult(NamedTuple):
  """Solution of an occupancy LP.

  Attributes:
    value: optimal objective (a gain from mu0).
    x: (S, A) long-run state-action frequencies.
    y: (S, A) transient part (zeros for the weakly-communicating LP).
    policy: (S, A) the stationary policy read off (x, y).
    dual: multiplier of the constraint ``c.x >= b`` (>= 0; nan without it).
  """
  value: float
  x: np.ndarray
  y: np.ndarray
  policy: np.ndarray
  dual: float


def _flow(P) -> sparse.csr_matrix:
  """(S, S*A) matrix E - P^T with E(j, (s,a)) = [s == j]."""
  S, A, _ = P.shape
  E = sparse.kron(sparse.eye(S), np.ones((1, A)))
  return (E - sparse.csr_matrix(P.reshape(S * A, S).T)).tocsr()


def occupancy_lp(P, objective, mu0, constraint=None, b: float | None = None, *,
                 multichain: bool = True) -> LPResult:
  """max objective.x subject to the occupancy polytope and ``constraint.x >= b``.

  Args:
    P: (S, A, S) transitions.
    objective: (S, A) reward to maximize.
    mu0: (S,) start distribution.
    constraint: (S, A) constraint reward, or None for an unconstrained MDP.
    b: threshold of ``constraint.x >= b``.
    multichain: the general formulation (True) or the weakly-communicating one.

  Returns:
    An :class:`LPResult`. Raises ValueError if the LP is infeasible.
  """
  P = np.asarray(P, np.float64)
  S, A, _ = P.shape
  n = S * A
  F = _flow(P)
  E = sparse.kron(sparse.eye(S), np.ones((1, A))).tocsr()
  obj = np.asarray(objective, np.float64).reshape(n)
  if multichain:
    A_eq = sparse.vstack([sparse.hstack([F, sparse.csr_matrix((S, n))]),
                          sparse.hstack([E, F])]).tocsr()
    b_eq = np.concatenate([np.zeros(S), np.asarray(mu0, np.float64)])
    cost = np.concatenate([-obj, np.zeros(n)])
    n_var = 2 * n
  else:
    A_eq = sparse.vstack([F, sparse.csr_matrix(np.ones((1, n)))]).tocsr()
    b_eq = np.concatenate([np.zeros(S), [1.0]])
    cost = -obj
    n_var = n
  # HiGHS' presolve takes 20x longer than the solve itself on these dense occupancy LPs
  # (11 s vs 0.5 s at S=200, A=10), so it is off; the interior-point solver (with its
  # crossover to a vertex, so the policy read-off and the duals are those of a basis) is
  # about 2x faster than dual simplex on the multichain LP.
  A_ub = b_ub = None
  if constraint is not None:
    row = np.zeros(n_var)
    row[:n] = -np.asarray(constraint, np.float64).reshape(n)
    A_ub, b_ub = sparse.csr_matrix(row[None, :]), np.array([-float(b)])
  res = optimize.linprog(cost, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=(0, None),
                         method="highs-ipm", options={"presolve": False})
  if res.status != 0:
    raise ValueError(f"occupancy LP failed: {res.message}")
  x = np.clip(res.x[:n].reshape(S, A), 0, None)
  y = np.clip(res.x[n:].reshape(S, A), 0, None) if multichain else np.zeros((S, A))
  dual = float(-res.ineqlin.marginals[0]) if constraint is not None else float("nan")
  return LPResult(float(-res.fun), x, y, policy_from_occupancy(x, y), max(dual, 0.0))


def policy_from_occupancy(x, y, tol: float = 1e-10) -> np.ndarray:
  """pi(a|s) from x where x(s) > tol, else from y, else uniform; (S, A)."""
  S, A = x.shape
  xs, ys = x.sum(1, keepdims=True), y.sum(1, keepdims=True)
  pi = np.full((S, A), 1.0 / A)
  pi = np.where(ys > tol, y / np.maximum(ys, tol), pi)
  return np.where(xs > tol, x / np.maximum(xs, tol), pi)


class MixedPolicy(NamedTuple):
  """A policy that draws component k with probability ``weights[k]`` at time 0 and follows it.

  Its gains (or discounted values) are the weighted sums of its components'
  (:func:`cmdp.tabular.mixture_gains`, :func:`cmdp.tabular.mixture_returns`;
  both take ``*policy``). K = 1 is a stationary policy.

  Attributes:
    weights: (K,) positive, summing to 1.
    components: (K, S, A) stationary randomized policies.
  """
  weights: np.ndarray
  components: np.ndarray

  @property
  def is_stationary(self) -> bool:
    return self.weights.shape[0] == 1

  def stationary(self) -> np.ndarray:
    """The (S, A) policy itself; ValueError if it needs a time-0 mixture."""
    if not self.is_stationary:
      raise ValueError(
          f"this optimal policy mixes {self.weights.shape[0]} stationary policies at time 0 "
          f"(weights {np.round(self.weights, 6).tolist()}); no single stationary policy is "
          "optimal: use .weights and .components")
    return self.components[0]


def _stationary(pi) -> MixedPolicy:
  return MixedPolicy(np.ones(1), np.asarray(pi, np.float64)[None])


class CMDPSolution(NamedTuple):
  """The exact solution of a CMDP.

  Attributes:
    value: optimal constrained gain rho_r* from mu0 (the LP value).
    policy: an optimal policy, a :class:`MixedPolicy` (stationary when
      ``policy.is_stationary``; a time-0 mixture of two components when the
      multichain optimum needs one).
    gain_r, gain_c: exact gains of ``policy`` (gain_r = value and
      gain_c >= b, both up to the solver's ``tol``).
    dual: optimal Lagrange multiplier lambda* of ``rho_c >= b``.
    zeta: Slater constant max_pi rho_c^pi(mu0) - b.
    max_c: max_pi rho_c^pi(mu0).
  """
  value: float
  policy: MixedPolicy
  gain_r: float
  gain_c: float
  dual: float
  zeta: float
  max_c: float


def solve_cmdp(m: tabular.TabularCMDP, *, multichain: bool = True, tol: float = 1e-7
               ) -> CMDPSolution:
  """Optimal constrained gain, an optimal policy, lambda* and zeta via HiGHS.

  Args:
    m: the CMDP (start distribution m.mu0).
    multichain: use the general LP (True) or the weakly-communicating one.
    tol: tolerance of the exact re-evaluation of the returned policy.

  Returns:
    A :class:`CMDPSolution` whose ``policy`` reaches the LP value exactly
    (within ``tol``). Raises ValueError if the CMDP is infeasible, and
    RuntimeError if no policy reaching the LP value was found (never seen; it
    would mean two breakpoints of the Lagrangian closer than ``delta``).
  """
  top = occupancy_lp(m.P, m.c, m.mu0, multichain=multichain)
  zeta = top.value - float(m.b)
  if zeta < -1e-9:
    raise ValueError(f"infeasible CMDP: max rho_c = {top.value:.6g} < b = {float(m.b):.6g}")
  res = occupancy_lp(m.P, m.r, m.mu0, m.c, float(m.b), multichain=multichain)
  policy = _stationary(res.policy)
  g_r, g_c = tabular.gains(m, res.policy)
  if abs(g_r - res.value) > tol or g_c < float(m.b) - tol:
    policy = lagrangian_mixture(m, res.dual, multichain=multichain)
    g_r, g_c = tabular.mixture_gains(m, *policy)
    if abs(g_r - res.value) > tol or g_c < float(m.b) - tol:
      raise RuntimeError(f"no optimal policy found: LP value {res.value:.10g}, mixture gains "
                         f"({g_r:.10g}, {g_c:.10g}), b = {float(m.b):.10g}")
  return CMDPSolution(res.value, policy, g_r, g_c, res.dual, zeta, top.value)


def lagrangian_mixture(m: tabular.TabularCMDP, lam: float, *, multichain: bool = True,
                       delta: float = 1e-6) -> MixedPolicy:
  """A time-0 mixture of the stationary policies optimal for r + (lam -/+ delta) c.

  The fallback for multichain CMDPs whose LP solution does not give an optimal
  stationary policy. Both policies maximize the Lagrangian r + lambda* c (its
  optimal policies change only at finitely many lambda), one with rho_c <= b and
  one with rho_c >= b; mixed so that rho_c = b, the mixture reaches the LP value
  by complementary slackness. A zero-weight component is dropped.
  """
  pols = []
  for l in (max(lam - delta, 0.0), lam + delta):
    sol = occupancy_lp(m.P, m.r + l * m.c, m.mu0, multichain=multichain)
    pols.append(sol.policy)
  (r0, c0), (r1, c1) = (tabular.gains(m, p) for p in pols)
  b = float(m.b)
  if c0 >= b - 1e-12:
    return _stationary(pols[0])
  w1 = float(np.clip((b - c0) / max(c1 - c0, 1e-300), 0, 1))
  if w1 >= 1.0:
    return _stationary(pols[1])
  return MixedPolicy(np.array([1 - w1, w1]), np.stack(pols))


def optimal_gain(P, r, mu0, *, multichain: bool = True) -> LPResult:
  """Unconstrained optimal average reward from mu0 (and an optimal policy)."""
  return occupancy_lp(P, r, mu0, multichain=multichain)


# --- discounted CMDPs ----------------------------------------------------------------------------

def discounted_occupancy_lp(P, objective, mu0, gamma: float, constraint=None,
                            b: float | None = None) -> LPResult:
  """max objective.x over discounted occupancies, subject to ``constraint.x >= b``.

  The variables ``x >= 0`` (S, A) satisfy
  ``sum_a x(j,a) - gamma sum_{s,a} P(j|s,a) x(s,a) = mu0(j)``, so ``x`` is the
  (unnormalized, total mass 1/(1 - gamma)) discounted state-action occupancy
  from mu0 and ``objective.x`` the discounted value V(mu0) (Altman 1999, ch. 3).
  Every discounted CMDP has an optimal stationary policy, read off as
  ``x(s,a)/x(s)`` (uniform where x(s) = 0: states unreachable from mu0).

  Returns:
    An :class:`LPResult` (``y`` is zeros). Raises ValueError if infeasible.
  """
  P = np.asarray(P, np.float64)
  S, A, _ = P.shape
  n = S * A
  E = sparse.kron(sparse.eye(S), np.ones((1, A)))
  A_eq = (E - gamma * sparse.csr_matrix(P.reshape(n, S).T)).tocsr()
  obj = np.asarray(objective, np.float64).reshape(n)
  A_ub = b_ub = None
  if constraint is not None:
    A_ub = sparse.csr_matrix(-np.asarray(constraint, np.float64).reshape(1, n))
    b_ub = np.array([-float(b)])
  res = optimize.linprog(-obj, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq,
                         b_eq=np.asarray(mu0, np.float64), bounds=(0, None),
                         method="highs-ipm", options={"presolve": False})
  if res.status != 0:
    raise ValueError(f"discounted occupancy LP failed: {res.message}")
  x = np.clip(res.x.reshape(S, A), 0, None)
  dual = float(-res.ineqlin.marginals[0]) if constraint is not None else float("nan")
  y = np.zeros((S, A))
  return LPResult(float(-res.fun), x, y, policy_from_occupancy(x, y), max(dual, 0.0))


def solve_discounted_cmdp(m: tabular.TabularCMDP, gamma: float) -> CMDPSolution:
  """Optimal constrained discounted value V_r*(mu0), a policy, lambda* and zeta via HiGHS.

  The fields of :class:`CMDPSolution` are read as discounted values from mu0
  (``gain_r``, ``gain_c``: exact values of the returned policy, which is
  stationary: every discounted CMDP has an optimal stationary policy;
  ``zeta = max_pi V_c^pi(mu0) - b``, unnormalized).
  """
  top = discounted_occupancy_lp(m.P, m.c, m.mu0, gamma)
  zeta = top.value - float(m.b)
  if zeta < -1e-9:
    raise ValueError(f"infeasible CMDP: max V_c = {top.value:.6g} < b = {float(m.b):.6g}")
  res = discounted_occupancy_lp(m.P, m.r, m.mu0, gamma, m.c, float(m.b))
  v_r, v_c = tabular.discounted_returns(m, res.policy, gamma)
  return CMDPSolution(res.value, _stationary(res.policy), float(v_r), float(v_c), res.dual,
                      zeta, top.value)
