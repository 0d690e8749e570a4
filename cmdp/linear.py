"""Linear constrained discounted MDPs under a generative model (arXiv 2507.02089, partly reconstructed).

What is the papers' and what is reconstruction. Liu, Yang & Vaswani ("Sample
Complexity Bounds for Linear Constrained MDPs with a Generative Model", ALT
2026) solve ``max_pi V_r^pi(mu0) s.t. V_c^pi(mu0) >= b`` for a linear CMDP
(``P(.|s,a) = phi(s,a)^T psi``, ``r = phi^T theta_r``, ``c = phi^T theta_c``)
with a model-based primal-dual framework built from three oracles: data
collection at a G-optimal (Kiefer-Wolfowitz) core set of features, an
unconstrained MDP solver (LS-MDVI of Kitamura et al. 2023, ICML, "Regularization
and variance-weighted regression achieves minimax optimality in linear MDPs")
and least-squares policy evaluation (LS-PE). They prove
O~(d^2 / ((1-gamma)^4 eps^2)) samples for relaxed feasibility and
O~(d^2 / ((1-gamma)^6 eps^2 zeta^2)) for strict feasibility, and (PMLR
version, v313 liu26b) a strict-setting lower bound
Omega(d^2 / ((1-gamma)^5 eps^2 zeta^2)).

Sources checked, and what they fixed here:

* Kitamura et al.'s own code, github.com/matsuolab/Variance-Weighted-MDVI,
  ``VWLS-MDVI/VWLS-MDVI-Experiment.ipynb`` (``wlsmdvi_G``, ``lsmdvi`` = WLS-MDVI
  with f = 1, ``compute_optimal_design``): the LS-MDVI update below, alpha =
  gamma, the greedy limit beta = inf (``w_k = max_a s_k``, greedy policy), the
  same number of samples at every core point with the design weights in the
  regression, a Frank-Wolfe G-optimal design. Read, not copied.
  matsuolab/Deep-Variance-Weighting-Maze (``experiments/run_generative.py``)
  sets the KL and entropy weights of its deep variant so that alpha = gamma too.
* Liu et al.: the PMLR abstract (proceedings.mlr.press/v313/liu26b.html) and two
  third-party summaries of arXiv 2507.02089 (sciencestack.ai/paper/2507.02089;
  the AI-written review at themoonlight.io/.../sample-complexity-bounds-for-
  linear-constrained-mdps-with-a-generative-model): Algorithm 1 collects N
  next-state samples at each core state-action pair once into a buffer B, the
  MDP solver and the policy evaluation both run on B, and the dual step is
  ``lambda_{k+1} = Proj_[0,U](lambda_k - eta (V_c^k(rho) - b'))``. Secondary
  sources; the paper's text (its LS-MDVI instantiation on B, U, b', eta, the
  perturbation, its hard instance) was not reachable, so those stay
  reconstructions (marked "(recon)"), following the primal-dual template of
  Vaswani, Yang & Szepesvari 2022 (arXiv 2206.06270) that
  :mod:`cmdp.average_reward` reconstructs too, with which this module shares
  the dual loop (:mod:`cmdp.primal_dual`), the tabular model
  and its exact evaluation (:mod:`cmdp.tabular`) and the LP ground truth
  (:func:`cmdp.lp.solve_discounted_cmdp`).

Values are unnormalized discounted values (in [0, 1/(1-gamma)]); ``eps`` and
``zeta`` are on that scale, as in the bounds. ``H = 1/(1-gamma)``.

Algorithm (one run; N = sample budget):

1. Design: a G-optimal design ``rho`` over the distinct feature vectors
   (Frank-Wolfe with away steps; the authors' code runs plain Frank-Wolfe to a
   1% tolerance and keeps the points that pass a support-elimination bound),
   core set ``C`` = its support (u points); ``n = ceil(N / u)`` next-state
   samples at each core point ``x = (s, a)`` (the same count everywhere, as the
   sources; on the designs of this project's instances, all uniform on their
   support, this equals ``ceil(rho_x N)``).
2. Least squares: the design-weighted regression of the per-point empirical
   next-state laws, ``M = G^{-1} sum_x rho_x phi_x counts_x / n`` with ``G =
   sum_x rho_x phi_x phi_x^T`` (d, S), so that for any ``v`` the regression of
   the sample means of ``v(s')`` is ``phi^T M v`` (the authors' regression with
   f = 1). (The rewards are known and exactly linear, so their regression
   returns ``theta_r``, ``theta_c``.) Every LS-MDVI and LS-PE step, for every
   lambda, reuses these data (Liu et al.'s buffer B, per the summaries; the
   authors' stand-alone LS-MDVI instead draws M fresh samples per core point in
   every one of its K iterations, K u M in all).
3. Perturbed reward (recon, as Vaswani et al.): ``theta_rp = theta_r + xi``,
   ``xi ~ U[0, omega]^d``, ``omega = eps (1-gamma) / 8``; for features on the
   simplex (all instances here) ``r_p - r`` lies in [0, omega].
4. Best responses on a dual grid of ``n_grid`` points of [0, U] (vmapped):
   ``pi_lambda`` = LS-MDVI for ``theta_rp + lambda theta_c``; its constraint
   value from mu0 estimated by LS-PE.
5. Projected dual descent, T steps, ``eta = U / sqrt(T)``, best response looked
   up at the nearest grid point, lambda itself kept continuous (Vaswani et
   al. round lambda to a grid; shared with the average-reward system).
   Output: the mixture of the grid policies weighted by their visit frequency
   (the uniform mixture of pi_0..pi_{T-1}).

LS-MDVI (checked against the authors' ``wlsmdvi_G``): ``theta_bar_0 = 0``,
``w_0 = w_{-1} = 0``; for k < K: ``v_k = clip(w_k - alpha w_{k-1}, 0, v_max)``
(the clip is ours, not in their code: a no-op on a stochastic model, it keeps
the fitted, possibly signed, model from blowing up), ``theta_bar_{k+1} = theta +
gamma M v_k + alpha theta_bar_k`` (their ``theta = theta_target + gamma theta``:
``s_{k+1} = phi^T theta_bar_{k+1} = q_{k+1} + alpha s_k``), ``w_{k+1}(s) =
max_a s_{k+1}(s, a)``; output the greedy policy ``argmax_a s_K`` (they score the
greedy policy of ``s_k``); ``alpha = gamma``. The general MDVI with a finite
``beta`` (``w = (1/beta) logsumexp(beta s)``, ``pi_K = softmax(beta s_K)``, within
``ln(A)/beta`` of greedy at the fixed point) is kept behind ``c_beta``: ``beta =
c_beta ln(A) / eps`` (the earlier reconstruction used ``c_beta = 8``; the
default ``C_BETA = inf`` is the authors' greedy limit). K = ``k_factor * H``
(recon; their experiments fix K = 100 or 1000 at H = 10).

LS-PE (recon): ``theta_{j+1} = theta_c + gamma M clip(Phi_pi theta_j, 0, H)``
for K steps (``Phi_pi[s] = sum_a pi(a|s) phi(s,a)``); estimate
``mu0 . clip(Phi_pi theta_K, 0, H)``.

Settings (recon, the constants chosen so that each error is a fixed fraction
of eps): relaxed ``U = 4 H / eps``, ``b' = b - eps/2``; strict ``U = 4 H /
zeta``, ``b' = b + eps zeta / (4 H)`` (lambda* <= H / zeta, so the tightening
costs at most eps / 4 in reward).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from cmdp import lp, primal_dual, tabular
from cmdp.tabular import CMDPError

# Reconstruction constants (see module docstring).
C_BETA = np.inf    # beta = C_BETA ln(A) / eps; inf: greedy LS-MDVI, as the authors' code
C_OMEGA = 8.0      # omega = eps (1 - gamma) / C_OMEGA
U_RELAXED = 4.0    # U = U_RELAXED H / eps
U_STRICT = 4.0     # U = U_STRICT H / zeta
RELAX = 0.5        # relaxed: b' = b - RELAX eps
TIGHTEN = 0.25     # strict:  b' = b + TIGHTEN eps zeta / H


# --- the model ----------------------------------------------------------------------------------

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


def solve(m: LinearCMDP) -> lp.CMDPSolution:
  """Exact ground truth: optimal V_r*(mu0), a policy, lambda* and zeta (discounted LP)."""
  return lp.solve_discounted_cmdp(m.tabular(), float(m.gamma))


def with_slater(m: LinearCMDP, zeta: float) -> LinearCMDP:
  """``m`` with threshold b = max_pi V_c^pi(mu0) - zeta (so its Slater constant is zeta)."""
  t = m.tabular()
  top = lp.discounted_occupancy_lp(t.P, t.c, t.mu0, float(m.gamma)).value
  return m.replace(b=np.asarray(top - zeta, np.float64))


# --- instances ----------------------------------------------------------------------------------

def from_tabular(m: tabular.TabularCMDP, gamma: float) -> LinearCMDP:
  """The tabular special case: one-hot features, d = S A, psi = P, theta = (r, c)."""
  S, A = m.n_states, m.n_actions
  phi = np.eye(S * A).reshape(S, A, S * A)
  return make_linear_cmdp(phi, np.asarray(m.P).reshape(S * A, S), np.ravel(m.r),
                          np.ravel(m.c), m.b, gamma, m.mu0)


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


# --- G-optimal design ---------------------------------------------------------------------------

class Design(NamedTuple):
  """A (near) G-optimal design over a finite set of features.

  Attributes:
    core: (u,) indices (into the flattened (S*A) feature rows) of the core set.
    weights: (u,) design weights on the core set (sum 1).
    max_variance: max over all features x of ``x^T V^{-1} x`` with
      ``V = sum_core weights phi phi^T`` (Kiefer-Wolfowitz: d at the optimum).
  """
  core: np.ndarray
  weights: np.ndarray
  max_variance: float


@functools.partial(jax.jit, static_argnames=("n_iters",))
def _frank_wolfe(X, n_iters: int):
  n, d = X.shape

  def variances(w):
    V = X.T @ (w[:, None] * X)
    return jnp.einsum("nd,nd->n", X, jnp.linalg.solve(V, X.T).T)

  def step(w, _):
    g = variances(w)
    up = jnp.argmax(g)
    down = jnp.argmin(jnp.where(w > 0, g, jnp.inf))
    toward = g[up] - d >= d - g[down]
    j = jnp.where(toward, up, down)
    gj = g[j]
    # Exact line search of log det along e_j (Fedorov-Wynn; Atwood's away step when negative).
    alpha = (gj / d - 1.0) / jnp.maximum(gj - 1.0, 1e-12)
    lo = -w[j] / jnp.maximum(1.0 - w[j], 1e-12)
    alpha = jnp.where(toward, alpha, jnp.maximum(alpha, lo))
    w = (1.0 - alpha) * w + alpha * jax.nn.one_hot(j, n, dtype=w.dtype)
    return jnp.clip(w, 0.0, None), g[up]

  w0 = jnp.full(n, 1.0 / n, X.dtype)
  w, _ = jax.lax.scan(step, w0, None, length=n_iters)
  return w, variances(w)


def g_optimal_design(features, n_iters: int = 2000, prune: float = 1e-6) -> Design:
  """A G-optimal design over the rows of ``features`` by Frank-Wolfe with away steps.

  Kiefer-Wolfowitz: the D-optimal design (max log det V) is G-optimal, with
  ``max_x x^T V^{-1} x = d``. Frank-Wolfe (Wynn's steps toward the worst-covered
  point, Atwood's away steps that drop support points) from the uniform design,
  in float64; duplicate rows are merged first, weights below ``prune`` dropped.

  Args:
    features: (n, d) feature vectors (e.g. ``phi.reshape(-1, d)``), spanning R^d.
    n_iters: Frank-Wolfe steps.
    prune: weights below this are set to 0 (then renormalized).

  Returns:
    A :class:`Design` (``max_variance`` is checked against all n rows).
  """
  X = np.asarray(features, np.float64)
  n, d = X.shape
  if np.linalg.matrix_rank(X) < d:
    raise CMDPError(f"features must span R^d (rank {np.linalg.matrix_rank(X)} < d = {d})")
  uniq, first = np.unique(X, axis=0, return_index=True)
  with jax.enable_x64(True):
    w, _ = _frank_wolfe(jnp.asarray(uniq), n_iters)
    w = np.asarray(w)
  w = np.where(w >= prune, w, 0.0)
  w /= w.sum()
  keep = np.flatnonzero(w > 0)
  core = first[keep]
  V = X[core].T @ (w[keep, None] * X[core])
  var = np.einsum("nd,nd->n", X, np.linalg.solve(V, X.T).T)
  return Design(core, w[keep], float(var.max()))


# --- data, least squares, LS-MDVI, LS-PE (jax) ----------------------------------------------------

def core_counts(key: jax.Array, P_core: jax.Array, n_core: jax.Array) -> jax.Array:
  """(u, S) next-state counts of ``n_core[x]`` generative samples at each core point.

  One multinomial draw per core point: the law of the counts of that many
  i.i.d. draws of ``s' ~ P_core[x]``, at a cost independent of the sample size.
  """
  p = jnp.clip(P_core, 0.0, None)
  p = p / p.sum(-1, keepdims=True)
  return jax.random.multinomial(key, n_core, p, dtype=p.dtype)


def fit_next_state_measure(phi_core: jax.Array, counts: jax.Array, rho=None) -> jax.Array:
  """Least-squares next-state measure M (d, S) from core-set samples.

  With ``rho`` (the design weights, as :func:`run_one` calls it): the
  design-weighted regression of the per-point empirical next-state laws,
  ``M = G_rho^{-1} sum_x rho_x phi_x counts_x / n_x`` with ``G_rho = sum_x rho_x
  phi_x phi_x^T``, so that ``phi^T M v`` regresses the sample means of
  ``v(s')`` at the core points with weights ``rho`` (the regression of the
  authors' LS-MDVI code, ``wlsmdvi_G`` with f = 1). Without ``rho``: ordinary
  least squares over all samples, ``G^{-1} sum_x phi_x sum_m v(s'_{x,m})`` with
  ``G = sum_x n_x phi_x phi_x^T``. The two coincide when every core point has the
  same count and the same weight (every design of this project's instances).

  Args:
    phi_core: (u, d) core-set features.
    counts: (u, S) next-state counts (``n_x = counts[x].sum()``).
    rho: (u,) design weights, or None (ordinary least squares).
  """
  n = counts.sum(-1)
  if rho is None:
    G = phi_core.T @ (n[:, None] * phi_core)
    return jnp.linalg.solve(G, phi_core.T @ counts)
  G = phi_core.T @ (rho[:, None] * phi_core)
  means = counts / jnp.maximum(n, 1.0)[:, None]
  return jnp.linalg.solve(G, phi_core.T @ (rho[:, None] * means))


class MDVIState(NamedTuple):
  """LS-MDVI's carry.

  Attributes:
    theta_bar: (d,) ``s_k = phi^T theta_bar`` (the alpha-discounted sum of q's).
    w: (S,) ``w_k``.
    w_prev: (S,) ``w_{k-1}``.
  """
  theta_bar: jax.Array
  w: jax.Array
  w_prev: jax.Array


def ls_mdvi(phi: jax.Array, M: jax.Array, theta: jax.Array, gamma, beta, n_iters,
            alpha=None) -> jax.Array:
  """LS-MDVI (Kitamura et al. 2023) on fitted data: the policy (S, A) after K steps.

  ``beta = inf`` (the default of :func:`constants`) is the update of the authors'
  code (matsuolab/Variance-Weighted-MDVI, ``VWLS-MDVI/VWLS-MDVI-Experiment.ipynb``,
  ``wlsmdvi_G``): ``w_k = max_a s_k`` and the greedy policy ``argmax_a s_K`` (ties:
  the first action, as ``jnp.argmax``). A finite ``beta`` is the general MDVI
  (``w_k = (1/beta) logsumexp(beta s_k)``, policy ``softmax(beta s_K)``).

  Args:
    phi: (S, A, d) features.
    M: (d, S) least-squares next-state measure (:func:`fit_next_state_measure`).
    theta: (d,) reward parameter of the MDP solved (e.g. ``theta_r + lambda theta_c``).
    gamma: discount; beta: inverse temperature (``inf``: greedy); alpha: KL weight
      (default gamma, as the authors' code).
    n_iters: K (may be traced: one compiled loop serves every horizon).
  """
  alpha = gamma if alpha is None else alpha
  A = phi.shape[1]
  greedy = jnp.isinf(beta)
  b = jnp.where(greedy, 1.0, beta)          # a finite stand-in, unused where greedy
  r = phi @ theta
  v_max = r.max() / (1.0 - gamma) + jnp.where(greedy, 0.0, jnp.log(A) / b)

  def soft_max(s):                                          # (S, A) -> (S,)
    return jnp.where(greedy, s.max(axis=1), jax.nn.logsumexp(b * s, axis=1) / b)

  def step(_, st: MDVIState):
    v = jnp.clip(st.w - alpha * st.w_prev, 0.0, v_max)
    theta_bar = theta + gamma * M @ v + alpha * st.theta_bar
    return MDVIState(theta_bar, soft_max(phi @ theta_bar), st.w)

  S, _, d = phi.shape
  z = jnp.zeros(S, phi.dtype)
  st = jax.lax.fori_loop(0, n_iters, step, MDVIState(jnp.zeros(d, phi.dtype), z, z))
  s = phi @ st.theta_bar
  return jnp.where(greedy, jax.nn.one_hot(jnp.argmax(s, axis=1), A, dtype=s.dtype),
                   jax.nn.softmax(b * s, axis=1))


def ls_pe(phi: jax.Array, M: jax.Array, theta: jax.Array, pi: jax.Array, gamma,
          n_iters) -> jax.Array:
  """Least-squares policy evaluation on fitted data: V^pi (S,) for reward ``phi^T theta``.

  K steps of ``theta_{j+1} = theta + gamma M clip(Phi_pi theta_j, 0, v_max)``
  (recon; the clip to the valid value range is ours).
  """
  phi_pi = jnp.einsum("sa,sad->sd", pi, phi)
  v_max = (phi @ theta).max() / (1.0 - gamma)
  vals = lambda th: jnp.clip(phi_pi @ th, 0.0, v_max)

  def step(_, th):
    return theta + gamma * M @ vals(th)

  th = jax.lax.fori_loop(0, n_iters, step, jnp.zeros_like(theta))
  return vals(th)


# --- the primal-dual algorithm --------------------------------------------------------------------

class Constants(NamedTuple):
  """Derived parameters of one run (scalars, may be traced).

  Attributes:
    U: dual box [0, U].
    b_prime: the threshold the estimated problem is solved for.
    beta: LS-MDVI inverse temperature.
    omega: reward perturbation scale.
  """
  U: jax.Array
  b_prime: jax.Array
  beta: jax.Array
  omega: jax.Array


def constants(eps, zeta, gamma, b, strict, n_actions: int, c_beta: float = C_BETA) -> Constants:
  """:class:`Constants` from eps, zeta, gamma, b, the setting (bool) and A (module docstring).

  ``beta = c_beta ln(A) / eps`` (``inf`` for ``c_beta = inf``: greedy LS-MDVI)."""
  xp = jnp if any(isinstance(v, jax.Array) for v in (eps, zeta, gamma, b, strict)) else np
  H = 1.0 / (1.0 - gamma)
  U = xp.where(strict, U_STRICT * H / zeta, U_RELAXED * H / eps)
  b_prime = xp.where(strict, b + TIGHTEN * eps * zeta / H, b - RELAX * eps)
  beta = c_beta * np.log(max(n_actions, 2)) / eps
  return Constants(U, b_prime, beta, eps / (C_OMEGA * H))


class Instance(NamedTuple):
  """What one run needs of a linear CMDP (jax arrays; P_core only to sample from).

  Attributes:
    phi: (S, A, d); theta_r, theta_c: (d,); mu0: (S,); b, gamma: ().
    phi_core: (u, d) core-set features; rho: (u,) design weights.
    P_core: (u, S) true next-state laws at the core set (the generative model).
  """
  phi: jax.Array
  theta_r: jax.Array
  theta_c: jax.Array
  mu0: jax.Array
  b: jax.Array
  gamma: jax.Array
  phi_core: jax.Array
  rho: jax.Array
  P_core: jax.Array


def make_instance(m: LinearCMDP, design: Design | None = None) -> Instance:
  """The :class:`Instance` of ``m`` (numpy float64), with its G-optimal design."""
  design = g_optimal_design(m.phi.reshape(-1, m.dim)) if design is None else design
  flat = m.phi.reshape(-1, m.dim)
  P = (m.phi @ m.psi).reshape(-1, m.n_states)
  return Instance(m.phi, m.theta_r, m.theta_c, m.mu0, np.asarray(m.b, np.float64),
                  np.asarray(m.gamma, np.float64), flat[design.core], design.weights,
                  P[design.core])


def samples_per_core_point(rho, n):
  """``ceil(n / u)`` samples at each of the u core points (total >= n), shaped like ``rho``.

  The same count at every core point, the design entering through the
  regression weights (:func:`fit_next_state_measure`), as in the authors'
  LS-MDVI code (M samples per core point) and in Liu et al.'s DataCollection (N
  queries per core state-action pair; secondary source, see the module
  docstring). On a design uniform over its support, as every design of this
  project's instances, this equals ``ceil(rho_x n)``.
  """
  xp = jnp if isinstance(n, jax.Array) or isinstance(rho, jax.Array) else np
  u = rho.shape[-1]
  return xp.ceil(n / u - 1e-9) * xp.ones_like(rho)


def best_responses(phi, M, theta_rp, theta_c, mu0, gamma, beta, lam_grid, n_iters):
  """LS-MDVI policies (G, S, A) on the dual grid and their LS-PE constraint values (G,)."""
  def one(lam):
    pi = ls_mdvi(phi, M, theta_rp + lam * theta_c, gamma, beta, n_iters)
    return pi, mu0 @ ls_pe(phi, M, theta_c, pi, gamma, n_iters)

  return jax.vmap(one)(lam_grid)


def run_one(key, inst: Instance, run: primal_dual.Runs, n_iters, *, n_grid: int,
            n_dual: int, c_beta: float = C_BETA) -> primal_dual.Mixture:
  """The primal-dual algorithm on one instance for one (N, seed); see the module docstring.

  Args:
    key: PRNG key of the run.
    inst: the instance (its P_core is only sampled from).
    run: the sample budget N (``ceil(rho_x N)`` at core point x), eps and zeta (known, as in
      the theory) and the setting, as scalars.
    n_iters: LS-MDVI / LS-PE steps K (may be traced).
    n_grid, n_dual: dual grid size and dual steps T (static).
    c_beta: LS-MDVI's ``beta = c_beta ln(A) / eps`` (static; inf: greedy).
  """
  k_data, k_perturb = jax.random.split(key)
  dtype = inst.phi.dtype
  counts = core_counts(k_data, inst.P_core, samples_per_core_point(inst.rho, run.n))
  M = fit_next_state_measure(inst.phi_core, counts, inst.rho)
  k = constants(run.eps, run.zeta, inst.gamma, inst.b, run.strict, inst.phi.shape[1], c_beta)
  theta_rp = inst.theta_r + k.omega * jax.random.uniform(k_perturb, inst.theta_r.shape, dtype)
  pols, vc = best_responses(inst.phi, M, theta_rp, inst.theta_c, inst.mu0, inst.gamma, k.beta,
                            primal_dual.dual_grid(k.U, n_grid, dtype), n_iters)
  weights, lam = primal_dual.dual_descent(vc, k.b_prime, k.U, n_dual)
  return primal_dual.Mixture(pols, weights, vc, lam)


@functools.partial(jax.jit, static_argnames=("n_grid", "n_dual", "c_beta"))
def _run_batch(keys, inst, runs, n_iters, *, n_grid, n_dual, c_beta):
  fn = functools.partial(run_one, n_grid=n_grid, n_dual=n_dual, c_beta=c_beta)
  return jax.vmap(fn, in_axes=(0, None, 0, None))(keys, inst, runs, n_iters)


def run_batch(key: jax.Array, inst: Instance, runs: primal_dual.Runs, *, n_grid: int = 64,
              n_dual: int = 2 ** 17, n_iters: int = 200,
              c_beta: float = C_BETA) -> primal_dual.Mixture:
  """R runs on one instance in one jitted call, vmapped over runs and the dual grid (float64).

  Every field of ``runs`` has shape (R,); run i uses key ``fold_in(key, i)``.
  ``n_iters`` (K) is traced, so calls that differ only in K (or in the instance's
  numbers) share one compilation per shape. x64 is enabled only for this call. (The
  runs are not sharded over the host's devices: on CPU, a sharded call deadlocked in
  XLA once, so one device runs the batch.)

  Returns:
    :class:`cmdp.primal_dual.Mixture` with numpy arrays and a leading axis R; its
    policies are the LS-MDVI softmax policies, (R, M, S, A).
  """
  with jax.enable_x64(True):
    keys = primal_dual.run_keys(key, np.shape(runs.n)[0])
    f64 = lambda x: jnp.asarray(np.asarray(x, np.float64))
    out = _run_batch(keys, jax.tree.map(f64, inst), runs.as_jax(),
                     jnp.asarray(n_iters, jnp.int32), n_grid=n_grid, n_dual=n_dual,
                     c_beta=float(c_beta))
    return jax.tree.map(np.asarray, out)


def default_iters(gamma: float, k_factor: float = 12.0) -> int:
  """K = ceil(k_factor H) LS-MDVI / LS-PE steps (gamma^K ~ exp(-k_factor))."""
  return int(np.ceil(k_factor / (1.0 - gamma)))


# --- exact evaluation of outputs (numpy float64) --------------------------------------------------

def evaluate_outputs(m: LinearCMDP, out: primal_dual.Mixture) -> tuple[np.ndarray, np.ndarray]:
  """Exact (V_r(mu0), V_c(mu0)) of every run's output mixture (runs on the instance ``m``).

  Every grid policy is evaluated by a linear solve in float64
  (:func:`cmdp.tabular.discounted_returns`); the mixture's values are the
  weighted sums.

  Returns:
    (V_r (R,), V_c (R,)).
  """
  vr, vc = tabular.discounted_returns(m.tabular(), out.policies, float(m.gamma))
  return np.einsum("rk,rk->r", out.weights, vr), np.einsum("rk,rk->r", out.weights, vc)


# --- numpy reference of the same algorithm (the benchmark's baseline) ---------------------------

def run_one_numpy(rng: np.random.Generator, m: LinearCMDP, design: Design, n: float, eps: float,
                  zeta: float, strict: bool, *, n_grid: int = 64, n_dual: int = 2 ** 17,
                  n_iters: int = 200, c_beta: float = C_BETA) -> tuple[np.ndarray, np.ndarray]:
  """The same algorithm as :func:`run_one`, as a plain numpy loop (float64).

  Returns:
    (policies (M, S, A), weights (M,)).
  """
  gamma = float(m.gamma)
  S, A, d = m.phi.shape
  inst = make_instance(m, design)
  n_core = samples_per_core_point(design.weights, n).astype(np.int64)
  counts = np.stack([rng.multinomial(k, p / p.sum())
                     for k, p in zip(n_core, np.clip(inst.P_core, 0, None))]).astype(np.float64)
  rho = design.weights
  G = inst.phi_core.T @ (rho[:, None] * inst.phi_core)
  M = np.linalg.solve(G, inst.phi_core.T @ (rho[:, None] * counts / counts.sum(1, keepdims=True)))
  k = constants(eps, zeta, gamma, float(m.b), strict, A, c_beta)
  greedy = np.isinf(k.beta)
  theta_rp = m.theta_r + k.omega * rng.random(d)
  pols, vcs = np.zeros((n_grid, S, A)), np.zeros(n_grid)
  for g, lam in enumerate(np.linspace(0, 1, n_grid) * k.U):
    theta = theta_rp + lam * m.theta_c
    v_max = (m.phi @ theta).max() / (1 - gamma) + (0.0 if greedy else np.log(A) / k.beta)
    theta_bar, w, w_prev = np.zeros(d), np.zeros(S), np.zeros(S)
    for _ in range(n_iters):
      v = np.clip(w - gamma * w_prev, 0.0, v_max)
      theta_bar = theta + gamma * M @ v + gamma * theta_bar
      q = m.phi @ theta_bar
      if greedy:
        w, w_prev = q.max(1), w
      else:
        s = k.beta * q
        top = s.max(1)
        w, w_prev = (top + np.log(np.exp(s - top[:, None]).sum(1))) / k.beta, w
    q = m.phi @ theta_bar
    if greedy:
      pi = np.eye(A)[q.argmax(1)]
    else:
      s = k.beta * q
      pi = np.exp(s - s.max(1, keepdims=True))
      pi /= pi.sum(1, keepdims=True)
    phi_pi = np.einsum("sa,sad->sd", pi, m.phi)
    vc_max = (m.phi @ m.theta_c).max() / (1 - gamma)
    th = np.zeros(d)
    for _ in range(n_iters):
      th = m.theta_c + gamma * M @ np.clip(phi_pi @ th, 0.0, vc_max)
    pols[g], vcs[g] = pi, m.mu0 @ np.clip(phi_pi @ th, 0.0, vc_max)
  delta, eta = k.U / (n_grid - 1), k.U / np.sqrt(n_dual)
  lam, counts_g = 0.0, np.zeros(n_grid)
  for _ in range(n_dual):
    g = min(max(int(np.round(lam / delta)), 0), n_grid - 1)
    counts_g[g] += 1
    lam = min(max(lam - eta * (vcs[g] - k.b_prime), 0.0), k.U)
  return pols, counts_g / n_dual
