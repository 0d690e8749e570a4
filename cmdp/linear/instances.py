"""Linear CMDP instances: random ones (Dirichlet features) and the hard family whose errors
are those of Azar et al.'s tabular construction (reconstructed; see :mod:`cmdp.linear`)."""

from __future__ import annotations

import numpy as np

from cmdp import lp
from cmdp.linear.model import LinearCMDP, make_linear_cmdp, with_slater

def random_instance(rng: np.random.Generator, n_states: int, n_actions: int, dim: int,
                    gamma: float, zeta_frac: float = 0.5, alpha: float = 0.1) -> LinearCMDP:
  """A random linear CMDP (the generator of the matsuolab linear-CMDP code, discounted).

  Feature rows ``phi(s, a) ~ Dirichlet(alpha 1_d)`` and next-state measures
  ``psi_j ~ Dirichlet(alpha 1_S)`` (so P is stochastic); ``theta ~ U[0, 1]^d``
  shifted and scaled so that r and c span [0, 1] (up to 1e-12) (features on the
  simplex: adding a constant to theta adds it to r); start state 0;
  ``b = max V_c - zeta_frac (max V_c - min V_c)``.
  """
  S, A, d = n_states, n_actions, dim
  phi = rng.dirichlet(np.full(d, alpha), size=(S, A))
  psi = rng.dirichlet(np.full(S, alpha), size=d)
  thetas = []
  for _ in range(2):
    th = rng.random(d)
    val = phi @ th
    lo, hi = val.min(), val.max()
    tiny = 1e-12  # keeps r inside [0, 1] despite rounding
    thetas.append((th - lo + tiny) / (hi - lo + 2 * tiny))
  m = make_linear_cmdp(phi, psi, thetas[0], thetas[1], 0.0, gamma, 0)
  t = m.tabular()
  top = lp.discounted_occupancy_lp(t.P, t.c, t.mu0, gamma).value
  bottom = -lp.discounted_occupancy_lp(t.P, -t.c, t.mu0, gamma).value
  return m.replace(b=np.asarray(top - zeta_frac * (top - bottom), np.float64))


def hard_instance(dim: int, gamma: float, zeta: float, n_actions: int = 5, kappa: float = 0.5,
                  twins: int = 2) -> LinearCMDP:
  """A hard linear CMDP with tunable d, gamma and Slater constant zeta (recon).

  In the spirit of the tabular lower bounds (Azar et al. 2013; the constraint
  gadget of Vaswani et al. 2022); the paper's own construction was not at hand.
  ``k = (d - 1) / (2 twins)`` gadget states ``x_i`` (the start is uniform over
  them) and an absorbing zero state z (feature e_0, r = c = 0). At ``x_i``,
  each with its own feature (basis vector):

  * ``twins`` "reward" actions: r = 1, c = 1 - kappa;
  * ``twins`` "safe" actions: r = 0, c = 1;
  * the remaining actions are decoys, features ``(e_j + e_0) / 2`` for a basis
    action j of the gadget (worse in both values; interior points that the
    design must leave out).

  Every basis action stays at ``x_i`` w.p. ``p = (4 gamma - 1)/(3 gamma)``
  (else goes to z), so ``1 - gamma p = 4 (1 - gamma) / 3``, the value of
  staying is ``3H/4`` and an estimated ``p`` moves it by ~sqrt(H^3 / n)
  (Azar et al.'s construction). ``b = 3H/4 - zeta``: the optimum plays reward
  actions w.p. ``w* = 4 zeta / (3 kappa H)`` in every gadget, ``V_r* = zeta /
  kappa``, ``lambda* = 1 / kappa``; the reward-greedy policy violates the
  constraint by ``3 kappa H / 4 - zeta`` (large against eps, so the relaxed
  setting is not trivial). Twins have the same law but separate features, so
  a learner picks, in each gadget, the twin whose estimated stay probability
  is largest: an optimistic bias of order sqrt(d H^3 / N) in its estimated
  values (the winner's curse that the bounds' union bounds pay for), the same
  sign in every gadget, so it does not average out over gadgets; the strict
  setting's tightening must absorb it.

  Args:
    dim: d = 2 twins k + 1 for an integer k >= 1.
    gamma: discount factor in (1/4, 1).
    zeta: Slater constant, in (0, 3 kappa H / 4].
    n_actions: A >= 2 twins.
    kappa: constraint cost of the reward actions, in (0, 1].
    twins: copies of each of the two basis actions per gadget (>= 1).
  """
  per = 2 * twins
  if twins < 1 or dim < per + 1 or (dim - 1) % per:
    raise ValueError(f"the hard instance needs d = {per} k + 1 (k >= 1 gadgets, twins = "
                     f"{twins}); got d = {dim}")
  if n_actions < per:
    raise ValueError(f"need A >= 2 twins = {per}; got {n_actions}")
  if not 0.25 < gamma < 1:
    raise ValueError(f"gamma must be in (1/4, 1) for the hard instance; got {gamma}")
  H = 1.0 / (1.0 - gamma)
  if not 0 < kappa <= 1:
    raise ValueError(f"kappa must be in (0, 1]; got {kappa}")
  if not 0 < zeta <= 3 * kappa * H / 4:
    raise ValueError(f"zeta must be in (0, 3 kappa H / 4] = (0, {3 * kappa * H / 4:g}]; "
                     f"got {zeta}")
  k = (dim - 1) // per
  S, A, d = k + 1, n_actions, dim
  z = k
  p = (4 * gamma - 1) / (3 * gamma)
  phi = np.zeros((S, A, d))
  psi = np.zeros((d, S))
  theta_r, theta_c = np.zeros(d), np.zeros(d)
  psi[0, z] = 1.0
  phi[z, :, 0] = 1.0
  for i in range(k):
    basis = 1 + per * i + np.arange(per)    # reward twins, then safe twins
    psi[basis, i], psi[basis, z] = p, 1 - p
    theta_r[basis[:twins]] = 1.0
    theta_c[basis[:twins]] = 1.0 - kappa
    theta_c[basis[twins:]] = 1.0
    for a in range(A):
      if a < per:
        phi[i, a, basis[a]] = 1.0
      else:
        phi[i, a, basis[a % per]] = phi[i, a, 0] = 0.5
  mu0 = np.zeros(S)
  mu0[:k] = 1.0 / k
  m = make_linear_cmdp(phi, psi, theta_r, theta_c, 0.0, gamma, mu0)
  return with_slater(m, zeta)
