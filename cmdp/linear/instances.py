"""Linear CMDP instances: random ones (Dirichlet features), the hard gadget family whose errors
are those of Azar et al.'s tabular construction, and the hypercube family in which d enters as
d^2 (both reconstructed; see :mod:`cmdp.linear`)."""

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


def hypercube_instance(dim: int, gamma: float, zeta: float, eps: float, gap: float = 0.0,
                       kappa: float = 0.5) -> LinearCMDP:
  """The hypercube linear CMDP, in which d enters as d^2 (recon).

  The hard linear MDP of the linear-mixture lower bounds (Zhou, He & Gu 2021, in
  turn Jaksch et al.'s two-state MDP), with a constraint gadget at its goal state;
  Liu et al.'s own lower-bound instance was not at hand. ``q = d - 3`` hypercube
  coordinates. Two states: the start x0 and an absorbing goal x1.

  * At x0 every action is a corner ``a in {-1, +1}^q`` (A = 2^q), feature
    ``(alpha a, beta, 0, 0)`` with ``alpha = 1/sqrt(2q)``, ``beta = 1/sqrt(2)``;
    r = c = 0; it reaches x1 w.p. ``p(a) = delta + <a, theta>`` with ``delta = 1 -
    gamma`` (one step of the horizon) and ``theta = (Delta / q) 1``, ``Delta = gap
    eps / W'(delta)``, where ``W(p) = gamma p / ((1 - gamma)(1 - gamma + gamma p))``
    is the discounted time spent at x1 from x0 (``W' ~ H^2 / 4``): the best corner
    stays at x1 ``gap eps`` longer than the average one.
  * At x1 the actions alternate "reward" (feature e_{q+1}: r = 1, c = 1 - kappa)
    and "safe" (e_{q+2}: r = 0, c = 1), both staying.

  ``b = W(delta + Delta) - zeta``: the optimum plays the best corner and the reward
  action w.p. ``w* = zeta / (kappa W*)``; ``V_r* = zeta / kappa``, ``lambda* = 1 /
  kappa``; a corner with a fraction f of wrong signs loses ``~2 f gap eps / kappa``
  of reward.

  Why d^2. A G-optimal design puts nearly every sample at the 2^q corners, so each
  coordinate of ``theta`` is estimated with error ``sigma = sqrt(v / N)``, ``v =
  delta (1 - delta) ~ 1/H``, whatever q. A learner takes the corner whose estimated
  reach is best, ``sign(theta_j + err_j)`` per coordinate, and then overestimates
  that corner's reach by ``sum_j E[sign(theta_j + err_j) err_j] = 2 q sigma
  phi(Delta / (q sigma))`` (phi the normal density; the winner's curse over 2^q
  corners, which the bounds' union bounds pay for), with a spread of only
  ``sqrt(q) sigma``. Its constraint value is then optimistic by ``W'`` times that,
  and the settings' slack (``eps / 2`` relaxed, ``eps zeta / (4 H)`` strict, see
  :mod:`cmdp.linear`) must absorb it, so ``N* ~ v W'^2 q^2 / eps^2 ~ q^2 H^3 /
  eps^2`` (relaxed) and ``q^2 H^5 / (eps^2 zeta^2)`` (strict; the strict lower
  bound's H^5). The per-coordinate signal-to-noise ratio at N* does not depend on
  q (Delta / q against sigma ~ eps / (W' q)), so the q^2 holds at every q, the
  spread adding a ``sqrt(q)`` term that fades as q grows (the closed form
  ``closed_form_n_star`` of ``experiments/linear_cmdp_hypercube.py``). With ``gap > 0``
  the instance depends on eps through Delta, as the lower bounds' instances do.

  Args:
    dim: d = q + 3 >= 4.
    gamma: discount factor in (1/2, 1).
    zeta: Slater constant, in (0, kappa W*].
    eps: the target accuracy the instance is built for (> 0).
    gap: the best corner's extra time at x1, in units of eps (>= 0; 0: all corners
      equal, only the winner's curse left).
    kappa: constraint cost of the reward action, in (0, 1].
  """
  q = dim - 3
  if q < 1:
    raise ValueError(f"the hypercube instance needs d >= 4; got d = {dim}")
  if not 0.5 < gamma < 1:
    raise ValueError(f"gamma must be in (1/2, 1) for the hypercube instance; got {gamma}")
  if not 0 < kappa <= 1:
    raise ValueError(f"kappa must be in (0, 1]; got {kappa}")
  if eps <= 0 or gap < 0:
    raise ValueError(f"need eps > 0 and gap >= 0; got eps = {eps}, gap = {gap}")
  delta = 1.0 - gamma
  Delta = gap * eps / hypercube_reach_slope(gamma)
  if Delta > delta:
    raise ValueError(f"gap eps = {gap * eps:g} is too large for gamma = {gamma}: the corners' "
                     f"reach probabilities delta +- Delta need Delta = {Delta:g} <= delta = "
                     f"{delta:g}")
  w_star = hypercube_reach(gamma, delta + Delta)
  if not 0 < zeta <= kappa * w_star:
    raise ValueError(f"zeta must be in (0, kappa W*] = (0, {kappa * w_star:g}]; got {zeta}")
  A, d = 2 ** q, dim
  corners = 1.0 - 2.0 * ((np.arange(A)[:, None] >> np.arange(q)) & 1)      # (A, q) of +-1
  alpha, beta = 1.0 / np.sqrt(2 * q), 1.0 / np.sqrt(2.0)
  phi = np.zeros((2, A, d))
  phi[0, :, :q] = alpha * corners
  phi[0, :, q] = beta
  phi[1, :, q + 1] = np.arange(A) % 2 == 0
  phi[1, :, q + 2] = np.arange(A) % 2 == 1
  theta = np.full(q, Delta / q)
  psi = np.zeros((d, 2))
  psi[:q] = np.stack([-theta, theta], 1) / alpha
  psi[q] = np.array([1.0 - delta, delta]) / beta
  psi[q + 1:, 1] = 1.0
  theta_r, theta_c = np.zeros(d), np.zeros(d)
  theta_r[q + 1] = 1.0
  theta_c[q + 1], theta_c[q + 2] = 1.0 - kappa, 1.0
  m = make_linear_cmdp(phi, psi, theta_r, theta_c, 0.0, gamma, 0)
  return m.replace(b=np.asarray(w_star - zeta, np.float64))


def hypercube_reach(gamma, p):
  """W(p) = gamma p / ((1 - gamma)(1 - gamma + gamma p)): the discounted time at x1 from x0
  of the hypercube instance, reaching x1 w.p. p per step."""
  return gamma * p / ((1.0 - gamma) * (1.0 - gamma + gamma * p))


def hypercube_reach_slope(gamma, p=None):
  """W'(p) = gamma / (1 - gamma + gamma p)^2, at ``p = delta = 1 - gamma`` by default."""
  p = 1.0 - gamma if p is None else p
  return gamma / (1.0 - gamma + gamma * p) ** 2
