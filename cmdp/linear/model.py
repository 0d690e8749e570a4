"""The linear CMDP model (arXiv 2507.02089): P(.|s,a) = phi(s,a)^T psi, r = phi^T theta_r,
c = phi^T theta_c, as a pytree, its validation, and its tabular form and back."""

from __future__ import annotations

import numpy as np
from flax import struct

from cmdp import lp, tabular
from cmdp.tabular import CMDPError

class LinearCMDP(struct.PyTreeNode):
  """A linear constrained discounted MDP (numpy float64 arrays).

  Attributes:
    phi: (S, A, d) features.
    psi: (d, S) next-state measures, ``P[s, a] = phi[s, a] @ psi``.
    theta_r: (d,) reward parameter, ``r = phi @ theta_r`` in [0, 1].
    theta_c: (d,) constraint-reward parameter, ``c = phi @ theta_c`` in [0, 1];
      the constraint is ``V_c^pi(mu0) >= b``.
    mu0: (S,) start distribution.
    b: () threshold (on the unnormalized discounted value).
    gamma: () discount factor in (0, 1).
  """
  phi: np.ndarray
  psi: np.ndarray
  theta_r: np.ndarray
  theta_c: np.ndarray
  mu0: np.ndarray
  b: np.ndarray
  gamma: np.ndarray

  @property
  def n_states(self) -> int:
    return self.phi.shape[0]

  @property
  def n_actions(self) -> int:
    return self.phi.shape[1]

  @property
  def dim(self) -> int:
    return self.phi.shape[2]

  @property
  def horizon(self) -> float:
    """H = 1 / (1 - gamma)."""
    return 1.0 / (1.0 - float(self.gamma))

  def tabular(self) -> tabular.TabularCMDP:
    """The same CMDP as a :class:`cmdp.tabular.TabularCMDP` (P, r, c, mu0, b)."""
    return tabular.TabularCMDP(P=self.phi @ self.psi, r=self.phi @ self.theta_r,
                               c=self.phi @ self.theta_c, mu0=self.mu0, b=self.b)


def validate(m: LinearCMDP, atol: float = 1e-8) -> None:
  """Raises :class:`cmdp.tabular.CMDPError` with a clear message if ``m`` is not a linear CMDP."""
  phi, psi = np.asarray(m.phi), np.asarray(m.psi)
  if phi.ndim != 3:
    raise CMDPError(f"phi must have shape (S, A, d); got {phi.shape}")
  S, A, d = phi.shape
  if psi.shape != (d, S):
    raise CMDPError(f"psi must have shape (d, S) = {(d, S)}; got {psi.shape}")
  for name in ("theta_r", "theta_c"):
    if np.shape(getattr(m, name)) != (d,):
      raise CMDPError(f"{name} must have shape (d,) = {(d,)}; got {np.shape(getattr(m, name))}")
  gamma = np.asarray(m.gamma)
  if gamma.shape != () or not 0 < float(gamma) < 1:
    raise CMDPError(f"gamma must be a scalar in (0, 1); got {m.gamma!r}")
  if not (np.all(np.isfinite(phi)) and np.all(np.isfinite(psi))):
    raise CMDPError("phi and psi must be finite")
  # P stochastic, r and c in [0, 1], mu0 a distribution, b finite: the tabular checks.
  tabular.validate(m.tabular(), atol)


def make_linear_cmdp(phi, psi, theta_r, theta_c, b, gamma, start=0, atol: float = 1e-8
                     ) -> LinearCMDP:
  """Builds and validates a linear CMDP with float64 numpy arrays.

  Args:
    phi: (S, A, d) features; psi: (d, S) next-state measures.
    theta_r, theta_c: (d,) reward and constraint-reward parameters.
    b: threshold of ``V_c >= b``; gamma: discount in (0, 1).
    start: a start state (int) or a start distribution (S,).
  """
  phi = np.asarray(phi, np.float64)
  S = phi.shape[0] if phi.ndim >= 1 else 0
  if np.ndim(start) == 0:
    if not 0 <= int(start) < max(S, 1):
      raise CMDPError(f"start state must be in [0, {S}); got {start}")
    mu0 = np.zeros(S)
    mu0[int(start)] = 1.0
  else:
    mu0 = np.asarray(start, np.float64)
  m = LinearCMDP(phi=phi, psi=np.asarray(psi, np.float64),
                 theta_r=np.asarray(theta_r, np.float64),
                 theta_c=np.asarray(theta_c, np.float64), mu0=mu0,
                 b=np.asarray(b, np.float64), gamma=np.asarray(gamma, np.float64))
  validate(m, atol)
  return m


def with_slater(m: LinearCMDP, zeta: float) -> LinearCMDP:
  """``m`` with threshold b = max_pi V_c^pi(mu0) - zeta (so its Slater constant is zeta)."""
  t = m.tabular()
  top = lp.discounted_occupancy_lp(t.P, t.c, t.mu0, float(m.gamma)).value
  return m.replace(b=np.asarray(top - zeta, np.float64))


def from_tabular(m: tabular.TabularCMDP, gamma: float) -> LinearCMDP:
  """The tabular special case: one-hot features, d = S A, psi = P, theta = (r, c)."""
  S, A = m.n_states, m.n_actions
  phi = np.eye(S * A).reshape(S, A, S * A)
  return make_linear_cmdp(phi, np.asarray(m.P).reshape(S * A, S), np.ravel(m.r),
                          np.ravel(m.c), m.b, gamma, m.mu0)
